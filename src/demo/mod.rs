//! Demo library generator: a deterministic, Koha-shaped library with realistic
//! (but invented) patrons, circulation and holds history, fines and pending
//! patron modifications, and the patron's traces in every other table Koha keeps
//! them in (statistics, notices, logs, searches, deleted patrons, suggestions, ILL,
//! return claims, last borrowers, pseudonymized transactions, consents: `traces.rs`),
//! for demonstrations and tests of Lethe's retention rules.
//!
//! * [`KOHA_SQLITE_SCHEMA`] is a SQLite rendering of the Koha tables the demo
//!   uses (Koha's table and column names, types, NOT NULL and foreign-key
//!   actions); `tests/fixtures/koha_mysql.sql` is the same for MariaDB.
//! * [`populate`] fills an empty database that has those tables: our SQLite
//!   schema, our MariaDB fixture, or Koha's own `kohastructure.sql` on MariaDB.
//!   It inserts only columns present in all three, plus the reference rows the
//!   real schema's foreign keys need (branches, categories, biblio, biblioitems,
//!   items, account credit and debit types, message transport types).
//! * Everything is derived from [`DemoOptions::seed`], [`DemoOptions::today`] and
//!   [`DemoOptions::timezone`]:
//!   the same options give the same rows, byte for byte, on every backend.
//!
//! Dates are relative to `today`: DATETIME values are local wall time
//! `YYYY-MM-DD HH:MM:SS`, DATE values `YYYY-MM-DD`; the TIMESTAMP columns of
//! `accountlines`, `borrower_modifications` and the tables of `traces.rs` (classes
//! read them as ages) hold the UTC instant of a wall time in
//! [`DemoOptions::timezone`], as MariaDB stores them; the other TIMESTAMP columns
//! (row-modification times Lethe never reads) hold the wall time. All are strictly
//! before `today` except expiry dates, due dates of current checkouts and hold
//! expiration dates. E-mail addresses use the reserved `example.*` domains and phone
//! numbers the fictional 555-01xx range.

pub mod evergreen;
mod traces;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use chrono::{Datelike, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta};
use rand::distr::Distribution;
use rand::distr::weighted::WeightedIndex;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use sea_query::{
    Expr, InsertStatement, MysqlQueryBuilder, OnConflict, Query, SqliteQueryBuilder, Value,
};
use sea_query_sqlx::SqlxBinder;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

/// The Koha-shaped SQLite schema (DDL text, several statements) that
/// [`create_sqlite_schema`] runs: branches, categories, borrowers,
/// borrower_relationships, biblio, biblioitems, items, issues, old_issues,
/// checkout_renewals, reserves, old_reserves, account_credit_types, account_debit_types,
/// accountlines, borrower_modifications and systempreferences, and the other
/// tables that name a patron: statistics, message_transport_types, message_queue,
/// action_logs, search_history, deletedborrowers, suggestions, illrequests,
/// return_claims, items_last_borrower, pseudonymized_transactions and
/// patron_consent.
pub const KOHA_SQLITE_SCHEMA: &str = include_str!("koha_sqlite.sql");

/// What to generate.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Seed of the random generator; equal seeds (with equal other options)
    /// give identical data.
    pub seed: u64,
    /// The day the data is generated "on": history lies before it, expiry
    /// dates spread from 8 years before it to 3 years after it.
    pub today: chrono::NaiveDate,
    /// Number of `borrowers` rows in total, including staff and the anonymous
    /// patron; at least 10.
    pub patrons: usize,
    /// Number of `old_issues` rows (returned checkouts over the past 6 years).
    pub returned_checkouts: usize,
    /// When set, every personal text value generated (names, card numbers,
    /// e-mail, phone, address, city, zip code, userid, notes, titles, authors,
    /// fine descriptions...) contains this string. 1 to 20 characters from
    /// `A-Z a-z 0-9 _ -`.
    pub canary: Option<String>,
    /// The library's time zone (IANA): DATETIME and DATE values are its wall time;
    /// TIMESTAMP columns that a class reads as an age hold the UTC instant of that
    /// wall time, as MariaDB stores a TIMESTAMP written in a UTC session.
    pub timezone: chrono_tz::Tz,
}

impl DemoOptions {
    /// The standard demo: seed 4509, 5,000 patrons, 100,000 returned
    /// checkouts, no canary, relative to `today`, in America/New_York (the shipped
    /// `retention.yaml`'s zone).
    pub fn standard(today: chrono::NaiveDate) -> Self {
        DemoOptions {
            seed: 4509,
            today,
            patrons: 5000,
            returned_checkouts: 100_000,
            canary: None,
            timezone: chrono_tz::America::New_York,
        }
    }
}

/// Row counts of what [`populate`] inserted (reference rows not counted).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DemoStats {
    /// `borrowers` rows, including staff and the anonymous patron.
    pub patrons: u64,
    /// Patrons in the staff category (category_type 'S'), all with non-zero `flags`.
    pub staff: u64,
    /// `borrower_relationships` rows (an adult guarantor and a child guarantee).
    pub guarantor_pairs: u64,
    /// `old_issues` rows.
    pub returned_checkouts: u64,
    /// `issues` rows.
    pub current_checkouts: u64,
    /// `old_reserves` rows.
    pub old_holds: u64,
    /// `reserves` rows.
    pub current_holds: u64,
    /// `accountlines` rows (debits and credits).
    pub accountlines: u64,
    /// borrowernumber of the anonymous patron, also stored in the
    /// `AnonymousPatron` system preference.
    pub anonymous_patron: i64,
    /// `statistics` rows: an `issue`, `renew` and `return` per checkout, and
    /// in-house `localuse` rows without a patron.
    pub statistics: u64,
    /// `message_queue` rows: overdue and hold-ready notices.
    pub notices: u64,
    /// `action_logs` rows, patron modules and staff-only ones.
    pub action_logs: u64,
    /// `search_history` rows.
    pub searches: u64,
    /// `deletedborrowers` rows: copies of patrons Koha deleted before Lethe.
    pub deleted_patrons: u64,
    /// `suggestions` rows.
    pub suggestions: u64,
    /// `illrequests` rows.
    pub ill_requests: u64,
    /// `return_claims` rows.
    pub return_claims: u64,
    /// `items_last_borrower` rows.
    pub last_borrowers: u64,
    /// `pseudonymized_transactions` rows.
    pub pseudonymized_transactions: u64,
    /// `patron_consent` rows.
    pub consents: u64,
}

/// Errors of the demo generator.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The database refused a statement or could not be reached.
    #[error("demo database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A statement could not be built (column and value counts differ).
    #[error("demo query building error: {0}")]
    Query(#[from] sea_query::error::Error),
    /// Creating, removing or renaming the demo database file failed.
    #[error("demo file error: {0}")]
    Io(#[from] std::io::Error),
    /// The options cannot produce a demo library.
    #[error("invalid demo options: {0}")]
    InvalidOptions(String),
    /// The target database already holds patron or circulation rows.
    #[error("demo target is not empty: table {table} has {rows} rows")]
    NotEmpty {
        /// The table found non-empty.
        table: &'static str,
        /// Its row count.
        rows: i64,
    },
}

/// A database to fill: a SQLite pool (our schema) or a MariaDB/MySQL pool
/// (our fixture or Koha's own schema).
#[derive(Debug, Clone, Copy)]
pub enum DemoTarget<'a> {
    /// A SQLite database with [`KOHA_SQLITE_SCHEMA`] loaded.
    Sqlite(&'a sqlx::SqlitePool),
    /// A MariaDB database with Koha's tables.
    MySql(&'a sqlx::MySqlPool),
}

/// Creates the SQLite schema (KOHA_SQLITE_SCHEMA) in an empty database, in one
/// transaction. Fails if any of the tables already exists.
pub async fn create_sqlite_schema(pool: &sqlx::SqlitePool) -> Result<(), DemoError> {
    let mut tx = pool.begin().await?;
    sqlx::raw_sql(KOHA_SQLITE_SCHEMA).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(())
}

/// Fills a database that already has Koha's tables (our SQLite schema, our
/// MariaDB fixture, or Koha's own kohastructure.sql on MariaDB) with the demo
/// library described by `opts`, in a single transaction (all or nothing).
///
/// `borrowers`, `old_issues` and `issues` must be empty; reference rows
/// (branches, categories, account types) that already exist are kept, and the
/// `AnonymousPatron` preference is inserted or overwritten. Returns the row
/// counts inserted.
pub async fn populate(target: DemoTarget<'_>, opts: &DemoOptions) -> Result<DemoStats, DemoError> {
    let library = generate(opts)?;
    let mut tx = match target {
        DemoTarget::Sqlite(pool) => Tx::Sqlite(pool.begin().await?),
        DemoTarget::MySql(pool) => Tx::MySql(pool.begin().await?),
    };
    for table in ["borrowers", "old_issues", "issues"] {
        let rows = tx.count(table).await?;
        if rows != 0 {
            return Err(DemoError::NotEmpty { table, rows });
        }
    }
    for batch in library.batches {
        tx.insert(batch).await?;
    }
    tx.commit().await?;
    Ok(library.stats)
}

/// Creates `path` (a SQLite file) with schema and data if it does not exist; returns None when it already existed (left untouched).
///
/// The database is built in `<path>.partial` (rollback journal, so a single
/// file) and renamed to `path` when complete; missing parent directories are
/// created. Two processes racing on the same path may both build it; the last
/// rename wins.
pub async fn create_library_if_absent(
    path: &std::path::Path,
    opts: &DemoOptions,
) -> Result<Option<DemoStats>, DemoError> {
    if tokio::fs::try_exists(path).await? {
        return Ok(None);
    }
    // Validate before touching the file system.
    validate(opts)?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(parent).await?;
    }
    let partial = partial_path(path);
    remove_if_present(&partial).await?;
    let result = build_file(&partial, opts).await;
    let stats = match result {
        Ok(stats) => stats,
        Err(err) => {
            // Best effort: the build error is the one worth reporting.
            let _ = remove_if_present(&partial).await;
            return Err(err);
        }
    };
    if tokio::fs::try_exists(path).await? {
        remove_if_present(&partial).await?;
        return Ok(None);
    }
    tokio::fs::rename(&partial, path).await?;
    Ok(Some(stats))
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".partial");
    PathBuf::from(name)
}

async fn remove_if_present(path: &Path) -> Result<(), DemoError> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err.into()),
    }
}

async fn build_file(path: &Path, opts: &DemoOptions) -> Result<DemoStats, DemoError> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Delete)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    let result = async {
        create_sqlite_schema(&pool).await?;
        populate(DemoTarget::Sqlite(&pool), opts).await
    }
    .await;
    pool.close().await;
    result
}

// ---------------------------------------------------------------------------
// Writing

/// An open transaction on either backend.
enum Tx {
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    MySql(sqlx::Transaction<'static, sqlx::MySql>),
}

/// Most bound values per statement (SQLite allows 32,766, MySQL 65,535).
const MAX_BINDS: usize = 16_000;
/// Rows per multi-row INSERT.
const CHUNK_ROWS: usize = 500;

impl Tx {
    async fn count(&mut self, table: &'static str) -> Result<i64, DemoError> {
        let stmt = Query::select()
            .expr(Expr::cust("COUNT(*)"))
            .from(table)
            .to_owned();
        let n = match self {
            Tx::Sqlite(tx) => {
                let (sql, values) = stmt.build_sqlx(SqliteQueryBuilder);
                sqlx::query_scalar_with::<_, i64, _>(sqlx::AssertSqlSafe(sql), values)
                    .fetch_one(&mut **tx)
                    .await?
            }
            Tx::MySql(tx) => {
                let (sql, values) = stmt.build_sqlx(MysqlQueryBuilder);
                sqlx::query_scalar_with::<_, i64, _>(sqlx::AssertSqlSafe(sql), values)
                    .fetch_one(&mut **tx)
                    .await?
            }
        };
        Ok(n)
    }

    async fn insert(&mut self, batch: Batch) -> Result<(), DemoError> {
        let per_chunk = (MAX_BINDS / batch.columns.len().max(1)).clamp(1, CHUNK_ROWS);
        let mut rows = batch.rows.into_iter().peekable();
        while rows.peek().is_some() {
            let mut stmt = Query::insert();
            stmt.into_table(batch.table)
                .columns(batch.columns.iter().copied());
            for row in rows.by_ref().take(per_chunk) {
                stmt.values(row.into_iter().map(Expr::from))?;
            }
            match batch.conflict {
                Conflict::Fail => {}
                Conflict::Keep(key) => {
                    stmt.on_conflict(OnConflict::column(key).do_nothing_on([key]).to_owned());
                }
                Conflict::Overwrite(key, column) => {
                    stmt.on_conflict(OnConflict::column(key).update_column(column).to_owned());
                }
            }
            self.execute(&stmt).await?;
        }
        Ok(())
    }

