//! `lethe inventory`: every table and column the profile knows to hold personal data or
//! usage history, what covers it in the connected database, how old its oldest row is
//! and whether an index serves its age column; and the index advice of `lethe check`
//! (each enabled class's age column no index serves, and the statement that adds one;
//! `check --create-indexes` runs them and records each in the ledger).
//!
//! The list comes from two places: the classes themselves (their table, patron column,
//! rewritten columns and age columns: the enabled ones of the configuration, and the
//! profile's classes that are off), and the profile's `inventory:` section, the other
//! tables of the library system with how they are covered without a class (Koha's
//! `ON DELETE CASCADE` tables go with the patron; source: Koha's kohastructure.sql and
//! Evergreen's `actor.usr_purge_data`, see `src/config/profiles/`). Only names, counts
//! and dates of the oldest rows are read and shown: never a row's content.
//!
//! Identifiers come from the validated configuration or the embedded profile (checked
//! as [`Ident`]s here) and are checked against the catalog before any query on the
//! table is built (with sea-query).

use chrono::{DateTime, NaiveDate, Utc};
use indexmap::IndexMap;
use serde::Serialize;

use crate::config::raw::{RawClass, RawProfile};
use crate::config::{Backend, Config, EVERGREEN_PROFILE, Ident, KOHA_PROFILE, TableName};
use crate::db::catalog;
use crate::db::{Db, DbError};

/// How a table is covered.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Coverage {
    /// By an enabled class.
    Class { name: String, action: &'static str },
    /// A profile class that is on in the profile and switched off in retention.yaml.
    Disabled { name: String },
    /// A profile class the profile ships off, not named in retention.yaml.
    Off { name: String },
    /// Without a class: the profile says how.
    Otherwise(String),
    /// Not at all.
    NotCovered,
}

/// A table the profile or the configuration knows to hold personal data.
#[derive(Debug, Clone)]
struct Known {
    table: TableName,
    columns: Vec<Ident>,
    age: Vec<Ident>,
    coverage: Coverage,
}

/// One row of the inventory. The JSON shape of `lethe inventory --json`'s `tables`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InventoryRow {
    /// The table (`schema.table` where qualified).
    pub table: String,
    /// `covered` (an enabled class), `covered_otherwise` (no class: `how` says what
    /// removes the rows), `disabled` (its profile class is switched off in
    /// retention.yaml), `off` (its profile class ships off and is not named),
    /// `not_covered`, or `absent` (the database has no such table: versions of the
    /// library system differ).
    pub status: &'static str,
    /// The class, for `covered`, `disabled` and `off`.
    pub class: Option<String>,
    /// The class's action, for `covered`.
    pub action: Option<String>,
    /// The status in plain words.
    pub how: String,
    /// The personal columns the table has.
    pub columns: Vec<String>,
    /// Personal columns the profile names that this database's table lacks.
    pub missing_columns: Vec<String>,
    /// The age column(s), several meaning the first non-NULL; empty when the table has
    /// none (rows kept as long as the patron, say).
    pub age_columns: Vec<String>,
    /// The oldest age among the rows, `YYYY-MM-DD` in the library's time zone; `None`
    /// when the table is empty, every age is NULL, there is no age column, or absent.
    pub oldest: Option<String>,
    /// Whole days from `oldest` to the inventory's date.
    pub oldest_days: Option<i64>,
    /// Whether an index serves the age column(s); `None` without age column or table.
    pub indexed: Option<bool>,
    /// The index that serves it.
    pub index: Option<String>,
    /// Why no index can serve, when that is the backend's doing (MariaDB has no
    /// expression index for a `COALESCE` of several columns).
    pub index_note: Option<String>,
    /// Rows in the table: the server's estimate (MariaDB, PostgreSQL) or a count
    /// (SQLite); `None` when unknown.
    pub rows: Option<u64>,
}

