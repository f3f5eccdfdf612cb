//! The enforcement engine: plan (count) and enforce (change in batches), class by
//! class, with the guards that make it fail safe.
//!
//! One class in a run: compute the cutoff; count eligible and kept rows in one scan;
//! trip the circuit breaker if the class would change more than `safety.max_fraction`
//! of its table (unless the administrator passed `--allow-large`); then walk the
//! primary key in ranges (the first `safety.batch_size` keys wide, then adapted to keep
//! each transaction near `safety.batch_target`, [`BatchSizer`]): each range selects its
//! eligible keys (locked), changes them, and adds the count to the ledger in one
//! transaction. After a
//! pass the class is counted again; when its own changes made more rows eligible (a
//! deleted child leaves its guarantor unprotected) it goes round again, up to
//! `safety.max_rounds`, so a run ends at a fixed point: right after it, `plan` shows 0
//! eligible and a second run changes nothing.

mod adaptive;

use std::collections::HashMap;
use std::time::{Duration, Instant};

pub use adaptive::BatchSizer;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::config::{
    AgeType, Backend, ClassDef, CmpOp, ColumnTest, Condition, Config, Scalar, Strategy,
};
use crate::db::sql::{self, BatchRows, Bindings};
use crate::db::{Db, DbError};
use crate::ledger;
use crate::policy;
use crate::progress::{ClassProgress, Progress};
use crate::summary::{Action, ClassStatus, ClassSummary, Kept, Mode, RunStatus, RunSummary};

/// Why the engine stopped before or outside any class.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The config does not fit this database (a missing table or column, an unusable
    /// anonymous patron). Nothing was touched; exit 2.
    #[error("{0}")]
    Mismatch(String),
    /// The database failed at run time; exit 1.
    #[error("{0}")]
    Database(String),
    /// This host's clock and the database's disagree by more than
    /// `safety.max_clock_skew`; nothing was touched; exit 1.
    #[error("{0}")]
    Clock(String),
}

impl From<DbError> for EngineError {
    fn from(e: DbError) -> Self {
        if e.is_config_mismatch() {
            EngineError::Mismatch(e.to_string())
        } else {
            EngineError::Database(safe_db_message(&e))
        }
    }
}

/// A database error as text fit for logs, reports and the ledger: values a server
/// quotes in its messages (MySQL's "Duplicate entry 'x'") are blanked, since they may
/// be patron data.
pub fn safe_db_message(e: &DbError) -> String {
    let text = e.to_string();
    let mut out = String::with_capacity(text.len());
    let mut in_quote = false;
    for ch in text.chars() {
        if ch == '\'' {
            if in_quote {
                out.push_str("…'");
            } else {
                out.push('\'');
            }
            in_quote = !in_quote;
        } else if !in_quote {
            out.push(ch);
        }
    }
    out
}

/// The pause before retry `attempt` (1-based): 0.5 s, 1 s, 2 s, 4 s, 8 s, 16 s, then
/// 32 s for every further one. While the server is down each try also waits up to the
/// pool's 10 s acquire timeout for a connection ([`Db::connect`]), or up to
/// `safety.statement_timeout` for an answer, so with the defaults (`safety.retries: 5`,
/// `safety.retry_for: 1 minute`) a step gives up about 65 s after the database went
/// away (`tests/it/outage.rs`): enough for a server restart or a failover. A longer
/// outage fails the run, and the next scheduled run finishes the work.
pub fn retry_backoff(attempt: u32) -> std::time::Duration {
    std::time::Duration::from_millis(500u64 << attempt.saturating_sub(1).min(6))
}

