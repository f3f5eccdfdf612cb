//! `linked:` on a schema mapped in YAML, on SQLite, MariaDB and PostgreSQL: rows of
//! another table that point at a changed row and name its patron lose that patron in
//! the batch's transaction (Koha's `checkout_renewals`, in tests/it/engine.rs); rows
//! naming someone else, and rows of rows that are kept, stay.

use crate::common::*;
use crate::engine::{class, run_at};
use lethe::summary::RunStatus;

const SQLITE: &str = "CREATE TABLE visits (id INTEGER PRIMARY KEY, member_id INT NULL, left_at DATETIME NULL); \
     CREATE TABLE visit_notes (id INTEGER PRIMARY KEY, visit_id INT NULL, author_id INT NULL); \
     CREATE INDEX visit_notes_author ON visit_notes (author_id)";
const MYSQL: &str = "CREATE TABLE visits (id INT NOT NULL PRIMARY KEY, member_id INT NULL, left_at DATETIME NULL) ENGINE=InnoDB; \
     CREATE TABLE visit_notes (id INT NOT NULL PRIMARY KEY, visit_id INT NULL, author_id INT NULL, KEY visit_notes_author (author_id)) ENGINE=InnoDB";
const PG: &str = "CREATE TABLE visits (id INTEGER PRIMARY KEY, member_id INTEGER NULL, left_at TIMESTAMP NULL); \
     CREATE TABLE visit_notes (id INTEGER PRIMARY KEY, visit_id INTEGER NULL, author_id INTEGER NULL); \
     CREATE INDEX visit_notes_author ON visit_notes (author_id)";

fn visits_class(action: &str) -> String {
    format!(
        "classes:\n  visits:\n    table: visits\n    key: id\n    patron: member_id\n    \
         age: {{ columns: [left_at], type: datetime }}\n    retain: 30 days\n    {action}\n    \
         scope:\n      - {{ column: member_id, not_null: true }}\n    \
         linked:\n      - {{ table: visit_notes, column: visit_id, patron: author_id }}\n"
    )
}

/// Visits 1 and 2 are past their period (member 10 and 11), visit 3 is not (member
/// 10). Notes: 10 on visit 1 (rewritten), 20 on visit 1 (someone else: kept), 11 on
/// visit 2 (rewritten), 10 on visit 2 (member 10 wrote on member 11's visit: kept), 10
/// on visit 3 (kept with its visit), 10 on a visit that does not exist (kept).
async fn seed(db: &TestDb) {
    for (id, member, left) in [
        (1, 10, "2020-01-01 10:00:00"),
        (2, 11, "2020-02-01 10:00:00"),
        (3, 10, "2026-06-10 10:00:00"),
    ] {
        db.insert(
            "visits",
            &[
                ("id", i(id)),
                ("member_id", i(member)),
                ("left_at", s(left)),
            ],
        )
        .await;
    }
    for (id, visit, author) in [
        (1, 1, 10),
        (2, 1, 20),
        (3, 2, 11),
        (4, 2, 10),
        (5, 3, 10),
        (6, 99, 10),
    ] {
        db.insert(
            "visit_notes",
            &[
                ("id", i(id)),
                ("visit_id", i(visit)),
                ("author_id", i(author)),
            ],
        )
        .await;
    }
}

/// The notes' authors after the past visits were anonymized (member id 0): notes 1 and
/// 3 rewritten, the rest kept (see [`seed`]).
const ANONYMIZED: [Option<i64>; 6] = [Some(0), Some(20), Some(0), Some(10), Some(10), Some(10)];
/// The same after the past visits were deleted or pseudonymized: notes 1 and 3 cleared.
const CLEARED: [Option<i64>; 6] = [None, Some(20), None, Some(10), Some(10), Some(10)];