/// The inventory of one database. `lethe inventory --json` prints it as one object:
/// `{"backend": "mysql"|"postgres"|"sqlite", "profile": "koha"|null, "as_of":
/// "YYYY-MM-DD", "tables": [InventoryRow, …]}`; rows in the order classes first
/// (configuration order, then the profile's classes that are off), then the profile's
/// `inventory:` entries.
#[derive(Debug, Clone, Serialize)]
pub struct Inventory {
    /// `mysql`, `postgres` or `sqlite`.
    pub backend: &'static str,
    /// The profile, if any.
    pub profile: Option<String>,
    /// The library's local date the ages are counted to.
    pub as_of: String,
    /// One row per known table and its coverage.
    pub tables: Vec<InventoryRow>,
}

fn backend_name(b: Backend) -> &'static str {
    match b {
        Backend::Sqlite => "sqlite",
        Backend::MySql => "mysql",
        Backend::Postgres => "postgres",
    }
}

fn profile_text(cfg: &Config) -> Option<&'static str> {
    match cfg.profile.as_deref() {
        Some("koha") => Some(KOHA_PROFILE),
        Some("evergreen") => Some(EVERGREEN_PROFILE),
        _ => None,
    }
}

fn bad(what: &str, e: String) -> DbError {
    DbError::Schema(format!("the profile's {what}: {e}"))
}

fn idents(names: &[String], what: &str) -> Result<Vec<Ident>, DbError> {
    names
        .iter()
        .map(|n| Ident::new(n).map_err(|e| bad(what, e)))
        .collect()
}

/// Adds `c` to `out` unless already there (same column, any case).
fn push_unique(out: &mut Vec<Ident>, c: &Ident) {
    if !out
        .iter()
        .any(|x| x.as_str().eq_ignore_ascii_case(c.as_str()))
    {
        out.push(c.clone());
    }
}

/// The personal columns of a profile class: patron, anonymized and pseudonymized
/// columns, in that order.
fn raw_columns(name: &str, c: &RawClass) -> Result<Vec<Ident>, DbError> {
    let mut names: Vec<String> = Vec::new();
    names.extend(c.patron.clone());
    for m in [&c.anonymize, &c.pseudonymize].into_iter().flatten() {
        names.extend(m.keys().cloned());
    }
    let mut out = Vec::new();
    for c in idents(&names, &format!("class {name}"))? {
        push_unique(&mut out, &c);
    }
    Ok(out)
}

/// Everything the configuration and its profile know to hold personal data.
fn known(cfg: &Config) -> Result<Vec<Known>, DbError> {
    let mut out = Vec::new();
    for c in &cfg.classes {
        let mut columns = Vec::new();
        if let Some(p) = &c.patron {
            push_unique(&mut columns, p);
        }
        for (col, _) in &c.anonymize {
            push_unique(&mut columns, col);
        }
        let coverage = Coverage::Class {
            name: c.name.clone(),
            action: c.action.as_str(),
        };
        match &c.age.from {
            // The age lives in linked rows of another table (`age.from`, Koha's
            // patron_consent.refused_on): the class's own table has no age column, and
            // the other table is listed with the age columns.
            Some(f) => {
                out.push(Known {
                    table: c.table.clone(),
                    columns,
                    age: Vec::new(),
                    coverage: coverage.clone(),
                });
                out.push(Known {
                    table: f.table.clone(),
                    columns: vec![f.column.clone()],
                    age: c.age.columns.clone(),
                    coverage,
                });
            }
            None => out.push(Known {
                table: c.table.clone(),
                columns,
                age: c.age.columns.clone(),
                coverage,
            }),
        }
    }
    let Some(text) = profile_text(cfg) else {
        return Ok(out);
    };
    let profile: RawProfile = serde_yaml::from_str(text).map_err(|e| bad("text", e.to_string()))?;
    let classes: IndexMap<String, RawClass> = profile.classes;
    for (name, c) in &classes {
        if cfg.classes.iter().any(|k| &k.name == name) {
            continue;
        }
        let Some(table) = &c.table else { continue };
        let table = TableName::new(table).map_err(|e| bad(&format!("class {name}"), e))?;
        // An age read from another table (`age.from`) is not a column of this one.
        let age = match c.age.as_ref() {
            Some(a) if a.from.is_none() => idents(
                a.columns.as_deref().unwrap_or(&[]),
                &format!("class {name}"),
            )?,
            _ => Vec::new(),
        };
        let coverage = if c.enabled == Some(false) {
            Coverage::Off { name: name.clone() }
        } else {
            Coverage::Disabled { name: name.clone() }
        };
        out.push(Known {
            table,
            columns: raw_columns(name, c)?,
            age,
            coverage,
        });
    }
    for e in &profile.inventory {
        let table = TableName::new(&e.table).map_err(|x| bad("inventory", x))?;
        let mut columns = Vec::new();
        for c in idents(&e.columns, &format!("inventory {}", e.table))? {
            push_unique(&mut columns, &c);
        }
        out.push(Known {
            table,
            columns,
            age: idents(&e.age, &format!("inventory {}", e.table))?,
            coverage: match &e.covered {
                Some(how) => Coverage::Otherwise(how.clone()),
                None => Coverage::NotCovered,
            },
        });
    }
    Ok(out)
}

