//! `lethe inventory` on the Koha fixture, and the index advice of `lethe check` with
//! `--create-indexes` on the three backends: advice for an unindexed age column and
//! none for an indexed one, the index created (read back from the catalog) and recorded
//! in the ledger, whose chain still verifies, and nothing created a second time.

use std::path::{Path, PathBuf};

use chrono::Utc;
use lethe::config::{Backend, Ident, TableName};
use lethe::db::Db;
use lethe::db::catalog;

use crate::cli::{json, lethe};
use crate::common::{TestDb, koha_reference, old_issue, patron};

/// A table with three date columns, one of them indexed.
const VISITS_SQLITE: &str = "CREATE TABLE visits (id INTEGER PRIMARY KEY, patron INTEGER, \
     seen_at DATETIME, left_at DATETIME, came_at DATETIME); CREATE INDEX visits_came ON visits (came_at);";
const VISITS_MYSQL: &str = "CREATE TABLE visits (id INT NOT NULL AUTO_INCREMENT PRIMARY KEY, patron INT, \
     seen_at DATETIME, left_at DATETIME, came_at DATETIME, KEY visits_came (came_at)) ENGINE=InnoDB;";
const VISITS_PG: &str = "CREATE TABLE visits (id BIGINT PRIMARY KEY, patron INT, \
     seen_at TIMESTAMPTZ, left_at TIMESTAMPTZ, came_at TIMESTAMPTZ); CREATE INDEX visits_came ON visits (came_at);";

