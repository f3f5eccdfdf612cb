//! The `lethe` binary as an administrator runs it: exit codes, JSON, the demo, a
//! shutdown signal mid-run, and canary values that must never leave the database.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use lethe::demo::{self, DemoOptions};

const LETHE: &str = env!("CARGO_BIN_EXE_lethe");

/// Runs the binary in `dir` with debug logs (also used by other modules).
pub(crate) fn lethe(dir: &Path, args: &[&str]) -> Output {
    Command::new(LETHE)
        .current_dir(dir)
        .args(args)
        .env("RUST_LOG", "debug")
        .env_remove("LETHE_CONFIG")
        .output()
        .unwrap()
}

fn write_config(dir: &Path, db: &Path, extra: &str) -> PathBuf {
    let path = dir.join("retention.yaml");
    let yaml = format!(
        "library: Canary Test Library\n\
         database:\n  url: \"sqlite://{}\"\n\
         schedule:\n  cron: \"30 2 * * *\"\n  timezone: America/New_York\n\
         report:\n  outbox: outbox\n\
         profile: koha\n{extra}",
        db.display()
    );
    std::fs::write(&path, yaml).unwrap();
    path
}

/// Stdout as the one JSON object it must be.
pub(crate) fn json(o: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&o.stdout);
    serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("not one JSON object ({e}):\n{text}"))
}

