//! [`SocketFile`]: a listening Unix socket that owns its file. A file left by a server that is
//! gone is replaced; one a live server answers on, or anything that is not a socket, is
//! refused; the file is removed when the listener is dropped. Used for the clients' socket
//! and the admin socket.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::{UnixListener, UnixStream};

/// A bound Unix socket and its file.
pub struct SocketFile {
    listener: UnixListener,
    path: PathBuf,
}

impl SocketFile {
    /// Binds `path` and gives the file `mode`.
    pub fn bind(path: &Path, mode: u32) -> io::Result<Self> {
        match std::fs::symlink_metadata(path) {
            Ok(found) if !found.file_type().is_socket() => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "a file that is not a socket is in the way",
                ))
            }
            Ok(_) if std::os::unix::net::UnixStream::connect(path).is_ok() => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another server is listening on this socket",
                ))
            }
            Ok(_) => std::fs::remove_file(path)?,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        let socket = SocketFile {
            listener: UnixListener::bind(path)?,
            path: path.to_owned(),
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        Ok(socket)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next connection.
    pub async fn accept(&self) -> io::Result<UnixStream> {
        self.listener.accept().await.map(|(stream, _)| stream)
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn replaces_a_stale_file_and_refuses_a_live_one_or_a_plain_file() {
        let dir = std::env::temp_dir().join(format!("pgstepup-socket-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(".s.PGSQL.7777");
        // A socket file whose server is gone.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());

        let socket = SocketFile::bind(&path, 0o777).expect("a stale file is replaced");
        assert_eq!(socket.path(), path);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o777);
        let client = UnixStream::connect(&path).await.unwrap();
        socket.accept().await.unwrap();
        drop(client);

        let err = SocketFile::bind(&path, 0o777)
            .err()
            .expect("a live socket is not taken over");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);

        drop(socket);
        assert!(!path.exists(), "the file goes with the listener");

        std::fs::write(&path, "not a socket").unwrap();
        let err = SocketFile::bind(&path, 0o777)
            .err()
            .expect("a plain file is not removed");
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a socket");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