fn write_config(dir: &Path, url: &str, backend: Backend, extra: &str) -> PathBuf {
    let ty = if backend == Backend::Postgres {
        "timestamptz"
    } else {
        "datetime"
    };
    let class = |name: &str, cols: &str| {
        format!(
            "  {name}:\n    table: visits\n    key: id\n    patron: patron\n    \
             age: {{ columns: [{cols}], type: {ty}, meaning: the visit }}\n    retain: 30 days\n    action: delete\n"
        )
    };
    let yaml = format!(
        "library: Index Test Library\n\
         database:\n  url: \"{url}\"\n\
         schedule:\n  cron: \"30 2 * * *\"\n  timezone: America/New_York\n\
         {extra}\
         report:\n  outbox: outbox\n\
         profile: none\n\
         classes:\n{}{}{}",
        class("slow_visits", "seen_at"),
        class("fast_visits", "came_at"),
        class("either_visits", "seen_at, left_at"),
    );
    let path = dir.join("retention.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The index advice section of `check`'s output.
fn advice(out: &str) -> String {
    out.lines()
        .skip_while(|l| !l.starts_with("index"))
        .take_while(|l| !l.starts_with("clock:"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn ids(cols: &[&str]) -> Vec<Ident> {
    cols.iter().map(|c| Ident::new(c).unwrap()).collect()
}

async fn served(url: &str, backend: Backend, cols: &[&str]) -> Option<String> {
    let db = Db::connect_url(backend, url, "test", std::time::Duration::from_secs(30))
        .await
        .unwrap();
    let t = TableName::new("visits").unwrap();
    let ix = db.indexes(&t).await.unwrap();
    db.close().await;
    catalog::serving(&ix, &ids(cols)).map(|i| i.name.clone())
}

async fn index_advice_and_creation(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &db.url, db.backend, "");
    let c = cfg.to_str().unwrap();
    let mysql = db.backend == Backend::MySql;

    // Advice: the unindexed column and the COALESCE, not the indexed column.
    let o = lethe(dir.path(), &["--config", c, "check"]);
    let all = stdout(&o);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{all}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let out = advice(&all);
    assert!(out.contains("index advice ("), "{all}");
    assert!(
        out.contains("slow_visits") && out.contains("visits.seen_at"),
        "{out}"
    );
    assert!(out.contains("visits.COALESCE(seen_at, left_at)"), "{out}");
    assert!(
        !out.contains("fast_visits"),
        "an indexed age column has no advice:\n{out}"
    );
    assert!(!out.contains("visits.came_at"), "{out}");
    let expected = match db.backend {
        Backend::MySql => {
            "ALTER TABLE `visits` ADD INDEX `lethe_visits_seen_at` (`seen_at`), ALGORITHM=INPLACE, LOCK=NONE"
        }
        Backend::Postgres => {
            r#"CREATE INDEX CONCURRENTLY IF NOT EXISTS "lethe_visits_seen_at" ON "visits" ("seen_at")"#
        }
        Backend::Sqlite => {
            r#"CREATE INDEX IF NOT EXISTS "lethe_visits_seen_at" ON "visits" ("seen_at")"#
        }
    };
    assert!(out.contains(expected), "{out}");
    if mysql {
        assert!(
            out.contains("no single index serves COALESCE(seen_at, left_at)"),
            "{out}"
        );
    }
    // --strict does not make advice an error.
    let o = lethe(dir.path(), &["--config", c, "check", "--strict"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert_eq!(served(&db.url, db.backend, &["seen_at"]).await, None);

    // --create-indexes creates them and records each in the ledger.
    let o = lethe(dir.path(), &["--config", c, "check", "--create-indexes"]);
    let out = stdout(&o);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains("created index lethe_visits_seen_at on visits.seen_at (ledger entry"),
        "{out}"
    );
    assert_eq!(
        served(&db.url, db.backend, &["seen_at"]).await.as_deref(),
        Some("lethe_visits_seen_at")
    );
    let coalesce = served(&db.url, db.backend, &["seen_at", "left_at"]).await;
    if mysql {
        assert_eq!(coalesce, None);
        assert_eq!(out.matches("created index").count(), 1, "{out}");
    } else {
        assert_eq!(
            coalesce.as_deref(),
            Some("lethe_visits_seen_at_left_at"),
            "{out}"
        );
        assert_eq!(out.matches("created index").count(), 2, "{out}");
    }
    // The existing index is still what serves came_at.
    assert_eq!(
        served(&db.url, db.backend, &["came_at"]).await.as_deref(),
        Some("visits_came")
    );

    // A second run creates nothing.
    let o = lethe(dir.path(), &["--config", c, "check", "--create-indexes"]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(!out.contains("created index"), "{out}");
    if mysql {
        assert!(out.contains("index advice (1)"), "{out}");
    } else {
        assert!(
            out.contains("indexes: an index serves every enabled class's age column"),
            "{out}"
        );
    }

    // The ledger: the chain verifies and shows the events.
    let o = lethe(dir.path(), &["--config", c, "ledger", "verify"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let n = if mysql { 1 } else { 2 };
    assert!(
        stdout(&o).contains(&format!("ledger: {n} entries verified")),
        "{}",
        stdout(&o)
    );
    let o = lethe(dir.path(), &["--config", c, "ledger", "list"]);
    assert_eq!(
        stdout(&o).matches("index-created").count(),
        n,
        "{}",
        stdout(&o)
    );
    let o = lethe(dir.path(), &["--config", c, "ledger", "export"]);
    let x = json(&o);
    let entries = x["entries"].as_array().expect("entries");
    let events: Vec<serde_json::Value> = entries
        .iter()
        .filter(|e| e["kind"] == "index-created")
        .map(|e| serde_json::from_str(e["event"].as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(events.len(), n);
    assert_eq!(events[0]["index"], "lethe_visits_seen_at");
    assert_eq!(events[0]["table"], "visits");
    assert_eq!(events[0]["class"], "slow_visits");
    assert_eq!(events[0]["columns"], serde_json::json!(["seen_at"]));
    // The offline verification of the export agrees.
    let file = dir.path().join("export.json");
    std::fs::write(&file, &o.stdout).unwrap();
    let o = lethe(
        dir.path(),
        &[
            "--config",
            c,
            "ledger",
            "verify",
            "--file",
            file.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let id = entries
        .iter()
        .find(|e| e["kind"] == "index-created")
        .and_then(|e| e["id"].as_i64())
        .unwrap();
    let o = lethe(
        dir.path(),
        &["--config", c, "ledger", "show", &id.to_string()],
    );
    assert!(stdout(&o).contains("index-created {"), "{}", stdout(&o));
}

three_backends_with!(
    index_advice_and_creation,
    super::VISITS_SQLITE,
    super::VISITS_MYSQL,
    super::VISITS_PG
);

/// In dry-run mode `--create-indexes` prints what it would create and creates nothing.
#[tokio::test(flavor = "multi_thread")]
async fn create_indexes_in_dry_run_creates_nothing() {
    let db = TestDb::sqlite().await;
    db.exec(VISITS_SQLITE).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &db.url,
        db.backend,
        "safety:\n  mode: dry-run\n",
    );
    let c = cfg.to_str().unwrap();
    let o = lethe(dir.path(), &["--config", c, "check", "--create-indexes"]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        out.contains(
            "dry run (safety.mode): would create index lethe_visits_seen_at on visits.seen_at"
        ),
        "{out}"
    );
    assert!(!out.contains("created index"), "{out}");
    assert_eq!(served(&db.url, db.backend, &["seen_at"]).await, None);
    assert_eq!(
        served(&db.url, db.backend, &["seen_at", "left_at"]).await,
        None
    );
    let o = lethe(dir.path(), &["--config", c, "ledger", "list"]);
    assert!(!stdout(&o).contains("index-created"), "{}", stdout(&o));
}

/// The inventory of the Koha fixture (or Koha's own schema with `LETHE_KOHA_DDL`):
/// covered, disabled, off, covered otherwise, not covered and absent rows, the oldest
/// row's date and age, and whether the age column is indexed; text and JSON.
#[tokio::test(flavor = "multi_thread")]
async fn inventory_of_the_koha_fixture() {
    let Some(db) = TestDb::mysql().await else {
        return;
    };
    // A table this Koha lacks, and one it has that nothing covers.
    db.exec(
        "DROP TABLE IF EXISTS ticket_updates; DROP TABLE IF EXISTS tickets; \
         CREATE TABLE IF NOT EXISTS sessions (id varchar(32) NOT NULL PRIMARY KEY, a_session longblob NOT NULL)",
    )
    .await;
    koha_reference(&db, Some("1")).await;
    patron(&db, 2, 1, "2030-01-01", "PT").await;
    old_issue(&db, 10, Some(2), Some("2025-01-02 10:00:00")).await;
    old_issue(&db, 11, Some(2), Some("2026-03-04 10:00:00")).await;
    old_issue(&db, 12, Some(2), None).await;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("retention.yaml");
    std::fs::write(
        &path,
        format!(
            "library: Inventory Test Library\n\
             database:\n  url: \"{}\"\n\
             schedule:\n  cron: \"30 2 * * *\"\n  timezone: America/New_York\n\
             report:\n  outbox: outbox\n\
             profile: koha\n\
             classes:\n  holds_history:\n    enabled: false\n  notices: {{}}\n  refused_processing: {{}}\n",
            db.url
        ),
    )
    .unwrap();
    let c = path.to_str().unwrap();

    let o = lethe(dir.path(), &["--config", c, "inventory", "--json"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let x = json(&o);
    assert_eq!(x["backend"], "mysql");
    assert_eq!(x["profile"], "koha");
    let tables = x["tables"].as_array().unwrap();
    let row = |t: &str| {
        tables
            .iter()
            .find(|r| r["table"] == t)
            .unwrap_or_else(|| panic!("no row for {t}: {x}"))
            .clone()
    };
    let today = Utc::now()
        .with_timezone(&chrono_tz::America::New_York)
        .date_naive();
    let first = chrono::NaiveDate::from_ymd_opt(2025, 1, 2).unwrap();

    let oi = row("old_issues");
    assert_eq!(oi["status"], "covered");
    assert_eq!(oi["class"], "circulation_history");
    assert_eq!(oi["action"], "anonymize");
    assert_eq!(oi["columns"], serde_json::json!(["borrowernumber", "note"]));
    assert_eq!(oi["age_columns"], serde_json::json!(["returndate"]));
    assert_eq!(oi["oldest"], "2025-01-02");
    assert_eq!(oi["oldest_days"], (today - first).num_days());
    assert_eq!(oi["indexed"], false, "Koha has no index on returndate");

    let mq = row("message_queue");
    assert_eq!(mq["status"], "covered", "named in the file: on");
    assert_eq!(mq["class"], "notices");
    assert_eq!(mq["oldest"], serde_json::Value::Null, "no notices");

    let or = row("old_reserves");
    assert_eq!(or["status"], "disabled");
    assert_eq!(or["class"], "holds_history");
    assert!(
        or["how"]
            .as_str()
            .unwrap()
            .contains("disabled in retention.yaml")
    );
    assert_eq!(or["indexed"], false);

    let st = row("statistics");
    assert_eq!(st["status"], "off");
    assert_eq!(st["class"], "circulation_statistics");
    assert_eq!(st["indexed"], true, "Koha's KEY timeidx (datetime)");
    assert_eq!(st["index"], "timeidx");

    // refused_processing reads its age from patron_consent (age.from): its borrowers
    // row has no age column, and patron_consent is listed with refused_on, besides the
    // profile's row for the cascade.
    let rows_of = |t: &str| {
        tables
            .iter()
            .filter(|r| r["table"] == t)
            .cloned()
            .collect::<Vec<_>>()
    };
    let rp = rows_of("borrowers")
        .into_iter()
        .find(|r| r["class"] == "refused_processing")
        .unwrap_or_else(|| panic!("no borrowers row for refused_processing: {x}"));
    assert_eq!(rp["status"], "covered");
    assert_eq!(rp["age_columns"], serde_json::json!([]));
    let pcs = rows_of("patron_consent");
    let pc = pcs
        .iter()
        .find(|r| r["status"] == "covered_otherwise")
        .unwrap_or_else(|| panic!("no cascade row for patron_consent: {x}"));
    assert_eq!(pc["how"], "deleted with the patron (ON DELETE CASCADE)");
    let pcc = pcs
        .iter()
        .find(|r| r["class"] == "refused_processing")
        .unwrap_or_else(|| panic!("no class row for patron_consent: {x}"));
    assert_eq!(pcc["status"], "covered");
    assert_eq!(pcc["age_columns"], serde_json::json!(["refused_on"]));
    assert_eq!(pcc["missing_columns"], serde_json::json!([]));

    // The index advice for refused_processing names patron_consent.refused_on (the
    // column that exists), never borrowers.refused_on.
    let o = lethe(dir.path(), &["--config", c, "check"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(out.contains("patron_consent"), "{out}");
    assert!(!out.contains("borrowers.refused_on"), "{out}");
    assert!(!out.contains("borrowers (refused_on"), "{out}");

    let se = row("sessions");
    assert_eq!(se["status"], "not_covered");
    assert_eq!(se["columns"], serde_json::json!(["a_session"]));
    assert_eq!(se["age_columns"], serde_json::json!([]));

    let ti = row("tickets");
    assert_eq!(ti["status"], "absent");
    assert_eq!(ti["columns"], serde_json::json!([]));
    assert_eq!(
        ti["missing_columns"],
        serde_json::json!(["reporter_id", "title", "body"])
    );
    assert_eq!(ti["oldest"], serde_json::Value::Null);

    // Every row one of the documented statuses; the profile names columns as Koha
    // spells them.
    for r in tables {
        if r["status"] != "absent" {
            assert_eq!(r["missing_columns"], serde_json::json!([]), "{r}");
        }
        let s = r["status"].as_str().unwrap();
        assert!(
            [
                "covered",
                "covered_otherwise",
                "disabled",
                "off",
                "not_covered",
                "absent"
            ]
            .contains(&s),
            "{r}"
        );
    }

    // Text: an aligned table with the same facts.
    let o = lethe(dir.path(), &["--config", c, "inventory"]);
    assert_eq!(o.status.code(), Some(0));
    let text = stdout(&o);
    let lines: Vec<&str> = text.lines().collect();
    let header = lines
        .iter()
        .find(|l| l.starts_with("table "))
        .unwrap_or_else(|| panic!("{text}"));
    let at = |name: &str| header.find(name).unwrap();
    let line = |t: &str| {
        *lines
            .iter()
            .find(|l| l.starts_with(&format!("{t} ")))
            .unwrap_or_else(|| panic!("no line for {t}:\n{text}"))
    };
    let oi = line("old_issues");
    assert!(
        oi[at("covered by")..].starts_with("class circulation_history (anonymize)"),
        "{oi}"
    );
    assert_eq!(&oi[at("oldest")..at("oldest") + 10], "2025-01-02");
    assert!(oi[at("age indexed")..].starts_with("no "), "{oi}");
    assert!(
        line("tickets")[at("covered by")..].starts_with("absent"),
        "{text}"
    );
    assert!(
        line("sessions")[at("covered by")..].starts_with("not covered"),
        "{text}"
    );
    assert!(
        line("statistics")[at("age indexed")..].starts_with("yes (timeidx)"),
        "{text}"
    );
    assert!(
        text.lines()
            .last()
            .is_some_and(|l| l.contains("covered by a class") && l.contains("absent")),
        "{text}"
    );
}

/// The Evergreen profile's inventory names tables and columns as Evergreen spells them:
/// on the Evergreen fixture (tables from Evergreen's own SQL), each row is absent or
/// has every column it names; the profile's classes are covered or off.
#[tokio::test(flavor = "multi_thread")]
async fn inventory_of_the_evergreen_fixture() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/evergreen_pg.sql"
    );
    let ddl = std::fs::read_to_string(path).unwrap();
    let Some(db) = TestDb::postgres(&ddl).await else {
        return;
    };
    let cfg = crate::common::config_with_profile(&db.url, "evergreen", "");
    let pool = Db::connect(&cfg).await.unwrap();
    let inv = lethe::inventory::inventory(&cfg, &pool, Utc::now())
        .await
        .unwrap();
    pool.close().await;
    assert_eq!(inv.backend, "postgres");
    for r in &inv.tables {
        if r.status != "absent" {
            assert!(r.missing_columns.is_empty(), "{r:?}");
        }
    }
    let row = |t: &str| {
        inv.tables
            .iter()
            .find(|r| r.table == t)
            .unwrap_or_else(|| panic!("{t}"))
    };
    assert_eq!(row("action.circulation").status, "covered");
    assert_eq!(row("actor.usr_activity").status, "off");
    assert_eq!(row("actor.card").status, "covered_otherwise");
    assert_eq!(row("actor.usr_address").status, "covered_otherwise");
    assert_eq!(row("auditor.actor_usr_history").status, "covered_otherwise");
    // Not in the fixture.
    assert_eq!(row("actor.usr_message").status, "absent");
    // COALESCE(xact_finish, checkin_time): the fixture has no expression index on it.
    assert_eq!(row("action.circulation").indexed, Some(false));
    assert!(inv.text().contains("action.circulation"));
}
