//! The consent check of `lethe check`: settings of the library system that turn keeping
//! history from opt-in into opt-out, or that make a patron's choice not work as chosen.
//! Each finding says how many patrons it concerns, never who.
//!
//! The checks, per profile (the facts are in ILS-FACTS §4.1 for Koha, §1 for Evergreen):
//! - Koha: patron categories whose `categories.default_privacy` is `forever` give each new
//!   patron `borrowers.privacy = 0` ("keep my reading history without limit") without the
//!   patron choosing it: history kept by default is opt-out, against the ALA's guidance
//!   and Lethe's opt-in rule.
//! - Koha: patrons with `privacy = 2` ("never keep") while the `AnonymousPatron`
//!   preference is empty: Koha's own check-in anonymization then throws
//!   (`Koha::Exceptions::SysPref::NotSet`) and the history stays (about.pl warns alike);
//!   Lethe anonymizes such rows to NULL, but the library system keeps failing.
//! - Evergreen: patrons with `history.circ.retention_age` (or `history.hold.…`) but no
//!   matching `retention_start`: Evergreen only keeps history from the start date, so
//!   the patron's chosen period refers to nothing and the choice looks broken to them.

use sea_query::{Alias, Asterisk, Expr, ExprTrait, Func, Query, SelectStatement};

use crate::config::Config;
use crate::db::{Db, DbError};

/// One finding: how many patrons, and what it means.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    /// A stable name, e.g. `koha.default_privacy_forever`.
    pub check: &'static str,
    /// How many patrons it concerns (never who).
    pub patrons: u64,
    /// What it means and what to do, in a sentence or two.
    pub message: String,
}

fn a(s: &str) -> Alias {
    Alias::new(s)
}

fn count_of(q: SelectStatement) -> SelectStatement {
    let mut outer = Query::select();
    outer
        .expr_as(Func::count(Expr::col(Asterisk)), a("n"))
        .from_subquery(q, a("lethe_c"));
    outer
}

/// Koha: patrons whose category keeps history forever by default.
fn koha_forever() -> SelectStatement {
    let mut q = Query::select();
    q.column((a("b"), a("borrowernumber")))
        .from_as(a("borrowers"), a("b"))
        .inner_join(
            sea_query::TableRef::Table(a("categories").into(), Some(a("c").into())),
            Expr::col((a("c"), a("categorycode"))).equals((a("b"), a("categorycode"))),
        )
        .and_where(Expr::col((a("c"), a("default_privacy"))).eq("forever"));
    count_of(q)
}

/// Koha: patrons with privacy 2.
fn koha_never() -> SelectStatement {
    let mut q = Query::select();
    q.column(a("borrowernumber"))
        .from(a("borrowers"))
        .and_where(Expr::col(a("privacy")).eq(2));
    count_of(q)
}

/// Evergreen: patrons with a retention age setting and no start setting, for `kind`
/// (`circ` or `hold`).
fn evergreen_age_without_start(kind: &str) -> SelectStatement {
    let mut start = Query::select();
    start
        .expr(Expr::val(1))
        .from_as((a("actor"), a("usr_setting")), a("st"))
        .and_where(Expr::col((a("st"), a("usr"))).equals((a("s"), a("usr"))))
        .and_where(Expr::col((a("st"), a("name"))).eq(format!("history.{kind}.retention_start")));
    let mut q = Query::select();
    q.column((a("s"), a("usr")))
        .from_as((a("actor"), a("usr_setting")), a("s"))
        .and_where(Expr::col((a("s"), a("name"))).eq(format!("history.{kind}.retention_age")))
        .and_where(Expr::exists(start).not());
    count_of(q)
}

async fn count(db: &Db, q: &SelectStatement) -> Result<u64, DbError> {
    let row = db.read_row_i64(q).await?;
    Ok(u64::try_from(row.first().copied().flatten().unwrap_or(0)).unwrap_or(0))
}

/// Runs the checks of the config's profile (none for other profiles). Call after
/// [`crate::engine::prepare`], which has checked the schema; `anonymous_patron` is what
/// it read. Findings with zero patrons are left out.
///
/// # Errors
/// [`DbError`] (for instance a Koha version without `categories.default_privacy`).
pub async fn check(
    cfg: &Config,
    db: &Db,
    anonymous_patron: Option<i64>,
) -> Result<Vec<Finding>, DbError> {
    let mut out = Vec::new();
    match cfg.profile.as_deref() {
        Some("koha") => {
            let n = count(db, &koha_forever()).await?;
            out.push(Finding {
                check: "koha.default_privacy_forever",
                patrons: n,
                message: format!(
                    "{n} patrons are in categories whose default privacy is 'forever': Koha set their reading \
                     history to be kept without limit when their account was made, without their choice (opt-out, \
                     not opt-in). Set those categories' default privacy to 'default' and ask the patrons"
                ),
            });
            if anonymous_patron.is_none() && cfg.anonymous_patron.is_some() {
                let n = count(db, &koha_never()).await?;
                out.push(Finding {
                    check: "koha.never_without_anonymous_patron",
                    patrons: n,
                    message: format!(
                        "{n} patrons chose 'never keep my history' (privacy 2) but the AnonymousPatron preference \
                         is empty: Koha's own check-in anonymization fails for them. Set AnonymousPatron"
                    ),
                });
            }
        }
        Some("evergreen") => {
            for kind in ["circ", "hold"] {
                let n = count(db, &evergreen_age_without_start(kind)).await?;
                out.push(Finding {
                    check: if kind == "circ" {
                        "evergreen.circ_retention_age_without_start"
                    } else {
                        "evergreen.hold_retention_age_without_start"
                    },
                    patrons: n,
                    message: format!(
                        "{n} patrons have history.{kind}.retention_age but no history.{kind}.retention_start: \
                         Evergreen keeps no {kind} history for them, so the period they set does nothing"
                    ),
                });
            }
        }
        _ => {}
    }
    out.retain(|f| f.patrons > 0);
    Ok(out)
}
