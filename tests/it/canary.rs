//! The canary across every table (issue 4): on MariaDB, with the project's fixture or,
//! when `LETHE_KOHA_DDL` names it, Koha's own kohastructure.sql, three patrons who
//! refused the processing of their data long ago (`patron_consent`, GDPR_PROCESSING)
//! have a row in every table that names a patron, every personal text column of those
//! rows holds a canary (`CANARY-4F7Q-<column>`, `CANARY-HOLD-<column>`,
//! `CANARY-RFSD-<column>`), their borrowernumbers are in every patron-link column, and
//! every row is older than its class's period. The first two are also expired; the
//! second is under a legal hold (`lethe hold add`); the third's card is valid, so only
//! `refused_processing` deletes them. The tables are those of the profile's classes and
//! those whose rows Koha deletes with the patron by foreign key (`messages`,
//! `borrower_attributes`, `borrower_debarments`, `illcomments`, `article_requests`,
//! `tickets`, `ticket_updates`; `checkout_renewals.renewer_id` is set NULL), so the test
//! proves those cascades too. One `lethe run --once` of the real binary with the
//! shipped `retention.yaml` (every class named) must leave:
//!
//! * no trace of the first and third patrons: no text column of any table
//!   (information_schema, Lethe's own tables included) holds their canary, and no
//!   patron-link column their number;
//! * every row of the held patron as it was, except the two kinds of row that no
//!   longer name a patron and so cannot be held: a self-registration never confirmed
//!   (`borrower_modifications` with borrowernumber 0) and a pseudonymized transaction;
//! * neither canary in stdout or stderr (debug logs, text and JSON), the report in the
//!   outbox, the ledger tables or `lethe ledger export` (JSON and CSV).
//!
//! A second run changes nothing and the held patron's rows are still there.
//!
//! Which text columns are personal: in tables whose rows a class deletes (or that go
//! with the patron), every character column that is not a code the rules read (branch,
//! category, module, status, type) nor a foreign key; in tables a class anonymizes
//! (the row stays), the free text written by or about the patron: `old_issues.note`,
//! `old_reserves.reservenotes`, `statistics.other`, `accountlines.note`,
//! `suggestions.note`/`patronreason`/`staff_note`, `illrequests.notesopac`/`notesstaff`.
//! Bibliographic text (a suggested title, a fine's description naming the item) gets no
//! canary there, nor `patron_consent.type` (the consent type the rule reads).
//! Columns shorter than the canary's prefix cannot hold it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Output;

use sqlx::{AssertSqlSafe, Row};

use crate::cli::{json, lethe};
use crate::common::*;

/// The expired patron with nothing to keep them: every trace must go.
const GONE: Patron = Patron {
    bn: 4711,
    canary: "CANARY-4F7Q",
    item: 2,
    expiry: "2020-01-01",
};
/// The expired patron under a legal hold: every trace linked to them must stay.
const HELD: Patron = Patron {
    bn: 4712,
    canary: "CANARY-HOLD",
    item: 3,
    expiry: "2020-01-01",
};
/// A patron whose card is still valid but who refused processing long ago: deleted by
/// `refused_processing`, so every trace must go too.
const REFUSED: Patron = Patron {
    bn: 4713,
    canary: "CANARY-RFSD",
    item: 4,
    expiry: "2099-12-31",
};
/// A staff member (managed the suggestion, issued the checkout).
const STAFF: i64 = 2;

#[derive(Clone, Copy)]
struct Patron {
    bn: i64,
    canary: &'static str,
    item: i64,
    /// borrowers.dateexpiry.
    expiry: &'static str,
}

/// Which text columns of a table get the canary.
#[derive(Clone, Copy)]
enum Personal {
    /// Every character column except these (and foreign keys, enums, short columns).
    AllExcept(&'static [&'static str]),
    /// Only these (the ones the schema has).
    Only(&'static [&'static str]),
}

