//! The hash chain over ledger entries, and its verification: online against the
//! database, or offline against an exported file, with the same code.
//!
//! An entry's hash is the SHA-256 of its canonical content: the JSON serialization of
//! [`LedgerEntry`] without its own `hash` field (fields in declaration order, classes in
//! position order), which includes `prev_hash`, the hash of the previous sealed entry.
//! Altering any field changes the hash; removing or reordering entries breaks a
//! `prev_hash` link.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One class of a run, as the ledger holds it: counts, names and cutoff only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerClass {
    /// Order within the run, from 0.
    pub position: i64,
    /// Class name.
    pub class: String,
    /// The library table.
    pub table: String,
    /// `delete` or `anonymize`.
    pub action: String,
    /// Cutoff, RFC 3339 in the library's zone.
    pub cutoff: String,
    /// Rows eligible.
    pub eligible: i64,
    /// Rows changed: the sum of committed batches.
    pub affected: i64,
    /// Kept: patron opt-in.
    pub kept_opt_in: i64,
    /// Kept: legal hold.
    pub kept_legal_hold: i64,
    /// Kept: open obligations.
    pub kept_obligations: i64,
    /// Kept: protected accounts.
    pub kept_protected: i64,
    /// Committed batch transactions.
    pub batches: i64,
    /// `ok`, `skipped`, `failed`, `tripped` (or `running` while open).
    pub status: String,
    /// Why it failed or tripped (no patron data).
    pub error: Option<String>,
}

/// One entry in the ledger: a run, or a change of the effective policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// Entry id (increasing).
    pub id: i64,
    /// `run`; `config-change`: the effective policy changed since the previous entry;
    /// `legal-hold`: a legal hold was placed or released; `index-created`: `lethe check
    /// --create-indexes` created an index on a library table.
    pub kind: String,
    /// Host that ran it.
    pub host: String,
    /// Lethe version.
    pub version: String,
    /// `enforce` or `dry-run`.
    pub mode: String,
    /// Start, RFC 3339 UTC.
    pub started_at: String,
    /// End, RFC 3339 UTC; `None` while running.
    pub finished_at: Option<String>,
    /// `running`, `ok`, `failed`, `tripped`, `interrupted`.
    pub status: String,
    /// SHA-256 (hex) of `policy`.
    pub policy_sha256: String,
    /// The effective policy the run enforced: canonical JSON, no secrets.
    pub policy: String,
    /// Why the run failed, if it did.
    pub error: Option<String>,
    /// For a `legal-hold` entry: the event as canonical JSON (`{"action":"placed",
    /// "case":…, "hold":…}`; never the patron); for `index-created`, `{"class":…,
    /// "columns":[…], "index":…, "table":…}`. Absent for other entries, so that the
    /// hashes of entries written before this field existed are unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// Per class.
    pub classes: Vec<LedgerClass>,
    /// Hash of the previous sealed entry; `None` for the first.
    pub prev_hash: Option<String>,
    /// This entry's hash; `None` while the run is open.
    pub hash: Option<String>,
}

impl LedgerEntry {
    /// Rows changed over all classes.
    pub fn total_affected(&self) -> i64 {
        self.classes.iter().map(|c| c.affected).sum()
    }
}

/// The hash an entry should carry: SHA-256 (hex) of its canonical content.
pub fn entry_hash(e: &LedgerEntry) -> String {
    let mut canonical = e.clone();
    canonical.hash = None;
    // Serializing plain strings and integers cannot fail.
    let bytes = serde_json::to_vec(&canonical).unwrap_or_default();
    hex::encode(Sha256::digest(&bytes))
}

/// Where and how the chain is broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ledger entry {id}: {what}")]
pub struct ChainBroken {
    /// The first entry found wrong.
    pub id: i64,
    /// What is wrong with it.
    pub what: String,
}

/// Verifies entries in the order given (id order), the first having no predecessor.
/// Returns the number of sealed entries verified. An open (running) entry is allowed
/// only as the last one.
///
/// # Errors
/// [`ChainBroken`] naming the first entry that was altered, or whose link shows that an
/// entry before it was removed or that entries were reordered.
pub fn verify(entries: &[LedgerEntry]) -> Result<usize, ChainBroken> {
    verify_after(entries, None)
}

/// [`verify`] for entries whose first one follows an entry with hash `anchor` (not
/// among them).
fn verify_after(entries: &[LedgerEntry], anchor: Option<&str>) -> Result<usize, ChainBroken> {
    let broken = |id: i64, what: &str| ChainBroken {
        id,
        what: what.to_string(),
    };
    let mut prev_hash = anchor;
    let mut prev_id: Option<i64> = None;
    let mut verified = 0;
    for (i, e) in entries.iter().enumerate() {
        if let Some(p) = prev_id {
            if e.id <= p {
                return Err(broken(e.id, &format!("out of order: it follows entry {p}")));
            }
        }
        prev_id = Some(e.id);
        let Some(hash) = e.hash.as_deref() else {
            if e.status == "running" && i + 1 == entries.len() {
                continue;
            }
            return Err(broken(
                e.id,
                "has no hash: it was never sealed, or its hash was removed",
            ));
        };
        if e.prev_hash.as_deref() != prev_hash {
            return Err(broken(
                e.id,
                match prev_hash {
                    None => {
                        "its link points to an entry that is not there: an earlier entry was removed"
                    }
                    Some(_) => {
                        "its link does not match the entry before it: an entry was removed or reordered"
                    }
                },
            ));
        }
        if hex::encode(Sha256::digest(e.policy.as_bytes())) != e.policy_sha256 {
            return Err(broken(
                e.id,
                "its policy does not match its policy hash: the policy was altered",
            ));
        }
        if entry_hash(e) != hash {
            return Err(broken(
                e.id,
                "its content does not match its hash: the entry was altered",
            ));
        }
        prev_hash = Some(hash);
        verified += 1;
    }
    Ok(verified)
}

/// The self-contained export file (`lethe ledger export --format json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Export {
    /// `lethe-ledger-1`.
    pub format: String,
    /// When it was exported, RFC 3339 UTC.
    pub exported_at: String,
    /// Whether the export starts at the first entry (no `--since`): only then must the
    /// first entry have no predecessor.
    pub complete: bool,
    /// The entries, in id order.
    pub entries: Vec<LedgerEntry>,
}

/// The format tag of [`Export`].
pub const EXPORT_FORMAT: &str = "lethe-ledger-1";

/// Verifies an export: the whole chain, or for a partial export (`--since`) the chain
/// from its first entry on (that entry's link to its predecessor, which is not in the
/// file, is taken as given).
///
/// # Errors
/// [`ChainBroken`]; a wrong format tag is reported on entry 0.
pub fn verify_export(x: &Export) -> Result<usize, ChainBroken> {
    if x.format != EXPORT_FORMAT {
        return Err(ChainBroken {
            id: 0,
            what: format!("not a Lethe ledger export (format {:?})", x.format),
        });
    }
    if x.complete {
        return verify(&x.entries);
    }
    let anchor = x.entries.first().and_then(|e| e.prev_hash.as_deref());
    verify_after(&x.entries, anchor)
}
