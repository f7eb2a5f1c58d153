//! The environment overlay: `DATALAYER_SIDECAR_<SECTION>_<KEY>=value` onto
//! the parsed file.
//!
//! It works on the parsed TOML table rather than on typed structs, so an
//! environment value goes through exactly the same deserialization and
//! error reporting as the same value written in the file.

use std::collections::BTreeSet;

use super::ConfigError;

/// Prefix of the environment variables that override file keys.
pub const ENV_PREFIX: &str = "DATALAYER_SIDECAR_";

/// Sections an environment variable may name. `routes` is a list and can only
/// be set in the file.
const ENV_SECTIONS: &[&str] = &[
    "listen", "upstream", "admin", "limits", "timeouts", "retry", "breaker", "classify", "spool",
    "log", "shutdown", "runtime",
];

/// Overlay `DATALAYER_SIDECAR_<SECTION>_<KEY>=value` onto the parsed file.
///
/// The value is read as a TOML value when it parses as one (numbers, booleans,
/// arrays) and as a plain string otherwise, so `..._TIMEOUTS_PER_TRY=2s` and
/// `..._LISTEN_MAX_CONNECTIONS=64` both work.
pub(super) fn apply_env(
    table: &mut toml::Table,
    env: &[(String, String)],
) -> Result<(), ConfigError> {
    let mut seen = BTreeSet::new();
    for (var, raw) in env {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if rest == "CONFIG" {
            continue;
        }
        // The one top-level key.
        if rest == "PRESET" {
            table.insert("preset".to_string(), toml::Value::String(raw.clone()));
            continue;
        }
        let lower = rest.to_ascii_lowercase();
        let Some((section, key)) = lower.split_once('_') else {
            return Err(ConfigError::Env {
                var: var.clone(),
                message: "expected DATALAYER_SIDECAR_<SECTION>_<KEY>".to_string(),
            });
        };
        if !ENV_SECTIONS.contains(&section) {
            return Err(ConfigError::Env {
                var: var.clone(),
                message: format!(
                    "unknown section `{section}`; expected one of {}",
                    ENV_SECTIONS.join(", ")
                ),
            });
        }
        if !seen.insert((section.to_string(), key.to_string())) {
            continue;
        }
        let value = parse_env_value(raw);
        let entry = table
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let toml::Value::Table(sub) = entry else {
            return Err(ConfigError::Env {
                var: var.clone(),
                message: format!("`{section}` in the file is not a table"),
            });
        };
        sub.insert(key.to_string(), value);
    }
    Ok(())
}

fn parse_env_value(raw: &str) -> toml::Value {
    let probe = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&probe) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}
