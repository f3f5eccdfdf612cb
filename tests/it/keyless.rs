//! Tables without a primary key (Koha's `statistics` and `deletedborrowers`), batched by
//! row limit, and action pseudonymize, on SQLite, MariaDB and PostgreSQL.
//!
//! The table `tally` has no key, like Koha's statistics: a time, a branch, a patron id,
//! a note. The fixed now is 2026-06-15 12:00 UTC; with `retain: 30 days` the cutoff is
//! local 2026-05-16 08:00 (New York).

use lethe::config::Backend;

use crate::common::*;
use crate::engine::{class, plan_at, run_at};

/// Each test on the three backends, with the file's tally tables loaded.
macro_rules! three_backends {
    ($name:ident) => {
        three_backends_with!(
            $name,
            super::TALLY_SQLITE,
            super::TALLY_MYSQL,
            super::TALLY_PG
        );
    };
}

const TALLY_SQLITE: &str = "CREATE TABLE tally (happened DATETIME NULL, branch VARCHAR(10) NULL, patron INT NULL, note VARCHAR(40) NULL); CREATE INDEX tally_happened ON tally (happened)";
const TALLY_MYSQL: &str = "CREATE TABLE tally (happened DATETIME NULL, branch VARCHAR(10) NULL, patron INT NULL, note VARCHAR(40) NULL, KEY tally_happened (happened)) ENGINE=InnoDB";
const TALLY_PG: &str = "CREATE TABLE tally (happened TIMESTAMP NULL, branch VARCHAR(10) NULL, patron INT NULL, note VARCHAR(40) NULL); CREATE INDEX tally_happened ON tally (happened)";

/// The months seeded, and the first day of the month after the last.
const MONTHS: [&str; 7] = [
    "2026-01", "2026-02", "2026-03", "2026-04", "2026-05", "2026-06", "2026-07",
];

/// 6 months × 25 rows: patrons 2..=13 (several rows each, so distinct counts mean
/// something), one row in five without a patron, one row a month without a time. Rows
/// up to 2026-05-16 08:00 local are past the 30-day period.
async fn seed(db: &TestDb) -> Seeded {
    let mut s = Seeded::default();
    for (m, month) in MONTHS[..6].iter().enumerate() {
        for n in 0..25i64 {
            let day = 1 + (n % 28);
            let happened = format!("{month}-{day:02} {:02}:15:00", 8 + n % 10);
            let patron = if n % 5 == 4 {
                None
            } else {
                Some(2 + (n * 7 + m as i64) % 12)
            };
            let no_time = n == 24;
            let past = !no_time && happened.as_str() < "2026-05-16 08:00:00";
            if past && patron.is_some() {
                s.past_with_patron += 1;
            }
            db.insert(
                "tally",
                &[
                    ("happened", if no_time { V::Null } else { s_(&happened) }),
                    ("branch", s_("MAIN")),
                    ("patron", patron.map_or(V::Null, i)),
                    ("note", s_("CANARY-KEYLESS")),
                ],
            )
            .await;
            s.rows += 1;
        }
    }
    s
}

fn s_(x: &str) -> V {
    s(x)
}

#[derive(Default)]
struct Seeded {
    rows: i64,
    past_with_patron: u64,
}

fn tally_class(action: &str) -> String {
    format!(
        "classes:\n  tally:\n    table: tally\n    patron: patron\n    \
         age: {{ columns: [happened], type: datetime }}\n    retain: 30 days\n    {action}\n    \
         scope:\n      - {{ column: patron, not_null: true }}\n\
         safety:\n  batch_size: 7\n"
    )
}

/// Per month: rows, and distinct patrons among them.
async fn per_month(db: &TestDb) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    for w in MONTHS.windows(2) {
        let range = format!(
            "happened >= '{}-01 00:00:00' AND happened < '{}-01 00:00:00'",
            w[0], w[1]
        );
        let rows = db.count(&format!("tally WHERE {range}")).await;
        let patrons = db
            .int(&format!(
                "SELECT COUNT(DISTINCT patron) FROM tally WHERE {range}"
            ))
            .await
            .unwrap_or(0);
        out.push((rows, patrons));
    }
    out
}

