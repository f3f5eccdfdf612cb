//! Legal holds: a court order, a subpoena or an investigation can require that one
//! patron's records be kept. A hold is a row of Lethe's own table `lethe_legal_holds`
//! (the library system's patron id and a case reference); while it is open, every class
//! with a `patron:` column keeps that patron's rows, counted as `kept.legal_hold`.
//! Placing and releasing a hold are entries of the ledger's hash chain (kind
//! `legal-hold`), written in the same transaction as the hold itself, so an auditor can
//! see when each hold stood. The ledger entry names the hold and the case, never the
//! patron.
//!
//! Source of the rule: New York CPLR 4509 lets library records be disclosed "upon
//! subpoena, court order or where otherwise required by statute"; records under such an
//! order must not be destroyed while it stands.

use chrono::{SecondsFormat, Utc};
use sea_query::{Alias, Expr, ExprTrait, Order, Query};

use crate::db::{Db, DbError};
use crate::ledger;

/// One legal hold.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LegalHold {
    /// The hold's id.
    pub id: i64,
    /// The library system's patron id (Koha `borrowernumber`, Evergreen `actor.usr.id`).
    pub patron: i64,
    /// The case reference given when it was placed.
    pub case_ref: String,
    /// When it was placed, RFC 3339 UTC.
    pub placed_at: String,
    /// When it was released, RFC 3339 UTC; `None` while it stands.
    pub released_at: Option<String>,
}

/// Why a hold could not be placed or released.
#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    /// The case reference is empty, too long or has control characters.
    #[error(
        "the case reference must be 1 to 100 printable characters (a docket or reference number, not a name)"
    )]
    CaseRef,
    /// No open hold has that id.
    #[error("no open legal hold with id {0}")]
    NotOpen(i64),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

fn t(s: &str) -> Alias {
    Alias::new(s)
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn event(action: &str, hold: i64, case_ref: &str) -> String {
    // Keys in alphabetical order: canonical without relying on map ordering.
    serde_json::json!({ "action": action, "case": case_ref, "hold": hold }).to_string()
}

/// Places a hold on `patron`, recording it in the ledger. Returns the hold's id and the
/// ledger entry's id. Lethe's tables are migrated first.
///
/// # Errors
/// [`HoldError::CaseRef`]; [`HoldError::Db`].
pub async fn place(db: &Db, patron: i64, case_ref: &str) -> Result<(i64, i64), HoldError> {
    let case_ref = case_ref.trim();
    if case_ref.is_empty()
        || case_ref.chars().count() > 100
        || case_ref.chars().any(char::is_control)
    {
        return Err(HoldError::CaseRef);
    }
    db.migrate().await?;
    let mut tx = db.begin().await?;
    let mut ins = Query::insert();
    ins.into_table(t("lethe_legal_holds"))
        .columns([t("patron"), t("case_ref"), t("placed_at")])
        .values_panic([patron.into(), case_ref.into(), now().into()]);
    let id = tx.insert_returning_id(&mut ins).await?;
    let entry =
        ledger::record_legal_hold_event(&mut tx, "placed", &event("placed", id, case_ref)).await?;
    tx.commit().await?;
    tracing::info!(hold = id, ledger_entry = entry, "legal hold placed");
    Ok((id, entry))
}

/// Releases the open hold `id`, recording it in the ledger. Returns the ledger entry's
/// id.
///
/// # Errors
/// [`HoldError::NotOpen`]; [`HoldError::Db`].
pub async fn release(db: &Db, id: i64) -> Result<i64, HoldError> {
    db.migrate().await?;
    let mut tx = db.begin().await?;
    let mut q = Query::select();
    q.column(t("case_ref"))
        .from(t("lethe_legal_holds"))
        .and_where(Expr::col(t("id")).eq(id))
        .and_where(Expr::col(t("released_at")).is_null());
    let case_ref = tx
        .fetch_opt_strings(&q)
        .await?
        .and_then(|mut r| r.pop().flatten())
        .ok_or(HoldError::NotOpen(id))?;
    let mut u = Query::update();
    u.table(t("lethe_legal_holds"))
        .value(t("released_at"), now())
        .and_where(Expr::col(t("id")).eq(id))
        .and_where(Expr::col(t("released_at")).is_null());
    tx.execute(&u).await?;
    let entry =
        ledger::record_legal_hold_event(&mut tx, "released", &event("released", id, &case_ref))
            .await?;
    tx.commit().await?;
    tracing::info!(hold = id, ledger_entry = entry, "legal hold released");
    Ok(entry)
}

/// The holds, oldest first; released ones too when `all`.
///
/// # Errors
/// [`DbError`].
pub async fn list(db: &Db, all: bool) -> Result<Vec<LegalHold>, DbError> {
    db.migrate().await?;
    let mut q = Query::select();
    q.columns([
        t("id"),
        t("patron"),
        t("case_ref"),
        t("placed_at"),
        t("released_at"),
    ])
    .from(t("lethe_legal_holds"))
    .order_by(t("id"), Order::Asc);
    if !all {
        q.and_where(Expr::col(t("released_at")).is_null());
    }
    let mut tx = db.begin().await?;
    let rows = tx.fetch_cells(&q).await?;
    tx.commit().await?;
    Ok(rows
        .into_iter()
        .map(|r| LegalHold {
            id: r[0].int(),
            patron: r[1].int(),
            case_ref: r[2].text().unwrap_or_default(),
            placed_at: r[3].text().unwrap_or_default(),
            released_at: r[4].text(),
        })
        .collect())
}