fn present(cols: &[(String, String)], c: &Ident) -> bool {
    cols.iter().any(|(n, _)| n.eq_ignore_ascii_case(c.as_str()))
}

fn names(cols: &[Ident]) -> Vec<String> {
    cols.iter().map(|c| c.as_str().to_string()).collect()
}

/// The words MariaDB/MySQL get for an age of several columns.
fn no_coalesce_index(cols: &[Ident]) -> String {
    format!(
        "no single index serves COALESCE({}): MariaDB/MySQL index no expressions",
        names(cols).join(", ")
    )
}

/// The inventory of the connected database at `now` (ages counted to the library's
/// local date).
///
/// # Errors
/// [`DbError`] from the catalog or a query; [`DbError::Schema`] when the embedded
/// profile's inventory names something that is not a plain SQL name.
pub async fn inventory(cfg: &Config, db: &Db, now: DateTime<Utc>) -> Result<Inventory, DbError> {
    let tz = cfg.schedule.timezone;
    let today: NaiveDate = now.with_timezone(&tz).date_naive();
    let backend = db.backend();
    let mut rows = Vec::new();
    let mut catalog_cache: std::collections::HashMap<TableName, Vec<(String, String)>> =
        Default::default();
    for k in known(cfg)? {
        if !catalog_cache.contains_key(&k.table) {
            let cols = db.columns(&k.table).await?;
            catalog_cache.insert(k.table.clone(), cols);
        }
        let cols = catalog_cache
            .get(&k.table)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let (class, action) = match &k.coverage {
            Coverage::Class { name, action } => (Some(name.clone()), Some(action.to_string())),
            Coverage::Disabled { name } | Coverage::Off { name } => (Some(name.clone()), None),
            _ => (None, None),
        };
        let (status, how) = if cols.is_empty() {
            (
                "absent",
                "absent: the database has no such table".to_string(),
            )
        } else {
            match &k.coverage {
                Coverage::Class { name, action } => ("covered", format!("class {name} ({action})")),
                Coverage::Disabled { name } => (
                    "disabled",
                    format!("class {name}, disabled in retention.yaml"),
                ),
                Coverage::Off { name } => (
                    "off",
                    format!(
                        "class {name}, off in the profile (name it in retention.yaml to turn it on)"
                    ),
                ),
                Coverage::Otherwise(how) => ("covered_otherwise", how.clone()),
                Coverage::NotCovered => ("not_covered", "not covered".to_string()),
            }
        };
        let mut row = InventoryRow {
            table: k.table.to_string(),
            status,
            class,
            action,
            how,
            columns: Vec::new(),
            missing_columns: Vec::new(),
            age_columns: names(&k.age),
            oldest: None,
            oldest_days: None,
            indexed: None,
            index: None,
            index_note: None,
            rows: None,
        };
        if cols.is_empty() {
            row.missing_columns = names(&k.columns);
            rows.push(row);
            continue;
        }
        for c in &k.columns {
            if present(cols, c) {
                row.columns.push(c.as_str().to_string());
            } else {
                row.missing_columns.push(c.as_str().to_string());
            }
        }
        row.rows = db.row_estimate(&k.table).await?;
        if !k.age.is_empty() && k.age.iter().all(|c| present(cols, c)) {
            let oldest = db.oldest(&k.table, &k.age, tz).await?;
            row.oldest = oldest.map(|d| d.format("%Y-%m-%d").to_string());
            row.oldest_days = oldest.map(|d| (today - d).num_days());
            let indexes = db.indexes(&k.table).await?;
            let served = catalog::serving(&indexes, &k.age);
            row.indexed = Some(served.is_some());
            row.index = served.map(|i| i.name.clone());
            if served.is_none() && k.age.len() > 1 && backend == Backend::MySql {
                row.index_note = Some(no_coalesce_index(&k.age));
            }
        } else {
            for c in &k.age {
                if !present(cols, c) {
                    row.missing_columns.push(c.as_str().to_string());
                }
            }
        }
        rows.push(row);
    }
    Ok(Inventory {
        backend: backend_name(backend),
        profile: cfg.profile.clone(),
        as_of: today.format("%Y-%m-%d").to_string(),
        tables: rows,
    })
}

