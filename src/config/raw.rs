//! The raw `retention.yaml` model: close to what the administrator typed, no I/O, no
//! interpretation. Unknown keys are errors (`deny_unknown_fields`). Everything that
//! needs checking is a string or an option here and becomes a typed value in
//! [`super::validate`].
//!
//! The same types derive [`schemars::JsonSchema`]: `lethe schema` prints the JSON Schema
//! of `retention.yaml` made from them ([`super::schema`]), and each field's doc comment
//! is its `description` there, the text an editor shows for the key. So every field's
//! doc says what the key is, its format and its unit, and its default.

use indexmap::IndexMap;

use schemars::JsonSchema;
use serde::Deserialize;

/// The whole file: Lethe's retention policy for one library (README.md,
/// "Configuration").
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "retention.yaml")]
pub struct RawConfig {
    /// The library's name, shown in reports and the public schedule. Default: "the
    /// library".
    pub library: Option<String>,
    /// The library system's database (required).
    pub database: Option<RawDatabase>,
    /// When runs happen (required): a cron line in the library's time zone.
    pub schedule: Option<RawSchedule>,
    /// Guards: mode, batch size, circuit breaker, clock skew, retention floor.
    pub safety: Option<RawSafety>,
    /// The director's report after each run: addresses, SMTP relay, outbox.
    pub report: Option<RawReport>,
    /// Monitoring: the Prometheus text file written after every run.
    pub metrics: Option<RawMetrics>,
    /// The library system whose classes of records apply: `koha`, `evergreen`, or
    /// `none` (only the classes declared here). Default: none.
    #[schemars(extend("enum" = ["koha", "evergreen", "none", null]))]
    pub profile: Option<String>,
    /// Where the system's anonymous patron is found (the profiles set this; only for
    /// schemas without a profile).
    pub anonymous_patron: Option<RawAnonymousPatron>,
    /// Classes of records, by name: each overrides the profile's class of that name
    /// field by field (lists are added to), or declares a new class (with table, key,
    /// age, retain and action).
    pub classes: Option<IndexMap<String, RawClass>>,
    /// Where the secret key of the `pseudonym` strategy (action pseudonymize) is read
    /// from: an environment variable or a file, never this file.
    pub pseudonyms: Option<RawPseudonyms>,
}

/// `pseudonyms:`: the secret key of the `pseudonym` strategy, from the environment or a
/// file, never from the YAML.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPseudonyms {
    /// Name of an environment variable holding the key. Default: LETHE_PSEUDONYM_KEY.
    pub key_env: Option<String>,
    /// Path of a file whose first line is the key (relative to this file's folder),
    /// e.g. under /etc/lethe/, readable only by Lethe.
    pub key_file: Option<String>,
}

/// `database:`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDatabase {
    /// Connection URL (required): `sqlite://PATH` (relative to this file's folder),
    /// `mysql://USER@HOST[:PORT]/DB` or `postgres://USER@HOST[:PORT]/DB`; `${VAR}` and
    /// `${VAR:-default}` are expanded. Never a password: use password_env or
    /// password_file.
    pub url: Option<String>,
    /// Name of an environment variable holding the database password, e.g.
    /// LETHE_DB_PASSWORD.
    pub password_env: Option<String>,
    /// Path of a file whose first line is the database password (relative to this
    /// file's folder), e.g. /run/credentials/lethe.service/db-password.
    pub password_file: Option<String>,
}

/// `schedule:`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSchedule {
    /// A 5-field cron line: minute hour day-of-month month day-of-week, in the
    /// library's local time, e.g. "30 2 * * *" (02:30 every day). Required.
    pub cron: Option<String>,
    /// The library's IANA time zone, e.g. America/New_York: runs fire and cutoffs are
    /// computed on its local clock. Required.
    pub timezone: Option<String>,
}

