//! One active worker among replicas (issue 3, part 4): a run takes a database lock
//! before it writes anything (`pg_try_advisory_lock`, `GET_LOCK`, `BEGIN EXCLUSIVE` on a
//! SQLite sidecar file). A second worker that finds it taken skips: status `skipped`,
//! exit 0, nothing in the ledger, no report. When the holder dies its session closes,
//! the lock frees, and the other worker's next scheduled run enforces.
//!
//! Every test here runs the real binary against a real database, and kills its child
//! processes if it fails.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use lethe::db::lock::{self, RunLock};
use sqlx::{AssertSqlSafe, ConnectOptions as _, Connection};
use tokio_util::sync::CancellationToken;

use crate::common::*;

const LETHE: &str = env!("CARGO_BIN_EXE_lethe");

// ---------------------------------------------------------------------------------
// Fixtures

/// A Koha-shaped library from the demo generator, big enough that a run with
/// `batch_size: 7` lasts a second or more.
async fn koha_library(db: &TestDb) -> i64 {
    let mut opts = lethe::demo::DemoOptions::standard(chrono::Utc::now().date_naive());
    opts.patrons = 300;
    opts.returned_checkouts = 6000;
    let stats = match &db.raw {
        Raw::Sqlite(p) => lethe::demo::populate(lethe::demo::DemoTarget::Sqlite(p), &opts)
            .await
            .unwrap(),
        Raw::MySql(p) => lethe::demo::populate(lethe::demo::DemoTarget::MySql(p), &opts)
            .await
            .unwrap(),
        Raw::Postgres(_) => unreachable!("the demo generator writes Koha's schema"),
    };
    stats.anonymous_patron
}

/// A one-table schema for PostgreSQL: 20,000 web sessions over 400 days, a patron id
/// on each. Half a day off whole days, so that no row sits on a cutoff (a calendar
/// cutoff across a daylight-saving change is an hour off a multiple of 24 hours).
const PG_DDL: &str = "CREATE TABLE web_sessions (
    id bigint PRIMARY KEY,
    patron_id bigint,
    last_seen timestamptz NOT NULL
);
INSERT INTO web_sessions
SELECT g, 1 + g % 500, now() - (g % 400) * interval '1 day' - interval '12 hours'
FROM generate_series(1, 20000) AS g;";

/// A class declared wholly in YAML on the PostgreSQL table, no profile.
const PG_CLASSES: &str = "profile: none\nclasses:\n  web_sessions:\n    table: web_sessions\n    key: id\n    \
                          age: { columns: [last_seen], type: timestamptz }\n    retain: 90 days\n    \
                          action: anonymize\n    anonymize: { patron_id: set_null }\n";

const KOHA_CLASSES: &str = "profile: koha\nclasses:\n  expired_patrons: { enabled: false }\n";

fn classes_for(db: &TestDb) -> &'static str {
    match db.raw {
        Raw::Postgres(_) => PG_CLASSES,
        _ => KOHA_CLASSES,
    }
}

/// A retention.yaml in `dir`, batches of `batch` rows, outbox `dir/outbox`.
fn config_file(dir: &Path, url: &str, cron: &str, batch: u32, classes: &str) -> PathBuf {
    let path = dir.join("retention.yaml");
    std::fs::write(
        &path,
        format!(
            "library: Test Library\ndatabase:\n  url: \"{url}\"\nschedule:\n  cron: \"{cron}\"\n  \
             timezone: America/New_York\nsafety:\n  batch_size: {batch}\n  max_fraction: 1.0\n\
             report:\n  outbox: outbox\n{classes}"
        ),
    )
    .unwrap();
    path
}

