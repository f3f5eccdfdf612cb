//! On a realistic Koha library (the demo generator's data; on MariaDB with our fixture
//! and, in CI, with Koha's own kohastructure.sql), `run` changes exactly the rows the
//! rules select, computed here by an independent oracle in plain Rust over the rows
//! read before the run, keeps every other row as it was, and breaks no foreign key.

use std::collections::{BTreeMap, BTreeSet};

use chrono::NaiveDate;
use lethe::demo::{self, DemoOptions, DemoTarget};
use sqlx::Row;

use crate::common::*;
use crate::engine::{class, run_at};

#[derive(Debug, Clone)]
struct Patron {
    privacy: i64,
    expiry: Option<String>,
    flags: i64,
    protected: i64,
    staff_category: bool,
}

struct Snapshot {
    anon: Option<i64>,
    patrons: BTreeMap<i64, Patron>,
    /// guarantor → guarantees
    guarantees: BTreeMap<i64, Vec<i64>>,
    current_checkouts: BTreeSet<i64>,
    current_holds: BTreeSet<i64>,
    owes_either_way: BTreeSet<i64>,
    /// issue_id → (borrowernumber, returndate)
    old_issues: BTreeMap<i64, (Option<i64>, Option<String>)>,
    /// old_issue_id with amountoutstanding > 0
    owed_issues: BTreeSet<i64>,
    /// reserve_id → (borrowernumber, age date)
    old_reserves: BTreeMap<i64, (Option<i64>, Option<String>)>,
    /// issue_id and reserve_id of rows with a note (`note`, `reservenotes`).
    noted_issues: BTreeSet<i64>,
    noted_reserves: BTreeSet<i64>,
    accountlines: BTreeMap<i64, Option<i64>>,
    modifications: Vec<(String, i64)>,
}

macro_rules! rows {
    ($db:expr, $sql:expr) => {{
        let sql = sqlx::AssertSqlSafe($sql.to_string());
        match &$db.raw {
            Raw::Sqlite(p) => sqlx::query(sql)
                .fetch_all(p)
                .await
                .unwrap()
                .into_iter()
                .map(|r| RowVals::from_sqlite(&r))
                .collect::<Vec<_>>(),
            Raw::MySql(p) => sqlx::query(sql)
                .fetch_all(p)
                .await
                .unwrap()
                .into_iter()
                .map(|r| RowVals::from_mysql(&r))
                .collect::<Vec<_>>(),
            Raw::Postgres(_) => unreachable!("Koha-shaped scenarios run on SQLite and MariaDB"),
        }
    }};
}

/// A row read as optional integers and strings (every query below casts its columns).
struct RowVals(Vec<Option<String>>);

impl RowVals {
    fn from_sqlite(r: &sqlx::sqlite::SqliteRow) -> RowVals {
        RowVals(
            (0..r.len())
                .map(|i| r.try_get::<Option<String>, _>(i).unwrap())
                .collect(),
        )
    }
    fn from_mysql(r: &sqlx::mysql::MySqlRow) -> RowVals {
        RowVals(
            (0..r.len())
                .map(|i| r.try_get::<Option<String>, _>(i).unwrap())
                .collect(),
        )
    }
    fn int(&self, i: usize) -> Option<i64> {
        self.0[i]
            .as_deref()
            .map(|v| v.parse::<f64>().unwrap() as i64)
    }
    fn num(&self, i: usize) -> f64 {
        self.0[i]
            .as_deref()
            .map(|v| v.parse::<f64>().unwrap())
            .unwrap_or(0.0)
    }
    fn text(&self, i: usize) -> Option<String> {
        self.0[i].clone()
    }
}

fn t(db: &TestDb, col: &str) -> String {
    match db.backend {
        lethe::config::Backend::MySql => format!("CAST({col} AS CHAR)"),
        _ => format!("CAST({col} AS TEXT)"),
    }
}