    async fn execute(&mut self, stmt: &InsertStatement) -> Result<(), DemoError> {
        match self {
            Tx::Sqlite(tx) => {
                let (sql, values) = stmt.build_sqlx(SqliteQueryBuilder);
                sqlx::query_with(sqlx::AssertSqlSafe(sql), values)
                    .execute(&mut **tx)
                    .await?;
            }
            Tx::MySql(tx) => {
                let (sql, values) = stmt.build_sqlx(MysqlQueryBuilder);
                sqlx::query_with(sqlx::AssertSqlSafe(sql), values)
                    .execute(&mut **tx)
                    .await?;
            }
        }
        Ok(())
    }

    async fn commit(self) -> Result<(), DemoError> {
        match self {
            Tx::Sqlite(tx) => tx.commit().await?,
            Tx::MySql(tx) => tx.commit().await?,
        }
        Ok(())
    }
}

/// What to do when a row's key already exists.
#[derive(Clone, Copy)]
enum Conflict {
    /// Let the insert fail.
    Fail,
    /// Keep the existing row (reference data of a real Koha install).
    Keep(&'static str),
    /// Overwrite the given column (system preferences).
    Overwrite(&'static str, &'static str),
}

/// Rows for one table, in insertion order.
struct Batch {
    table: &'static str,
    columns: &'static [&'static str],
    rows: Vec<Vec<Value>>,
    conflict: Conflict,
}

impl Batch {
    fn new(table: &'static str, columns: &'static [&'static str], conflict: Conflict) -> Self {
        Batch {
            table,
            columns,
            rows: Vec::new(),
            conflict,
        }
    }

    fn push(&mut self, row: Vec<Value>) {
        debug_assert_eq!(row.len(), self.columns.len(), "row width of {}", self.table);
        self.rows.push(row);
    }
}

fn int(v: i64) -> Value {
    Value::BigInt(Some(v))
}

fn opt_int(v: Option<i64>) -> Value {
    Value::BigInt(v)
}

fn text(v: impl Into<String>) -> Value {
    Value::String(Some(v.into()))
}

fn opt_text(v: Option<String>) -> Value {
    Value::String(v)
}

fn money(v: f64) -> Value {
    Value::Double(Some(v))
}

fn date(d: NaiveDate) -> Value {
    text(d.format("%Y-%m-%d").to_string())
}

fn opt_date(d: Option<NaiveDate>) -> Value {
    opt_text(d.map(|d| d.format("%Y-%m-%d").to_string()))
}

fn datetime(d: NaiveDateTime) -> Value {
    text(d.format("%Y-%m-%d %H:%M:%S").to_string())
}

fn opt_datetime(d: Option<NaiveDateTime>) -> Value {
    opt_text(d.map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string()))
}

// ---------------------------------------------------------------------------
// Column lists (every column exists in our SQLite schema, our MariaDB fixture
// and Koha's kohastructure.sql).

const BRANCH_COLS: &[&str] = &["branchcode", "branchname"];
const CATEGORY_COLS: &[&str] = &[
    "categorycode",
    "description",
    "category_type",
    "default_privacy",
];
const CREDIT_TYPE_COLS: &[&str] = &["code", "description", "can_be_added_manually", "is_system"];
const DEBIT_TYPE_COLS: &[&str] = &["code", "description", "can_be_invoiced", "is_system"];
const BIBLIO_COLS: &[&str] = &[
    "biblionumber",
    "frameworkcode",
    "author",
    "title",
    "timestamp",
    "datecreated",
];
const BIBLIOITEM_COLS: &[&str] = &[
    "biblioitemnumber",
    "biblionumber",
    "itemtype",
    "isbn",
    "publicationyear",
    "timestamp",
];
const ITEM_COLS: &[&str] = &[
    "itemnumber",
    "biblionumber",
    "biblioitemnumber",
    "barcode",
    "dateaccessioned",
    "homebranch",
    "holdingbranch",
    "itemcallnumber",
    "timestamp",
];
const BORROWER_COLS: &[&str] = &[
    "borrowernumber",
    "cardnumber",
    "surname",
    "firstname",
    "middle_name",
    "othernames",
    "address",
    "city",
    "zipcode",
    "email",
    "phone",
    "dateofbirth",
    "branchcode",
    "categorycode",
    "dateenrolled",
    "dateexpiry",
    "borrowernotes",
    "sex",
    "password",
    "flags",
    "userid",
    "privacy",
    "updated_on",
    "lastseen",
    "protected",
];
const RELATIONSHIP_COLS: &[&str] = &["id", "guarantor_id", "guarantee_id", "relationship"];
const ISSUE_COLS: &[&str] = &[
    "issue_id",
    "borrowernumber",
    "issuer_id",
    "itemnumber",
    "date_due",
    "branchcode",
    "returndate",
    "lastreneweddate",
    "renewals_count",
    "timestamp",
    "issuedate",
    "note",
];
const RESERVE_COLS: &[&str] = &[
    "reserve_id",
    "borrowernumber",
    "reservedate",
    "biblionumber",
    "branchcode",
    "cancellationdate",
    "reservenotes",
    "priority",
    "found",
    "timestamp",
    "itemnumber",
    "waitingdate",
    "expirationdate",
];
const ACCOUNTLINE_COLS: &[&str] = &[
    "accountlines_id",
    "issue_id",
    "old_issue_id",
    "borrowernumber",
    "itemnumber",
    "date",
    "amount",
    "description",
    "credit_type_code",
    "debit_type_code",
    "status",
    "amountoutstanding",
    "timestamp",
    "note",
    "manager_id",
    "interface",
    "branchcode",
];
const MODIFICATION_COLS: &[&str] = &[
    "timestamp",
    "verification_token",
    "changed_fields",
    "borrowernumber",
    "cardnumber",
    "surname",
    "firstname",
    "email",
    "dateexpiry",
];
const SYSPREF_COLS: &[&str] = &["variable", "value", "options", "explanation", "type"];

// ---------------------------------------------------------------------------
// Embedded word lists (invented people; public-domain book titles).

const BRANCHES: &[(&str, &str)] = &[
    ("CPL", "Centerville Public Library"),
    ("FFL", "Fairfield Branch"),
    ("MPL", "Midway Branch"),
    ("RPL", "Riverside Branch"),
];

/// (code, description, category_type, kind).
const CATEGORIES: &[(&str, &str, &str)] = &[
    ("PT", "Patron", "A"),
    ("ST", "Student", "A"),
    ("J", "Juvenile", "C"),
    ("S", "Staff", "S"),
];

const CREDIT_TYPES: &[(&str, &str)] = &[
    ("PAYMENT", "Payment"),
    ("FORGIVEN", "Forgiven"),
    ("WRITEOFF", "Writeoff"),
    ("CREDIT", "Credit"),
    ("REFUND", "Refund"),
];

const DEBIT_TYPES: &[(&str, &str)] = &[
    ("OVERDUE", "Overdue fine"),
    ("LOST", "Lost item"),
    ("PROCESSING", "Lost item processing fee"),
    ("MANUAL", "Manual fee"),
];

#[rustfmt::skip]
const FEMALE_NAMES: &[&str] = &[
    "Mary", "Patricia", "Jennifer", "Linda", "Elizabeth", "Barbara", "Susan", "Jessica", "Sarah",
    "Karen", "Nancy", "Lisa", "Margaret", "Sandra", "Ashley", "Emily", "Donna", "Michelle", "Carol",
    "Amanda", "Melissa", "Deborah", "Stephanie", "Rebecca", "Laura", "Sharon", "Cynthia",
    "Kathleen", "Amy", "Angela", "Helen", "Anna", "Brenda", "Pamela", "Nicole", "Emma", "Samantha",
    "Katherine", "Christine", "Rachel", "Olivia", "Sophia", "Chloé", "Zoë", "Ingrid", "Maria",
    "Aisha", "Mei", "Priya", "Fatima",
];

#[rustfmt::skip]
const MALE_NAMES: &[&str] = &[
    "James", "Robert", "John", "Michael", "David", "William", "Richard", "Joseph", "Thomas",
    "Charles", "Daniel", "Matthew", "Anthony", "Mark", "Donald", "Steven", "Paul", "Andrew",
    "Joshua", "Kenneth", "Kevin", "Brian", "George", "Timothy", "Ronald", "Edward", "Jason",
    "Jeffrey", "Ryan", "Jacob", "Gary", "Nicholas", "Eric", "Jonathan", "Stephen", "Larry",
    "Justin", "Scott", "Brandon", "Benjamin", "Samuel", "Gregory", "Frank", "Raymond", "José",
    "Lars", "Ahmed", "Wei", "Rahul", "Kwame",
];

#[rustfmt::skip]
const NICKNAMES: &[&str] = &[
    "Bobby", "Liz", "Kate", "Jim", "Bill", "Sam", "Max", "Jo", "Chris", "Alex",
];

#[rustfmt::skip]
const SURNAMES: &[&str] = &[
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez",
    "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor", "Moore",
    "Jackson", "Martin", "Lee", "Perez", "Thompson", "White", "Harris", "Sanchez", "Clark",
    "Ramirez", "Lewis", "Robinson", "Walker", "Young", "Allen", "King", "Wright", "Scott", "Torres",
    "Nguyen", "Hill", "Flores", "Green", "Adams", "Nelson", "Baker", "Hall", "Rivera", "Campbell",
    "Mitchell", "Carter", "Roberts", "Gomez", "Phillips", "Evans", "Turner", "Diaz", "Parker",
    "Cruz", "Edwards", "Collins", "Reyes", "Stewart", "Morris", "Morales", "Murphy", "Cook",
    "Rogers", "Gutierrez", "Ortiz", "Morgan", "Cooper", "Peterson", "Bailey", "Reed", "Kelly",
    "Howard", "Ramos", "Kim", "Cox", "Ward", "Richardson", "Watson", "Brooks", "Chavez", "Wood",
    "James", "Bennett", "Gray", "Mendoza", "Ruiz", "Hughes", "Price", "Alvarez", "Castillo",
    "Sanders", "Patel", "Myers", "Long", "Ross", "Foster", "O'Connor", "Müller", "Nováková",
    "Okafor", "Haddad", "Larsen",
];

#[rustfmt::skip]
const STREETS: &[&str] = &[
    "Main Street", "Oak Avenue", "Maple Street", "Cedar Lane", "Pine Street", "Elm Street",
    "Washington Avenue", "Lake Road", "Hill Street", "Park Avenue", "Church Street", "Mill Road",
    "River Road", "Spring Street", "North Street", "Chestnut Street", "Willow Way",
    "Highland Avenue", "Sunset Boulevard", "Meadow Lane", "Franklin Street", "Jefferson Road",
    "Lincoln Avenue", "Walnut Street", "Birch Court", "Orchard Drive", "School Street",
    "Bridge Street", "Forest Avenue", "Prospect Street", "Union Street", "Garden Terrace",
];

/// (city, zip prefix, area code).
const CITIES: &[(&str, &str, &str)] = &[
    ("Centerville", "4530", "937"),
    ("Fairfield", "4501", "513"),
    ("Midway", "4536", "937"),
    ("Riverside", "4543", "937"),
    ("Springfield", "4550", "937"),
    ("Oakwood", "4541", "937"),
    ("Kettering", "4542", "937"),
    ("Bellbrook", "4530", "937"),
];

const NOTES: &[&str] = &[
    "Prefers large print.",
    "Card replaced after loss.",
    "Address verified by phone.",
    "Homebound delivery on Tuesdays.",
    "Interlibrary loan contact.",
    "Requested no overdue calls before 10 am.",
    "Volunteer at the book sale.",
    "Returned items damaged twice; discussed with patron.",
];

const LOAN_NOTES: &[&str] = &[
    "Disc 2 missing",
    "Pages 40-42 torn",
    "Coffee stain on cover",
    "Map insert missing",
    "Returned in book drop, wet",
];

const HOLD_NOTES: &[&str] = &[
    "Please call when ready",
    "Large print if possible",
    "Any edition is fine",
    "Pick up after 5 pm",
    "For book club",
];

/// Public-domain titles and their authors (as Koha stores them: "Surname, Forenames").
const CLASSICS: &[(&str, &str)] = &[
    ("Pride and prejudice", "Austen, Jane"),
    ("Emma", "Austen, Jane"),
    ("Persuasion", "Austen, Jane"),
    ("Jane Eyre", "Brontë, Charlotte"),
    ("Wuthering Heights", "Brontë, Emily"),
    ("Great expectations", "Dickens, Charles"),
    ("A tale of two cities", "Dickens, Charles"),
    ("Bleak House", "Dickens, Charles"),
    ("Middlemarch", "Eliot, George"),
    ("Silas Marner", "Eliot, George"),
    ("Moby-Dick, or, The whale", "Melville, Herman"),
    ("The scarlet letter", "Hawthorne, Nathaniel"),
    ("Adventures of Huckleberry Finn", "Twain, Mark"),
    ("The adventures of Tom Sawyer", "Twain, Mark"),
    ("Little women", "Alcott, Louisa May"),
    (
        "Frankenstein, or, The modern Prometheus",
        "Shelley, Mary Wollstonecraft",
    ),
    ("Dracula", "Stoker, Bram"),
    ("The picture of Dorian Gray", "Wilde, Oscar"),
    ("The time machine", "Wells, H. G."),
    ("The war of the worlds", "Wells, H. G."),
    ("Twenty thousand leagues under the sea", "Verne, Jules"),
    ("Around the world in eighty days", "Verne, Jules"),
    ("The count of Monte Cristo", "Dumas, Alexandre"),
    ("The three musketeers", "Dumas, Alexandre"),
    ("Les misérables", "Hugo, Victor"),
    ("Anna Karenina", "Tolstoy, Leo"),
    ("War and peace", "Tolstoy, Leo"),
    ("Crime and punishment", "Dostoyevsky, Fyodor"),
    ("The brothers Karamazov", "Dostoyevsky, Fyodor"),
    ("Madame Bovary", "Flaubert, Gustave"),
    ("Don Quixote", "Cervantes Saavedra, Miguel de"),
    ("Treasure Island", "Stevenson, Robert Louis"),
    (
        "Strange case of Dr Jekyll and Mr Hyde",
        "Stevenson, Robert Louis",
    ),
    ("Kidnapped", "Stevenson, Robert Louis"),
    ("The jungle book", "Kipling, Rudyard"),
    ("Kim", "Kipling, Rudyard"),
    ("Heart of darkness", "Conrad, Joseph"),
    ("Lord Jim", "Conrad, Joseph"),
    ("The hound of the Baskervilles", "Doyle, Arthur Conan"),
    ("The adventures of Sherlock Holmes", "Doyle, Arthur Conan"),
    ("Alice's adventures in Wonderland", "Carroll, Lewis"),
    ("Through the looking-glass", "Carroll, Lewis"),
    ("The wonderful Wizard of Oz", "Baum, L. Frank"),
    ("Anne of Green Gables", "Montgomery, L. M."),
    ("The secret garden", "Burnett, Frances Hodgson"),
    ("A little princess", "Burnett, Frances Hodgson"),
    ("Peter Pan", "Barrie, J. M."),
    ("The wind in the willows", "Grahame, Kenneth"),
    ("Black Beauty", "Sewell, Anna"),
    ("Heidi", "Spyri, Johanna"),
    ("The call of the wild", "London, Jack"),
    ("White Fang", "London, Jack"),
    ("The age of innocence", "Wharton, Edith"),
    ("The house of mirth", "Wharton, Edith"),
    ("The awakening", "Chopin, Kate"),
    ("My Ántonia", "Cather, Willa"),
    ("O pioneers!", "Cather, Willa"),
    ("The red badge of courage", "Crane, Stephen"),
    ("Walden, or, Life in the woods", "Thoreau, Henry David"),
    ("Leaves of grass", "Whitman, Walt"),
    ("Uncle Tom's cabin", "Stowe, Harriet Beecher"),
    ("The last of the Mohicans", "Cooper, James Fenimore"),
    ("Ivanhoe", "Scott, Walter"),
    ("Gulliver's travels", "Swift, Jonathan"),
    ("Robinson Crusoe", "Defoe, Daniel"),
    ("Tess of the d'Urbervilles", "Hardy, Thomas"),
    ("Far from the madding crowd", "Hardy, Thomas"),
    ("The moonstone", "Collins, Wilkie"),
    ("The woman in white", "Collins, Wilkie"),
    ("North and south", "Gaskell, Elizabeth"),
    ("Vanity fair", "Thackeray, William Makepeace"),
    ("The odyssey", "Homer"),
    ("The divine comedy", "Dante Alighieri"),
    ("The prince", "Machiavelli, Niccolò"),
    ("Meditations", "Marcus Aurelius"),
    ("The art of war", "Sunzi"),
    ("On the origin of species", "Darwin, Charles"),
    ("The souls of Black folk", "Du Bois, W. E. B."),
    (
        "Narrative of the life of Frederick Douglass",
        "Douglass, Frederick",
    ),
    ("The federalist", "Hamilton, Alexander"),
];

#[rustfmt::skip]
const TITLE_ADJECTIVES: &[&str] = &[
    "Silent", "Hidden", "Last", "Golden", "Broken", "Winter", "Distant", "Secret", "Lost",
    "Burning", "Quiet", "Northern", "Forgotten", "Crimson", "Wandering", "Endless",
];

#[rustfmt::skip]
const TITLE_NOUNS: &[&str] = &[
    "River", "Garden", "Harbor", "Orchard", "Lighthouse", "Kingdom", "Letters", "Island", "Road",
    "House", "Mountain", "Station", "Library", "Summer", "Frontier", "Crossing", "Meadow",
    "Archive",
];

const NONFICTION_TOPICS: &[(&str, &str)] = &[
    ("a history of bread", "641.815"),
    ("home vegetable gardening", "635"),
    ("the birds of Ohio", "598.09771"),
    ("beginning watercolor", "751.422"),
    ("personal finance for everyone", "332.024"),
    ("the Civil War at sea", "973.75"),
    ("knitting for beginners", "746.432"),
    ("the night sky", "520"),
    ("raising chickens", "636.5"),
    ("woodworking basics", "684.08"),
    ("the story of jazz", "781.65"),
    ("mushrooms of North America", "579.6"),
];

const BCRYPT_ALPHABET: &[u8] = b"./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

// ---------------------------------------------------------------------------
// Generation

/// The generated library: batches in foreign-key order, and their counts.
struct Library {
    batches: Vec<Batch>,
    stats: DemoStats,
}

fn validate(opts: &DemoOptions) -> Result<(), DemoError> {
    if opts.patrons < 10 {
        return Err(DemoError::InvalidOptions(format!(
            "patrons must be at least 10, got {}",
            opts.patrons
        )));
    }
    if opts.patrons > 10_000_000 || opts.returned_checkouts > 100_000_000 {
        return Err(DemoError::InvalidOptions(
            "at most 10,000,000 patrons and 100,000,000 returned checkouts".to_string(),
        ));
    }
    if let Some(c) = &opts.canary {
        let ok = !c.is_empty()
            && c.len() <= 20
            && c.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-');
        if !ok {
            return Err(DemoError::InvalidOptions(format!(
                "canary must be 1 to 20 characters from A-Z a-z 0-9 _ -, got {c:?}"
            )));
        }
    }
    if opts.today.year() < 1990 || opts.today.year() > 2100 {
        return Err(DemoError::InvalidOptions(format!(
            "today must lie between 1990 and 2100 (TIMESTAMP columns), got {}",
            opts.today
        )));
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Anonymous,
    Staff,
    Adult,
    Student,
    Child,
}

impl Kind {
    fn category(self) -> &'static str {
        match self {
            Kind::Anonymous | Kind::Adult => "PT",
            Kind::Student => "ST",
            Kind::Child => "J",
            Kind::Staff => "S",
        }
    }
}

#[derive(Clone)]
struct Household {
    number: i64,
    street: &'static str,
    city: usize,
    phone: String,
}

struct Patron {
    bn: i64,
    kind: Kind,
    enrolled: NaiveDate,
    expiry: NaiveDate,
    dob: Option<NaiveDate>,
    female: bool,
    sex: Option<&'static str>,
    first: &'static str,
    middle: Option<&'static str>,
    other: Option<&'static str>,
    surname: &'static str,
    home: Household,
    branch: &'static str,
    privacy: i64,
    protected: bool,
    flags: Option<i64>,
    has_email: bool,
    has_login: bool,
    note: Option<&'static str>,
    lastseen: Option<NaiveDateTime>,
}

struct Loan {
    /// issue_id (old_issues and issues share the sequence).
    id: i64,
    patron: Option<usize>,
    item: usize,
    issued: NaiveDateTime,
    due: NaiveDateTime,
    returned: Option<NaiveDateTime>,
    renewed: Option<NaiveDateTime>,
    renewals: i64,
    branch: &'static str,
    issuer: Option<i64>,
    note: Option<&'static str>,
    stored_bn: Option<i64>,
    timestamp: NaiveDateTime,
}

struct Hold {
    /// The patron who placed it (None: deleted long ago).
    patron: Option<usize>,
    biblio: usize,
    item: Option<usize>,
    reserved: NaiveDate,
    cancelled: Option<NaiveDate>,
    waiting: Option<NaiveDate>,
    expiration: Option<NaiveDate>,
    found: Option<&'static str>,
    priority: i64,
    branch: &'static str,
    note: Option<&'static str>,
    stored_bn: Option<i64>,
    timestamp: NaiveDateTime,
}

struct Fee {
    date: NaiveDateTime,
    timestamp: NaiveDateTime,
    issue_id: Option<i64>,
    old_issue_id: Option<i64>,
    bn: i64,
    item: Option<usize>,
    amount: f64,
    description: Option<String>,
    credit: Option<&'static str>,
    debit: Option<&'static str>,
    status: Option<&'static str>,
    outstanding: f64,
    note: Option<&'static str>,
    manager: Option<i64>,
    interface: &'static str,
    branch: &'static str,
}

struct Item {
    biblio: usize,
    barcode: String,
}

struct Biblio {
    title: String,
    first_item: usize,
    items: usize,
}

/// Fixed instants the generator works from.
struct Clock {
    today: NaiveDate,
    /// The library's zone, for TIMESTAMP columns (UTC instants of local times).
    tz: chrono_tz::Tz,
    /// Latest moment of recorded history: yesterday 19:59:59.
    yesterday_evening: NaiveDateTime,
    /// First day of circulation history (six years back).
    history_start: NaiveDate,
    /// Last day a historical checkout or hold may start (two days back).
    history_end: NaiveDate,
    /// Rows of privacy-1 patrons that ended before this day were anonymized
    /// by a nightly batch that ran until two years ago.
    anonymized_before: NaiveDate,
}

impl Clock {
    fn new(today: NaiveDate, tz: chrono_tz::Tz) -> Self {
        let evening = NaiveTime::from_hms_opt(19, 59, 59).unwrap_or(NaiveTime::MIN);
        Clock {
            today,
            tz,
            yesterday_evening: (today - TimeDelta::days(1)).and_time(evening),
            history_start: today - TimeDelta::days(6 * 365),
            history_end: today - TimeDelta::days(2),
            anonymized_before: today - TimeDelta::days(5 * 365),
        }
    }