/// The SQL that counts the rows changed so far: for the Koha library, history rows
/// pointing at the anonymous patron with no note left; for the PostgreSQL table,
/// sessions without a patron.
fn changed_sql(db: &TestDb, anon: i64) -> Vec<String> {
    match db.raw {
        Raw::Postgres(_) => {
            vec!["SELECT COUNT(*) FROM web_sessions WHERE patron_id IS NULL".into()]
        }
        _ => koha_anonymized_sql(anon).to_vec(),
    }
}

/// Rows changed so far (see [`changed_sql`]).
async fn changed_rows(db: &TestDb, anon: i64) -> i64 {
    db.ints(&changed_sql(db, anon)).await.iter().sum()
}

/// Rows changed so far and the ledger's total, read in one statement (one snapshot): a
/// server session of a killed worker may still commit its last batch between two
/// separate reads.
async fn changed_and_ledger(db: &TestDb, anon: i64) -> (i64, i64) {
    let mut sqls = changed_sql(db, anon);
    sqls.push(ledger_sql(None));
    let v = db.ints(&sqls).await;
    let (ledger, changed) = v.split_last().unwrap_or((&0, &[]));
    (changed.iter().sum(), *ledger)
}

/// The statuses of the ledger's run entries, oldest first.
async fn run_statuses(db: &TestDb) -> Vec<String> {
    let q = "SELECT status FROM lethe_runs WHERE kind = 'run' ORDER BY id";
    match &db.raw {
        Raw::Sqlite(p) => sqlx::query_scalar(q).fetch_all(p).await.unwrap(),
        Raw::MySql(p) => sqlx::query_scalar(AssertSqlSafe(
            q.replace("SELECT status", "SELECT CAST(status AS CHAR)"),
        ))
        .fetch_all(p)
        .await
        .unwrap(),
        Raw::Postgres(p) => sqlx::query_scalar(q).fetch_all(p).await.unwrap(),
    }
}

/// Whether Lethe's ledger table exists (it is created by the first run's migration).
async fn ledger_exists(db: &TestDb) -> bool {
    let n = match db.raw {
        Raw::Sqlite(_) => {
            db.count("sqlite_master WHERE type = 'table' AND name LIKE 'lethe_%'")
                .await
        }
        Raw::MySql(_) => {
            db.count(
                "information_schema.tables WHERE table_schema = DATABASE() AND table_name LIKE 'lethe\\_%'",
            )
            .await
        }
        Raw::Postgres(_) => {
            db.count(
                "information_schema.tables WHERE table_catalog = current_database() AND table_name LIKE 'lethe\\_%'",
            )
            .await
        }
    };
    n > 0
}

fn outbox_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("outbox")).map_or(0, |d| d.count())
}

