//! The Koha profile's rules, each side of each cutoff, on SQLite and on MariaDB.
//!
//! The fixed now is 2026-06-15 12:00 UTC = 08:00 in New York. Cutoffs:
//! circulation and holds history (30 days): local 2026-05-16 08:00:00 (date 2026-05-16);
//! expired patrons (2 years): local 2024-06-15 08:00:00 (date 2024-06-15).

use chrono::{DateTime, Utc};
use lethe::config::Config;
use lethe::db::Db;
use lethe::engine::{self, EngineError, RunOptions};
use lethe::summary::{ClassStatus, ClassSummary, RunStatus, RunSummary};
use tokio_util::sync::CancellationToken;

use crate::common::*;

#[macro_export]
macro_rules! both_backends {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread")]
            async fn sqlite() {
                super::$name($crate::common::TestDb::sqlite().await).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn mysql() {
                if let Some(db) = $crate::common::TestDb::mysql().await {
                    super::$name(db).await
                }
            }
        }
    };
}

pub async fn plan_at(cfg: &Config, at: DateTime<Utc>) -> RunSummary {
    let db = Db::connect(cfg).await.unwrap();
    let s = engine::plan(cfg, &db, at).await.unwrap();
    db.close().await;
    s
}

pub async fn run_at(cfg: &Config, at: DateTime<Utc>, allow_large: bool) -> RunSummary {
    let db = Db::connect(cfg).await.unwrap();
    let p = engine::prepare(cfg, &db).await.unwrap();
    db.migrate().await.unwrap();
    let opts = RunOptions::new(allow_large, at, CancellationToken::new());
    let s = engine::enforce_once(cfg, &db, &p, &opts).await.unwrap();
    db.close().await;
    s
}

pub fn class<'a>(s: &'a RunSummary, name: &str) -> &'a ClassSummary {
    s.classes.iter().find(|c| c.name == name).unwrap()
}

const ONLY_CIRC: &str =
    "classes:\n  holds_history: { enabled: false }\n  expired_patrons: { enabled: false }\n";
const ONLY_HOLDS: &str =
    "classes:\n  circulation_history: { enabled: false }\n  expired_patrons: { enabled: false }\n";
const ONLY_PATRONS: &str =
    "classes:\n  circulation_history: { enabled: false }\n  holds_history: { enabled: false }\n";

async fn borrower_of(db: &TestDb, table: &str, key: &str, id: i64) -> Option<i64> {
    db.int(&format!(
        "SELECT borrowernumber FROM {table} WHERE {key} = {id}"
    ))
    .await
}

both_backends!(circulation_history_rules);
async fn circulation_history_rules(db: TestDb) {
    koha_reference(&db, None).await;
    patron(&db, 10, 1, "2099-01-01", "PT").await; // default privacy
    patron(&db, 11, 0, "2099-01-01", "PT").await; // keep forever
    patron(&db, 12, 2, "2099-01-01", "PT").await; // never keep
    old_issue(&db, 101, Some(10), Some("2026-05-16 07:59:59")).await; // 1 s before cutoff: anonymized
    old_issue(&db, 102, Some(10), Some("2026-05-16 08:00:00")).await; // exactly at cutoff: kept
    old_issue(&db, 103, Some(11), Some("2020-01-01 10:00:00")).await; // opt-in: kept.opt_in
    old_issue(&db, 104, Some(12), Some("2026-06-14 10:00:00")).await; // privacy 2: at once
    old_issue(&db, 105, Some(10), Some("2021-01-01 10:00:00")).await; // money owed: kept
    accountline(&db, 1, Some(10), Some(105), 5.0).await;
    old_issue(&db, 106, Some(12), Some("2026-06-14 11:00:00")).await; // privacy 2, owed: kept
    accountline(&db, 2, Some(12), Some(106), 1.5).await;
    old_issue(&db, 107, Some(10), None).await; // not returned: never by age
    old_issue(&db, 108, None, Some("2019-01-01 10:00:00")).await; // already unlinked
    old_issue(&db, 109, Some(1), Some("2019-01-01 10:00:00")).await; // already anonymous
    old_issue(&db, 110, Some(10), Some("2022-03-01 10:00:00")).await; // paid fine: anonymized
    accountline(&db, 3, Some(10), Some(110), 0.0).await;
    old_issue(&db, 111, Some(10), Some("2023-03-01 10:00:00")).await; // credit on it: anonymized
    accountline(&db, 4, Some(10), Some(111), -2.0).await;

    let cfg = db.config(ONLY_CIRC);
    let p = plan_at(&cfg, now()).await;
    let c = class(&p, "circulation_history");
    assert_eq!(c.table, "old_issues");
    assert_eq!(c.cutoff.to_rfc3339(), "2026-05-16T08:00:00-04:00");
    assert_eq!((c.eligible, c.affected), (4, 0), "{c:?}");
    assert_eq!(
        (c.kept.opt_in, c.kept.obligations, c.kept.protected),
        (1, 2, 0),
        "{c:?}"
    );

    let r = run_at(&cfg, now(), false).await;
    assert_eq!(r.status, RunStatus::Ok);
    let c = class(&r, "circulation_history");
    assert_eq!((c.eligible, c.affected), (4, 4), "{c:?}");
    for id in [101, 104, 110, 111] {
        assert_eq!(
            borrower_of(&db, "old_issues", "issue_id", id).await,
            Some(1),
            "issue {id}"
        );
    }
    for (id, b) in [
        (102, Some(10)),
        (103, Some(11)),
        (105, Some(10)),
        (106, Some(12)),
        (107, Some(10)),
        (108, None),
    ] {
        assert_eq!(
            borrower_of(&db, "old_issues", "issue_id", id).await,
            b,
            "issue {id}"
        );
    }
    // Idempotent: a second run changes nothing, and plan shows 0 eligible.
    let r2 = run_at(&cfg, now(), false).await;
    assert_eq!(class(&r2, "circulation_history").affected, 0);
    assert_eq!(
        class(&plan_at(&cfg, now()).await, "circulation_history").eligible,
        0
    );
    // A second later, the row at the cutoff becomes eligible.
    let later = now() + chrono::Duration::seconds(1);
    assert_eq!(
        class(&plan_at(&cfg, later).await, "circulation_history").eligible,
        1
    );
}

