//! One whole unit of work, as the CLI and the daemon run it: connect, check the schema
//! and the anonymous patron, compare clocks, take the run lock (one active worker among
//! replicas, [`crate::db::lock`]), migrate Lethe's own tables, enforce once, release
//! the lock, and deliver the report (or leave it in the outbox). A run that finds the
//! lock taken is skipped: nothing written, no report.
//!
//! After every run, skipped and failed ones included (also a run that could not start,
//! and the daemon's health check at boot, through [`write_metrics`] and
//! [`failure_summary`]),
//! the metrics file is written when `metrics.textfile` is set ([`crate::ops::metrics`]):
//! the summary, the rows still overdue per class ([`engine::compliance`]), whether the
//! ledger's chain verified and when the last successful run ended (both from the
//! ledger, [`crate::ops::status::ledger_facts`]). A write that fails is logged and
//! returned in [`JobOutcome::metrics`]; it never changes the run or its ledger entry.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::db::Db;
use crate::db::lock::RunLock;
use crate::engine::{self, EngineError, RunOptions};
use crate::progress::Progress;
use crate::report::{self, Delivery};
use crate::summary::{Mode, RunStatus, RunSummary};

/// The outcome of [`run_once`].
#[derive(Debug)]
pub struct JobOutcome {
    /// What the run did.
    pub summary: RunSummary,
    /// Where the report went; `None` when delivering failed outright (logged), and
    /// when the run was skipped (status `skipped`: no report is sent).
    pub delivery: Option<Delivery>,
    /// The metrics file; `None` when `metrics.textfile` is not set.
    pub metrics: Option<MetricsWrite>,
}

/// What became of the metrics file after a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsWrite {
    /// Written (replaced atomically).
    Written(PathBuf),
    /// Not written; the previous file, if any, is unchanged. `error` is the I/O error
    /// (no patron data). Logged at ERROR.
    Failed {
        /// The configured file.
        path: PathBuf,
        /// Why.
        error: String,
    },
}

/// Runs the job once.
///
/// Nothing is written before the schema, the anonymous patron and the clock have been
/// checked and the run lock is taken. When another worker holds the lock, the run is
/// skipped: a summary with status `skipped` and no run id, nothing written, no report
/// (two replicas must not send two reports a night). When the run fails before any
/// class (database unreachable, ledger not writable), a failure summary is still
/// reported so the director hears of it.
///
/// Then the metrics file is written when `metrics.textfile` is set, whatever the
/// outcome ([`write_metrics`]).
///
/// # Errors
/// [`EngineError`] for what stopped the run before it began (mismatch, clock,
/// database); the failure report and the metrics file have been attempted.
pub async fn run_once(
    cfg: &Config,
    allow_large: bool,
    cancel: CancellationToken,
) -> Result<JobOutcome, EngineError> {
    run_once_with(cfg, allow_large, cancel, Progress::log()).await
}

/// [`run_once`], showing progress as `progress` says (bars on a terminal for
/// `run --once`; [`run_once`] logs it, as the daemon does).
///
/// # Errors
/// As [`run_once`].
pub async fn run_once_with(
    cfg: &Config,
    allow_large: bool,
    cancel: CancellationToken,
    progress: Progress,
) -> Result<JobOutcome, EngineError> {
    let now = Utc::now();
    match enforce(cfg, allow_large, cancel, now, progress).await {
        Ok(summary) if summary.status == RunStatus::Skipped => {
            let metrics = write_metrics(cfg, &summary, true).await;
            Ok(JobOutcome {
                summary,
                delivery: None,
                metrics,
            })
        }
        Ok(summary) => {
            let delivery = deliver(cfg, &summary).await;
            let metrics = write_metrics(cfg, &summary, true).await;
            Ok(JobOutcome {
                summary,
                delivery,
                metrics,
            })
        }
        Err(e) => {
            let summary = failure_summary(cfg, now, &e);
            let _ = deliver(cfg, &summary).await;
            // An unreachable database would only make the metrics wait for another
            // connect timeout: the last success is then carried over from the file.
            let reachable = !matches!(e, EngineError::Database(_));
            let _ = write_metrics(cfg, &summary, reachable).await;
            Err(e)
        }
    }
}

/// The summary of a run that `e` stopped before any class: status `failed`, no run id,
/// no classes, started at `started_at` and ended now.
pub fn failure_summary(cfg: &Config, started_at: DateTime<Utc>, e: &EngineError) -> RunSummary {
    RunSummary {
        run_id: None,
        mode: cfg.safety.mode,
        started_at,
        finished_at: Some(Utc::now().max(started_at)),
        status: RunStatus::Failed,
        classes: Vec::new(),
        error: Some(e.to_string()),
        notices: Vec::new(),
    }
}

