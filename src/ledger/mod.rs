//! The ledger: Lethe's record of every run in its own tables (`lethe_runs`,
//! `lethe_run_classes`). A run is opened before any change, each batch adds its count
//! to its class's row in the same transaction as the change itself (so after a crash
//! the ledger still equals what was done), and the run is closed with a SHA-256 hash
//! over its content and the previous closed run's hash (a hash chain an auditor can
//! recompute). Only counts, class and table names, cutoffs and ids are stored.

use chrono::{DateTime, SecondsFormat, Utc};
use sea_query::{Alias, Expr, ExprTrait, Order, Query};
use sha2::{Digest, Sha256};

pub mod chain;

pub use chain::{LedgerClass, LedgerEntry};

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

/// Records a change of the effective policy as a ledger entry of its own, sealed into
/// the chain, when `policy_json` differs from the policy of the latest entry. Returns
/// the new entry's id and the previous policy's SHA-256, or `None` when nothing changed
/// (or the ledger is empty: the first run records the first policy).
///
/// # Errors
/// [`DbError`].
pub async fn record_policy_change(
    db: &Db,
    policy_json: &str,
) -> Result<Option<(i64, String)>, DbError> {
    let policy_sha = hex::encode(Sha256::digest(policy_json.as_bytes()));
    let mut last = Query::select();
    last.column(t("policy_sha256"))
        .from(t("lethe_runs"))
        .and_where(Expr::col(t("kind")).is_not_in(["legal-hold", "index-created"]))
        .order_by(t("id"), Order::Desc)
        .limit(1);
    let mut tx = db.begin().await?;
    let previous = tx
        .fetch_opt_strings(&last)
        .await?
        .and_then(|mut r| r.pop().flatten());
    let Some(previous) = previous.filter(|p| *p != policy_sha) else {
        tx.commit().await?;
        return Ok(None);
    };
    let now = rfc3339(Utc::now());
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let mut ins = Query::insert();
    ins.into_table(t("lethe_runs"))
        .columns([
            t("kind"),
            t("host"),
            t("version"),
            t("mode"),
            t("started_at"),
            t("finished_at"),
            t("status"),
            t("policy_sha256"),
            t("policy"),
        ])
        .values_panic([
            "config-change".into(),
            host.into(),
            env!("CARGO_PKG_VERSION").into(),
            "-".into(),
            now.clone().into(),
            now.into(),
            "ok".into(),
            policy_sha.into(),
            policy_json.to_string().into(),
        ]);
    let id = tx.insert_returning_id(&mut ins).await?;
    seal(&mut tx, id).await?;
    tx.commit().await?;
    Ok(Some((id, previous)))
}

/// Appends a `legal-hold` entry to the chain inside the caller's transaction (the one
/// that places or releases the hold, so that the hold and its entry commit together).
/// `status` is `placed` or `released`; `event` is canonical JSON without the patron.
///
/// # Errors
/// [`DbError`].
pub async fn record_legal_hold_event(
    tx: &mut Tx,
    status: &str,
    event: &str,
) -> Result<i64, DbError> {
    record_event(tx, "legal-hold", status, event).await
}

/// Appends an `index-created` entry to the chain inside the caller's transaction:
/// `lethe check --create-indexes` created an index on a library table. `event` is
/// canonical JSON naming the class, table, columns and index (no patron data). Its
/// status is `ok`.
///
/// # Errors
/// [`DbError`].
pub async fn record_index_created(tx: &mut Tx, event: &str) -> Result<i64, DbError> {
    record_event(tx, "index-created", "ok", event).await
}

/// An event entry of `kind` (no run, no policy: the policy fields hold the hash of
/// nothing), sealed into the chain.
async fn record_event(tx: &mut Tx, kind: &str, status: &str, event: &str) -> Result<i64, DbError> {
    let now = rfc3339(Utc::now());
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let mut ins = Query::insert();
    ins.into_table(t("lethe_runs"))
        .columns([
            t("kind"),
            t("host"),
            t("version"),
            t("mode"),
            t("started_at"),
            t("finished_at"),
            t("status"),
            t("policy_sha256"),
            t("policy"),
            t("event"),
        ])
        .values_panic([
            kind.into(),
            host.into(),
            env!("CARGO_PKG_VERSION").into(),
            "-".into(),
            now.clone().into(),
            now.into(),
            status.into(),
            hex::encode(Sha256::digest(b"")).into(),
            String::new().into(),
            event.to_string().into(),
        ]);
    let id = tx.insert_returning_id(&mut ins).await?;
    seal(tx, id).await?;
    Ok(id)
}

/// Marks runs left `running` (their worker died: power loss, SIGKILL) as `interrupted`
/// and hashes them into the chain. Returns each such run's id and the rows its
/// committed batches changed, so the next report can tell the director.
///
/// # Errors
/// [`DbError`].
pub async fn close_stale_runs(db: &Db) -> Result<Vec<(i64, i64)>, DbError> {
    let mut closed = Vec::new();
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
        let mut tx = db.begin().await?;
        let changed = load_entries(&mut tx, Some(id), None)
            .await?
            .first()
            .map_or(0, LedgerEntry::total_affected);
        tx.commit().await?;
        closed.push((id, changed));
    }
    Ok(closed)
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
    let Some(mut entry) = load_entries(tx, Some(run_id), None).await?.pop() else {
        return Ok(());
    };
    entry.prev_hash = prev_hash.clone();
    let hash = chain::entry_hash(&entry);
    let mut u = Query::update();
    u.table(t("lethe_runs"))
        .value(t("prev_hash"), prev_hash)
        .value(t("hash"), hash)
        .and_where(Expr::col(t("id")).eq(run_id));
    tx.execute(&u).await?;
    Ok(())
}