async fn renewal(db: &TestDb, id: i64, checkout: i64, renewer: i64, interface: &str) {
    db.insert(
        "checkout_renewals",
        &[
            ("renewal_id", i(id)),
            ("checkout_id", i(checkout)),
            ("renewer_id", i(renewer)),
            ("interface", s(interface)),
            ("timestamp", s("2020-01-01 10:00:00")),
        ],
    )
    .await;
}

async fn renewer_of(db: &TestDb, id: i64) -> Option<i64> {
    db.int(&format!(
        "SELECT renewer_id FROM checkout_renewals WHERE renewal_id = {id}"
    ))
    .await
}

// Koha::Old::Checkouts->anonymize gives the AnonymousPatron to the renewals the patron
// made of each checkout it anonymizes (ILS-FACTS 2.2): checkout_renewals.checkout_id
// still points at the loan, so a renewer_id left alone names its reader.
both_backends!(renewals_the_patron_made_are_anonymized_with_the_checkout);
async fn renewals_the_patron_made_are_anonymized_with_the_checkout(db: TestDb) {
    koha_reference(&db, None).await;
    patron(&db, 10, 1, "2099-01-01", "PT").await; // default privacy
    patron(&db, 11, 0, "2099-01-01", "PT").await; // keep forever
    patron(&db, 12, 1, "2099-01-01", "PT").await;
    patron(&db, 20, 1, "2099-01-01", "ST").await; // staff
    old_issue(&db, 101, Some(10), Some("2020-01-01 10:00:00")).await; // anonymized
    old_issue(&db, 102, Some(10), Some("2026-06-01 10:00:00")).await; // in its period
    old_issue(&db, 103, Some(11), Some("2020-01-01 10:00:00")).await; // opt-in: kept
    old_issue(&db, 104, Some(12), Some("2020-01-01 10:00:00")).await; // anonymized
    old_issue(&db, 105, Some(10), Some("2020-01-01 10:00:00")).await; // money owed: kept
    accountline(&db, 1, Some(10), Some(105), 5.0).await;
    renewal(&db, 1, 101, 10, "opac").await; // the patron's own: anonymized
    renewal(&db, 2, 101, 20, "intranet").await; // staff: kept
    renewal(&db, 3, 101, 10, "opac").await; // a second one of the patron's: anonymized
    renewal(&db, 4, 102, 10, "opac").await; // its checkout is kept: kept
    renewal(&db, 5, 103, 11, "opac").await; // opt-in: kept
    renewal(&db, 6, 104, 10, "intranet").await; // patron 10 renewed patron 12's loan: kept
    renewal(&db, 7, 104, 12, "opac").await; // anonymized
    renewal(&db, 8, 105, 10, "opac").await; // money owed on the checkout: kept
    renewal(&db, 9, 999, 10, "opac").await; // a checkout that is not in old_issues: kept

    let cfg = db.config(ONLY_CIRC);
    let r = run_at(&cfg, now(), false).await;
    assert_eq!(r.status, RunStatus::Ok);
    let c = class(&r, "circulation_history");
    // The ledger counts the class's own rows: the renewals are not among them.
    assert_eq!((c.eligible, c.affected), (2, 2), "{c:?}");
    for (id, renewer) in [
        (1, Some(1)),
        (2, Some(20)),
        (3, Some(1)),
        (4, Some(10)),
        (5, Some(11)),
        (6, Some(10)),
        (7, Some(1)),
        (8, Some(10)),
        (9, Some(10)),
    ] {
        assert_eq!(renewer_of(&db, id).await, renewer, "renewal {id}");
    }
    for (id, b) in [(101, 1), (102, 10), (103, 11), (104, 1), (105, 10)] {
        assert_eq!(
            borrower_of(&db, "old_issues", "issue_id", id).await,
            Some(b),
            "issue {id}"
        );
    }
    // With the AnonymousPatron preference empty, the checkout's patron and the renewals'
    // renewer both become NULL. Patron 1 is no longer the anonymous patron, so the
    // loans given to it (101, 104) are anonymized again, and the renewals given to it
    // with them; the fine on 105 is paid, so 105 goes too.
    db.exec("UPDATE accountlines SET amountoutstanding = 0 WHERE accountlines_id = 1")
        .await;
    db.exec("UPDATE systempreferences SET value = '' WHERE variable = 'AnonymousPatron'")
        .await;
    let r = run_at(&cfg, now(), false).await;
    assert_eq!(class(&r, "circulation_history").affected, 3);
    for id in [101, 104, 105] {
        assert_eq!(borrower_of(&db, "old_issues", "issue_id", id).await, None);
    }
    for (id, renewer) in [
        (1, None),
        (2, Some(20)),
        (3, None),
        (4, Some(10)),
        (5, Some(11)),
        (6, Some(10)),
        (7, None),
        (8, None),
        (9, Some(10)),
    ] {
        assert_eq!(renewer_of(&db, id).await, renewer, "renewal {id}");
    }
}

