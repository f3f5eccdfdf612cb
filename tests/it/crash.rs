//! Crash consistency (a first slice of the reliability issue): `lethe run --once` is
//! killed with SIGKILL at random moments. After each kill the ledger still equals what
//! was done (every batch commits its change and its count together), the killed run is
//! recorded as interrupted at the next start, and a last run finishes the work.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use rand::{Rng, SeedableRng};

use crate::both_backends;
use crate::common::*;

const LETHE: &str = env!("CARGO_BIN_EXE_lethe");

/// Kills per backend per test run; `LETHE_CRASH_KILLS` raises it for a longer run.
fn kills() -> usize {
    std::env::var("LETHE_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6)
}

fn config_file(dir: &std::path::Path, url: &str) -> std::path::PathBuf {
    let path = dir.join("retention.yaml");
    std::fs::write(
        &path,
        format!(
            "database:\n  url: \"{url}\"\nschedule:\n  cron: \"30 2 * * *\"\n  timezone: America/New_York\n\
             safety:\n  batch_size: 7\n  max_fraction: 1.0\nreport:\n  outbox: outbox\nprofile: koha\n\
             classes:\n  expired_patrons: {{ enabled: false }}\n"
        ),
    )
    .unwrap();
    path
}

/// Rows anonymized so far: old_issues and old_reserves rows that point to the
/// anonymous patron.
async fn anonymized(db: &TestDb, anon: i64) -> i64 {
    db.count(&format!("old_issues WHERE borrowernumber = {anon}"))
        .await
        + db.count(&format!("old_reserves WHERE borrowernumber = {anon}"))
            .await
}

async fn ledger_total(db: &TestDb) -> i64 {
    db.int("SELECT COALESCE(SUM(affected), 0) FROM lethe_run_classes")
        .await
        .unwrap_or(0)
}

both_backends!(sigkill_at_random_moments_leaves_the_ledger_equal_to_what_was_done);
async fn sigkill_at_random_moments_leaves_the_ledger_equal_to_what_was_done(db: TestDb) {
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
        Raw::Postgres(_) => unreachable!("the Koha-shaped crash test runs on SQLite and MariaDB"),
    };
    let anon = stats.anonymous_patron;
    let before = anonymized(&db, anon).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(dir.path(), &db.url);
    let seed: u64 = rand::rng().random();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut killed = 0;
    let mut last_killed = false;
    for round in 0..kills() {
        let wait_for = rng.random_range(1..40);
        let mut child = Command::new(LETHE)
            .args(["--config", cfg.to_str().unwrap(), "run", "--once"])
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut batches = 0;
        for line in lines.by_ref() {
            if line.unwrap_or_default().contains("batch committed") {
                batches += 1;
                if batches == wait_for {
                    break;
                }
            }
        }
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        // Fewer batches than awaited: the run had finished before the kill.
        last_killed = batches == wait_for;
        killed += usize::from(last_killed);
        // Every committed batch is counted in the ledger, and nothing else changed.
        let done = anonymized(&db, anon).await - before;
        assert_eq!(
            ledger_total(&db).await,
            done,
            "seed {seed}, round {round}: ledger and data disagree"
        );
    }
    assert!(killed >= 1, "seed {seed}: no run was killed mid-run");
    eprintln!(
        "crash test ({:?}): seed {seed}, {killed} of {} runs killed mid-run",
        db.backend,
        kills()
    );
    // The next run records the killed runs as interrupted and finishes the work.
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
    assert_eq!(j["status"], "ok");
    assert_eq!(db.count("lethe_runs WHERE status = 'running'").await, 0);
    assert!(db.count("lethe_runs WHERE status = 'interrupted'").await >= killed as i64);
    if last_killed {
        let notices = j["notices"].as_array().map_or(0, Vec::len);
        assert!(notices >= 1, "the report tells of the interrupted run: {j}");
    }
    assert_eq!(
        ledger_total(&db).await,
        anonymized(&db, anon).await - before
    );
    let plan = Command::new(LETHE)
        .args(["--config", cfg.to_str().unwrap(), "plan", "--json"])
        .output()
        .unwrap();
    let p: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    for c in p["classes"].as_array().unwrap() {
        assert_eq!(c["eligible"], 0, "{c}");
    }
    // The chain still verifies, interrupted runs included.
    let v = Command::new(LETHE)
        .args(["--config", cfg.to_str().unwrap(), "ledger", "verify"])
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
}