/// (table, personal columns) for every table a seeded row goes into.
const PERSONAL: &[(&str, Personal)] = &[
    (
        "borrowers",
        Personal::AllExcept(&["branchcode", "categorycode", "sex", "lang"]),
    ),
    ("old_issues", Personal::Only(&["note"])),
    ("old_reserves", Personal::Only(&["reservenotes"])),
    ("statistics", Personal::Only(&["other"])),
    (
        "message_queue",
        Personal::AllExcept(&["message_transport_type", "status"]),
    ),
    ("action_logs", Personal::AllExcept(&["module"])),
    ("search_history", Personal::AllExcept(&["type"])),
    (
        "deletedborrowers",
        Personal::AllExcept(&["branchcode", "categorycode", "sex", "lang"]),
    ),
    (
        "borrower_modifications",
        Personal::AllExcept(&["branchcode", "categorycode", "sex", "lang"]),
    ),
    ("accountlines", Personal::Only(&["note"])),
    (
        "suggestions",
        Personal::Only(&["note", "patronreason", "staff_note"]),
    ),
    ("illrequests", Personal::Only(&["notesopac", "notesstaff"])),
    ("return_claims", Personal::AllExcept(&["resolution"])),
    ("items_last_borrower", Personal::Only(&[])),
    (
        "pseudonymized_transactions",
        Personal::AllExcept(&[
            "categorycode",
            "branchcode",
            "transaction_branchcode",
            "transaction_type",
            "itemtype",
            "holdingbranch",
            "homebranch",
            "location",
            "itemcallnumber",
            "ccode",
            "sex",
        ]),
    ),
    ("patron_consent", Personal::AllExcept(&["type"])),
    // Gone with the patron by ON DELETE CASCADE (checkout_renewals: SET NULL).
    ("messages", Personal::AllExcept(&["message_type"])),
    ("borrower_attributes", Personal::Only(&["attribute"])),
    ("borrower_debarments", Personal::AllExcept(&[])),
    ("illcomments", Personal::Only(&["comment"])),
    ("article_requests", Personal::AllExcept(&[])),
    ("tickets", Personal::AllExcept(&["status"])),
    ("ticket_updates", Personal::AllExcept(&["status"])),
    ("checkout_renewals", Personal::AllExcept(&["interface"])),
];

/// Patron-link columns without a foreign key to `borrowers` (the ones with one are
/// read from the catalog).
const LINKS_WITHOUT_FK: &[(&str, &str)] = &[
    ("statistics", "borrowernumber"),
    ("action_logs", "object"),
    ("action_logs", "user"),
    ("search_history", "userid"),
    ("deletedborrowers", "borrowernumber"),
    ("borrower_modifications", "borrowernumber"),
];

/// (table, column) → rows holding a canary.
type Cells = BTreeMap<(String, String), i64>;

fn pool(db: &TestDb) -> &sqlx::MySqlPool {
    match &db.raw {
        Raw::MySql(p) => p,
        _ => unreachable!("the canary runs on MariaDB"),
    }
}

async fn strings(db: &TestDb, sql: &str, binds: &[&str]) -> Vec<Vec<Option<String>>> {
    let mut q = sqlx::query(AssertSqlSafe(sql.to_string()));
    for b in binds {
        q = q.bind(*b);
    }
    q.fetch_all(pool(db))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| {
            (0..r.len())
                .map(|i| r.get::<Option<String>, _>(i))
                .collect()
        })
        .collect()
}

/// The character columns of `table` that can hold a canary of `len` characters:
/// (name, maximum length), foreign keys and enums left out.
async fn text_columns(db: &TestDb, table: &str, len: usize) -> Vec<(String, i64)> {
    let rows = strings(
        db,
        "SELECT CAST(c.column_name AS CHAR), CAST(c.character_maximum_length AS CHAR) \
         FROM information_schema.columns c WHERE c.table_schema = DATABASE() AND c.table_name = ? \
         AND c.data_type IN ('char', 'varchar', 'tinytext', 'text', 'mediumtext', 'longtext') \
         AND NOT EXISTS (SELECT 1 FROM information_schema.key_column_usage k \
           WHERE k.table_schema = c.table_schema AND k.table_name = c.table_name \
           AND k.column_name = c.column_name AND k.referenced_table_name IS NOT NULL) \
         ORDER BY c.ordinal_position",
        &[table],
    )
    .await;
    rows.into_iter()
        .filter_map(|r| {
            let name = r[0].clone()?;
            let max: i64 = r[1].as_deref()?.parse().ok()?;
            (max > len as i64).then_some((name, max))
        })
        .collect()
}