both_backends!(revoking_opt_in_purges_at_next_run);
async fn revoking_opt_in_purges_at_next_run(db: TestDb) {
    koha_reference(&db, None).await;
    patron(&db, 11, 0, "2099-01-01", "PT").await;
    old_issue(&db, 201, Some(11), Some("2020-01-01 10:00:00")).await;
    let cfg = db.config(ONLY_CIRC);
    assert_eq!(
        class(&run_at(&cfg, now(), false).await, "circulation_history").affected,
        0
    );
    assert_eq!(
        borrower_of(&db, "old_issues", "issue_id", 201).await,
        Some(11)
    );
    db.exec("UPDATE borrowers SET privacy = 1 WHERE borrowernumber = 11")
        .await;
    assert_eq!(
        class(&run_at(&cfg, now(), false).await, "circulation_history").affected,
        1
    );
    assert_eq!(
        borrower_of(&db, "old_issues", "issue_id", 201).await,
        Some(1)
    );
}

both_backends!(empty_anonymous_patron_sets_null);
async fn empty_anonymous_patron_sets_null(db: TestDb) {
    koha_reference(&db, Some("")).await;
    patron(&db, 10, 1, "2099-01-01", "PT").await;
    old_issue(&db, 301, Some(10), Some("2020-01-01 10:00:00")).await;
    // Patron 1 exists but is not the anonymous patron now: its rows are anonymized too.
    old_issue(&db, 302, Some(1), Some("2020-01-01 10:00:00")).await;
    let cfg = db.config(ONLY_CIRC);
    let r = run_at(&cfg, now(), false).await;
    assert_eq!(class(&r, "circulation_history").affected, 2);
    assert_eq!(borrower_of(&db, "old_issues", "issue_id", 301).await, None);
    assert_eq!(
        class(&run_at(&cfg, now(), false).await, "circulation_history").affected,
        0
    );
}

both_backends!(missing_anonymous_patron_stops_before_touching);
async fn missing_anonymous_patron_stops_before_touching(db: TestDb) {
    koha_reference(&db, Some("99999")).await;
    patron(&db, 10, 1, "2099-01-01", "PT").await;
    old_issue(&db, 401, Some(10), Some("2020-01-01 10:00:00")).await;
    let cfg = db.config("");
    let ldb = Db::connect(&cfg).await.unwrap();
    let err = engine::prepare(&cfg, &ldb).await.unwrap_err();
    assert!(matches!(err, EngineError::Mismatch(_)), "{err}");
    assert!(err.to_string().contains("99999"), "{err}");
    db.exec("UPDATE systempreferences SET value = 'abc' WHERE variable = 'AnonymousPatron'")
        .await;
    assert!(matches!(
        engine::prepare(&cfg, &ldb).await,
        Err(EngineError::Mismatch(_))
    ));
    ldb.close().await;
    assert_eq!(
        borrower_of(&db, "old_issues", "issue_id", 401).await,
        Some(10)
    );
}

async fn hold(
    db: &TestDb,
    id: i64,
    borrower: i64,
    reserved: &str,
    waiting: Option<&str>,
    cancelled: Option<&str>,
) {
    db.insert(
        "old_reserves",
        &[
            ("reserve_id", i(id)),
            ("borrowernumber", i(borrower)),
            ("biblionumber", i(1)),
            ("branchcode", s("MAIN")),
            ("reservedate", s(reserved)),
            ("waitingdate", waiting.map(s).unwrap_or(V::Null)),
            ("cancellationdate", cancelled.map(s).unwrap_or(V::Null)),
            ("priority", i(0)),
        ],
    )
    .await;
}