/// How long reading the ledger and counting overdue rows for the metrics file may take;
/// past it, the file is written without them (the last success then carried over from
/// the file it replaces).
const METRICS_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Writes the metrics file of `summary` when `metrics.textfile` is set; `None` when it
/// is not. With `read_db`, the ledger's facts and the overdue rows per class are read
/// first (each failure logged, the file then written without them). A failed write is
/// logged at ERROR and returned; it never fails the run itself (the caller decides the
/// exit code: `run --once` exits 1, the daemon goes on).
pub async fn write_metrics(
    cfg: &Config,
    summary: &RunSummary,
    read_db: bool,
) -> Option<MetricsWrite> {
    let path = cfg.metrics.as_ref()?.textfile.clone();
    let mut extra = MetricsExtra::default();
    if read_db {
        match tokio::time::timeout(METRICS_READ_TIMEOUT, read_metrics_extra(cfg)).await {
            Ok(x) => extra = x,
            Err(_elapsed) => tracing::warn!(
                run_id = summary.run_id,
                timeout_s = METRICS_READ_TIMEOUT.as_secs(),
                "reading the ledger and the overdue rows for the metrics file took too long; the file is written                  without them"
            ),
        }
    }
    // The write syncs the file to disk: off the runtime's worker threads.
    let written = {
        let path = path.clone();
        let summary = summary.clone();
        tokio::task::spawn_blocking(move || {
            let input = crate::ops::metrics::MetricsInput {
                summary: &summary,
                last_success: extra.last_success,
                overdue: extra.overdue.as_deref(),
                ledger_verified: extra.ledger_verified,
            };
            crate::ops::metrics::write_textfile(&path, &input)
        })
        .await
    };
    match written {
        Ok(Ok(())) => {
            tracing::info!(run_id = summary.run_id, path = %path.display(), "metrics file written");
            Some(MetricsWrite::Written(path))
        }
        Ok(Err(e)) => {
            tracing::error!(
                run_id = summary.run_id,
                path = %path.display(),
                error = %e,
                "the metrics file could not be written; monitoring still shows the previous run"
            );
            Some(MetricsWrite::Failed {
                path,
                error: e.to_string(),
            })
        }
        Err(join) => {
            tracing::error!(run_id = summary.run_id, path = %path.display(), error = %join, "writing the metrics file panicked");
            Some(MetricsWrite::Failed {
                path,
                error: join.to_string(),
            })
        }
    }
}

/// What the metrics file says beyond the summary, read from the database.
#[derive(Debug, Default)]
struct MetricsExtra {
    last_success: Option<DateTime<Utc>>,
    overdue: Option<Vec<(String, u64)>>,
    ledger_verified: Option<bool>,
}

