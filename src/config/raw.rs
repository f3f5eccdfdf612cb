//! The raw `retention.yaml` model: close to what the administrator typed, no I/O, no
//! interpretation. Unknown keys are errors (`deny_unknown_fields`). Everything that
//! needs checking is a string or an option here and becomes a typed value in
//! [`super::validate`].

use indexmap::IndexMap;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// The library's name, for reports.
    pub library: Option<String>,
    /// Connection to the library system's database.
    pub database: Option<RawDatabase>,
    /// When runs happen.
    pub schedule: Option<RawSchedule>,
    /// Guards.
    pub safety: Option<RawSafety>,
    /// The emailed report.
    pub report: Option<RawReport>,
    /// `koha`, `evergreen` or `none`.
    pub profile: Option<String>,
    /// Where the system's anonymous patron is found (profiles set this).
    pub anonymous_patron: Option<RawAnonymousPatron>,
    /// Classes of records, by name: added to or overriding the profile's.
    pub classes: Option<IndexMap<String, RawClass>>,
}

/// `database:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabase {
    /// `sqlite://path`, `mysql://user@host/db`, `postgres://user@host/db`; `${VAR}` allowed.
    pub url: Option<String>,
    /// Name of an environment variable holding the password.
    pub password_env: Option<String>,
    /// Path of a file holding the password (first line).
    pub password_file: Option<String>,
}

/// `schedule:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSchedule {
    /// A 5-field cron line (minute hour day-of-month month day-of-week).
    pub cron: Option<String>,
    /// IANA time zone name of the library.
    pub timezone: Option<String>,
}

/// `safety:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSafety {
    /// `enforce` or `dry-run`.
    pub mode: Option<String>,
    /// Rows per batch transaction.
    pub batch_size: Option<i64>,
    /// Largest share of a table one class may change in one run, in (0, 1].
    pub max_fraction: Option<f64>,
    /// Largest allowed difference between this host's clock and the database's.
    pub max_clock_skew: Option<String>,
    /// No retention period shorter than this is accepted.
    pub min_retention: Option<String>,
    /// Most rounds one class may take to reach its fixed point.
    pub max_rounds: Option<i64>,
    /// The longest one statement may go unanswered, e.g. "5 minutes".
    pub statement_timeout: Option<String>,
    /// How many times a step that failed with a transient error is tried again.
    pub retries: Option<i64>,
    /// How long after the database began failing a retry may still start, e.g. "1 minute".
    pub retry_for: Option<String>,
}

/// `report:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReport {
    /// Sender address.
    pub from: Option<String>,
    /// Recipients.
    pub to: Option<Vec<String>>,
    /// The relay.
    pub smtp: Option<RawSmtp>,
    /// Folder for unsent messages.
    pub outbox: Option<String>,
    /// When to send: `always`, `changes` or `failures`.
    pub on: Option<String>,
    /// A missed run is reported when the last enforced run is older than this, e.g.
    /// "48 hours" (default: twice the schedule's interval).
    pub overdue_after: Option<String>,
}

/// `report.smtp:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSmtp {
    /// `smtps://user@host:465`, `smtp://user@host:587?tls=required`, `smtp://127.0.0.1:25`.
    pub url: Option<String>,
    /// Environment variable holding the password.
    pub password_env: Option<String>,
    /// File holding the password.
    pub password_file: Option<String>,
    /// Upper bound on one send, e.g. "30 seconds".
    pub timeout: Option<String>,
}

/// `anonymous_patron:`: a preference row naming the patron that receives anonymized rows
/// (Koha: `systempreferences.variable = 'AnonymousPatron'`).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAnonymousPatron {
    /// Table of preferences.
    pub table: Option<String>,
    /// Column holding the preference's name.
    pub name_column: Option<String>,
    /// Column holding its value.
    pub value_column: Option<String>,
    /// The preference's name.
    pub name: Option<String>,
    /// The patrons table the value points into.
    pub patron_table: Option<String>,
    /// The patrons table's key.
    pub patron_key: Option<String>,
}