const RUN_COLUMNS: [&str; 14] = [
    "id",
    "kind",
    "host",
    "version",
    "mode",
    "started_at",
    "finished_at",
    "status",
    "policy_sha256",
    "policy",
    "error",
    "prev_hash",
    "hash",
    "event",
];

const CLASS_COLUMNS: [&str; 15] = [
    "run_id",
    "position",
    "class",
    "table_name",
    "action",
    "cutoff",
    "eligible",
    "affected",
    "kept_opt_in",
    "kept_legal_hold",
    "kept_obligations",
    "kept_protected",
    "batches",
    "status",
    "error",
];

/// Reads ledger entries in id order: one run (`only`), or all runs started at or after
/// `since` (RFC 3339 text compares in time order: every stored time is UTC with the
/// same precision).
async fn load_entries(
    tx: &mut Tx,
    only: Option<i64>,
    since: Option<&str>,
) -> Result<Vec<LedgerEntry>, DbError> {
    let mut q = Query::select();
    q.columns(RUN_COLUMNS.map(t))
        .from(t("lethe_runs"))
        .order_by(t("id"), Order::Asc);
    if let Some(id) = only {
        q.and_where(Expr::col(t("id")).eq(id));
    }
    if let Some(since) = since {
        q.and_where(Expr::col(t("started_at")).gte(since));
    }
    let runs = tx.fetch_cells(&q).await?;
    let mut c = Query::select();
    c.columns(CLASS_COLUMNS.map(t))
        .from(t("lethe_run_classes"))
        .order_by(t("run_id"), Order::Asc)
        .order_by(t("position"), Order::Asc);
    if let Some(id) = only {
        c.and_where(Expr::col(t("run_id")).eq(id));
    }
    let mut classes: std::collections::BTreeMap<i64, Vec<LedgerClass>> = Default::default();
    for r in tx.fetch_cells(&c).await? {
        let text = |i: usize| r[i].text().unwrap_or_default();
        classes.entry(r[0].int()).or_default().push(LedgerClass {
            position: r[1].int(),
            class: text(2),
            table: text(3),
            action: text(4),
            cutoff: text(5),
            eligible: r[6].int(),
            affected: r[7].int(),
            kept_opt_in: r[8].int(),
            kept_legal_hold: r[9].int(),
            kept_obligations: r[10].int(),
            kept_protected: r[11].int(),
            batches: r[12].int(),
            status: text(13),
            error: r[14].text(),
        });
    }
    Ok(runs
        .into_iter()
        .map(|r| {
            let id = r[0].int();
            LedgerEntry {
                id,
                kind: r[1].text().unwrap_or_default(),
                host: r[2].text().unwrap_or_default(),
                version: r[3].text().unwrap_or_default(),
                mode: r[4].text().unwrap_or_default(),
                started_at: r[5].text().unwrap_or_default(),
                finished_at: r[6].text(),
                status: r[7].text().unwrap_or_default(),
                policy_sha256: r[8].text().unwrap_or_default(),
                policy: r[9].text().unwrap_or_default(),
                error: r[10].text(),
                event: r[13].text(),
                classes: classes.remove(&id).unwrap_or_default(),
                prev_hash: r[11].text(),
                hash: r[12].text(),
            }
        })
        .collect())
}

/// Every ledger entry (run) in id order, optionally only those started at or after
/// `since` (UTC).
///
/// # Errors
/// [`DbError`].
pub async fn entries(db: &Db, since: Option<DateTime<Utc>>) -> Result<Vec<LedgerEntry>, DbError> {
    let mut tx = db.begin().await?;
    let since = since.map(rfc3339);
    let out = load_entries(&mut tx, None, since.as_deref()).await?;
    tx.commit().await?;
    Ok(out)
}

/// The last run in `enforce` mode that ended `ok`: its id and start (RFC 3339 UTC).
/// `None` when there is none, or when Lethe's tables do not exist yet.
///
/// # Errors
/// [`DbError`].
pub async fn last_enforced(db: &Db) -> Result<Option<(i64, DateTime<Utc>)>, DbError> {
    let runs = crate::config::TableName::new("lethe_runs").map_err(DbError::Schema)?;
    if db.columns(&runs).await?.is_empty() {
        return Ok(None);
    }
    let mut q = Query::select();
    q.columns([t("id"), t("started_at")])
        .from(t("lethe_runs"))
        .and_where(Expr::col(t("mode")).eq("enforce"))
        .and_where(Expr::col(t("status")).eq("ok"))
        .order_by(t("id"), Order::Desc)
        .limit(1);
    let mut tx = db.begin().await?;
    let row = tx.fetch_cells(&q).await?;
    tx.commit().await?;
    Ok(row.first().and_then(|r| {
        let started = DateTime::parse_from_rfc3339(&r.get(1)?.text()?).ok()?;
        Some((r.first()?.int(), started.with_timezone(&Utc)))
    }))
}

/// One ledger entry.
///
/// # Errors
/// [`DbError`].
pub async fn entry(db: &Db, id: i64) -> Result<Option<LedgerEntry>, DbError> {
    let mut tx = db.begin().await?;
    let out = load_entries(&mut tx, Some(id), None).await?.pop();
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
