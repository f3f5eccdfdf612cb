//! The Koha profile's `refused_processing` class (issue 4): a patron who refused
//! `GDPR_PROCESSING` in `patron_consent` more than the period ago is deleted with the
//! expired-patron rules, the age read from the linked consent row (`age.from`). On
//! SQLite (the demo's schema), MariaDB (the fixture, or Koha's own with
//! `LETHE_KOHA_DDL`) and PostgreSQL (the tables the class reads, below).
//!
//! The fixed now is 2026-06-15 12:00 UTC; `retain: 30 days` puts the cutoff at local
//! 2026-05-16 08:00 (New York). Every patron's card is valid until 2099, so only the
//! refusal can make one eligible.

use lethe::db::Db;
use lethe::engine;
use lethe::legal_hold;

use crate::common::*;
use crate::engine::{class, plan_at, run_at};

/// Each test on the three backends: the Koha fixture on SQLite and MariaDB, the
/// tables it needs on PostgreSQL.
macro_rules! three_backends {
    ($name:ident) => {
        three_backends_with!($name, pg = super::KOHA_PG);
    };
}

/// The Koha tables `refused_processing` and the test's seeding touch, in PostgreSQL
/// (written from ILS-FACTS §3–§5: the columns used, and the foreign keys' actions).
const KOHA_PG: &str = "
CREATE TABLE branches (branchcode VARCHAR(10) PRIMARY KEY, branchname TEXT NOT NULL);
CREATE TABLE categories (categorycode VARCHAR(10) PRIMARY KEY, description TEXT,
  category_type VARCHAR(1) NOT NULL DEFAULT 'A');
CREATE TABLE biblio (biblionumber INT PRIMARY KEY, title TEXT, frameworkcode VARCHAR(4),
  datecreated DATE);
CREATE TABLE items (itemnumber INT PRIMARY KEY, biblionumber INT NOT NULL REFERENCES biblio,
  biblioitemnumber INT, barcode VARCHAR(20), homebranch VARCHAR(10), holdingbranch VARCHAR(10));
CREATE TABLE borrowers (borrowernumber INT PRIMARY KEY, cardnumber VARCHAR(32),
  surname TEXT, firstname TEXT, branchcode VARCHAR(10) NOT NULL REFERENCES branches,
  categorycode VARCHAR(10) NOT NULL REFERENCES categories, dateexpiry DATE,
  privacy INT NOT NULL DEFAULT 1, flags BIGINT, protected SMALLINT NOT NULL DEFAULT 0);
CREATE TABLE systempreferences (variable VARCHAR(50) PRIMARY KEY, value TEXT, type VARCHAR(20));
CREATE TABLE borrower_relationships (id SERIAL PRIMARY KEY,
  guarantor_id INT REFERENCES borrowers ON DELETE CASCADE,
  guarantee_id INT NOT NULL REFERENCES borrowers ON DELETE CASCADE, relationship VARCHAR(100));
CREATE TABLE issues (issue_id INT PRIMARY KEY, borrowernumber INT NOT NULL REFERENCES borrowers,
  itemnumber INT, issuedate TIMESTAMP, date_due TIMESTAMP, branchcode VARCHAR(10));
CREATE TABLE reserves (reserve_id INT PRIMARY KEY,
  borrowernumber INT NOT NULL REFERENCES borrowers ON DELETE CASCADE,
  biblionumber INT, reservedate DATE, branchcode VARCHAR(10), priority INT);
CREATE TABLE accountlines (accountlines_id INT PRIMARY KEY,
  borrowernumber INT REFERENCES borrowers ON DELETE SET NULL, old_issue_id INT,
  amount NUMERIC(28,6), amountoutstanding NUMERIC(28,6), debit_type_code VARCHAR(64),
  interface VARCHAR(16), date TIMESTAMP, note TEXT);
CREATE TABLE borrower_modifications (verification_token VARCHAR(255) NOT NULL DEFAULT '',
  borrowernumber INT NOT NULL DEFAULT 0, surname TEXT, timestamp TIMESTAMP,
  PRIMARY KEY (verification_token, borrowernumber));