async fn snapshot(db: &TestDb) -> Snapshot {
    let anon = rows!(
        db,
        "SELECT value FROM systempreferences WHERE variable = 'AnonymousPatron'"
    )
    .first()
    .and_then(|r| r.text(0))
    .and_then(|v| v.trim().parse().ok());
    let mut patrons = BTreeMap::new();
    let q = format!(
        "SELECT {}, {}, {}, {}, {}, {} FROM borrowers b JOIN categories c ON c.categorycode = b.categorycode",
        t(db, "b.borrowernumber"),
        t(db, "b.privacy"),
        t(db, "b.dateexpiry"),
        t(db, "COALESCE(b.flags, 0)"),
        t(db, "b.protected"),
        t(db, "c.category_type")
    );
    for r in rows!(db, q) {
        patrons.insert(
            r.int(0).unwrap(),
            Patron {
                privacy: r.int(1).unwrap(),
                expiry: r.text(2).map(|d| d[..10].to_string()),
                flags: r.int(3).unwrap(),
                protected: r.int(4).unwrap(),
                staff_category: r.text(5).as_deref() == Some("S"),
            },
        );
    }
    let mut guarantees: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for r in rows!(
        db,
        format!(
            "SELECT {}, {} FROM borrower_relationships",
            t(db, "guarantor_id"),
            t(db, "guarantee_id")
        )
    ) {
        guarantees
            .entry(r.int(0).unwrap())
            .or_default()
            .push(r.int(1).unwrap());
    }
    let set = |v: Vec<RowVals>| v.iter().filter_map(|r| r.int(0)).collect::<BTreeSet<i64>>();
    let current_checkouts = set(rows!(
        db,
        format!("SELECT {} FROM issues", t(db, "borrowernumber"))
    ));
    let current_holds = set(rows!(
        db,
        format!("SELECT {} FROM reserves", t(db, "borrowernumber"))
    ));
    let mut owes_either_way = BTreeSet::new();
    let mut owed_issues = BTreeSet::new();
    let mut accountlines = BTreeMap::new();
    let q = format!(
        "SELECT {}, {}, {}, {} FROM accountlines",
        t(db, "accountlines_id"),
        t(db, "borrowernumber"),
        t(db, "old_issue_id"),
        t(db, "amountoutstanding")
    );
    for r in rows!(db, q) {
        let out = r.num(3);
        if let Some(b) = r.int(1) {
            if out != 0.0 {
                owes_either_way.insert(b);
            }
        }
        if let Some(i) = r.int(2) {
            if out > 0.0 {
                owed_issues.insert(i);
            }
        }
        accountlines.insert(r.int(0).unwrap(), r.int(1));
    }
    let mut old_issues = BTreeMap::new();
    let q = format!(
        "SELECT {}, {}, {} FROM old_issues",
        t(db, "issue_id"),
        t(db, "borrowernumber"),
        t(db, "returndate")
    );
    for r in rows!(db, q) {
        old_issues.insert(
            r.int(0).unwrap(),
            (r.int(1), r.text(2).map(|d| d[..19].to_string())),
        );
    }
    let noted = |table: &str, key: &str, col: &str| {
        format!("SELECT {} FROM {table} WHERE {col} IS NOT NULL", t(db, key))
    };
    let noted_issues = set(rows!(db, noted("old_issues", "issue_id", "note")));
    let noted_reserves = set(rows!(
        db,
        noted("old_reserves", "reserve_id", "reservenotes")
    ));
    let mut old_reserves = BTreeMap::new();
    let q = format!(
        "SELECT {}, {}, {} FROM old_reserves",
        t(db, "reserve_id"),
        t(db, "borrowernumber"),
        t(db, "COALESCE(cancellationdate, waitingdate, reservedate)")
    );
    for r in rows!(db, q) {
        old_reserves.insert(
            r.int(0).unwrap(),
            (r.int(1), r.text(2).map(|d| d[..10].to_string())),
        );
    }
    let q = format!(
        "SELECT {}, {} FROM borrower_modifications",
        t(db, "verification_token"),
        t(db, "borrowernumber")
    );
    let modifications = rows!(db, q)
        .iter()
        .map(|r| (r.text(0).unwrap(), r.int(1).unwrap()))
        .collect();
    Snapshot {
        anon,
        patrons,
        guarantees,
        current_checkouts,
        current_holds,
        owes_either_way,
        old_issues,
        noted_issues,
        noted_reserves,
        owed_issues,
        old_reserves,
        accountlines,
        modifications,
    }
}