/// The class anonymizing visits to member id 0.
fn anonymize_config(db: &TestDb) -> lethe::config::Config {
    config_with_profile(
        &db.url,
        "none",
        &visits_class("action: anonymize\n    anonymize: { member_id: { set_value: 0 } }"),
    )
}

async fn authors(db: &TestDb) -> Vec<Option<i64>> {
    let mut out = Vec::new();
    for id in 1..=6 {
        out.push(
            db.int(&format!(
                "SELECT author_id FROM visit_notes WHERE id = {id}"
            ))
            .await,
        );
    }
    out
}

three_backends_with!(
    anonymize_gives_linked_rows_the_same_value,
    super::SQLITE,
    super::MYSQL,
    super::PG
);
async fn anonymize_gives_linked_rows_the_same_value(db: TestDb) {
    seed(&db).await;
    let cfg = anonymize_config(&db);
    let r = run_at(&cfg, now(), false).await;
    assert_eq!(r.status, RunStatus::Ok);
    assert_eq!(class(&r, "visits").affected, 2);
    assert_eq!(authors(&db).await, ANONYMIZED);
    // A second run: the visits are anonymized, nothing else changes.
    assert_eq!(
        class(&run_at(&cfg, now(), false).await, "visits").affected,
        0
    );
    assert_eq!(authors(&db).await, ANONYMIZED);
}

three_backends_with!(
    delete_clears_linked_rows,
    super::SQLITE,
    super::MYSQL,
    super::PG
);
async fn delete_clears_linked_rows(db: TestDb) {
    seed(&db).await;
    let cfg = config_with_profile(&db.url, "none", &visits_class("action: delete"));
    let r = run_at(&cfg, now(), false).await;
    assert_eq!(r.status, RunStatus::Ok);
    assert_eq!(class(&r, "visits").affected, 2);
    assert_eq!(db.count("visits").await, 1);
    assert_eq!(authors(&db).await, CLEARED);
}

/// The first time the batch rewrites note 1, the rewrite is undone (a stand-in for a
/// linked row that still names the patron when the class's own statement runs: one
/// written, or made eligible, between the two statements of the batch).
const UNDO_SQLITE: &str = "CREATE TABLE fired (n INT); \
     CREATE TRIGGER undo_note AFTER UPDATE OF author_id ON visit_notes \
     WHEN NEW.id = 1 AND NOT EXISTS (SELECT 1 FROM fired) BEGIN \
     INSERT INTO fired VALUES (1); UPDATE visit_notes SET author_id = OLD.author_id WHERE id = 1; END";
const UNDO_MYSQL: &str = "CREATE TABLE fired (n INT) ENGINE=InnoDB; \
     CREATE TRIGGER undo_note BEFORE UPDATE ON visit_notes FOR EACH ROW BEGIN \
     IF NEW.id = 1 AND NOT EXISTS (SELECT 1 FROM fired) THEN \
     INSERT INTO fired VALUES (1); SET NEW.author_id = OLD.author_id; END IF; END";
const UNDO_PG: &str = "CREATE TABLE fired (n INT); \
     CREATE FUNCTION undo_note() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
     IF NEW.id = 1 AND NOT EXISTS (SELECT 1 FROM fired) THEN \
     INSERT INTO fired VALUES (1); NEW.author_id := OLD.author_id; END IF; RETURN NEW; END $$; \
     CREATE TRIGGER undo_note BEFORE UPDATE ON visit_notes FOR EACH ROW EXECUTE FUNCTION undo_note()";

