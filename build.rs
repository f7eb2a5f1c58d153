//! Release builds of the sidecar binary on x86_64 Linux place the functions a
//! running sidecar executes together at the start of the text segment, in the
//! order `.cargo/text-order.txt` gives (`.cargo/ordered-cc` resolves its names).
//! Code the sidecar never runs (the CLI's other commands, the PostgreSQL
//! client when the spool is on SQLite, error paths) then stays on disk
//! instead of being mapped in around every page the process touches.
//!
//! Only there: rustc links with lld on that target (the default since Rust
//! 1.90), and lld is what reads the order. `DATALAYER_SIDECAR_TEXT_ORDER=off`
//! turns it off.

fn main() {
    println!("cargo::rerun-if-env-changed=DATALAYER_SIDECAR_TEXT_ORDER");
    println!("cargo::rerun-if-changed=.cargo/text-order.txt");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let target = std::env::var("TARGET").unwrap_or_default();
    let off = std::env::var("DATALAYER_SIDECAR_TEXT_ORDER").is_ok_and(|v| v == "off");
    let Ok(dir) = std::env::var("CARGO_MANIFEST_DIR") else {
        return;
    };
    let order = std::path::Path::new(&dir).join(".cargo/text-order.txt");
    if release && target == "x86_64-unknown-linux-gnu" && !off && order.is_file() {
        println!(
            "cargo::rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        // A name that matches nothing (a stale file) is not worth a warning.
        println!("cargo::rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}