/// The rules of the Koha profile, applied by hand (README, "The Koha profile").
struct Expected {
    circ: BTreeSet<i64>,
    holds: BTreeSet<i64>,
    deleted: BTreeSet<i64>,
}

fn oracle(s: &Snapshot, circ_cutoff: &str, holds_cutoff: &str, patron_cutoff: &str) -> Expected {
    let privacy = |b: i64| s.patrons.get(&b).map(|p| p.privacy);
    let mut circ = BTreeSet::new();
    for (&id, (b, ret)) in &s.old_issues {
        let (Some(b), Some(ret)) = (b, ret) else {
            continue;
        };
        // Rows of the anonymous patron only for a note left on them.
        let done = Some(*b) == s.anon && !s.noted_issues.contains(&id);
        if done || privacy(*b) == Some(0) || s.owed_issues.contains(&id) {
            continue;
        }
        if ret.as_str() < circ_cutoff || privacy(*b) == Some(2) {
            circ.insert(id);
        }
    }
    let mut holds = BTreeSet::new();
    for (&id, (b, age)) in &s.old_reserves {
        let Some(b) = b else { continue };
        let done = Some(*b) == s.anon && !s.noted_reserves.contains(&id);
        if done || privacy(*b) == Some(0) {
            continue;
        }
        let past = age.as_deref().is_some_and(|a| a < holds_cutoff);
        if past || privacy(*b) == Some(2) {
            holds.insert(id);
        }
    }
    // Expired patrons, to the fixed point: a guarantor is protected while one of its
    // guarantees remains.
    let mut deleted = BTreeSet::new();
    loop {
        let mut more = Vec::new();
        for (&n, p) in &s.patrons {
            if deleted.contains(&n) {
                continue;
            }
            let past = p.expiry.as_deref().is_some_and(|d| d < patron_cutoff);
            let guarantor = s
                .guarantees
                .get(&n)
                .is_some_and(|g| g.iter().any(|x| !deleted.contains(x)));
            let kept = Some(n) == s.anon
                || s.current_checkouts.contains(&n)
                || s.current_holds.contains(&n)
                || s.owes_either_way.contains(&n)
                || p.flags != 0
                || p.staff_category
                || p.protected == 1
                || guarantor;
            if past && !kept {
                more.push(n);
            }
        }
        if more.is_empty() {
            break;
        }
        deleted.extend(more);
    }
    Expected {
        circ,
        holds,
        deleted,
    }
}

