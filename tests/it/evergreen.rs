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

/// The acceptance scenario: a realistic Evergreen library (the generator's
/// standard population: 5,000 patrons, about 200,000 circulations with renewal chains,
/// 40,000 holds, opt-in reading history, staff, audit rows), the expected outcome
/// computed beforehand by hand-written SQL, then one run: exactly the eligible chains
/// age (no patron id in the aged rows), exactly the eligible holds, reading history and
/// patrons go, no audit trace remains; a second run changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_realistic_evergreen_library_is_enforced_exactly() {
    use lethe::demo::evergreen::{CANARY, EvergreenOptions, populate};
    let Some(db) = TestDb::postgres(&evergreen_ddl()).await else {
        return;
    };
    let Raw::Postgres(pool) = &db.raw else {
        unreachable!()
    };
    let stats = populate(pool, &EvergreenOptions::standard(now().date_naive()))
        .await
        .unwrap();
    assert!(
        stats.patrons >= 5000 && stats.circulations > 150_000,
        "{stats:?}"
    );
    let cut30 = "'2026-05-16 12:00:00+00'::timestamptz";
    let cut2y = "'2024-06-15 12:00:00+00'::timestamptz";
    let now_sql = "'2026-06-15 12:00:00+00'::timestamptz";
    // Chains whose tail finished before the cutoff and with no unfinished member.
    db.exec(&format!(
        "CREATE TABLE public.expect_aged AS
         WITH RECURSIVE tails AS (
             SELECT c.id FROM action.circulation c
             WHERE NOT EXISTS (SELECT 1 FROM action.circulation k WHERE k.parent_circ = c.id)
               AND COALESCE(c.xact_finish, c.checkin_time) < {cut30}),
         members(tail, id, parent) AS (
             SELECT c.id, c.id, c.parent_circ FROM action.circulation c JOIN tails t ON t.id = c.id
             UNION
             SELECT m.tail, p.id, p.parent_circ FROM members m JOIN action.circulation p ON p.id = m.parent),
         bad AS (SELECT DISTINCT m.tail FROM members m JOIN action.circulation c ON c.id = m.id
                 WHERE c.xact_finish IS NULL)
         SELECT m.tail, m.id, c.usr FROM members m JOIN action.circulation c ON c.id = m.id
         WHERE m.tail NOT IN (SELECT tail FROM bad);
         CREATE TABLE public.expect_holds AS
         SELECT h.id FROM action.hold_request h
         WHERE COALESCE(h.fulfillment_time, h.cancel_time) < {cut30}
           AND NOT EXISTS (SELECT 1 FROM actor.usr_setting s WHERE s.usr = h.usr AND s.name = 'history.hold.retention_start');
         CREATE TABLE public.expect_history AS
         SELECT r.id FROM action.usr_circ_history r
         WHERE NOT EXISTS (SELECT 1 FROM actor.usr_setting s WHERE s.usr = r.usr AND s.name = 'history.circ.retention_start')
            OR EXISTS (SELECT 1 FROM actor.usr_setting s WHERE s.usr = r.usr AND s.name = 'history.circ.retention_age'
                       AND r.xact_start < ((({now_sql}) AT TIME ZONE 'America/New_York')
                                            - evergreen.oils_json_to_text(s.value)::interval) AT TIME ZONE 'America/New_York');
         CREATE TABLE public.expect_patrons AS
         SELECT u.id FROM actor.usr u
         WHERE u.expire_date < {cut2y} AND u.usrname NOT LIKE '%-PURGED-%' AND NOT u.super_user
           AND NOT EXISTS (SELECT 1 FROM money.billable_xact x WHERE x.usr = u.id AND x.xact_finish IS NULL)
           AND NOT EXISTS (SELECT 1 FROM action.hold_request h WHERE h.usr = u.id
                           AND h.fulfillment_time IS NULL AND h.cancel_time IS NULL)
           AND NOT EXISTS (SELECT 1 FROM permission.usr_work_ou_map w WHERE w.usr = u.id);"
    ))
    .await;
    let tails = db
        .int("SELECT COUNT(DISTINCT tail) FROM public.expect_aged")
        .await
        .unwrap();
    let members = db.count("public.expect_aged").await;
    let holds = db.count("public.expect_holds").await;
    let history = db.count("public.expect_history").await;
    let patrons = db.count("public.expect_patrons").await;
    assert!(
        tails > 1000 && members > tails && holds > 100 && history > 10 && patrons > 100,
        "a scenario worth testing: {tails} {members} {holds} {history} {patrons}"
    );
    let staff_as_patron = db
        .count("public.expect_aged e JOIN action.circulation c ON c.id = e.id WHERE c.circ_staff = e.usr OR c.checkin_staff = e.usr")
        .await;
    assert!(
        staff_as_patron > 0,
        "the generator records OPAC renewals with the patron as staff"
    );
    let aged_before = db.count("action.aged_circulation").await;

    let cfg = eg_config(&db, "");
    let run = run_at(&cfg, now(), true).await;
    let c = class(&run, "circulation_history");
    assert_eq!(c.affected as i64, tails, "{c:?}");
    assert_eq!(
        db.count("action.aged_circulation").await,
        aged_before + members
    );
    assert_eq!(
        db.count("public.expect_aged e JOIN action.aged_circulation a ON a.id = e.id")
            .await,
        members
    );
    assert_eq!(
        db.count("public.expect_aged e JOIN action.circulation c ON c.id = e.id")
            .await,
        0
    );
    // No patron id in the aged rows: not as usr (no such column), not as staff.
    assert_eq!(
        db.count("public.expect_aged e JOIN action.aged_circulation a ON a.id = e.id WHERE a.circ_staff = e.usr OR a.checkin_staff = e.usr").await,
        0
    );
    // Unfinished and recent chains stay.
    assert!(
        db.count("action.circulation WHERE xact_finish IS NULL")
            .await
            > 0
    );
    assert_eq!(class(&run, "holds_history").affected as i64, holds);
    assert_eq!(
        db.count("public.expect_holds e JOIN action.hold_request h ON h.id = e.id")
            .await,
        0
    );
    assert_eq!(
        db.count("public.expect_holds e JOIN action.aged_hold_request h ON h.id = e.id")
            .await,
        holds
    );
    // Reading history: the expected rows went (patrons purged lose theirs through
    // actor.usr_delete, counted there); nothing else did.
    assert_eq!(
        db.count("public.expect_history e JOIN action.usr_circ_history r ON r.id = e.id")
            .await,
        0
    );
    assert_eq!(class(&run, "reading_history").affected as i64, history);
    let p = class(&run, "expired_patrons");
    assert_eq!(p.affected as i64, patrons, "{p:?}");
    assert_eq!(
        db.count("actor.usr WHERE usrname LIKE '%-PURGED-%' AND deleted AND id IN (SELECT id FROM public.expect_patrons)").await,
        patrons
    );
    assert_eq!(
        db.count("actor.usr WHERE usrname LIKE '%-PURGED-%'").await,
        patrons
    );
    assert_eq!(
        db.count("auditor.actor_usr_history WHERE id IN (SELECT id FROM public.expect_patrons)")
            .await,
        0
    );
    let lethe_db = Db::connect(&cfg).await.unwrap();
    let comp = engine::compliance(&cfg, &lethe_db, now()).await.unwrap();
    assert_eq!((comp.overdue, comp.traces), (0, 0), "{comp:?}");
    // What leaves the database says nothing about patrons.
    let entries = lethe::ledger::entries(&lethe_db, None).await.unwrap();
    let out = format!(
        "{}{}",
        serde_json::to_string(&run).unwrap(),
        serde_json::to_string(&entries).unwrap()
    );
    assert!(
        !out.contains(CANARY),
        "patron data in the summary or ledger"
    );
    lethe_db.close().await;

    let again = run_at(&cfg, now(), false).await;
    for c in &again.classes {
        assert_eq!(c.affected, 0, "{c:?}");
    }
}