both_backends!(holds_history_rules);
async fn holds_history_rules(db: TestDb) {
    koha_reference(&db, None).await;
    patron(&db, 10, 1, "2099-01-01", "PT").await;
    patron(&db, 11, 0, "2099-01-01", "PT").await;
    patron(&db, 12, 2, "2099-01-01", "PT").await;
    hold(&db, 501, 10, "2026-01-01", None, Some("2026-05-16")).await; // cancelled on cutoff day: kept
    hold(&db, 502, 10, "2026-01-01", None, Some("2026-05-15")).await; // day before: anonymized
    hold(&db, 503, 10, "2026-01-01", Some("2026-05-10"), None).await; // filled before: anonymized
    hold(&db, 504, 10, "2026-05-20", None, None).await; // placed recently: kept
    hold(&db, 505, 10, "2026-01-01", Some("2026-05-20"), None).await; // waiting recently: kept
    hold(&db, 506, 11, "2020-01-01", None, Some("2020-01-02")).await; // opt-in
    hold(&db, 507, 12, "2026-06-01", None, None).await; // privacy 2: at once
    let cfg = db.config(ONLY_HOLDS);
    let p = plan_at(&cfg, now()).await;
    let c = class(&p, "holds_history");
    assert_eq!((c.eligible, c.kept.opt_in), (3, 1), "{c:?}");
    let r = run_at(&cfg, now(), false).await;
    assert_eq!(class(&r, "holds_history").affected, 3);
    for (id, b) in [
        (501, 10),
        (502, 1),
        (503, 1),
        (504, 10),
        (505, 10),
        (506, 11),
        (507, 1),
    ] {
        assert_eq!(
            borrower_of(&db, "old_reserves", "reserve_id", id).await,
            Some(b),
            "hold {id}"
        );
    }
    assert_eq!(
        class(&run_at(&cfg, now(), false).await, "holds_history").affected,
        0
    );
}

async fn exists(db: &TestDb, n: i64) -> bool {
    db.count(&format!("borrowers WHERE borrowernumber = {n}"))
        .await
        == 1
}

both_backends!(expired_patrons_rules);
async fn expired_patrons_rules(db: TestDb) {
    koha_reference(&db, None).await;
    // The anonymous patron, expired long ago: protected.
    db.exec("UPDATE borrowers SET dateexpiry = '2010-01-01' WHERE borrowernumber = 1")
        .await;
    patron(&db, 20, 1, "2024-06-14", "PT").await; // day before cutoff: deleted
    patron(&db, 21, 1, "2024-06-15", "PT").await; // on cutoff day: kept, not counted
    patron(&db, 22, 1, "2018-01-01", "PT").await; // current checkout
    db.insert(
        "issues",
        &[
            ("issue_id", i(900)),
            ("borrowernumber", i(22)),
            ("itemnumber", i(2)),
            ("issuedate", s("2018-01-01 10:00:00")),
            ("date_due", s("2018-02-01 10:00:00")),
            ("branchcode", s("MAIN")),
        ],
    )
    .await;
    patron(&db, 23, 1, "2018-01-01", "PT").await; // pending hold
    db.insert(
        "reserves",
        &[
            ("reserve_id", i(950)),
            ("borrowernumber", i(23)),
            ("biblionumber", i(1)),
            ("branchcode", s("MAIN")),
            ("reservedate", s("2018-01-01")),
            ("priority", i(1)),
        ],
    )
    .await;
    patron(&db, 24, 1, "2018-01-01", "PT").await; // credit owed to the patron
    accountline(&db, 10, Some(24), None, -3.0).await;
    patron(&db, 25, 1, "2018-01-01", "PT").await; // settled account: deleted
    accountline(&db, 11, Some(25), None, 0.0).await;
    patron(&db, 26, 1, "2018-01-01", "PT").await; // staff permissions
    db.exec("UPDATE borrowers SET flags = 1 WHERE borrowernumber = 26")
        .await;
    patron(&db, 27, 1, "2018-01-01", "ST").await; // staff category
    patron(&db, 28, 1, "2018-01-01", "PT").await; // protected flag
    db.exec("UPDATE borrowers SET protected = 1 WHERE borrowernumber = 28")
        .await;
    patron(&db, 29, 1, "2018-01-01", "PT").await; // guarantor of a current patron
    patron(&db, 30, 1, "2099-01-01", "CH").await;
    db.insert(
        "borrower_relationships",
        &[
            ("id", i(1)),
            ("guarantor_id", i(29)),
            ("guarantee_id", i(30)),
            ("relationship", s("parent")),
        ],
    )
    .await;
    patron(&db, 31, 1, "2018-01-01", "PT").await; // guarantor of an expired child: deleted in round 2
    patron(&db, 32, 1, "2018-01-01", "CH").await;
    db.insert(
        "borrower_relationships",
        &[
            ("id", i(2)),
            ("guarantor_id", i(31)),
            ("guarantee_id", i(32)),
            ("relationship", s("parent")),
        ],
    )
    .await;
    patron(&db, 33, 1, "2018-01-01", "PT").await; // flags NULL counts as no permission
    db.exec("UPDATE borrowers SET flags = NULL WHERE borrowernumber = 33")
        .await;
    // History of a deleted patron stays, unlinked by Koha's foreign key.
    old_issue(&db, 601, Some(20), Some("2024-01-01 10:00:00")).await;
    // borrower_modifications: one of patron 20 (deleted with it), one pending
    // self-registration (borrowernumber 0) and one of a kept patron.
    for (tok, b) in [("tok20", 20), ("tok0", 0), ("tok22", 22)] {
        db.insert(
            "borrower_modifications",
            &[
                ("verification_token", s(tok)),
                ("borrowernumber", i(b)),
                ("surname", s("X")),
            ],
        )
        .await;
    }

    let cfg = db.config(ONLY_PATRONS);
    let p = plan_at(&cfg, now()).await;
    let c = class(&p, "expired_patrons");
    assert_eq!(c.cutoff.to_rfc3339(), "2024-06-15T08:00:00-04:00");
    // Eligible now: 20, 25, 32, 33 (31 is protected until its child is gone).
    assert_eq!(c.eligible, 4, "{c:?}");
    assert_eq!(c.kept.obligations, 3, "{c:?}"); // 22, 23, 24
    assert_eq!(c.kept.protected, 6, "{c:?}"); // 1, 26, 27, 28, 29, 31

    let r = run_at(&cfg, now(), false).await;
    let c = class(&r, "expired_patrons");
    assert_eq!(c.status, ClassStatus::Ok);
    assert_eq!(c.affected, 5, "{c:?}"); // and 31 in the second round
    assert_eq!(c.eligible, 5, "{c:?}");
    assert_eq!(c.kept.protected, 5, "{c:?}");
    for n in [20, 25, 31, 32, 33] {
        assert!(!exists(&db, n).await, "patron {n} should be deleted");
    }
    for n in [1, 21, 22, 23, 24, 26, 27, 28, 29, 30] {
        assert!(exists(&db, n).await, "patron {n} should be kept");
    }
    assert_eq!(borrower_of(&db, "old_issues", "issue_id", 601).await, None);
    assert_eq!(
        db.count("accountlines WHERE accountlines_id = 11 AND borrowernumber IS NULL")
            .await,
        1
    );
    assert_eq!(
        db.count("borrower_modifications WHERE verification_token = 'tok20'")
            .await,
        0
    );
    assert_eq!(
        db.count("borrower_modifications WHERE verification_token IN ('tok0', 'tok22')")
            .await,
        2
    );
    assert_eq!(db.count("borrower_relationships").await, 1);
    // Fixed point.
    assert_eq!(
        class(&plan_at(&cfg, now()).await, "expired_patrons").eligible,
        0
    );
    assert_eq!(
        class(&run_at(&cfg, now(), false).await, "expired_patrons").affected,
        0
    );
}

