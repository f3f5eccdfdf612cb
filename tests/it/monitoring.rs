//! Monitoring through the real binary: the metrics file after a demo run, scraped as
//! node_exporter's textfile collector would (parsed with `prometheus-parse`) and
//! checked against the ledger and `lethe verify`; a failed run keeps the last success
//! (from the file when the database is gone, from the ledger when it is there); a file
//! that cannot be written exits 1; and `lethe status --check`'s Nagios exit codes on
//! SQLite and MariaDB.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use prometheus_parse::{Sample, Scrape, Value};
use serde_json::Value as Json;

use crate::common::TestDb;

const LETHE: &str = env!("CARGO_BIN_EXE_lethe");

fn lethe(dir: &Path, args: &[&str]) -> Output {
    Command::new(LETHE)
        .current_dir(dir)
        .args(args)
        .env_remove("LETHE_CONFIG")
        .env_remove("LETHE_DATABASE_URL")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn json(o: &Output) -> Json {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(o)))
}

/// The shipped retention.yaml with `metrics.textfile` set (and `extra` appended), in
/// `dir`, so its database is `dir/demo/library.db`.
fn config(dir: &Path, name: &str, prom: &Path, extra: &str) -> PathBuf {
    let shipped =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("retention.yaml"))
            .unwrap();
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "{shipped}\nmetrics:\n  textfile: {}\n{extra}",
            prom.display()
        ),
    )
    .unwrap();
    path
}

/// Parses the file as the textfile collector does (the Prometheus text format).
fn scrape(prom: &Path) -> Vec<Sample> {
    let body = std::fs::read_to_string(prom).unwrap_or_else(|e| panic!("{}: {e}", prom.display()));
    let lines = body.lines().map(|l| Ok(l.to_string()));
    Scrape::parse(lines)
        .unwrap_or_else(|e| panic!("not the Prometheus text format ({e}):\n{body}"))
        .samples
}

fn gauge(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .filter(|s| s.metric == name)
        .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            Value::Gauge(v) | Value::Untyped(v) | Value::Counter(v) => v,
            _ => panic!("{name} is not a gauge"),
        })
}

fn unix(rfc3339: &str) -> f64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .timestamp_micros() as f64
        / 1e6
}