    /// A TIMESTAMP value: the UTC instant of the library's wall time `local`
    /// (`YYYY-MM-DD HH:MM:SS`). A time in a daylight-saving gap is taken an hour
    /// later; in a fold, the earlier instant.
    fn instant(&self, local: NaiveDateTime) -> Value {
        datetime(self.utc(local))
    }

    fn utc(&self, local: NaiveDateTime) -> NaiveDateTime {
        use chrono::TimeZone;
        self.tz
            .from_local_datetime(&local)
            .earliest()
            .or_else(|| {
                self.tz
                    .from_local_datetime(&(local + TimeDelta::hours(1)))
                    .earliest()
            })
            .map_or(local, |t| t.naive_utc())
    }
}

struct Catalogue {
    biblios: Vec<Biblio>,
    items: Vec<Item>,
}

/// The patrons, and who among them borrows.
struct Population {
    patrons: Vec<Patron>,
    /// Each patron's e-mail address as stored in `borrowers.email` (same index).
    emails: Vec<Option<String>>,
    anon_bn: i64,
    staff_bns: Vec<i64>,
    /// Indexes of patrons (not the anonymous one) whose card is valid today.
    active: Vec<usize>,
    /// Indexes of patrons whose card expired more than a year ago.
    long_expired: Vec<usize>,
    /// (patron index, first day, last day) of each borrowing patron's active
    /// period within the history window.
    readers: Vec<(usize, NaiveDate, NaiveDate)>,
    /// Picks a reader, weighted by period length and appetite.
    chooser: Option<WeightedIndex<f64>>,
}

impl Population {
    fn reader(&self, g: &mut Gen) -> Option<(usize, NaiveDate, NaiveDate)> {
        self.chooser
            .as_ref()
            .map(|c| self.readers[c.sample(&mut g.rng)])
    }

    fn staff(&self, g: &mut Gen) -> i64 {
        self.staff_bns[g.index(self.staff_bns.len())]
    }
}

struct Gen {
    rng: StdRng,
    today: NaiveDate,
    canary: Option<String>,
}

impl Gen {
    /// True with probability `p` (0..=1).
    fn chance(&mut self, p: f64) -> bool {
        self.rng.random::<f64>() < p
    }