CREATE TABLE patron_consent (id SERIAL PRIMARY KEY,
  borrowernumber INT NOT NULL REFERENCES borrowers ON DELETE CASCADE ON UPDATE CASCADE,
  type TEXT, given_on TIMESTAMP, refused_on TIMESTAMP);
";

const ONLY_REFUSALS: &str = "classes:\n  refused_processing: {}\n  circulation_history: { enabled: false }\n  holds_history: { enabled: false }\n  expired_patrons: { enabled: false }\n";

async fn consent(db: &TestDb, bn: i64, kind: &str, given: Option<&str>, refused: Option<&str>) {
    db.insert(
        "patron_consent",
        &[
            ("borrowernumber", i(bn)),
            ("type", s(kind)),
            ("given_on", given.map(s).unwrap_or(V::Null)),
            ("refused_on", refused.map(s).unwrap_or(V::Null)),
        ],
    )
    .await;
}

const LONG_AGO: &str = "2026-01-10 10:00:00";

three_backends!(a_refusal_of_processing_deletes_the_patron_once_the_period_has_passed);
async fn a_refusal_of_processing_deletes_the_patron_once_the_period_has_passed(db: TestDb) {
    koha_reference(&db, None).await;
    for bn in 10..=18 {
        patron(&db, bn, 1, "2099-12-31", "PT").await;
    }
    // Refused long ago: deleted, the consent row with the patron (ON DELETE CASCADE).
    consent(&db, 10, "GDPR_PROCESSING", None, Some(LONG_AGO)).await;
    // Refused within the period: kept, not yet past it.
    consent(
        &db,
        11,
        "GDPR_PROCESSING",
        None,
        Some("2026-06-01 10:00:00"),
    )
    .await;
    // Refused, then consented again: Koha's OPAC form sets given_on and clears refused_on.
    consent(
        &db,
        12,
        "GDPR_PROCESSING",
        Some("2026-02-01 10:00:00"),
        None,
    )
    .await;
    // Both dates, written by other means: a consent is on record, so the patron stays.
    consent(
        &db,
        13,
        "GDPR_PROCESSING",
        Some("2026-02-01 10:00:00"),
        Some(LONG_AGO),
    )
    .await;
    // Refused long ago but owes money: kept, obligations.
    consent(&db, 14, "GDPR_PROCESSING", None, Some(LONG_AGO)).await;
    accountline(&db, 1, Some(14), None, 5.0).await;
    // Refused long ago, under a legal hold: kept, legal_hold.
    consent(&db, 15, "GDPR_PROCESSING", None, Some(LONG_AGO)).await;
    // No consent row at all (16), or a refusal of another kind of consent (17): not in
    // the class.
    consent(&db, 17, "NEWSLETTER", None, Some(LONG_AGO)).await;
    // Refused long ago, and a guarantor of 18: kept, protected.
    consent(
        &db,
        18,
        "GDPR_PROCESSING",
        None,
        Some("2025-12-01 10:00:00"),
    )
    .await;
    db.insert(
        "borrower_relationships",
        &[
            ("guarantor_id", i(18)),
            ("guarantee_id", i(16)),
            ("relationship", s("parent")),
        ],
    )
    .await;
    let cfg = db.config(ONLY_REFUSALS);
    let pool = Db::connect(&cfg).await.unwrap();
    pool.migrate().await.unwrap();
    legal_hold::place(&pool, 15, "NY-SUP-2026-00417", None, "clerk")
        .await
        .unwrap();

    let plan = plan_at(&cfg, now()).await;
    let c = class(&plan, "refused_processing");
    assert_eq!(c.table, "borrowers");
    assert_eq!(c.eligible, 1, "{c:?}");
    assert_eq!(
        (
            c.kept.opt_in,
            c.kept.legal_hold,
            c.kept.obligations,
            c.kept.protected
        ),
        (0, 1, 1, 1),
        "{c:?}"
    );
    // verify reads the oldest eligible age through the same subquery: patron 10's.
    let v = engine::compliance(&cfg, &pool, now()).await.unwrap();
    let vc = v
        .classes
        .iter()
        .find(|x| x.name == "refused_processing")
        .unwrap();
    assert_eq!(vc.overdue, 1, "{vc:?}");
    assert!(
        vc.oldest_overdue
            .as_deref()
            .is_some_and(|o| o.starts_with("2026-01-10")),
        "{vc:?}"
    );
    let p = engine::prepare(&cfg, &pool).await.unwrap();
    // A patron without a refusal is outside the class, not an undated row of it.
    let undated = engine::undated(&cfg, &pool, &p, now()).await.unwrap();
    assert!(
        undated.iter().all(|(name, _)| name != "refused_processing"),
        "{undated:?}"
    );

    let run = run_at(&cfg, now(), true).await;
    let c = class(&run, "refused_processing");
    assert_eq!((c.eligible, c.affected), (1, 1), "{c:?}");
    assert_eq!(db.count("borrowers WHERE borrowernumber = 10").await, 0);
    assert_eq!(
        db.count("patron_consent WHERE borrowernumber = 10").await,
        0
    );
    for bn in 11..=18 {
        assert_eq!(
            db.count(&format!("borrowers WHERE borrowernumber = {bn}"))
                .await,
            1,
            "patron {bn} kept"
        );
    }
    // A fixed point: nothing more.
    let again = run_at(&cfg, now(), true).await;
    assert_eq!(class(&again, "refused_processing").affected, 0);
    // Patron 11's refusal passes its period in July; once the hold is released, 15
    // goes too (the money owed and the guarantee still keep 14 and 18).
    let later = chrono::TimeZone::with_ymd_and_hms(&chrono::Utc, 2026, 7, 15, 12, 0, 0).unwrap();
    let holds = legal_hold::list(&pool, false).await.unwrap();
    legal_hold::release(&pool, holds[0].id, "clerk")
        .await
        .unwrap();
    let run = run_at(&cfg, later, true).await;
    assert_eq!(class(&run, "refused_processing").affected, 2);
    for (bn, left) in [
        (11, 0),
        (12, 1),
        (13, 1),
        (14, 1),
        (15, 0),
        (16, 1),
        (17, 1),
        (18, 1),
    ] {
        assert_eq!(
            db.count(&format!("borrowers WHERE borrowernumber = {bn}"))
                .await,
            left,
            "patron {bn}"
        );
    }
    pool.close().await;
}