/// `safety:`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSafety {
    /// `enforce` (change rows) or `dry-run` (count, record and report, change
    /// nothing). Default: enforce.
    #[schemars(extend("enum" = ["enforce", "dry-run", "dry_run", null]))]
    pub mode: Option<String>,
    /// Size of the first batch of each pass, 1 to 10000: keys of the primary-key range one transaction covers (rows, for a table without a key). From there the size adapts to keep each transaction near batch_target, between batch_min and batch_max. Default: 1000.
    #[schemars(range(min = 1, max = 10000))]
    pub batch_size: Option<i64>,
    /// How long one batch transaction (BEGIN to COMMIT) should take, 10 ms to 10 s, e.g. "100ms" or "2 seconds": a slower batch makes the next smaller at once, a faster one lets it grow gradually. Default: 100ms.
    pub batch_target: Option<String>,
    /// Smallest batch size adaptation may choose, 1 to 10000, at most batch_size. Default: 100, or batch_size when smaller.
    #[schemars(range(min = 1, max = 10000))]
    pub batch_min: Option<i64>,
    /// Largest batch size adaptation may choose, 1 to 10000, at least batch_size. Default: 10000 when batch_size is not set either (batches grow while they stay under batch_target); batch_size when it is set (batches grow past a written size only when this is set higher).
    #[schemars(range(min = 1, max = 10000))]
    pub batch_max: Option<i64>,
    /// Circuit breaker: the largest share of a table one class may change in one run,
    /// greater than 0 and at most 1 (0.5 = half). Default: 0.5.
    #[schemars(extend("exclusiveMinimum" = 0, "maximum" = 1))]
    pub max_fraction: Option<f64>,
    /// Largest allowed difference between this host's clock and the database's before
    /// enforcing is refused: "N seconds|minutes|hours", at most 24 hours. Default: 5
    /// minutes.
    pub max_clock_skew: Option<String>,
    /// Floor: no class may retain less than this calendar period, "N
    /// hours|days|weeks|months|years". Default: 7 days.
    pub min_retention: Option<String>,
    /// Most rounds one class may take to reach its fixed point in a run, 1 to 100.
    /// Default: 10.
    #[schemars(range(min = 1, max = 100))]
    pub max_rounds: Option<i64>,
    /// The longest one statement may go unanswered, e.g. "5 minutes".
    pub statement_timeout: Option<String>,
    /// How many times a step that failed with a transient error is tried again.
    pub retries: Option<i64>,
    /// How long after the database began failing a retry may still start, e.g. "1 minute".
    pub retry_for: Option<String>,
}

/// `report:`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawReport {
    /// Sender mailbox, e.g. "Lethe <lethe@library.example>"; `${VAR}` expanded.
    /// Default: Lethe <lethe@localhost>.
    pub from: Option<String>,
    /// Recipient mailboxes (at least one), e.g. ["Director <director@library.example>"];
    /// `${VAR}` expanded. Default: director@localhost.
    pub to: Option<Vec<String>>,
    /// The SMTP relay. Without it, reports wait in the outbox.
    pub smtp: Option<RawSmtp>,
    /// Folder for reports not sent yet (.eml files, sent at the next run), relative to
    /// this file's folder; `${VAR}` expanded. Default: outbox.
    pub outbox: Option<String>,
    /// When to send: `always`, `changes` (a run changed rows, or failed) or
    /// `failures`. Default: always.
    #[schemars(extend("enum" = ["always", "changes", "failures", null]))]
    pub on: Option<String>,
    /// A missed run is reported (and `lethe status --check` warns) when the last
    /// enforced run is older than this period, "N hours|days|weeks|months|years", e.g.
    /// "48 hours". Default: twice the schedule's interval.
    pub overdue_after: Option<String>,
}

/// `report.smtp:`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSmtp {
    /// Relay URL: `smtps://USER@HOST:465` (implicit TLS),
    /// `smtp://USER@HOST:587?tls=required` (STARTTLS), or plain `smtp://127.0.0.1:25`
    /// to a loopback host only; `${VAR}` expanded. Required.
    pub url: Option<String>,
    /// Name of an environment variable holding the SMTP password.
    pub password_env: Option<String>,
    /// Path of a file whose first line is the SMTP password (relative to this file's
    /// folder).
    pub password_file: Option<String>,
    /// Upper bound on one send, "N seconds|minutes|hours", e.g. "30 seconds".
    /// Default: 30 seconds.
    pub timeout: Option<String>,
}

/// `metrics:`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// Path of the Prometheus text file written after every run (replaced
    /// atomically), for node_exporter's textfile collector: it must end in `.prom`,
    /// e.g. /var/lib/prometheus/node-exporter/lethe.prom; relative to this file's
    /// folder; `${VAR}` expanded. Unset: no file.
    pub textfile: Option<String>,
}

/// `anonymous_patron:`: a preference row naming the patron that receives anonymized rows
/// (Koha: `systempreferences.variable = 'AnonymousPatron'`).
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAnonymousPatron {
    /// The table of preferences, e.g. systempreferences.
    pub table: Option<String>,
    /// Its column holding the preference's name, e.g. variable.
    pub name_column: Option<String>,
    /// Its column holding the value (a patron id), e.g. value.
    pub value_column: Option<String>,
    /// The preference's name (bound), e.g. AnonymousPatron.
    pub name: Option<String>,
    /// The patrons table the value points into, e.g. borrowers.
    pub patron_table: Option<String>,
    /// The patrons table's key column, e.g. borrowernumber.
    pub patron_key: Option<String>,
}