three_backends!(a_table_without_a_key_is_anonymized_in_row_limited_batches);
/// Batches of 7 over a table with no key: every past row loses its patron, the rows and
/// the recent ones stay, the ledger counts what changed, and a second run is a no-op.
async fn a_table_without_a_key_is_anonymized_in_row_limited_batches(db: TestDb) {
    let seeded = seed(&db).await;
    let cfg = config_with_profile(
        &db.url,
        "none",
        &tally_class("action: anonymize\n    anonymize: { patron: set_null, note: set_null }"),
    );
    let p = plan_at(&cfg, now()).await;
    assert_eq!(class(&p, "tally").eligible, seeded.past_with_patron);
    let r = run_at(&cfg, now(), true).await;
    let c = class(&r, "tally");
    assert_eq!(c.affected, seeded.past_with_patron, "{c:?}");
    assert_eq!(db.count("tally").await, seeded.rows);
    assert_eq!(
        db.count("tally WHERE happened < '2026-05-16 08:00:00' AND patron IS NOT NULL")
            .await,
        0
    );
    assert_eq!(
        db.count("tally WHERE happened >= '2026-05-16 08:00:00' AND patron IS NOT NULL AND note = 'CANARY-KEYLESS'")
            .await,
        db.count("tally WHERE happened >= '2026-05-16 08:00:00' AND patron IS NOT NULL")
            .await
    );
    // More than one batch ran, each with its own ledger row count.
    assert!(
        seeded.past_with_patron > 7 * 3,
        "{}",
        seeded.past_with_patron
    );
    let again = run_at(&cfg, now(), true).await;
    assert_eq!(class(&again, "tally").affected, 0);
    assert_eq!(class(&plan_at(&cfg, now()).await, "tally").eligible, 0);
}

three_backends!(a_table_without_a_key_is_purged_in_row_limited_batches);
async fn a_table_without_a_key_is_purged_in_row_limited_batches(db: TestDb) {
    let seeded = seed(&db).await;
    let cfg = config_with_profile(&db.url, "none", &tally_class("action: delete"));
    let r = run_at(&cfg, now(), true).await;
    assert_eq!(class(&r, "tally").affected, seeded.past_with_patron);
    assert_eq!(
        db.count("tally").await,
        seeded.rows - seeded.past_with_patron as i64
    );
    assert_eq!(
        db.count("tally WHERE happened < '2026-05-16 08:00:00' AND patron IS NOT NULL")
            .await,
        0
    );
    // Rows with no time are never past their period.
    assert_eq!(db.count("tally WHERE happened IS NULL").await, 6);
    assert_eq!(class(&run_at(&cfg, now(), true).await, "tally").affected, 0);
}

