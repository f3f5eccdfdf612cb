//! `retention.yaml`: reading, `${VAR}` expansion, profiles, and validation into typed
//! values.
//!
//! Two layers, as ripgrep does with its arguments: [`raw`] is the serde model (unknown
//! keys denied), and [`Config`] is the validated configuration of typed values: parsed
//! periods, cron schedule, time zone, mail addresses, checked SQL identifiers. Nothing
//! downstream sees raw strings. Validation collects every error at once, each with the
//! file, line and column it concerns ([`ConfigErrors`]); the caller exits 2 and touches
//! nothing.

pub mod env;
pub mod locate;
pub mod raw;
pub mod schema;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use chrono_tz::Tz;
use indexmap::IndexMap;
use secrecy::SecretString;

use crate::policy::Period;
use crate::report::{ReportConfig, SendWhen, SmtpConfig};
use crate::summary::{Action, Mode};
use locate::{Location, LocationIndex};
use raw::{RawClass, RawCondition, RawConfig, RawExists, RawProfile, RawScalar, RawStrategy};

/// The embedded Koha profile (see `src/config/profiles/koha.yaml`).
pub const KOHA_PROFILE: &str = include_str!("profiles/koha.yaml");
/// The embedded Evergreen profile (see `src/config/profiles/evergreen.yaml`).
pub const EVERGREEN_PROFILE: &str = include_str!("profiles/evergreen.yaml");

/// The default config path, relative to the working directory.
pub const DEFAULT_CONFIG_PATH: &str = "retention.yaml";

/// One configuration error, with its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (or `profile koha`) the value came from.
    pub file: String,
    /// Line and column, when known.
    pub location: Option<Location>,
    /// Dotted path of the key, e.g. `classes.circulation_history.retain`; empty for the
    /// whole file.
    pub path: String,
    /// What is wrong. Never contains a secret.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location {
            Some(l) => write!(f, "{}:{}:{}: ", self.file, l.line, l.column)?,
            None => write!(f, "{}: ", self.file)?,
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Every error found in one configuration, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A plain SQL identifier, checked against `^[A-Za-z_][A-Za-z0-9_]{0,62}$`: no quotes,
/// spaces, semicolons, comments. It must still be checked against the database catalog
/// before use ([`crate::db::Db::check_schema`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ident(String);

impl Ident {
    /// Checks `s`.
    ///
    /// # Errors
    /// A message saying why `s` is not a plain SQL name (it is not echoed, since it may
    /// be garbage).
    pub fn new(s: &str) -> Result<Ident, String> {
        let mut chars = s.chars();
        let ok = s.len() <= 63
            && chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if ok {
            Ok(Ident(s.to_string()))
        } else {
            Err("not a plain SQL name (letters, digits and _, starting with a letter or _, at most 63)".into())
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A table name, optionally schema-qualified (`action.circulation` on PostgreSQL).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableName {
    /// The schema, if qualified.
    pub schema: Option<Ident>,
    /// The table.
    pub name: Ident,
}

impl TableName {
    /// Parses `name` or `schema.name`, each part an [`Ident`].
    ///
    /// # Errors
    /// Why it is not a plain (qualified) SQL name.
    pub fn new(s: &str) -> Result<TableName, String> {
        match s.split_once('.') {
            Some((schema, name)) => Ok(TableName {
                schema: Some(Ident::new(schema)?),
                name: Ident::new(name)?,
            }),
            None => Ok(TableName {
                schema: None,
                name: Ident::new(s)?,
            }),
        }
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(s) => write!(f, "{s}.{}", self.name),
            None => write!(f, "{}", self.name),
        }
    }
}

/// The backend named by the database URL's scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `sqlite:`.
    Sqlite,
    /// `mysql:` or `mariadb:`.
    MySql,
    /// `postgres:` or `postgresql:`.
    Postgres,
}

/// `database:`, validated.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// The full URL, with the password from the environment or file if any.
    pub url: SecretString,
    /// The URL without password, safe to print.
    pub display_url: String,
    /// Which backend.
    pub backend: Backend,
}

/// `schedule:`, validated.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// The cron line as written (5 fields).
    pub cron_line: String,
    /// The parsed cron pattern (croner).
    pub cron: croner::Cron,
    /// The library's zone: cutoffs and fire times are computed in it.
    pub timezone: Tz,
}

/// `safety:`, validated.
#[derive(Debug, Clone)]
pub struct Safety {
    /// Enforce or dry run.
    pub mode: Mode,
    /// The size of the first batch of each pass (1..=10,000; default 1000): keys of
    /// the primary-key range one transaction covers, or the row limit of a table
    /// without a key. From there the size adapts ([`crate::engine::BatchSizer`]) to
    /// keep each batch transaction near `batch_target`, between
    /// [`Safety::batch_bounds`]. Purge classes ignore the adaptation: they purge one
    /// row per transaction and read their keys in ranges of this size.
    pub batch_size: u32,
    /// The duration one batch transaction (BEGIN to COMMIT) should take: 10 ms to
    /// 10 s, default 100 ms. A batch slower than this shrinks the next one (at once,
    /// at most by half a batch); a faster one lets the next grow (gradually, at most
    /// by a quarter), within the bounds.
    pub batch_target: Duration,
    /// The smallest size adaptation may choose, as written (1..=10,000); `None`: 100,
    /// or `batch_size` when that is smaller. Read it through [`Safety::batch_bounds`].
    pub batch_min: Option<u32>,
    /// The largest size adaptation may choose (1..=10,000). As written; when the file
    /// sets neither it nor `batch_size`, [`DEFAULT_BATCH_MAX`] (batches grow where they
    /// stay under `batch_target`); `None` (the file sets `batch_size` only):
    /// `batch_size`, so that a batch never covers more keys than the administrator
    /// wrote unless they opt in to larger ones. Read it through [`Safety::batch_bounds`].
    pub batch_max: Option<u32>,
    /// Largest share of a table one class may change in a run (default 0.5).
    pub max_fraction: f64,
    /// Largest clock difference between this host and the database (default 5 minutes).
    pub max_clock_skew: Duration,
    /// No class may retain less than this (default 7 days).
    pub min_retention: Period,
    /// A missed run is reported when the last enforced run is older than this; `None`:
    /// twice the schedule's interval.
    pub overdue_after: Option<Period>,
    /// Rounds one class may take to reach its fixed point (default 10).
    pub max_rounds: u32,
    /// The longest Lethe waits for the answer to one statement, `BEGIN` or `COMMIT`
    /// (1 second to 1 hour; default 5 minutes, [`crate::db::DEFAULT_STATEMENT_TIMEOUT`]).
    /// Past it the connection is dropped and the step fails with a transient error
    /// (retried like a lost connection). The servers get the same bound (PostgreSQL
    /// `statement_timeout`, MariaDB `max_statement_time`).
    pub statement_timeout: Duration,
    /// How many times one step of a run (a batch, counting a class, a ledger write) is
    /// tried again after a transient error (0 to 20; default 5), with pauses of 0.5 s,
    /// 1 s, 2 s, 4 s, 8 s, … (at most 32 s).
    pub retries: u32,
    /// How long after the database began failing (the first transient error since the
    /// last statement that succeeded, over all steps of the run) a retry may still
    /// start (1 second to 1 hour; default 1 minute). A run gives up at most this long
    /// plus one try's wait (the pool's 10 s acquire timeout, or `statement_timeout`)
    /// after the outage began.
    pub retry_for: Duration,
}

impl Safety {
    /// The smallest and the largest batch size adaptation may choose, both counted like
    /// `batch_size` (keys of a range, or rows of a row-limited batch):
    /// `(batch_min or min(100, batch_size), batch_max or batch_size)`. Validation keeps
    /// `batch_min <= batch_size <= batch_max` for values written in the file; for a
    /// `Safety` changed in code the bounds are widened to hold `batch_size`, so the
    /// first batch is always the configured size. The default upper bound is
    /// `batch_size` itself: with `batch_size` alone in the file, batches only shrink
    /// below it when they are slow, never grow past it (opt in to growth with
    /// `batch_max`). 10,000 is the ceiling of every bound because each batch binds its
    /// keys as parameters (SQLite allows 32,766 a statement, and a pseudonymizing batch
    /// binds three per key).
    pub fn batch_bounds(&self) -> (u32, u32) {
        let min = self.batch_min.unwrap_or(self.batch_size.min(100));
        let max = self.batch_max.unwrap_or(self.batch_size);
        (min.min(self.batch_size).max(1), max.max(self.batch_size))
    }
}

/// How the age column is compared with the cutoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgeType {
    /// DATETIME holding the library's local wall time (Koha): compared with the local
    /// cutoff, strictly.
    Datetime,
    /// DATE: compared with the cutoff's local date, strictly (a row on the cutoff day
    /// is kept).
    Date,
    /// An instant (`timestamptz`, Evergreen): compared with the cutoff instant.
    Timestamptz,
}

/// A class's age: the first non-NULL of `columns`.
#[derive(Debug, Clone)]
pub struct Age {
    /// One or more columns, coalesced in order.
    pub columns: Vec<Ident>,
    /// How they compare.
    pub kind: AgeType,
    /// Plain words completing "counted from …", e.g. "the date you returned the item".
    pub meaning: String,
    /// Where the columns are: `None`, the class's own row; otherwise rows of another
    /// table linked to it, the latest age among them being the row's (`MAX`).
    pub from: Option<AgeFrom>,
}

/// `age.from`: the age read from another table's rows linked to the class's row, e.g.
/// Koha's `patron_consent` rows of type `GDPR_PROCESSING` for a patron (ILS-FACTS
/// §4.4). Compiled to the scalar subquery `(SELECT MAX(COALESCE(o.c…)) FROM table o WHERE
/// o.column = row.matches AND filter…)`.
#[derive(Debug, Clone)]
pub struct AgeFrom {
    /// The other table (never the class's own: MySQL refuses a subquery on the table a
    /// DELETE or UPDATE changes).
    pub table: TableName,
    /// Its column linking to the row.
    pub column: Ident,
    /// The row's column it equals (the class's key when the YAML leaves it out).
    pub matches: Ident,
    /// Tests on the other table's rows (all must hold).
    pub filter: Vec<ColumnTest>,
}

/// A literal in a condition or strategy, bound as a parameter (never pasted into SQL).
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    /// Boolean (PostgreSQL `boolean`; 1/0 on MySQL and SQLite).
    Bool(bool),
    /// Integer.
    Int(i64),
    /// Float.
    Float(f64),
    /// Text.
    Text(String),
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// `=`
    Eq,
    /// `<>`
    Ne,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `LIKE` (the value is a pattern with `%` and `_`).
    Like,
}

/// A test on one column. NULL never matches a comparison (the generated SQL is
/// `col IS NOT NULL AND col op value`, so the condition is always true or false).
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnTest {
    /// `column op value`.
    Compare(Ident, CmpOp, Scalar),
    /// `column IS NULL`.
    IsNull(Ident),
    /// `column IS NOT NULL`.
    NotNull(Ident),
}