three_backends_with!(
    a_row_whose_linked_rows_still_name_its_patron_waits_for_them,
    super::SQLITE,
    super::MYSQL,
    super::PG
);
/// The one-statement form's guard: visit 1 is not anonymized while note 1 still names
/// its member; the next round rewrites the note, then the visit. Without the guard the
/// visit lost its member and the note kept it.
async fn a_row_whose_linked_rows_still_name_its_patron_waits_for_them(db: TestDb) {
    seed(&db).await;
    db.exec(match db.raw {
        Raw::Sqlite(_) => UNDO_SQLITE,
        Raw::MySql(_) => UNDO_MYSQL,
        Raw::Postgres(_) => UNDO_PG,
    })
    .await;
    let cfg = anonymize_config(&db);
    let r = run_at(&cfg, now(), false).await;
    assert_eq!(r.status, RunStatus::Ok);
    assert_eq!(class(&r, "visits").affected, 2);
    assert_eq!(db.int("SELECT COUNT(*) FROM fired").await, Some(1));
    assert_eq!(authors(&db).await, ANONYMIZED);
    assert_eq!(
        db.int("SELECT COUNT(*) FROM visits WHERE member_id = 0")
            .await,
        Some(2)
    );
}

three_backends_with!(
    pseudonymize_clears_linked_rows,
    super::SQLITE,
    super::MYSQL,
    super::PG
);
/// Pseudonymize takes the key-list form (it looks up each batch's pseudonyms): the
/// linked rows lose the patron there too, and are not given the pseudonym.
async fn pseudonymize_clears_linked_rows(db: TestDb) {
    seed(&db).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("pseudonym.key");
    std::fs::write(
        &key_file,
        "5f1d2c3b4a596877869504a3b2c1d0e9f8a7b6c5d4e3f2a1",
    )
    .expect("key file");
    let cfg = config_with_profile(
        &db.url,
        "none",
        &format!(
            "pseudonyms: {{ key_file: \"{}\" }}\n{}",
            key_file.display(),
            visits_class("action: pseudonymize\n    pseudonymize: { member_id: pseudonym }")
        ),
    );
    let r = run_at(&cfg, now(), false).await;
    assert_eq!(r.status, RunStatus::Ok);
    assert_eq!(class(&r, "visits").affected, 2);
    assert_eq!(authors(&db).await, CLEARED);
    assert_eq!(db.count("visits WHERE member_id < 0").await, 2);
}

three_backends_with!(
    the_link_column_is_advised_an_index_then_used,
    super::SQLITE,
    super::MYSQL,
    super::PG
);
/// `check`'s advice names `visit_notes.visit_id` (as it names Koha's
/// `checkout_renewals.checkout_id`, which Koha leaves unindexed); once the index is
/// created the advice is gone and a run finds the linked rows by it, with the same
/// result as through the patrons.
async fn the_link_column_is_advised_an_index_then_used(db: TestDb) {
    use lethe::inventory::{IndexPurpose, create_indexes, index_advice};
    seed(&db).await;
    let cfg = anonymize_config(&db);
    let conn = lethe::db::Db::connect_url(
        db.backend,
        &db.url,
        "test",
        std::time::Duration::from_secs(30),
    )
    .await
    .expect("connect");
    let advice = index_advice(&cfg, &conn).await.expect("advice");
    let linked: Vec<_> = advice
        .iter()
        .filter(|a| a.purpose == IndexPurpose::Linked)
        .collect();
    assert_eq!(linked.len(), 1, "{advice:?}");
    assert_eq!(linked[0].target(), "visit_notes.visit_id");
    assert_eq!(linked[0].index, "lethe_visit_notes_visit_id");
    assert_eq!(linked[0].class, "visits");
    assert!(linked[0].statement.is_some(), "{advice:?}");
    let created = create_indexes(&conn, &advice).await.expect("create");
    assert!(
        created
            .iter()
            .any(|c| c.advice.index == "lethe_visit_notes_visit_id"),
        "{created:?}"
    );
    let again = index_advice(&cfg, &conn).await.expect("advice");
    assert!(again.is_empty(), "{again:?}");
    conn.close().await;

    let r = run_at(&cfg, now(), false).await;
    assert_eq!(r.status, RunStatus::Ok);
    assert_eq!(class(&r, "visits").affected, 2);
    assert_eq!(authors(&db).await, ANONYMIZED);
}
