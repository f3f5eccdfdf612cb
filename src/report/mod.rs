//! The run report: a summary of one run (counts only) rendered as plain text and HTML,
//! sent by SMTP with lettre, or written as an `.eml` file to the outbox when SMTP is not
//! configured or sending fails; messages left in the outbox are sent at the next run.
//!
//! The report holds what a [`RunSummary`] and a [`ReportContext`] hold and nothing
//! else: the library's name, the run id, mode, status, times, notices, and per class its
//! name, table, action, cutoff, counts and error text; from the ledger, the recent runs'
//! ids, start times, statuses and counts (a bar chart, an inline PNG) and the run's
//! ledger and policy hashes. It never names a patron. It opens with a one-line verdict
//! in plain words ("All 3 kinds of record were enforced; 86,637 records anonymized,
//! 2,113 patron records deleted.").
//!
//! Delivery order is oldest first: [`deliver`] flushes the outbox before it sends the
//! new report, and when older messages are still waiting (the relay failed on one of
//! them) the new report is queued behind them instead of overtaking them.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use lettre::address::Envelope;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::{ExposeSecret, SecretString};
use tokio::io::AsyncWriteExt;

use crate::summary::{Action, ClassStatus, ClassSummary, Mode, RunStatus, RunSummary};

/// When a report is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendWhen {
    /// After every run.
    Always,
    /// Only when a run changed rows, or did not end `ok`.
    Changed,
    /// Only when a run did not end `ok` (failed, tripped, interrupted).
    Failure,
}

/// A validated SMTP relay.
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    /// `smtps://user@host:465` (implicit TLS), `smtp://user@host:587?tls=required`
    /// (STARTTLS), or `smtp://host:port` (plain text, accepted by config validation only
    /// for loopback hosts). Contains no password.
    pub url: String,
    /// The SMTP password, from the environment or a file, never from the YAML.
    pub password: Option<SecretString>,
    /// Upper bound on one whole send (connect, TLS, transfer).
    pub timeout: Duration,
}

/// The validated `report:` section of `retention.yaml`.
#[derive(Debug, Clone)]
pub struct ReportConfig {
    /// The sender, e.g. `Lethe <lethe@library.example>`.
    pub from: lettre::message::Mailbox,
    /// The recipients (directors); at least one.
    pub to: Vec<lettre::message::Mailbox>,
    /// The relay; `None` means every report goes to the outbox.
    pub smtp: Option<SmtpConfig>,
    /// The folder where unsent messages wait as `.eml` files.
    pub outbox: PathBuf,
    /// When to send.
    pub send: SendWhen,
    /// The library's name, shown in the subject and the body.
    pub library: String,
}

/// What [`deliver`] did with a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The relay accepted the report.
    Sent,
    /// The report was written to this `.eml` file in the outbox, to be sent by a later
    /// [`deliver`] or [`flush_outbox`]: there is no SMTP relay, sending failed or timed
    /// out, or older messages were still waiting in the outbox.
    Outboxed(PathBuf),
    /// [`should_send`] said no: nothing was built, sent or written.
    NotNeeded,
}

/// What [`flush_outbox`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushOutcome {
    /// Messages the relay accepted; their files were deleted.
    pub sent: usize,
    /// `.eml` files still in the outbox afterwards (all of them when no relay is
    /// configured; those after the first failure otherwise).
    pub remaining: usize,
}

/// Why a report could not be built, sent or kept. No variant carries any part of a
/// message: only paths, and lettre's description of what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Reading or writing the outbox failed.
    #[error("outbox I/O failed on {path}: {source}")]
    Io {
        /// The file or folder involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `report.smtp.url` was not accepted by lettre (scheme, `tls` parameter or host).
    #[error("invalid SMTP URL: {reason}")]
    SmtpUrl {
        /// lettre's description of the problem (the URL itself is not repeated).
        reason: String,
    },
    /// The message or its envelope could not be built (e.g. no recipient).
    #[error("could not build the report message: {0}")]
    Build(#[source] lettre::error::Error),
}

/// One earlier (or the current) run, as the report's history chart shows it: counts and
/// ids only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPoint {
    /// The run's ledger id.
    pub run_id: i64,
    /// When the run started, UTC.
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// Rows changed by the run over all its classes (0 for a dry run).
    pub affected: u64,
    /// How the run ended, as the ledger records it: `ok`, `failed`, `tripped`,
    /// `interrupted` (or `running` while open). Any other text is shown as it is.
    pub status: String,
}

/// What the report shows besides the [`RunSummary`]: the recent runs and the audit
/// hashes, read from the ledger by the caller. [`Default`] (no history, no hashes) gives
/// a report without the chart, whose auditor footer says the hashes are not available.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportContext {
    /// The last runs, oldest first, including the current one; at most
    /// [`HISTORY_RUNS`] are shown (the newest ones, when more are given). Empty: no
    /// chart and no history lines.
    pub history: Vec<HistoryPoint>,
    /// The current run's ledger hash (SHA-256, hex), when the run is sealed.
    pub ledger_hash: Option<String>,
    /// SHA-256 (hex) of the effective policy the run enforced, as the ledger holds it.
    pub policy_sha256: Option<String>,
}

/// The number of runs the history chart and list show at most.
pub const HISTORY_RUNS: usize = 12;

// ---------------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------------

