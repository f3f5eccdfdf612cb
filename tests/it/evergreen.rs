//! The Evergreen profile on PostgreSQL, against the Evergreen-shaped fixture
//! (`tests/fixtures/evergreen_pg.sql`: Evergreen's tables, its delete-protect rule, its
//! aging triggers and a stand-in for `actor.usr_delete`), each rule on each side of its
//! cutoff.
//!
//! The fixed now is 2026-06-15 12:00 UTC = 08:00 in New York (EDT). Cutoffs (instants):
//! circulation, holds and reading history (30 days): 2026-05-16 08:00 EDT =
//! 2026-05-16 12:00 UTC; expired patrons (2 years): 2024-06-15 12:00 UTC.

use std::path::Path;

use lethe::config::Config;
use lethe::db::Db;
use lethe::engine;

use crate::common::*;
use crate::engine::{class, plan_at, run_at};

/// The fixture's DDL.
pub fn evergreen_ddl() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/evergreen_pg.sql");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// A database loaded with the fixture, with one call number and copies 1..=20 (the
/// fixture's circulation trigger reads the copy's location).
pub async fn evergreen_db() -> Option<TestDb> {
    let db = TestDb::postgres(&evergreen_ddl()).await?;
    db.exec(
        "INSERT INTO asset.call_number (id, creator, editor, record, owning_lib, label) VALUES (1, 1, 1, 1, 1, 'QA 76');
         INSERT INTO asset.copy (id, circ_lib, creator, call_number, editor, loan_duration, fine_level, barcode)
         SELECT n, 1, 1, 1, 1, 2, 2, 'COPY' || n FROM generate_series(1, 20) n;",
    )
    .await;
    Some(db)
}

pub fn eg_config(db: &TestDb, extra: &str) -> Config {
    config_with_profile(&db.url, "evergreen", extra)
}

const OLD: &str = "2026-05-16 11:59:59+00"; // 1 s before the 30-day cutoff
const AT: &str = "2026-05-16 12:00:00+00"; // exactly at it: kept
const RECENT: &str = "2026-06-01 10:00:00+00";

/// A patron: `expire` is an instant.
async fn usr(db: &TestDb, id: i64, expire: &str) {
    db.insert(
        "actor.usr",
        &[
            ("id", i(id)),
            ("card", V::Null),
            ("profile", i(2)),
            ("usrname", s(&format!("canary-user-{id}"))),
            ("email", s(&format!("canary{id}@example.org"))),
            ("passwd", s("canary-secret")),
            ("standing", i(1)),
            ("ident_type", i(1)),
            ("first_given_name", s(&format!("CanaryFirst{id}"))),
            ("family_name", s(&format!("CanaryFamily{id}"))),
            ("dob", s("1980-07-04")),
            ("home_ou", i(1)),
            ("expire_date", s(expire)),
        ],
    )
    .await;
}

async fn setting(db: &TestDb, usr: i64, name: &str, value: &str) {
    db.insert(
        "actor.usr_setting",
        &[("usr", i(usr)), ("name", s(name)), ("value", s(value))],
    )
    .await;
}

/// A circulation of `usr` on `copy`; `finish` None = unfinished (still out or owed).
#[allow(clippy::too_many_arguments)]
async fn circ(
    db: &TestDb,
    id: i64,
    usr: i64,
    copy: i64,
    start: &str,
    checkin: Option<&str>,
    finish: Option<&str>,
    parent: Option<i64>,
) {
    db.insert(
        "action.circulation",
        &[
            ("id", i(id)),
            ("usr", i(usr)),
            ("xact_start", s(start)),
            ("xact_finish", finish.map(s).unwrap_or(V::Null)),
            ("target_copy", i(copy)),
            ("circ_lib", i(1)),
            ("circ_staff", i(1)),
            ("renewal_remaining", i(2)),
            ("grace_period", s("1 day")),
            ("due_date", s(start)),
            ("checkin_time", checkin.map(s).unwrap_or(V::Null)),
            ("duration", s("14 days")),
            ("fine_interval", s("1 day")),
            ("duration_rule", s("default")),
            ("recurring_fine_rule", s("default")),
            ("max_fine_rule", s("default")),
            (
                "stop_fines",
                checkin.map(|_| s("CHECKIN")).unwrap_or(V::Null),
            ),
            ("parent_circ", parent.map(V::I).unwrap_or(V::Null)),
        ],
    )
    .await;
}