/// One class of records. All fields are optional so that a class in
/// `retention.yaml` can override a profile's class field by field.
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawClass {
    /// Plain-language description of the records, for the public policy (`lethe
    /// policy`). Default: the profile's.
    pub description: Option<String>,
    /// `false` turns a profile's class off. Default: true.
    pub enabled: Option<bool>,
    /// The table: a plain SQL name, or schema.table (not on SQLite). Required for a
    /// new class.
    pub table: Option<String>,
    /// The table's integer primary key column (batches walk it). Required for a new
    /// class.
    pub key: Option<String>,
    /// How a row's age is read: column(s), their type, and what the date means.
    /// Required for a new class.
    pub age: Option<RawAge>,
    /// The retention period: a calendar period "N days|weeks|months|years" (or "N
    /// hours", elapsed time), e.g. "30 days"; at least safety.min_retention.
    pub retain: Option<String>,
    /// What happens to a row past its period: `anonymize`, `pseudonymize` (the patron
    /// id becomes a keyed pseudonym), `aggregate` (counted into monthly statistics, then
    /// deleted), `delete`, or `purge` (a function of the library system, one row per
    /// transaction).
    #[schemars(extend("enum" = ["anonymize", "pseudonymize", "aggregate", "delete", "purge", null]))]
    pub action: Option<String>,
    /// For action anonymize: column name → strategy (`set_null`, `anonymous_patron`,
    /// or `{ set_value: X }`). Added to the profile's.
    pub anonymize: Option<IndexMap<String, RawStrategy>>,
    /// For action pseudonymize: column name → strategy; exactly one column takes
    /// `pseudonym` (the patron id becomes a keyed pseudonym, so one patron's rows still
    /// share a value), the others any anonymize strategy. Replaces the profile's
    /// column strategies.
    pub pseudonymize: Option<IndexMap<String, RawStrategy>>,
    /// Conditions every row of the class meets (all must hold). Added to the
    /// profile's.
    pub scope: Option<Vec<RawCondition>>,
    /// Conditions under which a row is past its period at once, whatever its age (all
    /// must hold). Added to the profile's.
    pub immediate: Option<Vec<RawCondition>>,
    /// Exemptions: a row meeting any of them is kept, counted under its `reason`
    /// (opt_in, legal_hold, obligations, protected). Added to the profile's.
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
    /// Rows of other tables that point at the row and name its patron (Koha's
    /// `checkout_renewals`: `checkout_id` is the checkout, `renewer_id` who renewed it,
    /// the patron when renewed in the OPAC). Before the action, in the same
    /// transaction, that column is set to what the class writes into its own patron
    /// column (anonymize), or NULL (delete), as `Koha::Old::Checkouts->anonymize` does
    /// for renewals.
    pub linked: Option<Vec<RawLinked>>,
    /// For action aggregate: the columns the monthly counts are kept by.
    pub aggregate: Option<RawAggregate>,
    /// For action purge: the database function called once per row, and its
    /// arguments.
    pub purge: Option<RawPurge>,
    /// Names of functions (schema.name) that enabled triggers on the class's table must
    /// call (PostgreSQL); `check` fails when one is missing or disabled.
    pub triggers: Option<Vec<String>>,
    /// Conditions that mark a row the action has already handled (for purge: the row
    /// stays, scrubbed), all must hold. `verify` counts `delete_with` rows still
    /// linked to such rows.
    pub purged: Option<Vec<RawCondition>>,
}

/// `aggregate:` of a class: `{ by: { library: branch, item_type: itemtype, … } }`.
#[derive(Debug, Default, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAggregate {
    /// The row's columns the counts are kept by (each optional; the month always, from
    /// the class's age).
    pub by: Option<RawAggregateBy>,
}

/// `aggregate.by:`.
#[derive(Debug, Default, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAggregateBy {
    /// The column naming the library or branch (Koha `statistics.branch`).
    pub library: Option<String>,
    /// The column naming the item type (Koha `statistics.itemtype`).
    pub item_type: Option<String>,
    /// The column naming the patron category (Koha `statistics.categorycode`).
    pub patron_category: Option<String>,
    /// The column naming the kind of transaction (Koha `statistics.type`: issue, return,
    /// renew…), so that checkouts are counted apart from returns.
    pub kind: Option<String>,
}