/// One report, laid out once and written as text or HTML, so both say the same.
struct View {
    title: String,
    verdict: String,
    tone: Tone,
    notices: Vec<String>,
    overview: Vec<(&'static str, String)>,
    banner: Option<&'static str>,
    run_error: Option<String>,
    classes: Vec<ClassView>,
    history: Vec<HistoryRow>,
    audit: Vec<(&'static str, String)>,
}

struct ClassView {
    name: String,
    rows: Vec<(&'static str, String)>,
    error: Option<String>,
    note: Option<&'static str>,
}

/// How the verdict is coloured in HTML.
#[derive(Clone, Copy)]
enum Tone {
    Good,
    Dry,
    Bad,
}

/// One bar of the history chart, one line of the text history.
struct HistoryRow {
    run_id: i64,
    /// `2026-11-03 06:30 UTC`.
    started: String,
    /// `Nov 3`, under the bar.
    day: String,
    affected: u64,
    /// The ledger status, on one line.
    status: String,
    current: bool,
}

const DRY_RUN_BANNER: &str =
    "This was a dry run: nothing was changed. The counts show what an enforcing run would do.";

const TRIPPED_NOTE: &str = "The circuit breaker tripped: this class would have changed more of its table than the safety limit allows, so nothing in it was changed. Check the counts with `lethe plan`; if they are right, run `lethe run --once --allow-large`.";

const LEGEND: &str = "Rows eligible: rows past their retention period that no exemption keeps. Rows kept: rows past their period that an exemption keeps, each counted once under its first reason. This report holds counts only and names no patron.";

const HISTORY_HEADING: &str = "Records changed per run";

const CHART_LEGEND: &str = "Blue: ok; red: failed; orange: tripped; grey: interrupted or other. The bar with a black mark under it is this run; bar heights are to scale, the tallest being the largest count.";

const AUDIT_HEADING: &str = "For the auditor";

const AUDIT_NOTE: &str = "The ledger hash covers this run's record and the hash of the run before it; `lethe ledger verify` recomputes the whole chain.";

/// The longest error text quoted in the verdict, in characters; the class table has
/// the whole text.
const VERDICT_ERROR_CHARS: usize = 300;

fn run_label(summary: &RunSummary) -> String {
    match summary.run_id {
        Some(id) => format!("run {id}"),
        None => "plan".to_owned(),
    }
}

fn run_status_words(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Ok => "completed: every class finished",
        RunStatus::Skipped => {
            "skipped: another Lethe worker was already running, so this one did nothing"
        }
        RunStatus::Failed => "failed: at least one class could not finish (see below)",
        RunStatus::Tripped => {
            "stopped by the safety limit: at least one class would have changed more of its table than allowed, so nothing in that class was changed"
        }
        RunStatus::Interrupted => {
            "interrupted: Lethe was stopped during the run; the batches finished before that stand"
        }
    }
}

fn class_status_words(status: ClassStatus, mode: Mode) -> &'static str {
    match (status, mode) {
        (ClassStatus::Ok, Mode::Enforce) => "finished",
        (ClassStatus::Ok, Mode::DryRun) => "counted",
        (ClassStatus::Skipped, _) => "not reached: the run stopped before this class",
        (ClassStatus::Failed, _) => "failed: the batches committed before the error stand",
        (ClassStatus::Tripped, _) => "stopped by the circuit breaker: nothing changed",
    }
}

fn action_words(action: Action, mode: Mode) -> &'static str {
    match (action, mode) {
        (Action::Anonymize, Mode::Enforce) => "anonymized",
        (Action::Delete, Mode::Enforce) => "deleted",
        (Action::Anonymize, Mode::DryRun) => "would be anonymized",
        (Action::Delete, Mode::DryRun) => "would be deleted",
        (Action::Aggregate, Mode::Enforce) => "counted into monthly statistics and deleted",
        (Action::Aggregate, Mode::DryRun) => "would be counted and deleted",
        (Action::Pseudonymize, Mode::Enforce) => "pseudonymized",
        (Action::Pseudonymize, Mode::DryRun) => "would be pseudonymized",
        (Action::Purge, Mode::Enforce) => "purged",
        (Action::Purge, Mode::DryRun) => "would be purged",
    }
}

/// `1234567` → `1,234,567`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn rows_word(n: u64) -> &'static str {
    if n == 1 { "row" } else { "rows" }
}

fn human_duration(summary: &RunSummary) -> String {
    let Some(finished) = summary.finished_at else {
        return "not recorded".to_owned();
    };
    let millis = (finished - summary.started_at).num_milliseconds().max(0);
    let secs = millis / 1000;
    if secs < 10 {
        format!("{}.{} s", secs, (millis % 1000) / 100)
    } else if secs < 3600 {
        let (m, s) = (secs / 60, secs % 60);
        if m == 0 {
            format!("{s} s")
        } else {
            format!("{m} min {s} s")
        }
    } else {
        format!("{} h {} min", secs / 3600, (secs % 3600) / 60)
    }
}

// --- The verdict ------------------------------------------------------------------

/// Whether a table holds the patrons themselves (Koha `borrowers`, `deletedborrowers`;
/// Evergreen `actor.usr`): its rows are "patron records" in the verdict.
fn is_patron_table(table: &str) -> bool {
    let bare = table.rsplit('.').next().unwrap_or(table);
    ["borrowers", "deletedborrowers", "usr"]
        .iter()
        .any(|t| bare.eq_ignore_ascii_case(t))
}

/// `1 record`, `2,113 patron records`.
fn records(n: u64, patron: bool) -> String {
    let noun = match (patron, n == 1) {
        (true, true) => "patron record",
        (true, false) => "patron records",
        (false, true) => "record",
        (false, false) => "records",
    };
    format!("{} {noun}", grouped(n))
}

/// The changes of the given classes, summed per action and kind of record (patron
/// records or other records), in the order they first appear, groups of 0 left out:
/// `86,637 records anonymized, 2,113 patron records deleted`. `None` when all are 0.
fn change_phrase<'a>(
    classes: impl Iterator<Item = &'a ClassSummary>,
    count: impl Fn(&ClassSummary) -> u64,
    would: bool,
) -> Option<String> {
    let mut groups: Vec<(Action, bool, u64)> = Vec::new();
    for c in classes {
        let key = (c.action, is_patron_table(&c.table));
        let n = count(c);
        match groups.iter_mut().find(|g| (g.0, g.1) == key) {
            Some(g) => g.2 = g.2.saturating_add(n),
            None => groups.push((key.0, key.1, n)),
        }
    }
    let phrases: Vec<String> = groups
        .into_iter()
        .filter(|g| g.2 > 0)
        .map(|(action, patron, n)| {
            let verb = match (action, would) {
                (Action::Anonymize, false) => "anonymized",
                (Action::Delete, false) => "deleted",
                (Action::Anonymize, true) => "would have been anonymized",
                (Action::Delete, true) => "would have been deleted",
                (Action::Aggregate, false) => "aggregated",
                (Action::Aggregate, true) => "would have been aggregated",
                (Action::Pseudonymize, false) => "pseudonymized",
                (Action::Pseudonymize, true) => "would have been pseudonymized",
                (Action::Purge, false) => "purged",
                (Action::Purge, true) => "would have been purged",
            };
            format!("{} {verb}", records(n, patron))
        })
        .collect();
    (!phrases.is_empty()).then(|| phrases.join(", "))
}

/// `a`, `a and b`, `a, b and c`.
fn and_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// Error text for the one-line verdict: on one line, blanks collapsed, at most
/// [`VERDICT_ERROR_CHARS`] characters, without a final full stop.
fn short_error(text: &str) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let flat = flat.trim_end_matches('.');
    if flat.chars().count() <= VERDICT_ERROR_CHARS {
        return flat.to_owned();
    }
    let cut: String = flat.chars().take(VERDICT_ERROR_CHARS - 1).collect();
    format!("{}…", cut.trim_end())
}

/// `a` or `a (<error>)`: a class's name and, if it has one, its error text.
fn name_with_error(c: &ClassSummary) -> String {
    match c.error.as_deref().map(short_error) {
        Some(e) if !e.is_empty() => format!("{} ({e})", c.name),
        _ => c.name.clone(),
    }
}

