//! Running the real sidecar: in process (fast, most tests) or as the built
//! binary (signals, logs, memory).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use datalayer_sidecar::config::{Config, Overrides};
use datalayer_sidecar::sidecar::{self, RunError};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The `[[routes]]` of the shipped `config/sidecar.toml` (the LiteralAI
/// preset), so tests exercise what operators run.
pub fn shipped_routes() -> String {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/sidecar.toml"))
        .expect("config/sidecar.toml");
    let start = text.find("[[routes]]").expect("shipped config has routes");
    text[start..].to_string()
}

/// Config text with the upstream set and `extra` appended.
pub fn config_text(upstream: &str, extra: &str) -> String {
    format!("[upstream]\nurl = \"{upstream}\"\n{extra}\n")
}

pub fn config(upstream: &str, extra: &str) -> Config {
    Config::from_toml_str(
        &config_text(upstream, extra),
        Path::new("test.toml"),
        &[],
        &Overrides::default(),
    )
    .unwrap_or_else(|e| panic!("test config invalid: {e}"))
}

/// The sidecar running in this process.
pub struct Sidecar {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<Result<(), RunError>>>,
}

impl Sidecar {
    pub async fn start(upstream: &str, extra: &str) -> Sidecar {
        Self::start_with(config(upstream, extra)).await
    }

    pub async fn start_with(cfg: Config) -> Sidecar {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let admin_addr = admin.local_addr().unwrap();
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(sidecar::run_with_listeners(cfg, listener, admin, rx));
        Sidecar {
            addr,
            admin: admin_addr,
            stop,
            task: Some(task),
        }
    }

    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// A free loopback port (bound and released).
pub fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_datalayer-sidecar")
}

/// The sidecar as a child process, stdout and stderr captured to a file.
pub struct Process {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
}

impl Process {
    /// Spawn with `config` (TOML text) and extra environment.
    pub async fn spawn(config: &str, env: &[(&str, &str)]) -> Process {
        let dir = tempfile::tempdir().unwrap();
        Self::spawn_in(dir, config, env).await
    }

    pub async fn spawn_in(dir: tempfile::TempDir, config: &str, env: &[(&str, &str)]) -> Process {
        let path = dir.path().join("sidecar.toml");
        std::fs::write(&path, config).unwrap();
        let addr = free_port();
        let admin = free_port();
        let log = dir.path().join("sidecar.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let err = out.try_clone().unwrap();
        let mut cmd = Command::new(binary());
        cmd.arg("--config")
            .arg(&path)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--admin-listen")
            .arg(admin.to_string())
            .current_dir(dir.path())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn sidecar");
        let p = Process {
            child,
            addr,
            admin,
            dir,
            log,
        };
        p.wait_ready(Duration::from_secs(20)).await;
        p
    }

    pub async fn wait_ready(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Ok(Ok(s)) = tokio::time::timeout(
                Duration::from_millis(500),
                tokio::net::TcpStream::connect(self.admin),
            )
            .await
            {
                drop(s);
                let a = super::client::get(self.admin, "/readyz").await;
                if a.status == 200 {
                    return;
                }
            }
            if tokio::time::Instant::now() > deadline {
                panic!("sidecar not ready; log:\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A field of /proc/<pid>/status in KiB (e.g. "VmHWM", "VmRSS").
    pub fn status_kib(&self, field: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        s.lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Wait for the process to exit.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            if tokio::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("sidecar did not exit; log:\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
