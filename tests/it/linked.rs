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
    let cfg = config_with_profile(
        &db.url,
        "none",
        &visits_class("action: anonymize\n    anonymize: { member_id: { set_value: 0 } }"),
    );
    let r = run_at(&cfg, now(), false).await;
    assert_eq!(r.status, RunStatus::Ok);
    assert_eq!(class(&r, "visits").affected, 2);
    assert_eq!(
        authors(&db).await,
        [Some(0), Some(20), Some(0), Some(10), Some(10), Some(10)]
    );
    // A second run: the visits are anonymized, nothing else changes.
    assert_eq!(
        class(&run_at(&cfg, now(), false).await, "visits").affected,
        0
    );
    assert_eq!(
        authors(&db).await,
        [Some(0), Some(20), Some(0), Some(10), Some(10), Some(10)]
    );
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
    assert_eq!(
        authors(&db).await,
        [None, Some(20), None, Some(10), Some(10), Some(10)]
    );
}