#[test]
fn check_with_a_bad_config_exits_2_with_the_place() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad-config/misspelled-period.yaml");
    let o = lethe(dir.path(), &["--config", cfg.to_str().unwrap(), "check"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("misspelled-period.yaml:14:13: classes.circulation_history.retain"),
        "{err}"
    );
    assert!(err.contains("nothing was touched"), "{err}");
    let c = cfg.to_str().unwrap();
    assert_eq!(
        lethe(dir.path(), &["--config", c, "plan"]).status.code(),
        Some(2)
    );
    assert_eq!(
        lethe(dir.path(), &["--config", c, "run", "--once"])
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(lethe(dir.path(), &["frobnicate"]).status.code(), Some(2));
    assert_eq!(
        lethe(dir.path(), &["plan", "--as-of", "next tuesday"])
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn unreachable_database_exits_1_with_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &dir.path().join("missing.db"), "");
    let o = lethe(
        dir.path(),
        &["--config", cfg.to_str().unwrap(), "run", "--once"],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("cannot connect to the database"), "{err}");
}

/// Seeds a small demo library whose every personal text value carries the canary.
async fn canary_library(dir: &Path, canary: &str, patrons: usize, checkouts: usize) -> PathBuf {
    let db = dir.join("library.db");
    let mut opts = DemoOptions::standard(chrono::Utc::now().date_naive());
    opts.patrons = patrons;
    opts.returned_checkouts = checkouts;
    opts.canary = Some(canary.to_string());
    demo::create_library_if_absent(&db, &opts)
        .await
        .unwrap()
        .unwrap();
    db
}

#[tokio::test(flavor = "multi_thread")]
async fn canaries_never_leave_the_database() {
    let canary = "Zq7CanaryX";
    let dir = tempfile::tempdir().unwrap();
    let db = canary_library(dir.path(), canary, 400, 4000).await;
    let cfg = write_config(dir.path(), &db, "");
    let cfg_s = cfg.to_str().unwrap();
    let mut all = String::new();
    for args in [
        vec!["--config", cfg_s, "check"],
        vec!["--config", cfg_s, "plan"],
        vec!["--config", cfg_s, "plan", "--json"],
        vec!["--config", cfg_s, "run", "--once", "--allow-large"],
        vec![
            "--config",
            cfg_s,
            "--log-format",
            "json",
            "run",
            "--once",
            "--json",
            "--allow-large",
        ],
    ] {
        let o = lethe(dir.path(), &args);
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        all.push_str(&String::from_utf8_lossy(&o.stdout));
        all.push_str(&String::from_utf8_lossy(&o.stderr));
    }
    // The canary is in the database, so the test would see a leak.
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let n: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM borrowers WHERE surname LIKE '%' || ? || '%'")
            .bind(canary)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(n > 0);
    // The ledger.
    for table in ["lethe_runs", "lethe_run_classes"] {
        let rows: Vec<sqlx::sqlite::SqliteRow> =
            sqlx::query(sqlx::AssertSqlSafe(format!("SELECT * FROM {table}")))
                .fetch_all(&pool)
                .await
                .unwrap();
        use sqlx::{Column, Row};
        for r in rows {
            for c in r.columns() {
                if let Ok(Some(v)) = r.try_get::<Option<String>, _>(c.ordinal()) {
                    all.push_str(&v);
                }
            }
        }
    }
    // The reports in the outbox.
    let outbox = dir.path().join("outbox");
    let mut emls = 0;
    for e in std::fs::read_dir(&outbox).unwrap() {
        let p = e.unwrap().path();
        all.push_str(&String::from_utf8_lossy(&std::fs::read(&p).unwrap()));
        emls += 1;
    }
    assert!(emls >= 2, "expected the reports in {}", outbox.display());
    assert!(!all.contains(canary), "the canary leaked");
    assert!(
        !all.to_lowercase().contains(&canary.to_lowercase()),
        "the canary leaked (case)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn run_json_then_plan_shows_a_fixed_point() {
    let dir = tempfile::tempdir().unwrap();
    let db = canary_library(dir.path(), "c", 300, 3000).await;
    let cfg = write_config(dir.path(), &db, "");
    let cfg_s = cfg.to_str().unwrap();
    let o = lethe(
        dir.path(),
        &[
            "--config",
            cfg_s,
            "run",
            "--once",
            "--json",
            "--allow-large",
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let j = json(&o);
    assert_eq!(j["status"], "ok");
    assert_eq!(j["mode"], "enforce");
    assert!(j["run_id"].as_i64().is_some());
    let classes = j["classes"].as_array().unwrap();
    assert_eq!(classes.len(), 3);
    let total: i64 = classes
        .iter()
        .map(|c| c["affected"].as_i64().unwrap())
        .sum();
    assert!(total > 0, "{j}");
    for c in classes {
        for k in [
            "name", "table", "action", "cutoff", "eligible", "affected", "kept", "status",
        ] {
            assert!(!c[k].is_null(), "{k} missing in {c}");
        }
        for k in ["opt_in", "legal_hold", "obligations", "protected"] {
            assert!(c["kept"][k].as_i64().is_some(), "kept.{k} missing in {c}");
        }
    }
    let p = json(&lethe(dir.path(), &["--config", cfg_s, "plan", "--json"]));
    assert!(p["run_id"].is_null());
    for c in p["classes"].as_array().unwrap() {
        assert_eq!(c["eligible"], 0, "{c}");
    }
    let again = json(&lethe(
        dir.path(),
        &["--config", cfg_s, "run", "--once", "--json"],
    ));
    for c in again["classes"].as_array().unwrap() {
        assert_eq!(c["affected"], 0, "{c}");
    }
    // Next year more is eligible: --as-of plans, never runs.
    let later = json(&lethe(
        dir.path(),
        &[
            "--config",
            cfg_s,
            "plan",
            "--json",
            "--as-of",
            "2099-01-01 02:30",
        ],
    ));
    let eligible: i64 = later["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["eligible"].as_i64().unwrap())
        .sum();
    assert!(eligible > 0);
    let after = json(&lethe(dir.path(), &["--config", cfg_s, "plan", "--json"]));
    assert_eq!(after["classes"][0]["eligible"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn breaker_trips_without_allow_large_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let db = canary_library(dir.path(), "c", 300, 3000).await;
    let cfg = write_config(dir.path(), &db, "safety:\n  max_fraction: 0.01\n");
    let o = lethe(
        dir.path(),
        &["--config", cfg.to_str().unwrap(), "run", "--once", "--json"],
    );
    assert_eq!(o.status.code(), Some(1));
    let j = json(&o);
    assert_eq!(j["status"], "tripped");
    assert!(
        j["classes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["status"] == "tripped")
    );
    assert!(
        j["classes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["affected"] == 0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_commits_the_batch_records_interrupted_and_the_next_run_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let db = canary_library(dir.path(), "c", 300, 20_000).await;
    let cfg = write_config(dir.path(), &db, "safety:\n  batch_size: 1\n");
    let cfg_s = cfg.to_str().unwrap();
    let before = json(&lethe(dir.path(), &["--config", cfg_s, "plan", "--json"]));
    let eligible_circ = before["classes"][0]["eligible"].as_i64().unwrap();
    assert!(eligible_circ > 1000, "{before}");

    let mut child = Command::new(LETHE)
        .current_dir(dir.path())
        .args([
            "--config",
            cfg_s,
            "run",
            "--once",
            "--json",
            "--allow-large",
        ])
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for committed batches, then ask it to stop.
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let mut batches = 0;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.contains("batch committed") {
            batches += 1;
            if batches == 50 {
                break;
            }
        }
    }
    assert_eq!(batches, 50);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let drain = std::thread::spawn(move || for _ in lines {});
    let out = child.wait_with_output().unwrap();
    drain.join().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let j = json(&out);
    assert_eq!(j["status"], "interrupted", "{j}");
    let done = j["classes"][0]["affected"].as_i64().unwrap();
    assert!(
        done >= 50 && done < eligible_circ,
        "{done} of {eligible_circ}"
    );

    // The ledger equals what was done: anonymized rows = the ledger's count.
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let run_id = j["run_id"].as_i64().unwrap();
    let ledger: i64 = sqlx::query_scalar(
        "SELECT affected FROM lethe_run_classes WHERE run_id = ? AND class = 'circulation_history'",
    )
    .bind(run_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(ledger, done);
    let status: String = sqlx::query_scalar("SELECT status FROM lethe_runs WHERE id = ?")
        .bind(run_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(status, "interrupted");
    pool.close().await;

    // The next run finishes the work.
    let cfg_fast = write_config(dir.path(), &db, "");
    let next = json(&lethe(
        dir.path(),
        &[
            "--config",
            cfg_fast.to_str().unwrap(),
            "run",
            "--once",
            "--json",
            "--allow-large",
        ],
    ));
    assert_eq!(next["status"], "ok");
    assert_eq!(
        next["classes"][0]["affected"].as_i64().unwrap() + done,
        eligible_circ
    );
}

#[test]
fn demo_runs_end_to_end_and_a_second_run_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let o = lethe(dir.path(), &["demo", "--dir", "demo"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains("circulation_history") && out.contains("expired_patrons"),
        "{out}"
    );
    assert!(out.contains("report: "), "{out}");
    let emls = std::fs::read_dir(dir.path().join("demo/outbox"))
        .unwrap()
        .count();
    assert_eq!(emls, 1);
    // The shipped config, pointed at this demo library.
    let shipped =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("retention.yaml"))
            .unwrap();
    std::fs::write(dir.path().join("retention.yaml"), shipped).unwrap();
    let p = json(&lethe(dir.path(), &["plan", "--json"]));
    for c in p["classes"].as_array().unwrap() {
        assert_eq!(c["eligible"], 0, "{c}");
    }
    let r = json(&lethe(dir.path(), &["run", "--once", "--json"]));
    assert_eq!(r["status"], "ok");
    for c in r["classes"].as_array().unwrap() {
        assert_eq!(c["affected"], 0, "{c}");
    }
    // The demo again: the library exists, nothing more to do.
    let o = lethe(dir.path(), &["demo", "--dir", "demo"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("using the existing library"));
}
