//! `lethe run` under systemd, simulated: the test binds the notify socket itself, starts
//! the daemon with `NOTIFY_SOCKET` and `WATCHDOG_USEC` pointing at it, and reads the
//! datagrams systemd would (`sd_notify(3)`): READY=1 once the schedule is armed,
//! WATCHDOG=1 pings, STATUS= lines, STOPPING=1 on SIGTERM.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
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

async fn library(dir: &Path) {
    let mut opts = lethe::demo::DemoOptions::standard(chrono::Utc::now().date_naive());
    opts.patrons = 200;
    opts.returned_checkouts = 2000;
    lethe::demo::create_library_if_absent(&dir.join("library.db"), &opts)
        .await
        .unwrap();
}

/// The daemon, killed if the test ends while it still runs.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The notify socket systemd would listen on, and the datagrams received so far.
struct Manager {
    socket: UnixDatagram,
    seen: Vec<String>,
}

impl Manager {
    fn bind(path: &Path) -> Manager {
        let socket = UnixDatagram::bind(path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Manager {
            socket,
            seen: Vec::new(),
        }
    }

    /// Reads datagrams until one satisfies `pred`; returns it. Panics after `within`.
    fn wait_for(&mut self, what: &str, within: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push(msg.clone());
                if pred(&msg) {
                    return msg;
                }
            }
        }
        panic!("no {what} within {within:?}; received: {:?}", self.seen);
    }

    /// The datagrams received from now until `within` has passed.
    fn collect(&mut self, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 4096];
        let mut got = Vec::new();
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        self.seen.extend(got.iter().cloned());
        got
    }
}

fn start(dir: &Path, cfg: &Path, socket: &Path, watchdog_usec: &str, pid: Option<&str>) -> Daemon {
    let mut cmd = Command::new(LETHE);
    cmd.current_dir(dir)
        .args(["--config", cfg.to_str().unwrap(), "run"])
        .env("RUST_LOG", "info")
        .env("NOTIFY_SOCKET", socket)
        .env("WATCHDOG_USEC", watchdog_usec)
        .env_remove("WATCHDOG_PID")
        .env_remove("LETHE_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(p) = pid {
        cmd.env("WATCHDOG_PID", p);
    }
    Daemon(cmd.spawn().unwrap())
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
    panic!("the daemon did not exit within {within:?}");
}

fn is_ping(m: &str) -> bool {
    m.lines().any(|l| l == "WATCHDOG=1")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_reports_ready_pings_the_watchdog_and_says_stopping_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    library(dir.path()).await;
    let cfg = write_config(dir.path(), "30 2 * * *");
    let sock = dir.path().join("notify.sock");
    let mut manager = Manager::bind(&sock);
    // 200 ms: the daemon should ping every 100 ms.
    let mut daemon = start(dir.path(), &cfg, &sock, "200000", None);
    let ready = manager.wait_for("READY=1", Duration::from_secs(30), |m| {
        m.lines().any(|l| l == "READY=1")
    });
    // The status names the next run in the library's zone.
    assert!(
        ready.contains("STATUS=next run at ") && ready.contains("T02:30:00+0"),
        "{ready}"
    );
    let pings = manager
        .collect(Duration::from_secs(1))
        .iter()
        .filter(|m| is_ping(m))
        .count();
    // About 10 in a second; allow for a slow machine, but not for none.
    assert!(pings >= 3, "{pings} pings in 1 s: {:?}", manager.seen);
    sigterm(&daemon.0);
    let stopping = manager.wait_for("STOPPING=1", Duration::from_secs(10), |m| {
        m.lines().any(|l| l == "STOPPING=1")
    });
    assert!(stopping.contains("STATUS=stopping"), "{stopping}");
    assert_eq!(wait_exit(&mut daemon.0, Duration::from_secs(10)), Some(0));
    // READY came once, before any STOPPING.
    let readies = manager
        .seen
        .iter()
        .filter(|m| m.lines().any(|l| l == "READY=1"))
        .count();
    assert_eq!(readies, 1, "{:?}", manager.seen);
}

