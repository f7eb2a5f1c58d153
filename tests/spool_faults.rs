//! The spool on a filesystem that misbehaves: full, read-only, not
//! writable at start, its file deleted while the sidecar runs. Each ends in
//! a clear error or a clear recovery, never a panic, never an
//! acknowledgement without a commit, and nothing acknowledged is lost.
//!
//! These tests mount small tmpfs filesystems, so they need root (CI runs
//! as root); without it they fail and say so.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::backend::{Backend, Fault};
use support::client::{self, add_step_with, query};
use support::proxy::{Process, config, spooled_route};
use support::{Answer, Reply, Sidecar};

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, options: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "mounting a tmpfs at {} failed: these tests need root (CI runs as root)",
            dir.display()
        );
        Tmpfs {
            dir: dir.to_path_buf(),
        }
    }

    fn remount(&self, options: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "remount {options} failed");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Step writes fail on the backend while `failing`; everything else
/// (queries) is answered.
fn steps_fail_while(failing: Arc<AtomicBool>) -> Fault {
    Arc::new(move |_, _| {
        failing
            .load(Ordering::SeqCst)
            .then(|| Reply::text(503, "busy"))
    })
}

fn settings(spool_path: &Path) -> String {
    format!(
        "[timeouts]\nper_try = \"300ms\"\ndeadline = \"2s\"\n[retry]\nbackoff_base = \"10ms\"\nbackoff_max = \"20ms\"\nmin_attempt_time = \"10ms\"\n[breaker]\nenabled = false\n[spool]\npath = \"{}\"\nreplay_backoff_base = \"20ms\"\nreplay_backoff_max = \"100ms\"\ncommit_margin = \"300ms\"\n{}",
        spool_path.display(),
        spooled_route(
            "idempotent = true\non_failure = \"spool\"\ntimeouts = { per_try = \"200ms\" }\nretry = { max_attempts = 1 }"
        )
    )
}

async fn write(addr: std::net::SocketAddr, id: &str, content: &str) -> Answer {
    client::post_json(
        addr,
        "/api/graphql",
        &add_step_with(vec![(id.to_string(), content.to_string())]),
    )
    .await
}

fn acked(a: &Answer) -> bool {
    a.status == 200 && a.header("x-sidecar-spooled") == Some("true")
}