/// One class of records. All fields are optional so that a class in
/// `retention.yaml` can override a profile's class field by field.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClass {
    /// Plain-language description for the public policy.
    pub description: Option<String>,
    /// `false` turns a profile's class off.
    pub enabled: Option<bool>,
    /// The table.
    pub table: Option<String>,
    /// Its integer primary key.
    pub key: Option<String>,
    /// The age column(s).
    pub age: Option<RawAge>,
    /// The retention period, e.g. "30 days".
    pub retain: Option<String>,
    /// `delete` or `anonymize`.
    pub action: Option<String>,
    /// For anonymize: column → strategy.
    pub anonymize: Option<IndexMap<String, RawStrategy>>,
    /// Conditions every row of the class meets (all must hold).
    pub scope: Option<Vec<RawCondition>>,
    /// Conditions under which a row is past its period at once, whatever its age (all
    /// must hold).
    pub immediate: Option<Vec<RawCondition>>,
    /// Exemptions, each with a reason.
    pub exempt: Option<Vec<RawCondition>>,
    /// For delete: rows of other tables deleted in the same transaction (tables with
    /// no foreign key to this one). For purge: rows of other tables deleted after the
    /// purge function, in the same transaction (traces it leaves, such as audit rows).
    pub delete_with: Option<Vec<RawDependent>>,
    /// The row's column holding the patron (the library system's patron id, or the key
    /// for a table of patrons): an open Lethe legal hold on that patron keeps the row.
    pub patron: Option<String>,
    /// Before the action, in the same transaction: where these columns of the row (and
    /// of the rows before it in its chain) hold the row's own patron, they are set to a
    /// fixed value (Evergreen records an OPAC renewal's patron as its `circ_staff`, and
    /// aging copies it into `action.aged_circulation`).
    pub unlink: Option<RawUnlink>,
    /// For action purge: the database function called once per row.
    pub purge: Option<RawPurge>,
    /// Functions that enabled triggers on the class's table must call (PostgreSQL);
    /// `check` fails when one is missing or disabled.
    pub triggers: Option<Vec<String>>,
    /// Conditions that mark a row the action has already handled (for purge: the row
    /// stays, scrubbed). `verify` counts `delete_with` rows still linked to such rows.
    pub purged: Option<Vec<RawCondition>>,
}

/// `unlink:` of a class.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUnlink {
    /// The columns that may hold the patron.
    pub columns: Option<Vec<String>>,
    /// The column pointing to the previous row of the chain, if rows form chains.
    pub chain: Option<String>,
    /// The value written instead (e.g. Evergreen's administrator, user 1).
    pub set_value: Option<RawScalar>,
}

/// `purge:` of a class: `{ function: schema.name, args: [key, { value: 1 }] }`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPurge {
    /// The function, optionally schema-qualified (`actor.usr_delete`).
    pub function: Option<String>,
    /// Its arguments in order: `key` (the row's key) or `{ value: X }`.
    pub args: Option<Vec<RawArg>>,
}

/// One argument of a purge function.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawArg {
    /// `key`: the row's key.
    Name(String),
    /// `{ value: X }`: a fixed value, bound.
    Value(RawArgValue),
}

/// `{ value: X }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawArgValue {
    /// The value.
    pub value: RawScalar,
}

/// `age:` of a class.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAge {
    /// One column, or several: the first non-NULL is the row's age (`COALESCE`).
    pub columns: Option<Vec<String>>,
    /// `datetime` (local wall time), `date`, or `timestamptz` (an instant).
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// What the date means, in plain words completing "counted from …" ("the date you
    /// returned the item").
    pub meaning: Option<String>,
}

/// A column strategy: a name, or `{ set_value: X }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawStrategy {
    /// `set_null` or `anonymous_patron`.
    Name(String),
    /// `{ set_value: X }`.
    Value(RawSetValue),
}

/// `{ set_value: X }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSetValue {
    /// The fixed value.
    pub set_value: RawScalar,
}

/// A scalar in a condition or strategy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum RawScalar {
    /// `true` or `false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A number with a fraction.
    Float(f64),
    /// A string.
    Text(String),
}

/// A condition: exactly one of a column test, `exists`, `not_exists` or
/// `anonymous_patron`; `reason` only in `exempt:`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCondition {
    /// In `exempt:`: `opt_in`, `legal_hold`, `obligations` or `protected`.
    pub reason: Option<String>,
    /// A column of the row (or, inside `exists.where`, of the other table).
    pub column: Option<String>,
    /// `=`.
    pub eq: Option<RawScalar>,
    /// `<>` (NULL does not match).
    pub ne: Option<RawScalar>,
    /// `>`.
    pub gt: Option<RawScalar>,
    /// `>=`.
    pub ge: Option<RawScalar>,
    /// `<`.
    pub lt: Option<RawScalar>,
    /// `<=`.
    pub le: Option<RawScalar>,
    /// `LIKE` (a pattern with `%` and `_`).
    pub like: Option<RawScalar>,
    /// `IS NULL` when true.
    pub is_null: Option<bool>,
    /// `IS NOT NULL` when true.
    pub not_null: Option<bool>,
    /// A row exists in another table linked to this one.
    pub exists: Option<RawExists>,
    /// No such row exists.
    pub not_exists: Option<RawExists>,
    /// The named column of the row is the anonymous patron.
    pub anonymous_patron: Option<String>,
    /// All of these hold.
    pub all: Option<Vec<RawCondition>>,
    /// At least one of these holds.
    pub any: Option<Vec<RawCondition>>,
    /// This does not hold.
    pub not: Option<Box<RawCondition>>,
    /// The row or a row before it in its chain (following a parent column, as
    /// Evergreen's renewals follow `parent_circ`) meets every test of `where`.
    pub chain: Option<RawChain>,
    /// The row is older than the period the patron chose, read from a setting row.
    pub patron_period: Option<RawPatronPeriod>,
}