/// `WATCHDOG_PID` names another process (systemd sets it when the variables were meant
/// for a parent): the watchdog is not ours, so no pings, but READY still comes.
#[tokio::test(flavor = "multi_thread")]
async fn a_watchdog_meant_for_another_process_is_not_pinged() {
    let dir = tempfile::tempdir().unwrap();
    library(dir.path()).await;
    let cfg = write_config(dir.path(), "30 2 * * *");
    let sock = dir.path().join("notify.sock");
    let mut manager = Manager::bind(&sock);
    let mut daemon = start(dir.path(), &cfg, &sock, "200000", Some("1"));
    manager.wait_for("READY=1", Duration::from_secs(30), |m| {
        m.lines().any(|l| l == "READY=1")
    });
    let got = manager.collect(Duration::from_millis(700));
    assert!(!got.iter().any(|m| is_ping(m)), "{got:?}");
    sigterm(&daemon.0);
    assert_eq!(wait_exit(&mut daemon.0, Duration::from_secs(10)), Some(0));
}

/// The watchdog is pinged from a task of its own, so pings go on while a run is in
/// progress, and the status after the run names it. Takes up to a minute: the cron
/// line fires once a minute.
#[tokio::test(flavor = "multi_thread")]
async fn the_watchdog_is_pinged_during_a_scheduled_run() {
    let dir = tempfile::tempdir().unwrap();
    library(dir.path()).await;
    let cfg = write_config(dir.path(), "* * * * *");
    let sock = dir.path().join("notify.sock");
    let mut manager = Manager::bind(&sock);
    // 20 ms: a ping every 10 ms, several during even a short run.
    let mut daemon = start(dir.path(), &cfg, &sock, "20000", None);
    manager.wait_for("READY=1", Duration::from_secs(30), |m| {
        m.lines().any(|l| l == "READY=1")
    });
    manager.wait_for("STATUS=running", Duration::from_secs(70), |m| {
        m.contains("STATUS=running the run scheduled at ")
    });
    let from = manager.seen.len();
    let after = manager.wait_for("the status after the run", Duration::from_secs(60), |m| {
        m.contains("; last run ")
    });
    assert!(after.contains(" ok"), "{after}");
    let during = manager.seen[from..].iter().filter(|m| is_ping(m)).count();
    assert!(
        during >= 1,
        "no ping during the run: {:?}",
        &manager.seen[from..]
    );
    sigterm(&daemon.0);
    assert_eq!(wait_exit(&mut daemon.0, Duration::from_secs(10)), Some(0));
}

const UNIT: &str = include_str!("../../contrib/lethe.service");

/// The shipped unit keeps the settings the daemon and the README rely on.
#[test]
fn the_unit_is_a_sandboxed_notify_service_with_a_watchdog() {
    let settings: Vec<&str> = UNIT
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .collect();
    for want in [
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=2min",
        "ExecStart=/usr/bin/lethe --config /etc/lethe/retention.yaml --log-format json run",
        "User=lethe",
        "StateDirectory=lethe",
        "ReadWritePaths=/var/lib/lethe",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "RestartPreventExitStatus=2",
    ] {
        assert!(
            settings.contains(&want),
            "{want} missing from contrib/lethe.service"
        );
    }
}

/// `systemd-analyze verify` accepts the unit (with ExecStart pointed at the binary
/// under test; the man pages are checked by .ci/deb-check once installed).
#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let Ok(which) = Command::new("systemd-analyze").arg("--version").output() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "systemd-analyze is missing on CI"
        );
        eprintln!("SKIPPED: systemd-analyze is not installed");
        return;
    };
    assert!(which.status.success());
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("lethe.service");
    std::fs::write(&unit, UNIT.replace("/usr/bin/lethe", LETHE)).unwrap();
    let o = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .unwrap();
    assert!(
        o.status.success() && o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The example config the Debian package installs as /etc/lethe/retention.yaml is
/// valid, starts in dry-run, and keeps its outbox in the service's state folder.
#[test]
fn the_packaged_example_config_is_valid_and_starts_in_dry_run() {
    let text = include_str!("../../contrib/retention.yaml");
    let cfg = lethe::config::parse_str(
        text,
        "/etc/lethe/retention.yaml",
        Path::new("/etc/lethe"),
        &|_| None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.safety.mode, lethe::summary::Mode::DryRun);
    assert_eq!(cfg.report.outbox, Path::new("/var/lib/lethe/outbox"));
    assert_eq!(
        cfg.database.display_url,
        "sqlite:///var/lib/lethe/demo/library.db"
    );
}