fn code(a: &Answer) -> String {
    a.json()["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Write `path` until the filesystem has no room left.
fn fill_up(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).and_then(|()| f.sync_data()).is_ok() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_quickly_keeps_traffic_flowing_and_recovers_by_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(&tmp.path().join("fs"), "size=2m");
    let failing = Arc::new(AtomicBool::new(true));
    let backend = Backend::up_now(Some(steps_fail_while(failing.clone()))).await;
    let sc = Sidecar::start_in(
        config(&backend.url(), &settings(&fs.dir.join("spool.sqlite3"))),
        tempfile::tempdir().unwrap(),
    )
    .await;
    let filler = "x".repeat(8 * 1024);
    let mut acknowledged: HashMap<String, String> = HashMap::new();
    let mut refused = None;
    for i in 0..1000 {
        let id = format!("s{i}");
        let started = tokio::time::Instant::now();
        let a = write(sc.addr, &id, &filler).await;
        if acked(&a) {
            acknowledged.insert(id, filler.clone());
            continue;
        }
        // Refused: structured, quick, and it says why.
        assert_eq!(a.status, 503, "{}", a.text());
        assert_eq!(code(&a), "spool_full", "{}", a.text());
        assert!(a.header("retry-after").is_some());
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "refused after {:?}",
            started.elapsed()
        );
        refused = Some(i);
        break;
    }
    assert!(refused.is_some(), "the 2 MiB filesystem filled up");
    assert!(!acknowledged.is_empty());
    // Live traffic is not the spool's business: it still flows.
    let q = client::post_json(sc.addr, "/api/graphql", &query()).await;
    assert_eq!(q.status, 200, "{}", q.text());
    // Still full: still refused, nothing acknowledged without a commit.
    // The store may give back pages of its log meanwhile (a checkpoint),
    // so take what is left first.
    fill_up(&fs.dir.join("ballast"));
    let a = write(sc.addr, "while-full", &filler).await;
    assert_eq!(a.status, 503, "{}", a.text());

    // Space comes back; writes are accepted again without a restart.
    fs.remount("size=64m");
    let mut back = false;
    for _ in 0..50 {
        let a = write(sc.addr, "after", "space returned").await;
        if acked(&a) {
            acknowledged.insert("after".into(), "space returned".into());
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(back, "writes are accepted again once space returns");

    // The backend recovers: everything acknowledged arrives.
    failing.store(false, Ordering::SeqCst);
    backend
        .wait_for(Duration::from_secs(30), "every acknowledged write", |st| {
            acknowledged
                .iter()
                .all(|(id, c)| st.steps.get(id) == Some(c))
        })
        .await;
    assert!(!backend.steps().contains_key("while-full"));
    sc.stop().await;
}

/// An ext4 filesystem on a loop device, mounted `errors=remount-ro`, so a
/// filesystem error turns it read-only under open files, as the kernel does
/// to a failing disk in production.
struct Ext4 {
    dir: PathBuf,
    image: PathBuf,
}

impl Ext4 {
    fn create(dir: &Path, image: &Path) -> Ext4 {
        let ok = Command::new("truncate")
            .args(["-s", "64M"])
            .arg(image)
            .status()
            .is_ok_and(|s| s.success())
            && Command::new("mkfs.ext4")
                .args(["-q", "-F"])
                .arg(image)
                .status()
                .is_ok_and(|s| s.success());
        assert!(
            ok,
            "mkfs.ext4 failed (e2fsprogs is installed by tests/setup.sh)"
        );
        let e = Ext4 {
            dir: dir.to_path_buf(),
            image: image.to_path_buf(),
        };
        e.mount();
        e
    }

    fn mount(&self) {
        std::fs::create_dir_all(&self.dir).unwrap();
        // After an unmount the kernel lets go of the image's loop device a
        // moment later; until then `mount` says the image "is already
        // mounted". Seen on a loaded machine: try again for a while.
        let ok = succeeds_within_5s(|| {
            let mut c = Command::new("mount");
            c.args(["-o", "loop,errors=remount-ro"])
                .arg(&self.image)
                .arg(&self.dir);
            c
        });
        assert!(ok, "mounting a loop device needs root (CI runs as root)");
    }

    /// Make the kernel see an error on the filesystem: it goes read-only.
    fn fail(&self) {
        let dev = std::fs::read_to_string("/proc/mounts")
            .unwrap()
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(self.dir.to_str().unwrap()))
            .and_then(|l| l.split_whitespace().next().map(str::to_string))
            .expect("mounted");
        let name = dev.trim_start_matches("/dev/");
        std::fs::write(format!("/sys/fs/ext4/{name}/trigger_fs_error"), "1")
            .expect("the kernel exposes trigger_fs_error");
    }

    /// Unmount, waiting out a "target is busy" while the stopped sidecar's
    /// files are still being closed.
    fn unmount(&self) {
        let ok = succeeds_within_5s(|| {
            let mut c = Command::new("umount");
            c.arg(&self.dir);
            c
        });
        assert!(ok, "{} stays mounted", self.dir.display());
    }
}

/// Run the command `make` builds until it succeeds, every 100 ms for 5 s.
fn succeeds_within_5s(make: impl Fn() -> Command) -> bool {
    for _ in 0..50 {
        if make().status().is_ok_and(|s| s.success()) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filesystem_gone_read_only_refuses_writes_and_a_restart_delivers_what_was_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = Ext4::create(&tmp.path().join("fs"), &tmp.path().join("fs.img"));
    let failing = Arc::new(AtomicBool::new(true));
    let backend = Backend::up_now(Some(steps_fail_while(failing.clone()))).await;
    let text = settings(&fs.dir.join("spool.sqlite3"));
    let sc = Sidecar::start_in(config(&backend.url(), &text), tempfile::tempdir().unwrap()).await;
    let mut acknowledged = HashMap::new();
    for i in 0..5 {
        let a = write(sc.addr, &format!("before{i}"), "v").await;
        assert!(acked(&a), "{}", a.text());
        acknowledged.insert(format!("before{i}"), "v".to_string());
    }
    fs.fail();
    for i in 0..3 {
        let started = tokio::time::Instant::now();
        let a = write(sc.addr, &format!("read-only{i}"), "v").await;
        assert_eq!(a.status, 503, "{}", a.text());
        assert_eq!(code(&a), "spool_unavailable", "{}", a.text());
        assert!(started.elapsed() < Duration::from_secs(3));
    }
    let q = client::post_json(sc.addr, "/api/graphql", &query()).await;
    assert_eq!(q.status, 200, "live traffic flows: {}", q.text());
    sc.stop().await;
    // The operator repairs the filesystem and starts the sidecar again.
    fs.unmount();
    let _ = Command::new("e2fsck")
        .args(["-f", "-y"])
        .arg(&fs.image)
        .status();
    fs.mount();
    let sc = Sidecar::start_in(config(&backend.url(), &text), tempfile::tempdir().unwrap()).await;
    let s = client::get(sc.admin, "/spool").await.json();
    assert_eq!(s["depth"], 5, "{s}");
    failing.store(false, Ordering::SeqCst);
    backend
        .wait_for(Duration::from_secs(30), "every acknowledged write", |st| {
            acknowledged
                .iter()
                .all(|(id, c)| st.steps.get(id) == Some(c))
        })
        .await;
    for i in 0..3 {
        assert!(!backend.steps().contains_key(&format!("read-only{i}")));
    }
    sc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_directory_that_cannot_be_written_stops_the_start_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let _fs = Tmpfs::mount(&tmp.path().join("fs"), "size=1m,ro");
    let backend = Backend::down(None);
    let spool = tmp.path().join("fs").join("spool.sqlite3");
    let mut p = Process::start_at(
        tmp.path(),
        &format!(
            "[upstream]\nurl = \"{}\"\n[spool]\npath = \"{}\"\n",
            backend.url(),
            spool.display()
        ),
        &[],
        &[],
    );
    let status = p.wait_exit(Duration::from_secs(20)).await;
    assert!(!status.success());
    let logs = p.logs();
    assert!(logs.contains("spool.path"), "{logs}");
    assert!(logs.contains("Read-only file system"), "{logs}");
    assert!(!logs.contains("panicked"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_file_deleted_while_running_is_recovered_without_losing_a_write() {
    let mut backend = Backend::down(None);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool.sqlite3");
    let text = settings(&path);
    let sc = Sidecar::start_in(config(&backend.url(), &text), tempfile::tempdir().unwrap()).await;
    let mut acknowledged = HashMap::new();
    for i in 0..10 {
        let a = write(sc.addr, &format!("a{i}"), "before").await;
        assert!(acked(&a), "{}", a.text());
        acknowledged.insert(format!("a{i}"), "before".to_string());
    }
    std::fs::remove_file(&path).unwrap();
    for i in 0..10 {
        let a = write(sc.addr, &format!("b{i}"), "after").await;
        assert!(acked(&a), "{}", a.text());
        acknowledged.insert(format!("b{i}"), "after".to_string());
    }
    assert!(path.exists(), "the store is back at its path");
    let s = client::get(sc.admin, "/spool").await.json();
    assert_eq!(s["depth"], 20, "{s}");
    // The recovered file is the store: a restart finds every entry.
    sc.stop().await;
    let sc = Sidecar::start_in(config(&backend.url(), &text), tempfile::tempdir().unwrap()).await;
    let s = client::get(sc.admin, "/spool").await.json();
    assert_eq!(s["depth"], 20, "{s}");
    backend.up().await;
    backend
        .wait_for(Duration::from_secs(30), "every acknowledged write", |st| {
            acknowledged
                .iter()
                .all(|(id, c)| st.steps.get(id) == Some(c))
        })
        .await;
    sc.stop().await;
}