impl Inventory {
    /// The aligned table a system administrator reads: one line per row (table,
    /// status, oldest date and age in days, index, columns), then the notes.
    pub fn text(&self) -> String {
        let head = [
            "table",
            "covered by",
            "oldest",
            "days",
            "age indexed",
            "columns",
        ];
        let lines: Vec<[String; 6]> = self
            .tables
            .iter()
            .map(|r| {
                let indexed = match (r.indexed, &r.index) {
                    (Some(true), Some(i)) => format!("yes ({i})"),
                    (Some(true), None) => "yes".to_string(),
                    (Some(false), _) => "no".to_string(),
                    (None, _) if r.status == "absent" => "-".to_string(),
                    (None, _) if r.age_columns.is_empty() => "(no age column)".to_string(),
                    (None, _) => "(age column missing)".to_string(),
                };
                let mut cols = r.columns.join(", ");
                if !r.missing_columns.is_empty() && r.status != "absent" {
                    cols.push_str(&format!(" (missing: {})", r.missing_columns.join(", ")));
                }
                let oldest = match (&r.oldest, r.status) {
                    (Some(d), _) => d.clone(),
                    (None, "absent") => "-".to_string(),
                    (None, _) if r.age_columns.is_empty() => "-".to_string(),
                    (None, _) => "(no rows)".to_string(),
                };
                [
                    r.table.clone(),
                    r.how.clone(),
                    oldest,
                    r.oldest_days
                        .map(|d| d.to_string())
                        .unwrap_or_else(|| "-".into()),
                    indexed,
                    cols,
                ]
            })
            .collect();
        let mut width = head.map(str::len);
        for l in &lines {
            for (w, c) in width.iter_mut().zip(l.iter()) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = format!(
            "inventory of personal data ({}, profile {}), ages to {}\n",
            self.backend,
            self.profile.as_deref().unwrap_or("none"),
            self.as_of
        );
        let fmt = |cells: [&str; 6]| {
            format!(
                "{:<w0$}  {:<w1$}  {:<w2$}  {:>w3$}  {:<w4$}  {}",
                cells[0],
                cells[1],
                cells[2],
                cells[3],
                cells[4],
                cells[5],
                w0 = width[0],
                w1 = width[1],
                w2 = width[2],
                w3 = width[3],
                w4 = width[4],
            )
            .trim_end()
            .to_string()
        };
        out.push_str(&fmt(head));
        out.push('\n');
        for l in &lines {
            out.push_str(&fmt([&l[0], &l[1], &l[2], &l[3], &l[4], &l[5]]));
            out.push('\n');
        }
        let notes: Vec<String> = self
            .tables
            .iter()
            .filter_map(|r| r.index_note.as_ref().map(|n| format!("  {}: {n}", r.table)))
            .collect();
        if !notes.is_empty() {
            out.push_str("notes:\n");
            for n in notes {
                out.push_str(&n);
                out.push('\n');
            }
        }
        let count = |s: &str| self.tables.iter().filter(|r| r.status == s).count();
        out.push_str(&format!(
            "{} tables: {} covered by a class, {} covered otherwise, {} disabled, {} off, {} not covered, {} absent\n",
            self.tables.len(),
            count("covered"),
            count("covered_otherwise"),
            count("disabled"),
            count("off"),
            count("not_covered"),
            count("absent"),
        ));
        out
    }
}

/// What an advised index would serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexPurpose {
    /// The class's age column(s): every count and batch compares them with the cutoff.
    Age,
    /// The `column` of a `linked:` entry (Koha's `checkout_renewals.checkout_id`):
    /// without an index each batch finds its linked rows through the patron column,
    /// reading every linked row of the batch's patrons (all their renewals, of any
    /// year), a cost that grows with the history.
    Linked,
}

