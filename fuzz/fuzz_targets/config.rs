//! Loading a config: TOML text, then (after a NUL byte) environment lines
//! `NAME=value` laid over it, validated into runtime parameters. No panic;
//! a config that loads prints as TOML that loads again.
#![no_main]

use datalayer_sidecar::config::{Config, Overrides};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (toml, env) = text.split_once('\0').unwrap_or((text, ""));
    let env: Vec<(String, String)> = env
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let path = std::path::Path::new("fuzz.toml");
    if let Ok(cfg) = Config::from_toml_str(toml, path, &env, &Overrides::default()) {
        let printed = cfg.to_toml();
        let again = Config::from_toml_str(&printed, path, &[], &Overrides::default());
        assert!(again.is_ok(), "{:?}\n{printed}", again.err().map(|e| e.to_string()));
    }
});