/// The personal columns of `table` in this schema.
async fn personal_columns(db: &TestDb, table: &str, len: usize) -> Vec<(String, i64)> {
    let spec = PERSONAL
        .iter()
        .find(|(t, _)| *t == table)
        .map(|(_, p)| *p)
        .unwrap_or_else(|| panic!("no personal columns listed for {table}"));
    text_columns(db, table, len)
        .await
        .into_iter()
        .filter(|(c, _)| match spec {
            Personal::AllExcept(not) => !not.contains(&c.as_str()),
            Personal::Only(only) => only.contains(&c.as_str()),
        })
        .collect()
}

/// Inserts a row of `table`: `values`, plus the canary in every personal column
/// (`<canary>-<column>`, cut to the column's length). Counts the canary cells in `cells`.
async fn row(db: &TestDb, p: Patron, cells: &mut Cells, table: &str, values: &[(&str, V)]) {
    let mut all: Vec<(String, V)> = values
        .iter()
        .map(|(c, v)| (c.to_string(), v.clone()))
        .collect();
    for (col, max) in personal_columns(db, table, p.canary.len()).await {
        let mut value = format!("{}-{col}", p.canary);
        value.truncate(max as usize);
        all.retain(|(c, _)| *c != col);
        all.push((col.clone(), V::S(value)));
        *cells.entry((table.to_string(), col)).or_default() += 1;
    }
    let refs: Vec<(&str, V)> = all.iter().map(|(c, v)| (c.as_str(), v.clone())).collect();
    db.insert(table, &refs).await;
}

/// What a patron's seeded rows hold: all canary cells, and those in rows that name no
/// patron (a hold cannot keep them).
struct Seeded {
    cells: Cells,
    unlinked: Cells,
}