/// `unlink:` of a class.
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawUnlink {
    /// The row's columns that may hold the row's own patron (column names).
    pub columns: Option<Vec<String>>,
    /// The column pointing to the previous row of the chain (same table), if rows
    /// form chains.
    pub chain: Option<String>,
    /// The value written instead: a number, string or boolean (e.g. 1, Evergreen's
    /// administrator).
    pub set_value: Option<RawScalar>,
}

/// One entry of `linked:`: `{ table: checkout_renewals, column: checkout_id, patron:
/// renewer_id }`.
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLinked {
    /// The other table (schema.table allowed).
    pub table: Option<String>,
    /// Its column holding this class's key.
    pub column: Option<String>,
    /// Its column that may name the row's patron (it must hold the same ids as the
    /// class's `patron:` column). Only where it holds the row's own patron is it
    /// rewritten: a renewal made by staff keeps its staff id.
    pub patron: Option<String>,
}

/// `purge:` of a class: `{ function: schema.name, args: [key, { value: 1 }] }`.
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPurge {
    /// The function's name, optionally schema-qualified, e.g. actor.usr_delete.
    pub function: Option<String>,
    /// Its arguments in order, each `key` (the row's key) or `{ value: X }` (a fixed
    /// value, bound).
    pub args: Option<Vec<RawArg>>,
}

/// One argument of a purge function.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum RawArg {
    /// `key`: the row's key.
    Name(String),
    /// `{ value: X }`: a fixed value, bound.
    Value(RawArgValue),
}

/// `{ value: X }`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawArgValue {
    /// The fixed value: a number, string or boolean.
    pub value: RawScalar,
}

/// `age:` of a class.
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAge {
    /// The age column names: one, or several, the first non-NULL being the row's age
    /// (`COALESCE`). A row whose age is NULL is never selected by age.
    pub columns: Option<Vec<String>>,
    /// How the columns compare with the cutoff: `datetime` (the library's local wall
    /// time, as Koha), `date`, or `timestamptz` (an instant, as Evergreen).
    #[serde(rename = "type")]
    #[schemars(extend("enum" = ["datetime", "date", "timestamptz", null]))]
    pub kind: Option<String>,
    /// What the date means, in plain words completing "counted from …" ("the date you
    /// returned the item").
    pub meaning: Option<String>,
    /// The age is read from rows of another table linked to this row (the latest of
    /// them, `MAX`), not from this row: e.g. Koha's `patron_consent.refused_on` for a
    /// patron. `columns` are then that table's columns. A row with no such linked row
    /// (or only NULL ages there) has no age and is never selected by age. Only for
    /// actions delete and anonymize on a table with a key.
    pub from: Option<RawAgeFrom>,
}

/// `age.from:`: `{ table: patron_consent, column: borrowernumber, matches:
/// borrowernumber, where: [ { column: type, eq: GDPR_PROCESSING } ] }`.
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAgeFrom {
    /// The other table (schema.table allowed), e.g. patron_consent.
    pub table: Option<String>,
    /// The other table's column that links to this row, e.g. borrowernumber.
    pub column: Option<String>,
    /// This row's column it equals. Default: the class's key.
    pub matches: Option<String>,
    /// Column tests the other table's rows must meet to count (all must hold), e.g. the
    /// consent type.
    #[serde(rename = "where")]
    pub filter: Option<Vec<RawCondition>>,
}

/// A column strategy: a name, or `{ set_value: X }`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum RawStrategy {
    /// `set_null`, `anonymous_patron` or `pseudonym`.
    Name(String),
    /// `{ set_value: X }`.
    Value(RawSetValue),
}

/// `{ set_value: X }`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSetValue {
    /// The fixed value written into the column: a number, string or boolean.
    pub set_value: RawScalar,
}

