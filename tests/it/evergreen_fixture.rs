//! The Evergreen fixture (tests/fixtures/evergreen_pg.sql) behaves like Evergreen:
//! aging triggers, the delete-protect rule, the auditor, actor.usr_delete and its
//! flaw; and the Evergreen generator (lethe::demo::evergreen) is deterministic and
//! produces the mix the profile's rules are about.

use chrono::NaiveDate;
use lethe::demo::evergreen::{self, CANARY, EvergreenOptions};
use sqlx::Row;

use crate::common::{Raw, TestDb};

fn ddl() -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/evergreen_pg.sql"
    );
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

fn pool(db: &TestDb) -> &sqlx::PgPool {
    match &db.raw {
        Raw::Postgres(p) => p,
        _ => unreachable!("an Evergreen test database is PostgreSQL"),
    }
}

/// Rows affected by one statement.
async fn affected(db: &TestDb, sql: &str) -> u64 {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(pool(db))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .rows_affected()
}

async fn text(db: &TestDb, sql: &str) -> Option<String> {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(pool(db))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get::<Option<String>, _>(0)
}

/// A small library: consortium 1 (fixture), system 2, branch 3; staff 10 (works
/// at 3); patron 20 with canary PII, address 30 (post code 30601), card 40, born
/// 1990, opted in to circulation history; copies 60 and 61 (bib 500); a chain
/// 100 → 101 → 102 of patron 20 on copy 60 (101 an OPAC renewal, so its
/// circ_staff is the patron, as Evergreen records it), finished; holds 200
/// (fulfilled, phone notify) and 201 (pending, placed by staff).
const SCENARIO: &str = "
INSERT INTO actor.org_unit (id, parent_ou, ou_type, shortname, name) VALUES
    (2, 1, 2, 'SYS', 'System'), (3, 2, 3, 'BR', 'Branch');
INSERT INTO actor.usr (id, profile, usrname, passwd, first_given_name, family_name, email, dob,
                       ident_type, ident_value, day_phone, home_ou) VALUES
    (10, 5, 'staff10', 'x', 'Stella', 'Staff', 'stella@library.example.org', '1980-02-03', 1, NULL, NULL, 3),
    (20, 2, 'canary-usr', 'secret', 'CanaryGiven', 'CanaryFamily', 'canary@example.org', '1990-05-06',
     1, 'CANARY-ID', '555-0100 CANARY', 3);
INSERT INTO permission.usr_work_ou_map (usr, work_ou) VALUES (10, 3);
INSERT INTO actor.usr_address (id, usr, street1, city, country, post_code) VALUES
    (30, 20, '1 Canary Street', 'Riverton', 'USA', '30601');
INSERT INTO actor.card (id, usr, barcode) VALUES (40, 20, 'CANARY-CARD');
UPDATE actor.usr SET mailing_address = 30, billing_address = 30, card = 40 WHERE id = 20;
INSERT INTO actor.usr_setting (usr, name, value) VALUES (20, 'history.circ.retention_start', '\"2020-01-01\"');
INSERT INTO asset.call_number (id, creator, editor, record, owning_lib, label) VALUES (50, 1, 1, 500, 3, 'FIC X');
INSERT INTO asset.copy (id, circ_lib, creator, call_number, editor, loan_duration, fine_level, barcode) VALUES
    (60, 3, 1, 50, 1, 2, 2, 'ITEM60'), (61, 3, 1, 50, 1, 2, 2, 'ITEM61');
INSERT INTO action.circulation (id, usr, xact_start, xact_finish, target_copy, circ_lib, circ_staff, checkin_staff,
        renewal_remaining, grace_period, due_date, checkin_time, stop_fines, duration_rule, recurring_fine_rule,
        max_fine_rule, opac_renewal, parent_circ) VALUES
    (100, 20, '2024-01-02 10:00+00', '2024-01-20 10:00+00', 60, 3, 10, 20, 2, '1 day', '2024-01-23 23:59:59+00',
     '2024-01-20 10:00+00', 'RENEW', 'default', 'default', 'default', FALSE, NULL);
INSERT INTO action.circulation (id, usr, xact_start, xact_finish, target_copy, circ_lib, circ_staff, checkin_staff,
        renewal_remaining, grace_period, due_date, checkin_time, stop_fines, duration_rule, recurring_fine_rule,
        max_fine_rule, opac_renewal, parent_circ) VALUES
    (101, 20, '2024-01-20 10:00+00', '2024-02-05 10:00+00', 60, 3, 20, 10, 1, '1 day', '2024-02-10 23:59:59+00',
     '2024-02-05 10:00+00', 'RENEW', 'default', 'default', 'default', TRUE, 100);
