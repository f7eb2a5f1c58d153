//! Configuration: a TOML file ([`schema`]) overlaid with
//! `DATALAYER_SIDECAR_<SECTION>_<KEY>` environment variables ([`env`]) and
//! CLI flags, then checked once ([`validate`]) into the runtime [`Config`]:
//! the parameter types each layer is built with.
//!
//! Precedence is defaults < file < environment < flags. Every key has a
//! documented default (see `config/sidecar.toml`), durations are human strings
//! (`"250ms"`, `"5s"`), sizes are human strings or integers (`"16KiB"`, `1024`),
//! and unknown keys are rejected: an operator who misspells a key is told, with
//! the key's path, instead of silently running with the default.
//!
//! A reload goes through the same path ([`Config::reload`]), so a file the
//! sidecar would refuse at start is refused by a reload with the same message.

mod env;
mod restart;
pub mod schema;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use env::ENV_PREFIX;
pub use schema::*;

use crate::breaker::BreakerParams;
use crate::classify::ClassifyParams;
use crate::error::InvalidParam;
use crate::proxy::client::UpstreamParams;
use crate::proxy::forward::Limits;
use crate::proxy::server::ListenParams;
use crate::retry::{BudgetParams, RetryParams};
use crate::route::Route;
use crate::route::file::Preset;
use crate::spool::SpoolSettings;
use crate::telemetry::{LogFormat, LogParams};

/// A configuration problem, always naming the key (or the file) at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path given by the operator.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax {
        /// The path given by the operator.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A key has a value of the wrong type or shape, or is unknown.
    #[error("config key `{key}`: {message}")]
    Key {
        /// Dotted path of the key, e.g. `timeouts.per_try`.
        key: String,
        /// Why the value was refused.
        message: String,
    },
    /// An environment variable could not be applied.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable's name.
        var: String,
        /// Why it was refused.
        message: String,
    },
}

impl ConfigError {
    /// A validation error for `key`.
    pub fn key(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Key {
            key: key.into(),
            message: message.into(),
        }
    }

    /// The key at fault, when one is (for the reload's answer).
    pub fn key_name(&self) -> Option<&str> {
        match self {
            ConfigError::Key { key, .. } => Some(key),
            ConfigError::Env { var, .. } => Some(var),
            _ => None,
        }
    }
}

impl From<InvalidParam> for ConfigError {
    fn from(e: InvalidParam) -> Self {
        ConfigError::Key {
            key: e.key,
            message: e.message,
        }
    }
}

/// Values given on the command line; each beats the file and the environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--listen`
    pub listen: Option<SocketAddr>,
    /// `--upstream`
    pub upstream: Option<String>,
    /// `--admin-listen`
    pub admin_listen: Option<SocketAddr>,
    /// `--log-format`
    pub log_format: Option<LogFormat>,
}

/// Where a configuration comes from, kept so a reload reads it again.
#[derive(Debug, Clone, Default)]
pub struct Source {
    /// The file, if one was given.
    pub path: Option<PathBuf>,
    /// The command-line flags (they keep beating the file on reload).
    pub overrides: Overrides,
}

impl Source {
    /// Read the file and the process environment again and validate.
    pub fn load(&self) -> Result<Config, ConfigError> {
        Config::load(self.path.as_deref(), &self.overrides)
    }
}

/// The validated configuration the sidecar runs with: one runtime parameter
/// value per concern, built once.
#[derive(Debug, Clone)]
pub struct Config {
    /// The effective file (defaults, file, environment and flags merged),
    /// kept to print it and to tell what a reload changed.
    pub file: FileConfig,
    /// The app-facing listener.
    pub listen: ListenParams,
    /// The admin listener's address.
    pub admin_address: SocketAddr,
    /// `admin.allowed_hosts`, lowercase.
    pub admin_allowed_hosts: std::sync::Arc<[String]>,
    /// The upstream and its client.
    pub upstream: UpstreamParams,
    /// Request-size limits.
    pub limits: Limits,
    /// The global retry policy (each route has its own copy with overrides).
    pub retry: RetryParams,
    /// The shared retry budget.
    pub budget: BudgetParams,
    /// The breaker.
    pub breaker: BreakerParams,
    /// What is transient.
    pub classify: ClassifyParams,
    /// The spool.
    pub spool: SpoolSettings,
    /// Logging.
    pub log: LogParams,
    /// How long in-flight requests (and then the spool's drain) get after
    /// SIGTERM.
    pub shutdown_grace: Duration,
    /// Whether the spool is drained before exit.
    pub shutdown_drain_spool: bool,
    /// Async runtime worker threads.
    pub worker_threads: usize,
    /// The preset in force.
    pub preset: Preset,
    /// Routes, validated, in match order: the operator's, the preset's,
    /// the catch-all.
    pub routes: Vec<Route>,
    /// Things the operator should know that do not stop the sidecar (a
    /// route that shadows the preset, ...).
    pub warnings: Vec<String>,
}