impl ColumnTest {
    /// The column tested.
    pub fn column(&self) -> &Ident {
        match self {
            ColumnTest::Compare(c, ..) | ColumnTest::IsNull(c) | ColumnTest::NotNull(c) => c,
        }
    }
}

/// A condition on a row of a class's table.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// A test on one of the row's columns.
    Column(ColumnTest),
    /// `[NOT] EXISTS (SELECT 1 FROM table o WHERE o.column = row.matches AND filter...)`.
    Exists {
        /// `NOT EXISTS` when true.
        negated: bool,
        /// The other table.
        table: TableName,
        /// Its linking column.
        column: Ident,
        /// The row's column it equals (the class's key when the YAML leaves it out).
        matches: Ident,
        /// Tests on the other table's columns.
        filter: Vec<ColumnTest>,
    },
    /// The row's column holds the anonymous patron (false when none is configured).
    AnonymousPatron(Ident),
    /// All hold (an empty list always holds).
    All(Vec<Condition>),
    /// At least one holds (an empty list never holds).
    Any(Vec<Condition>),
    /// The condition does not hold.
    Not(Box<Condition>),
    /// The row, or any row before it in its chain (following `parent` in the same
    /// table, as Evergreen's renewals follow `action.circulation.parent_circ`), meets
    /// every test of `filter`. Computed with a recursive query (`WITH RECURSIVE … UNION`,
    /// which also ends on a cycle).
    Chain {
        /// The column pointing to the previous row.
        parent: Ident,
        /// Tests one row of the chain must meet.
        filter: Vec<ColumnTest>,
    },
    /// An open legal hold (`lethe hold add`, table `lethe_legal_holds`) names the patron
    /// in this column of the row. Added by Lethe to every class with a `patron:` column,
    /// with reason `legal_hold`.
    LegalHold(Ident),
    /// The row's age is older than the period its patron chose in a setting row (Evergreen
    /// `actor.usr_setting` `history.circ.retention_age`). Settings whose value Lethe
    /// cannot read as a period never match (the row is kept: fail safe).
    PatronPeriod(PatronPeriod),
}

/// Where a patron's own retention period is stored: one row per patron and setting.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PatronPeriod {
    /// The settings table (`actor.usr_setting`).
    pub table: TableName,
    /// Its patron column (`usr`).
    pub column: Ident,
    /// The class row's patron column.
    pub matches: Ident,
    /// The setting name column (`name`).
    pub name_column: Ident,
    /// The setting's name (bound).
    pub name: String,
    /// The value column (`value`: Evergreen stores JSON text such as `"1 year"`).
    pub value_column: Ident,
}

impl PatronPeriod {
    /// A stable key for this source, used to look up its resolved cutoffs.
    pub fn key(&self) -> String {
        format!(
            "{}.{}={}:{}",
            self.table, self.name_column, self.name, self.value_column
        )
    }
}

/// Staff-side columns rewritten before the action where they hold the row's own patron.
#[derive(Debug, Clone, PartialEq)]
pub struct Unlink {
    /// The columns.
    pub columns: Vec<Ident>,
    /// The chain's parent column: the rows before the row in its chain are rewritten too.
    pub chain: Option<Ident>,
    /// The value written.
    pub value: Scalar,
}

/// Rows of another table that point at the class's row and may name its patron: where
/// they do, the patron column is rewritten in the batch's transaction, before the
/// class's own change (Koha: `checkout_renewals.renewer_id` of a checkout, which
/// `Koha::Old::Checkouts->anonymize` sets to the AnonymousPatron).
#[derive(Debug, Clone, PartialEq)]
pub struct Linked {
    /// The other table.
    pub table: TableName,
    /// Its column holding the class's key.
    pub column: Ident,
    /// Its column naming a patron (the same ids as the class's `patron`).
    pub patron: Ident,
}

/// A purge function called once per row, in its own transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct PurgeCall {
    /// The function, optionally schema-qualified (Evergreen `actor.usr_delete`).
    pub function: TableName,
    /// The arguments in order.
    pub args: Vec<PurgeArg>,
}

/// One argument of a [`PurgeCall`].
#[derive(Debug, Clone, PartialEq)]
pub enum PurgeArg {
    /// The row's key.
    Key,
    /// A fixed value, bound.
    Value(Scalar),
}

/// Why a row past its period is kept. The order is the order of counting: a row kept
/// for several reasons counts under the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// The patron chose to keep it.
    OptIn,
    /// A legal hold.
    LegalHold,
    /// Something still out or owed.
    Obligations,
    /// A protected account.
    Protected,
}

impl Reason {
    /// All reasons, in counting order.
    pub const ALL: [Reason; 4] = [
        Reason::OptIn,
        Reason::LegalHold,
        Reason::Obligations,
        Reason::Protected,
    ];

    /// `opt_in`, `legal_hold`, `obligations`, `protected`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::OptIn => "opt_in",
            Reason::LegalHold => "legal_hold",
            Reason::Obligations => "obligations",
            Reason::Protected => "protected",
        }
    }
}

/// What anonymize writes into a column.
#[derive(Debug, Clone, PartialEq)]
pub enum Strategy {
    /// NULL.
    SetNull,
    /// The system's anonymous patron (Koha's `AnonymousPatron` preference), or NULL
    /// where the preference is empty.
    AnonymousPatron,
    /// A fixed value.
    SetValue(Scalar),
    /// A keyed pseudonym of the column's own value (an integer patron id): a negative
    /// number from HMAC-SHA-256 under the installation's secret
    /// ([`crate::pseudonym`]), so that rows of one patron still share a value while the
    /// id is gone. Only in action pseudonymize.
    Pseudonym,
}

/// Rows of another table deleted with each deleted row, in the same transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Dependent {
    /// The other table.
    pub table: TableName,
    /// Its column holding the class's key.
    pub column: Ident,
}

/// One validated class of records.
#[derive(Debug, Clone)]
pub struct ClassDef {
    /// The name, e.g. `circulation_history`.
    pub name: String,
    /// Plain-language description.
    pub description: String,
    /// The table.
    pub table: TableName,
    /// Its integer primary key (batches walk it). `None` for a table with no primary
    /// key at all (Koha's `statistics` and `deletedborrowers`): each batch then changes at
    /// most `safety.batch_size` eligible rows, picked by the database (MySQL
    /// `UPDATE/DELETE … LIMIT`, SQLite `rowid`, PostgreSQL `ctid`), until none is left.
    pub key: Option<Ident>,
    /// The age.
    pub age: Age,
    /// The retention period.
    pub retain: Period,
    /// Delete or anonymize.
    pub action: Action,
    /// For anonymize: column strategies, in order.
    pub anonymize: Vec<(Ident, Strategy)>,
    /// Conditions every row of the class meets.
    pub scope: Vec<Condition>,
    /// Conditions making a row eligible at once, whatever its age (all must hold; empty:
    /// never).
    pub immediate: Vec<Condition>,
    /// Exemptions, sorted by reason in counting order.
    pub exempt: Vec<(Reason, Condition)>,
    /// For delete: dependents deleted with each row. For purge: rows deleted after
    /// the purge function, in the same transaction.
    pub delete_with: Vec<Dependent>,
    /// For purge: the function.
    pub purge: Option<PurgeCall>,
    /// Functions that enabled triggers on the table must call (PostgreSQL).
    pub triggers: Vec<TableName>,
    /// Conditions marking a row the action has already handled (purge leaves the row).
    pub purged: Vec<Condition>,
    /// For aggregate: the columns the monthly counts are kept by.
    pub aggregate: Option<AggregateBy>,
    /// The row's patron column, if it has one: open legal holds on that patron keep
    /// the row.
    pub patron: Option<Ident>,
    /// Columns rewritten before the action where they hold the row's patron.
    pub unlink: Option<Unlink>,
    /// Rows of other tables rewritten before the action where they point at the row
    /// and name its patron (keyed anonymize and delete classes only).
    pub linked: Vec<Linked>,
}

impl ClassDef {
    /// What `linked:` rows get in their patron column: for anonymize, what the class
    /// writes into its own patron column (Koha: the AnonymousPatron, as
    /// `Koha::Old::Checkouts->anonymize` gives renewals); otherwise NULL (Koha's own
    /// action on a renewal when its patron is deleted: `ON DELETE SET NULL`). A
    /// pseudonym is never copied out: the linked row loses its patron instead.
    pub fn linked_value(&self) -> Strategy {
        let own = match (&self.action, &self.patron) {
            (Action::Anonymize, Some(p)) => self
                .anonymize
                .iter()
                .find(|(c, _)| c == p)
                .map(|(_, s)| s.clone()),
            _ => None,
        };
        match own {
            Some(s) if s != Strategy::Pseudonym => s,
            _ => Strategy::SetNull,
        }
    }

    /// The column batches walk: the key, or for a table without a primary key SQLite's
    /// implicit `rowid`. Only SQLite reaches the key-range builders for a keyless class;
    /// on MySQL and PostgreSQL the engine uses the row-limit statements instead.
    pub fn batch_key(&self) -> Ident {
        self.key.clone().unwrap_or_else(|| Ident("rowid".into()))
    }
}

/// The environment variable holding the pseudonym key when `pseudonyms:` names none.
pub const DEFAULT_PSEUDONYM_KEY_ENV: &str = "LETHE_PSEUDONYM_KEY";

/// The columns of an aggregate class's counts, each optional (`''` when absent or NULL).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AggregateBy {
    /// Library or branch.
    pub library: Option<Ident>,
    /// Item type.
    pub item_type: Option<Ident>,
    /// Patron category.
    pub patron_category: Option<Ident>,
    /// Kind of transaction.
    pub kind: Option<Ident>,
}

impl AggregateBy {
    /// The columns, in the order of `lethe_aggregates`' dimensions.
    pub fn columns(&self) -> [Option<&Ident>; 4] {
        [
            self.library.as_ref(),
            self.item_type.as_ref(),
            self.patron_category.as_ref(),
            self.kind.as_ref(),
        ]
    }
}

/// Where the anonymous patron's id is read from.
#[derive(Debug, Clone, PartialEq)]
pub struct AnonymousPatronSource {
    /// The preferences table.
    pub table: TableName,
    /// Its name column.
    pub name_column: Ident,
    /// Its value column.
    pub value_column: Ident,
    /// The preference's name (bound as a value).
    pub name: String,
    /// The patrons table.
    pub patron_table: TableName,
    /// Its key.
    pub patron_key: Ident,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub source: PathBuf,
    /// The library's name.
    pub library: String,
    /// The database.
    pub database: DatabaseConfig,
    /// The schedule.
    pub schedule: Schedule,
    /// The guards.
    pub safety: Safety,
    /// The report.
    pub report: ReportConfig,
    /// Monitoring; `None` when `metrics:` is absent or sets nothing.
    pub metrics: Option<MetricsConfig>,
    /// The profile named, if any.
    pub profile: Option<String>,
    /// The anonymous patron's source, if the profile or file names one.
    pub anonymous_patron: Option<AnonymousPatronSource>,
    /// The enabled classes, profile order first, then the file's own.
    pub classes: Vec<ClassDef>,
    /// The secret of the `pseudonym` strategy, when a class pseudonymizes: read from
    /// `pseudonyms.key_env` (default `LETHE_PSEUDONYM_KEY`) or `pseudonyms.key_file`,
    /// never from the YAML itself; at least 32 bytes.
    pub pseudonym_key: Option<SecretString>,
}

