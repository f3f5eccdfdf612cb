//! Adaptive batch sizes and progress (issue 7, items 4 and 6), on SQLite, MariaDB and
//! PostgreSQL: whatever sizes the controller picks, a run changes exactly the eligible
//! rows and the ledger counts exactly the rows changed; `"batch committed"` carries
//! `batch_ms` and `batch_size`; progress goes to the log as `progress` events, or to a
//! bar when stderr is a terminal.
//!
//! The batch target is set in code beyond what the config accepts (10 ms to 10 s), so
//! the outcome does not depend on how fast this machine is: 1 µs makes every batch
//! "slow", 1 hour every batch "fast".
//!
//! Two tables, each 240 rows, two in three past their period (2026-01, the cutoff is
//! local 2026-05-16 08:00), one in seven without a patron: `visits` with an integer key
//! (ids 2, 4, …: gaps), `tallies` without one (row-limited batches off SQLite).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lethe::config::{Backend, Config};
use lethe::db::Db;
use lethe::engine::{self, RunOptions};
use lethe::progress::Progress;
use lethe::summary::{RunStatus, RunSummary};
use tokio_util::sync::CancellationToken;
use tracing::instrument::WithSubscriber as _;

use crate::common::*;
use crate::engine::{class, plan_at};

/// Each test on the three backends, with the file's tables loaded.
macro_rules! three_backends {
    ($name:ident) => {
        three_backends_with!($name, super::DDL_SQLITE, super::DDL_MYSQL, super::DDL_PG);
    };
}

const DDL_SQLITE: &str = "CREATE TABLE visits (id INTEGER PRIMARY KEY, patron INT NULL, seen DATETIME NULL); \
     CREATE TABLE tallies (seen DATETIME NULL, patron INT NULL)";
const DDL_MYSQL: &str = "CREATE TABLE visits (id INT PRIMARY KEY, patron INT NULL, seen DATETIME NULL) ENGINE=InnoDB; \
     CREATE TABLE tallies (seen DATETIME NULL, patron INT NULL, KEY tallies_seen (seen)) ENGINE=InnoDB";
const DDL_PG: &str = "CREATE TABLE visits (id INT PRIMARY KEY, patron INT NULL, seen TIMESTAMP NULL); \
     CREATE TABLE tallies (seen TIMESTAMP NULL, patron INT NULL)";

const ROWS: i64 = 240;
const PAST: &str = "seen < '2026-05-16 08:00:00'";

/// Seeds both tables; returns the rows of each past their period with a patron.
async fn seed(db: &TestDb) -> i64 {
    let mut visits = Vec::new();
    let mut tallies = Vec::new();
    for n in 1..=ROWS {
        let seen = if n % 3 == 0 {
            "'2026-06-10 10:00:00'".to_string()
        } else {
            format!("'2026-01-{:02} {:02}:30:00'", 1 + n % 28, 8 + n % 9)
        };
        let patron = if n % 7 == 0 {
            "NULL".to_string()
        } else {
            (2 + n % 50).to_string()
        };
        visits.push(format!("({}, {patron}, {seen})", 2 * n));
        tallies.push(format!("({seen}, {patron})"));
    }
    db.exec(&format!(
        "INSERT INTO visits (id, patron, seen) VALUES {}",
        visits.join(", ")
    ))
    .await;
    db.exec(&format!(
        "INSERT INTO tallies (seen, patron) VALUES {}",
        tallies.join(", ")
    ))
    .await;
    let eligible = db
        .count(&format!("visits WHERE {PAST} AND patron IS NOT NULL"))
        .await;
    assert_eq!(
        eligible,
        db.count(&format!("tallies WHERE {PAST} AND patron IS NOT NULL"))
            .await
    );
    assert!(eligible > 100, "{eligible}");
    eligible
}

/// Both classes (anonymize: the patron set to NULL), batches as `safety` says.
fn config(db: &TestDb, safety: &str) -> Config {
    let class = |name: &str, key: &str| {
        format!(
            "  {name}:\n    table: {name}\n{key}    patron: patron\n    \
             age: {{ columns: [seen], type: datetime }}\n    retain: 30 days\n    \
             action: anonymize\n    anonymize: {{ patron: set_null }}\n    \
             scope:\n      - {{ column: patron, not_null: true }}\n"
        )
    };
    config_with_profile(
        &db.url,
        "none",
        &format!(
            "classes:\n{}{}safety:\n{safety}",
            class("visits", "    key: id\n"),
            class("tallies", "")
        ),
    )
}