three_backends!(pseudonymized_statistics_keep_their_monthly_counts);
/// Issue 4's "Done when": statistics pseudonymized give the same per-month counts
/// before and after; distinct borrowers per month survive too; no past row keeps a real
/// patron id; the same patron gets the same pseudonym in a later run; a second run is a
/// no-op.
async fn pseudonymized_statistics_keep_their_monthly_counts(db: TestDb) {
    let seeded = seed(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("pseudonym.key");
    std::fs::write(
        &key_file,
        "5f1d2c3b4a596877869504a3b2c1d0e9f8a7b6c5d4e3f2a1\n",
    )
    .unwrap();
    let extra = format!(
        "pseudonyms: {{ key_file: \"{}\" }}\n{}",
        key_file.display(),
        tally_class("action: pseudonymize\n    pseudonymize: { patron: pseudonym }")
    );
    let cfg = config_with_profile(&db.url, "none", &extra);
    let before = per_month(&db).await;
    let r = run_at(&cfg, now(), true).await;
    assert_eq!(class(&r, "tally").affected, seeded.past_with_patron);
    let after = per_month(&db).await;
    // Rows per month: all the same. Distinct borrowers: the same in every month wholly on
    // one side of the cutoff; May, which it splits, counts a patron with rows on both
    // sides twice (once by pseudonym, once by id) until the rest of May is past too.
    let rows = |v: &[(i64, i64)]| v.iter().map(|x| x.0).collect::<Vec<_>>();
    assert_eq!(rows(&after), rows(&before));
    for m in [0, 1, 2, 3, 5] {
        assert_eq!(
            after[m].1, before[m].1,
            "distinct borrowers in {}",
            MONTHS[m]
        );
    }
    assert_eq!(
        db.count("tally WHERE happened < '2026-05-16 08:00:00' AND patron >= 0")
            .await,
        0,
        "a past row kept a real patron id"
    );
    assert_eq!(
        db.count("tally WHERE happened >= '2026-05-16 08:00:00' AND patron < 0")
            .await,
        0,
        "a recent row was pseudonymized"
    );
    // Patron 5's pseudonym, then a new past row of patron 5: the next run gives it the
    // same pseudonym.
    let p5 = db
        .int("SELECT MIN(patron) FROM tally WHERE patron < 0 AND note = 'P5'")
        .await;
    assert_eq!(p5, None);
    db.insert(
        "tally",
        &[
            ("happened", s_("2026-02-02 10:00:00")),
            ("patron", i(5)),
            ("note", s_("P5")),
        ],
    )
    .await;
    let r = run_at(&cfg, now(), true).await;
    assert_eq!(class(&r, "tally").affected, 1);
    let new = db
        .int("SELECT MIN(patron) FROM tally WHERE note = 'P5'")
        .await
        .unwrap();
    assert!(new < 0, "{new}");
    let key =
        secrecy::SecretString::from("5f1d2c3b4a596877869504a3b2c1d0e9f8a7b6c5d4e3f2a1".to_string());
    assert_eq!(new, lethe::pseudonym::pseudonym(&key, 5));
    assert!(
        db.count(&format!("tally WHERE patron = {new} AND note <> 'P5'"))
            .await
            > 0,
        "patron 5's earlier rows carry another pseudonym"
    );
    assert_eq!(class(&run_at(&cfg, now(), true).await, "tally").affected, 0);
}

/// The key is read from the environment or a file and must be there and long enough;
/// it never shows in an error or in the policy the ledger stores.
#[test]
fn the_pseudonym_key_is_required_and_never_shown() {
    let yaml = |extra: &str| {
        format!(
            "database: {{ url: \"sqlite://x.db\" }}\nschedule: {{ cron: \"30 2 * * *\", timezone: UTC }}\n\
             report: {{ outbox: outbox }}\nprofile: none\n{extra}{}",
            tally_class("action: pseudonymize\n    pseudonymize: { patron: pseudonym }")
        )
    };
    let dir = std::env::temp_dir();
    let missing = lethe::config::parse_str(&yaml(""), "t.yaml", &dir, &|_| None).unwrap_err();
    assert!(
        missing
            .to_string()
            .contains("LETHE_PSEUDONYM_KEY is not set"),
        "{missing}"
    );
    let short = lethe::config::parse_str(&yaml(""), "t.yaml", &dir, &|n| {
        (n == "LETHE_PSEUDONYM_KEY").then(|| "tooshort".to_string())
    })
    .unwrap_err();
    assert!(short.to_string().contains("shorter than 32"), "{short}");
    assert!(!short.to_string().contains("tooshort"), "{short}");
    let secret = "SECRET-0123456789abcdef0123456789abcdef";
    let cfg = lethe::config::parse_str(
        &yaml("pseudonyms: { key_env: MY_KEY }\n"),
        "t.yaml",
        &dir,
        &|n| (n == "MY_KEY").then(|| secret.to_string()),
    )
    .unwrap();
    assert!(!lethe::engine::policy_json(&cfg).contains("SECRET-"));
    assert!(!format!("{cfg:?}").contains("SECRET-"));
    // Pseudonym only under action pseudonymize.
    let wrong = format!(
        "database: {{ url: \"sqlite://x.db\" }}\nschedule: {{ cron: \"30 2 * * *\", timezone: UTC }}\n\
         report: {{ outbox: outbox }}\nprofile: none\n{}",
        tally_class("action: anonymize\n    anonymize: { patron: pseudonym }")
    );
    let e = lethe::config::parse_str(&wrong, "t.yaml", &dir, &|_| Some(secret.to_string()))
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("pseudonym is only for action pseudonymize"),
        "{e}"
    );
}