/// `chain:`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawChain {
    /// The column pointing to the previous row of the chain (same table).
    pub parent: Option<String>,
    /// Column tests one row of the chain must meet (all of them).
    #[serde(rename = "where")]
    pub filter: Option<Vec<RawCondition>>,
}

/// `patron_period:`: a per-patron setting holding a period (Evergreen
/// `actor.usr_setting` `history.circ.retention_age`, a JSON-encoded interval).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPatronPeriod {
    /// The settings table.
    pub table: Option<String>,
    /// Its column holding the patron.
    pub column: Option<String>,
    /// This row's column holding the patron.
    pub matches: Option<String>,
    /// The settings table's name column.
    pub name_column: Option<String>,
    /// The setting's name.
    pub name: Option<String>,
    /// The settings table's value column.
    pub value_column: Option<String>,
}

/// `exists:` / `not_exists:`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExists {
    /// The other table.
    pub table: Option<String>,
    /// Its column that links to this row.
    pub column: Option<String>,
    /// This row's column it equals (default: the class's key).
    pub matches: Option<String>,
    /// Further column tests on the other table (all must hold).
    #[serde(rename = "where")]
    pub filter: Option<Vec<RawCondition>>,
}

/// `delete_with:` entry.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDependent {
    /// The other table.
    pub table: Option<String>,
    /// Its column holding this class's key.
    pub column: Option<String>,
}

/// An embedded profile: anonymous-patron source and classes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProfile {
    /// What the profile is for.
    pub description: Option<String>,
    /// Where the system's anonymous patron is found.
    pub anonymous_patron: Option<RawAnonymousPatron>,
    /// The classes.
    pub classes: IndexMap<String, RawClass>,
}

/// One top-level section alone: the other keys are ignored, so that reading it stops
/// only at an error inside it.
macro_rules! only {
    ($name:ident, $field:ident, $ty:ty) => {
        #[derive(Deserialize)]
        struct $name {
            #[allow(dead_code)]
            $field: Option<$ty>,
        }
    };
}
only!(OnlyLibrary, library, String);
only!(OnlyDatabase, database, RawDatabase);
only!(OnlySchedule, schedule, RawSchedule);
only!(OnlySafety, safety, RawSafety);
only!(OnlyReport, report, RawReport);
only!(OnlyProfile, profile, String);
only!(OnlyAnonymousPatron, anonymous_patron, RawAnonymousPatron);
only!(OnlyClasses, classes, IndexMap<String, RawClass>);

/// The top-level keys only, for unknown ones.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct TopKeys {
    library: Option<serde::de::IgnoredAny>,
    database: Option<serde::de::IgnoredAny>,
    schedule: Option<serde::de::IgnoredAny>,
    safety: Option<serde::de::IgnoredAny>,
    report: Option<serde::de::IgnoredAny>,
    profile: Option<serde::de::IgnoredAny>,
    anonymous_patron: Option<serde::de::IgnoredAny>,
    classes: Option<serde::de::IgnoredAny>,
}

/// serde stops at the first structural error (a wrong type, an unknown key) of the
/// whole file. After one, each top-level section is read again on its own, so that the
/// first error of every section is reported, not only of the first section that has
/// one. Only errors inside a section (their message starts with its path) and unknown
/// top-level keys are returned; a file that is not a mapping at all gives nothing
/// more than its first error. Cheap: the file is a few kilobytes at most, and this
/// runs only when it is already known to be wrong.
pub fn section_errors(text: &str) -> Vec<serde_yaml::Error> {
    fn inside<T: for<'de> Deserialize<'de>>(
        text: &str,
        field: &str,
        out: &mut Vec<serde_yaml::Error>,
    ) {
        if let Err(e) = serde_yaml::from_str::<T>(text) {
            let m = e.to_string();
            let within = m.strip_prefix(field).is_some_and(|rest| {
                rest.starts_with('.') || rest.starts_with(':') || rest.starts_with('[')
            });
            if within {
                out.push(e);
            }
        }
    }
    let mut out = Vec::new();
    if let Err(e) = serde_yaml::from_str::<TopKeys>(text) {
        if e.to_string().starts_with("unknown field") {
            out.push(e);
        }
    }
    inside::<OnlyLibrary>(text, "library", &mut out);
    inside::<OnlyDatabase>(text, "database", &mut out);
    inside::<OnlySchedule>(text, "schedule", &mut out);
    inside::<OnlySafety>(text, "safety", &mut out);
    inside::<OnlyReport>(text, "report", &mut out);
    inside::<OnlyProfile>(text, "profile", &mut out);
    inside::<OnlyAnonymousPatron>(text, "anonymous_patron", &mut out);
    inside::<OnlyClasses>(text, "classes", &mut out);
    out
}