/// The one-line verdict at the top of the report, and its tone. It names classes and
/// quotes their error texts (which hold class, table and counts only), never a patron.
fn verdict(summary: &RunSummary) -> (String, Tone) {
    let dry = summary.mode == Mode::DryRun;
    let classes = &summary.classes;
    let of = |status: ClassStatus| classes.iter().filter(move |c| c.status == status);
    // What stands: rows changed (enforce), or what an enforcing run would change
    // (dry run: the eligible rows of the classes that were counted).
    let changes = if dry {
        change_phrase(of(ClassStatus::Ok), |c| c.eligible, true)
    } else {
        change_phrase(classes.iter(), |c| c.affected, false)
    };
    let standing = |what: &str| match (&changes, dry) {
        (Some(ch), false) => format!(" Changes that stand: {ch}."),
        (Some(ch), true) => format!(" {what}: {ch}."),
        (None, _) => String::new(),
    };
    let run = if dry { "dry run" } else { "run" };
    match summary.status {
        RunStatus::Ok => {
            let kinds = match classes.len() {
                0 => {
                    return (
                        format!(
                            "The {run} finished, but no kind of record is configured: nothing was changed."
                        ),
                        Tone::Bad,
                    );
                }
                1 => "The 1 kind of record was".to_owned(),
                n => format!("All {n} kinds of record were"),
            };
            if dry {
                let what = changes.unwrap_or_else(|| {
                    "no record is past its retention period and unprotected".to_owned()
                });
                (
                    format!("Dry run: nothing was changed; {what}. {kinds} checked."),
                    Tone::Dry,
                )
            } else {
                let what = changes
                    .unwrap_or_else(|| "no record was due, so nothing was changed".to_owned());
                (format!("{kinds} enforced; {what}."), Tone::Good)
            }
        }
        RunStatus::Failed => {
            let failed: Vec<String> = of(ClassStatus::Failed)
                .map(|c| match c.error.as_deref().map(short_error) {
                    Some(e) if !e.is_empty() => format!("class {} failed: {e}", c.name),
                    _ => format!("class {} failed", c.name),
                })
                .collect();
            let why = if !failed.is_empty() {
                format!(": {}", failed.join("; "))
            } else if let Some(e) = summary.error.as_deref().map(short_error) {
                format!(": {e}")
            } else {
                String::new()
            };
            let head = if dry {
                "The dry run FAILED"
            } else {
                "The run FAILED"
            };
            (
                format!("{head}{why}.{}", standing("Otherwise counted")),
                Tone::Bad,
            )
        }
        RunStatus::Tripped => {
            let tripped: Vec<String> = of(ClassStatus::Tripped).map(name_with_error).collect();
            let (subject, pronoun) = match tripped.len() {
                0 => ("a class".to_owned(), "it"),
                1 => (format!("class {}", and_list(&tripped)), "it"),
                _ => (format!("classes {}", and_list(&tripped)), "them"),
            };
            let text = if dry {
                format!(
                    "Dry run: nothing was changed, and the safety limit would stop {subject}: an enforcing run would change nothing in {pronoun}.{}",
                    standing("Otherwise")
                )
            } else {
                format!(
                    "The run was STOPPED by the safety limit: {subject} tripped, so nothing in {pronoun} was changed.{}",
                    standing("")
                )
            };
            (text, Tone::Bad)
        }
        RunStatus::Interrupted => {
            let skipped: Vec<String> = of(ClassStatus::Skipped).map(|c| c.name.clone()).collect();
            let not_reached = match skipped.len() {
                0 => String::new(),
                1 => format!(" Not reached: class {}.", skipped[0]),
                _ => format!(" Not reached: classes {}.", and_list(&skipped)),
            };
            let head = if dry {
                "The dry run was INTERRUPTED: Lethe was stopped during the run; nothing was changed."
            } else {
                "The run was INTERRUPTED: Lethe was stopped during the run."
            };
            (
                format!("{head}{}{not_reached}", standing("Counted before that")),
                Tone::Bad,
            )
        }
        RunStatus::Skipped => (
            format!(
                "Nothing was done: another Lethe worker was already running and reports its own {run}."
            ),
            Tone::Dry,
        ),
    }
}

// --- Layout -------------------------------------------------------------------------

fn class_view(class: &ClassSummary, mode: Mode) -> ClassView {
    let changed = match mode {
        Mode::Enforce => grouped(class.affected),
        Mode::DryRun => format!("{} (dry run)", grouped(class.affected)),
    };
    let rows = vec![
        ("Table", class.table.clone()),
        ("Action", action_words(class.action, mode).to_owned()),
        (
            "Cutoff",
            class.cutoff.to_rfc3339_opts(SecondsFormat::Secs, true),
        ),
        ("Rows changed", changed),
        ("Rows eligible", grouped(class.eligible)),
        (
            "Kept: patron chose to keep history",
            grouped(class.kept.opt_in),
        ),
        ("Kept: legal hold", grouped(class.kept.legal_hold)),
        (
            "Kept: still checked out or owed",
            grouped(class.kept.obligations),
        ),
        (
            "Kept: staff, guarantor or protected account",
            grouped(class.kept.protected),
        ),
        ("Status", class_status_words(class.status, mode).to_owned()),
    ];
    ClassView {
        name: class.name.clone(),
        rows,
        error: class.error.clone(),
        note: (class.status == ClassStatus::Tripped).then_some(TRIPPED_NOTE),
    }
}

/// The last [`HISTORY_RUNS`] points of the context, oldest first.
fn history_rows(summary: &RunSummary, ctx: &ReportContext) -> Vec<HistoryRow> {
    let skip = ctx.history.len().saturating_sub(HISTORY_RUNS);
    ctx.history
        .iter()
        .skip(skip)
        .map(|p| HistoryRow {
            run_id: p.run_id,
            started: p.started_at.format("%Y-%m-%d %H:%M UTC").to_string(),
            day: p.started_at.format("%b %-d").to_string(),
            affected: p.affected,
            status: one_line(&p.status),
            current: summary.run_id == Some(p.run_id),
        })
        .collect()
}

/// The auditor's lines: the run's ledger hash and the policy hash, or why they are
/// missing.
fn audit_rows(summary: &RunSummary, ctx: &ReportContext) -> Vec<(&'static str, String)> {
    let missing = match summary.run_id {
        Some(id) => format!("not available in this report; see `lethe ledger show {id}`"),
        None => "none: a plan is not recorded in the ledger".to_owned(),
    };
    let hash = |h: &Option<String>| match h.as_deref().map(one_line) {
        Some(h) if !h.trim().is_empty() => h,
        _ => missing.clone(),
    };
    let hash_label = if summary.run_id.is_some() {
        "Ledger hash of this run"
    } else {
        "Ledger hash"
    };
    vec![
        (hash_label, hash(&ctx.ledger_hash)),
        ("Policy SHA-256", hash(&ctx.policy_sha256)),
    ]
}

fn view(cfg: &ReportConfig, summary: &RunSummary, ctx: &ReportContext) -> View {
    let mode = match summary.mode {
        Mode::Enforce => "enforce: rows past their retention period were changed",
        Mode::DryRun => "dry run: nothing was changed",
    };
    let total = summary.total_affected();
    let overview = vec![
        ("Library", cfg.library.clone()),
        (
            "Run",
            summary
                .run_id
                .map_or_else(|| "plan (not recorded)".to_owned(), |id| id.to_string()),
        ),
        ("Mode", mode.to_owned()),
        ("Status", run_status_words(summary.status).to_owned()),
        (
            "Started (UTC)",
            summary
                .started_at
                .to_rfc3339_opts(SecondsFormat::Secs, true),
        ),
        ("Duration", human_duration(summary)),
        (
            "Rows changed in total",
            format!("{} {}", grouped(total), rows_word(total)),
        ),
    ];
    let (verdict, tone) = verdict(summary);
    View {
        title: format!(
            "Lethe data-retention report: {}, {}",
            cfg.library,
            run_label(summary)
        ),
        verdict,
        tone,
        notices: summary
            .notices
            .iter()
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect(),
        overview,
        banner: (summary.mode == Mode::DryRun).then_some(DRY_RUN_BANNER),
        run_error: summary.error.clone(),
        classes: summary
            .classes
            .iter()
            .map(|c| class_view(c, summary.mode))
            .collect(),
        history: history_rows(summary, ctx),
        audit: audit_rows(summary, ctx),
    }
}

