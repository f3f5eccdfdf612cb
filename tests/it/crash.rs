//! Crash consistency (the reliability issue, item 1): `lethe run --once` is killed with
//! SIGKILL at random moments, on SQLite and MariaDB (the Koha demo library) and on
//! PostgreSQL (the Evergreen generator's library, Evergreen profile). After each kill
//! the ledger still equals what was done (every batch commits its change and its count
//! together), no batch is half done, the killed run is recorded as interrupted at the
//! next start, and a last run finishes the work; the hash chain verifies.

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

/// Rows anonymized so far ([`koha_anonymized_sql`]) and the ledger's total, read in one statement
/// (one snapshot): a server session of the killed process may still commit its last
/// batch between two separate reads.
async fn anonymized_and_ledger(db: &TestDb, anon: i64) -> (i64, i64) {
    let [issues, reserves] = koha_anonymized_sql(anon);
    let v = db.ints(&[issues, reserves, ledger_sql(None)]).await;
    (v[0] + v[1], v[2])
}

/// Runs `lethe run --once` and kills it with SIGKILL after `wait_for` lines that say a
/// transaction committed ("batch committed", "purge range committed"). Returns whether
/// it was killed mid-run (false: it finished first).
fn run_and_kill(cfg: &std::path::Path, wait_for: usize) -> bool {
    let mut child = Command::new(LETHE)
        .args(["--config", cfg.to_str().unwrap(), "run", "--once"])
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut committed = 0;
    for line in lines.by_ref() {
        let line = line.unwrap_or_default();
        if line.contains("batch committed") || line.contains("purge range committed") {
            committed += 1;
            if committed == wait_for {
                break;
            }
        }
    }
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
    committed == wait_for
}