/// The profile's other classes, named in the file (they ship off): rendered notices
/// (events, then the texts no event links to, in the same run), patron activity, aged
/// money, and the post code and birth year kept with aged loans and holds, each either
/// side of its cutoff; a legal hold keeps a patron's events and so their texts.
#[tokio::test(flavor = "multi_thread")]
async fn notices_activity_aged_money_and_demographics() {
    let Some(db) = evergreen_db().await else {
        return;
    };
    usr(&db, 600, "2099-01-01 00:00:00+00").await;
    usr(&db, 601, "2099-01-01 00:00:00+00").await;
    // 90 days before now: 2026-03-17 12:00 UTC.
    let old = "2026-03-17 11:59:59+00";
    let recent = "2026-06-01 10:00:00+00";
    for (id, at) in [(1, old), (2, old), (3, old), (4, recent), (5, old)] {
        db.exec(&format!(
            "INSERT INTO action_trigger.event_output (id, create_time, data) VALUES ({id}, '{at}', 'Dear CanaryFirst600, your book is overdue')"
        ))
        .await;
    }
    for (id, state, at, usr, out) in [
        (1, "complete", old, 600, 1),
        (2, "pending", old, 600, 2),
        (3, "complete", old, 601, 5),
        (4, "complete", recent, 600, 4),
    ] {
        db.exec(&format!(
            "INSERT INTO action_trigger.event (id, target, run_time, update_time, state, context_user, template_output) \
             VALUES ({id}, 1, '{at}', '{at}', '{state}', {usr}, {out})"
        ))
        .await;
    }
    // 1 year: 2025-06-15 12:00 UTC.
    for (id, usr, at) in [
        (1, 600, "2025-06-15 11:59:59+00"),
        (2, 600, "2025-06-15 12:00:00+00"),
        (3, 601, "2025-01-01 00:00:00+00"),
    ] {
        db.exec(&format!(
            "INSERT INTO actor.usr_activity (id, usr, etype, event_time) VALUES ({id}, {usr}, 1, '{at}')"
        ))
        .await;
    }
    // 7 years: 2019-06-15 12:00 UTC.
    for (id, at) in [(1, "2019-06-15 11:59:59+00"), (2, "2019-06-15 12:00:00+00")] {
        db.exec(&format!(
            "INSERT INTO money.aged_payment (id, xact, payment_ts, voided, amount, payment_type, refundable) \
             VALUES ({id}, 1, '{at}', FALSE, 1.00, 'cash_payment', FALSE);
             INSERT INTO money.aged_billing (id, xact, billing_ts, voided, amount, billing_type, btype, create_date) \
             VALUES ({id}, 1, '{at}', FALSE, 1.00, 'Overdue materials', 1, '{at}')"
        ))
        .await;
    }
    // Aged loans and holds, made by Evergreen's own triggers: age two finished loans and
    // two finished holds of patron 600 through the circulation and holds classes.
    circ(
        &db,
        700,
        600,
        1,
        "2024-06-15 11:59:59+00",
        Some("2024-06-20 10:00:00+00"),
        Some("2024-06-20 10:00:00+00"),
        None,
    )
    .await;
    circ(
        &db,
        701,
        600,
        2,
        "2024-06-15 12:00:01+00",
        Some("2024-06-20 10:00:00+00"),
        Some("2024-06-20 10:00:00+00"),
        None,
    )
    .await;
    hold(&db, 710, 600, Some("2024-06-01 10:00:00+00"), None).await;
    db.exec(
        "UPDATE action.hold_request SET request_time = '2024-06-15 11:59:59+00' WHERE id = 710",
    )
    .await;
    hold(&db, 711, 600, Some("2024-07-01 10:00:00+00"), None).await;
    db.exec(
        "UPDATE action.hold_request SET request_time = '2024-06-15 12:00:01+00' WHERE id = 711",
    )
    .await;
    db.exec(
        "INSERT INTO actor.usr_address (id, usr, street1, city, state, post_code, country) VALUES (6000, 600, '1 Canary Lane', 'Canarytown', 'NY', '14850', 'US');
         UPDATE actor.usr SET mailing_address = 6000 WHERE id = 600",
    )
    .await;
    let cfg = eg_config(
        &db,
        "classes:\n  notice_events: {}\n  notice_texts: {}\n  patron_activity: {}\n  aged_payments: {}\n  aged_billings: {}\n  aged_circulation_demographics: {}\n  aged_hold_demographics: {}\n",
    );
    let pool = Db::connect(&cfg).await.unwrap();
    lethe::legal_hold::place(&pool, 601, "CASE-EG-1", None, "clerk")
        .await
        .unwrap();
    pool.close().await;
    let run = run_at(&cfg, now(), true).await;
    assert_eq!(run.status, lethe::summary::RunStatus::Ok, "{run:?}");
    // The loans and holds aged first (profile order), carrying the post code and birth
    // year; the demographics classes then null them for the one past two years.
    assert_eq!(
        db.count("action.aged_circulation WHERE id IN (700, 701)")
            .await,
        2
    );
    let c = class(&run, "notice_events");
    assert_eq!((c.affected, c.kept.legal_hold), (1, 1), "{c:?}");
    assert_eq!(ids_in(&db, "action_trigger.event").await, [2, 3, 4]);
    // Output 1 lost its event in this run, 3 had none; 2 (pending event), 4 (recent) and
    // 5 (held patron's event) stay.
    assert_eq!(class(&run, "notice_texts").affected, 2);
    assert_eq!(ids_in(&db, "action_trigger.event_output").await, [2, 4, 5]);
    assert_eq!(ids_in(&db, "actor.usr_activity").await, [2, 3]);
    assert_eq!(ids_in(&db, "money.aged_payment").await, [2]);
    assert_eq!(ids_in(&db, "money.aged_billing").await, [2]);
    assert_eq!(
        db.count("action.aged_circulation WHERE id = 700 AND usr_post_code IS NULL AND usr_birth_year IS NULL")
            .await,
        1
    );
    assert_eq!(
        db.count("action.aged_circulation WHERE id = 701 AND usr_post_code = '14850'")
            .await,
        1
    );
    assert_eq!(
        db.count("action.aged_hold_request WHERE id = 710 AND usr_post_code IS NULL AND usr_birth_year IS NULL")
            .await,
        1
    );
    assert_eq!(
        db.count("action.aged_hold_request WHERE id = 711 AND usr_post_code = '14850'")
            .await,
        1
    );
    // A second run changes nothing.
    let again = run_at(&cfg, now(), true).await;
    let total: u64 = again.classes.iter().map(|c| c.affected).sum();
    assert_eq!(total, 0, "{again:?}");
}

/// Which of the ids 1..=5 are in `table`.
async fn ids_in(db: &TestDb, table: &str) -> Vec<i64> {
    let mut v = Vec::new();
    for id in 1..=5 {
        if db.count(&format!("{table} WHERE id = {id}")).await > 0 {
            v.push(id);
        }
    }
    v
}
