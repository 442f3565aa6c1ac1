//! The `pgstepup` binary: command-line parsing, logging set-up, the serve loop and the admin
//! commands. Everything else lives in the library crates; errors become `anyhow` only here,
//! at the edge.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use pgstepup::Service;
use pgstepup_config::{Config, LogFormat, Overrides};
use pgstepup_web::admin::{self, Reply, Request};

mod check;

#[derive(Parser)]
#[command(
    name = "pgstepup",
    version,
    about = "Step-up authentication for risky SQL: a PostgreSQL wire-protocol proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve(ServeArgs),
    /// Show how the policy decides SQL (from the argument, or stdin), or lint a policy.
    Check(check::CheckArgs),
    /// Work with the audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Print a one-time link that registers a security key or passkey for USER (asks the
    /// running server; give the same --config/flags as `serve`).
    Enroll {
        /// The PostgreSQL user name the key will belong to.
        user: String,
        #[command(flatten)]
        server: ServeArgs,
    },
    /// List or revoke a user's registered keys (asks the running server).
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Subcommand)]
enum KeysCommand {
    /// A user's keys: id, when registered, when last used.
    List {
        user: String,
        #[command(flatten)]
        server: ServeArgs,
    },
    /// Remove one of a user's keys.
    Revoke {
        user: String,
        /// The key id `keys list` shows.
        id: String,
        #[command(flatten)]
        server: ServeArgs,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check an audit file's hash chain; names the first broken record.
    Verify {
        /// The JSON-lines audit file.
        file: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormatArg {
    Human,
    Json,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML configuration file (see deploy/pgstepup.example.toml); flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Client listener [default: 127.0.0.1:6432].
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
    /// Upstream PostgreSQL; a LOGIN:PASSWORD in it is the login used to look up SCRAM
    /// verifiers; `?host=/var/run/postgresql` reaches its Unix socket
    /// [default: postgres://127.0.0.1:5432].
    #[arg(long, value_name = "URL")]
    upstream: Option<String>,
    /// Approval pages, metrics and health [default: 127.0.0.1:8443].
    #[arg(long, value_name = "HOST:PORT")]
    web_listen: Option<String>,
    /// Redis for state shared between instances; absent = in memory, single instance.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// Where engineers open approval links; also the WebAuthn origin (its host is the RP id)
    /// [default: http://localhost:PORT of --web-listen].
    #[arg(long, value_name = "URL")]
    public_url: Option<String>,
    /// Unix socket for `enroll` and `keys` [default: /tmp/.s.pgstepup.PORT].
    #[arg(long, value_name = "PATH")]
    admin_socket: Option<PathBuf>,
    /// Also serve /metrics, /healthz and /readyz here (they are always on --web-listen).
    #[arg(long, value_name = "HOST:PORT")]
    metrics_listen: Option<String>,
    /// Where registered keys live: postgres://... (a table every instance shares) or a file
    /// [default: pgstepup-credentials.json].
    #[arg(long, value_name = "URL_OR_FILE")]
    credentials: Option<String>,
    /// Log lines for people (human) or one JSON object per line (json) [default: human].
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<LogFormatArg>,
    /// PEM certificate chain for client-facing TLS.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for client-facing TLS.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Decide, log and count, but hold and refuse nothing (report-only roll-out).
    #[arg(long)]
    observe: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Check(args) => check::run(args),
        Command::Audit(AuditCommand::Verify { file }) => {
            let records = pgstepup_audit::verify(&file)?;
            println!("{}: {records} record(s), chain intact", file.display());
            Ok(())
        }
        Command::Enroll { user, server } => ask(server, Request::Enroll { user }),
        Command::Keys(KeysCommand::List { user, server }) => {
            ask(server, Request::KeysList { user })
        }
        Command::Keys(KeysCommand::Revoke { user, id, server }) => {
            ask(server, Request::KeysRevoke { user, id })
        }
    }
}

/// Logs go to standard error (the audit trail may own standard output), filtered by
/// `RUST_LOG` (default `info`). Target and level directives, the usual kind, go through a
/// plain target filter; only directives it cannot express (span or field filters) take
/// `EnvFilter`, whose span tracking costs a lock each time a session's task is polled.
fn init_logs(format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{fmt, Layer};

    let (targets, env_filter) = log_filter(&std::env::var("RUST_LOG").unwrap_or_default());
    let logs = fmt::layer().with_writer(std::io::stderr);
    let logs = match format {
        LogFormat::Human => logs.boxed(),
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(targets)
        .with(env_filter)
        .with(logs)
        .init();
}

/// The filter for `RUST_LOG` directives: a target filter when they are only targets and
/// levels, `EnvFilter` otherwise (unreadable directives mean `info`).
fn log_filter(
    directives: &str,
) -> (
    Option<tracing_subscriber::filter::Targets>,
    Option<tracing_subscriber::EnvFilter>,
) {
    use tracing_subscriber::{filter::Targets, EnvFilter};
    let directives = match directives.trim() {
        "" => "info",
        given => given,
    };
    match directives.parse::<Targets>() {
        Ok(targets) => (Some(targets), None),
        Err(_) => (
            None,
            Some(EnvFilter::try_new(directives).unwrap_or_else(|_| EnvFilter::new("info"))),
        ),
    }
}

/// Sends an admin command to the running server and prints its answer.
fn ask(args: ServeArgs, request: Request) -> anyhow::Result<()> {
    let (path, overrides) = overrides(args);
    let config = Config::load_for_admin(path.as_deref(), overrides)?;
    let socket = config.admin_socket();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let reply = runtime
        .block_on(admin::request(&socket, &request))
        .context("is `pgstepup serve` running with the same configuration?")?;
    match reply {
        Reply::Enrollment { url, expires_at } => {
            println!("{url}");
            eprintln!(
                "Open this link in a browser to register a security key or passkey; it works once, for {} minutes.",
                expires_at.saturating_sub(pgstepup_stepup::unix_now()) / 60
            );
        }
        Reply::Keys { keys } => {
            if keys.is_empty() {
                eprintln!("no keys registered");
            }
            for key in keys {
                let used = key
                    .last_used_at
                    .map_or_else(|| "never used".to_owned(), |t| format!("last used {t}"));
                println!("{}\tregistered {}\t{used}", key.id, key.created_at);
            }
        }
        Reply::Revoked => eprintln!("key revoked"),
        Reply::Error { message } => anyhow::bail!(message),
    }
    Ok(())
}

fn load_config(args: ServeArgs) -> anyhow::Result<Config> {
    let (path, overrides) = overrides(args);
    Ok(Config::load(path.as_deref(), overrides)?)
}

/// The configuration file named by the arguments, and what the flags set over it.
fn overrides(args: ServeArgs) -> (Option<std::path::PathBuf>, Overrides) {
    let overrides = Overrides {
        listen: args.listen,
        upstream: args.upstream,
        web_listen: args.web_listen,
        public_url: args.public_url,
        redis: args.redis,
        admin_socket: args.admin_socket,
        metrics_listen: args.metrics_listen,
        credentials: args.credentials,
        log_format: args.log_format.map(|f| match f {
            LogFormatArg::Human => LogFormat::Human,
            LogFormatArg::Json => LogFormat::Json,
        }),
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        observe: args.observe,
    };
    (args.config, overrides)
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = load_config(args)?;
    init_logs(config.log.format);
    // Sessions run on threads of their own (`proxy.worker_threads`, each its own runtime);
    // this one accepts connections and serves the web side, the admin socket and Redis.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    tracing::info!(session_threads = config.worker_threads(), "runtime started");
    runtime.block_on(async {
        let service = Service::bind(config).await?;
        let reloader = service.reloader();
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("installing the SIGHUP handler")?;
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                reloader.reload("SIGHUP");
            }
        });
        service.run(shutdown_signal()).await;
        tracing::info!("pgstepup stopped");
        Ok(())
    })
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown requested");
}

#[cfg(test)]
mod tests {
    use super::log_filter;
    use tracing::level_filters::LevelFilter;

    #[test]
    fn plain_directives_take_the_target_filter_and_others_env_filter() {
        let (targets, env) = log_filter("pgstepup_session=debug,warn");
        let targets = targets.expect("targets and levels");
        assert!(env.is_none());
        assert_eq!(
            targets.default_level(),
            Some(LevelFilter::WARN),
            "{targets:?}"
        );
        // Empty means info; a span filter needs EnvFilter.
        assert!(log_filter("").0.is_some());
        let (targets, env) = log_filter("[conn{id=7}]=debug");
        assert!(targets.is_none() && env.is_some());
    }
}