/// One expired patron with a row, older than its class's period, in every table that
/// names a patron.
async fn seed(db: &TestDb, p: Patron) -> Seeded {
    let mut cells = Cells::new();
    let bn = p.bn;
    let old = |d: &str| s(d);
    row(
        db,
        p,
        &mut cells,
        "borrowers",
        &[
            ("borrowernumber", i(bn)),
            ("branchcode", s("MAIN")),
            ("categorycode", s("PT")),
            ("dateenrolled", old("2015-01-01")),
            ("dateexpiry", s(p.expiry)),
            ("privacy", i(1)),
            ("flags", i(0)),
            ("protected", i(0)),
        ],
    )
    .await;
    row(
        db,
        p,
        &mut cells,
        "old_issues",
        &[
            ("issue_id", i(bn * 10)),
            ("borrowernumber", i(bn)),
            ("issuer_id", i(STAFF)),
            ("itemnumber", i(p.item)),
            ("branchcode", s("MAIN")),
            ("issuedate", old("2019-12-01 10:00:00")),
            ("date_due", old("2019-12-22 23:59:00")),
            ("returndate", old("2020-01-10 10:00:00")),
        ],
    )
    .await;
    row(
        db,
        p,
        &mut cells,
        "old_reserves",
        &[
            ("reserve_id", i(bn * 10)),
            ("borrowernumber", i(bn)),
            ("biblionumber", i(1)),
            ("branchcode", s("MAIN")),
            ("reservedate", old("2019-11-01")),
            ("cancellationdate", old("2019-11-20")),
            ("priority", i(0)),
        ],
    )
    .await;
    for (kind, at) in [
        ("issue", "2019-12-01 10:00:00"),
        ("return", "2020-01-10 10:00:00"),
    ] {
        row(
            db,
            p,
            &mut cells,
            "statistics",
            &[
                ("datetime", old(at)),
                ("branch", s("MAIN")),
                ("type", s(kind)),
                ("itemnumber", i(p.item)),
                ("itemtype", s("BK")),
                ("borrowernumber", i(bn)),
                ("categorycode", s("PT")),
                ("interface", s("intranet")),
            ],
        )
        .await;
    }
    // A notice sent and one never sent (the profile keeps pending ones; this one goes
    // with the patron).
    for (k, status) in [(0, "sent"), (1, "pending")] {
        row(
            db,
            p,
            &mut cells,
            "message_queue",
            &[
                ("message_id", i(bn * 10 + k)),
                ("borrowernumber", i(bn)),
                ("message_transport_type", s("email")),
                ("status", s(status)),
                ("time_queued", old("2019-12-23 06:00:00")),
                ("updated_on", old("2019-12-23 06:05:00")),
            ],
        )
        .await;
    }
    for (k, module, action, user) in [
        (0, "MEMBERS", "MODIFY", bn),
        (1, "CIRCULATION", "ISSUE", STAFF),
        (2, "FINES", "CREATE", STAFF),
    ] {
        row(
            db,
            p,
            &mut cells,
            "action_logs",
            &[
                ("action_id", i(bn * 10 + k)),
                ("timestamp", old("2019-12-01 15:00:00")),
                ("user", i(user)),
                ("module", s(module)),
                ("action", s(action)),
                ("object", i(bn)),
            ],
        )
        .await;
    }
    row(
        db,
        p,
        &mut cells,
        "search_history",
        &[
            ("id", i(bn * 10)),
            ("userid", i(bn)),
            ("type", s("biblio")),
            ("total", i(3)),
            ("time", old("2019-12-01 15:00:00")),
        ],
    )
    .await;
    row(
        db,
        p,
        &mut cells,
        "deletedborrowers",
        &[
            ("borrowernumber", i(bn)),
            ("branchcode", s("MAIN")),
            ("categorycode", s("PT")),
            ("dateexpiry", old("2020-01-01")),
            ("updated_on", old("2020-02-01 10:00:00")),
        ],
    )
    .await;
    // A change of address waiting for approval (goes with the patron).
    row(
        db,
        p,
        &mut cells,
        "borrower_modifications",
        &[
            ("borrowernumber", i(bn)),
            ("timestamp", old("2019-12-01 15:00:00")),
        ],
    )
    .await;
    // Two fines lines, settled: the charge and its payment.
    for (k, amount) in [(0, 2.5), (1, -2.5)] {
        row(
            db,
            p,
            &mut cells,
            "accountlines",
            &[
                ("accountlines_id", i(bn * 10 + k)),
                ("borrowernumber", i(bn)),
                ("old_issue_id", if k == 0 { i(bn * 10) } else { V::Null }),
                ("amount", V::F(amount)),
                ("amountoutstanding", V::F(0.0)),
                ("description", s("Overdue fine")),
                ("interface", s("intranet")),
                ("date", old("2019-06-01 10:00:00")),
            ],
        )
        .await;
    }
    row(
        db,
        p,
        &mut cells,
        "suggestions",
        &[
            ("suggestionid", i(bn * 10)),
            ("suggestedby", i(bn)),
            ("suggesteddate", old("2019-01-01")),
            ("managedby", i(STAFF)),
            ("manageddate", old("2019-02-01")),
            ("STATUS", s("REJECTED")),
            ("title", s("A Suggested Book")),
            ("branchcode", s("MAIN")),
        ],
    )
    .await;
    row(
        db,
        p,
        &mut cells,
        "illrequests",
        &[
            ("illrequest_id", i(bn * 10)),
            ("borrowernumber", i(bn)),
            ("branchcode", s("MAIN")),
            ("status", s("COMP")),
            ("placed", old("2019-01-01")),
            ("completed", old("2019-02-01")),
        ],
    )
    .await;
    row(
        db,
        p,
        &mut cells,
        "return_claims",
        &[
            ("id", i(bn * 10)),
            ("itemnumber", i(p.item)),
            ("issue_id", i(bn * 10)),
            ("borrowernumber", i(bn)),
            ("created_on", old("2019-12-30 10:00:00")),
            ("resolution", s("RET_BY_PATRON")),
            ("resolved_on", old("2020-01-10 10:00:00")),
        ],
    )
    .await;
    row(
        db,
        p,
        &mut cells,
        "items_last_borrower",
        &[
            ("id", i(bn * 10)),
            ("itemnumber", i(p.item)),
            ("borrowernumber", i(bn)),
            ("created_on", old("2020-01-10 10:00:00")),
        ],
    )
    .await;
    row(
        db,
        p,
        &mut cells,
        "patron_consent",
        &[
            ("id", i(bn * 10)),
            ("borrowernumber", i(bn)),
            ("type", s("GDPR_PROCESSING")),
            ("refused_on", old("2019-06-01 10:00:00")),
        ],
    )
    .await;
    // The tables Koha empties of the patron by foreign key.
    row(
        db,
        p,
        &mut cells,
        "messages",
        &[
            ("message_id", i(bn * 10)),
            ("borrowernumber", i(bn)),
            ("branchcode", s("MAIN")),
            ("message_type", s("L")),
            ("message_date", old("2019-12-01 15:00:00")),
            ("manager_id", i(STAFF)),
        ],
    )
    .await;
    row(
        db,
        p,
        &mut cells,
        "borrower_attributes",
        &[
            ("id", i(bn * 10)),
            ("borrowernumber", i(bn)),
            ("code", s("NOTE")),
        ],
    )
    .await;
    row(
        db,
        p,
        &mut cells,
        "borrower_debarments",
        &[
            ("borrower_debarment_id", i(bn * 10)),
            ("borrowernumber", i(bn)),
            ("type", s("MANUAL")),
            ("manager_id", i(STAFF)),
            ("created", old("2019-12-01 15:00:00")),
        ],
    )
    .await;
    row(
        db,
        p,
        &mut cells,
        "illcomments",
        &[
            ("illcomment_id", i(bn * 10)),
            ("illrequest_id", i(bn * 10)),
            ("borrowernumber", i(bn)),
            ("timestamp", old("2019-01-15 10:00:00")),
        ],
    )
    .await;
    row(
        db,
        p,
        &mut cells,
        "article_requests",
        &[
            ("id", i(bn * 10)),
            ("borrowernumber", i(bn)),
            ("biblionumber", i(1)),
            ("branchcode", s("MAIN")),
            ("status", s("COMPLETED")),
            ("created_on", old("2019-03-01 10:00:00")),
        ],
    )
    .await;
    row(
        db,
        p,
        &mut cells,
        "tickets",
        &[
            ("id", i(bn * 10)),
            ("reporter_id", i(bn)),
            ("reported_date", old("2019-03-01 10:00:00")),
            ("status", s("RESOLVED")),
            ("resolver_id", i(STAFF)),
        ],
    )
    .await;
    row(
        db,
        p,
        &mut cells,
        "ticket_updates",
        &[
            ("id", i(bn * 10)),
            ("ticket_id", i(bn * 10)),
            ("user_id", i(bn)),
            ("date", old("2019-03-02 10:00:00")),
            ("status", s("RESOLVED")),
        ],
    )
    .await;
    row(
        db,
        p,
        &mut cells,
        "checkout_renewals",
        &[
            ("renewal_id", i(bn * 10)),
            ("checkout_id", i(bn * 10)),
            ("renewer_id", i(bn)),
            ("interface", s("opac")),
            ("timestamp", old("2019-12-20 10:00:00")),
        ],
    )
    .await;
    // Rows that no longer name the patron: their self-registration, never confirmed
    // (borrowernumber 0), and a pseudonymized checkout.
    let mut unlinked = Cells::new();
    row(
        db,
        p,
        &mut unlinked,
        "borrower_modifications",
        &[
            ("borrowernumber", i(0)),
            ("timestamp", old("2014-12-01 15:00:00")),
        ],
    )
    .await;
    row(
        db,
        p,
        &mut unlinked,
        "pseudonymized_transactions",
        &[
            ("id", i(bn * 10)),
            ("categorycode", s("PT")),
            ("branchcode", s("MAIN")),
            ("datetime", old("2019-12-01 10:00:00")),
            ("transaction_branchcode", s("MAIN")),
            ("transaction_type", s("issue")),
            ("itemnumber", i(p.item)),
            ("itemtype", s("BK")),
        ],
    )
    .await;
    for (k, n) in &unlinked {
        *cells.entry(k.clone()).or_default() += n;
    }
    Seeded { cells, unlinked }
}