/// The retry budget of one run (`safety.retries`, `safety.retry_for`): a step that
/// failed with a transient error ([`crate::db::is_transient`]) is tried again after a
/// [`retry_backoff`] pause, at most `retries` times, and no retry starts later than
/// `retry_for` after the database began failing. That moment is shared by every step of
/// the run and cleared by any step that succeeds, so when the database stays away the
/// steps after the one that gave up (reading a class's count back, closing the run)
/// fail at their first try instead of starting the budget over.
#[derive(Debug)]
pub struct Retry {
    retries: u32,
    retry_for: std::time::Duration,
    failing_since: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Retry {
    /// The budget of `safety`.
    pub fn new(safety: &crate::config::Safety) -> Retry {
        Retry {
            retries: safety.retries,
            retry_for: safety.retry_for,
            failing_since: std::sync::Mutex::new(None),
        }
    }

    fn since(&self) -> std::sync::MutexGuard<'_, Option<std::time::Instant>> {
        // A panic elsewhere cannot leave an Option<Instant> half-written.
        self.failing_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A step succeeded: the database answers again.
    pub fn succeeded(&self) {
        *self.since() = None;
    }

    /// After a transient error in try `attempt` (1-based count of retries so far
    /// plus one), the pause before the next try, or `None` to give up.
    pub fn next_pause(&self, attempt: u32) -> Option<std::time::Duration> {
        let since = *self.since().get_or_insert_with(std::time::Instant::now);
        if attempt > self.retries {
            return None;
        }
        let pause = retry_backoff(attempt);
        (since.elapsed() + pause <= self.retry_for).then_some(pause)
    }
}

/// Runs `$call` (an async expression giving `Result<T, DbError>`) again after a
/// transient error, as the run's [`Retry`] budget allows; a cancellation during a pause
/// ends the pass as interrupted. Evaluates to `T`, or returns the error from the
/// enclosing function.
macro_rules! retrying {
    ($run_id:expr, $class:expr, $cancel:expr, $retry:expr, $call:expr) => {{
        let mut attempt = 0u32;
        loop {
            match $call.await {
                Ok(v) => {
                    $retry.succeeded();
                    break v;
                }
                Err(e) if crate::db::is_transient(&e) => {
                    attempt += 1;
                    let Some(pause) = $retry.next_pause(attempt) else {
                        return Err(e);
                    };
                    tracing::warn!(
                        run_id = $run_id,
                        class = %$class.name,
                        attempt,
                        pause_ms = pause.as_millis() as u64,
                        error = %safe_db_message(&e),
                        "transient database error: trying the batch again"
                    );
                    tokio::select! {
                        _ = $cancel.cancelled() => return Ok(true),
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }};
}

/// [`retrying!`] for the steps of a run around its batches (counting a class, reading
/// its key range, writing its ledger row, closing the run): the same budget, so a blip
/// between two batches is ridden out like one inside a batch. A cancellation during a
/// pause gives up with the error. Each step is safe to repeat: reads, and ledger
/// updates that set values; opening a class inserts its row, and a retry after an
/// insert that committed without its answer fails on the duplicate key (not
/// transient): the run fails, the ledger stays right.
async fn retrying_step<T, F, Fut>(
    run_id: i64,
    class: &str,
    step: &'static str,
    (cancel, retry): (&CancellationToken, &Retry),
    mut call: F,
) -> Result<T, DbError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, DbError>>,
{
    let mut attempt = 0u32;
    loop {
        match call().await {
            Ok(v) => {
                retry.succeeded();
                return Ok(v);
            }
            Err(e) if crate::db::is_transient(&e) => {
                attempt += 1;
                let Some(pause) = retry.next_pause(attempt) else {
                    return Err(e);
                };
                tracing::warn!(
                    run_id,
                    class,
                    step,
                    attempt,
                    pause_ms = pause.as_millis() as u64,
                    error = %safe_db_message(&e),
                    "transient database error: trying the step again"
                );
                tokio::select! {
                    _ = cancel.cancelled() => return Err(e),
                    _ = tokio::time::sleep(pause) => {}
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// What a class's SQL needs from the database, read once per run.
#[derive(Debug, Clone, Default)]
pub struct Prepared {
    /// The anonymous patron's id (Koha's `AnonymousPatron`), if set.
    pub anonymous_patron: Option<i64>,
    /// The distinct values patrons stored for each `patron_period` source
    /// ([`crate::config::PatronPeriod::key`]).
    pub patron_periods: HashMap<String, Vec<String>>,
    /// Per purge class (by name): the argument types of its function, for casts.
    pub purge_arg_types: HashMap<String, Vec<String>>,
    /// Whether Lethe's legal-hold table exists.
    pub legal_holds: bool,
    /// Per class with `linked:` rows (by name): whether an index serves each entry's
    /// `column` (see [`sql::LinkedVia`]).
    pub linked_indexed: HashMap<String, Vec<bool>>,
}

/// Most distinct values read for one patron-period setting. The OPAC offers a short
/// list; rows of patrons with values beyond this many are kept (fail safe).
const MAX_PATRON_PERIOD_VALUES: u64 = 1000;

/// Every `patron_period` condition of the config, nested ones included.
fn patron_period_sources(cfg: &Config) -> Vec<crate::config::PatronPeriod> {
    fn walk(c: &Condition, out: &mut Vec<crate::config::PatronPeriod>) {
        match c {
            Condition::PatronPeriod(pp) if !out.contains(pp) => out.push(pp.clone()),
            Condition::All(l) | Condition::Any(l) => l.iter().for_each(|x| walk(x, out)),
            Condition::Not(x) => walk(x, out),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for class in &cfg.classes {
        for c in class
            .scope
            .iter()
            .chain(class.immediate.iter())
            .chain(class.exempt.iter().map(|(_, x)| x))
        {
            walk(c, &mut out);
        }
    }
    out
}

/// Checks the schema against the config and reads the anonymous patron. Run before
/// anything is written.
///
/// # Errors
/// [`EngineError::Mismatch`] for a missing table or column or an unusable anonymous
/// patron; [`EngineError::Database`].
pub async fn prepare(cfg: &Config, db: &Db) -> Result<Prepared, EngineError> {
    db.check_schema(cfg).await?;
    let anonymous_patron = match &cfg.anonymous_patron {
        Some(src) => db.anonymous_patron(src).await?,
        None => None,
    };
    let mut patron_periods = HashMap::new();
    for pp in patron_period_sources(cfg) {
        let values = db
            .fetch_strings(&sql::patron_period_values_query(
                &pp,
                MAX_PATRON_PERIOD_VALUES + 1,
            ))
            .await?;
        if values.len() as u64 > MAX_PATRON_PERIOD_VALUES {
            tracing::warn!(
                setting = %pp.name,
                "more than {MAX_PATRON_PERIOD_VALUES} distinct values: rows of patrons with the others are kept"
            );
        }
        let unreadable = values
            .iter()
            .filter(|v| policy::parse_patron_interval(v).is_none())
            .count();
        if unreadable > 0 {
            tracing::warn!(
                setting = %pp.name,
                unreadable,
                "values not readable as a period: rows of those patrons are kept"
            );
        }
        patron_periods.insert(pp.key(), values);
    }
    let mut purge_arg_types = HashMap::new();
    for class in &cfg.classes {
        if let Some(pc) = &class.purge {
            let types = db.purge_arg_types(pc).await?.unwrap_or_default();
            purge_arg_types.insert(class.name.clone(), types);
        }
    }
    let holds_table =
        crate::config::TableName::new("lethe_legal_holds").map_err(DbError::Schema)?;
    let legal_holds = !db.columns(&holds_table).await?.is_empty();
    let mut linked_indexed = HashMap::new();
    for class in cfg.classes.iter().filter(|c| !c.linked.is_empty()) {
        let mut served = Vec::new();
        for l in &class.linked {
            served.push(
                db.index_serves(&l.table, std::slice::from_ref(&l.column))
                    .await?,
            );
        }
        linked_indexed.insert(class.name.clone(), served);
    }
    Ok(Prepared {
        anonymous_patron,
        patron_periods,
        purge_arg_types,
        legal_holds,
        linked_indexed,
    })
}

/// Refuses to enforce when this host's clock and the database's differ by more than
/// `safety.max_clock_skew`: a host clock set years ahead would otherwise make every row
/// look past its period.
///
/// # Errors
/// [`EngineError::Clock`] with both times and the skew; [`EngineError::Database`].
pub async fn check_clock(
    cfg: &Config,
    db: &Db,
    host_now: DateTime<Utc>,
) -> Result<(), EngineError> {
    let Some(server) = db.server_now().await? else {
        return Ok(());
    };
    let skew = (host_now - server).num_milliseconds().unsigned_abs();
    let max = cfg.safety.max_clock_skew.as_millis() as u64;
    if skew > max {
        return Err(EngineError::Clock(format!(
            "this host's clock ({}) and the database's ({}) differ by {} s, more than safety.max_clock_skew ({} s): \
             refusing to enforce; fix the clock (NTP) and run again",
            host_now.to_rfc3339(),
            server.to_rfc3339(),
            skew / 1000,
            max / 1000
        )));
    }
    Ok(())
}

/// Counts of one class.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    eligible: u64,
    kept: Kept,
}

/// The class's eligible rows and its kept rows by reason: on the servers
/// [`eligible_count`], then one [`sql::kept_count_query`] per reason the class has
/// exemptions of; on SQLite [`count_in_one_scan`].
async fn count(db: &Db, class: &ClassDef, b: &Bindings) -> Result<Counts, DbError> {
    if db.backend() == Backend::Sqlite {
        return count_in_one_scan(db, class, b).await;
    }
    let mut c = Counts {
        eligible: eligible_count(db, class, b).await?,
        kept: Kept::default(),
    };
    for reason in crate::config::Reason::ALL {
        let Some(q) = sql::kept_count_query(class, b, reason) else {
            continue;
        };
        let row = db.read_row_i64(&q).await?;
        *kept_under(&mut c.kept, reason) =
            row.first().copied().flatten().unwrap_or(0).max(0) as u64;
    }
    Ok(c)
}

/// The count of `kept` under `reason`.
fn kept_under(kept: &mut Kept, reason: crate::config::Reason) -> &mut u64 {
    use crate::config::Reason;
    match reason {
        Reason::OptIn => &mut kept.opt_in,
        Reason::LegalHold => &mut kept.legal_hold,
        Reason::Obligations => &mut kept.obligations,
        Reason::Protected => &mut kept.protected,
    }
}

/// [`sql::count_query`]: eligible and kept rows by reason in one scan (SQLite).
async fn count_in_one_scan(db: &Db, class: &ClassDef, b: &Bindings) -> Result<Counts, DbError> {
    let rows = db.read_cells(&sql::count_query(class, b)).await?;
    let mut c = Counts::default();
    for row in rows {
        let (Some(reason), Some(n)) = (row.first(), row.get(1)) else {
            continue;
        };
        let n = n.int().max(0) as u64;
        // 0: eligible; i + 1: kept under Reason::ALL[i] (sql::REASON_COLUMN).
        match reason.int() {
            0 => c.eligible += n,
            code => {
                let r = usize::try_from(code - 1)
                    .ok()
                    .and_then(|i| crate::config::Reason::ALL.get(i).copied())
                    .unwrap_or(crate::config::Reason::Protected);
                *kept_under(&mut c.kept, r) += n;
            }
        }
    }
    Ok(c)
}

/// The rows of the class still eligible ([`sql::eligible_count_query`]).
async fn eligible_count(db: &Db, class: &ClassDef, b: &Bindings) -> Result<u64, DbError> {
    let row = db
        .read_row_i64(&sql::eligible_count_query(class, b))
        .await?;
    Ok(row.first().copied().flatten().unwrap_or(0).max(0) as u64)
}

fn bindings(
    cfg: &Config,
    db: &Db,
    class: &ClassDef,
    at: DateTime<Utc>,
    p: &Prepared,
) -> Option<Bindings> {
    let mut patron_cutoffs = HashMap::new();
    for (key, values) in &p.patron_periods {
        let resolved: Vec<(String, policy::Cutoff)> = values
            .iter()
            .take(MAX_PATRON_PERIOD_VALUES as usize)
            .filter_map(|v| {
                let terms = policy::parse_patron_interval(v)?;
                Some((
                    v.clone(),
                    policy::cutoff_of_terms(at, cfg.schedule.timezone, &terms)?,
                ))
            })
            .collect();
        patron_cutoffs.insert(key.clone(), resolved);
    }
    Some(Bindings {
        cutoff: policy::cutoff(at, cfg.schedule.timezone, class.retain)?,
        anonymous_patron: p.anonymous_patron,
        backend: db.backend(),
        patron_cutoffs: std::sync::Arc::new(patron_cutoffs),
        purge_arg_types: std::sync::Arc::new(
            p.purge_arg_types
                .get(&class.name)
                .cloned()
                .unwrap_or_default(),
        ),
        legal_holds: p.legal_holds,
        timezone: cfg.schedule.timezone,
        pseudonym_key: cfg.pseudonym_key.clone().map(std::sync::Arc::new),
        linked_indexed: std::sync::Arc::new(
            p.linked_indexed
                .get(&class.name)
                .cloned()
                .unwrap_or_default(),
        ),
        key_range: None,
    })
}

/// Each id with its pseudonym ([`crate::pseudonym`]); empty without a key (then nothing
/// matches the `CASE` and the rows keep their ids: the config refuses a pseudonymizing
/// class without a key, so this is only a second line of defence).
fn pseudonyms_of(
    key: Option<&std::sync::Arc<secrecy::SecretString>>,
    ids: &[i64],
) -> Vec<(i64, i64)> {
    let Some(key) = key else {
        return Vec::new();
    };
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    ids.into_iter()
        .filter(|id| *id >= 0)
        .map(|id| (id, crate::pseudonym::pseudonym(key, id)))
        .collect()
}

/// Per class, the rows in its scope whose age column is NULL (all of them NULL, for a
/// class with several): no period ever reaches them (see [`sql::undated_query`]).
/// Counts only; changes nothing. A class whose age comes from another table
/// (`age.from`, such as Koha's refusals of processing) is left out: a row with no
/// linked row is outside that class (a patron who never refused), not an undated one,
/// and counting it would report nearly every patron.
///
/// # Errors
/// [`EngineError::Database`].
pub async fn undated(
    cfg: &Config,
    db: &Db,
    p: &Prepared,
    at: DateTime<Utc>,
) -> Result<Vec<(String, u64)>, EngineError> {
    let mut out = Vec::new();
    for class in cfg.classes.iter().filter(|c| !sql::age_from_other_table(c)) {
        let Some(b) = bindings(cfg, db, class, at, p) else {
            continue;
        };
        let row = db.read_row_i64(&sql::undated_query(class, &b)).await?;
        let n = row.first().copied().flatten().unwrap_or(0).max(0) as u64;
        out.push((class.name.clone(), n));
    }
    Ok(out)
}

fn cutoff_error(class: &ClassDef) -> ClassSummary {
    ClassSummary {
        name: class.name.clone(),
        table: class.table.to_string(),
        action: class.action,
        cutoff: Utc::now().fixed_offset(),
        eligible: 0,
        affected: 0,
        kept: Kept::default(),
        status: ClassStatus::Failed,
        error: Some("the cutoff is outside the representable date range".into()),
    }
}

/// Counts, per class, the rows that would be changed at the moment `at` and the rows
/// kept by each exemption. Writes nothing and records nothing.
///
/// # Errors
/// [`EngineError`] from [`prepare`] or the database.
pub async fn plan(cfg: &Config, db: &Db, at: DateTime<Utc>) -> Result<RunSummary, EngineError> {
    let p = prepare(cfg, db).await?;
    let mut classes = Vec::new();
    for class in &cfg.classes {
        let Some(b) = bindings(cfg, db, class, at, &p) else {
            classes.push(cutoff_error(class));
            continue;
        };
        let c = count(db, class, &b).await?;
        classes.push(ClassSummary {
            name: class.name.clone(),
            table: class.table.to_string(),
            action: class.action,
            cutoff: b.cutoff.instant.fixed_offset(),
            eligible: c.eligible,
            affected: 0,
            kept: c.kept,
            status: ClassStatus::Ok,
            error: None,
        });
    }
    Ok(RunSummary {
        run_id: None,
        mode: cfg.safety.mode,
        started_at: at,
        finished_at: None,
        status: RunStatus::Ok,
        classes,
        error: None,
        notices: Vec::new(),
    })
}

/// One class in the compliance check (`lethe verify`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ClassCompliance {
    /// Class name.
    pub name: String,
    /// Table.
    pub table: String,
    /// The cutoff at the moment checked, in the library's zone.
    pub cutoff: chrono::DateTime<chrono::FixedOffset>,
    /// Rows past their period and not exempt: should be 0.
    pub overdue: u64,
    /// The age value of the oldest overdue row, as stored (a date or a local date and
    /// time); `None` when nothing is overdue.
    pub oldest_overdue: Option<String>,
    /// Whole days between the oldest overdue row and the moment checked.
    pub oldest_overdue_days: Option<i64>,
    /// Rows past their period kept by an exemption.
    pub kept: Kept,
    /// Rows of `delete_with` tables still linked to records the action already handled
    /// (`purged:`), such as Evergreen audit rows of a purged patron: should be 0.
    pub traces: u64,
    /// The tables where traces were found.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trace_tables: Vec<String>,
}

/// The compliance check: what an auditor runs. Changes nothing.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Compliance {
    /// When it was checked, UTC.
    pub checked_at: DateTime<Utc>,
    /// Overdue rows over all classes.
    pub overdue: u64,
    /// Traces of purged records over all classes.
    pub traces: u64,
    /// Per class.
    pub classes: Vec<ClassCompliance>,
    /// A missed-run warning, when the last enforced run is overdue.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missed_run: Option<String>,
}

/// For every class, the rows that are past their period and not exempt at `at` (the
/// compliance number: it should be 0), the oldest such row, and the kept counts.
///
/// # Errors
/// [`EngineError`] from [`prepare`] or the database.
pub async fn compliance(
    cfg: &Config,
    db: &Db,
    at: DateTime<Utc>,
) -> Result<Compliance, EngineError> {
    let p = prepare(cfg, db).await?;
    let mut classes = Vec::new();
    for class in &cfg.classes {
        let Some(b) = bindings(cfg, db, class, at, &p) else {
            continue;
        };
        let c = count(db, class, &b).await?;
        let (oldest, days) = if c.eligible == 0 {
            (None, None)
        } else {
            let mut tx = db.begin().await?;
            let row = tx
                .fetch_opt_strings(&sql::oldest_eligible_query(class, &b))
                .await?;
            drop(tx);
            let oldest = row.and_then(|mut r| r.pop().flatten());
            let days = oldest
                .as_deref()
                .and_then(|o| age_days(o, at, cfg.schedule.timezone));
            (oldest, days)
        };
        let mut traces = 0;
        let mut trace_tables = Vec::new();
        if !class.purged.is_empty() {
            for dep in &class.delete_with {
                let row = db.read_row_i64(&sql::traces_query(class, dep, &b)).await?;
                let n = row.first().copied().flatten().unwrap_or(0).max(0) as u64;
                if n > 0 {
                    traces += n;
                    trace_tables.push(dep.table.to_string());
                }
            }
        }
        classes.push(ClassCompliance {
            name: class.name.clone(),
            table: class.table.to_string(),
            cutoff: b.cutoff.instant.fixed_offset(),
            overdue: c.eligible,
            oldest_overdue: oldest,
            oldest_overdue_days: days,
            kept: c.kept,
            traces,
            trace_tables,
        });
    }
    Ok(Compliance {
        checked_at: at,
        overdue: classes.iter().map(|c| c.overdue).sum(),
        traces: classes.iter().map(|c| c.traces).sum(),
        classes,
        missed_run: missed_run(cfg, db, at).await?,
    })
}

/// Days from a stored age value (`YYYY-MM-DD[ HH:MM:SS]`, local) to `at`.
fn age_days(value: &str, at: DateTime<Utc>, tz: chrono_tz::Tz) -> Option<i64> {
    let local_at = at.with_timezone(&tz).naive_local();
    let v = value.get(..19).unwrap_or(value);
    let t = chrono::NaiveDateTime::parse_from_str(v, "%Y-%m-%d %H:%M:%S")
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M:%S"))
        .ok()
        .or_else(|| {
            chrono::NaiveDate::parse_from_str(value.get(..10)?, "%Y-%m-%d")
                .ok()?
                .and_hms_opt(0, 0, 0)
        })?;
    Some((local_at - t).num_days())
}

/// A missed run: when the last enforced run that ended `ok` is older than
/// `report.overdue_after` (default twice the schedule's interval) at `at`, a sentence
/// saying so, for the report and for `lethe verify`. `None` when runs are on time or
/// none has happened yet.
///
/// # Errors
/// [`EngineError::Database`].
pub async fn missed_run(
    cfg: &Config,
    db: &Db,
    at: DateTime<Utc>,
) -> Result<Option<String>, EngineError> {
    let Some((id, started)) = ledger::last_enforced(db).await? else {
        return Ok(None);
    };
    let limit = match cfg.safety.overdue_after {
        Some(p) => {
            policy::cutoff(at, cfg.schedule.timezone, p).map(|c| at - c.instant.with_timezone(&Utc))
        }
        None => {
            let a = crate::schedule::next_fire(&cfg.schedule, at);
            let b = a.and_then(|a| crate::schedule::next_fire(&cfg.schedule, a));
            match (a, b) {
                (Some(a), Some(b)) => Some((b - a) * 2),
                _ => None,
            }
        }
    };
    let Some(limit) = limit else {
        return Ok(None);
    };
    let age = at - started;
    if age <= limit {
        return Ok(None);
    }
    Ok(Some(format!(
        "Missed runs: the last completed enforcement run (run {id}, started {}) is {} hours old, more than the {} \
         hours allowed (report.overdue_after). Check that the Lethe service is running.",
        started.to_rfc3339(),
        age.num_hours(),
        limit.num_hours()
    )))
}

/// Options of one enforcement pass.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The administrator acknowledged a large first run (`--allow-large`): the circuit
    /// breaker does not trip.
    pub allow_large: bool,
    /// The moment the cutoffs are computed from (normally now).
    pub now: DateTime<Utc>,
    /// Cancelled by SIGTERM/SIGINT: the current batch commits, the run is recorded as
    /// interrupted.
    pub cancel: CancellationToken,
    /// How progress is shown while a class changes rows: bars on a terminal, or
    /// `progress` events in the log ([`Progress::log`], the default).
    pub progress: Progress,
}

impl RunOptions {
    /// Options of a run at `now`, progress in the log.
    pub fn new(allow_large: bool, now: DateTime<Utc>, cancel: CancellationToken) -> RunOptions {
        RunOptions {
            allow_large,
            now,
            cancel,
            progress: Progress::default(),
        }
    }
}

fn scalar_json(v: &Scalar) -> serde_json::Value {
    match v {
        Scalar::Bool(b) => serde_json::json!(b),
        Scalar::Int(i) => serde_json::json!(i),
        Scalar::Float(f) => serde_json::json!(f),
        Scalar::Text(t) => serde_json::json!(t),
    }
}

fn test_json(t: &ColumnTest) -> serde_json::Value {
    match t {
        ColumnTest::IsNull(c) => serde_json::json!({ "column": c.as_str(), "is_null": true }),
        ColumnTest::NotNull(c) => serde_json::json!({ "column": c.as_str(), "not_null": true }),
        ColumnTest::Compare(c, op, v) => {
            let op = match op {
                CmpOp::Eq => "eq",
                CmpOp::Ne => "ne",
                CmpOp::Gt => "gt",
                CmpOp::Ge => "ge",
                CmpOp::Lt => "lt",
                CmpOp::Le => "le",
                CmpOp::Like => "like",
            };
            serde_json::json!({ "column": c.as_str(), op: scalar_json(v) })
        }
    }
}

/// A condition in the same shape as `retention.yaml` writes it, for the canonical
/// policy an auditor reads.
fn condition_json(c: &Condition) -> serde_json::Value {
    match c {
        Condition::Column(t) => test_json(t),
        Condition::AnonymousPatron(col) => serde_json::json!({ "anonymous_patron": col.as_str() }),
        Condition::Exists {
            negated,
            table,
            column,
            matches,
            filter,
        } => {
            let body = serde_json::json!({
                "table": table.to_string(),
                "column": column.as_str(),
                "matches": matches.as_str(),
                "where": filter.iter().map(test_json).collect::<Vec<_>>(),
            });
            if *negated {
                serde_json::json!({ "not_exists": body })
            } else {
                serde_json::json!({ "exists": body })
            }
        }
        Condition::All(list) => {
            serde_json::json!({ "all": list.iter().map(condition_json).collect::<Vec<_>>() })
        }
        Condition::Any(list) => {
            serde_json::json!({ "any": list.iter().map(condition_json).collect::<Vec<_>>() })
        }
        Condition::Not(x) => serde_json::json!({ "not": condition_json(x) }),
        Condition::LegalHold(col) => serde_json::json!({ "legal_hold": col.as_str() }),
        Condition::Chain { parent, filter } => serde_json::json!({
            "chain": { "parent": parent.as_str(), "where": filter.iter().map(test_json).collect::<Vec<_>>() }
        }),
        Condition::PatronPeriod(pp) => serde_json::json!({
            "patron_period": {
                "table": pp.table.to_string(),
                "column": pp.column.as_str(),
                "matches": pp.matches.as_str(),
                "name_column": pp.name_column.as_str(),
                "name": pp.name,
                "value_column": pp.value_column.as_str(),
            }
        }),
    }
}

/// The effective policy as canonical JSON (no secrets): what the run enforced. Its
/// SHA-256 is stored with the run.
pub fn policy_json(cfg: &Config) -> String {
    let classes: Vec<serde_json::Value> = cfg
        .classes
        .iter()
        .map(|c| {
            let mut v = serde_json::json!({
                "name": c.name,
                "table": c.table.to_string(),
                "key": c.key.as_ref().map(|k| k.as_str()),
                "age": { "columns": c.age.columns.iter().map(|x| x.as_str()).collect::<Vec<_>>(),
                         "type": match c.age.kind {
                             AgeType::Datetime => "datetime",
                             AgeType::Date => "date",
                             AgeType::Timestamptz => "timestamptz",
                         } },
                "retain": c.retain.to_string(),
                "action": c.action.as_str(),
                "anonymize": c.anonymize.iter().map(|(col, s)| {
                    let strategy = match s {
                        Strategy::SetNull => serde_json::json!("set_null"),
                        Strategy::AnonymousPatron => serde_json::json!("anonymous_patron"),
                        Strategy::SetValue(v) => serde_json::json!({ "set_value": scalar_json(v) }),
                        Strategy::Pseudonym => serde_json::json!("pseudonym"),
                    };
                    serde_json::json!({ "column": col.as_str(), "strategy": strategy })
                }).collect::<Vec<_>>(),
                "scope": c.scope.iter().map(condition_json).collect::<Vec<_>>(),
                "immediate": c.immediate.iter().map(condition_json).collect::<Vec<_>>(),
                "exempt": c.exempt.iter().map(|(r, x)| {
                    serde_json::json!({ "reason": r.as_str(), "when": condition_json(x) })
                }).collect::<Vec<_>>(),
                "delete_with": c.delete_with.iter().map(|d| format!("{}.{}", d.table, d.column)).collect::<Vec<_>>(),
            });
            // Keys added with the purge action appear only where used, so that the
            // policy (and its hash) of a class without them reads as before.
            if let (Some(obj), Some(pc)) = (v.as_object_mut(), &c.purge) {
                obj.insert("purge".into(), serde_json::json!({
                    "function": pc.function.to_string(),
                    "args": pc.args.iter().map(|a| match a {
                        crate::config::PurgeArg::Key => serde_json::json!("key"),
                        crate::config::PurgeArg::Value(v) => serde_json::json!({ "value": scalar_json(v) }),
                    }).collect::<Vec<_>>(),
                }));
            }
            if let Some(obj) = v.as_object_mut() {
                if !c.triggers.is_empty() {
                    obj.insert("triggers".into(), serde_json::json!(c.triggers.iter().map(|t| t.to_string()).collect::<Vec<_>>()));
                }
                if let Some(u) = &c.unlink {
                    obj.insert("unlink".into(), serde_json::json!({
                        "columns": u.columns.iter().map(|x| x.as_str()).collect::<Vec<_>>(),
                        "chain": u.chain.as_ref().map(|x| x.as_str()),
                        "set_value": scalar_json(&u.value),
                    }));
                }
                if !c.linked.is_empty() {
                    obj.insert("linked".into(), serde_json::json!(c.linked.iter().map(|l| serde_json::json!({
                        "table": l.table.to_string(),
                        "column": l.column.as_str(),
                        "patron": l.patron.as_str(),
                    })).collect::<Vec<_>>()));
                }
                if !c.purged.is_empty() {
                    obj.insert("purged".into(), serde_json::json!(c.purged.iter().map(condition_json).collect::<Vec<_>>()));
                }
                if let (Some(from), Some(age)) = (&c.age.from, obj.get_mut("age").and_then(|a| a.as_object_mut())) {
                    age.insert("from".into(), serde_json::json!({
                        "table": from.table.to_string(),
                        "column": from.column.as_str(),
                        "matches": from.matches.as_str(),
                        "where": from.filter.iter().map(test_json).collect::<Vec<_>>(),
                    }));
                }
                if let Some(a) = &c.aggregate {
                    let by: serde_json::Map<String, serde_json::Value> = sql::AGGREGATE_DIMS
                        .iter()
                        .zip(a.columns())
                        .filter_map(|(d, col)| col.map(|c| ((*d).to_string(), serde_json::json!(c.as_str()))))
                        .collect();
                    obj.insert("aggregate".into(), serde_json::json!({ "by": by }));
                }
            }
            v
        })
        .collect();
    serde_json::json!({
        "profile": cfg.profile,
        "timezone": cfg.schedule.timezone.name(),
        "mode": cfg.safety.mode.as_str(),
        "batch_size": cfg.safety.batch_size,
        "max_fraction": cfg.safety.max_fraction,
        "classes": classes,
    })
    .to_string()
}

/// The whole job once: opens a run in the ledger, enforces every class (or, in
/// dry-run mode, counts them), closes the run. Tests call this directly.
///
/// The caller has run [`prepare`] and [`check_clock`]; nothing was written before the
/// run is opened.
///
/// # Errors
/// [`EngineError::Database`] when the ledger itself cannot be written; class failures
/// are reported in the summary instead.
pub async fn enforce_once(
    cfg: &Config,
    db: &Db,
    p: &Prepared,
    opts: &RunOptions,
) -> Result<RunSummary, EngineError> {
    let mode = cfg.safety.mode;
    let started_at = opts.now;
    // Before this run is recorded: was the previous one missed?
    let mut notices: Vec<String> = missed_run(cfg, db, opts.now).await?.into_iter().collect();
    for (id, changed) in ledger::close_stale_runs(db).await? {
        notices.push(format!(
            "Run {id} did not finish: the worker stopped (killed, power loss) or lost the database before closing it. \
             Its {changed} committed changes are recorded in the ledger; this run finishes the work."
        ));
    }
    if mode == Mode::Enforce && p.legal_holds {
        let today = crate::legal_hold::local_date(opts.now, cfg.schedule.timezone);
        for id in crate::legal_hold::lapse_ended(db, today).await? {
            notices.push(format!(
                "Legal hold {id} lapsed at its end date and was released (ledger entry recorded); \
                 the patron's rows follow the policy again from this run."
            ));
        }
    }
    for n in &notices {
        tracing::warn!("{n}");
    }
    let policy = policy_json(cfg);
    if let Some((id, previous)) = ledger::record_policy_change(db, &policy).await? {
        notices.push(format!(
            "The retention policy changed since the last run (ledger entry {id}; previous policy {}…).",
            &previous[..previous.len().min(12)]
        ));
    }
    let run_id = ledger::open_run(db, mode, started_at, &policy).await?;
    let retry = Retry::new(&cfg.safety);
    tracing::info!(run_id, mode = mode.as_str(), "run started");
    let mut classes = Vec::new();
    let mut interrupted = false;
    for (pos, class) in cfg.classes.iter().enumerate() {
        let Some(b) = bindings(cfg, db, class, opts.now, p) else {
            classes.push(cutoff_error(class));
            continue;
        };
        let summary = if interrupted || opts.cancel.is_cancelled() {
            interrupted = true;
            ClassSummary {
                name: class.name.clone(),
                table: class.table.to_string(),
                action: class.action,
                cutoff: b.cutoff.instant.fixed_offset(),
                eligible: 0,
                affected: 0,
                kept: Kept::default(),
                status: ClassStatus::Skipped,
                error: Some("not reached: the run was interrupted".into()),
            }
        } else {
            let (s, was_interrupted) =
                enforce_class(cfg, db, run_id, (pos, class), &b, opts, &retry).await?;
            interrupted |= was_interrupted;
            s
        };
        classes.push(summary);
    }
    let status = if classes.iter().any(|c| c.status == ClassStatus::Failed) {
        RunStatus::Failed
    } else if classes.iter().any(|c| c.status == ClassStatus::Tripped) {
        RunStatus::Tripped
    } else if interrupted {
        RunStatus::Interrupted
    } else {
        RunStatus::Ok
    };
    let finished_at = Utc::now().max(started_at);
    retrying_step(run_id, "", "close run", (&opts.cancel, &retry), || {
        ledger::close_run(db, run_id, status, finished_at, None)
    })
    .await?;
    tracing::info!(run_id, status = status.as_str(), "run finished");
    Ok(RunSummary {
        run_id: Some(run_id),
        mode,
        started_at,
        finished_at: Some(finished_at),
        status,
        classes,
        error: None,
        notices,
    })
}

/// One class in a run. Returns the summary and whether the run was interrupted in it.
async fn enforce_class(
    cfg: &Config,
    db: &Db,
    run_id: i64,
    (pos, class): (usize, &ClassDef),
    b: &Bindings,
    opts: &RunOptions,
    retry: &Retry,
) -> Result<(ClassSummary, bool), EngineError> {
    let mut s = ClassSummary {
        name: class.name.clone(),
        table: class.table.to_string(),
        action: class.action,
        cutoff: b.cutoff.instant.fixed_offset(),
        eligible: 0,
        affected: 0,
        kept: Kept::default(),
        status: ClassStatus::Ok,
        error: None,
    };
    let name = class.name.as_str();
    let cancel = (&opts.cancel, retry);
    let first = match retrying_step(run_id, name, "count", cancel, || count(db, class, b)).await {
        Ok(c) => c,
        Err(e) => {
            s.status = ClassStatus::Failed;
            s.error = Some(safe_db_message(&e));
            retrying_step(run_id, name, "open class", cancel, || {
                ledger::open_class(db, run_id, pos, &s)
            })
            .await?;
            retrying_step(run_id, name, "close class", cancel, || {
                ledger::close_class(db, run_id, &s)
            })
            .await?;
            return Ok((s, false));
        }
    };
    s.eligible = first.eligible;
    s.kept = first.kept;
    retrying_step(run_id, name, "open class", cancel, || {
        ledger::open_class(db, run_id, pos, &s)
    })
    .await?;

    let mut interrupted = false;
    // A table without a key, off SQLite (whose rowid serves as one): row-limit batches.
    let keyless = class.key.is_none() && db.backend() != Backend::Sqlite;
    if cfg.safety.mode == Mode::Enforce && first.eligible > 0 {
        let range_query = if keyless {
            sql::table_size_query(class)
        } else {
            sql::range_query(class, db.backend())
        };
        let range = retrying_step(run_id, name, "key range", cancel, || {
            db.read_row_i64(&range_query)
        })
        .await?;
        // Keyless: the one value is the table's size; the pass ignores lo and hi.
        let range = if keyless {
            vec![Some(0), Some(0), range.first().copied().flatten()]
        } else {
            range
        };
        let (lo, hi, total) = (
            range.first().copied().flatten(),
            range.get(1).copied().flatten(),
            range.get(2).copied().flatten().unwrap_or(0).max(0) as u64,
        );
        let limit = (cfg.safety.max_fraction * total as f64).floor() as u64;
        if !opts.allow_large && first.eligible > limit {
            s.status = ClassStatus::Tripped;
            s.error = Some(format!(
                "circuit breaker: {} of {} rows ({:.1}%) would change, more than safety.max_fraction ({:.0}%); \
                 nothing in this class was changed. Check `lethe plan`, then run `lethe run --once --allow-large` \
                 to acknowledge",
                first.eligible,
                total,
                100.0 * first.eligible as f64 / total.max(1) as f64,
                100.0 * cfg.safety.max_fraction
            ));
            tracing::warn!(run_id, class = %class.name, eligible = first.eligible, total, "circuit breaker tripped");
        } else if let (Some(lo), Some(hi)) = (lo, hi) {
            let mut rounds = 0u32;
            let mut progress = opts.progress.class(run_id, name, first.eligible);
            let mut eligible = first.eligible;
            loop {
                rounds += 1;
                let done = if keyless {
                    limit_pass(cfg, db, run_id, class, b, eligible, cancel, &mut progress).await
                } else {
                    pass(cfg, db, run_id, class, b, lo, hi, cancel, &mut progress).await
                };
                match done {
                    Ok(stopped) => interrupted = stopped,
                    Err(e) => {
                        s.status = ClassStatus::Failed;
                        s.error = Some(safe_db_message(&e));
                        tracing::error!(run_id, class = %class.name, error = %safe_db_message(&e), "class failed");
                        break;
                    }
                }
                if interrupted {
                    break;
                }
                // The fixed-point check: only the eligible count (as cheap as a bare
                // COUNT(*) of the predicate). The kept counts of the first count stand
                // unless rows are still eligible, which the full count then explains.
                let left = retrying_step(run_id, name, "count", cancel, || {
                    eligible_count(db, class, b)
                })
                .await?;
                if left == 0 {
                    break;
                }
                let after =
                    retrying_step(run_id, name, "count", cancel, || count(db, class, b)).await?;
                s.kept = after.kept;
                if after.eligible == 0 {
                    break;
                }
                if rounds >= cfg.safety.max_rounds {
                    s.status = ClassStatus::Failed;
                    s.error = Some(format!(
                        "{} rows still eligible after {rounds} rounds: no fixed point (raise safety.max_rounds, or \
                         look for something making rows eligible while Lethe runs)",
                        after.eligible
                    ));
                    break;
                }
                // Rows made eligible by this class's own changes (or by the library
                // meanwhile): counted, then changed in the next round.
                s.eligible += after.eligible;
                eligible = after.eligible;
                progress.add_eligible(after.eligible);
            }
        }
    }
    s.affected = retrying_step(run_id, name, "read count back", cancel, || {
        ledger::affected(db, run_id, name)
    })
    .await?;
    // A pass can change rows that became eligible during it through the class's own
    // changes (a guarantor after its child, further on in the same pass): count them as
    // eligible too, so that eligible never reads less than what was changed.
    s.eligible = s.eligible.max(s.affected);
    if interrupted && s.status == ClassStatus::Ok {
        s.error =
            Some("interrupted: committed batches stand; the next run finishes the work".into());
    }
    retrying_step(run_id, name, "close class", cancel, || {
        ledger::close_class(db, run_id, &s)
    })
    .await?;
    db.checkpoint(true).await;
    tracing::info!(
        run_id,
        class = %class.name,
        eligible = s.eligible,
        affected = s.affected,
        kept_opt_in = s.kept.opt_in,
        kept_obligations = s.kept.obligations,
        kept_protected = s.kept.protected,
        status = s.status.as_str(),
        "class done"
    );
    Ok((s, interrupted))
}

/// The `"batch committed"` debug event of one batch transaction: the rows it changed,
/// `batch_ms` (milliseconds from BEGIN to COMMIT, the time its rows stayed locked) and
/// `batch_size` (the key-range width or row limit it used). The benchmark harness
/// reads these two names: keep them.
fn batch_committed(run_id: i64, class: &ClassDef, changed: u64, size: u32, took: Duration) {
    tracing::debug!(
        run_id,
        class = %class.name,
        changed,
        batch_ms = took.as_secs_f64() * 1000.0,
        batch_size = size,
        "batch committed"
    );
}

/// One pass over the key range `[lo, hi]` in batches, each range as wide as the
/// class's [`BatchSizer`] says (the first `safety.batch_size` keys). Returns whether it
/// stopped early because of cancellation.
#[allow(clippy::too_many_arguments)]
async fn pass(
    cfg: &Config,
    db: &Db,
    run_id: i64,
    class: &ClassDef,
    b: &Bindings,
    lo: i64,
    hi: i64,
    ctl: (&CancellationToken, &Retry),
    progress: &mut ClassProgress,
) -> Result<bool, DbError> {
    if class.action == Action::Purge {
        return purge_pass(cfg, db, run_id, class, b, lo, hi, ctl, progress).await;
    }
    let (cancel, retry) = ctl;
    let mut sizer = BatchSizer::of(&cfg.safety);
    let mut from = lo;
    while from <= hi {
        if cancel.is_cancelled() {
            return Ok(true);
        }
        let size = sizer.size();
        let to = from.saturating_add(i64::from(size));
        let changed = retrying!(
            run_id,
            class,
            cancel,
            retry,
            batch(db, run_id, class, b, from, to)
        );
        match changed {
            Some((changed, took)) => {
                batch_committed(run_id, class, changed, size, took);
                progress.add(changed);
                sizer.record(took);
                db.checkpoint(false).await;
                from = to;
            }
            None => {
                // Nothing eligible in the range: skip any gap in the key space with
                // one index lookup.
                let next = retrying!(
                    run_id,
                    class,
                    cancel,
                    retry,
                    db.read_row_i64(&sql::next_key_query(class, to, b.backend))
                );
                match next.first().copied().flatten() {
                    Some(k) if k > from => from = k,
                    _ => break,
                }
            }
        }
    }
    Ok(false)
}

/// One batch transaction over the keys in `[from, to)`: select the eligible keys
/// (locked), change them, add the count to the ledger, commit. Returns the rows changed
/// and the time from BEGIN to COMMIT; `None` when no key in the range is eligible
/// (nothing written). Safe to run again after any error: a batch that committed is no
/// longer eligible, and its ledger count committed with it.
async fn batch(
    db: &Db,
    run_id: i64,
    class: &ClassDef,
    b: &Bindings,
    from: i64,
    to: i64,
) -> Result<Option<(u64, Duration)>, DbError> {
    let b = &b.within(from, to);
    let began = Instant::now();
    let mut tx = db.begin().await?;
    if let Some(changed) = range_batch(&mut tx, class, b, from, to).await? {
        if changed == 0 {
            // Nothing changed, nothing written: dropping `tx` rolls it back.
            return Ok(None);
        }
        ledger::add_batch(&mut tx, run_id, &class.name, changed).await?;
        tx.commit().await?;
        return Ok(Some((changed, began.elapsed())));
    }
    let keys = tx
        .fetch_i64s(&sql::batch_keys_query(class, b, from, to))
        .await?;
    if keys.is_empty() {
        return Ok(None);
    }
    linked_rows(&mut tx, class, b, BatchRows::Keys(&keys)).await?;
    let changed = match class.action {
        Action::Anonymize => {
            tx.execute(&sql::anonymize_statement(class, b, &keys, &[]))
                .await?
        }
        Action::Aggregate => {
            let rows = tx
                .fetch_cells(&sql::aggregate_rows_query(class, b, Some(&keys), None))
                .await?;
            let n = tx.execute(&sql::delete_statement(class, b, &keys)).await?;
            add_aggregates(&mut tx, class, b, &rows, n).await?;
            n
        }
        Action::Pseudonymize => {
            let pseudonyms = batch_pseudonyms(&mut tx, class, b, |col| {
                sql::pseudonym_ids_query(class, col, b, &keys)
            })
            .await?;
            tx.execute(&sql::anonymize_statement(class, b, &keys, &pseudonyms))
                .await?
        }
        // `pass` hands purge classes to `purge_pass`.
        Action::Purge => 0,
        Action::Delete => {
            for u in sql::unlink_statements(class, &keys) {
                tx.execute(&u).await?;
            }
            let n = tx.execute(&sql::delete_statement(class, b, &keys)).await?;
            if !class.delete_with.is_empty() {
                let deleted = if n as usize == keys.len() {
                    keys.clone()
                } else {
                    // Some rows stopped being eligible between select and delete:
                    // only the rows really deleted lose their dependents.
                    let still = tx
                        .fetch_i64s(&sql::existing_keys_query(class, &keys, b.backend))
                        .await?;
                    keys.iter()
                        .copied()
                        .filter(|k| !still.contains(k))
                        .collect()
                };
                if !deleted.is_empty() {
                    for dep in &class.delete_with {
                        tx.execute(&sql::delete_dependent_statement(dep, &deleted))
                            .await?;
                    }
                }
            }
            n
        }
    };
    ledger::add_batch(&mut tx, run_id, &class.name, changed).await?;
    tx.commit().await?;
    Ok(Some((changed, began.elapsed())))
}

/// `linked:` rows (Koha's `checkout_renewals` of a checkout) that name the patron of
/// an eligible row among `rows` lose that patron, in the batch's transaction and before
/// the class's own change (which may rewrite or delete the patron they are matched by).
/// Their count is logged, not written to the ledger: the ledger counts the class's own
/// rows.
async fn linked_rows(
    tx: &mut crate::db::Tx,
    class: &ClassDef,
    b: &Bindings,
    rows: BatchRows<'_>,
) -> Result<(), DbError> {
    if class.linked.is_empty() {
        return Ok(());
    }
    let mut patrons: Vec<crate::db::Cell> = Vec::new();
    if (0..class.linked.len()).any(|i| !sql::linked_by_column(b, i)) {
        let Some(q) = sql::batch_patrons_query(class, b, rows) else {
            return Ok(());
        };
        patrons = tx
            .fetch_cells(&q)
            .await?
            .into_iter()
            .filter_map(|r| r.into_iter().next())
            .collect();
    }
    for (i, l) in class.linked.iter().enumerate() {
        let via = if sql::linked_by_column(b, i) {
            sql::LinkedVia::Column
        } else {
            sql::LinkedVia::Patrons(&patrons)
        };
        if let Some(u) = sql::linked_statement(class, b, l, rows, via) {
            let n = tx.execute(&u).await?;
            tracing::debug!(class = %class.name, table = %l.table, rows = n, "linked rows rewritten");
        }
    }
    Ok(())
}

/// The batch as one statement over the key range, for classes that need no list of
/// the keys they change: anonymize (no pseudonyms to look up) and delete with no
/// `delete_with` or `unlink`. This is the database's own range loop (one statement per
/// range, then COMMIT) with the ledger's count added; the key-list form costs a
/// `SELECT … FOR UPDATE` round trip and a second evaluation of the predicate. A class
/// with `linked:` rows first rewrites the linked rows ([`linked_rows`]: by their column
/// where an index serves it, else through the patrons of the range's rows in period,
/// read unlocked), and its statement skips any row a linked row still names the patron
/// of (`sql::linked_guard`). Returns the rows changed, or `None` when
/// the class needs the key-list form.
async fn range_batch(
    tx: &mut crate::db::Tx,
    class: &ClassDef,
    b: &Bindings,
    from: i64,
    to: i64,
) -> Result<Option<u64>, DbError> {
    let statement = match class.action {
        Action::Anonymize => Statement::Update(sql::anonymize_range_statement(class, b, from, to)),
        Action::Delete if class.delete_with.is_empty() && class.unlink.is_none() => {
            Statement::Delete(sql::delete_range_statement(class, b, from, to))
        }
        _ => return Ok(None),
    };
    linked_rows(tx, class, b, BatchRows::Range(from, to)).await?;
    Ok(Some(match statement {
        Statement::Update(u) => tx.execute(&u).await?,
        Statement::Delete(d) => tx.execute(&d).await?,
    }))
}

/// The one statement of a range batch.
enum Statement {
    Update(sea_query::UpdateStatement),
    Delete(sea_query::DeleteStatement),
}

/// One pass over a table without a key (MySQL, PostgreSQL): batches of at most as many
/// eligible rows as the class's [`BatchSizer`] says (the first `safety.batch_size`),
/// until a batch finds none or the pass has changed `eligible` rows (a changed row
/// stops being eligible, so this bounds a pass that would otherwise not end; the round
/// loop then counts again). Returns whether it stopped early because of cancellation.
#[allow(clippy::too_many_arguments)]
async fn limit_pass(
    cfg: &Config,
    db: &Db,
    run_id: i64,
    class: &ClassDef,
    b: &Bindings,
    eligible: u64,
    ctl: (&CancellationToken, &Retry),
    progress: &mut ClassProgress,
) -> Result<bool, DbError> {
    let (cancel, retry) = ctl;
    let mut sizer = BatchSizer::of(&cfg.safety);
    let mut total = 0u64;
    while total < eligible {
        if cancel.is_cancelled() {
            return Ok(true);
        }
        let size = sizer.size();
        let (changed, took) = retrying!(
            run_id,
            class,
            cancel,
            retry,
            limit_batch(db, run_id, class, b, u64::from(size))
        );
        batch_committed(run_id, class, changed, size, took);
        if changed == 0 {
            break;
        }
        total += changed;
        progress.add(changed);
        sizer.record(took);
    }
    Ok(false)
}

/// One row-limit batch transaction: change at most `limit` eligible rows, add the count
/// to the ledger, commit (nothing is written when no row is eligible). Returns the rows
/// changed and the time from BEGIN to COMMIT (to the rollback, when none was changed).
async fn limit_batch(
    db: &Db,
    run_id: i64,
    class: &ClassDef,
    b: &Bindings,
    limit: u64,
) -> Result<(u64, Duration), DbError> {
    let began = Instant::now();
    let mut tx = db.begin().await?;
    let changed = match class.action {
        Action::Anonymize => {
            tx.execute(&sql::limited_anonymize_statement(class, b, limit, &[]))
                .await?
        }
        Action::Pseudonymize => {
            let pseudonyms = batch_pseudonyms(&mut tx, class, b, |col| {
                sql::limited_pseudonym_ids_query(class, col, b, limit)
            })
            .await?;
            if pseudonyms.is_empty() {
                0
            } else {
                tx.execute(&sql::limited_anonymize_statement(
                    class,
                    b,
                    limit,
                    &pseudonyms,
                ))
                .await?
            }
        }
        Action::Delete => {
            tx.execute(&sql::limited_delete_statement(class, b, limit))
                .await?
        }
        Action::Aggregate => {
            let upto = tx
                .fetch_opt_strings(&sql::aggregate_boundary_query(class, b, limit))
                .await?
                .and_then(|mut r| r.pop().flatten());
            let rows = tx
                .fetch_cells(&sql::aggregate_rows_query(class, b, None, upto.as_deref()))
                .await?;
            if rows.is_empty() {
                0
            } else {
                let n = tx
                    .execute(&sql::aggregate_upto_delete(class, b, upto.as_deref()))
                    .await?;
                add_aggregates(&mut tx, class, b, &rows, n).await?;
                n
            }
        }
        // Validation refuses purge without a key.
        Action::Purge => 0,
    };
    if changed == 0 {
        return Ok((0, began.elapsed()));
    }
    ledger::add_batch(&mut tx, run_id, &class.name, changed).await?;
    tx.commit().await?;
    Ok((changed, began.elapsed()))
}

/// The pseudonyms of the ids that `ids_query` (given the class's pseudonym column) finds
/// in a batch's rows, read in the batch's transaction; empty when the class has no
/// pseudonym column.
async fn batch_pseudonyms(
    tx: &mut crate::db::Tx,
    class: &ClassDef,
    b: &Bindings,
    ids_query: impl FnOnce(&crate::config::Ident) -> sea_query::SelectStatement,
) -> Result<Vec<(i64, i64)>, DbError> {
    let Some(col) = sql::pseudonym_column(class) else {
        return Ok(Vec::new());
    };
    let ids = tx.fetch_i64s(&ids_query(col)).await?;
    Ok(pseudonyms_of(b.pseudonym_key.as_ref(), &ids))
}

/// Adds the deleted `rows` (age and dimensions as text, from
/// [`sql::aggregate_rows_query`]) to `lethe_aggregates`, in the batch's transaction.
/// `deleted` must equal the number of rows read (both ran under the same locks with the
/// same predicate); otherwise the batch is refused and rolled back.
async fn add_aggregates(
    tx: &mut crate::db::Tx,
    class: &ClassDef,
    b: &Bindings,
    rows: &[Vec<crate::db::Cell>],
    deleted: u64,
) -> Result<(), DbError> {
    if deleted != rows.len() as u64 {
        return Err(DbError::Consistency(format!(
            "class {}: {} rows read for the counts but {deleted} deleted; the batch was rolled back",
            class.name,
            rows.len()
        )));
    }
    let mut groups: std::collections::BTreeMap<(String, [String; 4]), i64> =
        std::collections::BTreeMap::new();
    for r in rows {
        let age = r.first().and_then(|c| c.text());
        let Some(month) = age
            .as_deref()
            .and_then(|a| month_of(a, class.age.kind, b.timezone))
        else {
            return Err(DbError::Consistency(format!(
                "class {}: a row's age could not be read as a date; the batch was rolled back",
                class.name
            )));
        };
        let dim = |i: usize| r.get(i).and_then(|c| c.text()).unwrap_or_default();
        *groups
            .entry((month, [dim(1), dim(2), dim(3), dim(4)]))
            .or_insert(0) += 1;
    }
    for ((month, dims), n) in groups {
        let added = tx
            .execute(&sql::aggregate_add_statement(&class.name, &month, &dims, n))
            .await?;
        if added == 0 {
            tx.execute(&sql::aggregate_insert_statement(
                &class.name,
                &month,
                &dims,
                n,
            ))
            .await?;
        }
    }
    Ok(())
}

/// The local month (`YYYY-MM`) of an age read as text: a wall-clock date or time is
/// its own month; an instant (UTC text, or with an offset on PostgreSQL) is converted
/// to the library's zone first.
fn month_of(age: &str, kind: AgeType, tz: chrono_tz::Tz) -> Option<String> {
    let t = age.trim();
    match kind {
        AgeType::Date | AgeType::Datetime => {
            chrono::NaiveDate::parse_from_str(t.get(..10)?, "%Y-%m-%d")
                .ok()
                .map(|d| d.format("%Y-%m").to_string())
        }
        AgeType::Timestamptz => {
            let instant = chrono::DateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f%#z")
                .map(|d| d.with_timezone(&Utc))
                .or_else(|_| {
                    chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f")
                        .map(|n| n.and_utc())
                })
                .ok()?;
            Some(instant.with_timezone(&tz).format("%Y-%m").to_string())
        }
    }
}

/// Purges one row in its own transaction: lock it and check it again, call the
/// function, delete the class's `delete_with` rows for it, count one in the ledger.
/// Returns whether the row was purged (false: no longer eligible, left alone).
async fn purge_one(
    db: &Db,
    run_id: i64,
    class: &ClassDef,
    call: &crate::config::PurgeCall,
    b: &Bindings,
    k: i64,
) -> Result<bool, DbError> {
    let mut tx = db.begin().await?;
    let still = tx
        .fetch_i64s(&sql::batch_keys_query(class, b, k, k.saturating_add(1)))
        .await?;
    if still.is_empty() {
        // No longer eligible (a new checkout, a hold): left alone.
        return Ok(false);
    }
    tx.execute(&sql::purge_statement(call, k, b)).await?;
    for dep in &class.delete_with {
        tx.execute(&sql::delete_dependent_statement(dep, &[k]))
            .await?;
    }
    ledger::add_batch(&mut tx, run_id, &class.name, 1).await?;
    tx.commit().await?;
    Ok(true)
}

/// A pass of a purge class: the eligible keys of each range are read, then each row is
/// purged in a transaction of its own (Evergreen's `actor.usr_delete` does much work per
/// patron, and one patron per transaction keeps locks short and progress committed).
/// In that transaction the row is locked and checked again, the function is called, the
/// class's `delete_with` rows (traces the function leaves, such as audit rows) are
/// deleted, and the ledger counts one. Returns whether it stopped early on cancellation.
///
/// Batch sizes do not adapt here: each transaction already holds one patron, and the
/// ranges of `safety.batch_size` keys are read without locks.
#[allow(clippy::too_many_arguments)]
async fn purge_pass(
    cfg: &Config,
    db: &Db,
    run_id: i64,
    class: &ClassDef,
    b: &Bindings,
    lo: i64,
    hi: i64,
    (cancel, retry): (&CancellationToken, &Retry),
    progress: &mut ClassProgress,
) -> Result<bool, DbError> {
    let Some(call) = &class.purge else {
        return Err(DbError::Schema(format!(
            "classes.{}: action purge without a purge function",
            class.name
        )));
    };
    let step = i64::from(cfg.safety.batch_size);
    let mut from = lo;
    while from <= hi {
        if cancel.is_cancelled() {
            return Ok(true);
        }
        let to = from.saturating_add(step);
        // Read without locks: each row is locked in its own transaction below.
        let keys = retrying!(
            run_id,
            class,
            cancel,
            retry,
            db.read_i64s(&sql::eligible_keys_query(class, b, from, to))
        );
        for k in keys {
            if cancel.is_cancelled() {
                return Ok(true);
            }
            let purged = retrying!(
                run_id,
                class,
                cancel,
                retry,
                purge_one(db, run_id, class, call, b, k)
            );
            progress.add(u64::from(purged));
        }
        tracing::debug!(run_id, class = %class.name, "purge range committed");
        if to > hi {
            break;
        }
        // Skip any gap in the key space with one index lookup.
        let next = retrying!(
            run_id,
            class,
            cancel,
            retry,
            db.read_row_i64(&sql::next_key_query(class, to, b.backend))
        );
        match next.first().copied().flatten() {
            Some(k) if k > from => from = k,
            _ => break,
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(retries: u32, retry_for: std::time::Duration) -> Retry {
        Retry {
            retries,
            retry_for,
            failing_since: std::sync::Mutex::new(None),
        }
    }

    #[test]
    fn the_backoff_doubles_from_half_a_second_up_to_32_seconds() {
        let pauses: Vec<u64> = (1..=9)
            .map(|a| retry_backoff(a).as_millis() as u64)
            .collect();
        assert_eq!(
            pauses,
            [500, 1000, 2000, 4000, 8000, 16000, 32000, 32000, 32000]
        );
    }

    #[test]
    fn retries_stop_after_safety_retries() {
        let r = budget(3, std::time::Duration::from_secs(3600));
        let pauses: Vec<_> = (1..=5).map(|a| r.next_pause(a)).collect();
        assert_eq!(
            pauses,
            [
                Some(retry_backoff(1)),
                Some(retry_backoff(2)),
                Some(retry_backoff(3)),
                None,
                None
            ]
        );
        assert_eq!(
            budget(0, std::time::Duration::from_secs(60)).next_pause(1),
            None
        );
    }

    #[test]
    fn no_retry_starts_after_retry_for_and_a_success_starts_the_clock_again() {
        // 1.2 s: the first pause (0.5 s) fits, the second (1 s) would start too late.
        let r = budget(5, std::time::Duration::from_millis(1200));
        assert_eq!(r.next_pause(1), Some(retry_backoff(1)));
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert_eq!(r.next_pause(2), None, "0.3 s + 1 s pause is past 1.2 s");
        // Another step, with the database still failing: the clock is shared.
        std::thread::sleep(std::time::Duration::from_millis(800));
        assert_eq!(r.next_pause(1), None, "1.1 s + 0.5 s is past 1.2 s");
        r.succeeded();
        assert_eq!(r.next_pause(1), Some(retry_backoff(1)));
    }
}