fn plan_eligible(cfg: &Path) -> u64 {
    let out = Command::new(LETHE)
        .args(["--config", cfg.to_str().unwrap(), "plan", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    p["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["eligible"].as_u64().unwrap())
        .sum()
}

// ---------------------------------------------------------------------------------
// Child processes

/// A child process killed (SIGKILL) and reaped when the test ends or fails, with its
/// stdout collected and its stderr lines forwarded, tagged with `tag`.
struct Proc {
    child: Child,
    stdout: Option<std::thread::JoinHandle<String>>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn spawn(cfg: &Path, args: &[&str], tag: usize, lines: mpsc::Sender<(usize, String)>) -> Proc {
        let mut child = Command::new(LETHE)
            .current_dir(cfg.parent().unwrap())
            .arg("--config")
            .arg(cfg)
            .args(args)
            .env("RUST_LOG", "info,lethe=debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if lines.send((tag, line)).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            stdout: Some(stdout),
        }
    }

    /// Waits for the exit (killing the process after `within`), returns the exit code and
    /// stdout.
    fn finish(&mut self, within: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + within;
        let code = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s.code();
            }
            assert!(
                Instant::now() < deadline,
                "lethe did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = self
            .stdout
            .take()
            .map(|h| h.join().unwrap())
            .unwrap_or_default();
        (code, out)
    }

    fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn sigterm(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }
}

/// The next stderr line (from any process) for which `pick` returns `Some`.
fn wait_line<T>(
    rx: &mpsc::Receiver<(usize, String)>,
    log: &mut Vec<(usize, String)>,
    what: &str,
    within: Duration,
    mut pick: impl FnMut(usize, &str) -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((tag, line)) => {
                let got = pick(tag, &line);
                log.push((tag, line));
                if let Some(v) = got {
                    return v;
                }
            }
            Err(_) => {
                let tail: Vec<String> = log
                    .iter()
                    .rev()
                    .take(30)
                    .rev()
                    .map(|(t, l)| format!("[{t}] {l}"))
                    .collect();
                panic!(
                    "no {what} within {within:?}; last lines:\n{}",
                    tail.join("\n")
                )
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// Two `run --once` started together

/// Two `lethe run --once --json` started at the same moment: exactly one enforces, the
/// other is skipped with exit 0 and no report, and the data afterwards is that of one
/// full run (a fixed point, the ledger equal to the rows changed).
async fn two_runs_started_together_one_enforces_the_other_skips(db: TestDb) {
    let anon = match db.raw {
        Raw::Postgres(_) => 0,
        _ => koha_library(&db).await,
    };
    let dir = tempfile::tempdir().unwrap();
    let batch = if matches!(db.raw, Raw::Postgres(_)) {
        10
    } else {
        7
    };
    let cfg = config_file(dir.path(), &db.url, "30 2 * * *", batch, classes_for(&db));
    let before = changed_rows(&db, anon).await;
    let eligible_before = plan_eligible(&cfg);
    assert!(eligible_before > 1000, "{eligible_before}");

    let (tx, _rx) = mpsc::channel();
    let start = Instant::now();
    let mut a = Proc::spawn(&cfg, &["run", "--once", "--json"], 0, tx.clone());
    let mut b = Proc::spawn(&cfg, &["run", "--once", "--json"], 1, tx);
    let (code_a, out_a) = a.finish(Duration::from_secs(120));
    let (code_b, out_b) = b.finish(Duration::from_secs(120));
    let wall = start.elapsed();
    assert_eq!((code_a, code_b), (Some(0), Some(0)), "{out_a}\n{out_b}");
    let ja: serde_json::Value = serde_json::from_str(out_a.trim()).unwrap();
    let jb: serde_json::Value = serde_json::from_str(out_b.trim()).unwrap();
    let (ok, skipped) = match (ja["status"].as_str(), jb["status"].as_str()) {
        (Some("ok"), Some("skipped")) => (&ja, &jb),
        (Some("skipped"), Some("ok")) => (&jb, &ja),
        other => panic!("expected one ok and one skipped, got {other:?}\n{ja}\n{jb}"),
    };
    assert!(skipped["run_id"].is_null(), "{skipped}");
    assert_eq!(skipped["classes"], serde_json::json!([]), "{skipped}");
    assert!(ok["run_id"].as_i64().is_some(), "{ok}");

    // One run in the ledger, equal to the rows changed; one report.
    assert_eq!(run_statuses(&db).await, ["ok"]);
    let affected: u64 = ok["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["affected"].as_u64().unwrap())
        .sum();
    let eligible: u64 = ok["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["eligible"].as_u64().unwrap())
        .sum();
    let (now, ledger) = changed_and_ledger(&db, anon).await;
    let changed = now - before;
    assert_eq!(affected, eligible, "{ok}");
    assert_eq!(ledger, changed);
    assert_eq!(changed as u64, affected);
    assert_eq!(
        outbox_files(dir.path()),
        1,
        "one report, from the run that enforced"
    );
    // A fixed point: nothing left for a second run.
    assert_eq!(plan_eligible(&cfg), 0);

    let run_secs = {
        let t = |k: &str| chrono::DateTime::parse_from_rfc3339(ok[k].as_str().unwrap()).unwrap();
        (t("finished_at") - t("started_at")).num_milliseconds() as f64 / 1000.0
    };
    eprintln!(
        "worker lock ({:?}): {affected} rows in batches of {batch}, run {run_secs:.1} s, both processes done in {:.1} s \
         (plan before: {eligible_before} eligible)",
        db.backend,
        wall.as_secs_f64()
    );
    assert!(
        run_secs >= 1.0,
        "the run should last a second or more for the race to be real"
    );
}

both_backends!(two_runs_started_together_one_enforces_the_other_skips);

#[tokio::test(flavor = "multi_thread")]
async fn two_runs_started_together_one_enforces_the_other_skips_postgres() {
    if let Some(db) = TestDb::postgres(PG_DDL).await {
        two_runs_started_together_one_enforces_the_other_skips(db).await
    }
}

// ---------------------------------------------------------------------------------
// The lock held by someone else: deterministic

/// The test's own session holding Lethe's run lock.
enum Held {
    Sqlite(sqlx::SqliteConnection),
    MySql(sqlx::pool::PoolConnection<sqlx::MySql>),
    Postgres(sqlx::pool::PoolConnection<sqlx::Postgres>),
}

/// Takes the run lock the way another worker would, from the test's own connection.
async fn hold_the_lock(db: &TestDb) -> Held {
    match &db.raw {
        Raw::Sqlite(_) => {
            let file = db.url.trim_start_matches("sqlite://");
            let path = lock::sqlite_lock_path(Path::new(file));
            let mut c = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true)
                .connect()
                .await
                .unwrap();
            sqlx::query("BEGIN EXCLUSIVE")
                .execute(&mut c)
                .await
                .unwrap();
            Held::Sqlite(c)
        }
        Raw::MySql(p) => {
            let mut c = p.acquire().await.unwrap();
            let name: String = sqlx::query_scalar("SELECT CAST(DATABASE() AS CHAR)")
                .fetch_one(&mut *c)
                .await
                .unwrap();
            let got: i64 = sqlx::query_scalar("SELECT CAST(GET_LOCK(?, 0) AS SIGNED)")
                .bind(lock::mysql_lock_name(&name))
                .fetch_one(&mut *c)
                .await
                .unwrap();
            assert_eq!(got, 1);
            Held::MySql(c)
        }
        Raw::Postgres(p) => {
            let mut c = p.acquire().await.unwrap();
            let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(lock::PG_ADVISORY_KEY)
                .fetch_one(&mut *c)
                .await
                .unwrap();
            assert!(got);
            Held::Postgres(c)
        }
    }
}

async fn release(held: Held) {
    match held {
        Held::Sqlite(mut c) => {
            sqlx::query("ROLLBACK").execute(&mut c).await.unwrap();
            c.close().await.unwrap();
        }
        Held::MySql(mut c) => {
            sqlx::query("SELECT RELEASE_LOCK(CONCAT('lethe:', DATABASE()))")
                .execute(&mut *c)
                .await
                .unwrap();
        }
        Held::Postgres(mut c) => {
            sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(lock::PG_ADVISORY_KEY)
                .execute(&mut *c)
                .await
                .unwrap();
        }
    }
}

/// While another session holds the lock, `run --once` is skipped (exit 0, JSON and
/// text), creates no ledger, changes no row and writes no report; `plan` and `verify`
/// do not need the lock. Once it is released, the next run enforces.
async fn a_lock_held_elsewhere_skips_the_run_and_touches_nothing(db: TestDb) {
    let anon = match db.raw {
        Raw::Postgres(_) => 0,
        _ => koha_library(&db).await,
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(dir.path(), &db.url, "30 2 * * *", 1000, classes_for(&db));
    let before = changed_rows(&db, anon).await;
    let held = hold_the_lock(&db).await;

    let (tx, rx) = mpsc::channel();
    let mut p = Proc::spawn(&cfg, &["run", "--once", "--json"], 0, tx.clone());
    let (code, out) = p.finish(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{out}");
    let j: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(j["status"], "skipped", "{j}");
    assert!(j["run_id"].is_null(), "{j}");
    let mut p = Proc::spawn(&cfg, &["run", "--once"], 1, tx.clone());
    let (code, text) = p.finish(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("skipped"), "{text}");
    drop(tx);
    let log: Vec<String> = rx.try_iter().map(|(_, l)| l).collect();
    assert!(
        log.iter()
            .any(|l| l.contains("another Lethe worker holds the run lock")),
        "{log:#?}"
    );
    assert!(!ledger_exists(&db).await, "a skipped run creates no ledger");
    assert_eq!(changed_rows(&db, anon).await, before);
    assert_eq!(outbox_files(dir.path()), 0, "a skipped run sends no report");

    // Dry runs do not take the lock.
    assert!(plan_eligible(&cfg) > 0);
    let v = Command::new(LETHE)
        .args(["--config", cfg.to_str().unwrap(), "verify", "--json"])
        .output()
        .unwrap();
    let vj: serde_json::Value = serde_json::from_slice(&v.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&v.stderr)));
    assert!(vj["overdue"].as_u64().unwrap() > 0, "{vj}");

    release(held).await;
    let out = Command::new(LETHE)
        .args(["--config", cfg.to_str().unwrap(), "run", "--once", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["status"], "ok", "{j}");
    assert_eq!(run_statuses(&db).await, ["ok"]);
    assert_eq!(outbox_files(dir.path()), 1);
    assert!(changed_rows(&db, anon).await > before);
}

both_backends!(a_lock_held_elsewhere_skips_the_run_and_touches_nothing);

#[tokio::test(flavor = "multi_thread")]
async fn a_lock_held_elsewhere_skips_the_run_and_touches_nothing_postgres() {
    if let Some(db) = TestDb::postgres(PG_DDL).await {
        a_lock_held_elsewhere_skips_the_run_and_touches_nothing(db).await
    }
}

// ---------------------------------------------------------------------------------
// The lock's session dies under a holder

/// When the server ends the session holding the lock (an administrator's KILL, an idle
/// timeout), the heartbeat notices, cancels the run's token and reports the lock lost;
/// the lock is free for the next worker.
async fn a_lost_lock_session_cancels_the_run(db: TestDb) {
    let cfg = config_for_backend(&db);
    let ldb = lethe::db::Db::connect(&cfg).await.unwrap();
    let run = CancellationToken::new();
    let held = RunLock::try_acquire_with(&ldb, run.clone(), Duration::from_millis(100))
        .await
        .unwrap()
        .expect("the lock is free");
    // A second worker is refused while the first holds it.
    let other = RunLock::try_acquire(&ldb, CancellationToken::new())
        .await
        .unwrap();
    assert!(other.is_none(), "the lock was granted twice");
    match db.raw {
        Raw::MySql(_) => {
            let id = db
                .int("SELECT IS_USED_LOCK(CONCAT('lethe:', DATABASE()))")
                .await
                .expect("the lock is in use");
            db.exec(&format!("KILL CONNECTION {id}")).await;
        }
        Raw::Postgres(_) => {
            let n = db
                .int(
                    "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE application_name = 'lethe run lock' AND datname = current_database()",
                )
                .await;
            assert_eq!(n, Some(1));
        }
        Raw::Sqlite(_) => unreachable!("a SQLite file lock has no server to end it"),
    }
    tokio::time::timeout(Duration::from_secs(5), run.cancelled())
        .await
        .expect("the run is cancelled when the lock's session dies");
    assert!(held.is_lost());
    held.release().await;
    let next = RunLock::try_acquire(&ldb, CancellationToken::new())
        .await
        .unwrap()
        .expect("a lost lock is free for the next worker");
    assert!(!next.is_lost());
    next.release().await;
    ldb.close().await;
}

fn config_for_backend(db: &TestDb) -> lethe::config::Config {
    match db.raw {
        Raw::Postgres(_) => {
            let yaml = format!(
                "library: Test Library\ndatabase:\n  url: \"{}\"\nschedule:\n  cron: \"30 2 * * *\"\n  \
                 timezone: America/New_York\nreport:\n  outbox: outbox\n{PG_CLASSES}",
                db.url
            );
            lethe::config::parse_str(&yaml, "test.yaml", &std::env::temp_dir(), &|_| None)
                .unwrap_or_else(|e| panic!("{e}"))
        }
        _ => db.config(""),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_lock_session_cancels_the_run_mysql() {
    if let Some(db) = TestDb::mysql().await {
        a_lost_lock_session_cancels_the_run(db).await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_lock_session_cancels_the_run_postgres() {
    if let Some(db) = TestDb::postgres(PG_DDL).await {
        a_lost_lock_session_cancels_the_run(db).await
    }
}

// ---------------------------------------------------------------------------------
// Takeover between two daemons

/// The `next_run=` instant of a "next run armed" line.
fn next_run(line: &str) -> Option<String> {
    let at = line.split("next_run=").nth(1)?.split_whitespace().next()?;
    Some(at.trim_matches('"').to_string())
}

/// Two daemons (`lethe run`, cron every minute: the schedule takes 5-field lines only)
/// against one database. Both fire at the same minute: one enforces, the other skips.
/// The holder is killed with SIGKILL mid-run; at the next minute the other takes over:
/// it closes the killed run as `interrupted` and enforces to the end. Takes up to two
/// minutes.
async fn a_killed_lock_holder_is_taken_over_at_the_next_scheduled_run(db: TestDb) {
    let anon = match db.raw {
        Raw::Postgres(_) => 0,
        _ => koha_library(&db).await,
    };
    let dir = tempfile::tempdir().unwrap();
    let batch = if matches!(db.raw, Raw::Postgres(_)) {
        10
    } else {
        7
    };
    let cfg = config_file(dir.path(), &db.url, "* * * * *", batch, classes_for(&db));
    let before = changed_rows(&db, anon).await;
    // Start well inside a minute, so both daemons arm the same fire time.
    let sec = chrono::Utc::now().timestamp() % 60;
    if sec > 45 {
        tokio::time::sleep(Duration::from_secs((61 - sec) as u64)).await;
    }
    let (tx, rx) = mpsc::channel();
    let mut daemons = [
        Proc::spawn(&cfg, &["run"], 0, tx.clone()),
        Proc::spawn(&cfg, &["run"], 1, tx),
    ];
    let mut log = Vec::new();
    let mut armed: [Option<String>; 2] = [None, None];
    while armed.iter().any(Option::is_none) {
        let (tag, at) = wait_line(
            &rx,
            &mut log,
            "next run armed",
            Duration::from_secs(30),
            |t, l| l.contains("next run armed").then(|| (t, next_run(l))),
        );
        armed[tag] = at;
    }
    assert_eq!(armed[0], armed[1], "both daemons armed the same minute");

    // The fire time: one takes the lock and starts, the other skips.
    let holder = wait_line(
        &rx,
        &mut log,
        "a run started",
        Duration::from_secs(75),
        |t, l| l.contains("run started").then_some(t),
    );
    let standby = 1 - holder;
    // The standby's answer to that same fire time, and 20 batches of the holder, before
    // the kill: a standby slowed down by a loaded machine could otherwise try the lock
    // only after the kill had freed it, and rightly run.
    let standby_done = |t: usize, l: &str| t == standby && l.contains("scheduled run finished");
    let mut first = log
        .iter()
        .find(|(t, l)| standby_done(*t, l))
        .map(|(_, l)| l.clone());
    let mut batches = 0;
    wait_line(
        &rx,
        &mut log,
        "20 committed batches and the standby's answer",
        Duration::from_secs(60),
        |t, l| {
            batches += usize::from(t == holder && l.contains("batch committed"));
            if first.is_none() && standby_done(t, l) {
                first = Some(l.to_string());
            }
            (batches >= 20 && first.is_some()).then_some(())
        },
    );
    let first = first.unwrap_or_default();
    daemons[holder].sigkill();
    let killed_at = Instant::now();
    let (now, ledger) = changed_and_ledger(&db, anon).await;
    let mid_run = now - before;
    assert!(mid_run > 0, "the holder committed a batch before the kill");
    assert_eq!(ledger, mid_run);
    assert_eq!(run_statuses(&db).await, ["running"], "killed mid-run");
    assert!(
        first.contains("skipped"),
        "the standby skipped the minute the holder had: {first}"
    );
    // Regression: tokio-cron-scheduler fires up to 1.5 s early; a skip (a few ms) then
    // re-armed the same minute, so the standby ran the holder's slot a second time.
    let skip_at = log.iter().position(|(t, l)| standby_done(*t, l)).unwrap();
    let rearmed = match log[skip_at..]
        .iter()
        .find(|(t, l)| *t == standby && l.contains("next run armed"))
    {
        Some((_, l)) => next_run(l),
        None => wait_line(
            &rx,
            &mut log,
            "the standby's re-arm",
            Duration::from_secs(10),
            |t, l| (t == standby && l.contains("next run armed")).then(|| next_run(l)),
        ),
    };
    assert_ne!(
        rearmed, armed[standby],
        "the standby re-armed the slot it had just skipped"
    );

    // The next minute: the standby takes over.
    wait_line(
        &rx,
        &mut log,
        "the takeover run",
        Duration::from_secs(75),
        |t, l| (t == standby && l.contains("run started")).then_some(()),
    );
    let takeover_after = killed_at.elapsed();
    let finished = wait_line(
        &rx,
        &mut log,
        "the takeover's end",
        Duration::from_secs(300),
        |t, l| (t == standby && l.contains("scheduled run finished")).then(|| l.to_string()),
    );
    assert!(
        finished.contains("status=\"ok\"") || finished.contains("status=ok"),
        "{finished}"
    );
    assert!(
        log.iter()
            .any(|(t, l)| *t == standby && l.contains("recorded as interrupted")),
        "the takeover closes the killed run"
    );
    daemons[standby].sigterm();
    let (code, _) = daemons[standby].finish(Duration::from_secs(20));
    assert_eq!(code, Some(0));

    assert_eq!(run_statuses(&db).await, ["interrupted", "ok"]);
    let (now, ledger) = changed_and_ledger(&db, anon).await;
    let changed = now - before;
    assert_eq!(ledger, changed);
    assert_eq!(plan_eligible(&cfg), 0, "the takeover finished the work");
    let v = Command::new(LETHE)
        .args(["--config", cfg.to_str().unwrap(), "ledger", "verify"])
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    // LETHE_TEST_LOG=1 prints both daemons' logs (how the fire times line up).
    if std::env::var("LETHE_TEST_LOG").is_ok() {
        for (t, l) in &log {
            eprintln!("[{t}] {l}");
        }
    }
    eprintln!(
        "worker lock takeover ({:?}): holder killed after {mid_run} rows; the standby started enforcing {:.1} s later \
         (its next minute) and finished with {changed} rows in all",
        db.backend,
        takeover_after.as_secs_f64()
    );
}

both_backends!(a_killed_lock_holder_is_taken_over_at_the_next_scheduled_run);

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_lock_holder_is_taken_over_at_the_next_scheduled_run_postgres() {
    if let Some(db) = TestDb::postgres(PG_DDL).await {
        a_killed_lock_holder_is_taken_over_at_the_next_scheduled_run(db).await
    }
}