INSERT INTO action.circulation (id, usr, xact_start, xact_finish, target_copy, circ_lib, circ_staff, checkin_staff,
        renewal_remaining, grace_period, due_date, checkin_time, stop_fines, duration_rule, recurring_fine_rule,
        max_fine_rule, opac_renewal, parent_circ) VALUES
    (102, 20, '2024-02-05 10:00+00', '2024-02-20 10:00+00', 60, 3, 10, 10, 0, '1 day', '2024-02-26 23:59:59+00',
     '2024-02-20 10:00+00', 'CHECKIN', 'default', 'default', 'default', FALSE, 101);
INSERT INTO action.hold_request (id, request_time, capture_time, fulfillment_time, target, current_copy,
        fulfillment_staff, fulfillment_lib, request_lib, requestor, usr, selection_ou, pickup_lib, hold_type,
        phone_notify, email_notify) VALUES
    (200, '2024-03-01 09:00+00', '2024-03-03 09:00+00', '2024-03-05 12:00+00', 500, 61, 10, 3, 3, 20, 20, 3, 3, 'T',
     '555-0100 CANARY', TRUE),
    (201, '2024-04-01 09:00+00', NULL, NULL, 500, NULL, NULL, NULL, 3, 10, 20, 3, 3, 'T', NULL, FALSE);
";

async fn scenario() -> Option<TestDb> {
    let db = TestDb::postgres(&ddl()).await?;
    db.exec(SCENARIO).await;
    Some(db)
}