both_backends!(a_keyless_class_on_a_table_with_a_key_is_refused);
/// A class without `key:` on a table that has a single-column primary key stops at
/// `check`: the key must be named, so batches walk it.
async fn a_keyless_class_on_a_table_with_a_key_is_refused(db: TestDb) {
    let extra = "classes:\n  circulation_history: { enabled: false }\n  holds_history: { enabled: false }\n  expired_patrons: { enabled: false }\n  searches:\n    table: search_history\n    age: { columns: [time], type: timestamptz }\n    retain: 30 days\n    action: delete\n";
    let cfg = db.config(extra);
    let d = lethe::db::Db::connect(&cfg).await.unwrap();
    let e = lethe::engine::prepare(&cfg, &d).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("has a primary key (id): name it as key:"),
        "{e}"
    );
    let _ = Backend::Sqlite;
}

three_backends!(check_counts_rows_no_period_reaches);
/// Rows whose age column is NULL are never selected by age; `check` reports how many
/// each class has (here: two of the class's rows have no time; rows out of its scope
/// are not counted).
async fn check_counts_rows_no_period_reaches(db: TestDb) {
    seed(&db).await;
    for _ in 0..2 {
        db.insert("tally", &[("happened", V::Null), ("patron", i(3))])
            .await;
    }
    let cfg = config_with_profile(&db.url, "none", &tally_class("action: delete"));
    let d = lethe::db::Db::connect(&cfg).await.unwrap();
    let p = lethe::engine::prepare(&cfg, &d).await.unwrap();
    let undated = lethe::engine::undated(&cfg, &d, &p, now()).await.unwrap();
    assert_eq!(undated, [("tally".to_string(), 2)]);
    d.close().await;
}

/// The aggregate test's table: a `kind` (issue, return) and a category besides
/// `tally`'s columns; with a key or without one (`statistics`-like).
async fn aggregate_table(db: &TestDb, keyed: bool) {
    let id = match (keyed, db.backend) {
        (false, _) => "",
        (true, Backend::Sqlite) => "id INTEGER PRIMARY KEY, ",
        (true, Backend::MySql) => "id INT AUTO_INCREMENT PRIMARY KEY, ",
        (true, Backend::Postgres) => "id BIGSERIAL PRIMARY KEY, ",
    };
    let ts = if db.backend == Backend::Postgres {
        "TIMESTAMP"
    } else {
        "DATETIME"
    };
    db.exec(&format!(
        "CREATE TABLE circ_stats ({id}happened {ts} NULL, branch VARCHAR(10) NULL, kind VARCHAR(16) NULL, \
         category VARCHAR(10) NULL, patron INT NULL)"
    ))
    .await;
    for m in 0..6i64 {
        for n in 0..30i64 {
            let month = MONTHS[m as usize];
            let happened = format!("{month}-{:02} {:02}:30:00", 1 + n % 28, 9 + n % 8);
            db.insert(
                "circ_stats",
                &[
                    ("happened", s_(&happened)),
                    ("branch", s_(if n % 3 == 0 { "EAST" } else { "MAIN" })),
                    ("kind", s_(if n % 4 == 0 { "return" } else { "issue" })),
                    ("category", if n % 7 == 0 { V::Null } else { s_("PT") }),
                    ("patron", i(100 + n % 9)),
                ],
            )
            .await;
        }
    }
}

/// Per month: checkouts (`kind = 'issue'`) still in the table plus those Lethe counted
/// into `lethe_aggregates`.
async fn checkouts_per_month(db: &TestDb, with_aggregates: bool) -> Vec<i64> {
    let mut out = Vec::new();
    for w in MONTHS.windows(2) {
        let rows = db
            .count(&format!(
                "circ_stats WHERE kind = 'issue' AND happened >= '{}-01 00:00:00' AND happened < '{}-01 00:00:00'",
                w[0], w[1]
            ))
            .await;
        let counted = if with_aggregates {
            db.int(&format!(
                "SELECT COALESCE(SUM(count), 0) FROM lethe_aggregates WHERE class = 'circ_stats' AND kind = 'issue' AND month = '{}'",
                w[0]
            ))
            .await
            .unwrap_or(0)
        } else {
            0
        };
        out.push(rows + counted);
    }
    out
}