/// Every text column of every table holding `needle` (case-insensitively, as the
/// collation compares), with its row count.
async fn scan_text(db: &TestDb, needle: &str) -> Cells {
    let cols = strings(
        db,
        "SELECT CAST(c.table_name AS CHAR), CAST(c.column_name AS CHAR) FROM information_schema.columns c \
         JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name \
         WHERE c.table_schema = DATABASE() AND t.table_type = 'BASE TABLE' AND c.data_type IN \
         ('char', 'varchar', 'tinytext', 'text', 'mediumtext', 'longtext', 'enum', 'set', 'json', \
          'binary', 'varbinary', 'tinyblob', 'blob', 'mediumblob', 'longblob') \
         ORDER BY c.table_name, c.ordinal_position",
        &[],
    )
    .await;
    let mut by_table: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in cols {
        by_table
            .entry(r[0].clone().unwrap())
            .or_default()
            .push(r[1].clone().unwrap());
    }
    let pattern = format!("%{needle}%");
    let mut hits = Cells::new();
    for (table, cols) in by_table {
        let sums: Vec<String> = cols
            .iter()
            .map(|c| format!("CAST(COALESCE(SUM(`{c}` LIKE ?), 0) AS CHAR)"))
            .collect();
        let sql = format!("SELECT {} FROM `{table}`", sums.join(", "));
        let binds = vec![pattern.as_str(); cols.len()];
        let row = &strings(db, &sql, &binds).await[0];
        for (c, v) in cols.iter().zip(row) {
            let n: i64 = v.as_deref().unwrap_or("0").parse().unwrap();
            if n > 0 {
                hits.insert((table.clone(), c.clone()), n);
            }
        }
    }
    hits
}