/// Breaks a paragraph into lines of at most `width` characters (longer words stay
/// whole, and so does a `quoted command`), each line after the first starting with
/// `indent`.
fn wrap(text: &str, width: usize, indent: &str) -> String {
    let mut words: Vec<String> = Vec::new();
    let mut in_code = false;
    for token in text.split_whitespace() {
        match words.last_mut() {
            Some(last) if in_code => {
                last.push(' ');
                last.push_str(token);
            }
            _ => words.push(token.to_owned()),
        }
        if token.matches('`').count() % 2 == 1 {
            in_code = !in_code;
        }
    }
    let mut out = String::new();
    let mut line_len = 0;
    for word in &words {
        let len = word.chars().count();
        if line_len > 0 && line_len + 1 + len > width {
            out.push('\n');
            out.push_str(indent);
            line_len = indent.chars().count();
        } else if line_len > 0 {
            out.push(' ');
            line_len += 1;
        }
        out.push_str(word);
        line_len += len;
    }
    out
}

fn write_text_rows(out: &mut String, rows: &[(&'static str, String)], indent: &str) {
    let width = rows
        .iter()
        .map(|(label, _)| label.chars().count())
        .max()
        .unwrap_or(0);
    for (label, value) in rows {
        let pad = width - label.chars().count();
        let _ = writeln!(out, "{indent}{label}:{:pad$} {value}", "", pad = pad);
    }
}

/// Indents every line after the first, so multi-line error text stays in its block.
fn indent_continuation(text: &str, indent: &str) -> String {
    text.lines()
        .collect::<Vec<_>>()
        .join(&format!("\n{indent}"))
}

fn write_text_heading(out: &mut String, heading: &str) {
    let _ = writeln!(out, "\n{heading}");
    let _ = writeln!(out, "{}", "-".repeat(heading.chars().count().min(72)));
}

/// Renders the report as plain text (UTF-8, `\n` line ends, lines of label/value pairs,
/// one block per class in the summary's order).
///
/// It starts with the one-line verdict (what the run did, in words a director reads at
/// a glance; a failed run names the failed class and its error), then each of the
/// summary's notices, then the library name, run id, mode (a dry run says plainly that
/// nothing was changed), status in plain words, start time (UTC, RFC 3339), duration,
/// and per class: name, table, action, cutoff (RFC 3339 in the library's zone), rows
/// changed, rows eligible, rows kept by reason, status, the class's error text if any,
/// and for a tripped class what to do next. When `ctx.history` is not empty, one line
/// per run (the last [`HISTORY_RUNS`], oldest first: run id, start, status, rows
/// changed), the numbers of the HTML chart. Last, for the auditor, the run's ledger hash
/// and the policy's SHA-256 from `ctx` (or why they are missing). Counts only: nothing
/// else from the summary.
pub fn render_text(cfg: &ReportConfig, summary: &RunSummary, ctx: &ReportContext) -> String {
    text_of(&view(cfg, summary, ctx))
}

fn text_of(v: &View) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", v.verdict);
    for notice in &v.notices {
        let _ = writeln!(out, "\nNOTICE: {}", wrap(notice, 72, "  "));
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "{}", v.title);
    let _ = writeln!(out, "{}", "-".repeat(v.title.chars().count().min(72)));
    let _ = writeln!(out);
    write_text_rows(&mut out, &v.overview, "");
    if let Some(banner) = v.banner {
        let _ = writeln!(out, "\n{}", wrap(banner, 72, ""));
    }
    if let Some(err) = &v.run_error {
        let _ = writeln!(out, "\nRun error: {}", indent_continuation(err, "  "));
    }
    if v.classes.is_empty() {
        let _ = writeln!(out, "\nNo class was processed.");
    }
    for class in &v.classes {
        write_text_heading(&mut out, &format!("Class: {}", class.name));
        write_text_rows(&mut out, &class.rows, "  ");
        if let Some(err) = &class.error {
            let _ = writeln!(out, "  Error: {}", indent_continuation(err, "    "));
        }
        if let Some(note) = class.note {
            let _ = writeln!(out, "  Note: {}", wrap(note, 64, "    "));
        }
    }
    if !v.history.is_empty() {
        write_text_heading(
            &mut out,
            &format!(
                "{HISTORY_HEADING}, last {} {} (oldest first)",
                v.history.len(),
                if v.history.len() == 1 { "run" } else { "runs" }
            ),
        );
        let labels: Vec<String> = v
            .history
            .iter()
            .map(|r| format!("run {}", r.run_id))
            .collect();
        let counts: Vec<String> = v.history.iter().map(|r| grouped(r.affected)).collect();
        let label_w = labels.iter().map(String::len).max().unwrap_or(0);
        let status_w = v
            .history
            .iter()
            .map(|r| r.status.chars().count())
            .max()
            .unwrap_or(0);
        let count_w = counts.iter().map(String::len).max().unwrap_or(0);
        for ((row, label), count) in v.history.iter().zip(&labels).zip(&counts) {
            let mark = if row.current { "  (this run)" } else { "" };
            let _ = writeln!(
                out,
                "  {label:<label_w$}  {}  {:<status_w$}  {count:>count_w$} {}{mark}",
                row.started,
                row.status,
                rows_word(row.affected),
            );
        }
    }
    write_text_heading(&mut out, AUDIT_HEADING);
    write_text_rows(&mut out, &v.audit, "  ");
    let _ = writeln!(out, "  {}", wrap(AUDIT_NOTE, 70, "  "));
    let _ = writeln!(out, "\n{}", wrap(LEGEND, 72, ""));
    out
}

/// Escapes `&`, `<`, `>`, `"` and `'` for HTML text and attribute values.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const TH: &str =
    "text-align:left;font-weight:normal;color:#555;padding:2px 16px 2px 0;vertical-align:top";
/// Values may break anywhere when they must: a schema-qualified table name such as
/// Evergreen's `auditor.actor_usr_address_history` is wider than a phone's value column.
const TD: &str = "padding:2px 0;vertical-align:top;overflow-wrap:anywhere";

fn write_html_rows(out: &mut String, rows: &[(&'static str, String)]) {
    for (label, value) in rows {
        let _ = writeln!(
            out,
            "<tr><th scope=\"row\" style=\"{TH}\">{}</th><td style=\"{TD}\">{}</td></tr>",
            esc(label),
            esc(value)
        );
    }
}

/// The auditor's rows: a hash is 64 characters of monospace, wider than a phone, so
/// its cell may break it anywhere (found in Chromium at 390 px: the page scrolled
/// sideways).
fn write_html_hash_rows(out: &mut String, rows: &[(&'static str, String)]) {
    for (label, value) in rows {
        let _ = writeln!(
            out,
            "<tr><th scope=\"row\" style=\"{TH}\">{}</th><td style=\"{TD};font-family:monospace;font-size:small;word-break:break-all\">{}</td></tr>",
            esc(label),
            esc(value)
        );
    }
}

/// The `Content-ID` of the history chart (without angle brackets): unique per run,
/// in the sender's domain, the same in [`render_html`]'s `<img src="cid:…">` and in the
/// image part [`build_message`] attaches.
fn chart_cid(cfg: &ReportConfig, summary: &RunSummary) -> String {
    format!(
        "lethe-chart.{}.{}@{}",
        summary
            .run_id
            .map_or_else(|| "plan".to_owned(), |id| format!("run{id}")),
        summary.started_at.format("%Y%m%dT%H%M%S"),
        cfg.from.email.domain()
    )
}

/// Renders the same report as [`render_text`] as a self-contained HTML document
/// (UTF-8, inline styles only, no scripts or links), one table per class. It starts
/// with the verdict and the notices. When `ctx.history` is not empty it shows the
/// history chart as `<img src="cid:…">`, the image [`build_message`] attaches inline in
/// the same `multipart/related` part (this document alone does not contain it), with
/// the run, day and count of each bar in a table under it, both in a box of their own
/// that scrolls sideways when narrower than the chart (12 runs are 600 px). With the
/// viewport meta tag and hashes that may break anywhere, the page fits a phone's width
/// (`tests/it/browser.rs` renders it in Chromium at 390 px). Every interpolated text
/// (library, class and table names, notices, error texts, statuses, all values) is
/// HTML-escaped.
pub fn render_html(cfg: &ReportConfig, summary: &RunSummary, ctx: &ReportContext) -> String {
    let v = view(cfg, summary, ctx);
    let cid = chart_cid(cfg, summary);
    html_of(&v, (!v.history.is_empty()).then_some(cid.as_str()))
}

/// Width in pixels of one run's slot in the chart (and of its label column).
const SLOT_PX: u32 = 50;
/// Width in pixels of a bar within its slot.
const BAR_PX: u32 = 30;
/// Height in pixels of the whole chart.
const CHART_PX: u32 = 120;
/// First pixel row bars may reach (the tallest bar's top).
const PLOT_TOP: u32 = 6;
/// The baseline's pixel row: bars stand on it, the current run's mark is under it.
const BASELINE: u32 = 106;

/// HTML of a view; `chart` is the Content-ID of the chart image, `None` for no chart
/// (the history still shows as a table when there is one).
fn html_of(v: &View, chart: Option<&str>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "<!DOCTYPE html>");
    let _ = writeln!(out, "<html lang=\"en\"><head><meta charset=\"utf-8\">");
    // Without it a phone's browser lays the page out 980 px wide and shrinks it.
    let _ = writeln!(
        out,
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
    );
    let _ = writeln!(out, "<title>{}</title></head>", esc(&v.title));
    let _ = writeln!(
        out,
        "<body style=\"font-family:sans-serif;color:#222;max-width:48em\">"
    );
    let (border, background) = match v.tone {
        Tone::Good => ("#2e7d32", "#eef7ee"),
        Tone::Dry => ("#c90", "#fff8e1"),
        Tone::Bad => ("#c00", "#fdecea"),
    };
    let _ = writeln!(
        out,
        "<p style=\"font-size:1.15em;font-weight:bold;border-left:6px solid {border};background:{background};padding:8px 10px\">{}</p>",
        esc(&v.verdict)
    );
    for notice in &v.notices {
        let _ = writeln!(
            out,
            "<p style=\"font-weight:bold;border:2px solid #c90;background:#fff8e1;padding:8px 10px\">Notice: {}</p>",
            esc(notice)
        );
    }
    let _ = writeln!(out, "<h1 style=\"font-size:1.3em\">{}</h1>", esc(&v.title));
    let _ = writeln!(out, "<table style=\"border-collapse:collapse\">");
    write_html_rows(&mut out, &v.overview);
    let _ = writeln!(out, "</table>");
    if let Some(banner) = v.banner {
        let _ = writeln!(
            out,
            "<p style=\"font-weight:bold;border-left:4px solid #c90;padding-left:8px\">{}</p>",
            esc(banner)
        );
    }
    if let Some(err) = &v.run_error {
        let _ = writeln!(
            out,
            "<p style=\"white-space:pre-wrap;color:#a00\">Run error: {}</p>",
            esc(err)
        );
    }
    if v.classes.is_empty() {
        let _ = writeln!(out, "<p>No class was processed.</p>");
    }
    for class in &v.classes {
        let _ = writeln!(
            out,
            "<h2 style=\"font-size:1.1em;margin-top:1.5em\">Class: {}</h2>",
            esc(&class.name)
        );
        let _ = writeln!(out, "<table style=\"border-collapse:collapse\">");
        write_html_rows(&mut out, &class.rows);
        if let Some(err) = &class.error {
            let _ = writeln!(
                out,
                "<tr><th scope=\"row\" style=\"{TH}\">Error</th><td style=\"{TD};white-space:pre-wrap;color:#a00\">{}</td></tr>",
                esc(err)
            );
        }
        let _ = writeln!(out, "</table>");
        if let Some(note) = class.note {
            let _ = writeln!(
                out,
                "<p style=\"border-left:4px solid #c00;padding-left:8px\">Note: {}</p>",
                esc(note)
            );
        }
    }
    if !v.history.is_empty() {
        write_html_history(&mut out, &v.history, chart);
    }
    let _ = writeln!(
        out,
        "<h2 style=\"font-size:1.1em;margin-top:1.5em\">{AUDIT_HEADING}</h2>"
    );
    let _ = writeln!(out, "<table style=\"border-collapse:collapse\">");
    write_html_hash_rows(&mut out, &v.audit);
    let _ = writeln!(out, "</table>");
    let _ = writeln!(
        out,
        "<p style=\"font-size:small;color:#555\">{}</p>",
        esc(AUDIT_NOTE)
    );
    let _ = writeln!(
        out,
        "<p style=\"font-size:small;color:#555;margin-top:2em\">{}</p>",
        esc(LEGEND)
    );
    let _ = writeln!(out, "</body></html>");
    out
}

fn write_html_history(out: &mut String, history: &[HistoryRow], chart: Option<&str>) {
    let n = history.len();
    let width = SLOT_PX as usize * n;
    let _ = writeln!(
        out,
        "<h2 style=\"font-size:1.1em;margin-top:1.5em\">{HISTORY_HEADING}, last {n} {} (oldest first)</h2>",
        if n == 1 { "run" } else { "runs" }
    );
    // 12 runs are 600 px, wider than a phone: the chart and its labels scroll
    // sideways together in a box of their own rather than the whole page.
    let _ = writeln!(out, "<div style=\"overflow-x:auto;max-width:100%\">");
    if let Some(cid) = chart {
        let _ = writeln!(
            out,
            "<img src=\"cid:{}\" width=\"{width}\" height=\"{CHART_PX}\" alt=\"Bar chart of the records changed per run; the numbers are in the table below.\" style=\"display:block;border:0\">",
            esc(cid)
        );
    }
    let _ = writeln!(
        out,
        "<table style=\"border-collapse:collapse;table-layout:fixed;width:{width}px;font-size:11px\"><tr>"
    );
    for row in history {
        let weight = if row.current { "bold" } else { "normal" };
        let status = if row.status == "ok" {
            String::new()
        } else {
            format!("<br><span style=\"color:#a00\">{}</span>", esc(&row.status))
        };
        let _ = writeln!(
            out,
            "<td style=\"width:{SLOT_PX}px;text-align:center;vertical-align:top;padding:2px 0;font-weight:{weight}\" title=\"{}\">run {}<br>{}<br>{}{status}</td>",
            esc(&row.started),
            row.run_id,
            esc(&row.day),
            grouped(row.affected),
        );
    }
    let _ = writeln!(out, "</tr></table></div>");
    if chart.is_some() {
        let _ = writeln!(
            out,
            "<p style=\"font-size:small;color:#555\">{}</p>",
            esc(CHART_LEGEND)
        );
    }
}

// ---------------------------------------------------------------------------------
// Chart
// ---------------------------------------------------------------------------------

type Rgb = [u8; 3];

const WHITE: Rgb = [255, 255, 255];
const AXIS: Rgb = [153, 153, 153];
const MARK: Rgb = [34, 34, 34];

fn status_colour(status: &str) -> Rgb {
    match status {
        "ok" => [52, 101, 164],
        "failed" => [204, 0, 0],
        "tripped" => [245, 121, 0],
        _ => [136, 138, 133],
    }
}

/// An RGB image, 8 bits per channel, rows top to bottom.
struct Canvas {
    width: u32,
    height: u32,
    pixels: Vec<u8>,
}

impl Canvas {
    fn new(width: u32, height: u32) -> Canvas {
        let len = width as usize * height as usize;
        Canvas {
            width,
            height,
            pixels: WHITE.repeat(len),
        }
    }

    /// Fills `x0..x1` × `y0..y1`, clipped to the canvas.
    fn fill(&mut self, (x0, x1): (u32, u32), (y0, y1): (u32, u32), colour: Rgb) {
        let (x1, y1) = (x1.min(self.width), y1.min(self.height));
        for y in y0..y1 {
            for x in x0..x1 {
                let i = (y as usize * self.width as usize + x as usize) * 3;
                if let Some(px) = self.pixels.get_mut(i..i + 3) {
                    px.copy_from_slice(&colour);
                }
            }
        }
    }
}

/// The history chart as a PNG (RGB, 8 bits): one bar per run, oldest on the left,
/// [`SLOT_PX`] pixels per run, [`CHART_PX`] high; heights to scale (the largest count
/// reaches the top, a run that changed nothing shows a 2-pixel stub), coloured by
/// status, the current run marked under the baseline.
fn chart_png(history: &[HistoryRow]) -> Result<Vec<u8>, png::EncodingError> {
    let slots = u32::try_from(history.len().max(1)).unwrap_or(1);
    let mut canvas = Canvas::new(SLOT_PX * slots, CHART_PX);
    let max = history.iter().map(|r| r.affected).max().unwrap_or(0);
    let room = u128::from(BASELINE - PLOT_TOP);
    let mut x = 0;
    for row in history {
        let left = x + (SLOT_PX - BAR_PX) / 2;
        let bar = (left, left + BAR_PX);
        let height = if row.affected == 0 || max == 0 {
            2
        } else {
            // Rounded up, so a small non-zero count is never drawn as nothing.
            let h = (u128::from(row.affected) * room).div_ceil(u128::from(max));
            u32::try_from(h).unwrap_or(BASELINE - PLOT_TOP).max(3)
        };
        canvas.fill(
            bar,
            (BASELINE - height, BASELINE),
            status_colour(&row.status),
        );
        if row.current {
            canvas.fill(bar, (BASELINE + 4, BASELINE + 9), MARK);
        }
        x += SLOT_PX;
    }
    canvas.fill((0, canvas.width), (BASELINE, BASELINE + 1), AXIS);

    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, canvas.width, canvas.height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&canvas.pixels)?;
    writer.finish()?;
    Ok(out)
}

// ---------------------------------------------------------------------------------
// Message
// ---------------------------------------------------------------------------------

/// Replaces control characters (CR, LF, tabs…) by spaces so a header stays one line.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The subject: `[Lethe] <library>: run 12 ok — 1,234 rows changed`; a failed, tripped
/// or interrupted run starts with `FAILED:`, `TRIPPED:` or `INTERRUPTED:`; a dry run
/// says `(dry run)` and `nothing changed`, with the eligible count.
fn subject(cfg: &ReportConfig, summary: &RunSummary) -> String {
    let flag = match summary.status {
        RunStatus::Failed => "FAILED: ",
        RunStatus::Tripped => "TRIPPED: ",
        RunStatus::Interrupted => "INTERRUPTED: ",
        RunStatus::Ok | RunStatus::Skipped => "",
    };
    let outcome = match summary.mode {
        Mode::Enforce => {
            let n = summary.total_affected();
            format!("{} {} changed", grouped(n), rows_word(n))
        }
        Mode::DryRun => {
            let n: u64 = summary.classes.iter().map(|c| c.eligible).sum();
            format!("nothing changed, {} {} eligible", grouped(n), rows_word(n))
        }
    };
    let dry = if summary.mode == Mode::DryRun {
        " (dry run)"
    } else {
        ""
    };
    one_line(&format!(
        "[Lethe] {flag}{}: {}{dry} {} — {outcome}",
        cfg.library,
        run_label(summary),
        summary.status.as_str()
    ))
}

fn random_hex() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Builds the report email, `From` and `To` from `cfg`, a subject such as
/// `[Lethe] Example Library: run 12 ok — 1,234 rows changed` (a failed or tripped run
/// says `FAILED:`/`TRIPPED:` first), a `Date` header (now), a unique `Message-ID` in the
/// sender's domain, and `Auto-Submitted: auto-generated` (RFC 3834) so that
/// out-of-office robots do not answer it.
///
/// The body is `multipart/alternative`: first the text part ([`render_text`]), then,
/// when `ctx.history` is not empty, a `multipart/related` part holding the HTML
/// ([`render_html`]) and the history chart as an inline `image/png` whose `Content-ID`
/// the HTML's `<img src="cid:…">` names; without history the HTML part stands alone.
/// Should the chart fail to encode (logged), the report goes without it.
///
/// # Errors
/// [`ReportError::Build`] when lettre refuses the message, e.g. when `cfg.to` is empty.
pub fn build_message(
    cfg: &ReportConfig,
    summary: &RunSummary,
    ctx: &ReportContext,
) -> Result<Message, ReportError> {
    let message_id = format!(
        "<lethe.{}.{}.{}@{}>",
        summary
            .run_id
            .map_or_else(|| "plan".to_owned(), |id| format!("run{id}")),
        Utc::now().format("%Y%m%dT%H%M%S"),
        random_hex(),
        cfg.from.email.domain()
    );
    let mut builder = Message::builder()
        .from(cfg.from.clone())
        .subject(subject(cfg, summary))
        .date_now()
        .message_id(Some(message_id))
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("Auto-Submitted"),
            "auto-generated".to_owned(),
        ));
    for to in &cfg.to {
        builder = builder.to(to.clone());
    }

    let v = view(cfg, summary, ctx);
    let chart = if v.history.is_empty() {
        None
    } else {
        let png_type = ContentType::parse("image/png");
        match (chart_png(&v.history), png_type) {
            (Ok(png), Ok(png_type)) => Some((png, png_type)),
            (Err(e), _) => {
                tracing::warn!(error = %e, "could not draw the history chart; the report goes without it");
                None
            }
            (_, Err(e)) => {
                tracing::warn!(error = %e, "could not type the history chart; the report goes without it");
                None
            }
        }
    };
    let text = text_of(&v);
    let body = match chart {
        None => MultiPart::alternative_plain_html(text, html_of(&v, None)),
        Some((png, png_type)) => {
            let cid = chart_cid(cfg, summary);
            let html = html_of(&v, Some(&cid));
            MultiPart::alternative()
                .singlepart(SinglePart::plain(text))
                .multipart(
                    MultiPart::related()
                        .singlepart(SinglePart::html(html))
                        .singlepart(Attachment::new_inline(cid).body(png, png_type)),
                )
        }
    };
    builder.multipart(body).map_err(ReportError::Build)
}

/// Whether this run's report is to be sent, per `cfg.send`:
/// - [`SendWhen::Always`] on every run.
/// - [`SendWhen::Changed`] when the run changed at least one row, or ended `failed`,
///   `tripped` or `interrupted`. A dry run changes no row, so it is reported only when
///   it did not end well.
/// - [`SendWhen::Failure`] when the run ended `failed`, `tripped` or `interrupted`.
///
/// A `skipped` run (another worker held the lock and reports its own run) is sent
/// only with [`SendWhen::Always`].
pub fn should_send(cfg: &ReportConfig, summary: &RunSummary) -> bool {
    let bad = matches!(
        summary.status,
        RunStatus::Failed | RunStatus::Tripped | RunStatus::Interrupted
    );
    match cfg.send {
        SendWhen::Always => true,
        SendWhen::Changed => bad || summary.total_affected() > 0,
        SendWhen::Failure => bad,
    }
}

// ---------------------------------------------------------------------------------
// Transport and outbox
// ---------------------------------------------------------------------------------

/// Decodes `%XX` escapes (as in a URL's user part); invalid escapes stay as written.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

type Transport = AsyncSmtpTransport<Tokio1Executor>;

/// Whether a URL host is this machine: `127.0.0.0/8`, `::1` or `localhost`.
fn is_loopback(host: Option<url::Host<&str>>) -> bool {
    match host {
        Some(url::Host::Ipv4(addr)) => addr.is_loopback(),
        Some(url::Host::Ipv6(addr)) => addr.is_loopback(),
        // `smtp:` is not a scheme the URL standard knows, so an IPv4 address comes back
        // as an opaque domain string.
        Some(url::Host::Domain(name)) => {
            name.eq_ignore_ascii_case("localhost")
                || name
                    .parse::<std::net::Ipv4Addr>()
                    .is_ok_and(|a| a.is_loopback())
        }
        None => false,
    }
}

/// One transport per run (no pool): from the URL, lettre's connect timeout set to the
/// configured bound, and credentials from the URL's user and the configured password.
/// Plain-text SMTP (`smtp://` without a `tls` parameter) is refused unless the host is
/// loopback, as config validation promises, so a password never crosses a network in
/// clear even if a config slipped past validation.
fn build_transport(smtp: &SmtpConfig) -> Result<Transport, ReportError> {
    let smtp_url_err = |reason: String| ReportError::SmtpUrl { reason };
    let url = url::Url::parse(&smtp.url).map_err(|e| smtp_url_err(e.to_string()))?;
    let has_tls = url.query_pairs().any(|(k, _)| k == "tls");
    if url.scheme() == "smtp" && !has_tls && !is_loopback(url.host()) {
        return Err(smtp_url_err(
            "plain-text SMTP is allowed only to a loopback host; use smtps:// or ?tls=required"
                .to_owned(),
        ));
    }
    let mut builder = Transport::from_url(&smtp.url).map_err(|e| smtp_url_err(e.to_string()))?;
    builder = builder.timeout(Some(smtp.timeout));
    if let Some(password) = &smtp.password {
        builder = builder.credentials(Credentials::new(
            percent_decode(url.username()),
            password.expose_secret().to_owned(),
        ));
    }
    Ok(builder.build())
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ReportError + '_ {
    move |source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The `.eml` files waiting in the outbox, oldest first (by name). Hidden files (the
/// temporary names of files being written) are ignored. A missing folder is empty.
async fn outbox_files(dir: &Path) -> Result<Vec<PathBuf>, ReportError> {
    let mut entries = match tokio::fs::read_dir(dir).await {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut files = Vec::new();
    while let Some(entry) = entries.next_entry().await.map_err(io_err(dir))? {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') || !name.ends_with(".eml") {
            continue;
        }
        let is_file = entry
            .file_type()
            .await
            .map_err(io_err(&entry.path()))?
            .is_file();
        if is_file {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

/// Writes `raw` to a new `.eml` file in `dir` (created if missing), named
/// `<UTC yyyymmddThhmmss.ffffffZ>-run<id>-<random>.eml` so that names sort by time.
/// The bytes go to a hidden temporary name first, are synced, then renamed: a reader of
/// the outbox never sees a half-written message.
async fn write_outbox(dir: &Path, run_id: Option<i64>, raw: &[u8]) -> Result<PathBuf, ReportError> {
    tokio::fs::create_dir_all(dir).await.map_err(io_err(dir))?;
    let run = run_id.map_or_else(|| "plan".to_owned(), |id| format!("run{id}"));
    let name = format!(
        "{}-{run}-{}.eml",
        Utc::now().format("%Y%m%dT%H%M%S%.6fZ"),
        random_hex()
    );
    let path = dir.join(&name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let written = async {
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .await?;
        file.write_all(raw).await?;
        file.sync_all().await?;
        drop(file);
        tokio::fs::rename(&tmp, &path).await
    }
    .await;
    if let Err(e) = written {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(io_err(&path)(e));
    }
    // Make the rename durable; not all platforms can open a folder, so best effort.
    if let Ok(d) = tokio::fs::File::open(dir).await {
        let _ = d.sync_all().await;
    }
    Ok(path)
}

/// Sends one raw message, bounded by `timeout` as a whole. The error is a description
/// for the log: lettre's error or the timeout, never message content.
async fn send_bounded(
    transport: &Transport,
    envelope: &Envelope,
    raw: &[u8],
    timeout: Duration,
) -> Result<(), String> {
    match tokio::time::timeout(timeout, transport.send_raw(envelope, raw)).await {
        Ok(Ok(_response)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_elapsed) => Err(format!(
            "no answer from the SMTP relay within {} ms",
            timeout.as_millis()
        )),
    }
}

fn envelope(cfg: &ReportConfig) -> Result<Envelope, ReportError> {
    Envelope::new(
        Some(cfg.from.email.clone()),
        cfg.to.iter().map(|m: &Mailbox| m.email.clone()).collect(),
    )
    .map_err(ReportError::Build)
}

async fn flush_with(
    cfg: &ReportConfig,
    smtp: &SmtpConfig,
    transport: &Transport,
) -> Result<FlushOutcome, ReportError> {
    let files = outbox_files(&cfg.outbox).await?;
    if files.is_empty() {
        return Ok(FlushOutcome::default());
    }
    let envelope = envelope(cfg)?;
    let mut outcome = FlushOutcome {
        sent: 0,
        remaining: files.len(),
    };
    for path in &files {
        let raw = match tokio::fs::read(path).await {
            Ok(raw) => raw,
            // Gone since listing (another process took it): nothing to send.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                outcome.remaining -= 1;
                continue;
            }
            Err(e) => return Err(io_err(path)(e)),
        };
        if let Err(reason) = send_bounded(transport, &envelope, &raw, smtp.timeout).await {
            tracing::warn!(
                file = %path.display(),
                remaining = outcome.remaining,
                error = %reason,
                "sending a queued report failed; it and any later ones stay in the outbox"
            );
            return Ok(outcome);
        }
        // Sent: delete it now, so it is never sent twice.
        tokio::fs::remove_file(path).await.map_err(io_err(path))?;
        outcome.sent += 1;
        outcome.remaining -= 1;
        tracing::info!(file = %path.display(), "sent a queued report from the outbox");
    }
    Ok(outcome)
}

/// Sends every `.eml` file waiting in `cfg.outbox`, oldest first (in name order), each
/// as the raw bytes stored, to the envelope built from `cfg.from` and `cfg.to`, each send
/// bounded by `smtp.timeout`. A file is deleted only after the relay accepted it, so
/// each message is delivered once. It stops at the first failure (logged, with the
/// file name and the reason) and leaves that file and the later ones in place.
///
/// Without SMTP nothing is sent and `remaining` is the number of waiting files. A missing
/// outbox folder counts as empty.
///
/// # Errors
/// - [`ReportError::SmtpUrl`] when `cfg.smtp.url` is not accepted by lettre.
/// - [`ReportError::Io`] when the outbox cannot be listed or a file cannot be read, or
///   a sent file cannot be deleted (it would be sent again next time).
/// - [`ReportError::Build`] when the envelope cannot be built (no recipient).
pub async fn flush_outbox(cfg: &ReportConfig) -> Result<FlushOutcome, ReportError> {
    let Some(smtp) = &cfg.smtp else {
        let remaining = outbox_files(&cfg.outbox).await?.len();
        return Ok(FlushOutcome { sent: 0, remaining });
    };
    let transport = build_transport(smtp)?;
    flush_with(cfg, smtp, &transport).await
}

/// Sends this run's report, or keeps it in the outbox.
///
/// 1. When [`should_send`] says no: [`Delivery::NotNeeded`], nothing else happens.
/// 2. Without `cfg.smtp`: the message is written to the outbox ([`Delivery::Outboxed`]).
/// 3. With SMTP: one transport is built for this call; the outbox is flushed first
///    (older messages go first, see [`flush_outbox`]). If messages are still waiting
///    after that, the new report is queued behind them rather than sent ahead of them.
///    Otherwise it is sent, bounded by `smtp.timeout` as a whole ([`Delivery::Sent`]);
///    if sending fails or times out, it is written to the outbox. An SMTP URL that
///    lettre rejects, or an outbox error while flushing, is logged and the report is
///    still sent or kept.
///
/// The message is [`build_message`]'s, with `ctx` (history chart, ledger and policy
/// hashes); [`ReportContext::default`] gives a report without history.
///
/// Failure reasons are logged with `tracing` (warn/error) without any message content.
///
/// # Errors
/// - [`ReportError::Build`] when the message cannot be built (e.g. no recipient).
/// - [`ReportError::Io`] when the report had to go to the outbox and could not be
///   written there: the report is lost, the caller should say so.
pub async fn deliver(
    cfg: &ReportConfig,
    summary: &RunSummary,
    ctx: &ReportContext,
) -> Result<Delivery, ReportError> {
    if !should_send(cfg, summary) {
        return Ok(Delivery::NotNeeded);
    }
    let message = build_message(cfg, summary, ctx)?;
    let raw = message.formatted();
    let raw_ref: &[u8] = &raw;
    let outbox = |why: &'static str| async move {
        let path = write_outbox(&cfg.outbox, summary.run_id, raw_ref).await?;
        tracing::info!(file = %path.display(), reason = why, "report kept in the outbox");
        Ok(Delivery::Outboxed(path))
    };

    let Some(smtp) = &cfg.smtp else {
        return outbox("no SMTP relay configured").await;
    };
    let transport = match build_transport(smtp) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "cannot use the SMTP relay; keeping the report in the outbox");
            return outbox("invalid SMTP URL").await;
        }
    };
    match flush_with(cfg, smtp, &transport).await {
        Ok(flushed) if flushed.remaining > 0 => {
            return outbox("older reports are still waiting in the outbox").await;
        }
        Ok(_) => {}
        Err(e) => {
            tracing::error!(error = %e, "flushing the outbox failed; sending this report anyway");
        }
    }
    match send_bounded(&transport, message.envelope(), &raw, smtp.timeout).await {
        Ok(()) => {
            tracing::info!(run_id = ?summary.run_id, "report sent");
            Ok(Delivery::Sent)
        }
        Err(reason) => {
            tracing::warn!(error = %reason, "sending the report failed; keeping it in the outbox");
            outbox("sending failed").await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouping() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(1234567), "1,234,567");
    }

    #[test]
    fn escaping() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    fn smtp(url: &str) -> SmtpConfig {
        SmtpConfig {
            url: url.to_owned(),
            password: Some(SecretString::from("pw")),
            timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn plain_text_smtp_only_to_loopback() {
        if let Err(e) = build_transport(&smtp("smtp://127.0.0.1:2525")) {
            panic!("{e}");
        }
        assert!(build_transport(&smtp("smtp://user@localhost:25")).is_ok());
        assert!(build_transport(&smtp("smtp://[::1]:25")).is_ok());
        assert!(build_transport(&smtp("smtps://user@mail.example.org")).is_ok());
        assert!(build_transport(&smtp("smtp://u@mail.example.org:587?tls=required")).is_ok());
        assert!(matches!(
            build_transport(&smtp("smtp://user@mail.example.org:25")),
            Err(ReportError::SmtpUrl { .. })
        ));
        assert!(matches!(
            build_transport(&smtp("ftp://mail.example.org")),
            Err(ReportError::SmtpUrl { .. })
        ));
        assert!(matches!(
            build_transport(&smtp("not a url")),
            Err(ReportError::SmtpUrl { .. })
        ));
    }

    fn row(run_id: i64, affected: u64, status: &str) -> HistoryRow {
        HistoryRow {
            run_id,
            started: String::new(),
            day: String::new(),
            affected,
            status: status.to_owned(),
            current: false,
        }
    }

    #[test]
    fn chart_handles_extreme_counts() {
        let rows = [row(1, u64::MAX, "ok"), row(2, 1, "ok"), row(3, 0, "failed")];
        let png = chart_png(&rows).expect("png");
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&png[16..24], [0, 0, 0, 150, 0, 0, 0, 120]);
        // No history at all still encodes (one empty slot).
        assert!(chart_png(&[]).is_ok());
        assert!(chart_png(&[row(1, 0, "ok")]).is_ok());
    }

    #[test]
    fn records_are_named_by_table_and_action() {
        assert!(is_patron_table("borrowers") && is_patron_table("actor.usr"));
        assert!(!is_patron_table("old_issues") && !is_patron_table("usr_notes"));
        assert_eq!(records(1, true), "1 patron record");
        assert_eq!(records(2_113, false), "2,113 records");
        assert_eq!(
            and_list(&["a".into(), "b".into(), "c".into()]),
            "a, b and c"
        );
        assert_eq!(short_error("  two\n lines.  "), "two lines");
    }

    #[test]
    fn percent() {
        assert_eq!(percent_decode("a%40b%2"), "a@b%2");
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("x%zz"), "x%zz");
    }
}
