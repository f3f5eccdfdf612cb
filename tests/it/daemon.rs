//! `lethe run` as a service: it checks the database at boot, stops cleanly on SIGTERM,
//! and a failed scheduled run is reported while the next one still happens.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const LETHE: &str = env!("CARGO_BIN_EXE_lethe");

fn write_config(dir: &Path, cron: &str) -> std::path::PathBuf {
    let path = dir.join("retention.yaml");
    std::fs::write(
        &path,
        format!(
            "database:\n  url: \"sqlite://library.db\"\nschedule:\n  cron: \"{cron}\"\n  timezone: Europe/Berlin\n\
             safety:\n  max_fraction: 1.0\nreport:\n  outbox: outbox\nprofile: koha\n"
        ),
    )
    .unwrap();
    path
}

/// A daemon process that is killed if the test ends (or fails) while it still runs.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Daemon {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Daemon {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

/// The daemon with its stderr lines forwarded to a channel.
fn start(dir: &Path, cfg: &Path) -> (Daemon, mpsc::Receiver<String>) {
    let mut child = Command::new(LETHE)
        .current_dir(dir)
        .args(["--config", cfg.to_str().unwrap(), "run"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (Daemon(child), rx)
}

fn wait_for(rx: &mpsc::Receiver<String>, what: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(what) => return line,
            Ok(_) => {}
            Err(_) => panic!("no {what:?} within {within:?}"),
        }
    }
}

fn sigterm(child: &Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("the daemon did not exit within {within:?}");
}

async fn library(dir: &Path) {
    let mut opts = lethe::demo::DemoOptions::standard(chrono::Utc::now().date_naive());
    opts.patrons = 200;
    opts.returned_checkouts = 2000;
    lethe::demo::create_library_if_absent(&dir.join("library.db"), &opts)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_stops_on_sigterm_with_exit_0() {
    let dir = tempfile::tempdir().unwrap();
    library(dir.path()).await;
    let cfg = write_config(dir.path(), "30 2 * * *");
    let (mut child, rx) = start(dir.path(), &cfg);
    let armed = wait_for(&rx, "next run armed", Duration::from_secs(30));
    assert!(
        armed.contains("T02:30:00+01:00") || armed.contains("T02:30:00+02:00"),
        "{armed}"
    );
    sigterm(&child);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(10)), Some(0));
}

#[test]
fn a_wrong_database_fails_at_boot_not_at_0230() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "30 2 * * *");
    let (mut child, _rx) = start(dir.path(), &cfg);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(30)), Some(1));
}

/// Takes up to two minutes: the cron line fires once a minute.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_scheduled_run_is_reported_and_the_next_one_still_happens() {
    let dir = tempfile::tempdir().unwrap();
    library(dir.path()).await;
    let cfg = write_config(dir.path(), "* * * * *");
    let (mut child, rx) = start(dir.path(), &cfg);
    let mut armed = wait_for(&rx, "next run armed", Duration::from_secs(30));
    // Too close to the minute to move the database away safely: let that run happen.
    let next_run = |line: &str| -> chrono::DateTime<chrono::FixedOffset> {
        let at = line
            .split("next_run=")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap();
        chrono::DateTime::parse_from_rfc3339(at.trim_matches('"')).unwrap()
    };
    if (next_run(&armed).with_timezone(&chrono::Utc) - chrono::Utc::now()).num_seconds() < 5 {
        wait_for(&rx, "scheduled run finished", Duration::from_secs(60));
        armed = wait_for(&rx, "next run armed", Duration::from_secs(10));
    }
    let _ = armed;
    let db = dir.path().join("library.db");
    let away = dir.path().join("library.db.away");
    std::fs::rename(&db, &away).unwrap();
    wait_for(&rx, "scheduled run failed", Duration::from_secs(70));
    std::fs::rename(&away, &db).unwrap();
    wait_for(&rx, "next run armed", Duration::from_secs(10));
    let ok = wait_for(&rx, "scheduled run finished", Duration::from_secs(70));
    assert!(
        ok.contains("status=\"ok\"") || ok.contains("status=ok"),
        "{ok}"
    );
    sigterm(&child);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(10)), Some(0));
    // The director heard of the failure: a failure report waits in the outbox.
    let mut subjects = Vec::new();
    for e in std::fs::read_dir(dir.path().join("outbox")).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        let raw = text
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap_or("");
        subjects.push(crate::report::decode_header(raw));
    }
    assert!(subjects.len() >= 2, "{subjects:?}");
    assert!(
        subjects.iter().any(|s| s.contains("FAILED")),
        "{subjects:?}"
    );
    assert!(subjects.iter().any(|s| s.contains(" ok")), "{subjects:?}");
}