/// A writer that keeps what the test subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

impl Captured {
    /// The engine's events as JSON objects (`--log-format json`'s shape).
    fn events(&self) -> Vec<serde_json::Value> {
        let bytes = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// The fields of the events with `message` about `class`.
    fn fields(&self, message: &str, class: &str) -> Vec<serde_json::Value> {
        self.events()
            .into_iter()
            .map(|e| e["fields"].clone())
            .filter(|f| f["message"] == message && f["class"] == class)
            .collect()
    }
}

/// One enforcing run at the engine tests' fixed now, with `progress`, its events
/// (DEBUG and up from Lethe) captured as JSON lines.
async fn run_captured(cfg: &Config, progress: Progress) -> (RunSummary, Captured) {
    let out = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_env_filter(tracing_subscriber::EnvFilter::new("lethe=debug"))
        .with_writer(out.clone())
        .finish();
    let summary = async {
        let db = Db::connect(cfg).await.unwrap();
        let p = engine::prepare(cfg, &db).await.unwrap();
        db.migrate().await.unwrap();
        let mut opts = RunOptions::new(true, now(), CancellationToken::new());
        opts.progress = progress;
        let s = engine::enforce_once(cfg, &db, &p, &opts).await.unwrap();
        db.close().await;
        s
    }
    .with_subscriber(subscriber)
    .await;
    (summary, out)
}

/// The ledger's rows changed and batches of one class in run `id`.
async fn ledger_of(db: &TestDb, id: i64, class: &str) -> (i64, i64) {
    let q = |col: &str| {
        format!("SELECT {col} FROM lethe_run_classes WHERE run_id = {id} AND class = '{class}'")
    };
    (
        db.int(&q("affected")).await.unwrap_or(-1),
        db.int(&q("batches")).await.unwrap_or(-1),
    )
}

/// The sizes of the batches that changed rows, in order; each event has `batch_ms`.
fn sizes(out: &Captured, class: &str) -> Vec<u64> {
    out.fields("batch committed", class)
        .iter()
        .filter(|f| f["changed"].as_u64() != Some(0))
        .map(|f| {
            assert!(
                f["batch_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
                "batch_ms: {f}"
            );
            f["batch_size"].as_u64().expect("batch_size")
        })
        .collect()
}

three_backends!(a_tiny_batch_target_shrinks_batches_and_changes_exactly_the_eligible_rows);
/// Every batch is slower than 1 µs: from 64 the size halves batch by batch down to
/// `batch_min` (1), so the run takes many small transactions; it still changes exactly
/// the eligible rows, no other, and the ledger's count is the rows changed, one batch
/// for each `"batch committed"` that changed rows.
async fn a_tiny_batch_target_shrinks_batches_and_changes_exactly_the_eligible_rows(db: TestDb) {
    let eligible = seed(&db).await;
    let mut cfg = config(&db, "  batch_size: 64\n  batch_min: 1\n");
    cfg.safety.batch_target = Duration::from_micros(1);
    assert_eq!(cfg.safety.batch_bounds(), (1, 64));
    let p = plan_at(&cfg, now()).await;
    for name in ["visits", "tallies"] {
        assert_eq!(class(&p, name).eligible, eligible as u64, "{name}");
    }
    let (r, out) = run_captured(&cfg, Progress::log()).await;
    assert_eq!(r.status, RunStatus::Ok, "{r:?}");
    let id = r.run_id.unwrap();
    for name in ["visits", "tallies"] {
        let c = class(&r, name);
        assert_eq!(
            (c.eligible, c.affected),
            (eligible as u64, eligible as u64),
            "{c:?}"
        );
        // Exactly the eligible rows changed: none past with a patron is left, every
        // recent one kept its patron, and the rows without one are as they were.
        assert_eq!(
            db.count(&format!("{name} WHERE {PAST} AND patron IS NOT NULL"))
                .await,
            0
        );
        assert_eq!(
            db.count(&format!("{name} WHERE patron IS NULL")).await,
            eligible + ROWS / 7,
            "{name}"
        );
        assert_eq!(
            db.count(&format!("{name} WHERE NOT ({PAST})")).await,
            ROWS / 3
        );
        assert_eq!(
            db.count(&format!("{name} WHERE NOT ({PAST}) AND patron IS NOT NULL"))
                .await,
            ROWS / 3 - ROWS / 21,
            "{name}: the recent rows keep their patron"
        );
        let sizes = sizes(&out, name);
        let (affected, batches) = ledger_of(&db, id, name).await;
        assert_eq!(affected, eligible, "{name}: ledger = rows changed");
        assert_eq!(
            batches as usize,
            sizes.len(),
            "{name}: one ledger batch per commit"
        );
        // Sizes: 64, 32, 16, 8, 4, 2, then 1 for each batch after.
        assert_eq!(sizes[..7], [64, 32, 16, 8, 4, 2, 1], "{name}: {sizes:?}");
        assert!(sizes[7..].iter().all(|s| *s == 1), "{name}: {sizes:?}");
        assert!(sizes.len() >= 10, "{name}: {} batches", sizes.len());
    }
    // A fixed point: nothing left, and a second run changes nothing.
    let again = run_captured(&cfg, Progress::log()).await.0;
    assert_eq!(class(&again, "visits").affected, 0);
    assert_eq!(class(&again, "tallies").affected, 0);
}

three_backends!(a_generous_batch_target_grows_batches_up_to_batch_max);
/// Every batch is faster than an hour: from 4 the size grows by a quarter a batch (at
/// least one key), never past `batch_max`; fewer transactions than fixed batches of 4,
/// and the same rows changed.
async fn a_generous_batch_target_grows_batches_up_to_batch_max(db: TestDb) {
    let eligible = seed(&db).await;
    let mut cfg = config(&db, "  batch_size: 4\n  batch_max: 40\n");
    cfg.safety.batch_target = Duration::from_secs(3600);
    let (r, out) = run_captured(&cfg, Progress::log()).await;
    assert_eq!(r.status, RunStatus::Ok, "{r:?}");
    let id = r.run_id.unwrap();
    for name in ["visits", "tallies"] {
        assert_eq!(class(&r, name).affected, eligible as u64, "{name}");
        let sizes = sizes(&out, name);
        let (affected, batches) = ledger_of(&db, id, name).await;
        assert_eq!(
            (affected, batches as usize),
            (eligible, sizes.len()),
            "{name}"
        );
        assert_eq!(
            sizes[..8],
            [4, 5, 7, 9, 12, 15, 19, 24],
            "{name}: {sizes:?}"
        );
        assert!(sizes.windows(2).all(|w| w[0] <= w[1]), "{name}: {sizes:?}");
        assert!(sizes.iter().all(|s| *s <= 40), "{name}: {sizes:?}");
        assert!(sizes.len() < eligible as usize / 4, "{name}: {sizes:?}");
        assert_eq!(
            db.count(&format!("{name} WHERE {PAST} AND patron IS NOT NULL"))
                .await,
            0
        );
    }
}

three_backends!(progress_events_in_the_log_carry_counts_rate_and_time_left);
/// With a zero interval, each batch that commits logs `progress` with the class, rows
/// done of eligible, the rate and the time left; the last says all done, nothing left.
/// With the default interval (10 s) a class this quick logs none.
async fn progress_events_in_the_log_carry_counts_rate_and_time_left(db: TestDb) {
    let eligible = seed(&db).await as u64;
    let cfg = config(&db, "  batch_size: 16\n");
    let (r, out) = run_captured(&cfg, Progress::log_every(Duration::ZERO)).await;
    let id = r.run_id.unwrap();
    for name in ["visits", "tallies"] {
        let events = out.fields("progress", name);
        assert!(
            events.len() >= (eligible / 16) as usize,
            "{name}: {events:?}"
        );
        let mut last_done = 0;
        for e in &events {
            assert_eq!(e["run_id"], id, "{e}");
            assert_eq!(e["eligible"].as_u64(), Some(eligible), "{e}");
            let done = e["done"].as_u64().expect("done");
            assert!(done > last_done && done <= eligible, "{e}");
            last_done = done;
            assert!(e["rows_per_s"].as_f64().is_some_and(|r| r > 0.0), "{e}");
            assert!(e["eta_s"].as_u64().is_some(), "{e}");
            // Counts and a class name only.
            let mut keys: Vec<&str> = e.as_object().unwrap().keys().map(|k| k.as_str()).collect();
            keys.sort_unstable();
            assert_eq!(
                keys,
                [
                    "class",
                    "done",
                    "eligible",
                    "eta_s",
                    "message",
                    "rows_per_s",
                    "run_id"
                ]
            );
        }
        let last = events.last().unwrap();
        assert_eq!(
            (last["done"].as_u64(), last["eta_s"].as_u64()),
            (Some(eligible), Some(0))
        );
    }
    // The default interval: nothing for classes that finish within it.
    db.exec("UPDATE visits SET patron = 3 WHERE patron IS NULL")
        .await;
    let (r, out) = run_captured(&cfg, Progress::log()).await;
    assert!(class(&r, "visits").affected > 0);
    assert!(
        out.events()
            .iter()
            .all(|e| e["fields"]["message"] != "progress"),
        "a quick class logs no progress"
    );
}

/// `lethe` as a person runs it: `run --once` on a terminal (`script` gives it a pty)
/// draws a bar per class on stderr and clears it; the summary table is intact. With
/// `--log-format json` on the same terminal, every stderr line is still JSON: no bar.
#[tokio::test(flavor = "multi_thread")]
async fn on_a_terminal_run_once_draws_a_bar_per_class_and_json_logs_get_none() {
    let db = TestDb::sqlite().await;
    db.exec(DDL_SQLITE).await;
    seed(&db).await;
    assert_eq!(db.backend, Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("retention.yaml");
    std::fs::write(
        &cfg,
        format!(
            "library: Bar Library\ndatabase:\n  url: \"{}\"\nschedule:\n  cron: \"30 2 * * *\"\n  \
             timezone: America/New_York\nsafety:\n  batch_size: 3\n  max_fraction: 1.0\n\
             report:\n  outbox: outbox\nprofile: none\nclasses:\n  visits:\n    table: visits\n    key: id\n    \
             patron: patron\n    age: {{ columns: [seen], type: datetime }}\n    retain: 30 days\n    \
             action: anonymize\n    anonymize: {{ patron: set_null }}\n    \
             scope:\n      - {{ column: patron, not_null: true }}\n",
            db.url
        ),
    )
    .unwrap();
    let lethe = env!("CARGO_BIN_EXE_lethe");
    // What went to the pty, and the screen it leaves (a 120×40 terminal).
    let on_a_terminal = |args: &str| {
        let typescript = dir.path().join("typescript");
        let status = std::process::Command::new("script")
            .args(["-q", "-e", "-c"])
            .arg(format!(
                "stty cols 120 rows 40; {lethe} --config {} {args}",
                cfg.display()
            ))
            .arg(&typescript)
            .current_dir(dir.path())
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .status()
            .expect("script(1) from util-linux runs the test on a pty");
        assert!(status.success(), "{args}: {status}");
        let raw = std::fs::read(&typescript).unwrap();
        // Without script's own first and last lines.
        let text = String::from_utf8_lossy(&raw).into_owned();
        let body: Vec<&str> = text
            .split_inclusive('\n')
            .filter(|l| !l.starts_with("Script started") && !l.starts_with("Script done"))
            .collect();
        let body = body.concat();
        let mut term = vt100::Parser::new(40, 120, 1000);
        term.process(body.replace('\n', "\r\n").replace("\r\r", "\r").as_bytes());
        (body, term.screen().contents())
    };
    let (raw, screen) = on_a_terminal("run --once");
    // The bar was drawn: the class, rows done of eligible, a rate and the time left.
    assert!(raw.contains("visits ["), "{raw}");
    assert!(raw.contains("rows/s"), "{raw}");
    assert!(raw.contains("left"), "{raw}");
    // What stays on the screen: no bar, the summary table whole.
    assert!(!screen.contains("rows/s"), "the bar is cleared:\n{screen}");
    let row = screen
        .lines()
        .find(|l| l.trim_start().starts_with("visits"))
        .unwrap_or_else(|| panic!("no summary line in\n{screen}"));
    assert!(
        row.contains("anonymize") && !row.contains('#'),
        "{row:?}\n{screen}"
    );

    // JSON logs on a terminal: progress goes to the log, each line one object.
    db.exec("UPDATE visits SET patron = 3 WHERE patron IS NULL")
        .await;
    let (raw, _) = on_a_terminal("--log-format json run --once --json");
    assert!(!raw.contains("rows/s"), "{raw}");
    let lines: Vec<&str> = raw.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 2, "{raw}");
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l.trim_end_matches('\r'))
            .unwrap_or_else(|e| panic!("not one JSON object a line ({e}): {l:?}"));
        assert!(v.is_object());
    }
}