#[test]
fn an_age_from_another_table_is_refused_where_the_code_cannot_follow_it() {
    let from = "age: { from: { table: patron_consent, column: borrowernumber, where: [ { column: type, eq: GDPR_PROCESSING } ] }, columns: [refused_on], type: datetime }";
    for (body, want) in [
        (
            format!("table: borrowers\n    key: borrowernumber\n    {from}\n    retain: 30 days\n    action: aggregate"),
            "not with action aggregate",
        ),
        (
            format!("table: borrowers\n    key: borrowernumber\n    {from}\n    retain: 30 days\n    action: pseudonymize\n    pseudonymize: {{ borrowernumber: pseudonym }}"),
            "not with action pseudonymize",
        ),
        (
            format!("table: borrowers\n    {from}\n    retain: 30 days\n    action: delete"),
            "needs the table's key",
        ),
        (
            "table: patron_consent\n    key: id\n    age: { from: { table: patron_consent, column: id }, columns: [refused_on], type: datetime }\n    retain: 30 days\n    action: delete".to_string(),
            "must be another table",
        ),
    ] {
        let yaml = format!(
            "database: {{ url: \"sqlite://x.db\" }}\nschedule: {{ cron: \"30 2 * * *\", timezone: UTC }}\nclasses:\n  c:\n    {body}\n"
        );
        let err = lethe::config::parse_str(&yaml, "t.yaml", std::path::Path::new("."), &|_| None)
            .expect_err(&yaml)
            .to_string();
        assert!(err.contains(want), "{want}: {err}");
    }
}
