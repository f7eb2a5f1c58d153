//! `datalayer-sidecar`: parse the command line, load the config, run.

use std::process::ExitCode;

use clap::Parser;
use datalayer_sidecar::cli::{Cli, Command};
use datalayer_sidecar::config::{Config, Source};
use datalayer_sidecar::{admin, sidecar, telemetry};
use tokio::sync::watch;

// mimalloc: fewer instructions per allocation than glibc's malloc on the
// request path, and it returns freed memory to the OS more readily.
#[global_allocator]
static GLOBAL: datalayer_sidecar::alloc::MiMalloc = datalayer_sidecar::alloc::MiMalloc;

/// `EX_USAGE`: the configuration is wrong.
const EX_USAGE: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let source = Source {
        path: cli.config.clone(),
        overrides: cli.overrides(),
    };
    let cfg = match source.load() {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("datalayer-sidecar: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let opts = sidecar::Options {
        quarantine_corrupt_spool: cli.quarantine_corrupt_spool,
        source: Some(source),
        sighup: true,
    };
    match cli.command {
        Some(Command::CheckConfig) => check_config(&cfg),
        Some(Command::Healthcheck { timeout, ready }) => healthcheck(&cfg, timeout.into(), ready),
        Some(Command::Explain { method, path, body }) => explain(&cfg, &method, &path, body),
        Some(Command::Spool(cmd)) => match datalayer_sidecar::spool::cli::run(cmd, &cfg.spool) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("datalayer-sidecar: {e}");
                ExitCode::FAILURE
            }
        },
        None | Some(Command::Run) => run(cfg, opts),
    }
}

fn runtime(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = if worker_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(worker_threads);
        b
    };
    // Blocking threads serve DNS lookups and the spool; a few are plenty.
    b.enable_all().max_blocking_threads(8).build()
}

fn run(cfg: Config, opts: sidecar::Options) -> ExitCode {
    let _log = telemetry::init(&cfg.log);
    let rt = match runtime(cfg.worker_threads) {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            wait_for_signal().await;
            let _ = tx.send(true);
        });
        sidecar::run(cfg, opts, rx).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "datalayer-sidecar failed");
            eprintln!("datalayer-sidecar: {e}");
            if e.is_config() {
                ExitCode::from(EX_USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
                    _ = tokio::signal::ctrl_c() => tracing::info!(signal = "SIGINT", "shutting down"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; only SIGINT stops the sidecar");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn check_config(cfg: &Config) -> ExitCode {
    for (key, addr) in [
        ("listen.address", cfg.listen.address),
        ("admin.address", cfg.admin_address),
    ] {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            eprintln!("datalayer-sidecar: config key `{key}`: cannot listen on {addr}: {e}");
            return ExitCode::from(EX_USAGE);
        }
    }
    print!("{}", cfg.to_toml());
    for w in &cfg.warnings {
        eprintln!("datalayer-sidecar: warning: {w}");
    }
    eprintln!("datalayer-sidecar: config is valid");
    ExitCode::SUCCESS
}

fn explain(cfg: &Config, method: &str, path: &str, body: Option<std::path::PathBuf>) -> ExitCode {
    let Ok(method) = http::Method::from_bytes(method.to_ascii_uppercase().as_bytes()) else {
        eprintln!("datalayer-sidecar: `{method}` is not an HTTP method");
        return ExitCode::from(EX_USAGE);
    };
    let body = match body.as_deref() {
        None => Vec::new(),
        Some(p) if p.as_os_str() == "-" => {
            let mut buf = Vec::new();
            if let Err(e) = std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf) {
                eprintln!("datalayer-sidecar: reading standard input: {e}");
                return ExitCode::FAILURE;
            }
            buf
        }
        Some(p) => match std::fs::read(p) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("datalayer-sidecar: {}: {e}", p.display());
                return ExitCode::FAILURE;
            }
        },
    };
    let routes = datalayer_sidecar::route::Routes::new(cfg.routes.clone());
    let out = datalayer_sidecar::route::explain::explain(&routes, &method, path, &body);
    println!("{out:#}");
    ExitCode::SUCCESS
}

fn healthcheck(cfg: &Config, timeout: std::time::Duration, ready: bool) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("datalayer-sidecar: {e}");
            return ExitCode::FAILURE;
        }
    };
    let path = if ready { "/readyz" } else { "/healthz" };
    match rt.block_on(admin::probe(cfg.admin_address, path, timeout)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("datalayer-sidecar: unhealthy: {e}");
            ExitCode::FAILURE
        }
    }
}
