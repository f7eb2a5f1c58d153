//! A throwaway PostgreSQL cluster for one test: Debian's server binaries,
//! `initdb` into a temporary directory as the `postgres` user (the server
//! refuses to run as root), a free loopback port, password authentication,
//! stopped (by `pg_ctl`, with its PID file) when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const PASSWORD: &str = "s3cret-pw-for-tests";

pub struct Postgres {
    pub addr: SocketAddr,
    bin: PathBuf,
    data: PathBuf,
    /// Extra server options (`-c ssl=on ...`).
    extra: String,
    _dir: tempfile::TempDir,
}

/// A test CA and a server certificate for 127.0.0.1 signed by it.
pub struct ServerPki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

pub fn server_pki() -> ServerPki {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "spool test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    ServerPki {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

fn bindir() -> PathBuf {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if p.join("initdb").exists() {
            return p;
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    found.retain(|p| p.join("initdb").exists());
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!("no PostgreSQL server binaries: `apt-get install postgresql` (.ci/run installs it)")
    })
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .is_some_and(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Run `bin/tool args` as the `postgres` user when we are root.
fn run(bin: &Path, tool: &str, args: &[&str]) -> Output {
    let exe = bin.join(tool);
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.arg("-u").arg("postgres").arg("--").arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    cmd.args(args).output().expect("run a PostgreSQL tool")
}

impl Postgres {
    pub fn start() -> Postgres {
        Self::start_with(None)
    }

    /// With TLS on (and still accepting plain connections).
    pub fn start_tls(pki: &ServerPki) -> Postgres {
        Self::start_with(Some(pki))
    }

    fn start_with(tls: Option<&ServerPki>) -> Postgres {
        let bin = bindir();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD).unwrap();
        if is_root() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::create_dir(&data).unwrap();
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown to postgres");
        }
        let out = run(
            &bin,
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                "--pwfile",
                pwfile.to_str().unwrap(),
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut extra = String::new();
        if let Some(pki) = tls {
            use std::os::unix::fs::PermissionsExt;
            let (cert, key) = (data.join("server.crt"), data.join("server.key"));
            std::fs::write(&cert, &pki.cert_pem).unwrap();
            std::fs::write(&key, &pki.key_pem).unwrap();
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
            if is_root() {
                let ok = Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(&cert)
                    .arg(&key)
                    .status()
                    .unwrap()
                    .success();
                assert!(ok);
            }
            extra = format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                cert.display(),
                key.display()
            );
        }
        let addr = super::proxy::free_port();
        let pg = Postgres {
            addr,
            bin,
            data,
            extra,
            _dir: dir,
        };
        pg.pg_ctl_start();
        pg
    }

    fn pg_ctl_start(&self) {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=on -c max_connections=60{}",
            self.addr.port(),
            self.data.display(),
            self.extra
        );
        let log = self.data.join("server.log");
        let out = run(
            &self.bin,
            "pg_ctl",
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-o",
                &opts,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "30",
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {} {}",
            String::from_utf8_lossy(&out.stdout),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// `postgres://postgres:<password>@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres:{PASSWORD}@127.0.0.1:{}/postgres",
            self.addr.port()
        )
    }

    /// The same without the password (for `PGPASSWORD` or a file).
    pub fn url_without_password(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres",
            self.addr.port()
        )
    }

    /// Stop the server (fast shutdown: open sessions are closed).
    pub fn stop(&self) {
        let out = run(
            &self.bin,
            "pg_ctl",
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Start it again after [`Postgres::stop`], on the same port.
    pub fn restart(&self) {
        self.pg_ctl_start();
    }

    /// Run SQL with psql; its output.
    pub fn psql(&self, sql: &str) -> String {
        String::from_utf8_lossy(&self.psql_output(sql).stdout)
            .trim()
            .to_string()
    }

    /// `sql` run as [`Postgres::psql`] does, returning the server's notices
    /// (what `VERBOSE` reports) rather than the rows.
    pub fn psql_notices(&self, sql: &str) -> String {
        String::from_utf8_lossy(&self.psql_output(sql).stderr).to_string()
    }

    fn psql_output(&self, sql: &str) -> std::process::Output {
        let out = Command::new(self.bin.join("psql"))
            .arg(self.url())
            .args(["-At", "-c", sql])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = run(
            &self.bin,
            "pg_ctl",
            &[
                "-D",
                self.data.to_str().unwrap_or_default(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }
}
