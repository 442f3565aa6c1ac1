//! Registered WebAuthn credentials: durable, unlike everything in the state store. Kept in a
//! PostgreSQL table (shared by every instance; created on first use) or, for the embedded
//! default, a JSON file written atomically (temporary file, fsync, rename).

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use webauthn_rs::prelude::{Passkey, Uuid};

/// A user's registered key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredKey {
    /// The credential id, base64url: what `keys list` shows and `keys revoke` takes.
    pub id: String,
    pub user: String,
    /// The WebAuthn user handle; one per user, shared by all their keys.
    pub user_handle: Uuid,
    pub created_at: u64,
    pub last_used_at: Option<u64>,
    /// The public key, its signature counter and flags.
    pub passkey: Passkey,
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("credential file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("credential database: {0}")]
    Database(#[from] tokio_postgres::Error),
    #[error("credential database: stored key is unreadable: {0}")]
    Corrupt(#[from] serde_json::Error),
}

/// Where credentials live.
#[derive(Clone)]
pub enum Credentials {
    File(Arc<FileCredentials>),
    Postgres(Arc<PostgresCredentials>),
}

impl Credentials {
    /// `postgres://...` for a table, anything else is a file path (`file:` prefix optional).
    pub fn open(location: &str) -> Self {
        if location.starts_with("postgres://") || location.starts_with("postgresql://") {
            Credentials::Postgres(Arc::new(PostgresCredentials {
                url: location.to_owned(),
                client: Mutex::new(None),
            }))
        } else {
            let path = location.strip_prefix("file:").unwrap_or(location);
            Credentials::File(Arc::new(FileCredentials {
                path: PathBuf::from(path),
                lock: Mutex::new(()),
            }))
        }
    }

    pub async fn keys_of(&self, user: &str) -> Result<Vec<StoredKey>, CredentialError> {
        match self {
            Credentials::File(f) => Ok(f
                .read()
                .await?
                .into_iter()
                .filter(|k| k.user == user)
                .collect()),
            Credentials::Postgres(p) => p.keys_of(user).await,
        }
    }

    /// Adds a key, or replaces the stored key with the same id (after a use: new counter).
    pub async fn save(&self, key: &StoredKey) -> Result<(), CredentialError> {
        match self {
            Credentials::File(f) => {
                let _guard = f.lock.lock().await;
                let mut keys = f.read().await?;
                keys.retain(|k| k.id != key.id);
                keys.push(key.clone());
                f.write(&keys).await
            }
            Credentials::Postgres(p) => p.save(key).await,
        }
    }

    /// Removes a user's key; false if they have no such key.
    pub async fn revoke(&self, user: &str, id: &str) -> Result<bool, CredentialError> {
        match self {
            Credentials::File(f) => {
                let _guard = f.lock.lock().await;
                let mut keys = f.read().await?;
                let before = keys.len();
                keys.retain(|k| !(k.user == user && k.id == id));
                let removed = keys.len() != before;
                if removed {
                    f.write(&keys).await?;
                }
                Ok(removed)
            }
            Credentials::Postgres(p) => p.revoke(user, id).await,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Credentials::File(f) => format!("file {}", f.path.display()),
            Credentials::Postgres(_) => "PostgreSQL table pgstepup_credentials".into(),
        }
    }
}

/// A JSON file of all keys; fine for one instance and a handful of engineers.
pub struct FileCredentials {
    path: PathBuf,
    lock: Mutex<()>,
}

impl FileCredentials {
    fn error(&self, reason: impl ToString) -> CredentialError {
        CredentialError::File {
            path: self.path.clone(),
            reason: reason.to_string(),
        }
    }

    async fn read(&self) -> Result<Vec<StoredKey>, CredentialError> {
        match tokio::fs::read(&self.path).await {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| self.error(e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(self.error(e)),
        }
    }

    async fn write(&self, keys: &[StoredKey]) -> Result<(), CredentialError> {
        let json = serde_json::to_vec_pretty(keys).map_err(|e| self.error(e))?;
        let temporary = self.path.with_extension("tmp");
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            use std::io::Write;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(&temporary)?;
            file.write_all(&json)?;
            file.sync_all()?;
            std::fs::rename(&temporary, &path)
        })
        .await
        .map_err(|e| self.error(e))?
        .map_err(|e| self.error(e))
    }
}

fn tls_connector() -> tokio_postgres_rustls::MakeRustlsConnect {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_postgres_rustls::MakeRustlsConnect::new(config)
}

/// The `pgstepup_credentials` table of a PostgreSQL database.
pub struct PostgresCredentials {
    url: String,
    client: Mutex<Option<tokio_postgres::Client>>,
}

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS pgstepup_credentials (
    id text PRIMARY KEY,
    username text NOT NULL,
    created_at bigint NOT NULL,
    last_used_at bigint,
    key jsonb NOT NULL)";

impl PostgresCredentials {
    /// A connected client; reconnects when the last one broke.
    async fn client(
        &self,
    ) -> Result<tokio::sync::MappedMutexGuard<'_, tokio_postgres::Client>, CredentialError> {
        let mut slot = self.client.lock().await;
        if slot.as_ref().is_none_or(|c| c.is_closed()) {
            // TLS as the URL's sslmode asks (libpq's default, prefer, included); the server's
            // certificate is always verified against the system's roots.
            let (client, connection) = tokio_postgres::connect(&self.url, tls_connector()).await?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::warn!(%error, "credential database connection ended");
                }
            });
            client.batch_execute(CREATE_TABLE).await?;
            *slot = Some(client);
        }
        Ok(tokio::sync::MutexGuard::map(slot, |c| {
            c.as_mut().expect("connected above")
        }))
    }

    async fn keys_of(&self, user: &str) -> Result<Vec<StoredKey>, CredentialError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT key::text FROM pgstepup_credentials WHERE username = $1 ORDER BY created_at",
                &[&user],
            )
            .await?;
        rows.iter()
            .map(|row| Ok(serde_json::from_str(row.get::<_, &str>(0))?))
            .collect()
    }

    async fn save(&self, key: &StoredKey) -> Result<(), CredentialError> {
        let json = serde_json::to_string(key)?;
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO pgstepup_credentials (id, username, created_at, last_used_at, key)
                 VALUES ($1, $2, $3, $4, $5::text::jsonb)
                 ON CONFLICT (id) DO UPDATE SET last_used_at = EXCLUDED.last_used_at, key = EXCLUDED.key",
                &[
                    &key.id,
                    &key.user,
                    &(key.created_at as i64),
                    &key.last_used_at.map(|t| t as i64),
                    &json,
                ],
            )
            .await?;
        Ok(())
    }

    async fn revoke(&self, user: &str, id: &str) -> Result<bool, CredentialError> {
        let client = self.client().await?;
        let removed = client
            .execute(
                "DELETE FROM pgstepup_credentials WHERE username = $1 AND id = $2",
                &[&user, &id],
            )
            .await?;
        Ok(removed > 0)
    }
}