#[test]
fn metrics_after_a_demo_run_scrape_with_per_class_counts_and_the_last_success() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let prom = d.join("textfile").join("lethe.prom");
    std::fs::create_dir(prom.parent().unwrap()).unwrap();
    let cfg = config(d, "retention.yaml", &prom, "");
    let cfg_s = cfg.to_str().unwrap();
    let o = lethe(d, &["--config", cfg_s, "demo", "--dir", "demo"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&format!("metrics: {}", prom.display())),
        "{}",
        text(&o)
    );
    let samples = scrape(&prom);
    // Only the .prom file is in the collector's folder: the temporary one was renamed.
    let names: Vec<_> = std::fs::read_dir(prom.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["lethe.prom"]);

    let ledger = json(&lethe(
        d,
        &["--config", cfg_s, "ledger", "show", "1", "--json"],
    ));
    assert_eq!(gauge(&samples, "lethe_last_run_id", &[]), Some(1.0));
    assert_eq!(
        gauge(&samples, "lethe_last_run_status", &[("status", "ok")]),
        Some(1.0)
    );
    assert_eq!(
        gauge(&samples, "lethe_last_run_status", &[("status", "failed")]),
        Some(0.0)
    );
    assert_eq!(gauge(&samples, "lethe_ledger_verified", &[]), Some(1.0));
    let finished = unix(ledger["finished_at"].as_str().unwrap());
    let last_success = gauge(&samples, "lethe_last_success_timestamp_seconds", &[]).unwrap();
    assert!(
        (last_success - finished).abs() < 0.002,
        "last success {last_success}, ledger {finished}"
    );
    let end = gauge(&samples, "lethe_last_run_end_timestamp_seconds", &[]).unwrap();
    assert!((end - finished).abs() < 0.002);

    // Per class, the counts are the ledger's.
    let classes = ledger["classes"].as_array().unwrap();
    assert!(classes.len() >= 3, "{ledger}");
    let series = samples
        .iter()
        .filter(|s| s.metric == "lethe_class_affected_rows")
        .count();
    assert_eq!(series, classes.len(), "one series per class of the run");
    let mut total = 0.0;
    for c in classes {
        let class = c["class"].as_str().unwrap();
        let table = c["table"].as_str().unwrap();
        let l = [("class", class), ("table", table)];
        let affected = c["affected"].as_f64().unwrap();
        if ["circulation_history", "holds_history", "expired_patrons"].contains(&class) {
            assert!(
                affected > 0.0,
                "{class}: the demo has rows past their period"
            );
        }
        total += affected;
        assert_eq!(
            gauge(&samples, "lethe_class_affected_rows", &l),
            Some(affected),
            "{class}"
        );
        assert_eq!(
            gauge(&samples, "lethe_class_eligible_rows", &l),
            c["eligible"].as_f64(),
            "{class}"
        );
        for reason in ["opt_in", "legal_hold", "obligations", "protected"] {
            let l = [("class", class), ("table", table), ("reason", reason)];
            assert_eq!(
                gauge(&samples, "lethe_class_kept_rows", &l),
                c[format!("kept_{reason}")].as_f64(),
                "{class} {reason}"
            );
        }
        assert_eq!(
            gauge(
                &samples,
                "lethe_class_status",
                &[("class", class), ("status", "ok")]
            ),
            Some(1.0)
        );
    }
    assert_eq!(
        gauge(&samples, "lethe_last_run_affected_rows", &[]),
        Some(total)
    );
    // Overdue per class: what `lethe verify` finds right after (0 after a full run).
    let verify = json(&lethe(d, &["--config", cfg_s, "verify", "--json"]));
    for k in verify["classes"].as_array().unwrap() {
        let class = k["name"].as_str().unwrap();
        assert_eq!(
            gauge(&samples, "lethe_class_overdue_rows", &[("class", class)]),
            k["overdue"].as_f64(),
            "{class}"
        );
    }
    let kept_opt_in = gauge(
        &samples,
        "lethe_class_kept_rows",
        &[("class", "circulation_history"), ("reason", "opt_in")],
    )
    .unwrap();
    assert!(
        kept_opt_in > 0.0,
        "the demo has patrons who keep their history"
    );

    // A run that cannot reach its database fails (exit 1); its file says failed and
    // keeps the last success, carried over from the file it replaces.
    let gone = config(d, "gone.yaml", &prom, "");
    let gone_text = std::fs::read_to_string(&gone)
        .unwrap()
        .replace("sqlite://demo/library.db", "sqlite://missing/library.db");
    std::fs::write(&gone, gone_text).unwrap();
    let o = lethe(d, &["--config", gone.to_str().unwrap(), "run", "--once"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let failed = scrape(&prom);
    assert_eq!(
        gauge(&failed, "lethe_last_run_status", &[("status", "failed")]),
        Some(1.0)
    );
    assert_eq!(
        gauge(&failed, "lethe_last_run_status", &[("status", "ok")]),
        Some(0.0)
    );
    assert_eq!(
        gauge(&failed, "lethe_last_success_timestamp_seconds", &[]),
        Some(last_success)
    );
    assert_eq!(
        gauge(&failed, "lethe_last_run_id", &[]),
        None,
        "no run was recorded"
    );
    assert!(gauge(&failed, "lethe_last_run_start_timestamp_seconds", &[]).unwrap() > end);

    // Without that file, a failed run whose database is there takes the last success
    // from the ledger: a config that does not fit the database (exit 2, nothing
    // touched) still writes the file.
    std::fs::remove_file(&prom).unwrap();
    let mismatch = config(d, "mismatch.yaml", &prom, "");
    let shipped = std::fs::read_to_string(&mismatch).unwrap();
    let class_line = shipped
        .lines()
        .find(|l| l.starts_with("  circulation_history:"))
        .expect("the shipped file sets circulation_history");
    let mismatch_text = shipped.replacen(
        class_line,
        &format!("{class_line}\n    age: {{ columns: [no_such_column], type: datetime }}"),
        1,
    );
    assert_ne!(mismatch_text, shipped);
    std::fs::write(&mismatch, mismatch_text).unwrap();
    let o = lethe(
        d,
        &["--config", mismatch.to_str().unwrap(), "run", "--once"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let from_ledger = scrape(&prom);
    assert_eq!(
        gauge(
            &from_ledger,
            "lethe_last_run_status",
            &[("status", "failed")]
        ),
        Some(1.0)
    );
    let ls = gauge(&from_ledger, "lethe_last_success_timestamp_seconds", &[]).unwrap();
    assert!(
        (ls - finished).abs() < 0.002,
        "from the ledger {ls}, ledger {finished}"
    );
    assert_eq!(gauge(&from_ledger, "lethe_ledger_verified", &[]), Some(1.0));
}

#[test]
fn a_metrics_file_that_cannot_be_written_exits_1_and_the_run_stands() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let prom = d.join("no-such-folder").join("lethe.prom");
    let cfg = config(d, "retention.yaml", &prom, "");
    let cfg_s = cfg.to_str().unwrap();
    let o = lethe(d, &["--config", cfg_s, "demo", "--dir", "demo"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("metrics: could not write"), "{}", text(&o));
    assert!(
        out.contains("demo run: run 1, mode enforce, status ok"),
        "{}",
        text(&o)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("the metrics file could not be written"),
        "{}",
        text(&o)
    );
    // The run is in the ledger, ok, and `check` names the folder.
    let s = json(&lethe(d, &["--config", cfg_s, "status", "--json"]));
    assert_eq!(s["last_run"]["status"], "ok", "{s}");
    let o = lethe(d, &["--config", cfg_s, "check"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("the metrics folder"),
        "{}",
        text(&o)
    );
    assert!(!prom.parent().unwrap().exists());
}

#[test]
fn a_daemon_that_fails_its_health_check_at_boot_writes_a_failed_metrics_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let prom = d.join("lethe.prom");
    let cfg = config(d, "retention.yaml", &prom, "");
    // demo/library.db does not exist: the daemon cannot connect at boot.
    let o = lethe(d, &["--config", cfg.to_str().unwrap(), "run"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let samples = scrape(&prom);
    assert_eq!(
        gauge(&samples, "lethe_last_run_status", &[("status", "failed")]),
        Some(1.0)
    );
    assert_eq!(
        gauge(&samples, "lethe_last_success_timestamp_seconds", &[]),
        None
    );
    assert_eq!(
        gauge(&samples, "lethe_ledger_verified", &[]),
        None,
        "not read: the database is down"
    );
}

fn check(dir: &Path, cfg: &Path) -> (Option<i32>, String) {
    let o = lethe(
        dir,
        &["--config", cfg.to_str().unwrap(), "status", "--check"],
    );
    let line = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(line.lines().count(), 1, "one status line: {}", text(&o));
    (o.status.code(), line.trim_end().to_string())
}

fn sqlite_config(dir: &Path, url: &str, extra: &str) -> PathBuf {
    let path = dir.join("retention.yaml");
    std::fs::write(
        &path,
        format!(
            "library: Status Library\ndatabase:\n  url: \"{url}\"\nschedule:\n  cron: \"30 2 * * *\"\n  \
             timezone: America/New_York\nreport:\n  outbox: outbox\nprofile: koha\n{extra}"
        ),
    )
    .unwrap();
    path
}

async fn demo_library(path: &Path) {
    let opts = lethe::demo::DemoOptions::standard(chrono::Utc::now().date_naive());
    lethe::demo::create_library_if_absent(path, &opts)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn status_check_exit_codes_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let db = d.join("library.db");
    demo_library(&db).await;
    let cfg = sqlite_config(d, &format!("sqlite://{}", db.display()), "");

    // No run ever: CRITICAL, and nothing was created to find that out.
    let (code, line) = check(d, &cfg);
    assert_eq!(code, Some(2), "{line}");
    assert!(
        line.starts_with("LETHE CRITICAL - no run recorded in the ledger yet; next run "),
        "{line}"
    );
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let lethe_tables: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sqlite_master WHERE name LIKE 'lethe_%'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(lethe_tables, 0, "status created Lethe's tables");

    // The first run is large: the circuit breaker trips. WARNING.
    let o = lethe(d, &["--config", cfg.to_str().unwrap(), "run", "--once"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let (code, line) = check(d, &cfg);
    assert_eq!(code, Some(1), "{line}");
    assert!(
        line.starts_with("LETHE WARNING - last run 1 (enforce) tripped at "),
        "{line}"
    );
    assert!(line.contains("--allow-large"), "{line}");

    // Acknowledged: OK, with the counts as performance data.
    let o = lethe(
        d,
        &[
            "--config",
            cfg.to_str().unwrap(),
            "run",
            "--once",
            "--allow-large",
            "--json",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let run = json(&o);
    let changed: u64 = run["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["affected"].as_u64().unwrap())
        .sum();
    let (code, line) = check(d, &cfg);
    assert_eq!(code, Some(0), "{line}");
    assert!(
        line.starts_with("LETHE OK - last run 2 (enforce) ok at "),
        "{line}"
    );
    assert!(
        line.contains(&format!(" | changed={changed} last_run_age=")),
        "{line}"
    );
    let s = json(&lethe(
        d,
        &["--config", cfg.to_str().unwrap(), "status", "--json"],
    ));
    assert_eq!(s["state"], "OK");
    assert_eq!(s["last_run"]["id"], 2);
    assert_eq!(s["last_run"]["changed"], changed);
    assert_eq!(s["overdue"], false);
    assert_eq!(s["next_run"]["timezone"], "America/New_York");
    assert!(
        s["next_run"]["local"]
            .as_str()
            .unwrap()
            .contains("T02:30:00-0"),
        "{s}"
    );
    assert!(
        s["next_run"]["utc"].as_str().unwrap().ends_with(":30:00Z"),
        "{s}"
    );
    assert_eq!(s["ledger"]["verified"], true);
    assert_eq!(s["ledger"]["head_hash"].as_str().unwrap().len(), 64);
    // Plain `status` (no --check) prints the same facts and exits 0.
    let o = lethe(d, &["--config", cfg.to_str().unwrap(), "status"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    for want in [
        "last run:     2 (enforce) ok",
        "next run:     ",
        "overdue:      no",
        "chain verified, head ",
    ] {
        assert!(
            String::from_utf8_lossy(&o.stdout).contains(want),
            "{want}: {}",
            text(&o)
        );
    }

    // A ledger entry altered: the chain does not verify. CRITICAL.
    sqlx::query(
        "UPDATE lethe_run_classes SET affected = affected + 1 WHERE run_id = 2 AND position = 0",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let (code, line) = check(d, &cfg);
    assert_eq!(code, Some(2), "{line}");
    assert!(
        line.starts_with("LETHE CRITICAL - the ledger's hash chain is broken at ledger entry 2"),
        "{line}"
    );

    // The database unreachable: CRITICAL with --check; exit 1 without.
    let gone = sqlite_config(
        d,
        &format!("sqlite://{}", d.join("missing.db").display()),
        "",
    );
    let (code, line) = check(d, &gone);
    assert_eq!(code, Some(2), "{line}");
    assert!(
        line.starts_with("LETHE CRITICAL - cannot read the ledger: cannot connect to the database"),
        "{line}"
    );
    let o = lethe(d, &["--config", gone.to_str().unwrap(), "status"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));

    // An invalid config: CRITICAL, exit 2, one line.
    let bad = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad-config/bad-timezone.yaml");
    let (code, line) = check(d, &bad);
    assert_eq!(code, Some(2), "{line}");
    assert!(
        line.starts_with("LETHE CRITICAL - invalid configuration (1 error): "),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn status_check_on_mariadb_no_run_then_ok() {
    let Some(db) = TestDb::mysql().await else {
        return;
    };
    crate::common::koha_reference(&db, Some("1")).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = sqlite_config(d, &db.url, "");
    let (code, line) = check(d, &cfg);
    assert_eq!(code, Some(2), "{line}");
    assert!(
        line.starts_with("LETHE CRITICAL - no run recorded"),
        "{line}"
    );
    let o = lethe(d, &["--config", cfg.to_str().unwrap(), "run", "--once"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let (code, line) = check(d, &cfg);
    assert_eq!(code, Some(0), "{line}");
    assert!(
        line.starts_with("LETHE OK - last run 1 (enforce) ok at "),
        "{line}"
    );
}