    /// Uniform integer in `lo..=hi` (`lo` when `hi < lo`).
    fn between(&mut self, lo: i64, hi: i64) -> i64 {
        if hi <= lo {
            lo
        } else {
            self.rng.random_range(lo..=hi)
        }
    }

    /// Uniform index into a slice of length `len` (> 0).
    fn index(&mut self, len: usize) -> usize {
        if len <= 1 {
            0
        } else {
            self.rng.random_range(0..len)
        }
    }

    fn pick<T: Copy>(&mut self, list: &[T]) -> T {
        list[self.index(list.len())]
    }

    fn days_ago(&self, days: i64) -> NaiveDate {
        self.today - TimeDelta::days(days)
    }

    /// A uniform day between `lo` and `hi` days before today (inclusive).
    fn days_ago_between(&mut self, lo: i64, hi: i64) -> NaiveDate {
        let back = self.between(lo, hi);
        self.days_ago(back)
    }

    /// Uniform day in `a..=b` (`a` when `b < a`).
    fn day_between(&mut self, a: NaiveDate, b: NaiveDate) -> NaiveDate {
        let span = (b - a).num_days();
        a + TimeDelta::days(self.between(0, span))
    }

    /// A wall-clock time between `from_hour`:00:00 and `to_hour`:59:59.
    fn time(&mut self, from_hour: i64, to_hour: i64) -> NaiveTime {
        let secs = self.between(from_hour * 3600, to_hour * 3600 + 3599);
        NaiveTime::from_num_seconds_from_midnight_opt(secs as u32, 0).unwrap_or(NaiveTime::MIN)
    }

    fn at(&mut self, day: NaiveDate, from_hour: i64, to_hour: i64) -> NaiveDateTime {
        day.and_time(self.time(from_hour, to_hour))
    }

    /// `s`, with the canary appended when one is set.
    fn tag(&self, s: &str) -> String {
        match &self.canary {
            Some(c) => format!("{s}-{c}"),
            None => s.to_string(),
        }
    }

    fn bcrypt_like(&mut self) -> String {
        let mut s = String::from("$2a$08$");
        for _ in 0..53 {
            s.push(BCRYPT_ALPHABET[self.index(BCRYPT_ALPHABET.len())] as char);
        }
        s
    }

