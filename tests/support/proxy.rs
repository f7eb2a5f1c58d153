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

/// A route that replaces the preset's `spooled_writes` (same match: a
/// mutation whose root fields are all spoolable) with `policy` (TOML keys,
/// one per line), so a test can shorten its timeouts or turn spooling off.
pub fn spooled_route(policy: &str) -> String {
    use datalayer_sidecar::route::literalai::{Handling, OPERATIONS};
    let fields: Vec<String> = OPERATIONS
        .iter()
        .filter(|o| o.handling == Handling::Spooled)
        .map(|o| format!("\"{}\"", o.field))
        .collect();
    format!(
        "\n[[routes]]\nname = \"spooled_writes\"\nmethods = [\"POST\"]\npath = \"/api/graphql\"\ngraphql = {{ operation_type = \"mutation\", root_fields = [{}] }}\n{policy}\n",
        fields.join(", ")
    )
}

/// Config text with the upstream set and `extra` appended. Unless `extra`
/// says otherwise, a stop waits at most 3 s (for requests in flight, then
/// for the spool to drain): most tests stop with the backend down and
/// entries waiting, and the default 20 s would only make them slow.
pub fn config_text(upstream: &str, extra: &str) -> String {
    let shutdown = if extra.contains("[shutdown]") {
        ""
    } else {
        "[shutdown]\ngrace_period = \"3s\"\n"
    };
    format!("{shutdown}[upstream]\nurl = \"{upstream}\"\n{extra}\n")
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
    /// Holds the spool file unless the test chose its own path.
    pub dir: tempfile::TempDir,
}

impl Sidecar {
    /// Start with `extra` config; the spool lives in a fresh temporary
    /// directory unless `extra` has its own `[spool]` section.
    pub async fn start(upstream: &str, extra: &str) -> Sidecar {
        let dir = tempfile::tempdir().unwrap();
        let extra = if extra.contains("[spool]") {
            extra.to_string()
        } else {
            format!(
                "[spool]\npath = \"{}\"\n{extra}",
                dir.path().join("spool.sqlite3").display()
            )
        };
        Self::start_in(config(upstream, &extra), dir).await
    }

    pub async fn start_with(cfg: Config) -> Sidecar {
        Self::start_in(cfg, tempfile::tempdir().unwrap()).await
    }

    pub async fn start_in(cfg: Config, dir: tempfile::TempDir) -> Sidecar {
        Self::start_opts(cfg, dir, Default::default()).await
    }

    pub async fn start_opts(
        cfg: Config,
        dir: tempfile::TempDir,
        opts: datalayer_sidecar::sidecar::Options,
    ) -> Sidecar {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let admin_addr = admin.local_addr().unwrap();
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(sidecar::run_with_listeners(cfg, opts, listener, admin, rx));
        // Ready as a startup probe would see it (or the start failed, which
        // `result` reports).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !task.is_finished() && tokio::time::Instant::now() < deadline {
            if super::client::try_get(admin_addr, "/readyz").await == Some(200) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Sidecar {
            addr,
            admin: admin_addr,
            stop,
            task: Some(task),
            dir,
        }
    }

    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
        }
    }

    /// Stop and return the start-up/run result (for start-up failures).
    pub async fn result(mut self) -> Result<(), RunError> {
        let t = self.task.take().unwrap();
        match tokio::time::timeout(Duration::from_secs(30), t).await {
            Ok(Ok(r)) => r,
            _ => panic!("sidecar task did not finish"),
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
    /// Working directory (the spool's relative path resolves here).
    pub dir: PathBuf,
    pub log: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Process {
    /// Spawn with `config` (TOML text) and extra environment, in a fresh
    /// temporary directory.
    pub async fn spawn(config: &str, env: &[(&str, &str)]) -> Process {
        let tmp = tempfile::tempdir().unwrap();
        let mut p = Self::spawn_at(tmp.path(), config, env, &[]).await;
        p._tmp = Some(tmp);
        p
    }

    /// Spawn in `dir` (kept by the caller, so a restart finds the same
    /// spool), with extra command-line arguments.
    pub async fn spawn_at(
        dir: &Path,
        config: &str,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Process {
        let mut p = Self::start_at(dir, config, env, args);
        p.wait_ready(Duration::from_secs(20)).await;
        p
    }

    /// Spawn without waiting for readiness (for start-up failures).
    pub fn start_at(dir: &Path, config: &str, env: &[(&str, &str)], args: &[&str]) -> Process {
        // Port 0: the sidecar binds free ports itself and logs them, so
        // parallel tests never race for a port.
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        Self::start_on(dir, config, env, args, any, any)
    }

    /// Spawn on given addresses, without waiting for readiness.
    pub fn start_on(
        dir: &Path,
        config: &str,
        env: &[(&str, &str)],
        args: &[&str],
        addr: SocketAddr,
        admin: SocketAddr,
    ) -> Process {
        let path = dir.join("sidecar.toml");
        std::fs::write(&path, config).unwrap();
        let log = dir.join("sidecar.log");
        let _ = std::fs::remove_file(&log);
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
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn sidecar");
        Process {
            child,
            addr,
            admin,
            dir: dir.to_path_buf(),
            log,
            _tmp: None,
        }
    }

    /// Run the binary with `args` (e.g. `spool stats`) against this
    /// process's config, in its directory.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(binary())
            .args(args)
            .arg("--config")
            .arg(self.dir.join("sidecar.toml"))
            .current_dir(&self.dir)
            .output()
            .unwrap()
    }

    /// The addresses from the "started" line of the log, once written.
    fn bound_addrs(&self) -> Option<(SocketAddr, SocketAddr)> {
        let logs = self.logs();
        let line = logs
            .lines()
            .find(|l| l.contains("datalayer-sidecar started"))?;
        let field = |name: &str| -> Option<SocketAddr> {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                return v[name].as_str()?.parse().ok();
            }
            let start = line.find(&format!("{name}="))? + name.len() + 1;
            line[start..].split_whitespace().next()?.parse().ok()
        };
        Some((field("listen")?, field("admin")?))
    }

    pub async fn wait_ready(&mut self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some((addr, admin)) = self.bound_addrs() {
                self.addr = addr;
                self.admin = admin;
                break;
            }
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!("sidecar exited with {st}; log:\n{}", self.logs());
            }
            if tokio::time::Instant::now() > deadline {
                panic!("sidecar did not start; log:\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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
