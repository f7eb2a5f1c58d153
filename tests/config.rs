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
    // The shipped file documents the preset; it does not copy it.
    assert!(reparsed.get("routes").is_none(), "{printed}");
    assert_eq!(reparsed["preset"].as_str(), Some("literalai"));
    // The effective table, preset included, is printed in match order.
    let table: Vec<&str> = printed
        .lines()
        .filter_map(|l| l.strip_prefix("#   "))
        .collect();
    let names: Vec<&str> = table
        .iter()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(
        names,
        [
            "spooled_writes",
            "idempotent_writes",
            "mutations",
            "queries",
            "upload",
            "default"
        ],
        "{printed}"
    );
    assert!(table[0].contains("upsertThread") && table[0].contains("on_failure=spool"));
}

#[test]
fn preset_none_from_the_environment_leaves_the_catch_all() {
    let o = run(
        OK,
        &[
            "check-config",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ],
        &[("DATALAYER_SIDECAR_PRESET", "none")],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let printed = String::from_utf8_lossy(&o.stdout);
    assert!(printed.contains("preset = \"none\""), "{printed}");
    assert!(printed.contains("#   1  default [catch-all]"), "{printed}");
    assert!(!printed.contains("spooled_writes"), "{printed}");
    let o = run(
        OK,
        &["check-config"],
        &[("DATALAYER_SIDECAR_PRESET", "literal")],
    );
    assert_eq!(o.status.code(), Some(64));
    assert!(stderr(&o).contains("preset"), "{}", stderr(&o));
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

#[test]
fn explain_names_the_route_policy_and_order_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sidecar.toml");
    std::fs::write(&path, OK).unwrap();
    let body = dir.path().join("body.json");
    std::fs::write(
        &body,
        r#"{"query":"mutation AddStep($id_0: String!) { step0: ingestStep(id: $id_0) { ok message } }","variables":{"id_0":"s-1"}}"#,
    )
    .unwrap();
    let o = Command::new(binary())
        .args(["explain", "--config"])
        .arg(&path)
        .arg(&body)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["route"], "spooled_writes");
    assert_eq!(v["origin"], "literalai");
    assert_eq!(v["spooled_on_failure"], true);
    assert_eq!(v["order_keys"], serde_json::json!(["step:s-1"]));
    assert_eq!(v["operation"]["root_fields"][0]["literalai"], "spooled");
    let o = Command::new(binary())
        .args([
            "explain",
            "--method",
            "GET",
            "--path",
            "/api/my-project",
            "--config",
        ])
        .arg(&path)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["route"], "default");
    assert_eq!(v["idempotent"], true);
}

#[test]
fn explain_of_a_document_without_its_variables_shows_the_id_it_depends_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sidecar.toml");
    std::fs::write(&path, OK).unwrap();
    let explain = |body: &str| -> serde_json::Value {
        let file = dir.path().join("body.json");
        std::fs::write(&file, body).unwrap();
        let o = Command::new(binary())
            .args(["explain", "--config"])
            .arg(&path)
            .arg(&file)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let doc = "mutation UpsertThread($threadId: String!) { upsertThread(id: $threadId) { id } }";
    // The SDK's document as it is shipped: the id comes with each write.
    let v = explain(&serde_json::json!({"query": doc, "variables": {}}).to_string());
    assert_eq!(v["route"], "spooled_writes");
    assert_eq!(v["spooled_on_failure"], true, "{v}");
    assert_eq!(v["order_keys"], serde_json::json!(["thread:$threadId"]));
    // Sent with no usable id, the same document is delivered live only.
    let v =
        explain(&serde_json::json!({"query": doc, "variables": {"threadId": null}}).to_string());
    assert_eq!(v["spooled_on_failure"], false, "{v}");
    assert_eq!(v["order_keys"], serde_json::json!([]));
}