/// Every patron-link column: those with a foreign key to `borrowers.borrowernumber`
/// (from the catalog) and [`LINKS_WITHOUT_FK`].
async fn link_columns(db: &TestDb) -> BTreeSet<(String, String)> {
    let mut links: BTreeSet<(String, String)> = strings(
        db,
        "SELECT CAST(table_name AS CHAR), CAST(column_name AS CHAR) FROM information_schema.key_column_usage \
         WHERE table_schema = DATABASE() AND referenced_table_name = 'borrowers' \
         AND referenced_column_name = 'borrowernumber'",
        &[],
    )
    .await
    .into_iter()
    .map(|r| (r[0].clone().unwrap(), r[1].clone().unwrap()))
    .collect();
    links.insert(("borrowers".into(), "borrowernumber".into()));
    for (t, c) in LINKS_WITHOUT_FK {
        links.insert((t.to_string(), c.to_string()));
    }
    links
}

/// Rows per patron-link column that hold `bn`.
async fn scan_links(db: &TestDb, links: &BTreeSet<(String, String)>, bn: i64) -> Cells {
    let mut hits = Cells::new();
    for (t, c) in links {
        let n = db.count(&format!("`{t}` WHERE `{c}` = {bn}")).await;
        if n > 0 {
            hits.insert((t.clone(), c.clone()), n);
        }
    }
    hits
}