both_backends!(dry_run_changes_nothing);
async fn dry_run_changes_nothing(db: TestDb) {
    koha_reference(&db, None).await;
    patron(&db, 10, 1, "2010-01-01", "PT").await;
    old_issue(&db, 701, Some(10), Some("2020-01-01 10:00:00")).await;
    let cfg = db.config("");
    let mut cfg = cfg;
    cfg.safety.mode = lethe::summary::Mode::DryRun;
    let r = run_at(&cfg, now(), false).await;
    assert_eq!(r.mode, lethe::summary::Mode::DryRun);
    assert!(r.run_id.is_some());
    assert_eq!(class(&r, "circulation_history").eligible, 1);
    assert_eq!(r.total_affected(), 0);
    assert_eq!(
        borrower_of(&db, "old_issues", "issue_id", 701).await,
        Some(10)
    );
    assert!(exists(&db, 10).await);
    assert_eq!(
        db.count("lethe_runs WHERE mode = 'dry-run' AND status = 'ok'")
            .await,
        1
    );
}

both_backends!(circuit_breaker_trips_and_changes_nothing);
async fn circuit_breaker_trips_and_changes_nothing(db: TestDb) {
    koha_reference(&db, None).await;
    patron(&db, 10, 1, "2099-01-01", "PT").await;
    for n in 0..10 {
        old_issue(
            &db,
            800 + n,
            Some(10),
            Some(if n < 6 {
                "2020-01-01 10:00:00"
            } else {
                "2026-06-10 10:00:00"
            }),
        )
        .await;
    }
    let mut cfg = db.config(ONLY_CIRC);
    cfg.safety.max_fraction = 0.5;
    let r = run_at(&cfg, now(), false).await;
    let c = class(&r, "circulation_history");
    assert_eq!(r.status, RunStatus::Tripped);
    assert_eq!(
        (c.status, c.affected, c.eligible),
        (ClassStatus::Tripped, 0, 6)
    );
    assert!(c.error.as_deref().unwrap_or("").contains("--allow-large"));
    assert_eq!(db.count("old_issues WHERE borrowernumber = 10").await, 10);
    let r = run_at(&cfg, now(), true).await;
    assert_eq!(class(&r, "circulation_history").affected, 6);
}

