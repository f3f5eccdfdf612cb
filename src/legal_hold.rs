//! Legal holds: a court order, a subpoena or an investigation can require that one
//! patron's records be kept. A hold is a row of Lethe's own table `lethe_legal_holds`
//! (the library system's patron id and a case reference); while it is open, every class
//! with a `patron:` column keeps that patron's rows, counted as `kept.legal_hold`.
//! Placing and releasing a hold are entries of the ledger's hash chain (kind
//! `legal-hold`), written in the same transaction as the hold itself, so an auditor can
//! see when each hold stood. The ledger entry names the hold and the case, never the
//! patron.
//!
//! A hold may carry an end date (`--until`): it stands through that day in the library's
//! time zone, and the first run after it ([`lapse_ended`]) releases it with a ledger
//! entry of its own (`lapsed`). Who placed and who released each hold (the operator's
//! login) is stored with it.
//!
//! Source of the rule: New York CPLR 4509 lets library records be disclosed "upon
//! subpoena, court order or where otherwise required by statute"; records under such an
//! order must not be destroyed while it stands.

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
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
    /// The last day it stands (`YYYY-MM-DD`, the library's time zone), if it has one.
    pub held_until: Option<String>,
    /// The login that placed it.
    pub placed_by: Option<String>,
    /// The login that released it (`lethe` when it lapsed at its end date).
    pub released_by: Option<String>,
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

fn event(action: &str, hold: i64, case_ref: &str, by: &str, until: Option<&str>) -> String {
    // serde_json's map keeps keys sorted: canonical without relying on insertion order.
    let mut v = serde_json::json!({ "action": action, "by": by, "case": case_ref, "hold": hold });
    if let Some(u) = until {
        v["until"] = serde_json::json!(u);
    }
    v.to_string()
}

/// The operator's login, for the record of who placed or released a hold: `SUDO_USER`
/// (the person behind `sudo`), else `USER`, else `LOGNAME`, else `unknown`; at most 100
/// printable characters.
pub fn operator() -> String {
    let name = ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.trim().is_empty()))
        .unwrap_or_else(|| "unknown".to_string());
    name.chars().filter(|c| !c.is_control()).take(100).collect()
}

/// Places a hold on `patron`, recording it in the ledger, by `by` (see [`operator`]),
/// standing through `until` (a local date) if given. Returns the hold's id and the ledger
/// entry's id. Lethe's tables are migrated first.
///
/// # Errors
/// [`HoldError::CaseRef`]; [`HoldError::Db`].
pub async fn place(
    db: &Db,
    patron: i64,
    case_ref: &str,
    until: Option<NaiveDate>,
    by: &str,
) -> Result<(i64, i64), HoldError> {
    let case_ref = case_ref.trim();
    if case_ref.is_empty()
        || case_ref.chars().count() > 100
        || case_ref.chars().any(char::is_control)
    {
        return Err(HoldError::CaseRef);
    }
    let until_text = until.map(|d| d.format("%Y-%m-%d").to_string());
    db.migrate().await?;
    let mut tx = db.begin().await?;
    let mut ins = Query::insert();
    ins.into_table(t("lethe_legal_holds"))
        .columns([
            t("patron"),
            t("case_ref"),
            t("placed_at"),
            t("held_until"),
            t("placed_by"),
        ])
        .values_panic([
            patron.into(),
            case_ref.into(),
            now().into(),
            until_text.clone().into(),
            by.into(),
        ]);
    let id = tx.insert_returning_id(&mut ins).await?;
    let entry = ledger::record_legal_hold_event(
        &mut tx,
        "placed",
        &event("placed", id, case_ref, by, until_text.as_deref()),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(hold = id, ledger_entry = entry, "legal hold placed");
    Ok((id, entry))
}

/// Releases the open hold `id`, by `by`, recording it in the ledger. Returns the ledger
/// entry's id.
///
/// # Errors
/// [`HoldError::NotOpen`]; [`HoldError::Db`].
pub async fn release(db: &Db, id: i64, by: &str) -> Result<i64, HoldError> {
    release_as(db, id, by, "released").await
}

/// Releases every open hold whose end date is before `today` (the library's local date
/// at the run's start), each with a `lapsed` ledger entry. Returns the ids released.
/// Called at the start of each enforcing run, before anything is counted.
///
/// # Errors
/// [`DbError`].
pub async fn lapse_ended(db: &Db, today: NaiveDate) -> Result<Vec<i64>, DbError> {
    let mut lapsed = Vec::new();
    for h in list(db, false).await? {
        let ended = h
            .held_until
            .as_deref()
            .and_then(|u| NaiveDate::parse_from_str(u, "%Y-%m-%d").ok())
            .is_some_and(|u| u < today);
        if ended {
            match release_as(db, h.id, "lethe", "lapsed").await {
                Ok(_) => lapsed.push(h.id),
                // Released meanwhile by someone else: nothing to do.
                Err(HoldError::NotOpen(_) | HoldError::CaseRef) => {}
                Err(HoldError::Db(e)) => return Err(e),
            }
        }
    }
    for id in &lapsed {
        tracing::info!(hold = id, "legal hold lapsed at its end date");
    }
    Ok(lapsed)
}

/// The library's local date at `at`.
pub fn local_date(at: DateTime<Utc>, tz: chrono_tz::Tz) -> NaiveDate {
    at.with_timezone(&tz).date_naive()
}

async fn release_as(db: &Db, id: i64, by: &str, action: &str) -> Result<i64, HoldError> {
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
        .value(t("released_by"), by)
        .and_where(Expr::col(t("id")).eq(id))
        .and_where(Expr::col(t("released_at")).is_null());
    tx.execute(&u).await?;
    let entry =
        ledger::record_legal_hold_event(&mut tx, action, &event(action, id, &case_ref, by, None))
            .await?;
    tx.commit().await?;
    tracing::info!(
        hold = id,
        ledger_entry = entry,
        action,
        "legal hold released"
    );
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
        t("held_until"),
        t("placed_by"),
        t("released_by"),
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
            held_until: r[5].text(),
            placed_by: r[6].text(),
            released_by: r[7].text(),
        })
        .collect())
}
