//! The command line: `datalayer-sidecar [run] | check-config | healthcheck`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::Overrides;
use crate::telemetry::LogFormat;

/// A local sidecar reverse proxy that makes a chat app's data-layer traffic
/// reliable.
#[derive(Debug, Parser)]
#[command(name = "datalayer-sidecar", version, about)]
pub struct Cli {
    /// TOML config file.
    #[arg(long, short, global = true, env = "DATALAYER_SIDECAR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Override `listen.address`.
    #[arg(long, global = true, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Override `upstream.url`.
    #[arg(long, global = true, value_name = "URL")]
    pub upstream: Option<String>,
    /// Override `admin.address`.
    #[arg(long = "admin-listen", global = true, value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// Override `log.format`.
    #[arg(long = "log-format", global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Move a corrupt spool store aside (renamed `*.corrupt-<ms>`) and start
    /// with an empty one, instead of refusing to start.
    #[arg(long, global = true)]
    pub quarantine_corrupt_spool: bool,
    /// What to do (default: run the sidecar).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar (the default).
    Run,
    /// Validate the config, check its ports are free, print the effective
    /// config (secrets redacted).
    CheckConfig,
    /// Exit 0 if the admin listener's /healthz answers 200 (for container
    /// health checks; no curl needed).
    Healthcheck {
        /// How long to wait for the answer.
        #[arg(long, default_value = "2s")]
        timeout: humantime::Duration,
        /// Ask /readyz instead: ready to serve (spool opened and checked,
        /// listeners bound), not shutting down. For gating the app on the
        /// sidecar (Compose `depends_on: condition: service_healthy`).
        #[arg(long)]
        ready: bool,
    },
    /// Say which route a request takes and what the sidecar would do with
    /// it (JSON), without sending anything.
    Explain {
        /// The request's method.
        #[arg(long, default_value = "POST")]
        method: String,
        /// The request's path.
        #[arg(long, default_value = "/api/graphql")]
        path: String,
        /// File with the request body (`-` for standard input; default: no body).
        body: Option<PathBuf>,
    },
    /// Inspect and manage the spool store (works whether the sidecar runs
    /// or not).
    #[command(subcommand)]
    Spool(crate::spool::cli::SpoolCommand),
}

impl Cli {
    /// The flags that override the config.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen,
            upstream: self.upstream.clone(),
            admin_listen: self.admin_listen,
            log_format: self.log_format,
        }
    }
}