both_backends!(ledger_counts_equal_rows_changed);
async fn ledger_counts_equal_rows_changed(db: TestDb) {
    koha_reference(&db, None).await;
    patron(&db, 10, 1, "2099-01-01", "PT").await;
    for n in 0..57 {
        old_issue(&db, 1000 + n * 3, Some(10), Some("2020-01-01 10:00:00")).await;
    }
    let mut cfg = db.config(ONLY_CIRC);
    // Fixed at 10 keys: adaptation would otherwise grow fast batches toward batch_max.
    cfg.safety.batch_size = 10;
    cfg.safety.batch_min = Some(10);
    cfg.safety.batch_max = Some(10);
    let r = run_at(&cfg, now(), true).await;
    assert_eq!(class(&r, "circulation_history").affected, 57);
    let id = r.run_id.unwrap();
    assert_eq!(
        db.int(&format!("SELECT affected FROM lethe_run_classes WHERE run_id = {id} AND class = 'circulation_history'")).await,
        Some(57)
    );
    // Keys 1000, 1003, …, 1168 in key ranges of 10 from 1000: 17 batches with rows.
    assert_eq!(db.int(&format!("SELECT batches FROM lethe_run_classes WHERE run_id = {id} AND class = 'circulation_history'")).await, Some(17));
    assert_eq!(db.count("old_issues WHERE borrowernumber = 1").await, 57);
    let r2 = run_at(&cfg, now(), true).await;
    // The chain: every closed run carries a hash, each after the first links to its predecessor.
    assert_eq!(db.count("lethe_runs WHERE hash IS NULL").await, 0);
    let prev = db.int(&format!("SELECT COUNT(*) FROM lethe_runs a JOIN lethe_runs b ON b.prev_hash = a.hash WHERE b.id = {}", r2.run_id.unwrap())).await;
    assert_eq!(prev, Some(1));
}

both_backends!(class_declared_in_yaml_on_a_non_koha_table);
async fn class_declared_in_yaml_on_a_non_koha_table(db: TestDb) {
    koha_reference(&db, None).await;
    let ddl = match db.backend {
        lethe::config::Backend::MySql => {
            "CREATE TABLE web_sessions (id INT NOT NULL PRIMARY KEY, member_id INT NULL, last_seen DATETIME NULL, keep_flag TINYINT NOT NULL DEFAULT 0, ip VARCHAR(40) NULL) ENGINE=InnoDB"
        }
        _ => {
            "CREATE TABLE web_sessions (id INTEGER PRIMARY KEY, member_id INTEGER NULL, last_seen DATETIME NULL, keep_flag INTEGER NOT NULL DEFAULT 0, ip TEXT NULL)"
        }
    };
    db.exec(ddl).await;
    for (id, seen, keep) in [
        (1, "2026-01-01 00:00:00", 0),
        (2, "2026-06-14 00:00:00", 0),
        (3, "2025-01-01 00:00:00", 1),
        (4, "2026-01-01 00:00:00", 0),
    ] {
        db.insert(
            "web_sessions",
            &[
                ("id", i(id)),
                ("member_id", i(10 + id)),
                ("last_seen", s(seen)),
                ("keep_flag", i(keep)),
                ("ip", s("10.0.0.1")),
            ],
        )
        .await;
    }
    let extra = "classes:\n  circulation_history: { enabled: false }\n  holds_history: { enabled: false }\n  expired_patrons: { enabled: false }\n  web_sessions:\n    table: web_sessions\n    key: id\n    age: { columns: [last_seen], type: datetime }\n    retain: 90 days\n    action: anonymize\n    anonymize: { member_id: set_null, ip: { set_value: \"0.0.0.0\" } }\n    exempt:\n      - { reason: legal_hold, column: keep_flag, eq: 1 }\n";
    let cfg = db.config(extra);
    let p = plan_at(&cfg, now()).await;
    let c = class(&p, "web_sessions");
    assert_eq!((c.eligible, c.kept.legal_hold), (2, 1), "{c:?}");
    let r = run_at(&cfg, now(), true).await;
    assert_eq!(class(&r, "web_sessions").affected, 2);
    assert_eq!(
        db.count("web_sessions WHERE member_id IS NULL AND ip = '0.0.0.0'")
            .await,
        2
    );
    assert_eq!(
        db.count("web_sessions WHERE id IN (2, 3) AND member_id IS NOT NULL")
            .await,
        2
    );
    assert_eq!(
        class(&run_at(&cfg, now(), true).await, "web_sessions").affected,
        0
    );
    // The same class with delete.
    let extra_del = extra.replace(
        "action: anonymize\n    anonymize: { member_id: set_null, ip: { set_value: \"0.0.0.0\" } }",
        "action: delete",
    );
    let cfg = db.config(&extra_del);
    let r = run_at(&cfg, now(), true).await;
    assert_eq!(class(&r, "web_sessions").affected, 2);
    assert_eq!(db.count("web_sessions").await, 2);
}

