//! `check-config` and start-up errors, through the real binary.

mod support;

use std::process::{Command, Output};

use support::proxy::binary;

fn run(config: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sidecar.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(binary());
    cmd.args(args)
        .arg("--config")
        .arg(&path)
        .env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn check(config: &str) -> Output {
    run(config, &["check-config"], &[])
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const OK: &str = "[upstream]\nurl = \"http://127.0.0.1:9\"\n";

#[test]
fn shipped_config_is_valid_and_printed() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config/sidecar.toml");
    let text = std::fs::read_to_string(shipped).unwrap();
    // Free ports, so the check does not trip over a sidecar running here.
    let o = run(
        &text,
        &[
            "check-config",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let printed = String::from_utf8_lossy(&o.stdout);
    let reparsed: toml::Table = toml::from_str(&printed).expect("effective config is TOML");
    assert!(reparsed["routes"].as_array().unwrap().len() >= 5);
    assert!(printed.contains("step_writes"));
}

#[test]
fn misspelled_key_is_named() {
    let o = check(&format!("{OK}[listen]\nadress = \"127.0.0.1:1\"\n"));
    assert_eq!(o.status.code(), Some(64));
    let e = stderr(&o);
    assert!(e.contains("`listen`") && e.contains("adress"), "{e}");
}

#[test]
fn bad_duration_is_named() {
    let o = check(&format!("{OK}[timeouts]\nper_try = \"soon\"\n"));
    assert_eq!(o.status.code(), Some(64));
    assert!(stderr(&o).contains("timeouts.per_try"), "{}", stderr(&o));
}

#[test]
fn url_without_scheme_is_named() {
    let o = check("[upstream]\nurl = \"literal.internal:443\"\n");
    assert_eq!(o.status.code(), Some(64));
    let e = stderr(&o);
    assert!(e.contains("upstream.url") && e.contains("scheme"), "{e}");
}

#[test]
fn missing_upstream_is_named() {
    let o = check("");
    assert_eq!(o.status.code(), Some(64));
    assert!(stderr(&o).contains("upstream.url"), "{}", stderr(&o));
}

#[test]
fn syntax_error_names_the_line() {
    let o = check("[upstream\nurl = 1\n");
    assert_eq!(o.status.code(), Some(64));
    assert!(stderr(&o).contains("line 1"), "{}", stderr(&o));
}

#[test]
fn port_in_use_is_named_by_check_config_and_at_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let cfg = format!("{OK}[listen]\naddress = \"{addr}\"\n[admin]\naddress = \"127.0.0.1:0\"\n");
    let o = check(&cfg);
    assert_eq!(o.status.code(), Some(64));
    let e = stderr(&o);
    assert!(e.contains("listen.address") && e.contains(&addr), "{e}");
    // The same at start, when the sidecar itself tries to bind.
    let o = run(&cfg, &[], &[]);
    assert_eq!(o.status.code(), Some(64));
    let e = stderr(&o);
    assert!(e.contains("listen.address"), "{e}");
}

#[test]
fn environment_and_flags_override_the_file() {
    let cfg =
        format!("{OK}[listen]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n");
    let o = run(
        &cfg,
        &["check-config", "--upstream", "https://flag.example"],
        &[
            ("DATALAYER_SIDECAR_UPSTREAM_URL", "https://env.example"),
            ("DATALAYER_SIDECAR_TIMEOUTS_PER_TRY", "1500ms"),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let printed = String::from_utf8_lossy(&o.stdout);
    assert!(printed.contains("https://flag.example"), "{printed}");
    assert!(printed.contains("per_try = \"1s 500ms\""), "{printed}");

    let o = run(
        &cfg,
        &["check-config"],
        &[("DATALAYER_SIDECAR_RETRY_MAX_ATEMPTS", "2")],
    );
    assert_eq!(o.status.code(), Some(64));
    assert!(stderr(&o).contains("max_atempts"), "{}", stderr(&o));
}

#[test]
fn secrets_are_redacted_in_the_printed_config() {
    let cfg = format!(
        "{OK}[listen]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n[spool]\napi_key = \"sk-do-not-print\"\n"
    );
    let o = check(&cfg);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!out.contains("sk-do-not-print"));
    assert!(out.contains("<redacted>"));
}