    fn hex_token(&mut self) -> String {
        let a: u64 = self.rng.random();
        let b: u64 = self.rng.random();
        format!("{a:016x}{b:016x}")
    }
}

/// Lower-case ASCII letters and digits of `s` (for e-mail addresses and logins).
fn ascii_slug(s: &str) -> String {
    s.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

fn cents(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// Mixed into the seed of the generator of [`traces`] ("lethe4" in ASCII).
const TRACES_SEED: u64 = 0x6c65_7468_6534;

fn generate(opts: &DemoOptions) -> Result<Library, DemoError> {
    validate(opts)?;
    let mut g = Gen {
        rng: StdRng::seed_from_u64(opts.seed),
        today: opts.today,
        canary: opts.canary.clone(),
    };
    let clock = Clock::new(opts.today, opts.timezone);
    let mut out = Library {
        batches: Vec::new(),
        stats: DemoStats::default(),
    };
    reference_rows(&mut out);
    let cat = catalogue(&mut g, opts.returned_checkouts, &mut out);
    let pop = population(&mut g, &clock, opts.patrons, &mut out)?;
    let loans = returned_checkouts(
        &mut g,
        &clock,
        &cat,
        &pop,
        opts.returned_checkouts,
        &mut out,
    );
    let first_current = loans.len() as i64 + 1;
    let current = current_checkouts(&mut g, &cat, &pop, first_current, &mut out);
    fees(&mut g, &clock, &cat, &pop, &loans, &current, &mut out);
    let old_holds = opts.returned_checkouts / 5;
    let holds = holds_history(&mut g, &clock, &cat, &pop, old_holds, &mut out);
    let pending = current_holds(&mut g, &cat, &pop, &current, old_holds as i64 + 1, &mut out);
    modifications(&mut g, &clock, &pop, &mut out);
    // The other tables that name a patron draw from a generator of their own, so the
    // rows above stay exactly as they were before those tables were seeded.
    let mut traces = Gen {
        rng: StdRng::seed_from_u64(opts.seed ^ TRACES_SEED),
        today: opts.today,
        canary: opts.canary.clone(),
    };
    traces::generate(
        &mut traces,
        &traces::Sources {
            clock: &clock,
            cat: &cat,
            pop: &pop,
            loans: &loans,
            current: &current,
            holds: &holds,
            pending: &pending,
        },
        &mut out,
    );
    Ok(out)
}

/// Branches, patron categories and account types (kept when they exist).
fn reference_rows(out: &mut Library) {
    let mut b = Batch::new("branches", BRANCH_COLS, Conflict::Keep("branchcode"));
    for (code, name) in BRANCHES {
        b.push(vec![text(*code), text(*name)]);
    }
    out.batches.push(b);
    let mut b = Batch::new("categories", CATEGORY_COLS, Conflict::Keep("categorycode"));
    for (code, description, kind) in CATEGORIES {
        b.push(vec![
            text(*code),
            text(*description),
            text(*kind),
            text("default"),
        ]);
    }
    out.batches.push(b);
    let mut b = Batch::new(
        "account_credit_types",
        CREDIT_TYPE_COLS,
        Conflict::Keep("code"),
    );
    for (code, description) in CREDIT_TYPES {
        b.push(vec![text(*code), text(*description), int(0), int(1)]);
    }
    out.batches.push(b);
    let mut b = Batch::new(
        "account_debit_types",
        DEBIT_TYPE_COLS,
        Conflict::Keep("code"),
    );
    for (code, description) in DEBIT_TYPES {
        b.push(vec![text(*code), text(*description), int(0), int(1)]);
    }
    out.batches.push(b);
}

/// Titles (biblio, biblioitems) with one to three copies each (items).
fn catalogue(g: &mut Gen, returned_checkouts: usize, out: &mut Library) -> Catalogue {
    let n_biblios = (returned_checkouts / 40).clamp(50, 3000);
    let mut biblios: Vec<Biblio> = Vec::with_capacity(n_biblios);
    let mut items: Vec<Item> = Vec::new();
    let mut bib_batch = Batch::new("biblio", BIBLIO_COLS, Conflict::Fail);
    let mut bi_batch = Batch::new("biblioitems", BIBLIOITEM_COLS, Conflict::Fail);
    let mut item_batch = Batch::new("items", ITEM_COLS, Conflict::Fail);
    for i in 0..n_biblios {
        let (title, author, callnumber) = if let Some(&(t, a)) = CLASSICS.get(i) {
            let cutter: String = a.chars().take(3).collect::<String>().to_uppercase();
            (t.to_string(), a.to_string(), format!("FIC {cutter}"))
        } else if g.chance(0.25) {
            let (topic, dewey) = g.pick(NONFICTION_TOPICS);
            let surname = g.pick(SURNAMES);
            let first = if g.chance(0.5) {
                g.pick(FEMALE_NAMES)
            } else {
                g.pick(MALE_NAMES)
            };
            let mut t = topic.to_string();
            if let Some(c) = t.get_mut(0..1) {
                c.make_ascii_uppercase();
            }
            let cutter: String = surname.chars().take(3).collect::<String>().to_uppercase();
            (
                t,
                format!("{surname}, {first}"),
                format!("{dewey} {cutter}"),
            )
        } else {
            let adjective = g.pick(TITLE_ADJECTIVES);
            let noun = g.pick(TITLE_NOUNS);
            let surname = g.pick(SURNAMES);
            let first = if g.chance(0.5) {
                g.pick(FEMALE_NAMES)
            } else {
                g.pick(MALE_NAMES)
            };
            let t = match g.index(4) {
                0 => format!("The {} {}", adjective.to_lowercase(), noun.to_lowercase()),
                1 => format!("{adjective} {}", noun.to_lowercase()),
                2 => format!("The {} of {}", noun.to_lowercase(), g.pick(CITIES).0),
                _ => {
                    let article = if adjective.starts_with(['A', 'E', 'I', 'O', 'U']) {
                        "An"
                    } else {
                        "A"
                    };
                    format!(
                        "{article} {} {} : a novel",
                        adjective.to_lowercase(),
                        noun.to_lowercase()
                    )
                }
            };
            let cutter: String = surname.chars().take(3).collect::<String>().to_uppercase();
            (t, format!("{surname}, {first}"), format!("FIC {cutter}"))
        };
        let biblionumber = i as i64 + 1;
        let created = g.day_between(g.days_ago(15 * 365), g.days_ago(400));
        let created_at = g.at(created, 9, 16);
        let title = g.tag(&title);
        let author = g.tag(&author);
        bib_batch.push(vec![
            int(biblionumber),
            text(""),
            text(author),
            text(title.clone()),
            datetime(created_at),
            date(created),
        ]);
        let year = (created.year() - g.between(0, 30) as i32).to_string();
        let isbn = format!("978{:010}", g.between(0, 9_999_999_999));
        bi_batch.push(vec![
            int(biblionumber),
            int(biblionumber),
            text("BK"),
            text(isbn),
            text(year),
            datetime(created_at),
        ]);
        let copies = g.between(1, 3) as usize;
        let first_item = items.len();
        for _ in 0..copies {
            let itemnumber = items.len() as i64 + 1;
            let barcode = format!("3999900{:07}", itemnumber);
            let home = g.pick(BRANCHES).0;
            let accessioned = g.day_between(created, created + TimeDelta::days(60));
            item_batch.push(vec![
                int(itemnumber),
                int(biblionumber),
                int(biblionumber),
                text(barcode.clone()),
                date(accessioned),
                text(home),
                text(home),
                text(callnumber.clone()),
                datetime(g.at(accessioned, 9, 16)),
            ]);
            items.push(Item { biblio: i, barcode });
        }
        biblios.push(Biblio {
            title,
            first_item,
            items: copies,
        });
    }
    out.batches.push(bib_batch);
    out.batches.push(bi_batch);
    out.batches.push(item_batch);

    Catalogue { biblios, items }
}

/// One patron of the given kind, before borrowernumbers are assigned.
/// `superlibrarian` gives a staff patron flags = 1.
fn new_patron(g: &mut Gen, kind: Kind, today: NaiveDate, superlibrarian: bool) -> Patron {
    let female = g.chance(0.52);
    let first = if female {
        g.pick(FEMALE_NAMES)
    } else {
        g.pick(MALE_NAMES)
    };
    let city = g.index(CITIES.len());
    let home = Household {
        number: g.between(1, 2400),
        street: g.pick(STREETS),
        city,
        phone: format!("({}) 555-01{:02}", CITIES[city].2, g.between(0, 99)),
    };
    let (enrolled, expiry) = match kind {
        Kind::Anonymous => (
            g.days_ago(7 * 365 + 40),
            NaiveDate::from_ymd_opt(2099, 12, 31).unwrap_or(today),
        ),
        Kind::Staff => {
            let expiry = if g.chance(0.9) {
                today + TimeDelta::days(g.between(30, 3 * 365))
            } else {
                g.days_ago_between(30, 2 * 365)
            };
            let enrolled =
                (expiry - TimeDelta::days(g.between(2 * 365, 12 * 365))).min(g.days_ago(30));
            (enrolled, expiry)
        }
        _ => {
            let expiry = today + TimeDelta::days(g.between(-8 * 365, 3 * 365));
            let enrolled = (expiry - TimeDelta::days(g.between(365, 6 * 365)))
                .min(g.days_ago(1))
                .max(g.days_ago(15 * 365));
            (enrolled, expiry)
        }
    };
    let dob = match kind {
        Kind::Anonymous => None,
        Kind::Staff => Some(g.days_ago_between(22 * 365, 64 * 365)),
        Kind::Adult => {
            if g.chance(0.03) {
                None
            } else {
                Some(enrolled - TimeDelta::days(g.between(18 * 365, 75 * 365)))
            }
        }
        Kind::Student => Some(enrolled - TimeDelta::days(g.between(16 * 365, 25 * 365))),
        Kind::Child => Some(enrolled - TimeDelta::days(g.between(2 * 365, 14 * 365))),
    };
    let sex = if g.chance(0.03) || kind == Kind::Anonymous {
        None
    } else if female {
        Some("F")
    } else {
        Some("M")
    };
    let privacy = if kind == Kind::Anonymous || kind == Kind::Staff {
        1
    } else {
        let u: f64 = g.rng.random();
        if u < 0.05 {
            0
        } else if u < 0.10 {
            2
        } else {
            1
        }
    };
    let flags = match kind {
        Kind::Staff => {
            let f = if superlibrarian {
                1
            } else {
                g.pick(&[2 | 4, 2 | 4 | 16, 2 | 4 | 16 | 64, 4 | 8 | 16, 1])
            };
            Some(f)
        }
        Kind::Anonymous => Some(0),
        _ if g.chance(0.003) => Some(2),
        _ if g.chance(0.2) => Some(0),
        _ => None,
    };
    let lastseen = if kind == Kind::Anonymous {
        None
    } else if expiry < today {
        if g.chance(0.6) {
            let end = expiry.min(g.days_ago(1));
            let day = g.day_between(enrolled, end);
            Some(g.at(day, 8, 21))
        } else {
            None
        }
    } else if g.chance(0.8) {
        let day = g.day_between(enrolled.max(g.days_ago(730)), g.days_ago(1));
        Some(g.at(day, 8, 21))
    } else {
        None
    };
    Patron {
        bn: 0,
        kind,
        enrolled,
        expiry,
        dob,
        female,
        sex,
        first,
        middle: if g.chance(0.25) {
            Some(if female {
                g.pick(FEMALE_NAMES)
            } else {
                g.pick(MALE_NAMES)
            })
        } else {
            None
        },
        other: if g.chance(0.04) {
            Some(g.pick(NICKNAMES))
        } else {
            None
        },
        surname: g.pick(SURNAMES),
        home,
        branch: if g.chance(0.6) {
            BRANCHES[0].0
        } else {
            g.pick(BRANCHES).0
        },
        privacy,
        protected: kind != Kind::Anonymous && g.chance(0.005),
        flags,
        has_email: kind == Kind::Staff || (kind != Kind::Anonymous && g.chance(0.85)),
        has_login: kind == Kind::Staff || (kind != Kind::Anonymous && g.chance(0.6)),
        note: if kind != Kind::Anonymous && g.chance(0.03) {
            Some(g.pick(NOTES))
        } else {
            None
        },
        lastseen,
    }
}

/// Patrons (borrowers), guarantor pairs and the AnonymousPatron preference.
fn population(
    g: &mut Gen,
    clock: &Clock,
    n: usize,
    out: &mut Library,
) -> Result<Population, DemoError> {
    let today = clock.today;
    let n_staff = (n / 100).max(2);
    let n_children = (n * 15 / 100).max(1);
    let n_students = (n / 10).max(1);
    let mut kinds = vec![Kind::Anonymous];
    kinds.extend(std::iter::repeat_n(Kind::Staff, n_staff));
    kinds.extend(std::iter::repeat_n(Kind::Child, n_children));
    kinds.extend(std::iter::repeat_n(Kind::Student, n_students));
    let n_adults = n.saturating_sub(kinds.len());
    if n_adults == 0 {
        return Err(DemoError::InvalidOptions(
            "too few patrons for an adult population".to_string(),
        ));
    }
    kinds.extend(std::iter::repeat_n(Kind::Adult, n_adults));
    kinds.shuffle(&mut g.rng);

    let mut patrons: Vec<Patron> = Vec::with_capacity(n);
    let mut first_staff = true;
    for kind in kinds {
        patrons.push(new_patron(
            g,
            kind,
            today,
            first_staff && kind == Kind::Staff,
        ));
        first_staff &= kind != Kind::Staff;
    }
    // borrowernumbers follow enrolment order, as in a real library.
    patrons.sort_by_key(|p| p.enrolled);
    for (i, p) in patrons.iter_mut().enumerate() {
        p.bn = i as i64 + 1;
    }
    let anon_idx = patrons
        .iter()
        .position(|p| p.kind == Kind::Anonymous)
        .unwrap_or(0);
    let anon_bn = patrons[anon_idx].bn;
    let staff_bns: Vec<i64> = patrons
        .iter()
        .filter(|p| p.kind == Kind::Staff)
        .map(|p| p.bn)
        .collect();

    // Guarantors: a child shares the guarantor's surname, address and phone.
    let adult_idx: Vec<usize> = (0..patrons.len())
        .filter(|&i| patrons[i].kind == Kind::Adult)
        .collect();
    let mut rel_batch = Batch::new("borrower_relationships", RELATIONSHIP_COLS, Conflict::Fail);
    for child in 0..patrons.len() {
        if patrons[child].kind != Kind::Child || !g.chance(0.7) {
            continue;
        }
        let guarantor = adult_idx[g.index(adult_idx.len())];
        let relationship = if patrons[guarantor].female {
            g.pick(&["mother", "guardian", "grandparent", "mother"])
        } else {
            g.pick(&["father", "guardian", "grandparent", "father"])
        };
        let (surname, home) = (patrons[guarantor].surname, patrons[guarantor].home.clone());
        patrons[child].surname = surname;
        patrons[child].home = home;
        let id = rel_batch.rows.len() as i64 + 1;
        rel_batch.push(vec![
            int(id),
            int(patrons[guarantor].bn),
            int(patrons[child].bn),
            text(relationship),
        ]);
    }

    let mut pat_batch = Batch::new("borrowers", BORROWER_COLS, Conflict::Fail);
    let mut emails = Vec::with_capacity(patrons.len());
    for p in &patrons {
        let (row, email) = borrower_row(g, p);
        pat_batch.push(row);
        emails.push(email);
    }
    out.stats.patrons = patrons.len() as u64;
    out.stats.staff = staff_bns.len() as u64;
    out.stats.guarantor_pairs = rel_batch.rows.len() as u64;
    out.stats.anonymous_patron = anon_bn;
    out.batches.push(pat_batch);
    out.batches.push(rel_batch);

    let mut pref_batch = Batch::new(
        "systempreferences",
        SYSPREF_COLS,
        Conflict::Overwrite("variable", "value"),
    );
    pref_batch.push(vec![
        text("AnonymousPatron"),
        text(anon_bn.to_string()),
        opt_text(None),
        text("Borrowernumber of the patron that receives anonymized circulation history"),
        text("Free"),
    ]);
    out.batches.push(pref_batch);

    // Who borrows: patrons with an active period in the last six years,
    // weighted by its length and a heavy-tailed appetite for reading.
    let (history_start, history_end) = (clock.history_start, clock.history_end);
    let mut windows: Vec<(usize, NaiveDate, NaiveDate)> = Vec::new();
    let mut weights: Vec<f64> = Vec::new();
    for (i, p) in patrons.iter().enumerate() {
        if p.kind == Kind::Anonymous {
            continue;
        }
        let start = p.enrolled.max(history_start);
        let end = p.expiry.min(history_end);
        if end < start {
            continue;
        }
        let appetite = 0.1 + 6.0 * g.rng.random::<f64>().powi(3);
        windows.push((i, start, end));
        weights.push(((end - start).num_days() + 1) as f64 * appetite);
    }
    let chooser = if windows.is_empty() {
        None
    } else {
        Some(
            WeightedIndex::new(&weights)
                .map_err(|e| DemoError::InvalidOptions(format!("patron weights: {e}")))?,
        )
    };
    let active: Vec<usize> = (0..patrons.len())
        .filter(|&i| {
            let p = &patrons[i];
            p.kind != Kind::Anonymous && p.expiry >= today && p.enrolled < today
        })
        .collect();
    let long_expired: Vec<usize> = (0..patrons.len())
        .filter(|&i| {
            let p = &patrons[i];
            p.kind != Kind::Anonymous && p.expiry < clock.today - TimeDelta::days(365)
        })
        .collect();
    if active.is_empty() {
        return Err(DemoError::InvalidOptions(
            "no active patron generated; raise patrons".to_string(),
        ));
    }
    Ok(Population {
        patrons,
        emails,
        anon_bn,
        staff_bns,
        active,
        long_expired,
        readers: windows,
        chooser,
    })
}

/// Returned checkouts (old_issues) over the past six years.
fn returned_checkouts(
    g: &mut Gen,
    clock: &Clock,
    cat: &Catalogue,
    pop: &Population,
    count: usize,
    out: &mut Library,
) -> Vec<Loan> {
    let (patrons, anon_bn, items) = (&pop.patrons, pop.anon_bn, &cat.items);
    let mut loans: Vec<Loan> = Vec::with_capacity(count);
    for _ in 0..count {
        let (patron, start, end) = match pop.reader(g) {
            Some((i, s, e)) if !g.chance(0.005) => (Some(i), s, e),
            // A patron deleted long ago: Koha's FK set the borrowernumber to NULL.
            _ => (None, clock.history_start, clock.history_end),
        };
        let item = ((g.rng.random::<f64>().powf(1.6)) * items.len() as f64) as usize;
        let item = item.min(items.len() - 1);
        let issue_day = g.day_between(start, end);
        let issued = g.at(issue_day, 9, 19);
        let period = g.pick(&[14, 21, 28]);
        let u: f64 = g.rng.random();
        let mut renewals = if u < 0.78 {
            0
        } else if u < 0.92 {
            1
        } else if u < 0.98 {
            2
        } else {
            3
        };
        let mut renewed = None;
        if renewals > 0 {
            let day = issued.date() + TimeDelta::days(renewals * period - g.between(0, 3));
            if day < g.days_ago(1) && day > issued.date() {
                renewed = Some(g.at(day, 9, 19));
            } else {
                renewals = 0;
            }
        }
        let due_base = renewed.unwrap_or(issued).date();
        let due = (due_base + TimeDelta::days(period))
            .and_hms_opt(23, 59, 0)
            .unwrap_or(issued);
        let returned = if g.chance(0.001) {
            None
        } else {
            let day = if g.chance(0.85) {
                g.day_between(due_base + TimeDelta::days(1), due.date())
            } else {
                due.date() + TimeDelta::days(g.between(1, 45))
            };
            let floor = renewed.unwrap_or(issued) + TimeDelta::hours(1);
            let mut r = g.at(day, 9, 19);
            if r > clock.yesterday_evening {
                // Not back yet by the model: returned at some moment since.
                let span = (clock.yesterday_evening - floor).num_seconds().max(0);
                r = floor + TimeDelta::seconds(g.between(0, span));
            }
            Some(r.max(floor))
        };
        let branch = match patron {
            Some(i) if g.chance(0.8) => patrons[i].branch,
            _ => g.pick(BRANCHES).0,
        };
        let issuer = if g.chance(0.85) {
            Some(pop.staff(g))
        } else {
            None
        };
        let note = if g.chance(0.005) {
            Some(g.pick(LOAN_NOTES))
        } else {
            None
        };
        let moved =
            returned.unwrap_or_else(|| (due + TimeDelta::days(30)).min(clock.yesterday_evening));
        let (stored_bn, timestamp) = match patron {
            None => (None, moved),
            Some(i) => {
                let p = &patrons[i];
                if p.privacy == 2 {
                    // Anonymized at check-in.
                    (Some(anon_bn), moved)
                } else if p.privacy == 1
                    && returned.is_some_and(|r| r.date() < clock.anonymized_before)
                {
                    // Anonymized by a nightly batch run three years after return.
                    let day = moved.date() + TimeDelta::days(3 * 365);
                    (Some(anon_bn), g.at(day, 2, 2))
                } else {
                    (Some(p.bn), moved)
                }
            }
        };
        loans.push(Loan {
            id: 0,
            patron,
            item,
            issued,
            due,
            returned,
            renewed,
            renewals,
            branch,
            issuer,
            note,
            stored_bn,
            timestamp,
        });
    }
    loans.sort_by_key(|l| l.issued);
    for (i, l) in loans.iter_mut().enumerate() {
        l.id = i as i64 + 1;
    }
    let mut old_issue_batch = Batch::new("old_issues", ISSUE_COLS, Conflict::Fail);
    for l in &loans {
        old_issue_batch.push(vec![
            int(l.id),
            opt_int(l.stored_bn),
            opt_int(l.issuer),
            int(l.item as i64 + 1),
            datetime(l.due),
            text(l.branch),
            opt_datetime(l.returned),
            opt_datetime(l.renewed),
            int(l.renewals),
            datetime(l.timestamp),
            datetime(l.issued),
            opt_text(l.note.map(|s| g.tag(s))),
        ]);
    }
    out.stats.returned_checkouts = loans.len() as u64;
    out.batches.push(old_issue_batch);

    loans
}

/// Current checkouts (issues) of ~2% of patrons, some of them long expired.
fn current_checkouts(
    g: &mut Gen,
    cat: &Catalogue,
    pop: &Population,
    first_id: i64,
    out: &mut Library,
) -> Vec<Loan> {
    let (patrons, items, n) = (&pop.patrons, &cat.items, pop.patrons.len());
    let mut shelf: Vec<usize> = (0..items.len()).collect();
    shelf.shuffle(&mut g.rng);
    let n_current = (n / 50).max(1).min(items.len() / 3).max(1);
    let on_loan: Vec<usize> = shelf.iter().copied().take(n_current).collect();
    let (active, long_expired) = (&pop.active, &pop.long_expired);
    let mut current: Vec<Loan> = Vec::with_capacity(n_current);
    for (k, &item) in on_loan.iter().enumerate() {
        let expired = k % 7 == 3 && !long_expired.is_empty();
        let i = if expired {
            long_expired[g.index(long_expired.len())]
        } else {
            active[g.index(active.len())]
        };
        let p = &patrons[i];
        let day = if expired {
            g.day_between(
                (p.expiry - TimeDelta::days(90)).max(p.enrolled),
                p.expiry - TimeDelta::days(1),
            )
        } else {
            g.days_ago_between(1, 45).max(p.enrolled)
        };
        let issued = g.at(day, 9, 19);
        let (renewals, renewed) = if !expired && g.chance(0.15) && day < g.days_ago(2) {
            let r = g.day_between(day + TimeDelta::days(1), g.days_ago(1));
            (1, Some(g.at(r, 9, 19)))
        } else {
            (0, None)
        };
        let due_base = renewed.unwrap_or(issued).date();
        let due = (due_base + TimeDelta::days(21))
            .and_hms_opt(23, 59, 0)
            .unwrap_or(issued);
        current.push(Loan {
            id: 0,
            patron: Some(i),
            item,
            issued,
            due,
            returned: None,
            renewed,
            renewals,
            branch: p.branch,
            issuer: Some(pop.staff(g)),
            note: if g.chance(0.03) {
                Some(g.pick(LOAN_NOTES))
            } else {
                None
            },
            stored_bn: Some(p.bn),
            timestamp: renewed.unwrap_or(issued),
        });
    }
    current.sort_by_key(|l| l.issued);
    for (k, l) in current.iter_mut().enumerate() {
        l.id = first_id + k as i64;
    }
    let mut issue_batch = Batch::new("issues", ISSUE_COLS, Conflict::Fail);
    for l in &current {
        issue_batch.push(vec![
            int(l.id),
            opt_int(l.stored_bn),
            opt_int(l.issuer),
            int(l.item as i64 + 1),
            datetime(l.due),
            text(l.branch),
            opt_datetime(None),
            opt_datetime(l.renewed),
            int(l.renewals),
            datetime(l.timestamp),
            datetime(l.issued),
            opt_text(l.note.map(|s| g.tag(s))),
        ]);
    }
    out.stats.current_checkouts = current.len() as u64;
    out.batches.push(issue_batch);

    current
}

/// Fines on late and lost loans, their payments, and a few unused credits.
fn fees(
    g: &mut Gen,
    clock: &Clock,
    cat: &Catalogue,
    pop: &Population,
    loans: &[Loan],
    current: &[Loan],
    out: &mut Library,
) {
    let (today, patrons, n) = (clock.today, &pop.patrons, pop.patrons.len());
    let (biblios, items) = (&cat.biblios, &cat.items);
    let mut fees: Vec<Fee> = Vec::new();
    for l in loans {
        let Some(pi) = l.patron else { continue };
        let bn = patrons[pi].bn;
        let title = &biblios[items[l.item].biblio].title;
        match l.returned {
            Some(r) if r > l.due && g.chance(0.6) => {
                let days_late = (r.date() - l.due.date()).num_days().max(1);
                let amount = cents((days_late as f64 * 0.25).min(5.0));
                let charged = g.at(l.due.date() + TimeDelta::days(1), 0, 1);
                let u: f64 = g.rng.random();
                let settlement = if u < 0.70 {
                    Some("PAYMENT")
                } else if u < 0.78 {
                    Some("FORGIVEN")
                } else {
                    None
                };
                let settled_at = settlement.map(|_| {
                    let day = (r.date() + TimeDelta::days(g.between(0, 30))).min(g.days_ago(1));
                    g.at(day, 9, 19).max(r)
                });
                fees.push(Fee {
                    date: charged,
                    timestamp: settled_at.unwrap_or(r),
                    issue_id: None,
                    old_issue_id: Some(l.id),
                    bn,
                    item: Some(l.item),
                    amount,
                    description: Some(
                        g.tag(&format!("Overdue: {} ({})", title, items[l.item].barcode)),
                    ),
                    credit: None,
                    debit: Some("OVERDUE"),
                    status: Some("RETURNED"),
                    outstanding: if settlement.is_some() { 0.0 } else { amount },
                    note: None,
                    manager: None,
                    interface: "cron",
                    branch: l.branch,
                });
                if let (Some(kind), Some(at)) = (settlement, settled_at) {
                    let online = kind == "PAYMENT" && g.chance(0.2);
                    fees.push(Fee {
                        date: at,
                        timestamp: at,
                        issue_id: None,
                        old_issue_id: None,
                        bn,
                        item: None,
                        amount: -amount,
                        description: None,
                        credit: Some(kind),
                        debit: None,
                        status: None,
                        outstanding: 0.0,
                        note: if g.chance(0.1) {
                            Some("Paid at the circulation desk")
                        } else {
                            None
                        },
                        manager: if online { None } else { Some(pop.staff(g)) },
                        interface: if online { "opac" } else { "intranet" },
                        branch: l.branch,
                    });
                }
            }
            None if g.chance(0.6) => {
                let amount = cents(g.between(1500, 4000) as f64 / 100.0);
                let charged = g.at(
                    (l.due.date() + TimeDelta::days(30)).min(g.days_ago(1)),
                    0,
                    1,
                );
                let paid = g.chance(0.5);
                let paid_at = if paid {
                    let day =
                        (charged.date() + TimeDelta::days(g.between(1, 60))).min(g.days_ago(1));
                    Some(g.at(day, 9, 19).max(charged))
                } else {
                    None
                };
                fees.push(Fee {
                    date: charged,
                    timestamp: paid_at.unwrap_or(charged),
                    issue_id: None,
                    old_issue_id: Some(l.id),
                    bn,
                    item: Some(l.item),
                    amount,
                    description: Some(
                        g.tag(&format!("Lost item: {} ({})", title, items[l.item].barcode)),
                    ),
                    credit: None,
                    debit: Some("LOST"),
                    status: None,
                    outstanding: if paid { 0.0 } else { amount },
                    note: None,
                    manager: Some(pop.staff(g)),
                    interface: "intranet",
                    branch: l.branch,
                });
                if let Some(at) = paid_at {
                    fees.push(Fee {
                        date: at,
                        timestamp: at,
                        issue_id: None,
                        old_issue_id: None,
                        bn,
                        item: None,
                        amount: -amount,
                        description: None,
                        credit: Some("PAYMENT"),
                        debit: None,
                        status: None,
                        outstanding: 0.0,
                        note: None,
                        manager: Some(pop.staff(g)),
                        interface: "intranet",
                        branch: l.branch,
                    });
                }
            }
            _ => {}
        }
    }
    for l in current {
        let Some(pi) = l.patron else { continue };
        if l.due.date() >= today - TimeDelta::days(1) {
            continue;
        }
        let days_late = (today - l.due.date()).num_days().max(1);
        let amount = cents((days_late as f64 * 0.25).min(5.0));
        let title = &biblios[items[l.item].biblio].title;
        fees.push(Fee {
            date: g.at(l.due.date() + TimeDelta::days(1), 0, 1),
            timestamp: g.at(g.days_ago(1).max(l.due.date() + TimeDelta::days(1)), 0, 1),
            issue_id: Some(l.id),
            old_issue_id: None,
            bn: patrons[pi].bn,
            item: Some(l.item),
            amount,
            description: Some(g.tag(&format!("Overdue: {} ({})", title, items[l.item].barcode))),
            credit: None,
            debit: Some("OVERDUE"),
            status: Some("UNRETURNED"),
            outstanding: amount,
            note: None,
            manager: None,
            interface: "cron",
            branch: l.branch,
        });
    }
    // Unused credits (negative amountoutstanding) for a few patrons.
    let n_credits = (n / 300).max(1);
    for _ in 0..n_credits {
        let Some((pi, start, end)) = pop.reader(g) else {
            break;
        };
        let amount = cents(g.between(200, 2000) as f64 / 100.0);
        let day = g.day_between(start, end);
        let at = g.at(day, 9, 19);
        fees.push(Fee {
            date: at,
            timestamp: at,
            issue_id: None,
            old_issue_id: None,
            bn: patrons[pi].bn,
            item: None,
            amount: -amount,
            description: Some(g.tag("Refund of lost item fee, item found")),
            credit: Some("CREDIT"),
            debit: None,
            status: None,
            outstanding: -amount,
            note: Some("Credit kept on account at patron's request"),
            manager: Some(pop.staff(g)),
            interface: "intranet",
            branch: patrons[pi].branch,
        });
    }
    fees.sort_by_key(|f| f.date);
    let mut fee_batch = Batch::new("accountlines", ACCOUNTLINE_COLS, Conflict::Fail);
    for (k, f) in fees.iter().enumerate() {
        fee_batch.push(vec![
            int(k as i64 + 1),
            opt_int(f.issue_id),
            opt_int(f.old_issue_id),
            int(f.bn),
            opt_int(f.item.map(|i| i as i64 + 1)),
            clock.instant(f.date),
            money(f.amount),
            opt_text(f.description.clone()),
            opt_text(f.credit.map(str::to_string)),
            opt_text(f.debit.map(str::to_string)),
            opt_text(f.status.map(str::to_string)),
            money(f.outstanding),
            clock.instant(f.timestamp),
            opt_text(f.note.map(|s| g.tag(s))),
            opt_int(f.manager),
            text(f.interface),
            text(f.branch),
        ]);
    }
    out.stats.accountlines = fees.len() as u64;
    out.batches.push(fee_batch);
}

/// Filled, cancelled and expired holds (old_reserves), returned in reserve_id order.
fn holds_history(
    g: &mut Gen,
    clock: &Clock,
    cat: &Catalogue,
    pop: &Population,
    count: usize,
    out: &mut Library,
) -> Vec<Hold> {
    let (patrons, anon_bn, biblios) = (&pop.patrons, pop.anon_bn, &cat.biblios);
    let mut holds: Vec<Hold> = Vec::with_capacity(count);
    let last_day = g.days_ago(1);
    for _ in 0..count {
        let (patron, start, end) = match pop.reader(g) {
            Some((i, s, e)) if !g.chance(0.005) => (Some(i), s, e),
            _ => (None, clock.history_start, clock.history_end),
        };
        let biblio = ((g.rng.random::<f64>().powf(1.6)) * biblios.len() as f64) as usize;
        let biblio = biblio.min(biblios.len() - 1);
        let reserved = g.day_between(start, end);
        let copy = biblios[biblio].first_item + g.index(biblios[biblio].items);
        let u: f64 = g.rng.random();
        let (found, item, waiting, cancelled) = if u < 0.65 {
            let w = (reserved + TimeDelta::days(g.between(1, 10))).min(last_day);
            (Some("F"), Some(copy), Some(w), None)
        } else if u < 0.85 {
            let c = (reserved + TimeDelta::days(g.between(1, 60))).min(last_day);
            (None, None, None, Some(c))
        } else {
            let w = (reserved + TimeDelta::days(g.between(1, 10))).min(last_day);
            let c = (w + TimeDelta::days(g.between(7, 10))).min(last_day);
            (Some("W"), Some(copy), Some(w), Some(c))
        };
        let finished = match (found, waiting, cancelled) {
            (_, _, Some(c)) => c,
            (_, Some(w), None) => (w + TimeDelta::days(g.between(0, 6))).min(last_day),
            _ => reserved,
        };
        let timestamp = g.at(finished, 9, 19);
        let branch = match patron {
            Some(i) if g.chance(0.85) => patrons[i].branch,
            _ => g.pick(BRANCHES).0,
        };
        let stored_bn = patron.map(|i| {
            let p = &patrons[i];
            if p.privacy == 2 || (p.privacy == 1 && finished < clock.anonymized_before) {
                anon_bn
            } else {
                p.bn
            }
        });
        holds.push(Hold {
            patron,
            biblio,
            item,
            reserved,
            cancelled,
            waiting,
            expiration: if g.chance(0.4) {
                Some(reserved + TimeDelta::days(365))
            } else {
                None
            },
            found,
            priority: 0,
            branch,
            note: if g.chance(0.03) {
                Some(g.pick(HOLD_NOTES))
            } else {
                None
            },
            stored_bn,
            timestamp,
        });
    }
    holds.sort_by_key(|h| h.reserved);
    let mut old_hold_batch = Batch::new("old_reserves", RESERVE_COLS, Conflict::Fail);
    for (k, h) in holds.iter().enumerate() {
        old_hold_batch.push(reserve_row(g, k as i64 + 1, h.stored_bn, h));
    }
    out.stats.old_holds = holds.len() as u64;
    out.batches.push(old_hold_batch);
    holds
}

/// Pending, waiting and in-transit holds (reserves), returned in reserve_id order.
fn current_holds(
    g: &mut Gen,
    cat: &Catalogue,
    pop: &Population,
    current: &[Loan],
    first_id: i64,
    out: &mut Library,
) -> Vec<Hold> {
    let (patrons, active, biblios, n) =
        (&pop.patrons, &pop.active, &cat.biblios, pop.patrons.len());
    let n_current_holds = (n * 3 / 200).max(1);
    let mut taken: HashSet<usize> = current.iter().map(|l| l.item).collect();
    let mut pending: Vec<Hold> = Vec::with_capacity(n_current_holds);
    for _ in 0..n_current_holds {
        let i = active[g.index(active.len())];
        let biblio = g.index(biblios.len());
        let reserved = g.days_ago_between(1, 60).max(patrons[i].enrolled);
        let free = (0..biblios[biblio].items)
            .map(|c| biblios[biblio].first_item + c)
            .find(|it| !taken.contains(it));
        let u: f64 = g.rng.random();
        let (found, item, waiting, expiration) = match free {
            Some(it) if u < 0.2 => {
                taken.insert(it);
                let back = g.between(1, 6);
                let w = g.days_ago(back).max(reserved);
                (Some("W"), Some(it), Some(w), Some(w + TimeDelta::days(7)))
            }
            Some(it) if u < 0.3 => {
                taken.insert(it);
                (Some("T"), Some(it), None, None)
            }
            _ => (
                None,
                None,
                None,
                if g.chance(0.3) {
                    Some(reserved + TimeDelta::days(180))
                } else {
                    None
                },
            ),
        };
        let timestamp = g.at(waiting.unwrap_or(reserved), 9, 19);
        pending.push(Hold {
            patron: Some(i),
            biblio,
            item,
            reserved,
            cancelled: None,
            waiting,
            expiration,
            found,
            priority: 0,
            branch: patrons[i].branch,
            note: if g.chance(0.05) {
                Some(g.pick(HOLD_NOTES))
            } else {
                None
            },
            stored_bn: Some(patrons[i].bn),
            timestamp,
        });
    }
    pending.sort_by_key(|h| h.reserved);
    // Holds not yet trapped queue up per title in order of placement.
    let mut queue_len = vec![0i64; biblios.len()];
    for h in pending.iter_mut() {
        if h.found.is_none() {
            queue_len[h.biblio] += 1;
            h.priority = queue_len[h.biblio];
        }
    }
    let mut hold_batch = Batch::new("reserves", RESERVE_COLS, Conflict::Fail);
    for (k, h) in pending.iter().enumerate() {
        hold_batch.push(reserve_row(g, first_id + k as i64, h.stored_bn, h));
    }
    out.stats.current_holds = pending.len() as u64;
    out.batches.push(hold_batch);
    pending
}

/// Patron modification requests and pending self-registrations.
fn modifications(g: &mut Gen, clock: &Clock, pop: &Population, out: &mut Library) {
    let (patrons, active, n) = (&pop.patrons, &pop.active, pop.patrons.len());
    let mut mod_batch = Batch::new("borrower_modifications", MODIFICATION_COLS, Conflict::Fail);
    let mut requested: HashSet<usize> = HashSet::new();
    for _ in 0..(n / 200).max(1) {
        let i = active[g.index(active.len())];
        if !requested.insert(i) {
            continue;
        }
        let p = &patrons[i];
        let back = g.between(1, 400);
        let at = g.at(g.days_ago(back).max(p.enrolled), 8, 21);
        let (fields, surname, email) = match g.index(3) {
            0 => (
                "email",
                None,
                Some(email_for(
                    g,
                    p.first,
                    p.surname,
                    g_suffix(p.bn + 7),
                    "example.net",
                )),
            ),
            1 => {
                let s = g.pick(SURNAMES);
                ("surname", Some(g.tag(s)), None)
            }
            _ => {
                let s = g.pick(SURNAMES);
                (
                    "surname,email",
                    Some(g.tag(s)),
                    Some(email_for(g, p.first, s, g_suffix(p.bn), "example.com")),
                )
            }
        };
        mod_batch.push(vec![
            clock.instant(at),
            text(""),
            text(fields),
            int(p.bn),
            opt_text(None),
            opt_text(surname),
            opt_text(None),
            opt_text(email),
            opt_date(None),
        ]);
    }
    let mut tokens: HashSet<String> = HashSet::new();
    for k in 0..(n / 500).max(2) {
        let token = g.hex_token();
        if !tokens.insert(token.clone()) {
            continue;
        }
        let female = g.chance(0.5);
        let first = if female {
            g.pick(FEMALE_NAMES)
        } else {
            g.pick(MALE_NAMES)
        };
        let surname = g.pick(SURNAMES);
        // Half are older than a month (expired verification links).
        let age = if k % 2 == 0 {
            g.between(31, 200)
        } else {
            g.between(0, 6)
        };
        let at = g.at(g.days_ago(age), 0, 23);
        let cardnumber = if k % 3 == 0 {
            Some(cardnumber_for(g, 900_000 + k as i64))
        } else {
            None
        };
        mod_batch.push(vec![
            clock.instant(at),
            text(token),
            opt_text(None),
            int(0),
            opt_text(cardnumber),
            text(g.tag(surname)),
            text(g.tag(first)),
            text(email_for(
                g,
                first,
                surname,
                g_suffix(k as i64),
                "example.org",
            )),
            opt_date(None),
        ]);
    }
    out.batches.push(mod_batch);
}

/// Two digits derived from a number, to vary e-mail addresses.
fn g_suffix(n: i64) -> String {
    format!("{:02}", (n * 37) % 100)
}

fn email_for(g: &Gen, first: &str, surname: &str, suffix: String, domain: &str) -> String {
    let local = format!("{}.{}{}", ascii_slug(first), ascii_slug(surname), suffix);
    match &g.canary {
        Some(c) => format!("{local}.{c}@{domain}"),
        None => format!("{local}@{domain}"),
    }
}

fn cardnumber_for(g: &Gen, n: i64) -> String {
    match &g.canary {
        Some(c) => format!("{c}-{n:08}"),
        None => format!("{}", 23_529_000_000_000_i64 + n * 17),
    }
}

/// The `borrowers` row of `p` (BORROWER_COLS), and the e-mail address it holds.
fn borrower_row(g: &mut Gen, p: &Patron) -> (Vec<Value>, Option<String>) {
    let anonymous = p.kind == Kind::Anonymous;
    let (surname, first) = if anonymous {
        ("ANONYMOUS", None)
    } else {
        (p.surname, Some(p.first))
    };
    let (city, zip_prefix, _) = CITIES[p.home.city];
    let email = if !p.has_email {
        None
    } else if p.kind == Kind::Staff {
        Some(email_for(
            g,
            p.first,
            p.surname,
            String::new(),
            "library.example.org",
        ))
    } else {
        let domain = g.pick(&["example.com", "example.net", "example.org"]);
        Some(email_for(g, p.first, p.surname, g_suffix(p.bn), domain))
    };
    let userid = if p.has_login {
        Some(g.tag(&format!(
            "{}.{}{}",
            ascii_slug(p.first),
            ascii_slug(p.surname),
            p.bn
        )))
    } else {
        None
    };
    let password = if p.has_login {
        Some(g.bcrypt_like())
    } else {
        None
    };
    let updated = match p.lastseen {
        Some(seen) => seen,
        None => {
            let day = p.enrolled.max(g.days_ago(20 * 365));
            g.at(day, 9, 17)
        }
    };
    let note = if anonymous {
        Some("Receives anonymized circulation history")
    } else {
        p.note
    };
    let row = vec![
        int(p.bn),
        text(if anonymous {
            g.tag("ANONYMOUS")
        } else {
            cardnumber_for(g, p.bn)
        }),
        text(g.tag(surname)),
        opt_text(first.map(|f| g.tag(f))),
        opt_text(p.middle.map(|m| g.tag(m))),
        opt_text(p.other.map(|o| g.tag(o))),
        opt_text((!anonymous).then(|| g.tag(&format!("{} {}", p.home.number, p.home.street)))),
        opt_text((!anonymous).then(|| g.tag(city))),
        opt_text((!anonymous).then(|| g.tag(&format!("{zip_prefix}{}", p.home.number % 10)))),
        opt_text(email.clone()),
        opt_text((!anonymous).then(|| g.tag(&p.home.phone))),
        opt_date(p.dob),
        text(p.branch),
        text(p.kind.category()),
        date(p.enrolled),
        date(p.expiry),
        opt_text(note.map(|s| g.tag(s))),
        opt_text(p.sex.map(str::to_string)),
        opt_text(password),
        opt_int(p.flags),
        opt_text(userid),
        int(p.privacy),
        datetime(updated),
        opt_datetime(p.lastseen),
        int(i64::from(p.protected)),
    ];
    (row, email)
}

fn reserve_row(g: &Gen, id: i64, bn: Option<i64>, h: &Hold) -> Vec<Value> {
    vec![
        int(id),
        opt_int(bn),
        date(h.reserved),
        int(h.biblio as i64 + 1),
        text(h.branch),
        opt_date(h.cancelled),
        opt_text(h.note.map(|s| g.tag(s))),
        int(h.priority),
        opt_text(h.found.map(str::to_string)),
        datetime(h.timestamp),
        opt_int(h.item.map(|i| i as i64 + 1)),
        opt_date(h.waiting),
        opt_date(h.expiration),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};
    use sqlx::Row;

    fn small(seed: u64, canary: Option<&str>) -> DemoOptions {
        DemoOptions {
            seed,
            today: NaiveDate::from_ymd_opt(2026, 11, 15).unwrap_or_default(),
            patrons: 400,
            returned_checkouts: 4000,
            canary: canary.map(str::to_string),
            timezone: chrono_tz::America::New_York,
        }
    }

    async fn open(path: &Path) -> sqlx::SqlitePool {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .foreign_keys(true);
        SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .expect("open demo database")
    }

    async fn count(pool: &sqlx::SqlitePool, table: &str) -> i64 {
        sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
            .fetch_one(pool)
            .await
            .expect("count")
    }

    /// SHA-256 over a few columns of patrons, loans, holds and fines.
    async fn checksum(pool: &sqlx::SqlitePool) -> String {
        let mut h = Sha256::new();
        let queries = [
            "SELECT borrowernumber || '|' || cardnumber || '|' || surname || '|' || dateexpiry || '|' || privacy FROM borrowers ORDER BY borrowernumber",
            "SELECT issue_id || '|' || IFNULL(borrowernumber, '-') || '|' || itemnumber || '|' || issuedate || '|' || IFNULL(returndate, '-') FROM old_issues ORDER BY issue_id",
            "SELECT reserve_id || '|' || IFNULL(borrowernumber, '-') || '|' || reservedate || '|' || IFNULL(found, '-') FROM old_reserves ORDER BY reserve_id",
            "SELECT accountlines_id || '|' || borrowernumber || '|' || amount || '|' || amountoutstanding FROM accountlines ORDER BY accountlines_id",
        ];
        for q in queries {
            let rows = sqlx::query(q)
                .fetch_all(pool)
                .await
                .expect("checksum query");
            for row in rows {
                let s: String = row.try_get(0).expect("text column");
                h.update(s.as_bytes());
                h.update(b"\n");
            }
        }
        hex::encode(h.finalize())
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn same_seed_same_library() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a.db");
        let b = dir.path().join("b.db");
        let c = dir.path().join("c.db");
        let sa = create_library_if_absent(&a, &small(7, None))
            .await
            .expect("a")
            .expect("created a");
        let sb = create_library_if_absent(&b, &small(7, None))
            .await
            .expect("b")
            .expect("created b");
        let sc = create_library_if_absent(&c, &small(8, None))
            .await
            .expect("c")
            .expect("created c");
        assert_eq!(
            serde_json::to_value(&sa).ok(),
            serde_json::to_value(&sb).ok()
        );
        let (pa, pb, pc) = (open(&a).await, open(&b).await, open(&c).await);
        for table in [
            "borrowers",
            "old_issues",
            "issues",
            "old_reserves",
            "reserves",
            "accountlines",
            "borrower_relationships",
            "borrower_modifications",
            "statistics",
            "message_queue",
            "action_logs",
            "search_history",
            "deletedborrowers",
            "suggestions",
            "illrequests",
            "return_claims",
            "items_last_borrower",
            "pseudonymized_transactions",
            "patron_consent",
        ] {
            assert_eq!(count(&pa, table).await, count(&pb, table).await, "{table}");
        }
        assert_eq!(count(&pa, "borrowers").await, 400);
        assert_eq!(count(&pa, "old_issues").await, 4000);
        assert_eq!(sa.returned_checkouts, 4000);
        assert_eq!(sc.patrons, 400);
        assert_eq!(checksum(&pa).await, checksum(&pb).await);
        assert_ne!(checksum(&pa).await, checksum(&pc).await);
        // Second call leaves the file alone.
        assert!(
            create_library_if_absent(&a, &small(8, None))
                .await
                .expect("again")
                .is_none()
        );
        assert_eq!(checksum(&open(&a).await).await, checksum(&pb).await);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn foreign_keys_and_shape_hold() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub").join("lib.db");
        let stats = create_library_if_absent(&path, &small(4509, None))
            .await
            .expect("create")
            .expect("created");
        let pool = open(&path).await;
        let violations = sqlx::query("PRAGMA foreign_key_check")
            .fetch_all(&pool)
            .await
            .expect("fk check");
        assert!(
            violations.is_empty(),
            "{} foreign key violations",
            violations.len()
        );
        assert!(
            !tokio::fs::try_exists(partial_path(&path))
                .await
                .expect("stat")
        );

        let anon: String = sqlx::query_scalar(
            "SELECT value FROM systempreferences WHERE variable = 'AnonymousPatron'",
        )
        .fetch_one(&pool)
        .await
        .expect("pref");
        assert_eq!(anon, stats.anonymous_patron.to_string());
        let bad: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM old_issues WHERE returndate <= issuedate")
                .fetch_one(&pool)
                .await
                .expect("dates");
        assert_eq!(bad, 0);
        let anonymized: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM old_issues WHERE borrowernumber = ?")
                .bind(stats.anonymous_patron)
                .fetch_one(&pool)
                .await
                .expect("anonymized");
        assert!(anonymized > 0);
        let shapes: (i64, i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM borrowers WHERE privacy = 0), (SELECT COUNT(*) FROM borrowers WHERE privacy = 2), \
             (SELECT COUNT(*) FROM accountlines WHERE amountoutstanding > 0 AND old_issue_id IS NOT NULL), \
             (SELECT COUNT(*) FROM accountlines WHERE amountoutstanding < 0)",
        )
        .fetch_one(&pool)
        .await
        .expect("shapes");
        assert!(
            shapes.0 > 0 && shapes.1 > 0 && shapes.2 > 0 && shapes.3 > 0,
            "{shapes:?}"
        );
        let staff_without_flags: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM borrowers b JOIN categories c USING (categorycode) WHERE c.category_type = 'S' AND IFNULL(b.flags, 0) = 0",
        )
        .fetch_one(&pool)
        .await
        .expect("staff");
        assert_eq!(staff_without_flags, 0);
        let expired_borrowing: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM issues i JOIN borrowers b USING (borrowernumber) WHERE b.dateexpiry < date('2026-11-15', '-1 year')",
        )
        .fetch_one(&pool)
        .await
        .expect("expired");
        assert!(expired_borrowing > 0);
        let selfreg: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM borrower_modifications WHERE borrowernumber = 0",
        )
        .fetch_one(&pool)
        .await
        .expect("selfreg");
        assert!(selfreg > 0);
        assert_eq!(
            count(&pool, "borrower_relationships").await as u64,
            stats.guarantor_pairs
        );
        assert!(stats.guarantor_pairs > 0);
        other_tables_follow_the_circulation(&pool, &stats).await;
    }

    async fn n(pool: &sqlx::SqlitePool, sql: &str) -> i64 {
        sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_string()))
            .fetch_one(pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// The tables seeded by `traces` agree with the circulation, patrons and periods
    /// (the demo is generated on 2026-11-15 in New York).
    async fn other_tables_follow_the_circulation(pool: &sqlx::SqlitePool, stats: &DemoStats) {
        // A statistics row per checkout and per return.
        let loans = n(pool, "SELECT COUNT(*) FROM old_issues").await
            + n(pool, "SELECT COUNT(*) FROM issues").await;
        assert_eq!(
            n(
                pool,
                "SELECT COUNT(*) FROM statistics WHERE type = 'issue' AND datetime IS NOT NULL"
            )
            .await,
            loans
        );
        assert_eq!(
            n(
                pool,
                "SELECT COUNT(*) FROM statistics WHERE type = 'return'"
            )
            .await,
            n(
                pool,
                "SELECT COUNT(*) FROM old_issues WHERE returndate IS NOT NULL"
            )
            .await
        );
        assert_eq!(
            n(pool, "SELECT COUNT(*) FROM statistics").await as u64,
            stats.statistics
        );
        // Past the default period, within it, and without an age, in each table that
        // allows it (cutoffs of the shipped retention.yaml, roughly).
        for (table, age, cutoff, nullable) in [
            ("statistics", "datetime", "2026-10-16", true),
            ("message_queue", "time_queued", "2026-08-17", true),
            ("action_logs", "timestamp", "2026-05-19", false),
            ("search_history", "time", "2026-10-16", false),
            ("deletedborrowers", "updated_on", "2026-10-16", false),
            ("suggestions", "manageddate", "2025-11-15", true),
            ("illrequests", "completed", "2025-11-15", true),
            ("return_claims", "resolved_on", "2025-11-15", true),
            ("items_last_borrower", "created_on", "2026-10-16", false),
            ("pseudonymized_transactions", "datetime", "2024-11-15", true),
        ] {
            let past = n(
                pool,
                &format!("SELECT COUNT(*) FROM {table} WHERE {age} < '{cutoff}'"),
            )
            .await;
            let within = n(
                pool,
                &format!("SELECT COUNT(*) FROM {table} WHERE {age} > '{cutoff} 23:59:59'"),
            )
            .await;
            let none = n(
                pool,
                &format!("SELECT COUNT(*) FROM {table} WHERE {age} IS NULL"),
            )
            .await;
            assert!(
                past > 0 && within > 0,
                "{table}: {past} past, {within} within"
            );
            assert_eq!(none > 0, nullable, "{table}: {none} without {age}");
        }
        let selfreg_old = n(pool, "SELECT COUNT(*) FROM borrower_modifications WHERE borrowernumber = 0 AND timestamp < '2026-11-01'").await;
        assert!(selfreg_old > 0);
        // Notices in every status, each naming the patron it went to.
        for status in ["sent", "pending", "failed"] {
            assert!(
                n(
                    pool,
                    &format!("SELECT COUNT(*) FROM message_queue WHERE status = '{status}'")
                )
                .await
                    > 0,
                "{status}"
            );
        }
        assert_eq!(
            n(
                pool,
                "SELECT COUNT(*) FROM message_queue m JOIN borrowers b USING (borrowernumber) \
                     WHERE instr(m.content, b.surname) = 0"
            )
            .await,
            0
        );
        // Patron modules name patrons; the staff-only ones, which must stay, do not.
        for module in [
            "CIRCULATION",
            "MEMBERS",
            "FINES",
            "CATALOGUING",
            "SYSTEMPREFERENCE",
        ] {
            assert!(
                n(
                    pool,
                    &format!("SELECT COUNT(*) FROM action_logs WHERE module = '{module}'")
                )
                .await
                    > 0,
                "{module}"
            );
        }
        assert_eq!(
            n(
                pool,
                "SELECT COUNT(*) FROM action_logs WHERE module IN ('CIRCULATION', 'FINES') \
                     AND object NOT IN (SELECT borrowernumber FROM borrowers)"
            )
            .await,
            0
        );
        // The deleted patrons are no longer patrons; their MEMBERS DELETE entries name them.
        assert_eq!(
            n(pool, "SELECT COUNT(*) FROM deletedborrowers WHERE borrowernumber IN (SELECT borrowernumber FROM borrowers)").await,
            0
        );
        assert_eq!(
            n(
                pool,
                "SELECT COUNT(*) FROM action_logs WHERE module = 'MEMBERS' AND action = 'DELETE'"
            )
            .await,
            n(pool, "SELECT COUNT(*) FROM deletedborrowers").await
        );
        for (what, sql) in [
            (
                "ASKED suggestions",
                "suggestions WHERE STATUS = 'ASKED' AND manageddate IS NULL",
            ),
            (
                "decided suggestions",
                "suggestions WHERE STATUS <> 'ASKED' AND manageddate IS NOT NULL",
            ),
            (
                "completed ILL",
                "illrequests WHERE status = 'COMP' AND completed IS NOT NULL",
            ),
            (
                "open ILL",
                "illrequests WHERE status <> 'COMP' AND completed IS NULL",
            ),
            (
                "resolved claims",
                "return_claims WHERE resolution IS NOT NULL AND resolved_on IS NOT NULL",
            ),
            (
                "open claims",
                "return_claims WHERE resolution IS NULL AND resolved_on IS NULL",
            ),
            (
                "consents given",
                "patron_consent WHERE given_on IS NOT NULL AND refused_on IS NULL",
            ),
            (
                "consents refused",
                "patron_consent WHERE given_on IS NULL AND refused_on IS NOT NULL",
            ),
        ] {
            assert!(
                n(pool, &format!("SELECT COUNT(*) FROM {sql}")).await > 0,
                "{what}"
            );
        }
        // One pseudonym per patron.
        assert_eq!(
            n(pool, "SELECT COUNT(DISTINCT hashed_borrowernumber) FROM pseudonymized_transactions").await,
            n(pool, "SELECT COUNT(DISTINCT p.hashed_borrowernumber || '|' || s.borrowernumber) FROM pseudonymized_transactions p \
                     JOIN statistics s ON s.datetime = p.datetime AND s.itemnumber = p.itemnumber AND s.type = p.transaction_type").await
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn canary_marks_personal_columns() {
        let canary = "CnRy-42x";
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("canary.db");
        create_library_if_absent(&path, &small(11, Some(canary)))
            .await
            .expect("create")
            .expect("created");
        let pool = open(&path).await;
        let columns = [
            ("borrowers", "surname"),
            ("borrowers", "firstname"),
            ("borrowers", "middle_name"),
            ("borrowers", "othernames"),
            ("borrowers", "cardnumber"),
            ("borrowers", "email"),
            ("borrowers", "phone"),
            ("borrowers", "address"),
            ("borrowers", "city"),
            ("borrowers", "zipcode"),
            ("borrowers", "userid"),
            ("borrowers", "borrowernotes"),
            ("biblio", "title"),
            ("biblio", "author"),
            ("borrower_modifications", "surname"),
            ("borrower_modifications", "firstname"),
            ("borrower_modifications", "email"),
            ("borrower_modifications", "cardnumber"),
            ("old_issues", "note"),
            ("old_reserves", "reservenotes"),
            ("accountlines", "description"),
            ("accountlines", "note"),
            ("message_queue", "content"),
            ("message_queue", "to_address"),
            ("action_logs", "diff"),
            ("search_history", "query_desc"),
            ("search_history", "query_cgi"),
            ("deletedborrowers", "surname"),
            ("deletedborrowers", "firstname"),
            ("deletedborrowers", "cardnumber"),
            ("deletedborrowers", "address"),
            ("deletedborrowers", "phone"),
            ("suggestions", "note"),
            ("suggestions", "patronreason"),
            ("illrequests", "notesopac"),
            ("illrequests", "notesstaff"),
            ("return_claims", "notes"),
        ];
        for (table, column) in columns {
            let (with, without): (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT COUNT(CASE WHEN instr({column}, ?1) > 0 THEN 1 END), COUNT(CASE WHEN instr({column}, ?1) = 0 THEN 1 END) FROM {table}"
            )))
            .bind(canary)
            .fetch_one(&pool)
            .await
            .expect("canary query");
            assert!(with > 0, "{table}.{column} has no canary");
            assert_eq!(without, 0, "{table}.{column} has values without the canary");
        }
        // Without a canary the structure is the same, only the text differs.
        let plain = dir.path().join("plain.db");
        create_library_if_absent(&plain, &small(11, None))
            .await
            .expect("create")
            .expect("created");
        let plain = open(&plain).await;
        let none: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM borrowers WHERE instr(surname, ?) > 0")
                .bind(canary)
                .fetch_one(&plain)
                .await
                .expect("plain");
        assert_eq!(none, 0);
        assert_eq!(
            count(&plain, "accountlines").await,
            count(&pool, "accountlines").await
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn rejects_bad_options_and_full_databases() {
        let mut opts = small(1, Some("has space"));
        assert!(matches!(generate(&opts), Err(DemoError::InvalidOptions(_))));
        opts.canary = None;
        opts.patrons = 3;
        assert!(matches!(generate(&opts), Err(DemoError::InvalidOptions(_))));

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("full.db");
        create_library_if_absent(&path, &small(1, None))
            .await
            .expect("create")
            .expect("created");
        let pool = open(&path).await;
        let again = populate(DemoTarget::Sqlite(&pool), &small(1, None)).await;
        assert!(
            matches!(
                again,
                Err(DemoError::NotEmpty {
                    table: "borrowers",
                    ..
                })
            ),
            "{again:?}"
        );
    }
}