/// An enabled class's age column(s), or `linked:` column, that no index serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexAdvice {
    /// The class (the first, when several classes share the table and columns).
    pub class: String,
    /// The table.
    pub table: TableName,
    /// The age column(s), or the one linked column.
    pub columns: Vec<Ident>,
    /// Which of the two.
    pub purpose: IndexPurpose,
    /// Rows each of the class's counts and batches may have to scan: the table's row
    /// estimate (see [`Db::row_estimate`]).
    pub rows: Option<u64>,
    /// The index Lethe would create ([`catalog::index_name`]).
    pub index: String,
    /// The statement that creates it (see [`catalog::create_statement`]); `None` where
    /// the backend cannot index the age (several columns on MariaDB/MySQL: `note`).
    pub statement: Option<String>,
    /// Why there is no statement.
    pub note: Option<String>,
}

impl IndexAdvice {
    /// `table.column`, or `table.COALESCE(a, b)`.
    pub fn target(&self) -> String {
        match self.columns.as_slice() {
            [one] => format!("{}.{one}", self.table),
            cols => format!("{}.COALESCE({})", self.table, names(cols).join(", ")),
        }
    }
}

/// The index advice for the enabled classes: each distinct (table, age columns) that
/// no index serves, in class order, then each `linked:` column no index serves
/// ([`IndexPurpose::Linked`]). Advice only: a missing index makes counts and
/// batches scan the table (slower, and longer row locks on MariaDB), never changes
/// what is selected, so `check` reports it and exits 0 (also with `--strict`, which is
/// about compliance: consent settings).
///
/// # Errors
/// [`DbError`] from the catalog.
pub async fn index_advice(cfg: &Config, db: &Db) -> Result<Vec<IndexAdvice>, DbError> {
    let backend = db.backend();
    // (class, table, columns, purpose), in the order advice is given.
    let mut wanted: Vec<(&str, &TableName, Vec<Ident>, IndexPurpose)> = Vec::new();
    for c in &cfg.classes {
        // The table holding the age: the class's own, or the linked one of `age.from`.
        let table = c.age.from.as_ref().map_or(&c.table, |f| &f.table);
        wanted.push((&c.name, table, c.age.columns.clone(), IndexPurpose::Age));
    }
    for c in &cfg.classes {
        for l in &c.linked {
            wanted.push((
                &c.name,
                &l.table,
                vec![l.column.clone()],
                IndexPurpose::Linked,
            ));
        }
    }
    let mut out: Vec<IndexAdvice> = Vec::new();
    for (class, table, columns, purpose) in wanted {
        let dup = out.iter().any(|a| {
            &a.table == table
                && a.columns.len() == columns.len()
                && a.columns
                    .iter()
                    .zip(&columns)
                    .all(|(x, y)| x.as_str().eq_ignore_ascii_case(y.as_str()))
        });
        if dup || db.index_serves(table, &columns).await? {
            continue;
        }
        let statement = catalog::create_statement(backend, table, &columns);
        let note = match (&statement, columns.len()) {
            (Some(_), _) => None,
            (None, n) if n > 1 => Some(no_coalesce_index(&columns)),
            (None, _) => Some(
                "a schema-qualified table on MariaDB/MySQL: create the index by hand".to_string(),
            ),
        };
        out.push(IndexAdvice {
            class: class.to_string(),
            table: table.clone(),
            purpose,
            rows: db.row_estimate(table).await?,
            index: catalog::index_name(backend, table, &columns),
            columns,
            statement,
            note,
        });
    }
    Ok(out)
}