/// The shipped retention.yaml (every class named), pointed at `url`, its outbox in `dir`.
fn shipped_config(dir: &Path, url: &str) -> std::path::PathBuf {
    let shipped =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("retention.yaml"))
            .unwrap();
    let text = shipped
        .replace(
            "${LETHE_DATABASE_URL:-sqlite://demo/library.db}",
            &format!("\"{url}\""),
        )
        .replace("max_fraction: 0.5", "max_fraction: 1.0")
        .replace("outbox: demo/outbox", "outbox: outbox");
    assert!(text.contains(url) && text.contains("outbox: outbox"));
    let path = dir.join("retention.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn all_output(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn every_trace_of_an_expired_patron_goes_and_a_held_one_stays_mysql() {
    let Some(db) = TestDb::mysql().await else {
        return;
    };
    koha_reference(&db, None).await;
    patron(&db, STAFF, 1, "2099-12-31", "ST").await;
    db.exec(&format!(
        "UPDATE borrowers SET flags = 1 WHERE borrowernumber = {STAFF}"
    ))
    .await;
    for t in ["email", "sms", "print"] {
        db.insert(
            "message_transport_types",
            &[("message_transport_type", s(t))],
        )
        .await;
    }
    // A staff-only log entry, which names no patron and must stay.
    db.insert(
        "action_logs",
        &[
            ("action_id", i(1)),
            ("timestamp", s("2019-12-01 15:00:00")),
            ("user", i(STAFF)),
            ("module", s("CATALOGUING")),
            ("action", s("MODIFY")),
            ("object", i(1)),
            ("info", s("biblio")),
        ],
    )
    .await;
    db.insert(
        "restriction_types",
        &[("code", s("MANUAL")), ("display_text", s("Manual"))],
    )
    .await;
    db.insert(
        "borrower_attribute_types",
        &[
            ("code", s("NOTE")),
            ("description", s("Note")),
            ("class", s("")),
        ],
    )
    .await;
    let gone = seed(&db, GONE).await;
    let held = seed(&db, HELD).await;
    let refused = seed(&db, REFUSED).await;
    let links = link_columns(&db).await;

    // The scans see what was seeded (or they would prove nothing).
    assert_eq!(scan_text(&db, GONE.canary).await, gone.cells);
    assert_eq!(scan_text(&db, HELD.canary).await, held.cells);
    assert_eq!(scan_text(&db, REFUSED.canary).await, refused.cells);
    let refused_links = scan_links(&db, &links, REFUSED.bn).await;
    assert!(refused_links.contains_key(&("patron_consent".into(), "borrowernumber".into())));
    let gone_links = scan_links(&db, &links, GONE.bn).await;
    let held_links = scan_links(&db, &links, HELD.bn).await;
    for (t, c) in LINKS_WITHOUT_FK {
        assert!(
            gone_links.contains_key(&(t.to_string(), c.to_string())),
            "{t}.{c} not seeded"
        );
    }
    eprintln!(
        "canary seeded in {} columns of {} tables; {} patron-link columns",
        gone.cells.len(),
        gone.cells
            .keys()
            .map(|(t, _)| t)
            .collect::<BTreeSet<_>>()
            .len(),
        links.len()
    );

    let dir = tempfile::tempdir().unwrap();
    let cfg = shipped_config(dir.path(), &db.url);
    let cfg_s = cfg.to_str().unwrap();
    let mut output = String::new();
    let o = lethe(
        dir.path(),
        &[
            "--config",
            cfg_s,
            "hold",
            "add",
            "--patron",
            &HELD.bn.to_string(),
            "--case",
            "NY-SUP-2026-00417",
        ],
    );
    assert!(o.status.success(), "{}", all_output(&o));
    output.push_str(&all_output(&o));
    let o = lethe(dir.path(), &["--config", cfg_s, "check"]);
    assert!(o.status.success(), "{}", all_output(&o));
    output.push_str(&all_output(&o));

    let o = lethe(
        dir.path(),
        &[
            "--config",
            cfg_s,
            "run",
            "--once",
            "--json",
            "--allow-large",
        ],
    );
    output.push_str(&all_output(&o));
    assert_eq!(o.status.code(), Some(0), "{}", all_output(&o));
    let run = json(&o);
    assert_eq!(run["status"], "ok", "{run}");
    let classes = run["classes"].as_array().unwrap();
    assert_eq!(classes.len(), 16, "every class of the shipped config runs");
    let class = |name: &str| {
        classes
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no class {name}"))
    };
    // The held patron's rows are kept, and the run says so (kept.legal_hold); the
    // classes that cannot name a patron have nothing to keep.
    for (name, kept) in [
        ("circulation_history", 1),
        ("holds_history", 1),
        ("expired_patrons", 1),
        ("refused_processing", 1),
        ("circulation_statistics", 2),
        ("notices", 1),
        ("patron_logs", 3),
        ("search_history", 1),
        ("deleted_patrons", 1),
        ("self_registrations", 0),
        ("fines_history", 2),
        ("purchase_suggestions", 1),
        ("ill_requests", 1),
        ("return_claims", 1),
        ("last_borrowers", 1),
        ("pseudonymized_transactions", 0),
    ] {
        let c = class(name);
        assert_eq!(c["status"], "ok", "{c}");
        assert_eq!(c["kept"]["legal_hold"], kept, "{c}");
    }

    // The refusing patron, whose card is valid, went by refused_processing.
    assert_eq!(class("refused_processing")["affected"], 1);
    // No trace of the first and third patrons anywhere.
    for p in [GONE, REFUSED] {
        let left = scan_text(&db, p.canary).await;
        let left_links = scan_links(&db, &links, p.bn).await;
        assert!(
            left.is_empty() && left_links.is_empty(),
            "patron {} survived in text columns {left:?} and patron links {left_links:?}",
            p.bn
        );
    }
    // Every row linked to the held patron as it was; the unlinked ones gone.
    let mut want = held.cells.clone();
    for (k, n) in &held.unlinked {
        let e = want.get_mut(k).unwrap();
        *e -= n;
        if *e == 0 {
            want.remove(k);
        }
    }
    assert_eq!(scan_text(&db, HELD.canary).await, want);
    assert_eq!(scan_links(&db, &links, HELD.bn).await, held_links);
    // The staff-only log entry stays.
    assert_eq!(
        db.count("action_logs WHERE module = 'CATALOGUING'").await,
        1
    );

    // A fixed point: nothing more to do, nothing overdue, and the hold still keeps.
    let o = lethe(dir.path(), &["--config", cfg_s, "plan", "--json"]);
    output.push_str(&all_output(&o));
    for c in json(&o)["classes"].as_array().unwrap() {
        assert_eq!(c["eligible"], 0, "{c}");
    }
    let o = lethe(dir.path(), &["--config", cfg_s, "verify"]);
    output.push_str(&all_output(&o));
    assert_eq!(o.status.code(), Some(0), "{}", all_output(&o));
    let o = lethe(
        dir.path(),
        &[
            "--config",
            cfg_s,
            "--log-format",
            "json",
            "run",
            "--once",
            "--json",
        ],
    );
    output.push_str(&all_output(&o));
    assert_eq!(o.status.code(), Some(0), "{}", all_output(&o));
    for c in json(&o)["classes"].as_array().unwrap() {
        assert_eq!(c["affected"], 0, "{c}");
    }
    assert_eq!(scan_text(&db, HELD.canary).await, want);

    // Nor in the ledger, its exports, the reports or anything printed.
    for args in [
        vec!["--config", cfg_s, "ledger", "list"],
        vec!["--config", cfg_s, "ledger", "show", "1", "--json"],
        vec!["--config", cfg_s, "ledger", "export", "--format", "json"],
        vec!["--config", cfg_s, "ledger", "export", "--format", "csv"],
        vec!["--config", cfg_s, "hold", "list", "--all"],
    ] {
        let o = lethe(dir.path(), &args);
        assert!(o.status.success(), "{args:?}: {}", all_output(&o));
        output.push_str(&all_output(&o));
    }
    let ledger_tables: Vec<String> = strings(
        &db,
        "SELECT CAST(table_name AS CHAR) FROM information_schema.tables \
         WHERE table_schema = DATABASE() AND table_name LIKE 'lethe\\_%'",
        &[],
    )
    .await
    .into_iter()
    .map(|r| r[0].clone().unwrap())
    .collect();
    assert!(ledger_tables.len() >= 3, "{ledger_tables:?}");
    for needle in [GONE.canary, HELD.canary, REFUSED.canary] {
        let in_ledger: Vec<_> = scan_text(&db, needle)
            .await
            .into_keys()
            .filter(|(t, _)| t.starts_with("lethe_"))
            .collect();
        assert!(
            in_ledger.is_empty(),
            "{needle} in the ledger: {in_ledger:?}"
        );
    }
    let mut reports = Vec::new();
    for e in std::fs::read_dir(dir.path().join("outbox")).unwrap() {
        reports
            .push(String::from_utf8_lossy(&std::fs::read(e.unwrap().path()).unwrap()).into_owned());
    }
    assert_eq!(reports.len(), 2, "a report per run");
    // The reports say why the held patron's rows stayed.
    assert!(
        reports.iter().all(|r| r.contains("Kept: legal hold")),
        "the reports name the legal hold"
    );
    output.push_str(&reports.concat());
    let lower = output.to_lowercase();
    for needle in [GONE.canary, HELD.canary, REFUSED.canary, "canary"] {
        assert!(
            !lower.contains(&needle.to_lowercase()),
            "{needle} left the database"
        );
    }
}
