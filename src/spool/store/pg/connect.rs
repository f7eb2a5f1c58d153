//! How the store reaches the database: the settings it is opened with, the
//! URL as logs may show it, TLS, the connection pool and the session
//! settings every connection gets, and this replica's name. Separate
//! because none of it depends on the schema or the queue: it decides only
//! how connections are made.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, QueueMode, RecyclingMethod};

use super::{StoreError, unavailable};

/// The settings the shared store is opened with.
#[derive(Clone)]
pub struct PgParams {
    /// Parsed connection settings (password included).
    pub config: tokio_postgres::Config,
    /// The URL with the password replaced, for logs and `/config`.
    pub display: String,
    /// Extra CA certificates for the database's TLS certificate.
    pub ca_file: Option<PathBuf>,
    /// Connections at most.
    pub pool: usize,
    /// How long a claim holds an entry.
    pub lease: Duration,
}

impl std::fmt::Debug for PgParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password: only the redacted URL.
        f.debug_struct("PgParams")
            .field("url", &self.display)
            .field("pool", &self.pool)
            .field("lease", &self.lease)
            .finish()
    }
}

impl PartialEq for PgParams {
    fn eq(&self, other: &Self) -> bool {
        self.display == other.display
            && self.config.get_password() == other.config.get_password()
            && self.ca_file == other.ca_file
            && self.pool == other.pool
            && self.lease == other.lease
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:<redacted>@host/db`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<unparsable postgres URL>".to_string();
    };
    let (auth, tail) = match rest.split_once('@') {
        Some((a, t)) => (Some(a), t),
        None => (None, rest),
    };
    let tail = tail
        .split('&')
        .map(|kv| {
            if kv.to_ascii_lowercase().contains("password=") {
                "password=<redacted>"
            } else {
                kv
            }
        })
        .collect::<Vec<_>>()
        .join("&");
    match auth {
        Some(a) => match a.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:<redacted>@{tail}"),
            None => format!("{scheme}://{a}@{tail}"),
        },
        None => format!("{scheme}://{tail}"),
    }
}

/// The pool every statement of the store goes through. No connection is
/// made yet: the first `get` makes one.
pub(super) fn pool(p: &PgParams) -> Result<Pool, StoreError> {
    let mut config = p.config.clone();
    // Acknowledged means committed and flushed, whatever the server's
    // default says. No JIT: these are small statements over indexes, but
    // once the queue is large the planner's cost estimates pass
    // `jit_above_cost`, and compiling each execution costs far more than
    // running it.
    config.options("-c synchronous_commit=on -c jit=off");
    config.application_name("datalayer-sidecar");
    config.connect_timeout(Duration::from_secs(5));
    let manager = Manager::from_config(
        config,
        tls(p)?,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(p.pool.max(2))
        // The connection used last goes out first, so the group commit
        // keeps to one server process with its caches warm. (First in,
        // first out moves it to another process, caches cold, on every
        // commit.)
        .queue_mode(QueueMode::Lifo)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(unavailable)
}

/// The built-in roots plus `spool.postgres_ca_file`, over rustls.
fn tls(p: &PgParams) -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &p.ca_file {
        use pki_types::CertificateDer;
        use pki_types::pem::PemObject;
        let fail = |detail: String| StoreError::Open {
            path: path.clone(),
            detail: format!("spool.postgres_ca_file: {detail}"),
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| fail(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| fail(e.to_string()))?;
        for cert in certs {
            roots.add(cert).map_err(|e| fail(e.to_string()))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| StoreError::Unavailable(format!("postgres: TLS: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// This replica's name in `leases.owner`: host, process and a random part,
/// so a restarted process never inherits its predecessor's leases.
pub(super) fn replica_name() -> Arc<str> {
    format!(
        "{}-{}-{:08x}",
        hostname(),
        std::process::id(),
        fastrand::u32(..)
    )
    .into()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "sidecar".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_never_shows() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db.internal:5432/chat?sslmode=require"),
            "postgres://app:<redacted>@db.internal:5432/chat?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://db/chat?user=app&password=s3cret"),
            "postgres://db/chat?user=app&password=<redacted>"
        );
        assert_eq!(
            redact_url("postgres://app@db/chat"),
            "postgres://app@db/chat"
        );
    }
}