/// An index `check --create-indexes` created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedIndex {
    /// The advice it followed.
    pub advice: IndexAdvice,
    /// Its ledger entry (kind `index-created`).
    pub ledger_entry: i64,
}

/// Creates the index of each piece of advice that has a statement, one at a time: the
/// statement outside a transaction ([`Db::create_index`]), the catalog read again to
/// confirm the index now serves the columns, then an `index-created` ledger entry
/// (`{"class", "columns", "index", "purpose": "age"|"linked", "statement", "table"}`) in a transaction of its own.
/// Lethe's tables are migrated first. No other statement is run on library tables.
///
/// The DDL and its ledger entry cannot share a transaction (PostgreSQL refuses
/// `CONCURRENTLY` inside one; MySQL commits DDL implicitly): should Lethe stop between
/// the two, the index stands unrecorded, and the next run sees it and creates nothing.
///
/// # Errors
/// [`DbError`]; [`DbError::Schema`] when, after the statement, the catalog still shows
/// no index serving the age (an invalid index left by an earlier failed build on
/// PostgreSQL, or a name taken by another index).
pub async fn create_indexes(db: &Db, advice: &[IndexAdvice]) -> Result<Vec<CreatedIndex>, DbError> {
    db.migrate().await?;
    let mut out = Vec::new();
    for a in advice {
        let Some(stmt) = &a.statement else { continue };
        // Another worker, or an earlier advice on the same table, may have made it.
        if db.index_serves(&a.table, &a.columns).await? {
            continue;
        }
        tracing::info!(class = %a.class, table = %a.table, index = %a.index, "creating index");
        db.create_index(stmt).await?;
        if !db.index_serves(&a.table, &a.columns).await? {
            return Err(DbError::Schema(format!(
                "after creating {} on {}, no valid index serves {}: drop an invalid or clashing index {} \
                 and run check --create-indexes again",
                a.index,
                a.table,
                a.target(),
                a.index
            )));
        }
        let event = serde_json::json!({
            "class": a.class,
            "columns": names(&a.columns),
            "index": a.index,
            "purpose": match a.purpose {
                IndexPurpose::Age => "age",
                IndexPurpose::Linked => "linked",
            },
            "statement": stmt,
            "table": a.table.to_string(),
        })
        .to_string();
        let mut tx = db.begin().await?;
        let entry = crate::ledger::record_index_created(&mut tx, &event).await?;
        tx.commit().await?;
        out.push(CreatedIndex {
            advice: a.clone(),
            ledger_entry: entry,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every name in the embedded profiles' inventories is a plain SQL name.
    #[test]
    fn profile_inventories_are_valid() {
        for text in [KOHA_PROFILE, EVERGREEN_PROFILE] {
            let p: RawProfile = serde_yaml::from_str(text).unwrap();
            assert!(p.inventory.len() >= 8, "{}", p.inventory.len());
            for e in &p.inventory {
                TableName::new(&e.table).unwrap();
                assert!(!e.columns.is_empty(), "{}", e.table);
                idents(&e.columns, "x").unwrap();
                idents(&e.age, "x").unwrap();
            }
        }
    }
}