both_backends!(an_exemption_matching_the_key_through_a_text_column_keeps_its_row);
/// An exemption that matches the class's key through a column of another type (a
/// schema mapped in YAML that keeps the session id as text) still protects its row
/// inside a batch. Regression: batches bounded such subqueries by the batch's integer
/// key range; SQLite compares a TEXT-affinity column with an integer bound as text
/// ('1000' >= '999' is false), while the equality with the key compares numerically,
/// so the bounds hid the fee still owed and its session was deleted.
async fn an_exemption_matching_the_key_through_a_text_column_keeps_its_row(db: TestDb) {
    koha_reference(&db, None).await;
    let ddl = match db.backend {
        lethe::config::Backend::MySql => [
            "CREATE TABLE web_sessions (id INT NOT NULL PRIMARY KEY, member_id INT NULL, last_seen DATETIME NULL) ENGINE=InnoDB",
            "CREATE TABLE session_fees (session_ref VARCHAR(20) NOT NULL, owed INT NOT NULL) ENGINE=InnoDB",
        ],
        _ => [
            "CREATE TABLE web_sessions (id INTEGER PRIMARY KEY, member_id INTEGER NULL, last_seen DATETIME NULL)",
            "CREATE TABLE session_fees (session_ref TEXT NOT NULL, owed INTEGER NOT NULL)",
        ],
    };
    for sql in ddl {
        db.exec(sql).await;
    }
    // Ids on both sides of a change in digit count, all in one batch: 995..1005.
    for id in 995..1005 {
        db.insert(
            "web_sessions",
            &[
                ("id", i(id)),
                ("member_id", i(10)),
                ("last_seen", s("2026-01-01 00:00:00")),
            ],
        )
        .await;
    }
    for (session, owed) in [("1000", 5), ("1003", 0)] {
        db.insert(
            "session_fees",
            &[("session_ref", s(session)), ("owed", i(owed))],
        )
        .await;
    }
    let extra = "classes:\n  circulation_history: { enabled: false }\n  holds_history: { enabled: false }\n  \
                 expired_patrons: { enabled: false }\n  web_sessions:\n    table: web_sessions\n    key: id\n    \
                 patron: member_id\n    age: { columns: [last_seen], type: datetime }\n    retain: 90 days\n    \
                 action: delete\n    exempt:\n      - reason: obligations\n        \
                 exists: { table: session_fees, column: session_ref, matches: id, where: [ { column: owed, gt: 0 } ] }\n";
    let cfg = db.config(extra);
    let p = plan_at(&cfg, now()).await;
    let c = class(&p, "web_sessions");
    assert_eq!((c.eligible, c.kept.obligations), (9, 1), "{c:?}");
    let r = run_at(&cfg, now(), true).await;
    assert_eq!(class(&r, "web_sessions").affected, 9);
    assert_eq!(db.count("web_sessions").await, 1);
    assert_eq!(db.count("web_sessions WHERE id = 1000").await, 1);
}

both_backends!(unknown_column_stops_before_touching);
async fn unknown_column_stops_before_touching(db: TestDb) {
    koha_reference(&db, None).await;
    patron(&db, 10, 1, "2099-01-01", "PT").await;
    old_issue(&db, 1, Some(10), Some("2020-01-01 10:00:00")).await;
    let cfg = db.config(
        "classes:\n  circulation_history:\n    age: { columns: [returned_on], type: datetime }\n",
    );
    let ldb = Db::connect(&cfg).await.unwrap();
    let err = engine::prepare(&cfg, &ldb).await.unwrap_err();
    ldb.close().await;
    assert!(matches!(err, EngineError::Mismatch(_)));
    assert!(err.to_string().contains("old_issues.returned_on"), "{err}");
    assert_eq!(
        borrower_of(&db, "old_issues", "issue_id", 1).await,
        Some(10)
    );
}

both_backends!(a_missed_run_is_reported_by_the_next_run_and_by_verify);
async fn a_missed_run_is_reported_by_the_next_run_and_by_verify(db: TestDb) {
    koha_reference(&db, None).await;
    let cfg = db.config("");
    let first = run_at(&cfg, now(), true).await;
    assert!(first.notices.is_empty(), "no earlier run: nothing missed");
    // The schedule runs daily: a run a day later is on time.
    let on_time = run_at(&cfg, now() + chrono::Duration::hours(25), true).await;
    assert!(on_time.notices.is_empty(), "{:?}", on_time.notices);
    // Three days without a run: more than twice the interval.
    let late = now() + chrono::Duration::hours(25 + 72);
    let ldb = Db::connect(&cfg).await.unwrap();
    let c = engine::compliance(&cfg, &ldb, late).await.unwrap();
    ldb.close().await;
    let m = c.missed_run.expect("verify reports the missed runs");
    assert!(m.contains("72 hours old") && m.contains("48 hours"), "{m}");
    let r = run_at(&cfg, late, true).await;
    assert_eq!(r.notices.len(), 1, "{:?}", r.notices);
    // report.overdue_after overrides the default.
    let cfg = db.config("report:\n  overdue_after: 5 days\n");
    let ldb = Db::connect(&cfg).await.unwrap();
    let c = engine::compliance(&cfg, &ldb, late + chrono::Duration::hours(72))
        .await
        .unwrap();
    ldb.close().await;
    assert!(c.missed_run.is_none());
}