/// `lethe <args>` with the config; its output.
fn lethe(cfg: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(LETHE)
        .args(["--config", cfg.to_str().unwrap()])
        .args(args)
        .output()
        .unwrap()
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
    let before: i64 = db.ints(&koha_anonymized_sql(anon)).await.iter().sum();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(dir.path(), &db.url);
    let seed: u64 = rand::rng().random();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let started = std::time::Instant::now();
    let mut killed = 0;
    let mut last_killed = false;
    for round in 0..kills() {
        let wait_for = rng.random_range(1..40);
        let was_killed = run_and_kill(&cfg, wait_for);
        // Fewer batches than awaited: the run had finished before the kill.
        last_killed = was_killed;
        killed += usize::from(last_killed);
        // Every committed batch is counted in the ledger, and nothing else changed.
        let (now, ledger) = anonymized_and_ledger(&db, anon).await;
        assert_eq!(
            ledger,
            now - before,
            "seed {seed}, round {round}: ledger and data disagree"
        );
    }
    assert!(killed >= 1, "seed {seed}: no run was killed mid-run");
    eprintln!(
        "crash test ({:?}): seed {seed}, {killed} of {} runs killed mid-run, {:.1} s",
        db.backend,
        kills(),
        started.elapsed().as_secs_f64()
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
    let (now, ledger) = anonymized_and_ledger(&db, anon).await;
    assert_eq!(ledger, now - before);
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

// ---------------------------------------------------------------------------------
// PostgreSQL: the Evergreen library

/// A retention.yaml for the Evergreen profile with only `enabled` classes on.
fn evergreen_config(dir: &std::path::Path, url: &str, enabled: &[&str]) -> std::path::PathBuf {
    let path = dir.join("retention.yaml");
    let classes: String = [
        "circulation_history",
        "holds_history",
        "reading_history",
        "expired_patrons",
    ]
    .iter()
    .filter(|c| !enabled.contains(c))
    .map(|c| format!("  {c}: {{ enabled: false }}\n"))
    .collect();
    std::fs::write(
        &path,
        format!(
            "database:\n  url: \"{url}\"\nschedule:\n  cron: \"30 2 * * *\"\n  timezone: America/New_York\n\
             safety:\n  batch_size: 7\n  max_fraction: 1.0\nreport:\n  outbox: outbox\nprofile: evergreen\n\
             classes:\n{classes}"
        ),
    )
    .unwrap();
    path
}

/// What the data says was done on the Evergreen library, per class, as the ledger
/// counts it (chains aged: each deleted chain tail ages its whole chain, head included;
/// holds aged; reading-history rows gone; patrons purged), and the ledger's count per
/// class, both read in one statement (one snapshot): a server session of a killed
/// process may still commit its last transaction between two separate reads.
async fn evergreen_done_and_ledger(db: &TestDb) -> ([i64; 4], [i64; 4]) {
    let mut sqls = evergreen_done_sql();
    for class in [
        "circulation_history",
        "holds_history",
        "reading_history",
        "expired_patrons",
    ] {
        sqls.push(ledger_sql(Some(class)));
    }
    let v = db.ints(&sqls).await;
    (evergreen_done_of(&v), [v[4], v[5], v[6], v[7]])
}

/// What the data says was done, before the first run (no ledger yet).
async fn evergreen_done(db: &TestDb) -> [i64; 4] {
    evergreen_done_of(&db.ints(&evergreen_done_sql()).await)
}

/// [`evergreen_done_sql`]'s counts as done per class (reading history: rows gone).
fn evergreen_done_of(v: &[i64]) -> [i64; 4] {
    [v[0], v[1], -v[2], v[3]]
}

/// The four counts of [`evergreen_done_and_ledger`]'s data side.
fn evergreen_done_sql() -> Vec<String> {
    [
        "action.aged_circulation WHERE parent_circ IS NULL",
        "action.aged_hold_request",
        "action.usr_circ_history",
        "actor.usr WHERE usrname LIKE '%-PURGED-%'",
    ]
    .iter()
    .map(|w| format!("SELECT COUNT(*) FROM {w}"))
    .collect()
}

/// No transaction half done: no chain partly aged (an aged circulation whose parent is
/// still live, or a live one whose parent was aged), no purged patron with a card, an
/// address or an audit row left (the purge and the deletion of its audit rows are one
/// transaction).
async fn assert_nothing_half_done(db: &TestDb, when: &str) {
    for (what, sql) in [
        (
            "aged circulation with a live parent",
            "action.aged_circulation a JOIN action.circulation c ON c.id = a.parent_circ",
        ),
        (
            "live circulation with an aged parent",
            "action.circulation c JOIN action.aged_circulation a ON a.id = c.parent_circ",
        ),
        (
            "purged patron with a card",
            "actor.card k JOIN actor.usr u ON u.id = k.usr WHERE u.usrname LIKE '%-PURGED-%'",
        ),
        (
            "purged patron with an address",
            "actor.usr_address a JOIN actor.usr u ON u.id = a.usr WHERE u.usrname LIKE '%-PURGED-%'",
        ),
        (
            "purged patron with audit rows",
            "auditor.actor_usr_history h JOIN actor.usr u ON u.id = h.id WHERE u.usrname LIKE '%-PURGED-%'",
        ),
    ] {
        assert_eq!(db.count(sql).await, 0, "{when}: {what}");
    }
}

/// SIGKILL at random moments on PostgreSQL, on an Evergreen library from the generator
/// (1,000 patrons, 12,000 circulations in renewal chains, 3,000 holds, opt-in reading
/// history, audit rows), in two phases of kills: first the three classes that delete
/// (chains aged through Evergreen's triggers, holds aged, reading history), then the
/// purge of expired patrons by `actor.usr_delete`, one patron per transaction. After
/// every kill, per class, the ledger equals what the data shows was done, and no chain
/// is partly aged and no purged patron keeps a trace (all or nothing). The next run of
/// each phase closes the killed runs as interrupted, says so, and finishes the work
/// (`plan` shows 0); the chain verifies at the end.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_random_moments_on_postgresql_leaves_the_ledger_equal_to_what_was_done() {
    use lethe::demo::evergreen::{EvergreenOptions, populate};
    let Some(db) = TestDb::postgres(&crate::evergreen::evergreen_ddl()).await else {
        return;
    };
    let Raw::Postgres(pool) = &db.raw else {
        unreachable!()
    };
    let opts = EvergreenOptions {
        seed: 6,
        patrons: 1000,
        circulations: 12_000,
        holds: 3000,
        aged_chains: 100,
        aged_holds: 50,
        today: chrono::Utc::now().date_naive(),
    };
    let loaded = std::time::Instant::now();
    populate(pool, &opts).await.unwrap();
    let load_secs = loaded.elapsed().as_secs_f64();
    let before = evergreen_done(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let seed: u64 = rand::rng().random();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let started = std::time::Instant::now();
    let total = kills();
    // Per phase: the classes on, the kills, and the measures compared with the ledger.
    // The purge takes a patron's remaining rows with it (opted-in history, holds kept
    // for opted-in patrons), outside the other classes: in its phase only the patrons
    // are compared.
    let phases: [(&[&str], usize, &[usize]); 2] = [
        (
            &["circulation_history", "holds_history", "reading_history"],
            total - total / 2,
            &[0, 1, 2, 3],
        ),
        (&["expired_patrons"], total / 2, &[3]),
    ];
    let measured = |v: &[i64], keep: &[usize]| -> Vec<i64> { keep.iter().map(|&i| v[i]).collect() };
    let mut killed_in_all = 0;
    let mut figures = Vec::new();
    for (phase, (enabled, rounds, keep)) in phases.into_iter().enumerate() {
        let cfg = evergreen_config(dir.path(), &db.url, enabled);
        let mut killed = 0;
        let mut last_killed = false;
        for round in 0..rounds {
            let wait_for = rng.random_range(1..40);
            last_killed = run_and_kill(&cfg, wait_for);
            killed += usize::from(last_killed);
            let (now, ledger) = evergreen_done_and_ledger(&db).await;
            let done: Vec<i64> = now.iter().zip(before).map(|(n, b)| n - b).collect();
            assert_eq!(
                measured(&ledger, keep),
                measured(&done, keep),
                "seed {seed}, phase {phase}, round {round}: the ledger (left) and the data disagree \
                 (chains, holds, reading history, patrons)"
            );
            assert_nothing_half_done(&db, &format!("seed {seed}, phase {phase}, round {round}"))
                .await;
        }
        assert!(
            killed >= 1 || rounds == 0,
            "seed {seed}, phase {phase}: no run was killed mid-run"
        );
        killed_in_all += killed;
        // The next run closes the killed runs as interrupted and finishes the work.
        let out = lethe(&cfg, &["run", "--once", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(j["status"], "ok", "{j}");
        if last_killed {
            let notices = j["notices"].as_array().map_or(0, Vec::len);
            assert!(notices >= 1, "the report tells of the interrupted run: {j}");
        }
        assert_eq!(db.count("lethe_runs WHERE status = 'running'").await, 0);
        let (now, ledger) = evergreen_done_and_ledger(&db).await;
        let done: Vec<i64> = now.iter().zip(before).map(|(n, b)| n - b).collect();
        assert_eq!(
            measured(&ledger, keep),
            measured(&done, keep),
            "seed {seed}, after phase {phase}"
        );
        assert_nothing_half_done(&db, &format!("seed {seed}, after phase {phase}")).await;
        let plan = lethe(&cfg, &["plan", "--json"]);
        let p: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
        for c in p["classes"].as_array().unwrap() {
            assert_eq!(c["eligible"], 0, "{c}");
        }
        figures.push(format!(
            "phase {phase} ({}): {killed} of {rounds} runs killed mid-run, done {:?}",
            enabled.join(", "),
            measured(&done, keep)
        ));
    }
    assert!(
        db.count("lethe_runs WHERE kind = 'run' AND status = 'interrupted'")
            .await
            >= killed_in_all as i64
    );
    let v = lethe(&dir.path().join("retention.yaml"), &["ledger", "verify"]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    eprintln!(
        "crash test (Postgres): seed {seed}, {killed_in_all} of {total} runs killed mid-run; {}; \
         library loaded in {load_secs:.1} s, kills and runs {:.1} s",
        figures.join("; "),
        started.elapsed().as_secs_f64()
    );
}
