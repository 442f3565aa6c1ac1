//! The `pgstepup` binary: command-line parsing, logging set-up and the serve loop. Everything
//! else lives in the library crates; errors become `anyhow` only here, at the edge.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use pgstepup_config::{Config, Overrides};
use pgstepup_session::Proxy;

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
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check an audit file's hash chain; names the first broken record.
    Verify {
        /// The JSON-lines audit file.
        file: PathBuf,
    },
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
    /// verifiers [default: postgres://127.0.0.1:5432].
    #[arg(long, value_name = "URL")]
    upstream: Option<String>,
    /// Approval pages, metrics and health [default: 127.0.0.1:8443].
    #[arg(long, value_name = "HOST:PORT")]
    web_listen: Option<String>,
    /// Redis for state shared between instances; absent = in memory, single instance.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Check(args) => check::run(args),
        Command::Audit(AuditCommand::Verify { file }) => {
            let records = pgstepup_audit::verify(&file)?;
            println!("{}: {records} record(s), chain intact", file.display());
            Ok(())
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        listen: args.listen,
        upstream: args.upstream,
        web_listen: args.web_listen,
        redis: args.redis,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        observe: args.observe,
    };
    let config = Config::load(args.config.as_deref(), overrides)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let proxy = Proxy::bind(config).await?;
        let policy = proxy.policy();
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("installing the SIGHUP handler")?;
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                // Errors are logged by the store; the old policy stays in force.
                let _ = policy.reload("SIGHUP");
            }
        });
        proxy.run(shutdown_signal()).await;
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