/// `metrics:`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// The Prometheus text file written after every run (absolute, or joined to the
    /// config file's folder); its name ends in `.prom`, the only files node_exporter's
    /// textfile collector reads.
    pub textfile: PathBuf,
}

/// Reads and validates the file at `path`. Relative paths inside it (a SQLite URL, the
/// outbox) are taken relative to the file's folder.
///
/// # Errors
/// [`ConfigErrors`] with every problem found, or one error when the file cannot be read.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: file.clone(),
            location: None,
            path: String::new(),
            message: format!("cannot read: {e}"),
        }])
    })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: file.clone(),
            location: None,
            path: String::new(),
            message: format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
        }])
    })?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    parse_str(&text, &file, &base, &|n| std::env::var(n).ok())
}

/// Parses and validates `text`, naming `file` in errors and resolving relative paths
/// against `base`; `lookup` reads environment variables.
///
/// # Errors
/// [`ConfigErrors`] with every problem found.
pub fn parse_str(
    text: &str,
    file: &str,
    base: &Path,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    // A UTF-8 byte-order mark, as some Windows editors write, is not content.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let whole_file_error = |message: String| {
        ConfigErrors(vec![ConfigError {
            file: file.to_string(),
            location: None,
            path: String::new(),
            message,
        }])
    };
    if text.len() > MAX_CONFIG_BYTES {
        return Err(whole_file_error(format!(
            "the file is {} bytes, more than the {MAX_CONFIG_BYTES} a retention policy needs",
            text.len()
        )));
    }
    if let Some(depth) = flow_depth_over(text, MAX_FLOW_DEPTH) {
        return Err(whole_file_error(format!(
            "brackets nested {depth} deep, more than {MAX_FLOW_DEPTH}: not a retention policy"
        )));
    }
    let mut v = Validator {
        file: file.to_string(),
        index: LocationIndex::build(text),
        errors: Vec::new(),
        depth: 0,
        profile_name: None,
        base: base.to_path_buf(),
        lookup,
    };
    if text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        v.err(
            "",
            "the file is empty: it needs at least database, schedule and profile or classes",
        );
        return Err(ConfigErrors(v.errors));
    }
    for (p, l) in v.index.duplicates.clone() {
        v.errors.push(ConfigError {
            file: file.to_string(),
            location: Some(l),
            path: p,
            message: "duplicate key".into(),
        });
    }
    let raw: RawConfig = match serde_yaml::from_str(text) {
        Ok(r) => r,
        Err(first) => {
            // The first structural error, then the first of every other section.
            let mut seen = Vec::new();
            for e in std::iter::once(first).chain(raw::section_errors(text)) {
                let message = scrub_serde_message(&e.to_string());
                // serde_yaml starts a message with the path of the value
                // ("safety.batch_size: invalid type …").
                let path = serde_path(&message).unwrap_or_default();
                let location = e
                    .location()
                    .map(|l| Location {
                        line: l.line(),
                        column: l.column(),
                    })
                    .or_else(|| v.index.find(&path))
                    .or_else(|| Some(unlocated_place(text, &message)));
                if seen.contains(&(location, message.clone())) {
                    continue;
                }
                seen.push((location, message.clone()));
                v.errors.push(ConfigError {
                    file: file.to_string(),
                    location,
                    path,
                    message,
                });
            }
            v.errors.sort_by_key(|e| {
                e.location
                    .map(|l| (l.line, l.column))
                    .unwrap_or((usize::MAX, 0))
            });
            return Err(ConfigErrors(v.errors));
        }
    };
    let cfg = v.config(raw);
    if v.errors.is_empty() {
        cfg.ok_or_else(|| ConfigErrors(Vec::new()))
    } else {
        v.errors.sort_by_key(|e| {
            e.location
                .map(|l| (l.line, l.column))
                .unwrap_or((usize::MAX, 0))
        });
        Err(ConfigErrors(v.errors))
    }
}

/// The largest config file accepted: a policy is a few kilobytes; anything this large
/// is a mistake or an attack, and parsing it would take long.
const MAX_CONFIG_BYTES: usize = 256 * 1024;

/// The deepest nesting of `[`/`{` accepted (the YAML parsers' cost grows with it).
const MAX_FLOW_DEPTH: usize = 64;

/// The nesting depth of flow brackets, if it exceeds `max` (quoted text is skipped).
fn flow_depth_over(text: &str, max: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut deepest = 0usize;
    let mut quote: Option<char> = None;
    for ch in text.chars() {
        match (quote, ch) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(ch),
            (None, '[' | '{') => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            (None, ']' | '}') => depth = depth.saturating_sub(1),
            (None, '\n') => {}
            _ => {}
        }
    }
    (deepest > max).then_some(deepest)
}

/// Whether a 5-field cron line names a day that no month it names has (`30 2`: 30
/// February), when both fields are plain numbers (or lists of them). croner finds such
/// a line never fires only after searching thousands of years (1.7 s in a debug build):
/// this answers the common case at once. Other lines are left to croner.
fn impossible_day(line: &str) -> bool {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (Some(dom), Some(months)) = (fields.get(2), fields.get(3)) else {
        return false;
    };
    let Ok(day) = dom.parse::<u32>() else {
        return false;
    };
    let months: Option<Vec<u32>> = months.split(',').map(|m| m.parse().ok()).collect();
    let Some(months) = months.filter(|m| !m.is_empty()) else {
        return false;
    };
    let longest = |m: u32| match m {
        2 => 29,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    months
        .iter()
        .all(|&m| (1..=12).contains(&m) && day > longest(m))
}

/// A place for a serde_yaml error that came without one: for "more than one document",
/// the start of the second document (a `---` or `%` directive line after content);
/// otherwise the start of the file. Found by fuzzing: `%YAML 1.2` inserted mid-file
/// gave an error with no place at all.
fn unlocated_place(text: &str, message: &str) -> Location {
    if message.contains("more than one document") {
        let mut content = false;
        for (i, line) in text.lines().enumerate() {
            let t = line.trim_end();
            if content && (t.starts_with("---") || t.starts_with('%')) {
                return Location {
                    line: i + 1,
                    column: 1,
                };
            }
            content |= !t.is_empty() && !t.starts_with('#') && !t.starts_with('%') && t != "---";
        }
    }
    Location { line: 1, column: 1 }
}

/// The path a serde_yaml message starts with (`classes.x.retain: …`), if any.
fn serde_path(message: &str) -> Option<String> {
    let (head, _) = message.split_once(": ")?;
    let plain = !head.is_empty()
        && head
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '[' | ']' | '-'));
    plain.then(|| head.to_string())
}

/// serde_yaml puts " at line L column C" into its messages; the location is printed
/// separately.
fn scrub_serde_message(m: &str) -> String {
    match regex::Regex::new(r" at line \d+ column \d+") {
        Ok(re) => re.replace_all(m, "").into_owned(),
        Err(_) => m.to_string(),
    }
}

