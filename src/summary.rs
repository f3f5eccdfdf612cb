//! The outcome of a plan or a run: per class, what was eligible, changed and kept.
//!
//! These types are the JSON contract of `plan --json` and `run --once --json`
//! (see `DESIGN.md`), the input of the report, and what the ledger stores. They hold
//! counts, class and table names, cutoffs and run ids only: never patron data.

use chrono::{DateTime, FixedOffset, Utc};
use serde::{Deserialize, Serialize};

/// Whether a run changes data (`enforce`) or only counts and records (`dry-run`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Changes rows past their retention period.
    Enforce,
    /// Plans, records the run in the ledger, reports, and changes nothing.
    DryRun,
}

impl Mode {
    /// The name used in JSON, the ledger and the report: `enforce` or `dry-run`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::DryRun => "dry-run",
        }
    }
}

/// What a class of records does with a row past its retention period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// The row is deleted.
    Delete,
    /// The row stays (for statistics) but its patron link and other personal columns
    /// are rewritten by the class's column strategies.
    Anonymize,
    /// The row is handed to the library system's own purge function, one row per
    /// transaction (Evergreen `actor.usr_delete`: a patron row stays, scrubbed, and the
    /// patron's dependent rows go).
    Purge,
    /// Like anonymize, but the patron id is replaced by a keyed pseudonym (HMAC-SHA-256
    /// under a secret outside the YAML) instead of being removed, so that counts of
    /// distinct borrowers survive (library privacy guidance allows anonymous or
    /// aggregated data for analysis; Koha's own `pseudonymized_transactions` works alike).
    Pseudonymize,
    /// The row is counted into Lethe's monthly statistics table (`lethe_aggregates`: by
    /// month, library, item type, patron category and kind), then deleted, in the same
    /// transaction: only aggregated data survives (library privacy guidance allows it
    /// for analysis).
    Aggregate,
}

impl Action {
    /// `delete`, `anonymize`, `pseudonymize` or `purge`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Delete => "delete",
            Action::Anonymize => "anonymize",
            Action::Pseudonymize => "pseudonymize",
            Action::Aggregate => "aggregate",
            Action::Purge => "purge",
        }
    }
}

/// How a whole run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Every class finished.
    Ok,
    /// Another worker held the run lock; nothing was done.
    Skipped,
    /// At least one class failed.
    Failed,
    /// At least one class tripped the circuit breaker (and none failed).
    Tripped,
    /// A shutdown signal stopped the run between batches; committed batches stand.
    Interrupted,
}

impl RunStatus {
    /// The lower-case name used in JSON and the ledger.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Ok => "ok",
            RunStatus::Skipped => "skipped",
            RunStatus::Failed => "failed",
            RunStatus::Tripped => "tripped",
            RunStatus::Interrupted => "interrupted",
        }
    }
}

/// How one class ended within a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClassStatus {
    /// Finished (in a plan or dry run: counted).
    Ok,
    /// Not reached: the run was interrupted or stopped before this class.
    Skipped,
    /// An error stopped the class; committed batches stand, the error says why.
    Failed,
    /// The class would have changed more than `safety.max_fraction` of its table:
    /// nothing in it was changed.
    Tripped,
}

impl ClassStatus {
    /// The lower-case name used in JSON and the ledger.
    pub fn as_str(self) -> &'static str {
        match self {
            ClassStatus::Ok => "ok",
            ClassStatus::Skipped => "skipped",
            ClassStatus::Failed => "failed",
            ClassStatus::Tripped => "tripped",
        }
    }
}

/// Rows past their period that an exemption keeps, by reason. A row kept for several
/// reasons is counted once, under the first that applies in this order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    /// The patron chose to keep this history (Koha `borrowers.privacy = 0`).
    pub opt_in: u64,
    /// A legal hold names the patron.
    pub legal_hold: u64,
    /// Something is still out or owed: a current checkout, money owed either way, a
    /// pending hold.
    pub obligations: u64,
    /// A protected account: staff, a guarantor, the protected flag, the anonymous patron.
    pub protected: u64,
}

impl Kept {
    /// Sum over all reasons.
    pub fn total(&self) -> u64 {
        self.opt_in + self.legal_hold + self.obligations + self.protected
    }
}

/// One class's result in a plan or run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassSummary {
    /// The class name from the config, e.g. `circulation_history`.
    pub name: String,
    /// The library table the class works on, e.g. `old_issues`.
    pub table: String,
    /// `delete` or `anonymize`.
    pub action: Action,
    /// The cutoff instant: rows whose age column is before it are past their period.
    /// In the library's zone, RFC 3339.
    pub cutoff: DateTime<FixedOffset>,
    /// Rows the class would change now (at the start of the class, in a run).
    pub eligible: u64,
    /// Rows actually changed; 0 in a plan and in dry-run mode.
    pub affected: u64,
    /// Rows past their period kept by an exemption.
    pub kept: Kept,
    /// How the class ended.
    pub status: ClassStatus,
    /// Why the class failed or tripped: class, table and counts only, no patron data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A whole plan or run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// The ledger id of the run; `None` for a plan, which is not recorded.
    pub run_id: Option<i64>,
    /// `enforce` or `dry-run`.
    pub mode: Mode,
    /// When the run started, UTC.
    pub started_at: DateTime<Utc>,
    /// When the run ended, UTC; `None` for a plan.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// How the run ended.
    pub status: RunStatus,
    /// Per class, in config order.
    pub classes: Vec<ClassSummary>,
    /// Why the whole run failed, when it failed before or outside any class.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Things the director should hear about besides the counts, e.g. that the last
    /// enforced run is overdue (a missed run). No patron data.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notices: Vec<String>,
}

impl RunSummary {
    /// Total rows changed over all classes.
    pub fn total_affected(&self) -> u64 {
        self.classes.iter().map(|c| c.affected).sum()
    }
}
