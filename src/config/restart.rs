//! The keys a reload cannot apply: they shape a socket, a file handle or the
//! runtime made at start. A reload reports a change to one of them as
//! "restart needed" and keeps the value in force, and applies everything
//! else.
//!
//! Separate from validation because it is a rule about two configurations
//! (the running one and the next), not about one file. The keys live in one
//! table, [`RESTART_KEYS`], that both the report and the keeping read, so a
//! key reported as needing a restart is always one that is also kept, and a
//! new one is added in one place.

use super::schema::FileConfig;

/// One key that needs a restart: its dotted name, how to tell whether it
/// changed, and how to put the value in force back.
struct RestartKey {
    name: &'static str,
    changed: fn(&FileConfig, &FileConfig) -> bool,
    keep: fn(&FileConfig, &mut FileConfig),
}

/// A [`RestartKey`] for `section.key`: the name is spelled from the field
/// path, so the name reported and the field compared and kept cannot
/// disagree.
macro_rules! restart_key {
    ($section:ident . $key:ident) => {
        RestartKey {
            name: concat!(stringify!($section), ".", stringify!($key)),
            changed: |old, new| old.$section.$key != new.$section.$key,
            keep: |old, new| new.$section.$key.clone_from(&old.$section.$key),
        }
    };
}

/// Every key that needs a restart, in the order a reload reports them.
const RESTART_KEYS: &[RestartKey] = &[
    restart_key!(listen.address),
    restart_key!(listen.http2),
    restart_key!(listen.max_connections),
    restart_key!(listen.header_read_timeout),
    restart_key!(listen.max_header_bytes),
    restart_key!(admin.address),
    restart_key!(spool.path),
    restart_key!(spool.backend),
    restart_key!(spool.postgres_url),
    restart_key!(spool.postgres_password_file),
    restart_key!(spool.postgres_ca_file),
    restart_key!(spool.postgres_pool),
    restart_key!(spool.lease),
    restart_key!(spool.max_batch),
    restart_key!(runtime.worker_threads),
    restart_key!(log.format),
];

/// The names of the keys that need a restart and differ between `old` (in
/// force) and `new`.
pub(super) fn restart_needed(old: &FileConfig, new: &FileConfig) -> Vec<&'static str> {
    RESTART_KEYS
        .iter()
        .filter(|k| (k.changed)(old, new))
        .map(|k| k.name)
        .collect()
}

/// Put back into `new` the keys that need a restart, so the generation a
/// reload builds describes what actually runs.
pub(super) fn keep_restart_keys(old: &FileConfig, new: &mut FileConfig) {
    for k in RESTART_KEYS {
        (k.keep)(old, new);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::schema::SpoolBackendKind;

    #[test]
    fn changed_restart_keys_are_named_in_table_order_and_kept() {
        let old = FileConfig::default();
        let mut new = old.clone();
        new.log.format = match old.log.format {
            crate::telemetry::LogFormat::Json => crate::telemetry::LogFormat::Text,
            crate::telemetry::LogFormat::Text => crate::telemetry::LogFormat::Json,
        };
        new.listen.max_connections += 1;
        new.spool.backend = SpoolBackendKind::Postgres;
        new.spool.postgres_url = Some("postgres://db/x".into());
        new.runtime.worker_threads += 1;
        new.timeouts.per_try += Duration::from_secs(1);
        assert_eq!(
            restart_needed(&old, &new),
            [
                "listen.max_connections",
                "spool.backend",
                "spool.postgres_url",
                "runtime.worker_threads",
                "log.format",
            ]
        );
        keep_restart_keys(&old, &mut new);
        assert!(restart_needed(&old, &new).is_empty());
        assert_eq!(new.spool.postgres_url, None);
        assert_eq!(
            new.timeouts.per_try,
            old.timeouts.per_try + Duration::from_secs(1),
            "a key a reload applies is left as the new file has it"
        );
    }
}
