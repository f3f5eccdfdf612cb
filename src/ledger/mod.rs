//! The ledger: Lethe's record of every run in its own tables (`lethe_runs`,
//! `lethe_run_classes`). A run is opened before any change, each batch adds its count
//! to its class's row in the same transaction as the change itself (so after a crash
//! the ledger still equals what was done), and the run is closed with a SHA-256 hash
//! over its content and the previous closed run's hash (a hash chain an auditor can
//! recompute). Only counts, class and table names, cutoffs and ids are stored.

use chrono::{DateTime, SecondsFormat, Utc};
use sea_query::{Alias, Expr, ExprTrait, Order, Query};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::db::{Db, DbError, Tx};
use crate::summary::{ClassSummary, Mode, RunStatus};

fn t(name: &str) -> Alias {
    Alias::new(name)
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Opens a run: closes any run left `running` by a worker that died (as
/// `interrupted`, hashed into the chain), then inserts the new run. Returns its id.
///
/// # Errors
/// [`DbError`] from the database.
pub async fn open_run(
    db: &Db,
    mode: Mode,
    started_at: DateTime<Utc>,
    policy_json: &str,
) -> Result<i64, DbError> {
    close_stale_runs(db).await?;
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let policy_sha = hex::encode(Sha256::digest(policy_json.as_bytes()));
    let mut ins = Query::insert();
    ins.into_table(t("lethe_runs"))
        .columns([
            t("host"),
            t("version"),
            t("mode"),
            t("started_at"),
            t("status"),
            t("policy_sha256"),
            t("policy"),
        ])
        .values_panic([
            host.into(),
            env!("CARGO_PKG_VERSION").into(),
            mode.as_str().into(),
            rfc3339(started_at).into(),
            "running".into(),
            policy_sha.into(),
            policy_json.to_string().into(),
        ]);
    let mut tx = db.begin().await?;
    let id = tx.insert_returning_id(&mut ins).await?;
    tx.commit().await?;
    Ok(id)
}

/// Marks runs left `running` (their worker died) as `interrupted` and hashes them.
async fn close_stale_runs(db: &Db) -> Result<(), DbError> {
    let mut q = Query::select();
    q.expr(Expr::col(t("id")))
        .from(t("lethe_runs"))
        .and_where(Expr::col(t("status")).eq("running"))
        .order_by(t("id"), Order::Asc);
    let ids = {
        let mut tx = db.begin().await?;
        let ids = tx.fetch_i64s(&q).await?;
        tx.commit().await?;
        ids
    };
    for id in ids {
        let mut tx = db.begin().await?;
        let mut u = Query::update();
        u.table(t("lethe_run_classes"))
            .value(t("status"), "failed")
            .value(
                t("error"),
                "interrupted: the worker stopped during this class",
            )
            .and_where(Expr::col(t("run_id")).eq(id))
            .and_where(Expr::col(t("status")).eq("running"));
        tx.execute(&u).await?;
        let mut u = Query::update();
        u.table(t("lethe_runs"))
            .value(t("status"), RunStatus::Interrupted.as_str())
            .value(t("finished_at"), rfc3339(Utc::now()))
            .value(t("error"), "the worker stopped before closing this run")
            .and_where(Expr::col(t("id")).eq(id));
        tx.execute(&u).await?;
        seal(&mut tx, id).await?;
        tx.commit().await?;
        tracing::warn!(
            run_id = id,
            "an earlier run did not close: recorded as interrupted"
        );
    }
    Ok(())
}

/// Inserts a class's row for a run, with its counts from the plan, status `running`.
///
/// # Errors
/// [`DbError`].
pub async fn open_class(
    db: &Db,
    run_id: i64,
    position: usize,
    c: &ClassSummary,
) -> Result<(), DbError> {
    let mut ins = Query::insert();
    ins.into_table(t("lethe_run_classes"))
        .columns([
            t("run_id"),
            t("position"),
            t("class"),
            t("table_name"),
            t("action"),
            t("cutoff"),
            t("eligible"),
            t("status"),
        ])
        .values_panic([
            run_id.into(),
            (position as i64).into(),
            c.name.clone().into(),
            c.table.clone().into(),
            c.action.as_str().into(),
            c.cutoff.to_rfc3339().into(),
            (c.eligible as i64).into(),
            "running".into(),
        ]);
    let mut tx = db.begin().await?;
    tx.execute(&ins).await?;
    tx.commit().await?;
    Ok(())
}

/// Adds one batch's count to the class's row, inside the batch's own transaction.
///
/// # Errors
/// [`DbError`]; the caller rolls the batch back.
pub async fn add_batch(
    tx: &mut Tx,
    run_id: i64,
    class: &str,
    affected: u64,
) -> Result<(), DbError> {
    let mut u = Query::update();
    u.table(t("lethe_run_classes"))
        .value(t("affected"), Expr::col(t("affected")).add(affected as i64))
        .value(t("batches"), Expr::col(t("batches")).add(1))
        .and_where(Expr::col(t("run_id")).eq(run_id))
        .and_where(Expr::col(t("class")).eq(class));
    tx.execute(&u).await?;
    Ok(())
}

/// Records a class's final counts and status (`affected` is already the sum of its
/// batches and is not overwritten).
///
/// # Errors
/// [`DbError`].
pub async fn close_class(db: &Db, run_id: i64, c: &ClassSummary) -> Result<(), DbError> {
    let mut u = Query::update();
    u.table(t("lethe_run_classes"))
        .value(t("eligible"), c.eligible as i64)
        .value(t("kept_opt_in"), c.kept.opt_in as i64)
        .value(t("kept_legal_hold"), c.kept.legal_hold as i64)
        .value(t("kept_obligations"), c.kept.obligations as i64)
        .value(t("kept_protected"), c.kept.protected as i64)
        .value(t("status"), c.status.as_str())
        .value(t("error"), c.error.clone())
        .and_where(Expr::col(t("run_id")).eq(run_id))
        .and_where(Expr::col(t("class")).eq(c.name.clone()));
    let mut tx = db.begin().await?;
    tx.execute(&u).await?;
    tx.commit().await?;
    Ok(())
}

/// Reads the `affected` count the ledger holds for a class of a run: the sum of its
/// committed batches.
///
/// # Errors
/// [`DbError`].
pub async fn affected(db: &Db, run_id: i64, class: &str) -> Result<u64, DbError> {
    let mut q = Query::select();
    q.expr(Expr::col(t("affected")))
        .from(t("lethe_run_classes"))
        .and_where(Expr::col(t("run_id")).eq(run_id))
        .and_where(Expr::col(t("class")).eq(class));
    let row = db.read_row_i64(&q).await?;
    Ok(row.first().copied().flatten().unwrap_or(0).clamp_nonneg())
}

/// Closes a run with its status and hashes it into the chain.
///
/// # Errors
/// [`DbError`].
pub async fn close_run(
    db: &Db,
    run_id: i64,
    status: RunStatus,
    finished_at: DateTime<Utc>,
    error: Option<&str>,
) -> Result<(), DbError> {
    let mut tx = db.begin().await?;
    let mut u = Query::update();
    u.table(t("lethe_runs"))
        .value(t("status"), status.as_str())
        .value(t("finished_at"), rfc3339(finished_at))
        .value(t("error"), error.map(str::to_string))
        .and_where(Expr::col(t("id")).eq(run_id));
    tx.execute(&u).await?;
    seal(&mut tx, run_id).await?;
    tx.commit().await?;
    Ok(())
}

/// The canonical content of a run that its hash covers.
#[derive(Debug, Serialize)]
struct Canonical {
    id: i64,
    host: Option<String>,
    version: Option<String>,
    mode: Option<String>,
    started_at: Option<String>,
    finished_at: Option<String>,
    status: Option<String>,
    policy_sha256: Option<String>,
    error: Option<String>,
    classes: Vec<Vec<Option<String>>>,
    prev_hash: Option<String>,
}

/// Computes and stores the run's hash over its canonical content and the previous
/// sealed run's hash.
async fn seal(tx: &mut Tx, run_id: i64) -> Result<(), DbError> {
    let mut prev = Query::select();
    prev.column(t("hash"))
        .from(t("lethe_runs"))
        .and_where(Expr::col(t("id")).lt(run_id))
        .and_where(Expr::col(t("hash")).is_not_null())
        .order_by(t("id"), Order::Desc)
        .limit(1);
    let prev_hash = tx
        .fetch_opt_strings(&prev)
        .await?
        .and_then(|mut r| r.pop().flatten());

    let mut run = Query::select();
    run.columns([
        t("host"),
        t("version"),
        t("mode"),
        t("started_at"),
        t("finished_at"),
        t("status"),
        t("policy_sha256"),
        t("error"),
    ])
    .from(t("lethe_runs"))
    .and_where(Expr::col(t("id")).eq(run_id));
    let r = tx.fetch_opt_strings(&run).await?.unwrap_or_default();
    let get = |i: usize| r.get(i).cloned().flatten();

    let mut classes = Vec::new();
    let mut pos = 0i64;
    loop {
        let mut q = Query::select();
        q.columns([
            t("class"),
            t("table_name"),
            t("action"),
            t("cutoff"),
            t("status"),
            t("error"),
        ])
        .from(t("lethe_run_classes"))
        .and_where(Expr::col(t("run_id")).eq(run_id))
        .and_where(Expr::col(t("position")).eq(pos));
        let Some(mut row) = tx.fetch_opt_strings(&q).await? else {
            break;
        };
        let mut n = Query::select();
        n.columns([
            t("eligible"),
            t("affected"),
            t("kept_opt_in"),
            t("kept_legal_hold"),
            t("kept_obligations"),
            t("kept_protected"),
            t("batches"),
        ])
        .from(t("lethe_run_classes"))
        .and_where(Expr::col(t("run_id")).eq(run_id))
        .and_where(Expr::col(t("position")).eq(pos));
        for v in tx.fetch_row_i64(&n).await? {
            row.push(v.map(|x| x.to_string()));
        }
        classes.push(row);
        pos += 1;
    }
    let canonical = Canonical {
        id: run_id,
        host: get(0),
        version: get(1),
        mode: get(2),
        started_at: get(3),
        finished_at: get(4),
        status: get(5),
        policy_sha256: get(6),
        error: get(7),
        classes,
        prev_hash: prev_hash.clone(),
    };
    let bytes = serde_json::to_vec(&canonical).unwrap_or_default();
    let hash = hex::encode(Sha256::digest(&bytes));
    let mut u = Query::update();
    u.table(t("lethe_runs"))
        .value(t("prev_hash"), prev_hash)
        .value(t("hash"), hash)
        .and_where(Expr::col(t("id")).eq(run_id));
    tx.execute(&u).await?;
    Ok(())
}

/// One closed run as the ledger holds it, for `plan`'s comparison and for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerRun {
    /// The run id.
    pub id: i64,
    /// Its status.
    pub status: String,
    /// Per class: name and affected.
    pub affected: Vec<(String, u64)>,
}

/// Lists runs, oldest first, with their per-class `affected` counts.
///
/// # Errors
/// [`DbError`].
pub async fn runs(db: &Db) -> Result<Vec<LedgerRun>, DbError> {
    let mut q = Query::select();
    q.expr(Expr::col(t("id")))
        .from(t("lethe_runs"))
        .order_by(t("id"), Order::Asc);
    let mut tx = db.begin().await?;
    let ids = tx.fetch_i64s(&q).await?;
    let mut out = Vec::new();
    for id in ids {
        let mut s = Query::select();
        s.column(t("status"))
            .from(t("lethe_runs"))
            .and_where(Expr::col(t("id")).eq(id));
        let status = tx
            .fetch_opt_strings(&s)
            .await?
            .and_then(|mut r| r.pop().flatten())
            .unwrap_or_default();
        let mut affected = Vec::new();
        let mut pos = 0i64;
        loop {
            let mut c = Query::select();
            c.column(t("class"))
                .from(t("lethe_run_classes"))
                .and_where(Expr::col(t("run_id")).eq(id))
                .and_where(Expr::col(t("position")).eq(pos));
            let Some(name) = tx
                .fetch_opt_strings(&c)
                .await?
                .and_then(|mut r| r.pop().flatten())
            else {
                break;
            };
            let mut a = Query::select();
            a.column(t("affected"))
                .from(t("lethe_run_classes"))
                .and_where(Expr::col(t("run_id")).eq(id))
                .and_where(Expr::col(t("position")).eq(pos));
            let n = tx
                .fetch_row_i64(&a)
                .await?
                .first()
                .copied()
                .flatten()
                .unwrap_or(0);
            affected.push((name, n.clamp_nonneg()));
            pos += 1;
        }
        out.push(LedgerRun {
            id,
            status,
            affected,
        });
    }
    tx.commit().await?;
    Ok(out)
}

/// Counts come back as `i64`; a negative count would be corruption, read as 0.
trait NonNeg {
    fn clamp_nonneg(self) -> u64;
}

impl NonNeg for i64 {
    fn clamp_nonneg(self) -> u64 {
        u64::try_from(self).unwrap_or(0)
    }
}