/// A scalar in a condition or strategy.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
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
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCondition {
    /// Only in `exempt:`, required there: why the row is kept, `opt_in`,
    /// `legal_hold`, `obligations` or `protected`.
    #[schemars(extend("enum" = ["opt_in", "legal_hold", "obligations", "protected", null]))]
    pub reason: Option<String>,
    /// The column a test applies to: of the row (or, inside `where`, of the other
    /// table). Used with one of eq, ne, gt, ge, lt, le, like, is_null, not_null.
    pub column: Option<String>,
    /// The column equals this value (bound; NULL never matches).
    pub eq: Option<RawScalar>,
    /// The column differs from this value (bound; NULL does not match).
    pub ne: Option<RawScalar>,
    /// The column is greater than this value (bound).
    pub gt: Option<RawScalar>,
    /// The column is greater than or equal to this value (bound).
    pub ge: Option<RawScalar>,
    /// The column is less than this value (bound).
    pub lt: Option<RawScalar>,
    /// The column is less than or equal to this value (bound).
    pub le: Option<RawScalar>,
    /// The column matches this SQL LIKE pattern (`%` any text, `_` one character),
    /// bound, e.g. "%-PURGED-%".
    pub like: Option<RawScalar>,
    /// `true`: the column is NULL.
    pub is_null: Option<bool>,
    /// `true`: the column is not NULL.
    pub not_null: Option<bool>,
    /// A row exists in another table whose `column` equals this row's `matches`.
    pub exists: Option<RawExists>,
    /// No row exists in another table whose `column` equals this row's `matches`.
    pub not_exists: Option<RawExists>,
    /// The named column of the row holds the system's anonymous patron (a column
    /// name).
    pub anonymous_patron: Option<String>,
    /// All of these conditions hold (at most 8 deep).
    pub all: Option<Vec<RawCondition>>,
    /// At least one of these conditions holds (at most 8 deep).
    pub any: Option<Vec<RawCondition>>,
    /// This condition does not hold (at most 8 deep).
    pub not: Option<Box<RawCondition>>,
    /// The row or a row before it in its chain (following a parent column, as
    /// Evergreen's renewals follow `parent_circ`) meets every test of `where`
    /// (PostgreSQL only).
    pub chain: Option<RawChain>,
    /// The row is older than the period the patron chose, read from a setting row
    /// (an interval such as "1 year"; unreadable values keep the row).
    pub patron_period: Option<RawPatronPeriod>,
}

/// `chain:`.
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawChain {
    /// The column pointing to the previous row of the chain (same table), e.g.
    /// parent_circ.
    pub parent: Option<String>,
    /// Column tests one row of the chain must meet, all of them (at least one test).
    #[serde(rename = "where")]
    pub filter: Option<Vec<RawCondition>>,
}

/// `patron_period:`: a per-patron setting holding a period (Evergreen
/// `actor.usr_setting` `history.circ.retention_age`, a JSON-encoded interval).
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPatronPeriod {
    /// The settings table (schema.table allowed), e.g. actor.usr_setting.
    pub table: Option<String>,
    /// The settings table's column holding the patron, e.g. usr.
    pub column: Option<String>,
    /// This row's column holding the patron, e.g. usr.
    pub matches: Option<String>,
    /// The settings table's column holding the setting's name, e.g. name.
    pub name_column: Option<String>,
    /// The setting's name (bound), e.g. history.circ.retention_age.
    pub name: Option<String>,
    /// The settings table's column holding the period (an interval such as "1 year",
    /// JSON-encoded or not), e.g. value.
    pub value_column: Option<String>,
}

/// `exists:` / `not_exists:`.
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawExists {
    /// The other table (schema.table allowed).
    pub table: Option<String>,
    /// The other table's column that links to this row.
    pub column: Option<String>,
    /// This row's column it equals. Default: the class's key.
    pub matches: Option<String>,
    /// Further column tests on the other table's row (all must hold).
    #[serde(rename = "where")]
    pub filter: Option<Vec<RawCondition>>,
}

/// `delete_with:` entry.
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDependent {
    /// The other table (schema.table allowed).
    pub table: Option<String>,
    /// The other table's column holding this class's key.
    pub column: Option<String>,
}

/// An embedded profile: anonymous-patron source and classes.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawProfile {
    /// What the profile is for.
    pub description: Option<String>,
    /// Where the system's anonymous patron is found.
    pub anonymous_patron: Option<RawAnonymousPatron>,
    /// The classes.
    pub classes: IndexMap<String, RawClass>,
    /// Other tables of the system that hold personal data or usage history, and how
    /// they are covered when no class of the profile is: read by `lethe inventory`
    /// only (never by the engine). Profile-only: `retention.yaml` has no such key.
    #[serde(default)]
    pub inventory: Vec<RawInventoryTable>,
}

/// One entry of a profile's `inventory:` section: a table that holds personal data or
/// usage history, as the system's own schema documents it.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawInventoryTable {
    /// The table: a plain SQL name, or schema.table.
    pub table: String,
    /// Its columns that hold personal data or name a patron.
    pub columns: Vec<String>,
    /// The date column(s) of the row's age (several: the first non-NULL), if it has
    /// one; `lethe inventory` reports the oldest value and whether an index serves it.
    #[serde(default)]
    pub age: Vec<String>,
    /// How the rows are removed without a class of their own, in plain words (e.g.
    /// "deleted with the patron (ON DELETE CASCADE)"); absent: not covered.
    pub covered: Option<String>,
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