both_backends!(realistic_library_changes_exactly_what_the_rules_select);
async fn realistic_library_changes_exactly_what_the_rules_select(db: TestDb) {
    let today = NaiveDate::from_ymd_opt(2026, 6, 15).unwrap();
    let mut opts = DemoOptions::standard(today);
    opts.patrons = 1500;
    opts.returned_checkouts = 20_000;
    match &db.raw {
        Raw::Sqlite(p) => demo::populate(DemoTarget::Sqlite(p), &opts).await.unwrap(),
        Raw::MySql(p) => demo::populate(DemoTarget::MySql(p), &opts).await.unwrap(),
        Raw::Postgres(_) => unreachable!("Koha-shaped scenarios run on SQLite and MariaDB"),
    };
    let before = snapshot(&db).await;
    // now() = 2026-06-15 08:00 in New York.
    let expected = oracle(&before, "2026-05-16 08:00:00", "2026-05-16", "2024-06-15");
    assert!(
        expected.circ.len() > 1000 && expected.holds.len() > 10 && expected.deleted.len() > 50,
        "the data should exercise every class: {} {} {}",
        expected.circ.len(),
        expected.holds.len(),
        expected.deleted.len()
    );
    // Something of each exemption is present, or the test proves little.
    assert!(
        before.patrons.values().any(|p| p.privacy == 0)
            && before.patrons.values().any(|p| p.privacy == 2)
    );
    assert!(
        !before.owed_issues.is_empty()
            && !before.guarantees.is_empty()
            && !before.current_checkouts.is_empty()
    );

    let cfg = db.config("");
    let r = run_at(&cfg, now(), true).await;
    assert_eq!(r.status, lethe::summary::RunStatus::Ok, "{r:?}");
    assert_eq!(
        class(&r, "circulation_history").affected as usize,
        expected.circ.len()
    );
    assert_eq!(
        class(&r, "holds_history").affected as usize,
        expected.holds.len()
    );
    assert_eq!(
        class(&r, "expired_patrons").affected as usize,
        expected.deleted.len()
    );

    let after = snapshot(&db).await;
    let remaining: BTreeSet<i64> = before
        .patrons
        .keys()
        .copied()
        .filter(|n| !expected.deleted.contains(n))
        .collect();
    assert_eq!(
        after.patrons.keys().copied().collect::<BTreeSet<_>>(),
        remaining
    );
    let target = before.anon;
    for (id, (b, ret)) in &before.old_issues {
        let (b2, ret2) = &after.old_issues[id];
        assert_eq!(ret, ret2);
        let want = if expected.circ.contains(id) {
            target
        } else if b.is_some_and(|x| expected.deleted.contains(&x)) {
            None // Koha's foreign key: ON DELETE SET NULL
        } else {
            *b
        };
        assert_eq!(*b2, want, "old_issues {id}");
    }
    for (id, (b, _)) in &before.old_reserves {
        let (b2, _) = &after.old_reserves[id];
        let want = if expected.holds.contains(id) {
            target
        } else if b.is_some_and(|x| expected.deleted.contains(&x)) {
            None
        } else {
            *b
        };
        assert_eq!(*b2, want, "old_reserves {id}");
    }
    for (id, b) in &before.accountlines {
        let want = if b.is_some_and(|x| expected.deleted.contains(&x)) {
            None
        } else {
            *b
        };
        assert_eq!(after.accountlines[id], want, "accountlines {id}");
    }
    let want_mods: Vec<(String, i64)> = before
        .modifications
        .iter()
        .filter(|(_, b)| !expected.deleted.contains(b))
        .cloned()
        .collect();
    let mut got_mods = after.modifications.clone();
    got_mods.sort();
    let mut want_mods = want_mods;
    want_mods.sort();
    assert_eq!(got_mods, want_mods);
    // No reference to a deleted patron survives anywhere Koha links patrons.
    for (table, col) in [
        ("issues", "borrowernumber"),
        ("reserves", "borrowernumber"),
        ("old_issues", "borrowernumber"),
        ("old_reserves", "borrowernumber"),
        ("accountlines", "borrowernumber"),
        ("borrower_relationships", "guarantor_id"),
        ("borrower_relationships", "guarantee_id"),
    ] {
        let orphans = db.count(&format!("{table} t WHERE t.{col} IS NOT NULL AND NOT EXISTS (SELECT 1 FROM borrowers b WHERE b.borrowernumber = t.{col})")).await;
        assert_eq!(orphans, 0, "{table}.{col}");
    }
    if let Raw::Sqlite(p) = &db.raw {
        let bad: Vec<sqlx::sqlite::SqliteRow> = sqlx::query("PRAGMA foreign_key_check")
            .fetch_all(p)
            .await
            .unwrap();
        assert!(bad.is_empty());
    }
    // Fixed point: a second run changes nothing.
    let r2 = run_at(&cfg, now(), true).await;
    assert_eq!(r2.total_affected(), 0, "{r2:?}");
}