impl Config {
    /// Load from an optional file, then the process environment, then `overrides`.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k != "DATALAYER_SIDECAR_CONFIG")
            .collect();
        Self::load_with_env(path, &env, overrides)
    }

    /// Like [`Config::load`] with an explicit environment (for tests).
    pub fn load_with_env(
        path: Option<&Path>,
        env: &[(String, String)],
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.to_path_buf(),
                source,
            })?,
            None => String::new(),
        };
        let display_path = path.map(Path::to_path_buf).unwrap_or_default();
        Self::from_toml_str(&text, &display_path, env, overrides)
    }

    /// Parse TOML text, apply `env` and `overrides`, validate.
    pub fn from_toml_str(
        text: &str,
        path: &Path,
        env: &[(String, String)],
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        env::apply_env(&mut table, env)?;
        let mut file: FileConfig = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| {
                let key = e.path().to_string();
                let key = if key == "." {
                    "(top level)".to_string()
                } else {
                    key
                };
                ConfigError::key(key, e.into_inner().to_string())
            })?;
        if let Some(a) = overrides.listen {
            file.listen.address = a;
        }
        if let Some(u) = &overrides.upstream {
            file.upstream.url = u.clone();
        }
        if let Some(a) = overrides.admin_listen {
            file.admin.address = a;
        }
        if let Some(f) = overrides.log_format {
            file.log.format = f;
        }
        Self::validate(file)
    }

    /// Check cross-key constraints and build the runtime parameters.
    pub fn validate(file: FileConfig) -> Result<Self, ConfigError> {
        validate::validate(file)
    }

    /// The configuration a reload switches to from `self`: `next` with the
    /// keys that need a restart kept at the values in force, and those keys'
    /// names (the operator is told; they take effect at the next start).
    pub fn reload(&self, next: Config) -> Result<(Config, Vec<&'static str>), ConfigError> {
        let restart = restart::restart_needed(&self.file, &next.file);
        if restart.is_empty() {
            return Ok((next, restart));
        }
        let mut file = next.file;
        restart::keep_restart_keys(&self.file, &mut file);
        Ok((Self::validate(file)?, restart))
    }

    /// The effective configuration as TOML, with secrets replaced.
    pub fn to_toml(&self) -> String {
        let mut file = self.file.clone();
        if file.spool.api_key.is_some() {
            file.spool.api_key = Some("<redacted>".to_string());
        }
        if let Some(url) = &file.spool.postgres_url {
            file.spool.postgres_url = Some(crate::spool::store::pg::redact_url(url));
        }
        let mut out = toml::to_string_pretty(&file)
            .unwrap_or_else(|e| format!("# cannot print config: {e}\n"));
        out.push_str(&format!(
            "\n# Effective route table (preset \"{}\"), matched in order:\n",
            self.preset.as_str()
        ));
        for r in &self.routes {
            out.push_str(&format!(
                "#   {:<2} {} [{}]: {}\n",
                r.index + 1,
                r.name,
                r.origin.as_str(),
                r.describe()
            ));
        }
        for w in &self.warnings {
            out.push_str(&format!("# warning: {w}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::client::TlsRoots;
    use std::time::Duration;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_toml_str(text, Path::new("test.toml"), &env, &Overrides::default())
    }

    const MIN: &str = "[upstream]\nurl = \"http://127.0.0.1:9\"\n";

    #[test]
    fn defaults_are_safe() {
        let c = load(MIN, &[]).unwrap();
        assert!(c.file.listen.address.ip().is_loopback());
        assert!(c.file.admin.address.ip().is_loopback());
        assert!(c.file.timeouts.deadline < Duration::from_secs(10));
        assert_eq!(c.file.upstream.tls_roots, TlsRoots::Webpki);
    }

    #[test]
    fn misspelled_key_is_named() {
        let err = load("[listen]\nadress = \"127.0.0.1:1\"\n", &[]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("listen"), "{msg}");
        assert!(msg.contains("adress"), "{msg}");
    }

    #[test]
    fn bad_duration_is_named() {
        let err = load(&format!("{MIN}[timeouts]\nper_try = \"3 parsecs\"\n"), &[]).unwrap_err();
        assert!(err.to_string().contains("timeouts.per_try"), "{err}");
    }

    #[test]
    fn url_without_scheme_is_named() {
        let err = load("[upstream]\nurl = \"backend.example.com\"\n", &[]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("upstream.url") && msg.contains("scheme"),
            "{msg}"
        );
    }

    #[test]
    fn env_beats_file_and_flags_beat_env() {
        let text = format!("{MIN}[listen]\naddress = \"127.0.0.1:1000\"\nmax_connections = 5\n");
        let env = vec![
            (
                "DATALAYER_SIDECAR_LISTEN_ADDRESS".to_string(),
                "127.0.0.1:2000".to_string(),
            ),
            (
                "DATALAYER_SIDECAR_TIMEOUTS_PER_TRY".to_string(),
                "1s".to_string(),
            ),
        ];
        let c = Config::from_toml_str(&text, Path::new("t"), &env, &Overrides::default()).unwrap();
        assert_eq!(c.file.listen.address.port(), 2000);
        assert_eq!(c.file.listen.max_connections, 5);
        assert_eq!(c.file.timeouts.per_try, Duration::from_secs(1));
        let flags = Overrides {
            listen: Some("127.0.0.1:3000".parse().unwrap()),
            ..Default::default()
        };
        let c = Config::from_toml_str(&text, Path::new("t"), &env, &flags).unwrap();
        assert_eq!(c.file.listen.address.port(), 3000);
    }

    #[test]
    fn unknown_env_key_is_named() {
        let err = load(MIN, &[("DATALAYER_SIDECAR_LISTEN_ADRESS", "x")]).unwrap_err();
        assert!(err.to_string().contains("adress"), "{err}");
        let err = load(MIN, &[("DATALAYER_SIDECAR_NOPE_X", "1")]).unwrap_err();
        assert!(
            err.to_string().contains("DATALAYER_SIDECAR_NOPE_X"),
            "{err}"
        );
    }

    #[test]
    fn api_key_is_redacted_when_printed() {
        let c = load(&format!("{MIN}[spool]\napi_key = \"sk-secret\"\n"), &[]).unwrap();
        let printed = c.to_toml();
        assert!(!printed.contains("sk-secret"));
        assert!(printed.contains("<redacted>"));
    }

    /// Found on review: a key that is not a valid header value was dropped
    /// silently, and replays then went out without credentials.
    #[test]
    fn an_invalid_spool_api_key_is_refused() {
        let err = load(
            &format!("{MIN}[spool]\nstore_credentials = false\napi_key = \"sk-line\\nbreak\"\n"),
            &[],
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("spool.api_key"), "{msg}");
        assert!(
            !msg.contains("sk-line"),
            "the key itself is never printed: {msg}"
        );
    }

    #[test]
    fn the_shared_spools_lease_must_outlast_every_spooling_deadline_with_a_margin() {
        let pg = |lease: &str| {
            format!(
                "[upstream]\nurl = \"http://127.0.0.1:9\"\n[timeouts]\nper_try = \"1s\"\ndeadline = \"2s\"\n[spool]\nbackend = \"postgres\"\npostgres_url = \"postgres://u@127.0.0.1/db\"\nlease = \"{lease}\"\n"
            )
        };
        let e = load(&pg("2200ms"), &[]).unwrap_err().to_string();
        assert!(e.contains("spool.lease") && e.contains("500ms"), "{e}");
        assert!(load(&pg("2500ms"), &[]).is_ok());
    }

    #[test]
    fn per_try_longer_than_deadline_is_refused() {
        let err = load(
            &format!("{MIN}[timeouts]\nper_try = \"9s\"\ndeadline = \"2s\"\n"),
            &[],
        )
        .unwrap_err();
        assert!(err.to_string().contains("timeouts.per_try"), "{err}");
    }
}