#[tokio::test(flavor = "multi_thread")]
async fn fixture_has_evergreens_names() {
    let Some(db) = TestDb::postgres(&ddl()).await else {
        return;
    };
    for (table, trigger) in [
        ("action.circulation", "action_circulation_aging_tgr"),
        ("action.circulation", "age_parent_circ"),
        ("action.circulation", "maintain_usr_circ_history_tgr"),
        ("action.circulation", "fill_circ_copy_location_tgr"),
        ("action.hold_request", "action_hold_request_aging_tgr"),
        ("actor.usr", "audit_actor_usr_update_trigger"),
        ("actor.usr", "au_update_trig"),
        ("actor.usr", "user_ingest_name_keywords_tgr"),
        (
            "actor.usr_address",
            "audit_actor_usr_address_update_trigger",
        ),
        ("money.billing", "maintain_billing_ts_tgr"),
    ] {
        let n = db
            .count(&format!(
                "pg_trigger WHERE tgrelid = '{table}'::regclass AND tgname = '{trigger}'"
            ))
            .await;
        assert_eq!(n, 1, "trigger {trigger} on {table}");
    }
    assert_eq!(
        db.count("pg_rules WHERE schemaname = 'actor' AND tablename = 'usr' AND rulename = 'protect_actor_usr_delete'")
            .await,
        1
    );
    for f in [
        "action.age_circ_on_delete()",
        "action.age_parent_circ_on_delete()",
        "action.age_hold_on_delete()",
        "action.maintain_usr_circ_history()",
        "action.circ_chain(bigint)",
        "actor.usr_delete(integer,integer)",
        "actor.usr_purge_data(integer,integer)",
        "auditor.audit_actor_usr_func()",
        "auditor.audit_actor_usr_address_func()",
        "auditor.set_audit_info(integer,integer)",
        "evergreen.setup_delete_protect_rule(text,text,text,text,text)",
        "evergreen.oils_json_to_text(text)",
    ] {
        assert_eq!(
            db.int(&format!(
                "SELECT COUNT(*) FROM (SELECT '{f}'::regprocedure) x"
            ))
            .await,
            Some(1),
            "{f}"
        );
    }
    // action.circulation and money.grocery are children of money.billable_xact.
    assert_eq!(
        db.count("pg_inherits WHERE inhparent = 'money.billable_xact'::regclass")
            .await,
        2
    );
    assert_eq!(
        db.count("pg_inherits WHERE inhrelid = 'config.global_flag'::regclass AND inhparent = 'config.internal_flag'::regclass")
            .await,
        1
    );
    // The aged tables have no patron column; the auditor tables have the audit columns.
    let aged = db.table_columns("action.aged_circulation").await;
    assert!(!aged.iter().any(|c| c == "usr"), "{aged:?}");
    for c in [
        "usr_post_code",
        "usr_home_ou",
        "usr_profile",
        "usr_birth_year",
        "copy_bib_record",
        "parent_circ",
    ] {
        assert!(aged.iter().any(|x| x == c), "aged_circulation.{c}");
    }
    let aged_holds = db.table_columns("action.aged_hold_request").await;
    for gone in ["usr", "requestor", "sms_carrier"] {
        assert!(
            !aged_holds.iter().any(|c| c == gone),
            "aged_hold_request.{gone}"
        );
    }
    let audit = db.table_columns("auditor.actor_usr_history").await;
    for c in [
        "audit_id",
        "audit_time",
        "audit_action",
        "audit_user",
        "audit_ws",
        "usrname",
        "email",
        "dob",
        "name_kw_tsvector",
    ] {
        assert!(audit.iter().any(|x| x == c), "actor_usr_history.{c}");
    }
    // Seeds: the administrator, history settings and flags.
    assert_eq!(db.count("actor.usr WHERE id = 1 AND super_user").await, 1);
    assert_eq!(
        db.count("config.usr_setting_type WHERE name IN ('history.circ.retention_start', 'history.circ.retention_age', 'history.hold.retention_start', 'history.hold.retention_age')")
            .await,
        4
    );
    assert_eq!(
        db.count("config.global_flag WHERE name = 'history.circ.retention_age' AND enabled AND value IS NULL")
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_chain_tail_ages_the_whole_chain() {
    let Some(db) = scenario().await else { return };
    assert_eq!(
        affected(&db, "DELETE FROM action.circulation WHERE id = 102").await,
        1
    );
    assert_eq!(db.count("action.circulation").await, 0);
    assert_eq!(db.count("action.aged_circulation").await, 3);
    // Aggregates in place of the patron.
    assert_eq!(
        db.count(
            "action.aged_circulation WHERE usr_post_code = '30601' AND usr_home_ou = 3 AND usr_profile = 2 \
             AND usr_birth_year = 1990 AND copy_call_number = 50 AND copy_owning_lib = 3 AND copy_circ_lib = 3 \
             AND copy_bib_record = 500 AND target_copy = 60"
        )
        .await,
        3
    );
    // The chain survives as a chain.
    assert_eq!(
        db.int("SELECT parent_circ FROM action.aged_circulation WHERE id = 102")
            .await,
        Some(101)
    );
    assert_eq!(
        db.int("SELECT parent_circ FROM action.aged_circulation WHERE id = 101")
            .await,
        Some(100)
    );
    // Evergreen keeps staff ids on aged rows, and an OPAC renewal's "staff" is the patron.
    assert_eq!(
        db.int("SELECT circ_staff FROM action.aged_circulation WHERE id = 101")
            .await,
        Some(20)
    );
    assert_eq!(
        db.int("SELECT checkin_staff FROM action.aged_circulation WHERE id = 100")
            .await,
        Some(20)
    );
    // The opted-in patron's own history stays, unlinked from the aged circulation.
    assert_eq!(
        db.count("action.usr_circ_history WHERE usr = 20 AND source_circ IS NULL")
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_circulation_that_has_a_renewal_is_refused() {
    let Some(db) = scenario().await else { return };
    assert_eq!(
        affected(&db, "DELETE FROM action.circulation WHERE id = 100").await,
        0
    );
    assert_eq!(
        affected(&db, "DELETE FROM action.circulation WHERE id = 101").await,
        0
    );
    assert_eq!(db.count("action.circulation").await, 3);
    assert_eq!(db.count("action.aged_circulation").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn library_settings_drop_birth_year_and_post_code_of_aged_rows() {
    let Some(db) = scenario().await else { return };
    db.exec(
        "INSERT INTO actor.org_unit_setting (org_unit, name, value) VALUES \
         (2, 'circ.do_not_retain_year_of_birth_on_aged', 'true'), \
         (1, 'holds.do_not_retain_post_code_on_aged', 'true')",
    )
    .await;
    db.exec("DELETE FROM action.circulation WHERE id = 102; DELETE FROM action.hold_request WHERE id = 200")
        .await;
    assert_eq!(
        db.count(
            "action.aged_circulation WHERE usr_birth_year IS NULL AND usr_post_code = '30601'"
        )
        .await,
        3
    );
    assert_eq!(
        db.count("action.aged_hold_request WHERE usr_birth_year = 1990 AND usr_post_code IS NULL")
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_hold_ages_it() {
    let Some(db) = scenario().await else { return };
    assert_eq!(
        affected(
            &db,
            "DELETE FROM action.hold_request WHERE id IN (200, 201)"
        )
        .await,
        2
    );
    assert_eq!(db.count("action.hold_request").await, 0);
    assert_eq!(
        db.count(
            "action.aged_hold_request WHERE id = 200 AND phone_notify AND NOT sms_notify AND NOT staff_placed \
             AND usr_post_code = '30601' AND usr_birth_year = 1990 AND usr_home_ou = 3 AND usr_profile = 2 \
             AND fulfillment_staff = 10 AND fulfillment_time IS NOT NULL"
        )
        .await,
        1
    );
    // A pending hold ages too (Evergreen does not check), and staff placement is kept.
    assert_eq!(
        db.count("action.aged_hold_request WHERE id = 201 AND staff_placed AND NOT phone_notify")
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_from_actor_usr_only_sets_deleted() {
    let Some(db) = scenario().await else { return };
    let before = db.count("auditor.actor_usr_history WHERE id = 20").await;
    // The rule is DO INSTEAD with no DELETE in it, so the DELETE reports 0 rows.
    assert_eq!(
        affected(&db, "DELETE FROM actor.usr WHERE id = 20").await,
        0
    );
    assert_eq!(
        db.count(
            "actor.usr WHERE id = 20 AND deleted AND active AND first_given_name = 'CanaryGiven'"
        )
        .await,
        1
    );
    // The auditor saw an UPDATE, and kept the row as it was.
    assert_eq!(
        db.count("auditor.actor_usr_history WHERE id = 20").await,
        before + 1
    );
    assert_eq!(
        db.count("auditor.actor_usr_history WHERE id = 20 AND audit_action = 'U' AND NOT deleted")
            .await,
        before + 1
    );
    // Nothing else moved.
    assert_eq!(db.count("action.circulation WHERE usr = 20").await, 3);
    assert_eq!(db.count("actor.card WHERE usr = 20").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn auditor_records_the_old_row_with_the_staff_member() {
    let Some(db) = scenario().await else { return };
    db.exec(
        "SELECT auditor.set_audit_info(10, 7); \
         UPDATE actor.usr SET email = 'new@example.org' WHERE id = 20; \
         UPDATE actor.usr_address SET street1 = '2 New Street' WHERE id = 30; \
         UPDATE actor.usr SET mailing_address = NULL, billing_address = NULL WHERE id = 20; \
         DELETE FROM actor.usr_address WHERE id = 30; \
         SELECT auditor.clear_audit_info();",
    )
    .await;
    assert_eq!(
        text(&db, "SELECT email FROM auditor.actor_usr_history WHERE id = 20 AND audit_user = 10 AND audit_ws = 7 ORDER BY audit_id LIMIT 1").await,
        Some("canary@example.org".to_string())
    );
    assert_eq!(
        text(&db, "SELECT string_agg(audit_action || ':' || street1, ',' ORDER BY audit_id) FROM auditor.actor_usr_address_history WHERE id = 30").await,
        Some("U:1 Canary Street,D:2 New Street".to_string())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn usr_delete_scrubs_the_patron_but_the_auditor_keeps_the_original_name() {
    let Some(db) = scenario().await else { return };
    assert!(db.count("auditor.actor_usr_history WHERE id = 20").await >= 1);
    let first_new_audit = db
        .int("SELECT last_value FROM auditor.actor_usr_pkey_seq")
        .await
        .unwrap();
    db.exec("SELECT actor.usr_delete(20, 10)").await;

    // The row is scrubbed in place, as Evergreen does.
    assert_eq!(
        db.count(
            "actor.usr WHERE id = 20 AND usrname LIKE '20-PURGED-%' AND first_given_name = usrname \
             AND family_name = usrname AND email IS NULL AND ident_value IS NULL AND day_phone IS NULL \
             AND dob = '1990-01-01' AND deleted AND NOT active AND card IS NULL AND mailing_address IS NULL \
             AND billing_address IS NULL AND home_ou = 1 AND profile = 1 AND create_date = expire_date"
        )
        .await,
        1
    );
    // Everything of the patron's is gone or aged.
    assert_eq!(db.count("action.circulation WHERE usr = 20").await, 0);
    assert_eq!(db.count("action.aged_circulation").await, 3);
    assert_eq!(
        db.count("action.aged_circulation WHERE usr_post_code = '30601'")
            .await,
        3
    );
    assert_eq!(db.count("action.hold_request WHERE usr = 20").await, 0);
    assert_eq!(db.count("action.aged_hold_request").await, 2);
    assert_eq!(db.count("action.usr_circ_history WHERE usr = 20").await, 0);
    assert_eq!(db.count("actor.card WHERE usr = 20").await, 0);
    assert_eq!(db.count("actor.usr_address WHERE usr = 20").await, 0);
    assert_eq!(db.count("actor.usr_setting WHERE usr = 20").await, 0);
    assert_eq!(db.count("money.billable_xact WHERE usr = 20").await, 0);

    // Evergreen's flaw, reproduced: the audit rows written before the purge are
    // gone, but the purge's own UPDATEs of actor.usr wrote new ones holding the
    // original name, e-mail, phone, ident value and full birth date.
    assert_eq!(
        db.count(&format!(
            "auditor.actor_usr_history WHERE id = 20 AND audit_id <= {first_new_audit}"
        ))
        .await,
        0
    );
    let leaked = db
        .count(
            "auditor.actor_usr_history WHERE id = 20 AND first_given_name = 'CanaryGiven' \
             AND family_name = 'CanaryFamily' AND email = 'canary@example.org' AND ident_value = 'CANARY-ID' \
             AND day_phone = '555-0100 CANARY' AND dob = '1990-05-06'",
        )
        .await;
    assert_eq!(
        leaked, 2,
        "one row from usr_purge_data's UPDATE, one from usr_delete's"
    );
    // And the address history is deleted by address id = user id (sic), so the
    // address's 'D' row with the street stays.
    assert_eq!(
        db.count("auditor.actor_usr_address_history WHERE id = 30 AND audit_action = 'D' AND street1 = '1 Canary Street'")
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn usr_delete_repoints_staff_references() {
    let Some(db) = scenario().await else { return };
    db.exec("SELECT actor.usr_delete(10, 1)").await;
    assert_eq!(
        db.count("action.circulation WHERE circ_staff = 10 OR checkin_staff = 10")
            .await,
        0
    );
    assert_eq!(
        db.count("action.circulation WHERE id = 100 AND circ_staff = 1")
            .await,
        1
    );
    assert_eq!(
        db.count("action.circulation WHERE id = 101 AND checkin_staff = 1")
            .await,
        1
    );
    assert_eq!(
        db.count("action.hold_request WHERE id = 200 AND fulfillment_staff = 1")
            .await,
        1
    );
    assert_eq!(
        db.count("action.hold_request WHERE id = 201 AND requestor = 1")
            .await,
        1
    );
    assert_eq!(
        db.count("permission.usr_work_ou_map WHERE usr = 10").await,
        0
    );
    assert_eq!(
        db.count("actor.usr WHERE id = 10 AND deleted AND usrname LIKE '10-PURGED-%'")
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn circulations_are_billable_xacts_through_inheritance() {
    let Some(db) = scenario().await else { return };
    db.exec(
        "INSERT INTO money.grocery (id, usr, xact_start, billing_location, note) VALUES (300, 20, now(), 3, 'Printing'); \
         INSERT INTO money.billing (xact, amount, billing_type, btype) VALUES (300, 0.50, 'Printing', 1);",
    )
    .await;
    assert_eq!(db.count("money.billable_xact WHERE usr = 20").await, 4);
    assert_eq!(db.count("ONLY money.billable_xact WHERE usr = 20").await, 0);
    assert_eq!(
        db.count("money.billable_xact_summary WHERE usr = 20 AND xact_finish IS NULL AND xact_type = 'grocery' AND balance_owed = 0.50")
            .await,
        1
    );
    assert_eq!(
        db.count("money.billable_xact_summary WHERE usr = 20 AND xact_type = 'circulation'")
            .await,
        3
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn circ_history_follows_the_patron_setting() {
    let Some(db) = scenario().await else { return };
    // One row per chain, carrying the last renewal's due date and check-in time.
    assert_eq!(
        db.count(
            "action.usr_circ_history WHERE usr = 20 AND source_circ = 100 AND target_copy = 60 \
             AND xact_start = '2024-01-02 10:00+00' AND due_date = '2024-02-26 23:59:59+00' \
             AND checkin_time = '2024-02-20 10:00+00'"
        )
        .await,
        1
    );
    assert_eq!(db.count("action.usr_circ_history").await, 1);
    // A patron without the setting gets none.
    db.exec(
        "INSERT INTO action.circulation (id, usr, xact_start, target_copy, circ_lib, circ_staff, renewal_remaining, \
         grace_period, due_date, duration_rule, recurring_fine_rule, max_fine_rule) \
         VALUES (110, 10, now(), 61, 3, 10, 2, '1 day', now() + '21 days', 'default', 'default', 'default')",
    )
    .await;
    assert_eq!(db.count("action.usr_circ_history WHERE usr = 10").await, 0);
    // Settings are JSON text.
    assert_eq!(
        text(
            &db,
            "SELECT evergreen.oils_json_to_text(value) FROM actor.usr_setting WHERE usr = 20"
        )
        .await,
        Some("2020-01-01".to_string())
    );
}

// ---------------------------------------------------------------------------
// The generator

fn today() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 6, 15).unwrap()
}

fn small(seed: u64) -> EvergreenOptions {
    EvergreenOptions {
        seed,
        patrons: 400,
        circulations: 8000,
        holds: 1600,
        aged_chains: 150,
        aged_holds: 80,
        today: today(),
    }
}

/// MD5 per table over the generated rows: everything but the fixture's own
/// administrator row (its dates are the load time) and actor.usr.last_update_time
/// (Evergreen's trigger sets it to the load time).
async fn checksum(db: &TestDb) -> Vec<(&'static str, String)> {
    const PARTS: &[(&str, &str)] = &[
        (
            "actor.usr",
            "concat_ws(',', id, card, profile, usrname, email, passwd, first_given_name, family_name, dob, day_phone, mailing_address, home_ou, expire_date, create_date, deleted, super_user, usrgroup, name_kw_tsvector) FROM actor.usr WHERE id <> 1 ORDER BY id",
        ),
        (
            "actor.usr_address",
            "concat_ws(',', id, usr, street1, post_code, pending) FROM actor.usr_address ORDER BY id",
        ),
        (
            "actor.card",
            "concat_ws(',', id, usr, barcode, active) FROM actor.card ORDER BY id",
        ),
        (
            "action.circulation",
            "concat_ws(',', id, usr, xact_start, xact_finish, target_copy, checkin_time, circ_staff, parent_circ, stop_fines, copy_location) FROM action.circulation ORDER BY id",
        ),
        (
            "action.aged_circulation",
            "concat_ws(',', id, usr_post_code, usr_birth_year, xact_start, parent_circ) FROM action.aged_circulation ORDER BY id",
        ),
        (
            "action.hold_request",
            "concat_ws(',', id, usr, requestor, request_time, fulfillment_time, cancel_time, cancel_cause, phone_notify) FROM action.hold_request ORDER BY id",
        ),
        (
            "action.aged_hold_request",
            "concat_ws(',', id, usr_post_code, request_time) FROM action.aged_hold_request ORDER BY id",
        ),
        (
            "action.usr_circ_history",
            "concat_ws(',', id, usr, xact_start, due_date, checkin_time, source_circ) FROM action.usr_circ_history ORDER BY id",
        ),
        (
            "actor.usr_setting",
            "concat_ws(',', id, usr, name, value) FROM actor.usr_setting ORDER BY id",
        ),
        (
            "money.billing",
            "concat_ws(',', id, xact, amount, btype, billing_ts) FROM money.billing ORDER BY id",
        ),
        (
            "money.payment",
            "concat_ws(',', id, xact, amount, payment_ts) FROM money.payment ORDER BY id",
        ),
        (
            "auditor.actor_usr_history",
            "concat_ws(',', audit_id, audit_time, audit_action, audit_user, id, email, family_name, day_phone, deleted) FROM auditor.actor_usr_history WHERE id <> 1 ORDER BY audit_id",
        ),
        (
            "auditor.actor_usr_address_history",
            "concat_ws(',', audit_id, audit_time, id, street1, post_code) FROM auditor.actor_usr_address_history ORDER BY audit_id",
        ),
    ];
    let mut out = Vec::new();
    for (name, rows) in PARTS {
        let sum = text(
            db,
            &format!("SELECT md5(COALESCE(string_agg(r, ';'), '')) FROM (SELECT {rows}) AS t(r)"),
        )
        .await
        .unwrap();
        out.push((*name, sum));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn generator_is_deterministic() {
    let Some(a) = TestDb::postgres(&ddl()).await else {
        return;
    };
    let Some(b) = TestDb::postgres(&ddl()).await else {
        return;
    };
    let Some(c) = TestDb::postgres(&ddl()).await else {
        return;
    };
    let sa = evergreen::populate(pool(&a), &small(7)).await.unwrap();
    let sb = evergreen::populate(pool(&b), &small(7)).await.unwrap();
    let sc = evergreen::populate(pool(&c), &small(8)).await.unwrap();
    assert_eq!(sa, sb);
    assert_eq!(checksum(&a).await, checksum(&b).await);
    assert_ne!(checksum(&a).await, checksum(&c).await);
    assert_ne!(sa, sc);
    // Every row asked for went in; the aged ones are no longer in action.*.
    assert_eq!(sa.patrons, 400);
    assert_eq!(sa.circulations + sa.aged_circulations, 8000);
    assert_eq!(sa.holds + sa.aged_holds, 1600);
    assert_eq!(sa.aged_chains, 150);
    assert_eq!(sa.aged_holds, 80);
    // A second run on a filled database is refused and changes nothing.
    let again = evergreen::populate(pool(&a), &small(7)).await;
    assert!(
        matches!(again, Err(sqlx::Error::InvalidArgument(_))),
        "{again:?}"
    );
    let tiny = EvergreenOptions {
        patrons: 3,
        ..small(7)
    };
    assert!(evergreen::populate(pool(&a), &tiny).await.is_err());
    assert_eq!(a.count("actor.usr").await, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn generator_produces_the_mix() {
    let Some(db) = TestDb::postgres(&ddl()).await else {
        return;
    };
    let s = evergreen::populate(pool(&db), &small(4509)).await.unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&s).unwrap());

    // Renewal chains: about 20 % have 1-3 renewals, linked by parent_circ.
    let share = s.chains_with_renewals as f64 / s.chains as f64;
    assert!((0.12..0.28).contains(&share), "{share}");
    assert_eq!(
        db.int(
            "WITH RECURSIVE ch(head, id, n) AS ( \
               SELECT id, id, 1 FROM action.circulation WHERE parent_circ IS NULL \
               UNION ALL SELECT ch.head, c.id, ch.n + 1 FROM action.circulation c JOIN ch ON c.parent_circ = ch.id) \
             SELECT max(n) FROM ch"
        )
        .await,
        Some(4)
    );
    // Renewed circulations are checked in with stop_fines RENEW at the renewal's start.
    assert_eq!(
        db.count(
            "action.circulation c JOIN action.circulation r ON r.parent_circ = c.id \
             WHERE c.stop_fines IS DISTINCT FROM 'RENEW' OR c.checkin_time IS DISTINCT FROM r.xact_start"
        )
        .await,
        0
    );
    // OPAC renewals carry the patron as circ_staff, as Evergreen records them.
    assert!(
        db.count("action.circulation WHERE opac_renewal AND circ_staff = usr")
            .await
            > 0
    );
    // States: still out, returned with money owed, finished.
    assert!(
        s.open_circulations > 0 && s.returned_unfinished > 0,
        "{s:?}"
    );
    assert!(
        db.count("action.circulation WHERE xact_finish IS NOT NULL")
            .await
            > s.circulations / 2
    );
    assert!(
        db.count("action.circulation WHERE stop_fines = 'LOST' AND xact_finish IS NULL")
            .await
            > 0
    );
    assert_eq!(
        db.count(
            "action.circulation c WHERE c.checkin_time IS NOT NULL AND c.xact_finish IS NULL \
             AND NOT EXISTS (SELECT 1 FROM money.billing b WHERE b.xact = c.id)"
        )
        .await,
        0,
        "a returned but unfinished circulation has a bill"
    );
    assert!(s.payments > 0 && s.groceries > 0);
    // Six years of history before today, nothing after it but due and expiry dates.
    assert_eq!(
        db.count(
            "action.circulation WHERE xact_start >= '2026-06-15' OR checkin_time >= '2026-06-15'"
        )
        .await,
        0
    );
    assert_eq!(
        db.count("action.circulation WHERE xact_start < '2020-06-01'")
            .await,
        0
    );
    assert!(
        db.count("action.circulation WHERE xact_start < '2021-06-15'")
            .await
            > 0
    );
    assert!(
        db.count("action.circulation WHERE checkin_time IS NOT NULL AND checkin_time < xact_start")
            .await
            == 0
    );
    // Staff: work-ou maps, a super user besides the administrator.
    assert!(s.staff >= 3 && s.super_users >= 2, "{s:?}");
    // Expired years ago, some still owing or waiting.
    assert!(s.long_expired_patrons > 0);
    assert!(
        s.long_expired_with_open_xact > 0 && s.long_expired_with_pending_hold > 0,
        "{s:?}"
    );
    assert!(s.deleted_patrons > 0);
    // History opt-in and its leftovers.
    assert!(
        s.circ_history_opted_in > 0 && s.circ_history_with_age > 0,
        "{s:?}"
    );
    assert!(s.circ_history_orphaned_patrons > 0, "{s:?}");
    assert!(s.hold_history_opted_in > 0);
    assert!(s.circ_history > 0);
    // Settings are Evergreen's JSON: dates and intervals as JSON strings.
    assert_eq!(
        db.count("actor.usr_setting WHERE name LIKE 'history.%.retention_start' AND value !~ '^\"[0-9]{4}-[0-9]{2}-[0-9]{2}\"$'")
            .await,
        0
    );
    assert_eq!(
        db.count("actor.usr_setting WHERE name LIKE 'history.%.retention_age' AND evergreen.oils_json_to_text(value)::interval IS NULL")
            .await,
        0
    );
    assert!(
        db.count("actor.usr_setting WHERE value = '\"6 months\"'")
            .await
            > 0
    );
    // Holds across the years, in all states; aged ones without the patron.
    assert!(
        s.pending_holds > 0 && s.fulfilled_holds > 0 && s.canceled_holds > 0,
        "{s:?}"
    );
    assert!(db.count("action.hold_request WHERE requestor <> usr").await > 0);
    assert!(
        db.count("action.aged_hold_request WHERE usr_post_code IS NOT NULL")
            .await
            > 0
    );
    // Aged chains are whole, with aggregates; Southern Hills (system 3) drops birth years.
    assert_eq!(
        db.count("action.aged_circulation a WHERE EXISTS (SELECT 1 FROM action.circulation c WHERE c.id = a.parent_circ OR c.parent_circ = a.id)")
            .await,
        0
    );
    assert!(
        db.count("action.aged_circulation WHERE usr_birth_year IS NOT NULL")
            .await
            > 0
    );
    assert_eq!(
        db.count(
            "action.aged_circulation WHERE usr_home_ou IN (7, 8, 9) AND usr_birth_year IS NOT NULL"
        )
        .await,
        0
    );
    // Addresses with post codes, cards with barcodes, auditor rows with old values.
    assert!(s.addresses > 0 && s.cards > s.patrons);
    assert_eq!(
        db.count("actor.usr WHERE id <> 1 AND card IS NULL").await,
        0
    );
    assert!(s.audit_usr_rows > 10 && s.audit_address_rows > 0, "{s:?}");
    assert_eq!(
        db.count("auditor.actor_usr_history WHERE id <> 1 AND (audit_time >= '2026-06-15' OR audit_user IS NULL)").await,
        0
    );
    // Canaries in personal columns, so a test can grep for them.
    for (table, column) in [
        ("actor.usr", "usrname"),
        ("actor.usr", "first_given_name"),
        ("actor.usr", "family_name"),
        ("actor.usr", "email"),
        ("actor.usr", "day_phone"),
        ("actor.usr", "ident_value"),
        ("actor.usr_address", "street1"),
        ("actor.card", "barcode"),
        ("action.hold_request", "phone_notify"),
        ("auditor.actor_usr_history", "email"),
        ("auditor.actor_usr_address_history", "street1"),
    ] {
        let (with, without): (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FILTER (WHERE {column} LIKE '%' || $1 || '%'), \
                    count(*) FILTER (WHERE {column} NOT LIKE '%' || $1 || '%') FROM {table} WHERE {}",
            if table == "actor.usr" || table == "auditor.actor_usr_history" { "id <> 1" } else if table == "actor.card" { "usr <> 1" } else { "TRUE" }
        )))
        .bind(CANARY)
        .fetch_one(pool(&db))
        .await
        .unwrap();
        assert!(with > 0, "{table}.{column} has no canary");
        assert_eq!(without, 0, "{table}.{column} has values without the canary");
    }
}

/// The standard population (5,000 patrons, 200,000 circulations) loads in well
/// under a minute (measured; printed with --nocapture).
#[tokio::test(flavor = "multi_thread")]
async fn standard_population_loads() {
    let Some(db) = TestDb::postgres(&ddl()).await else {
        return;
    };
    let started = std::time::Instant::now();
    let s = evergreen::populate(pool(&db), &EvergreenOptions::standard(today()))
        .await
        .unwrap();
    let took = started.elapsed();
    eprintln!("standard Evergreen population loaded in {took:.1?}: {s:?}");
    assert_eq!(s.patrons, 5000);
    assert_eq!(s.circulations + s.aged_circulations, 200_000);
    assert_eq!(s.aged_chains, 2000);
    // The load time is printed, not asserted: speed belongs in benchmarks (a loaded CI
    // machine once took longer than a fixed bound).
}