async fn read_metrics_extra(cfg: &Config) -> MetricsExtra {
    let mut extra = MetricsExtra::default();
    let db = match Db::connect(cfg).await {
        Ok(db) => db,
        Err(e) => {
            tracing::warn!(error = %e, "cannot connect to read the ledger for the metrics file; it is written without it");
            return extra;
        }
    };
    match crate::ops::status::ledger_facts(&db).await {
        Ok(Some(f)) => {
            extra.last_success = f.last_success;
            extra.ledger_verified = Some(f.verified);
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the ledger for the metrics file"),
    }
    match engine::compliance(cfg, &db, Utc::now()).await {
        Ok(c) => {
            extra.overdue = Some(c.classes.into_iter().map(|k| (k.name, k.overdue)).collect());
        }
        Err(e) => tracing::warn!(error = %e, "cannot count the overdue rows for the metrics file"),
    }
    db.close().await;
    extra
}

async fn enforce(
    cfg: &Config,
    allow_large: bool,
    cancel: CancellationToken,
    now: chrono::DateTime<Utc>,
    progress: Progress,
) -> Result<RunSummary, EngineError> {
    let db = Db::connect(cfg).await?;
    let result = async {
        let prepared = engine::prepare(cfg, &db).await?;
        if cfg.safety.mode == Mode::Enforce {
            engine::check_clock(cfg, &db, Utc::now()).await?;
        }
        // The checks above touch nothing; from here on a run writes (migrations, the
        // ledger, the library's rows), so only one worker may go on. A dry-run `run`
        // writes the ledger too, so it takes the lock as well. A lost lock cancels the
        // run like SIGTERM does: the current batch commits, the run is interrupted.
        let run_cancel = cancel.child_token();
        let Some(lock) = RunLock::try_acquire(&db, run_cancel.clone()).await? else {
            tracing::info!("another Lethe worker holds the run lock: this run is skipped");
            return Ok(skipped(cfg, now));
        };
        tracing::debug!(lock = lock.describe(), "run lock taken");
        let opts = RunOptions {
            allow_large,
            now,
            cancel: run_cancel,
            progress,
        };
        let run = async {
            db.migrate().await?;
            engine::enforce_once(cfg, &db, &prepared, &opts).await
        }
        .await;
        // Released only once the run is closed in the ledger (or failed).
        let lost = lock.is_lost();
        lock.release().await;
        let mut summary = run?;
        if lost {
            summary.notices.push(
                "The run lock was lost during this run (the database connection holding it closed), so the run \
                 stopped after its current batch to keep a second worker from enforcing at the same time; the \
                 next run finishes the work."
                    .into(),
            );
        }
        Ok(summary)
    }
    .await
    .map_err(|e| match e {
        // The driver's text ("pool timed out while waiting for an open connection")
        // does not say which database, nor what became of the work.
        EngineError::Database(m) => EngineError::Database(format!(
            "the database {} failed during the run: {m}. Whatever was committed before stands, counted in the \
             ledger; the next run finishes the work",
            cfg.database.display_url
        )),
        other => other,
    });
    db.close().await;
    result
}

/// The summary of a run skipped because another worker holds the run lock.
fn skipped(cfg: &Config, now: chrono::DateTime<Utc>) -> RunSummary {
    RunSummary {
        run_id: None,
        mode: cfg.safety.mode,
        started_at: now,
        finished_at: Some(Utc::now().max(now)),
        status: RunStatus::Skipped,
        classes: Vec::new(),
        error: None,
        notices: vec![
            "Another Lethe worker holds the run lock: this run was skipped and wrote nothing."
                .into(),
        ],
    }
}

async fn deliver(cfg: &Config, summary: &RunSummary) -> Option<Delivery> {
    let ctx = report_context(cfg, summary).await;
    match report::deliver(&cfg.report, summary, &ctx).await {
        Ok(d) => {
            match &d {
                Delivery::Sent => tracing::info!(run_id = summary.run_id, "report sent"),
                Delivery::Outboxed(p) => {
                    tracing::info!(run_id = summary.run_id, path = %p.display(), "report left in the outbox")
                }
                Delivery::NotNeeded => {}
            }
            Some(d)
        }
        Err(e) => {
            tracing::error!(run_id = summary.run_id, error = %e, "report could not be delivered nor outboxed");
            None
        }
    }
}

/// How long reading the report's history from the ledger may take before the report
/// goes out without it.
const HISTORY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The report's history and audit hashes from the ledger: the last
/// [`report::HISTORY_RUNS`] runs up to this one, and this run's ledger hash and policy
/// SHA-256. A plan or a run that was never recorded (no `run_id`) gets none. Any error
/// (connecting, reading, or taking longer than [`HISTORY_TIMEOUT`]) is logged and the
/// report goes out without history: it never stops the report.
async fn report_context(cfg: &Config, summary: &RunSummary) -> report::ReportContext {
    let Some(run_id) = summary.run_id else {
        return report::ReportContext::default();
    };
    match tokio::time::timeout(HISTORY_TIMEOUT, read_report_context(cfg, run_id)).await {
        Ok(Ok(ctx)) => ctx,
        Ok(Err(e)) => {
            tracing::warn!(run_id, error = %e, "could not read the run history from the ledger; the report goes out without it");
            report::ReportContext::default()
        }
        Err(_elapsed) => {
            tracing::warn!(
                run_id,
                timeout_s = HISTORY_TIMEOUT.as_secs(),
                "reading the run history from the ledger took too long; the report goes out without it"
            );
            report::ReportContext::default()
        }
    }
}

async fn read_report_context(
    cfg: &Config,
    run_id: i64,
) -> Result<report::ReportContext, crate::db::DbError> {
    let db = Db::connect(cfg).await?;
    let entries = crate::ledger::entries(&db, None).await;
    db.close().await;
    let mut entries = entries?;
    entries.retain(|e| e.id <= run_id && e.kind == "run");
    let mut ctx = report::ReportContext::default();
    if let Some(current) = entries.iter().find(|e| e.id == run_id) {
        ctx.ledger_hash = current.hash.clone();
        ctx.policy_sha256 = Some(current.policy_sha256.clone()).filter(|h| !h.is_empty());
    }
    let skip = entries.len().saturating_sub(report::HISTORY_RUNS);
    for e in entries.iter().skip(skip) {
        match chrono::DateTime::parse_from_rfc3339(&e.started_at) {
            Ok(started) => ctx.history.push(report::HistoryPoint {
                run_id: e.id,
                started_at: started.with_timezone(&Utc),
                affected: u64::try_from(e.total_affected()).unwrap_or(0),
                status: e.status.clone(),
            }),
            Err(err) => tracing::warn!(
                run_id = e.id,
                error = %err,
                "a ledger entry's start time is not RFC 3339; it is left out of the report's history"
            ),
        }
    }
    Ok(ctx)
}