async fn hold(db: &TestDb, id: i64, usr: i64, fulfilled: Option<&str>, canceled: Option<&str>) {
    db.insert(
        "action.hold_request",
        &[
            ("id", i(id)),
            ("usr", i(usr)),
            ("requestor", i(usr)),
            ("request_time", s("2020-01-01 10:00:00+00")),
            ("fulfillment_time", fulfilled.map(s).unwrap_or(V::Null)),
            ("cancel_time", canceled.map(s).unwrap_or(V::Null)),
            ("target", i(1)),
            ("hold_type", s("T")),
            ("request_lib", i(1)),
            ("pickup_lib", i(1)),
            ("selection_ou", i(1)),
            ("selection_depth", i(0)),
            ("phone_notify", s("555-0100")),
        ],
    )
    .await;
}

async fn history(db: &TestDb, id: i64, usr: i64, start: &str) {
    db.insert(
        "action.usr_circ_history",
        &[
            ("id", i(id)),
            ("usr", i(usr)),
            ("xact_start", s(start)),
            ("target_copy", i(1)),
            ("due_date", s(start)),
        ],
    )
    .await;
}

async fn exists(db: &TestDb, table_where: &str) -> bool {
    db.count(table_where).await > 0
}

#[tokio::test(flavor = "multi_thread")]
async fn circulation_chains_age_through_evergreen_triggers() {
    let Some(db) = evergreen_db().await else {
        return;
    };
    usr(&db, 10, "2099-01-01 00:00:00+00").await;
    // A chain of three, all finished, the last before the cutoff: aged whole.
    circ(
        &db,
        100,
        10,
        1,
        "2026-03-01 10:00:00+00",
        Some("2026-03-10 10:00:00+00"),
        Some("2026-03-10 10:00:00+00"),
        None,
    )
    .await;
    circ(
        &db,
        101,
        10,
        1,
        "2026-03-10 10:00:00+00",
        Some("2026-03-24 10:00:00+00"),
        Some("2026-03-24 10:00:00+00"),
        Some(100),
    )
    .await;
    circ(
        &db,
        102,
        10,
        1,
        "2026-03-24 10:00:00+00",
        Some(OLD),
        Some(OLD),
        Some(101),
    )
    .await;
    // Tail exactly at the cutoff: kept.
    circ(
        &db,
        110,
        10,
        2,
        "2026-05-01 10:00:00+00",
        Some(AT),
        Some(AT),
        None,
    )
    .await;
    // A chain whose first circulation still owes money: kept, obligations.
    circ(
        &db,
        120,
        10,
        3,
        "2026-01-01 10:00:00+00",
        Some("2026-01-10 10:00:00+00"),
        None,
        None,
    )
    .await;
    circ(
        &db,
        121,
        10,
        3,
        "2026-01-10 10:00:00+00",
        Some("2026-01-20 10:00:00+00"),
        Some("2026-01-20 10:00:00+00"),
        Some(120),
    )
    .await;
    // Returned long ago, never paid (the tail itself unfinished): kept, obligations.
    circ(
        &db,
        130,
        10,
        4,
        "2025-01-01 10:00:00+00",
        Some("2025-01-10 10:00:00+00"),
        None,
        None,
    )
    .await;
    // Still out: no age, never selected.
    circ(&db, 140, 10, 5, "2025-01-01 10:00:00+00", None, None, None).await;
    // Recent: kept by age.
    circ(
        &db,
        150,
        10,
        6,
        "2026-05-20 10:00:00+00",
        Some(RECENT),
        Some(RECENT),
        None,
    )
    .await;
    let cfg = eg_config(
        &db,
        "classes:\n  holds_history: { enabled: false }\n  reading_history: { enabled: false }\n  expired_patrons: { enabled: false }\n",
    );

    let plan = plan_at(&cfg, now()).await;
    let c = class(&plan, "circulation_history");
    assert_eq!(c.eligible, 1, "{c:?}");
    assert_eq!(c.kept.obligations, 2, "{c:?}");

    let aged_before = db.count("action.aged_circulation").await;
    let run = run_at(&cfg, now(), false).await;
    let c = class(&run, "circulation_history");
    assert_eq!((c.eligible, c.affected), (1, 1), "{c:?}");
    for id in [100, 101, 102] {
        assert!(
            !exists(&db, &format!("action.circulation WHERE id = {id}")).await,
            "{id} still there"
        );
        assert!(
            exists(&db, &format!("action.aged_circulation WHERE id = {id}")).await,
            "{id} not aged"
        );
    }
    assert_eq!(db.count("action.aged_circulation").await, aged_before + 3);
    for id in [110, 120, 121, 130, 140, 150] {
        assert!(
            exists(&db, &format!("action.circulation WHERE id = {id}")).await,
            "{id} gone"
        );
    }
    // The aged rows keep no patron column at all.
    assert_eq!(
        db.count("information_schema.columns WHERE table_schema = 'action' AND table_name = 'aged_circulation' AND column_name = 'usr'").await,
        0
    );
    // A second run changes nothing.
    let again = run_at(&cfg, now(), false).await;
    assert_eq!(class(&again, "circulation_history").affected, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn holds_history_ages_unless_the_patron_opted_in() {
    let Some(db) = evergreen_db().await else {
        return;
    };
    usr(&db, 10, "2099-01-01 00:00:00+00").await;
    usr(&db, 11, "2099-01-01 00:00:00+00").await;
    setting(&db, 11, "history.hold.retention_start", "\"2020-01-01\"").await;
    hold(&db, 200, 10, Some(OLD), None).await; // fulfilled before the cutoff: aged
    hold(&db, 201, 10, None, Some(OLD)).await; // canceled before: aged
    hold(&db, 202, 10, Some(AT), None).await; // at the cutoff: kept
    hold(&db, 203, 10, None, None).await; // pending: never
    hold(&db, 204, 11, Some(OLD), None).await; // opted in: kept, opt_in
    let cfg = eg_config(
        &db,
        "classes:\n  circulation_history: { enabled: false }\n  reading_history: { enabled: false }\n  expired_patrons: { enabled: false }\n",
    );
    let run = run_at(&cfg, now(), false).await;
    let c = class(&run, "holds_history");
    assert_eq!((c.eligible, c.affected, c.kept.opt_in), (2, 2, 1), "{c:?}");
    for id in [200, 201] {
        assert!(exists(&db, &format!("action.aged_hold_request WHERE id = {id}")).await);
        assert!(!exists(&db, &format!("action.hold_request WHERE id = {id}")).await);
    }
    for id in [202, 203, 204] {
        assert!(exists(&db, &format!("action.hold_request WHERE id = {id}")).await);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reading_history_follows_the_patrons_own_choice() {
    let Some(db) = evergreen_db().await else {
        return;
    };
    for id in [10, 11, 12, 13] {
        usr(&db, id, "2099-01-01 00:00:00+00").await;
    }
    // 10: never opted in (or opted out): every row goes at once, even yesterday's.
    history(&db, 300, 10, "2026-06-14 10:00:00+00").await;
    // 11: opted in, no age of its own: kept however old.
    setting(&db, 11, "history.circ.retention_start", "\"2019-01-01\"").await;
    history(&db, 310, 11, "2020-01-01 10:00:00+00").await;
    // 12: opted in, keeps "6 months": older rows go, newer stay.
    setting(&db, 12, "history.circ.retention_start", "\"2019-01-01\"").await;
    setting(&db, 12, "history.circ.retention_age", "\"6 months\"").await;
    history(&db, 320, 12, "2025-12-15 11:59:59+00").await; // just over 6 months: deleted
    history(&db, 321, 12, "2026-01-15 10:00:00+00").await; // within: kept
    // 13: opted in with a value Lethe cannot read: kept (fail safe).
    setting(&db, 13, "history.circ.retention_start", "\"2019-01-01\"").await;
    setting(&db, 13, "history.circ.retention_age", "\"a while\"").await;
    history(&db, 330, 13, "2020-01-01 10:00:00+00").await;
    let cfg = eg_config(
        &db,
        "classes:\n  circulation_history: { enabled: false }\n  holds_history: { enabled: false }\n  expired_patrons: { enabled: false }\n",
    );
    let run = run_at(&cfg, now(), false).await;
    let c = class(&run, "reading_history");
    assert_eq!((c.eligible, c.affected), (2, 2), "{c:?}");
    // 310, 321 (past the class's 30 days, within the patron's 6 months) and 330.
    assert_eq!(c.kept.opt_in, 3, "{c:?}");
    for (id, kept) in [
        (300, false),
        (310, true),
        (320, false),
        (321, true),
        (330, true),
    ] {
        assert_eq!(
            exists(&db, &format!("action.usr_circ_history WHERE id = {id}")).await,
            kept,
            "{id}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_patrons_are_purged_by_actor_usr_delete_without_audit_traces() {
    let Some(db) = evergreen_db().await else {
        return;
    };
    let long_ago = "2024-06-15 11:59:59+00"; // 1 s before the 2-year cutoff
    usr(&db, 20, long_ago).await; // purged
    usr(&db, 21, "2024-06-15 12:00:00+00").await; // at the cutoff: kept
    usr(&db, 22, long_ago).await; // a circulation still out: obligations
    circ(&db, 400, 22, 7, "2024-01-01 10:00:00+00", None, None, None).await;
    usr(&db, 23, long_ago).await; // a pending hold: obligations
    hold(&db, 401, 23, None, None).await;
    usr(&db, 24, long_ago).await; // staff: protected
    db.insert(
        "permission.usr_work_ou_map",
        &[("usr", i(24)), ("work_ou", i(1))],
    )
    .await;
    usr(&db, 25, long_ago).await; // super user: protected
    db.exec("UPDATE actor.usr SET super_user = TRUE WHERE id = 25")
        .await;
    usr(&db, 26, long_ago).await; // flagged deleted by staff, never purged: purged
    db.exec("DELETE FROM actor.usr WHERE id = 26").await; // the rule makes this a flag
    // Patron 20 has a finished circulation and audit history of an old change.
    circ(
        &db,
        410,
        20,
        8,
        "2023-01-01 10:00:00+00",
        Some("2023-01-10 10:00:00+00"),
        Some("2023-01-10 10:00:00+00"),
        None,
    )
    .await;
    db.exec("UPDATE actor.usr SET email = 'canary-old@example.org' WHERE id = 20")
        .await;
    assert!(
        exists(&db, "auditor.actor_usr_history WHERE id = 20").await,
        "the fixture audits updates"
    );

    let cfg = eg_config(
        &db,
        "classes:\n  circulation_history: { enabled: false }\n  holds_history: { enabled: false }\n  reading_history: { enabled: false }\n",
    );
    let run = run_at(&cfg, now(), false).await;
    let c = class(&run, "expired_patrons");
    assert_eq!((c.eligible, c.affected), (2, 2), "{c:?}");
    assert_eq!((c.kept.obligations, c.kept.protected), (2, 2), "{c:?}");
    for id in [20, 26] {
        assert!(
            exists(
                &db,
                &format!("actor.usr WHERE id = {id} AND usrname LIKE '%-PURGED-%' AND deleted")
            )
            .await,
            "{id}"
        );
        assert!(!exists(&db, &format!("actor.usr WHERE id = {id} AND (email IS NOT NULL OR family_name LIKE 'Canary%')")).await);
        // Evergreen's own purge leaves audit rows with the original name; Lethe removes them.
        assert!(
            !exists(&db, &format!("auditor.actor_usr_history WHERE id = {id}")).await,
            "{id} audit"
        );
    }
    // The circulation was aged, not lost.
    assert!(exists(&db, "action.aged_circulation WHERE id = 410").await);
    for id in [21, 22, 23, 24, 25] {
        assert!(
            exists(
                &db,
                &format!("actor.usr WHERE id = {id} AND usrname = 'canary-user-{id}'")
            )
            .await,
            "{id}"
        );
    }
    // A second run changes nothing; verify finds no trace.
    let again = run_at(&cfg, now(), false).await;
    assert_eq!(class(&again, "expired_patrons").affected, 0);
    let pool = Db::connect(&cfg).await.unwrap();
    let comp = engine::compliance(&cfg, &pool, now()).await.unwrap();
    assert_eq!(comp.traces, 0, "{comp:?}");
    // An audit row left by anything else for a purged patron is counted.
    db.exec("INSERT INTO auditor.actor_usr_history SELECT nextval('auditor.actor_usr_pkey_seq'), now(), 'U', NULL, NULL, u.* FROM actor.usr u WHERE u.id = 20").await;
    let comp = engine::compliance(&cfg, &pool, now()).await.unwrap();
    assert_eq!(comp.traces, 1, "{comp:?}");
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn check_refuses_without_evergreens_aging_triggers() {
    let Some(db) = evergreen_db().await else {
        return;
    };
    db.exec("ALTER TABLE action.circulation DISABLE TRIGGER USER")
        .await;
    let cfg = eg_config(&db, "");
    let pool = Db::connect(&cfg).await.unwrap();
    let err = engine::prepare(&cfg, &pool).await.unwrap_err().to_string();
    pool.close().await;
    assert!(err.contains("age_circ_on_delete"), "{err}");
    assert!(err.contains("refusing to run"), "{err}");
}
