//! One whole unit of work, as the CLI and the daemon run it: connect, check the schema
//! and the anonymous patron, compare clocks, migrate Lethe's own tables, enforce once,
//! and deliver the report (or leave it in the outbox).

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::db::Db;
use crate::engine::{self, EngineError, RunOptions};
use crate::report::{self, Delivery};
use crate::summary::{Mode, RunStatus, RunSummary};

/// The outcome of [`run_once`].
#[derive(Debug)]
pub struct JobOutcome {
    /// What the run did.
    pub summary: RunSummary,
    /// Where the report went; `None` when delivering failed outright (logged).
    pub delivery: Option<Delivery>,
}

/// Runs the job once.
///
/// Nothing is written before the schema, the anonymous patron and the clock have been
/// checked. When the run fails before any class (database unreachable, ledger not
/// writable), a failure summary is still reported so the director hears of it.
///
/// # Errors
/// [`EngineError`] for what stopped the run before it began (mismatch, clock,
/// database); the failure report has been attempted.
pub async fn run_once(
    cfg: &Config,
    allow_large: bool,
    cancel: CancellationToken,
) -> Result<JobOutcome, EngineError> {
    let now = Utc::now();
    match enforce(cfg, allow_large, cancel, now).await {
        Ok(summary) => {
            let delivery = deliver(cfg, &summary).await;
            Ok(JobOutcome { summary, delivery })
        }
        Err(e) => {
            let summary = RunSummary {
                run_id: None,
                mode: cfg.safety.mode,
                started_at: now,
                finished_at: Some(Utc::now()),
                status: RunStatus::Failed,
                classes: Vec::new(),
                error: Some(e.to_string()),
                notices: Vec::new(),
            };
            let _ = deliver(cfg, &summary).await;
            Err(e)
        }
    }
}

async fn enforce(
    cfg: &Config,
    allow_large: bool,
    cancel: CancellationToken,
    now: chrono::DateTime<Utc>,
) -> Result<RunSummary, EngineError> {
    let db = Db::connect(cfg).await?;
    let result = async {
        let prepared = engine::prepare(cfg, &db).await?;
        if cfg.safety.mode == Mode::Enforce {
            engine::check_clock(cfg, &db, Utc::now()).await?;
        }
        db.migrate().await?;
        let opts = RunOptions {
            allow_large,
            now,
            cancel,
        };
        engine::enforce_once(cfg, &db, &prepared, &opts).await
    }
    .await;
    db.close().await;
    result
}

async fn deliver(cfg: &Config, summary: &RunSummary) -> Option<Delivery> {
    match report::deliver(&cfg.report, summary).await {
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