async fn aggregated_statistics_keep_their_monthly_counts(db: TestDb, keyed: bool) {
    aggregate_table(&db, keyed).await;
    let key = if keyed { "    key: id\n" } else { "" };
    let extra = format!(
        "classes:\n  circ_stats:\n    table: circ_stats\n{key}    patron: patron\n    \
         age: {{ columns: [happened], type: datetime }}\n    retain: 30 days\n    action: aggregate\n    \
         aggregate: {{ by: {{ library: branch, patron_category: category, kind: kind }} }}\n\
         safety:\n  batch_size: 7\n"
    );
    let cfg = config_with_profile(&db.url, "none", &extra);
    let before = checkouts_per_month(&db, false).await;
    let total = db.count("circ_stats").await;
    let past = db
        .count("circ_stats WHERE happened < '2026-05-16 08:00:00'")
        .await;
    let r = run_at(&cfg, now(), true).await;
    let c = class(&r, "circ_stats");
    assert_eq!(c.affected, past as u64, "{c:?}");
    assert_eq!(
        db.count("circ_stats WHERE happened < '2026-05-16 08:00:00'")
            .await,
        0
    );
    // Issue 4's "Done when": the same per-month checkout counts before and after.
    assert_eq!(checkouts_per_month(&db, true).await, before);
    // Every deleted row is counted once: rows left + counted = rows before.
    let counted = db
        .int("SELECT COALESCE(SUM(count), 0) FROM lethe_aggregates")
        .await
        .unwrap_or(0);
    assert_eq!(db.count("circ_stats").await + counted, total);
    // By branch and category too; a NULL category is counted under ''.
    assert!(
        db.count("lethe_aggregates WHERE library = 'EAST' AND patron_category = ''")
            .await
            > 0
    );
    // A second run changes nothing and counts nothing twice.
    assert_eq!(
        class(&run_at(&cfg, now(), true).await, "circ_stats").affected,
        0
    );
    assert_eq!(
        db.int("SELECT COALESCE(SUM(count), 0) FROM lethe_aggregates")
            .await
            .unwrap_or(0),
        counted
    );
}

three_backends!(aggregated_statistics_without_a_key);
async fn aggregated_statistics_without_a_key(db: TestDb) {
    aggregated_statistics_keep_their_monthly_counts(db, false).await
}

three_backends!(aggregated_statistics_with_a_key);
async fn aggregated_statistics_with_a_key(db: TestDb) {
    aggregated_statistics_keep_their_monthly_counts(db, true).await
}

both_backends!(koha_statistics_can_be_aggregated_instead);
/// The Koha profile's `circulation_statistics` switched to aggregate in the file: the
/// profile's column strategy is dropped, Koha's keyless `statistics` rows are counted by
/// branch, item type, category and type, and deleted.
async fn koha_statistics_can_be_aggregated_instead(db: TestDb) {
    for (n, when, ty) in [
        (1, "2026-04-01 10:00:00", "issue"),
        (2, "2026-04-02 10:00:00", "issue"),
        (3, "2026-04-03 10:00:00", "return"),
        (4, "2026-06-10 10:00:00", "issue"),
    ] {
        db.insert(
            "statistics",
            &[
                ("datetime", s_(when)),
                ("branch", s_("MAIN")),
                ("type", s_(ty)),
                ("itemtype", s_("BK")),
                ("borrowernumber", i(40 + n)),
                ("categorycode", s_("PT")),
            ],
        )
        .await;
    }
    let extra = "classes:\n  circulation_history: { enabled: false }\n  holds_history: { enabled: false }\n  expired_patrons: { enabled: false }\n  circulation_statistics:\n    action: aggregate\n    aggregate: { by: { library: branch, item_type: itemtype, patron_category: categorycode, kind: type } }\n";
    let cfg = db.config(extra);
    let c = cfg
        .classes
        .iter()
        .find(|c| c.name == "circulation_statistics")
        .unwrap();
    assert!(c.anonymize.is_empty());
    let r = run_at(&cfg, now(), true).await;
    assert_eq!(class(&r, "circulation_statistics").affected, 3);
    assert_eq!(db.count("statistics").await, 1);
    assert_eq!(
        db.int("SELECT SUM(count) FROM lethe_aggregates WHERE month = '2026-04' AND kind = 'issue' AND library = 'MAIN' AND item_type = 'BK' AND patron_category = 'PT'")
            .await,
        Some(2),
        "{} groups, {} item types BK",
        db.count("lethe_aggregates").await,
        db.count("lethe_aggregates WHERE item_type = 'BK'").await
    );
}