struct Validator<'a> {
    file: String,
    index: LocationIndex,
    errors: Vec<ConfigError>,
    /// How deep `all`/`any`/`not` nest at the condition being read.
    depth: usize,
    profile_name: Option<String>,
    base: PathBuf,
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl Validator<'_> {
    fn err(&mut self, path: &str, message: impl Into<String>) {
        let (file, location) = if self.index.contains(path) || self.profile_name.is_none() {
            (self.file.clone(), self.index.find(path))
        } else if let Some(p) = &self.profile_name {
            // A value the file does not set comes from the profile: say so, and point at
            // the nearest place in the file (the class, if overridden there).
            (
                format!("{} (from profile {p})", self.file),
                self.index.find(path),
            )
        } else {
            (self.file.clone(), None)
        };
        self.errors.push(ConfigError {
            file,
            location,
            path: path.to_string(),
            message: message.into(),
        });
    }

    fn expand(&mut self, path: &str, s: &str) -> Option<String> {
        match env::expand_with(s, |n| (self.lookup)(n)) {
            Ok(v) => Some(v),
            Err(e) => {
                self.err(path, e.to_string());
                None
            }
        }
    }

    fn secret_from(
        &mut self,
        path: &str,
        env_name: Option<&str>,
        file: Option<&str>,
    ) -> Option<SecretString> {
        match (env_name, file) {
            (Some(_), Some(_)) => {
                self.err(path, "give password_env or password_file, not both");
                None
            }
            (Some(n), None) => match (self.lookup)(n) {
                Some(v) => Some(SecretString::from(v)),
                None => {
                    self.err(
                        &format!("{path}.password_env"),
                        format!("environment variable {n} is not set"),
                    );
                    None
                }
            },
            (None, Some(f)) => {
                let p = self.base.join(f);
                match std::fs::read_to_string(&p) {
                    Ok(s) => Some(SecretString::from(
                        s.lines().next().unwrap_or("").to_string(),
                    )),
                    Err(e) => {
                        self.err(
                            &format!("{path}.password_file"),
                            format!("cannot read {}: {e}", p.display()),
                        );
                        None
                    }
                }
            }
            (None, None) => None,
        }
    }

    fn config(&mut self, raw: RawConfig) -> Option<Config> {
        let library = raw
            .library
            .clone()
            .unwrap_or_else(|| "the library".to_string());
        if library.trim().is_empty() {
            self.err(
                "library",
                "must not be empty: it names the library in reports and the public schedule",
            );
        }
        let database = self.database(raw.database.as_ref());
        let schedule = self.schedule(raw.schedule.as_ref());
        let mut safety = self.safety(raw.safety.as_ref());
        let report = self.report(raw.report.as_ref(), &library);
        let metrics = self.metrics(raw.metrics.as_ref());
        if let Some(t) = raw.report.as_ref().and_then(|r| r.overdue_after.as_deref()) {
            match Period::parse(t) {
                Ok(p) => {
                    if let Some(s) = safety.as_mut() {
                        s.overdue_after = Some(p);
                    }
                }
                Err(e) => self.err("report.overdue_after", e.to_string()),
            }
        }

        let mut profile_classes: IndexMap<String, RawClass> = IndexMap::new();
        let mut anon_raw = None;
        match raw.profile.as_deref() {
            None | Some("none") => {}
            Some(name @ ("koha" | "evergreen")) => {
                let text = if name == "koha" {
                    KOHA_PROFILE
                } else {
                    EVERGREEN_PROFILE
                };
                match serde_yaml::from_str::<RawProfile>(text) {
                    Ok(p) => {
                        profile_classes = p.classes;
                        anon_raw = p.anonymous_patron;
                        self.profile_name = Some(name.into());
                    }
                    Err(e) => self.err(
                        "profile",
                        format!("embedded profile {name} is invalid: {e}"),
                    ),
                }
            }
            Some(other) => {
                let msg = format!(
                    "unknown profile {:?} (use koha, evergreen or none)",
                    truncate(other)
                );
                self.err("profile", msg)
            }
        }
        if raw.anonymous_patron.is_some() {
            anon_raw = raw.anonymous_patron.clone();
        }
        let anonymous_patron = anon_raw.as_ref().and_then(|a| self.anonymous_patron(a));

        // Merge: the file's class overrides the profile's field by field.
        let mut merged: IndexMap<String, RawClass> = profile_classes;
        for (name, c) in raw.classes.unwrap_or_default() {
            match merged.get_mut(&name) {
                Some(base) => merge_class(base, c),
                None => {
                    if let Some(p) = &self.profile_name {
                        if c.table.is_none() && c.enabled != Some(false) {
                            // Most likely a misspelled profile class, not a new one.
                            let known: Vec<&str> = merged.keys().map(String::as_str).collect();
                            let m = format!(
                                "unknown class: not in the {p} profile (its classes: {}); a new class needs table, \
                                 key, age, retain and action",
                                known.join(", ")
                            );
                            self.err(&format!("classes.{name}"), m);
                            continue;
                        }
                    }
                    merged.insert(name, c);
                }
            }
        }
        if merged.is_empty() && !matches!(raw.profile.as_deref(), Some(p) if p != "none") {
            self.err(
                "classes",
                "no classes: set profile: koha, or declare classes",
            );
        }
        let mut classes = Vec::new();
        for (name, c) in merged {
            if c.enabled == Some(false) {
                continue;
            }
            if let Some(def) = self.class(
                &name,
                &c,
                safety.as_ref().map(|s| s.min_retention),
                anonymous_patron.is_some(),
            ) {
                classes.push(def);
            }
        }

        let pseudonym_key = self.pseudonym_key(raw.pseudonyms.as_ref(), &classes);
        if database
            .as_ref()
            .is_some_and(|d| d.backend == Backend::Sqlite)
        {
            for c in &classes {
                let qualified = c.table.schema.is_some()
                    || c.delete_with.iter().any(|d| d.table.schema.is_some());
                if qualified {
                    let path = format!("classes.{}.table", c.name);
                    self.err(
                        &path,
                        "SQLite tables are not schema-qualified: use the plain table name",
                    );
                }
            }
        }
        Some(Config {
            source: PathBuf::from(&self.file),
            library,
            database: database?,
            schedule: schedule?,
            safety: safety?,
            report: report?,
            metrics: metrics?,
            profile: raw.profile,
            anonymous_patron,
            classes,
            pseudonym_key,
        })
    }

    /// The pseudonym key, read only when a class uses it (see [`Config::pseudonym_key`]).
    fn pseudonym_key(
        &mut self,
        raw: Option<&raw::RawPseudonyms>,
        classes: &[ClassDef],
    ) -> Option<SecretString> {
        let user = classes
            .iter()
            .find(|c| c.anonymize.iter().any(|(_, s)| *s == Strategy::Pseudonym))?;
        let path = "pseudonyms";
        let (env_name, file) = match raw {
            Some(r) if r.key_env.is_some() && r.key_file.is_some() => {
                self.err(path, "give key_env or key_file, not both");
                return None;
            }
            Some(r) => (r.key_env.clone(), r.key_file.clone()),
            None => (None, None),
        };
        let (value, wherefrom) = match (env_name, file) {
            (_, Some(f)) => {
                let p = self.base.join(&f);
                match std::fs::read_to_string(&p) {
                    Ok(s) => (
                        Some(s.lines().next().unwrap_or("").trim().to_string()),
                        format!("file {}", p.display()),
                    ),
                    Err(e) => {
                        self.err(
                            &format!("{path}.key_file"),
                            format!("cannot read {}: {e}", p.display()),
                        );
                        return None;
                    }
                }
            }
            (n, None) => {
                let n = n.unwrap_or_else(|| DEFAULT_PSEUDONYM_KEY_ENV.to_string());
                ((self.lookup)(&n), format!("environment variable {n}"))
            }
        };
        match value {
            None => {
                self.err(
                    path,
                    format!(
                        "class {} pseudonymizes, but {wherefrom} is not set: give the secret key \
                         (e.g. `openssl rand -hex 32`) there, never in this file",
                        user.name
                    ),
                );
                None
            }
            Some(v) if v.len() < crate::pseudonym::MIN_KEY_BYTES => {
                self.err(
                    path,
                    format!(
                        "the pseudonym key in {wherefrom} is shorter than {} bytes",
                        crate::pseudonym::MIN_KEY_BYTES
                    ),
                );
                None
            }
            Some(v) => Some(SecretString::from(v)),
        }
    }

    fn database(&mut self, d: Option<&raw::RawDatabase>) -> Option<DatabaseConfig> {
        let Some(d) = d else {
            self.err("database", "missing: database.url is required");
            return None;
        };
        let Some(raw_url) = d.url.as_deref() else {
            self.err("database", "missing: database.url is required");
            return None;
        };
        // A literal password in the YAML is refused: secrets come from the environment
        // or a file. `${VAR}` in the password part is fine (it comes from the environment).
        if let Some((_, rest)) = raw_url.split_once("://") {
            let authority = rest.split(['/', '?']).next().unwrap_or("");
            if let Some((userinfo, _)) = authority.rsplit_once('@') {
                if let Some((_, pw)) = userinfo.split_once(':') {
                    let from_env = pw.starts_with("${") && pw.ends_with('}');
                    if !pw.is_empty() && !from_env {
                        self.err(
                            "database.url",
                            "contains a password: use password_env, password_file or ${VAR}",
                        );
                        return None;
                    }
                }
            }
        }
        if let Some((_, query)) = raw_url.split_once('?') {
            let secret_key = query
                .split('&')
                .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_ascii_lowercase(), v)))
                .any(|(k, v)| {
                    (k.contains("pass") || k.contains("secret"))
                        && !(v.starts_with("${") && v.ends_with('}'))
                });
            if secret_key {
                self.err(
                    "database.url",
                    "carries a password parameter: use password_env, password_file or ${VAR}",
                );
                return None;
            }
        }
        let url = self.expand("database.url", raw_url)?;
        let password = self.secret_from(
            "database",
            d.password_env.as_deref(),
            d.password_file.as_deref(),
        );
        let (scheme, _) = url.split_once(':').unwrap_or((url.as_str(), ""));
        let backend = match scheme {
            "sqlite" => Backend::Sqlite,
            "mysql" | "mariadb" => Backend::MySql,
            "postgres" | "postgresql" => Backend::Postgres,
            _ => {
                self.err(
                    "database.url",
                    "unknown scheme: use sqlite://, mysql:// or postgres://",
                );
                return None;
            }
        };
        if backend == Backend::Sqlite {
            let path = url
                .trim_start_matches("sqlite://")
                .trim_start_matches("sqlite:");
            let (path, query) = path.split_once('?').unwrap_or((path, ""));
            let p = Path::new(path);
            let full = if p.is_absolute() || path.is_empty() || path == ":memory:" {
                p.to_path_buf()
            } else {
                self.base.join(p)
            };
            let q = if query.is_empty() {
                String::new()
            } else {
                format!("?{query}")
            };
            let u = format!("sqlite://{}{q}", full.display());
            return Some(DatabaseConfig {
                url: SecretString::from(u.clone()),
                display_url: u,
                backend,
            });
        }
        let mut parsed = match url::Url::parse(&url) {
            Ok(u) => u,
            Err(e) => {
                self.err("database.url", format!("not a valid URL: {e}"));
                return None;
            }
        };
        if let Some(pw) = password {
            use secrecy::ExposeSecret;
            if parsed.set_password(Some(pw.expose_secret())).is_err() {
                self.err("database.url", "cannot carry a password (no host)");
                return None;
            }
        }
        let full = parsed.to_string();
        let mut shown = parsed.clone();
        let _ = shown.set_password(None);
        Some(DatabaseConfig {
            url: SecretString::from(full),
            display_url: shown.to_string(),
            backend,
        })
    }

    fn schedule(&mut self, s: Option<&raw::RawSchedule>) -> Option<Schedule> {
        let s = match s {
            Some(s) => s,
            None => {
                self.err(
                    "schedule",
                    "missing: schedule.cron and schedule.timezone are required",
                );
                return None;
            }
        };
        let tz = match s.timezone.as_deref() {
            None => {
                self.err(
                    "schedule",
                    "missing: schedule.timezone (an IANA name such as America/New_York)",
                );
                None
            }
            Some(t) => match Tz::from_str(t) {
                Ok(tz) => Some(tz),
                Err(_) => {
                    let m = format!(
                        "unknown time zone {:?} (use an IANA name such as America/New_York)",
                        truncate(t)
                    );
                    self.err("schedule.timezone", m);
                    None
                }
            },
        };
        let cron = match s.cron.as_deref() {
            None => {
                self.err(
                    "schedule",
                    "missing: schedule.cron (e.g. \"30 2 * * *\": 02:30 every day)",
                );
                None
            }
            Some(line) => {
                let fields = line.split_whitespace().count();
                if fields != 5 {
                    self.err(
                        "schedule.cron",
                        format!("a cron line has 5 fields (minute hour day month weekday), found {fields}"),
                    );
                    None
                } else {
                    match croner::Cron::from_str(line) {
                        Ok(c)
                            if impossible_day(line)
                                || c.find_next_occurrence(&chrono::Utc::now(), false).is_err() =>
                        {
                            self.err(
                                "schedule.cron",
                                "this cron line never fires (e.g. 30 February)",
                            );
                            None
                        }
                        Ok(c) => Some((line.to_string(), c)),
                        Err(e) => {
                            self.err("schedule.cron", format!("invalid cron line: {e}"));
                            None
                        }
                    }
                }
            }
        };
        let (cron_line, cron) = cron?;
        Some(Schedule {
            cron_line,
            cron,
            timezone: tz?,
        })
    }

    fn safety(&mut self, s: Option<&raw::RawSafety>) -> Option<Safety> {
        let default = raw::RawSafety::default();
        let s = s.unwrap_or(&default);
        let mut ok = true;
        let mode = match s.mode.as_deref() {
            None | Some("enforce") => Mode::Enforce,
            Some("dry-run") | Some("dry_run") => Mode::DryRun,
            Some(other) => {
                let m = format!(
                    "unknown mode {:?} (use enforce or dry-run)",
                    truncate(other)
                );
                self.err("safety.mode", m);
                ok = false;
                Mode::DryRun
            }
        };
        let batch_size = match s.batch_size {
            None => 1000,
            // Each batch binds its keys as parameters: SQLite allows 32,766, MySQL 65,535.
            Some(n) if (1..=10_000).contains(&n) => n as u32,
            Some(_) => {
                self.err("safety.batch_size", "must be between 1 and 10000");
                ok = false;
                1000
            }
        };
        let mut bound = |key: &str, value: Option<i64>| match value {
            None => None,
            Some(n) if (1..=10_000).contains(&n) => Some(n as u32),
            Some(_) => {
                self.err(key, "must be between 1 and 10000");
                ok = false;
                None
            }
        };
        let batch_min = bound("safety.batch_min", s.batch_min);
        // Written batch_size: the most a batch covers unless batch_max says more (an
        // administrator's explicit size is respected). No batch_size: batches may grow
        // to DEFAULT_BATCH_MAX where they stay under batch_target.
        let batch_max = bound("safety.batch_max", s.batch_max)
            .or(s.batch_size.is_none().then_some(DEFAULT_BATCH_MAX));
        if let Some(min) = batch_min.filter(|m| *m > batch_size) {
            self.err(
                "safety.batch_min",
                format!("{min} is larger than safety.batch_size ({batch_size})"),
            );
            ok = false;
        }
        if let Some(max) = batch_max.filter(|m| *m < batch_size) {
            self.err(
                "safety.batch_max",
                format!("{max} is smaller than safety.batch_size ({batch_size})"),
            );
            ok = false;
        }
        let batch_target = match s.batch_target.as_deref() {
            None => DEFAULT_BATCH_TARGET,
            Some(t) => match parse_batch_target(t) {
                Ok(d) => d,
                Err(e) => {
                    self.err("safety.batch_target", e);
                    ok = false;
                    DEFAULT_BATCH_TARGET
                }
            },
        };
        let max_fraction = match s.max_fraction {
            None => 0.5,
            Some(f) if f > 0.0 && f <= 1.0 => f,
            Some(_) => {
                self.err(
                    "safety.max_fraction",
                    "must be greater than 0 and at most 1",
                );
                ok = false;
                0.5
            }
        };
        let max_clock_skew = match s.max_clock_skew.as_deref() {
            None => Duration::from_secs(300),
            Some(t) => match parse_duration(t) {
                Ok(d) => d,
                Err(e) => {
                    self.err("safety.max_clock_skew", e);
                    ok = false;
                    Duration::from_secs(300)
                }
            },
        };
        let min_retention = match s.min_retention.as_deref() {
            None => Period {
                count: 7,
                unit: crate::policy::PeriodUnit::Days,
            },
            Some(t) => match Period::parse(t) {
                Ok(p) => p,
                Err(e) => {
                    self.err("safety.min_retention", e.to_string());
                    ok = false;
                    Period {
                        count: 7,
                        unit: crate::policy::PeriodUnit::Days,
                    }
                }
            },
        };
        let max_rounds = match s.max_rounds {
            None => 10,
            Some(n) if (1..=100).contains(&n) => n as u32,
            Some(_) => {
                self.err("safety.max_rounds", "must be between 1 and 100");
                ok = false;
                10
            }
        };
        let mut bounded_duration = |key: &str, value: Option<&str>, default: Duration| match value {
            None => default,
            Some(t) => match parse_duration(t) {
                Ok(d) if d <= Duration::from_secs(3600) => d,
                Ok(_) => {
                    self.err(key, "must be between 1 second and 1 hour");
                    ok = false;
                    default
                }
                Err(e) => {
                    self.err(key, e);
                    ok = false;
                    default
                }
            },
        };
        let statement_timeout = bounded_duration(
            "safety.statement_timeout",
            s.statement_timeout.as_deref(),
            crate::db::DEFAULT_STATEMENT_TIMEOUT,
        );
        let retry_for = bounded_duration(
            "safety.retry_for",
            s.retry_for.as_deref(),
            Duration::from_secs(60),
        );
        let retries = match s.retries {
            None => 5,
            Some(n) if (0..=20).contains(&n) => n as u32,
            Some(_) => {
                self.err("safety.retries", "must be between 0 and 20");
                ok = false;
                5
            }
        };
        ok.then_some(Safety {
            mode,
            batch_size,
            batch_target,
            batch_min,
            batch_max,
            max_fraction,
            max_clock_skew,
            min_retention,
            overdue_after: None,
            max_rounds,
            statement_timeout,
            retries,
            retry_for,
        })
    }

    fn report(&mut self, r: Option<&raw::RawReport>, library: &str) -> Option<ReportConfig> {
        let default = raw::RawReport::default();
        let r = r.unwrap_or(&default);
        let mut ok = true;
        let from_s = match r.from.as_deref() {
            Some(f) => self.expand("report.from", f),
            None => Some("Lethe <lethe@localhost>".to_string()),
        };
        let from = from_s.and_then(|f| match f.parse::<lettre::message::Mailbox>() {
            Ok(m) => Some(m),
            Err(_) => {
                self.err(
                    "report.from",
                    "not a mail address (e.g. \"Lethe <lethe@library.example>\")",
                );
                None
            }
        });
        let mut to = Vec::new();
        match &r.to {
            None => to.push(lettre::message::Mailbox::new(
                Some("Library director".into()),
                lettre::Address::new("director", "localhost").ok()?,
            )),
            Some(list) if list.is_empty() => {
                self.err("report.to", "needs at least one address");
                ok = false;
            }
            Some(list) => {
                for (i, a) in list.iter().enumerate() {
                    let p = format!("report.to[{i}]");
                    match self
                        .expand(&p, a)
                        .map(|s| s.parse::<lettre::message::Mailbox>())
                    {
                        Some(Ok(m)) => to.push(m),
                        Some(Err(_)) => {
                            self.err(&p, "not a mail address");
                            ok = false;
                        }
                        None => ok = false,
                    }
                }
            }
        }
        let smtp = match &r.smtp {
            None => None,
            Some(s) => self.smtp(s),
        };
        if r.smtp.is_some() && smtp.is_none() {
            ok = false;
        }
        let outbox = match r.outbox.as_deref() {
            None => Some(self.base.join("outbox")),
            Some(o) => self.expand("report.outbox", o).map(|o| self.base.join(o)),
        };
        let send = match r.on.as_deref() {
            None | Some("always") => SendWhen::Always,
            Some("changes") => SendWhen::Changed,
            Some("failures") => SendWhen::Failure,
            Some(other) => {
                let m = format!(
                    "unknown value {:?} (use always, changes or failures)",
                    truncate(other)
                );
                self.err("report.on", m);
                ok = false;
                SendWhen::Always
            }
        };
        if !ok {
            return None;
        }
        Some(ReportConfig {
            from: from?,
            to,
            smtp,
            outbox: outbox?,
            send,
            library: library.to_string(),
        })
    }

    /// `Some(None)` when no metrics file is asked for; `None` after an error.
    fn metrics(&mut self, m: Option<&raw::RawMetrics>) -> Option<Option<MetricsConfig>> {
        let Some(raw_path) = m.and_then(|m| m.textfile.as_deref()) else {
            return Some(None);
        };
        let path = self.expand("metrics.textfile", raw_path)?;
        let file_name = Path::new(&path)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("");
        // node_exporter's textfile collector reads `*.prom` only: any other name would
        // be written every night and never scraped, and the alerts would stay silent.
        if !file_name.ends_with(".prom") || file_name == ".prom" {
            self.err(
                "metrics.textfile",
                format!(
                    "the file name {:?} does not end in .prom: node_exporter's textfile collector reads only *.prom \
                     files (e.g. /var/lib/prometheus/node-exporter/lethe.prom)",
                    truncate(file_name)
                ),
            );
            return None;
        }
        Some(Some(MetricsConfig {
            textfile: self.base.join(path),
        }))
    }

    fn smtp(&mut self, s: &raw::RawSmtp) -> Option<SmtpConfig> {
        let Some(raw_url) = s.url.as_deref() else {
            self.err("report.smtp", "missing: report.smtp.url");
            return None;
        };
        let url = self.expand("report.smtp.url", raw_url)?;
        let parsed = match url::Url::parse(&url) {
            Ok(u) => u,
            Err(e) => {
                self.err("report.smtp.url", format!("not a valid URL: {e}"));
                return None;
            }
        };
        if parsed.password().is_some() {
            self.err(
                "report.smtp.url",
                "contains a password: use report.smtp.password_env or password_file",
            );
            return None;
        }
        let tls = parsed
            .query_pairs()
            .find(|(k, _)| k == "tls")
            .map(|(_, v)| v.to_string());
        let host = parsed.host_str().unwrap_or("");
        let loopback =
            matches!(host, "localhost" | "127.0.0.1" | "::1" | "[::1]") || host.starts_with("127.");
        match parsed.scheme() {
            "smtps" => {}
            "smtp"
                if tls.as_deref() == Some("required")
                    || tls.as_deref() == Some("opportunistic") => {}
            "smtp" if loopback => {}
            "smtp" => {
                self.err(
                    "report.smtp.url",
                    "plain-text SMTP is allowed only to a loopback host: use smtps:// or ?tls=required",
                );
                return None;
            }
            _ => {
                self.err("report.smtp.url", "unknown scheme: use smtps:// or smtp://");
                return None;
            }
        }
        let password = self.secret_from(
            "report.smtp",
            s.password_env.as_deref(),
            s.password_file.as_deref(),
        );
        let timeout = match s.timeout.as_deref() {
            None => Duration::from_secs(30),
            Some(t) => match parse_duration(t) {
                Ok(d) => d,
                Err(e) => {
                    self.err("report.smtp.timeout", e);
                    return None;
                }
            },
        };
        Some(SmtpConfig {
            url,
            password,
            timeout,
        })
    }

    fn anonymous_patron(&mut self, a: &raw::RawAnonymousPatron) -> Option<AnonymousPatronSource> {
        let p = "anonymous_patron";
        let table = self.table(&format!("{p}.table"), a.table.as_deref())?;
        let name_column = self.ident(&format!("{p}.name_column"), a.name_column.as_deref())?;
        let value_column = self.ident(&format!("{p}.value_column"), a.value_column.as_deref())?;
        let patron_table = self.table(&format!("{p}.patron_table"), a.patron_table.as_deref())?;
        let patron_key = self.ident(&format!("{p}.patron_key"), a.patron_key.as_deref())?;
        let Some(name) = a.name.clone() else {
            self.err(&format!("{p}.name"), "missing");
            return None;
        };
        Some(AnonymousPatronSource {
            table,
            name_column,
            value_column,
            name,
            patron_table,
            patron_key,
        })
    }

    fn ident(&mut self, path: &str, s: Option<&str>) -> Option<Ident> {
        match s {
            None => {
                self.err(path, "missing");
                None
            }
            Some(s) => match Ident::new(s) {
                Ok(i) => Some(i),
                Err(e) => {
                    self.err(path, e);
                    None
                }
            },
        }
    }

    fn table(&mut self, path: &str, s: Option<&str>) -> Option<TableName> {
        match s {
            None => {
                self.err(path, "missing");
                None
            }
            Some(s) => match TableName::new(s) {
                Ok(t) => Some(t),
                Err(e) => {
                    self.err(path, e);
                    None
                }
            },
        }
    }

    fn class(
        &mut self,
        name: &str,
        c: &RawClass,
        floor: Option<Period>,
        has_anon: bool,
    ) -> Option<ClassDef> {
        let p = format!("classes.{name}");
        let before = self.errors.len();
        if Ident::new(name).is_err() {
            self.err(&p, "a class name is letters, digits and _");
        }
        let table = self.table(&format!("{p}.table"), c.table.as_deref());
        if let Some(why) = table.as_ref().and_then(forbidden_table) {
            self.err(&format!("{p}.table"), why);
        }
        // No key: a table without a primary key (checked against the catalog).
        let key = match c.key.as_deref() {
            None => None,
            k => self.ident(&format!("{p}.key"), k),
        };
        let age = match &c.age {
            None => {
                self.err(&p, "missing: age (columns and type)");
                None
            }
            Some(a) => {
                let cols = match a.columns.as_deref() {
                    None | Some([]) => {
                        self.err(&format!("{p}.age.columns"), "needs at least one column");
                        None
                    }
                    Some(cols) => {
                        let v: Vec<Option<Ident>> = cols
                            .iter()
                            .enumerate()
                            .map(|(i, col)| self.ident(&format!("{p}.age.columns[{i}]"), Some(col)))
                            .collect();
                        v.into_iter().collect::<Option<Vec<_>>>()
                    }
                };
                let kind = match a.kind.as_deref() {
                    Some("datetime") => Some(AgeType::Datetime),
                    Some("date") => Some(AgeType::Date),
                    Some("timestamptz") => Some(AgeType::Timestamptz),
                    None => {
                        self.err(
                            &format!("{p}.age"),
                            "missing: type (datetime, date or timestamptz)",
                        );
                        None
                    }
                    Some(other) => {
                        let m = format!(
                            "unknown type {:?} (use datetime, date or timestamptz)",
                            truncate(other)
                        );
                        self.err(&format!("{p}.age.type"), m);
                        None
                    }
                };
                let from = match &a.from {
                    None => Some(None),
                    Some(f) => {
                        let fp = format!("{p}.age.from");
                        let t = self.table(&format!("{fp}.table"), f.table.as_deref());
                        if let Some(why) = t.as_ref().and_then(forbidden_table) {
                            self.err(&format!("{fp}.table"), why);
                        }
                        if t.is_some() && t == table {
                            // MySQL refuses a subquery on the table an UPDATE or DELETE
                            // changes (error 1093); a row's own columns need no `from`.
                            self.err(
                                &format!("{fp}.table"),
                                "must be another table than the class's own (leave out from: to read the row's own columns)",
                            );
                        }
                        let column = self.ident(&format!("{fp}.column"), f.column.as_deref());
                        let matches = match (f.matches.as_deref(), &key) {
                            (Some(m), _) => self.ident(&format!("{fp}.matches"), Some(m)),
                            (None, Some(k)) => Some(k.clone()),
                            (None, None) => {
                                self.err(
                                    &fp,
                                    "missing: matches (the class has no key to default to)",
                                );
                                None
                            }
                        };
                        let filter = self.filter(&fp, f.filter.as_deref().unwrap_or(&[]));
                        match (t, column, matches, filter) {
                            (Some(table), Some(column), Some(matches), Some(filter)) => {
                                Some(Some(AgeFrom {
                                    table,
                                    column,
                                    matches,
                                    filter,
                                }))
                            }
                            _ => None,
                        }
                    }
                };
                match (cols, kind, from) {
                    (Some(columns), Some(kind), Some(from)) => Some(Age {
                        columns,
                        kind,
                        meaning: a
                            .meaning
                            .clone()
                            .unwrap_or_else(|| "the date in the record".into()),
                        from,
                    }),
                    _ => None,
                }
            }
        };
        let retain = match c.retain.as_deref() {
            None => {
                self.err(&p, "missing: retain (e.g. \"30 days\")");
                None
            }
            Some(r) => match Period::parse(r) {
                Ok(period) => {
                    if let Some(f) = floor {
                        if period.min_hours() < f.min_hours() {
                            self.err(
                                &format!("{p}.retain"),
                                format!("{period} is below the floor safety.min_retention = {f}"),
                            );
                        }
                    }
                    Some(period)
                }
                Err(e) => {
                    self.err(&format!("{p}.retain"), e.to_string());
                    None
                }
            },
        };
        let action = match c.action.as_deref() {
            Some("delete") => Some(Action::Delete),
            Some("anonymize") => Some(Action::Anonymize),
            Some("purge") => Some(Action::Purge),
            Some("pseudonymize") => Some(Action::Pseudonymize),
            Some("aggregate") => Some(Action::Aggregate),
            None => {
                self.err(
                    &p,
                    "missing: action (delete, anonymize, pseudonymize, aggregate or purge)",
                );
                None
            }
            Some(other) => {
                let m = format!(
                    "unknown action {:?} (use delete, anonymize, pseudonymize, aggregate or purge)",
                    truncate(other)
                );
                self.err(&format!("{p}.action"), m);
                None
            }
        };
        let purge = match (&c.purge, action) {
            (Some(pc), Some(Action::Purge)) => self.purge_call(&format!("{p}.purge"), pc),
            (Some(_), _) => {
                self.err(&format!("{p}.purge"), "only for action purge");
                None
            }
            (None, Some(Action::Purge)) => {
                self.err(
                    &p,
                    "action purge needs purge: { function: schema.name, args: [key, ...] }",
                );
                None
            }
            (None, _) => None,
        };
        let mut triggers = Vec::new();
        for (i, t) in c.triggers.as_deref().unwrap_or(&[]).iter().enumerate() {
            if let Some(f) = self.table(&format!("{p}.triggers[{i}]"), Some(t)) {
                triggers.push(f);
            }
        }
        let purged = self.conditions(
            &format!("{p}.purged"),
            c.purged.as_deref().unwrap_or(&[]),
            false,
        );
        let mut anonymize = Vec::new();
        let (map_name, map) = match (action, &c.anonymize, &c.pseudonymize) {
            (_, Some(_), Some(_)) => {
                self.err(
                    &format!("{p}.pseudonymize"),
                    "give anonymize: or pseudonymize:, not both",
                );
                ("anonymize", None)
            }
            (Some(Action::Pseudonymize), Some(_), None) => {
                self.err(
                    &format!("{p}.anonymize"),
                    "action pseudonymize takes pseudonymize: (a strategy per column)",
                );
                ("anonymize", None)
            }
            (Some(a), None, Some(_)) if a != Action::Pseudonymize => {
                self.err(&format!("{p}.pseudonymize"), "only for action pseudonymize");
                ("pseudonymize", None)
            }
            (_, None, Some(m)) => ("pseudonymize", Some(m)),
            (_, m, None) => ("anonymize", m.as_ref()),
        };
        if let Some(map) = map {
            for (col, strat) in map {
                let cp = format!("{p}.{map_name}.{col}");
                let ident = self.ident(&cp, Some(col));
                let s = match strat {
                    RawStrategy::Name(n) if n == "set_null" => Some(Strategy::SetNull),
                    RawStrategy::Name(n) if n == "anonymous_patron" => {
                        if !has_anon {
                            self.err(&cp, "anonymous_patron needs an anonymous_patron source (profile koha sets one)");
                        }
                        Some(Strategy::AnonymousPatron)
                    }
                    RawStrategy::Name(n) if n == "pseudonym" => {
                        if action != Some(Action::Pseudonymize) {
                            self.err(&cp, "pseudonym is only for action pseudonymize");
                        }
                        Some(Strategy::Pseudonym)
                    }
                    RawStrategy::Name(n) => {
                        let m = format!(
                            "unknown strategy {:?} (use set_null, anonymous_patron, pseudonym or {{ set_value: X }})",
                            truncate(n)
                        );
                        self.err(&cp, m);
                        None
                    }
                    RawStrategy::Value(v) => Some(Strategy::SetValue(scalar(&v.set_value))),
                };
                if let (Some(i), Some(s)) = (ident, s) {
                    anonymize.push((i, s));
                }
            }
        }
        match action {
            Some(Action::Anonymize) if c.anonymize.as_ref().is_none_or(|m| m.is_empty()) => {
                self.err(
                    &p,
                    "action anonymize needs anonymize: (a strategy per column)",
                );
            }
            Some(Action::Pseudonymize) => {
                let n = anonymize
                    .iter()
                    .filter(|(_, s)| *s == Strategy::Pseudonym)
                    .count();
                if c.pseudonymize.is_some() && n != 1 {
                    self.err(
                        &format!("{p}.pseudonymize"),
                        "needs exactly one column with strategy pseudonym (the patron id)",
                    );
                } else if c.pseudonymize.is_none() && c.anonymize.is_none() {
                    self.err(
                        &p,
                        "action pseudonymize needs pseudonymize: { <patron id column>: pseudonym }",
                    );
                }
            }
            Some(Action::Delete | Action::Purge | Action::Aggregate) if c.anonymize.is_some() => {
                self.err(&format!("{p}.anonymize"), "only for action anonymize");
            }
            _ => {}
        }
        if let Some(k) = &key {
            if anonymize.iter().any(|(col, _)| col == k) {
                self.err(
                    &format!("{p}.{map_name}.{k}"),
                    "the key cannot be anonymized: batches walk it",
                );
            }
        }
        let scope = self.conditions(
            &format!("{p}.scope"),
            c.scope.as_deref().unwrap_or(&[]),
            false,
        );
        let immediate = self.conditions(
            &format!("{p}.immediate"),
            c.immediate.as_deref().unwrap_or(&[]),
            false,
        );
        let mut exempt = Vec::new();
        for (i, rc) in c.exempt.as_deref().unwrap_or(&[]).iter().enumerate() {
            let ep = format!("{p}.exempt[{i}]");
            let reason = match rc.reason.as_deref() {
                Some("opt_in") => Some(Reason::OptIn),
                Some("legal_hold") => Some(Reason::LegalHold),
                Some("obligations") => Some(Reason::Obligations),
                Some("protected") => Some(Reason::Protected),
                None => {
                    self.err(
                        &ep,
                        "missing: reason (opt_in, legal_hold, obligations or protected)",
                    );
                    None
                }
                Some(other) => {
                    let m = format!(
                        "unknown reason {:?} (use opt_in, legal_hold, obligations or protected)",
                        truncate(other)
                    );
                    self.err(&format!("{ep}.reason"), m);
                    None
                }
            };
            let cond = self.condition(&ep, rc, true);
            if let (Some(r), Some(cd)) = (reason, cond) {
                exempt.push((r, cd));
            }
        }
        let patron = match c.patron.as_deref() {
            Some(col) => self.ident(&format!("{p}.patron"), Some(col)),
            None => None,
        };
        if let Some(col) = &patron {
            exempt.push((Reason::LegalHold, Condition::LegalHold(col.clone())));
        }
        let unlink = match &c.unlink {
            None => None,
            Some(u) => {
                let up = format!("{p}.unlink");
                if patron.is_none() {
                    self.err(
                        &up,
                        "needs the class's patron: column (the value to look for)",
                    );
                }
                if action != Some(Action::Delete) {
                    self.err(&up, "only for action delete");
                }
                let mut columns = Vec::new();
                for (i, col) in u.columns.as_deref().unwrap_or(&[]).iter().enumerate() {
                    if let Some(id) = self.ident(&format!("{up}.columns[{i}]"), Some(col)) {
                        columns.push(id);
                    }
                }
                if columns.is_empty() {
                    self.err(&format!("{up}.columns"), "needs at least one column");
                }
                let chain = match u.chain.as_deref() {
                    Some(col) => self.ident(&format!("{up}.chain"), Some(col)),
                    None => None,
                };
                match &u.set_value {
                    Some(v) => Some(Unlink {
                        columns,
                        chain,
                        value: scalar(v),
                    }),
                    None => {
                        self.err(&up, "missing: set_value");
                        None
                    }
                }
            }
        };
        exempt.sort_by_key(|(r, _)| *r);
        let mut delete_with = Vec::new();
        for (i, d) in c.delete_with.as_deref().unwrap_or(&[]).iter().enumerate() {
            let dp = format!("{p}.delete_with[{i}]");
            let t = self.table(&format!("{dp}.table"), d.table.as_deref());
            let col = self.ident(&format!("{dp}.column"), d.column.as_deref());
            if let Some(why) = t.as_ref().and_then(forbidden_table) {
                self.err(&format!("{dp}.table"), why);
            }
            if let (Some(table), Some(column)) = (t, col) {
                delete_with.push(Dependent { table, column });
            }
        }
        let mut linked = Vec::new();
        for (i, l) in c.linked.as_deref().unwrap_or(&[]).iter().enumerate() {
            let lp = format!("{p}.linked[{i}]");
            let t = self.table(&format!("{lp}.table"), l.table.as_deref());
            let col = self.ident(&format!("{lp}.column"), l.column.as_deref());
            let pat = self.ident(&format!("{lp}.patron"), l.patron.as_deref());
            if let Some(why) = t.as_ref().and_then(forbidden_table) {
                self.err(&format!("{lp}.table"), why);
            }
            if t.is_some() && t == table {
                self.err(
                    &format!("{lp}.table"),
                    "is the class's own table (use unlink: for its own columns)",
                );
            }
            if let (Some(table), Some(column), Some(patron)) = (t, col, pat) {
                linked.push(Linked {
                    table,
                    column,
                    patron,
                });
            }
        }
        if c.linked.is_some() {
            let lp = format!("{p}.linked");
            if patron.is_none() {
                self.err(
                    &lp,
                    "needs the class's patron: column (the value to look for)",
                );
            }
            if action == Some(Action::Purge) {
                self.err(
                    &lp,
                    "not for action purge (its function handles linked rows)",
                );
            }
        }
        let aggregate = match (&c.aggregate, action) {
            (Some(a), Some(Action::Aggregate)) => {
                let by = a.by.clone().unwrap_or_default();
                let ap = format!("{p}.aggregate.by");
                let mut col = |name: &str, v: &Option<String>| match v {
                    None => None,
                    Some(x) => self.ident(&format!("{ap}.{name}"), Some(x)),
                };
                Some(AggregateBy {
                    library: col("library", &by.library),
                    item_type: col("item_type", &by.item_type),
                    patron_category: col("patron_category", &by.patron_category),
                    kind: col("kind", &by.kind),
                })
            }
            (Some(_), _) => {
                self.err(&format!("{p}.aggregate"), "only for action aggregate");
                None
            }
            (None, Some(Action::Aggregate)) => Some(AggregateBy::default()),
            (None, _) => None,
        };
        if matches!(
            action,
            Some(Action::Anonymize | Action::Pseudonymize | Action::Aggregate)
        ) && !delete_with.is_empty()
        {
            self.err(&format!("{p}.delete_with"), "only for action delete");
        }
        if c.age.as_ref().is_some_and(|a| a.from.is_some()) {
            // An age read from linked rows is a correlated subquery in every statement of
            // the class. The keyed delete and anonymize batches re-check it under lock;
            // the others are refused rather than left untested: aggregate reads the age
            // back as each row's month and orders a keyless batch by it, pseudonymize
            // and purge walk other paths, and a keyless batch has no key to lock by.
            let ap = format!("{p}.age.from");
            match action {
                Some(Action::Delete | Action::Anonymize) | None => {}
                Some(other) => self.err(
                    &ap,
                    format!(
                        "not with action {} (only delete and anonymize read an age from another table)",
                        other.as_str()
                    ),
                ),
            }
            if key.is_none() {
                self.err(&ap, "needs the table's key: (its integer primary key)");
            }
        }
        if key.is_none() && c.key.is_none() {
            // Without a key, rows cannot be named one by one: only the set-based actions.
            let keyless =
                |what: &str| format!("{what} needs the table's key: (its integer primary key)");
            if action == Some(Action::Purge) {
                self.err(&p, keyless("action purge"));
            }
            if !delete_with.is_empty() {
                self.err(&format!("{p}.delete_with"), keyless("delete_with"));
            }
            if c.unlink.is_some() {
                self.err(&format!("{p}.unlink"), keyless("unlink"));
            }
            if c.linked.is_some() {
                self.err(&format!("{p}.linked"), keyless("linked"));
            }
            let mut all: Vec<&Condition> = Vec::new();
            for list in [&scope, &immediate, &purged] {
                all.extend(list.iter().flatten());
            }
            all.extend(exempt.iter().map(|(_, c)| c));
            if all.iter().any(|c| needs_key(c)) {
                self.err(
                    &p,
                    keyless("an exists condition without matches, or a chain condition,"),
                );
            }
        }
        if self.errors.len() > before {
            return None;
        }
        // `exists` without `matches` links to the class's key: resolve it here, so that
        // nothing downstream sees an unresolved link (a class without a key has none:
        // checked above).
        let resolve = |mut c: Condition| {
            if let Some(key) = &key {
                resolve_matches(&mut c, key);
            }
            c
        };
        Some(ClassDef {
            name: name.to_string(),
            description: c.description.clone().unwrap_or_default(),
            table: table?,
            age: age?,
            retain: retain?,
            action: action?,
            anonymize,
            scope: scope?.into_iter().map(resolve).collect(),
            immediate: immediate?.into_iter().map(resolve).collect(),
            exempt: exempt.into_iter().map(|(r, c)| (r, resolve(c))).collect(),
            delete_with,
            purge,
            triggers,
            purged: purged?.into_iter().map(resolve).collect(),
            patron,
            unlink,
            linked,
            aggregate,
            key,
        })
    }

    fn purge_call(&mut self, path: &str, pc: &raw::RawPurge) -> Option<PurgeCall> {
        let function = self.table(&format!("{path}.function"), pc.function.as_deref());
        let mut args = Vec::new();
        let mut ok = true;
        for (i, a) in pc.args.as_deref().unwrap_or(&[]).iter().enumerate() {
            match a {
                raw::RawArg::Name(n) if n == "key" => args.push(PurgeArg::Key),
                raw::RawArg::Name(n) => {
                    let m = format!(
                        "unknown argument {:?} (use key, or {{ value: X }})",
                        truncate(n)
                    );
                    self.err(&format!("{path}.args[{i}]"), m);
                    ok = false;
                }
                raw::RawArg::Value(v) => args.push(PurgeArg::Value(scalar(&v.value))),
            }
        }
        if !args.contains(&PurgeArg::Key) {
            self.err(
                &format!("{path}.args"),
                "the arguments must include key (the row to purge)",
            );
            ok = false;
        }
        if !ok {
            return None;
        }
        Some(PurgeCall {
            function: function?,
            args,
        })
    }

    fn conditions(
        &mut self,
        path: &str,
        list: &[RawCondition],
        reason_ok: bool,
    ) -> Option<Vec<Condition>> {
        let mut out = Vec::new();
        let mut ok = true;
        for (i, c) in list.iter().enumerate() {
            match self.condition(&format!("{path}[{i}]"), c, reason_ok) {
                Some(cd) => out.push(cd),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn condition(&mut self, path: &str, c: &RawCondition, reason_ok: bool) -> Option<Condition> {
        if c.reason.is_some() && !reason_ok {
            self.err(
                &format!("{path}.reason"),
                "a reason belongs only in exempt:",
            );
        }
        let kinds = usize::from(c.column.is_some())
            + usize::from(c.exists.is_some())
            + usize::from(c.not_exists.is_some())
            + usize::from(c.anonymous_patron.is_some())
            + usize::from(c.all.is_some())
            + usize::from(c.any.is_some())
            + usize::from(c.not.is_some())
            + usize::from(c.chain.is_some())
            + usize::from(c.patron_period.is_some());
        if kinds != 1 {
            self.err(
                path,
                "a condition has exactly one of column, exists, not_exists, anonymous_patron, all, any, not, \
                 chain or patron_period",
            );
            return None;
        }
        self.depth += 1;
        let out = self.compound(path, c);
        self.depth -= 1;
        if let Some(out) = out {
            return out;
        }
        if let Some(col) = &c.anonymous_patron {
            return self
                .ident(&format!("{path}.anonymous_patron"), Some(col))
                .map(Condition::AnonymousPatron);
        }
        if let Some(e) = c.exists.as_ref().or(c.not_exists.as_ref()) {
            let negated = c.not_exists.is_some();
            let ep = format!("{path}.{}", if negated { "not_exists" } else { "exists" });
            return self.exists(&ep, e, negated);
        }
        self.column_test(path, c).map(Condition::Column)
    }

    /// `all`, `any`, `not`, `chain` and `patron_period`: `Some(result)` when `c` is one
    /// of them, `None` to go on with the simple kinds.
    fn compound(&mut self, path: &str, c: &RawCondition) -> Option<Option<Condition>> {
        if self.depth > 8 {
            self.err(path, "conditions nest at most 8 deep");
            return Some(None);
        }
        if let Some(list) = &c.all {
            return Some(
                self.conditions(&format!("{path}.all"), list, false)
                    .map(Condition::All),
            );
        }
        if let Some(list) = &c.any {
            if list.is_empty() {
                self.err(&format!("{path}.any"), "needs at least one condition");
                return Some(None);
            }
            return Some(
                self.conditions(&format!("{path}.any"), list, false)
                    .map(Condition::Any),
            );
        }
        if let Some(inner) = &c.not {
            return Some(
                self.condition(&format!("{path}.not"), inner, false)
                    .map(|x| Condition::Not(Box::new(x))),
            );
        }
        if let Some(ch) = &c.chain {
            let cp = format!("{path}.chain");
            let parent = self.ident(&format!("{cp}.parent"), ch.parent.as_deref());
            let filter = self.filter(&cp, ch.filter.as_deref().unwrap_or(&[]));
            if filter.as_ref().is_some_and(Vec::is_empty) {
                self.err(&format!("{cp}.where"), "needs at least one column test");
                return Some(None);
            }
            return Some(match (parent, filter) {
                (Some(parent), Some(filter)) => Some(Condition::Chain { parent, filter }),
                _ => None,
            });
        }
        if let Some(pp) = &c.patron_period {
            let pp_path = format!("{path}.patron_period");
            let table = self.table(&format!("{pp_path}.table"), pp.table.as_deref());
            let column = self.ident(&format!("{pp_path}.column"), pp.column.as_deref());
            let matches = self.ident(&format!("{pp_path}.matches"), pp.matches.as_deref());
            let name_column =
                self.ident(&format!("{pp_path}.name_column"), pp.name_column.as_deref());
            let value_column = self.ident(
                &format!("{pp_path}.value_column"),
                pp.value_column.as_deref(),
            );
            let name = match pp.name.as_deref() {
                Some(n) if !n.is_empty() => Some(n.to_string()),
                _ => {
                    self.err(&format!("{pp_path}.name"), "missing: the setting's name");
                    None
                }
            };
            return Some(
                match (table, column, matches, name_column, name, value_column) {
                    (
                        Some(table),
                        Some(column),
                        Some(matches),
                        Some(name_column),
                        Some(name),
                        Some(value_column),
                    ) => Some(Condition::PatronPeriod(PatronPeriod {
                        table,
                        column,
                        matches,
                        name_column,
                        name,
                        value_column,
                    })),
                    _ => None,
                },
            );
        }
        None
    }

    /// Column tests only (`where:` of exists and chain).
    fn filter(&mut self, ep: &str, list: &[RawCondition]) -> Option<Vec<ColumnTest>> {
        let mut filter = Vec::new();
        let mut ok = true;
        for (i, f) in list.iter().enumerate() {
            let fp = format!("{ep}.where[{i}]");
            if f.column.is_none() || f.reason.is_some() {
                self.err(&fp, "where: holds column tests only");
                ok = false;
                continue;
            }
            match self.column_test(&fp, f) {
                Some(t) => filter.push(t),
                None => ok = false,
            }
        }
        ok.then_some(filter)
    }

    fn exists(&mut self, ep: &str, e: &RawExists, negated: bool) -> Option<Condition> {
        let table = self.table(&format!("{ep}.table"), e.table.as_deref());
        let column = self.ident(&format!("{ep}.column"), e.column.as_deref());
        let matches = match e.matches.as_deref() {
            Some(m) => self.ident(&format!("{ep}.matches"), Some(m)),
            None => Some(Ident(String::new())), // the class key, resolved in `class`
        };
        let filter = self.filter(ep, e.filter.as_deref().unwrap_or(&[]));
        Some(Condition::Exists {
            negated,
            table: table?,
            column: column?,
            matches: matches?,
            filter: filter?,
        })
    }

    fn column_test(&mut self, path: &str, c: &RawCondition) -> Option<ColumnTest> {
        let col = self.ident(&format!("{path}.column"), c.column.as_deref())?;
        let mut tests = Vec::new();
        for (op, v) in [
            (CmpOp::Eq, &c.eq),
            (CmpOp::Ne, &c.ne),
            (CmpOp::Gt, &c.gt),
            (CmpOp::Ge, &c.ge),
            (CmpOp::Lt, &c.lt),
            (CmpOp::Le, &c.le),
            (CmpOp::Like, &c.like),
        ] {
            if let Some(v) = v {
                tests.push(ColumnTest::Compare(col.clone(), op, scalar(v)));
            }
        }
        if c.is_null == Some(true) {
            tests.push(ColumnTest::IsNull(col.clone()));
        }
        if c.not_null == Some(true) {
            tests.push(ColumnTest::NotNull(col.clone()));
        }
        if c.is_null == Some(false) || c.not_null == Some(false) {
            self.err(path, "is_null and not_null take only true");
            return None;
        }
        if tests.len() != 1 {
            self.err(
                path,
                "a column test has exactly one of eq, ne, gt, ge, lt, le, like, is_null, not_null",
            );
            return None;
        }
        tests.pop()
    }
}

/// Whether `c` needs the class's key: an `exists` without `matches`, or a chain.
fn needs_key(c: &Condition) -> bool {
    match c {
        Condition::Exists { matches, .. } => matches.as_str().is_empty(),
        Condition::Chain { .. } => true,
        Condition::All(list) | Condition::Any(list) => list.iter().any(needs_key),
        Condition::Not(x) => needs_key(x),
        _ => false,
    }
}

/// Gives every `exists` without `matches` (anywhere in `c`) the class's key.
fn resolve_matches(c: &mut Condition, key: &Ident) {
    match c {
        Condition::Exists { matches, .. } if matches.as_str().is_empty() => {
            *matches = key.clone();
        }
        Condition::All(list) | Condition::Any(list) => {
            for x in list {
                resolve_matches(x, key);
            }
        }
        Condition::Not(x) => resolve_matches(x, key),
        _ => {}
    }
}

fn scalar(v: &RawScalar) -> Scalar {
    match v {
        RawScalar::Bool(b) => Scalar::Bool(*b),
        RawScalar::Int(i) => Scalar::Int(*i),
        RawScalar::Float(f) => Scalar::Float(*f),
        RawScalar::Text(s) => Scalar::Text(s.clone()),
    }
}

/// Why a table may not be the target of a class, if it may not: Lethe's own tables
/// (a class must never delete the ledger) and the database's system catalogs.
fn forbidden_table(t: &TableName) -> Option<String> {
    let name = t.name.as_str().to_ascii_lowercase();
    let schema = t.schema.as_ref().map(|s| s.as_str().to_ascii_lowercase());
    if name.starts_with("lethe_") || name == "_sqlx_migrations" {
        return Some("Lethe's own tables (the ledger) cannot be a class's target".into());
    }
    let system_schema = matches!(
        schema.as_deref(),
        Some(
            "information_schema"
                | "mysql"
                | "performance_schema"
                | "sys"
                | "pg_catalog"
                | "pg_toast"
                | "lethe"
        )
    );
    if name.starts_with("sqlite_") || name.starts_with("pg_") || system_schema {
        return Some("a system catalog cannot be a class's target".into());
    }
    None
}

/// Shortens a user-given value for an error message (it may be garbage, or huge).
fn truncate(s: &str) -> String {
    let mut out: String = s.chars().take(40).collect();
    if s.chars().count() > 40 {
        out.push('…');
    }
    out
}

/// Overlays the file's class fields onto the profile's. Single values replace the
/// profile's; lists of conditions and dependents (`scope`, `immediate`, `exempt`,
/// `delete_with`) and the `anonymize` map are added to the profile's, never replace
/// them: a file can make a profile class keep more, never silently drop one of its
/// protections (fail safe). Switching an anonymize class to `action: delete` drops its
/// column strategies (so does `action: aggregate`); giving `pseudonymize:` replaces them. Naming a class turns it on
/// unless the file says `enabled: false`.
fn merge_class(base: &mut RawClass, mut over: RawClass) {
    // Naming a profile class in the file turns it on (profiles ship some classes off).
    over.enabled = over.enabled.or(Some(true));
    macro_rules! take {
        ($($f:ident),*) => { $( if over.$f.is_some() { base.$f = over.$f; } )* };
    }
    macro_rules! extend {
        ($($f:ident),*) => { $( if let Some(more) = over.$f {
            base.$f.get_or_insert_with(Vec::new).extend(more);
        } )* };
    }
    if matches!(over.action.as_deref(), Some("delete" | "aggregate")) && over.anonymize.is_none() {
        base.anonymize = None;
    }
    // Switching to pseudonymize replaces the column strategies: the patron column takes
    // a pseudonym instead of being cleared (the other protections stay).
    if over.pseudonymize.is_some() {
        base.anonymize = None;
        base.pseudonymize = over.pseudonymize;
    }
    if let Some(more) = over.anonymize {
        base.anonymize
            .get_or_insert_with(Default::default)
            .extend(more);
    }
    take!(
        description,
        enabled,
        table,
        key,
        age,
        retain,
        action,
        purge,
        patron,
        aggregate
    );
    extend!(
        scope,
        immediate,
        exempt,
        delete_with,
        linked,
        triggers,
        purged
    );
}

/// The default of `safety.batch_target`: 100 ms, short enough that a checkout at the
/// circulation desk waiting on a row lock does not notice (issue 7).
pub const DEFAULT_BATCH_TARGET: Duration = Duration::from_millis(100);

/// `safety.batch_max` when the file sets neither it nor `batch_size`: 10,000 keys, the
/// most one batch may bind as parameters (SQLite allows 32,766 per statement, and a
/// pseudonymizing batch binds three per key).
pub const DEFAULT_BATCH_MAX: u32 = 10_000;

/// Parses `safety.batch_target`: a whole number of milliseconds or seconds, with or
/// without a space (`"100ms"`, `"250 milliseconds"`, `"2 seconds"`, `"1s"`), from
/// 10 ms to 10 s.
///
/// # Errors
/// A message for the config error list: not such a duration, or out of bounds.
pub fn parse_batch_target(s: &str) -> Result<Duration, String> {
    let msg = || {
        "expected a duration such as \"100ms\", \"250 milliseconds\" or \"2 seconds\"".to_string()
    };
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(digits);
    let n: u64 = n.parse().map_err(|_| msg())?;
    let ms = match unit.trim().to_ascii_lowercase().as_str() {
        "ms" | "millisecond" | "milliseconds" => n,
        "s" | "second" | "seconds" => n.saturating_mul(1000),
        _ => return Err(msg()),
    };
    if !(10..=10_000).contains(&ms) {
        return Err("must be between 10 milliseconds and 10 seconds".into());
    }
    Ok(Duration::from_millis(ms))
}

/// Parses a short duration such as "5 minutes", "30 seconds", "1 hour".
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let msg =
        || "expected a duration such as \"30 seconds\", \"5 minutes\" or \"1 hour\"".to_string();
    let mut it = s.split_whitespace();
    let (Some(n), Some(u), None) = (it.next(), it.next(), it.next()) else {
        return Err(msg());
    };
    let n: u64 = n.parse().map_err(|_| msg())?;
    let secs = match u.to_ascii_lowercase().as_str() {
        "second" | "seconds" | "s" => n,
        "minute" | "minutes" | "min" => n.saturating_mul(60),
        "hour" | "hours" | "h" => n.saturating_mul(3600),
        _ => return Err(msg()),
    };
    if secs == 0 || secs > 86_400 {
        return Err("must be between 1 second and 24 hours".into());
    }
    Ok(Duration::from_secs(secs))
}