both_backends!(a_local_exemption_keeps_the_profiles_protections);
async fn a_local_exemption_keeps_the_profiles_protections(db: TestDb) {
    koha_reference(&db, None).await;
    patron(&db, 26, 1, "2018-01-01", "PT").await; // staff permissions
    db.exec("UPDATE borrowers SET flags = 1 WHERE borrowernumber = 26")
        .await;
    patron(&db, 28, 1, "2018-01-01", "PT").await; // protected flag
    db.exec("UPDATE borrowers SET protected = 1 WHERE borrowernumber = 28")
        .await;
    patron(&db, 24, 1, "2018-01-01", "PT").await; // owes money
    accountline(&db, 10, Some(24), None, 3.0).await;
    patron(&db, 40, 1, "2018-01-01", "PT").await; // under a legal hold
    db.exec("UPDATE borrowers SET borrowernotes = 'LEGAL HOLD' WHERE borrowernumber = 40")
        .await;
    patron(&db, 41, 1, "2018-01-01", "PT").await; // nothing: deleted
    let cfg = db.config(
        "classes:\n  circulation_history: { enabled: false }\n  holds_history: { enabled: false }\n\
         \x20 expired_patrons:\n    exempt:\n      - { reason: legal_hold, column: borrowernotes, eq: \"LEGAL HOLD\" }\n",
    );
    let r = run_at(&cfg, now(), true).await;
    let c = class(&r, "expired_patrons");
    assert_eq!(c.affected, 1, "{c:?}");
    assert_eq!(
        (c.kept.legal_hold, c.kept.obligations, c.kept.protected),
        (1, 1, 2),
        "{c:?}"
    );
    for n in [1, 24, 26, 28, 40] {
        assert!(exists(&db, n).await, "patron {n} should be kept");
    }
    assert!(!exists(&db, 41).await);
}

/// A host clock an hour ahead of the database's: enforcing is refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_skewed_host_clock_refuses_to_enforce() {
    let Some(db) = TestDb::mysql().await else {
        return;
    };
    let cfg = db.config("");
    let ldb = Db::connect(&cfg).await.unwrap();
    assert!(
        engine::check_clock(&cfg, &ldb, chrono::Utc::now())
            .await
            .is_ok()
    );
    let skewed = chrono::Utc::now() + chrono::Duration::hours(1);
    let err = engine::check_clock(&cfg, &ldb, skewed).await.unwrap_err();
    assert!(matches!(err, EngineError::Clock(_)), "{err}");
    assert!(err.to_string().contains("max_clock_skew"), "{err}");
    ldb.close().await;
}

// Koha's own anonymize rewrites borrowernumber only: rows it (or an earlier Lethe)
// anonymized to the anonymous patron kept the patron's checkout and hold notes. The
// next run clears them.
both_backends!(notes_left_on_rows_anonymized_earlier_are_cleared);
async fn notes_left_on_rows_anonymized_earlier_are_cleared(db: TestDb) {
    koha_reference(&db, None).await;
    patron(&db, 10, 0, "2099-01-01", "PT").await; // privacy 0: keeps history
    let long_ago = Some("2026-01-01 10:00:00");
    old_issue(&db, 201, Some(1), long_ago).await; // anonymized before, note left
    old_issue(&db, 202, None, long_ago).await; // patron deleted (SET NULL): not reached
    old_issue(&db, 203, Some(1), long_ago).await; // anonymized, no note: nothing to do
    old_issue(&db, 204, Some(10), long_ago).await; // opted in: the note stays
    for id in [201, 202, 204] {
        db.exec(&format!(
            "UPDATE old_issues SET note = 'CANARY-NOTE' WHERE issue_id = {id}"
        ))
        .await;
    }
    for (id, bn) in [(301, V::I(1)), (302, V::Null)] {
        db.insert(
            "old_reserves",
            &[
                ("reserve_id", i(id)),
                ("borrowernumber", bn),
                ("biblionumber", i(1)),
                ("branchcode", s("MAIN")),
                ("reservedate", s("2026-01-01")),
                ("cancellationdate", s("2026-01-05")),
                ("priority", i(0)),
                ("reservenotes", s("CANARY-NOTE")),
            ],
        )
        .await;
    }
    let cfg = db.config(
        ONLY_CIRC
            .replace("  holds_history: { enabled: false }\n", "")
            .as_str(),
    );
    let plan = plan_at(&cfg, now()).await;
    assert_eq!(class(&plan, "circulation_history").eligible, 1);
    assert_eq!(class(&plan, "circulation_history").kept.opt_in, 1);
    assert_eq!(class(&plan, "holds_history").eligible, 1);
    let run = run_at(&cfg, now(), true).await;
    assert_eq!(class(&run, "circulation_history").affected, 1);
    assert_eq!(class(&run, "holds_history").affected, 1);
    assert_eq!(
        db.count("old_issues WHERE issue_id = 201 AND note IS NULL AND borrowernumber = 1")
            .await,
        1
    );
    assert_eq!(
        db.count(
            "old_issues WHERE issue_id = 204 AND note = 'CANARY-NOTE' AND borrowernumber = 10"
        )
        .await,
        1
    );
    assert_eq!(
        db.count("old_reserves WHERE reserve_id = 301 AND reservenotes IS NULL")
            .await,
        1
    );
    // A row whose patron was deleted (borrowernumber NULL) keeps its note: the class
    // runs before expired_patrons, whose deletions would make such rows eligible
    // within a run and break its fixed point (README).
    assert_eq!(
        db.count("old_issues WHERE issue_id = 202 AND note IS NOT NULL AND borrowernumber IS NULL")
            .await,
        1
    );
    assert_eq!(
        db.count("old_reserves WHERE reserve_id = 302 AND reservenotes IS NOT NULL")
            .await,
        1
    );
    let again = run_at(&cfg, now(), true).await;
    for c in &again.classes {
        assert_eq!(c.affected, 0, "{c:?}");
    }
}
