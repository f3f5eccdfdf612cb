//! The public retention schedule (`lethe policy`) and the compliance check
//! (`lethe verify`).

use std::path::Path;

use chrono::{Duration, NaiveDate, Utc};
use lethe::config;
use lethe::db::Db;
use lethe::engine;

use crate::common::*;

fn shipped() -> config::Config {
    config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("retention.yaml")).unwrap()
}

/// The schedule for the shipped config is checked in; regenerate with
/// `LETHE_UPDATE_GOLDEN=1 cargo test --test it publish`.
#[test]
fn policy_of_the_shipped_config_matches_the_golden_file() {
    let cfg = shipped();
    let date = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
    let md = lethe::publish::markdown(&cfg, date);
    let html = lethe::publish::html(&cfg, date);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    if std::env::var("LETHE_UPDATE_GOLDEN").is_ok() {
        std::fs::write(dir.join("policy.md"), &md).unwrap();
        std::fs::write(dir.join("policy.html"), &html).unwrap();
    }
    assert_eq!(md, std::fs::read_to_string(dir.join("policy.md")).unwrap());
    assert_eq!(
        html,
        std::fs::read_to_string(dir.join("policy.html")).unwrap()
    );
    // The footer's hash is the one each run stores in the ledger.
    let hash = lethe::publish::policy_hash(&cfg);
    assert!(md.contains(&hash));
    for words in [
        "30 days",
        "2 years",
        "anonymized",
        "deleted",
        "You can change it at any time",
    ] {
        assert!(md.contains(words), "{words}");
    }
}

#[test]
fn a_class_description_can_be_overridden_and_html_is_escaped() {
    let yaml = "library: \"Smith & <Jones> Library\"\ndatabase:\n  url: sqlite://x.db\nschedule:\n  cron: \"30 2 * * *\"\n  timezone: UTC\n\
                profile: koha\nclasses:\n  circulation_history:\n    description: \"What you borrowed <b>here</b>.\"\n";
    let cfg = config::parse_str(yaml, "x.yaml", Path::new("/tmp"), &|_| None).unwrap();
    let date = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
    assert!(lethe::publish::markdown(&cfg, date).contains("What you borrowed <b>here</b>."));
    let html = lethe::publish::html(&cfg, date);
    assert!(html.contains("What you borrowed &lt;b&gt;here&lt;/b&gt;."));
    assert!(html.contains("Smith &amp; &lt;Jones&gt; Library"));
    assert!(!html.contains("<b>here"));
}

const HOURLY: &str = "safety:\n  min_retention: 1 hour\nclasses:\n  circulation_history: { enabled: false }\n  holds_history: { enabled: false }\n  expired_patrons: { enabled: false }\n  opac_log:\n    table: opac_log\n    key: id\n    age: { columns: [logged_at], type: datetime }\n    retain: 1 hour\n    action: delete\n";

both_backends!(verify_reports_overdue_rows_of_a_one_hour_class);
async fn verify_reports_overdue_rows_of_a_one_hour_class(db: TestDb) {
    db.exec("CREATE TABLE opac_log (id INTEGER NOT NULL PRIMARY KEY, logged_at DATETIME NULL)")
        .await;
    let cfg = db.config(HOURLY);
    let tz = cfg.schedule.timezone;
    let local =
        |t: chrono::DateTime<Utc>| t.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S").to_string();
    let now = Utc::now();
    db.insert(
        "opac_log",
        &[
            ("id", i(1)),
            ("logged_at", s(&local(now - Duration::minutes(30)))),
        ],
    )
    .await;
    db.insert(
        "opac_log",
        &[
            ("id", i(2)),
            ("logged_at", s(&local(now - Duration::minutes(10)))),
        ],
    )
    .await;
    let ldb = Db::connect(&cfg).await.unwrap();
    let c = engine::compliance(&cfg, &ldb, now).await.unwrap();
    assert_eq!(c.overdue, 0);
    assert_eq!(c.classes[0].oldest_overdue, None);
    // An hour later, with no run in between, both rows are overdue.
    let later = engine::compliance(&cfg, &ldb, now + Duration::minutes(75))
        .await
        .unwrap();
    assert_eq!(later.overdue, 2);
    assert_eq!(later.classes[0].oldest_overdue_days, Some(0));
    assert!(
        later.classes[0]
            .oldest_overdue
            .as_deref()
            .unwrap()
            .starts_with(&local(now - Duration::minutes(30))[..16])
    );
    ldb.close().await;
    assert_eq!(db.count("opac_log").await, 2, "verify changes nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn lethe_verify_exits_1_with_overdue_rows_and_0_after_a_run() {
    let db = TestDb::sqlite().await;
    db.exec("CREATE TABLE opac_log (id INTEGER NOT NULL PRIMARY KEY, logged_at DATETIME NULL)")
        .await;
    let tz: chrono_tz::Tz = "America/New_York".parse().unwrap();
    let two_hours_ago = (Utc::now() - Duration::hours(2))
        .with_timezone(&tz)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string();
    db.insert(
        "opac_log",
        &[("id", i(1)), ("logged_at", s(&two_hours_ago))],
    )
    .await;
    db.insert(
        "opac_log",
        &[("id", i(2)), ("logged_at", s(&two_hours_ago))],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = dir.path().join("retention.yaml");
    let classes = HOURLY.split_once("classes:\n").unwrap().1;
    std::fs::write(
        &yaml,
        format!(
            "database:\n  url: \"{}\"\nschedule:\n  cron: \"30 2 * * *\"\n  timezone: America/New_York\n\
             safety:\n  max_fraction: 1.0\n  min_retention: 1 hour\nreport:\n  outbox: outbox\nprofile: koha\nclasses:\n{classes}",
            db.url
        ),
    )
    .unwrap();
    let lethe = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_lethe"))
            .current_dir(dir.path())
            .args(["--config", yaml.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap()
    };
    let o = lethe(&["verify"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("NOT compliant: 2 rows"), "{out}");
    let j: serde_json::Value =
        serde_json::from_slice(&lethe(&["verify", "--json"]).stdout).unwrap();
    assert_eq!(j["overdue"], 2);
    assert_eq!(j["classes"][0]["name"], "opac_log");
    assert!(lethe(&["run", "--once"]).status.success());
    let o = lethe(&["verify"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}
