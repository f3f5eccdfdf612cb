//! `lethe status`: what a monitoring system asks of the worker. The last run (from the
//! ledger), the next scheduled run (from the config), whether the last enforced run is
//! overdue ([`crate::engine::missed_run`], the same rule as the report's and `lethe
//! verify`'s missed-run warning), and the ledger's head and whether its hash chain
//! verifies. [`Status::state`] maps that onto a Nagios-style state for `status
//! --check`:
//!
//! | state | exit | when |
//! |---|---|---|
//! | OK | 0 | the last run ended `ok` (or is running) and no run is overdue |
//! | WARNING | 1 | the last run ended `tripped` or `interrupted`, or the last enforced run is overdue |
//! | CRITICAL | 2 | the last run `failed`, no run was ever recorded, the database is unreachable or its ledger unreadable, the ledger's chain does not verify, or the config is invalid |
//!
//! The worst state found wins. Reading the status changes nothing: Lethe's tables are
//! not created when missing, and the run lock is never taken (a check every few
//! minutes must not make a real run skip). Counts, ids, times and hashes only.
//!
//! [`LedgerFacts`] is also what the metrics file reports about the ledger after a run
//! (its chain verified, the last success).

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::config::{Config, TableName};
use crate::db::{Db, DbError};
use crate::engine::{self, EngineError};
use crate::ledger::{self, LedgerEntry, chain};

/// A Nagios-style state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum State {
    /// Exit 0.
    Ok,
    /// Exit 1.
    Warning,
    /// Exit 2.
    Critical,
}

impl State {
    /// `OK`, `WARNING` or `CRITICAL`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Ok => "OK",
            State::Warning => "WARNING",
            State::Critical => "CRITICAL",
        }
    }

    /// The Nagios plugin exit code: 0, 1 or 2.
    pub fn exit_code(self) -> u8 {
        match self {
            State::Ok => 0,
            State::Warning => 1,
            State::Critical => 2,
        }
    }
}

/// The last run recorded in the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastRun {
    /// Its ledger id.
    pub id: i64,
    /// `enforce` or `dry-run`.
    pub mode: String,
    /// `running`, `ok`, `failed`, `tripped` or `interrupted`.
    pub status: String,
    /// Start, RFC 3339 UTC.
    pub started_at: String,
    /// End, RFC 3339 UTC; `None` while running.
    pub finished_at: Option<String>,
    /// Rows changed over all classes.
    pub changed: i64,
}

/// What the ledger says, read without writing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LedgerFacts {
    /// Entries in the ledger (runs, policy changes, legal-hold events).
    pub entries: usize,
    /// Whether the hash chain verified.
    pub verified: bool,
    /// Where it is broken, when it is (`ledger entry N: …`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broken: Option<String>,
    /// The hash of the last sealed entry (hex SHA-256); `None` when there is none.
    pub head_hash: Option<String>,
    /// The last run (`kind` run), if any. (In `status --json`, at the top level.)
    #[serde(skip)]
    pub last_run: Option<LastRun>,
    /// When the last run with status `ok` (either mode) ended, UTC. (In `status
    /// --json`, at the top level.)
    #[serde(skip)]
    pub last_success: Option<DateTime<Utc>>,
}

/// Reads the ledger and verifies its chain. `Ok(None)` when Lethe's tables do not exist
/// yet (no run has ever happened on this database); nothing is created.
///
/// # Errors
/// [`DbError`] when the database cannot be read.
pub async fn ledger_facts(db: &Db) -> Result<Option<LedgerFacts>, DbError> {
    let runs = TableName::new("lethe_runs").map_err(DbError::Schema)?;
    if db.columns(&runs).await?.is_empty() {
        return Ok(None);
    }
    let entries = ledger::entries(db, None).await?;
    Ok(Some(facts_of(&entries)))
}

/// [`LedgerFacts`] of entries in id order.
pub fn facts_of(entries: &[LedgerEntry]) -> LedgerFacts {
    let check = chain::verify(entries);
    let runs = || entries.iter().rev().filter(|e| e.kind == "run");
    let last_run = runs().next().map(|e| LastRun {
        id: e.id,
        mode: e.mode.clone(),
        status: e.status.clone(),
        started_at: e.started_at.clone(),
        finished_at: e.finished_at.clone(),
        changed: e.total_affected(),
    });
    let last_success = runs()
        .filter(|e| e.status == "ok")
        .find_map(|e| e.finished_at.as_deref().and_then(parse_utc));
    LedgerFacts {
        entries: entries.len(),
        verified: check.is_ok(),
        broken: check.err().map(|e| e.to_string()),
        head_hash: entries.iter().rev().find_map(|e| e.hash.clone()),
        last_run,
        last_success,
    }
}

fn parse_utc(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The next scheduled run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NextRun {
    /// In the library's zone, RFC 3339 with its offset.
    pub local: String,
    /// The same instant, RFC 3339 UTC.
    pub utc: String,
    /// The library's IANA zone (`schedule.timezone`).
    pub timezone: String,
}

/// Everything `lethe status` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    /// The Nagios-style state (see the module's table).
    pub state: State,
    /// One line saying why: the text after `LETHE STATE - `.
    pub message: String,
    /// When the status was read, RFC 3339 UTC.
    pub checked_at: String,
    /// The configured mode (`enforce` or `dry-run`).
    pub mode: String,
    /// The last run in the ledger; `None` when none was recorded (or the database
    /// could not be read).
    pub last_run: Option<LastRun>,
    /// When the last run with status `ok` ended, RFC 3339 UTC.
    pub last_success: Option<String>,
    /// The next fire time of `schedule.cron`; `None` if it never fires again.
    pub next_run: Option<NextRun>,
    /// Whether the last enforced run is older than `report.overdue_after` (default:
    /// twice the schedule's interval). Dry-run runs do not count; `false` when no
    /// enforced run has ever ended `ok` (then `last_run` tells).
    pub overdue: bool,
    /// The missed-run sentence, when overdue.
    pub missed_run: Option<String>,
    /// The ledger; `None` when Lethe's tables do not exist or could not be read.
    pub ledger: Option<LedgerFacts>,
    /// What stopped the status from being read in full (database unreachable), no
    /// patron data.
    pub error: Option<String>,
}

impl Status {
    /// The Nagios status line: `LETHE OK - …` with performance data after `|`.
    pub fn check_line(&self) -> String {
        let mut line = format!("LETHE {} - {}", self.state.as_str(), self.message);
        if let Some(r) = &self.last_run {
            line.push_str(&format!(" | changed={}", r.changed));
            if let Some(age) = parse_utc(&r.started_at)
                .and_then(|s| parse_utc(&self.checked_at).map(|now| (now - s).num_seconds().max(0)))
            {
                line.push_str(&format!(" last_run_age={age}s"));
            }
        }
        line
    }
}

/// Reads the status at `now`. Never fails: an unreachable database or an unreadable
/// ledger is a CRITICAL status saying so.
pub async fn status(cfg: &Config, now: DateTime<Utc>) -> Status {
    let next_run = next_run(cfg, now);
    let read = async {
        let db = Db::connect(cfg).await?;
        let r = async {
            let facts = ledger_facts(&db).await?;
            let missed = match &facts {
                Some(_) => engine::missed_run(cfg, &db, now).await?,
                None => None,
            };
            Ok::<_, EngineError>((facts, missed))
        }
        .await;
        db.close().await;
        r
    }
    .await;
    match read {
        Ok((facts, missed)) => assess(cfg, now, next_run, facts, missed, None),
        Err(e) => assess(cfg, now, next_run, None, None, Some(e.to_string())),
    }
}

fn next_run(cfg: &Config, now: DateTime<Utc>) -> Option<NextRun> {
    crate::schedule::next_fire(&cfg.schedule, now).map(|t| NextRun {
        local: t.with_timezone(&cfg.schedule.timezone).to_rfc3339(),
        utc: t.to_rfc3339_opts(SecondsFormat::Secs, true),
        timezone: cfg.schedule.timezone.name().to_string(),
    })
}

/// The state and message from what was read: the worst finding wins, and the message
/// lists the findings of that state first.
fn assess(
    cfg: &Config,
    now: DateTime<Utc>,
    next_run: Option<NextRun>,
    facts: Option<LedgerFacts>,
    missed: Option<String>,
    error: Option<String>,
) -> Status {
    let mut findings: Vec<(State, String)> = Vec::new();
    if let Some(e) = &error {
        findings.push((State::Critical, format!("cannot read the ledger: {e}")));
    }
    let last_run = facts.as_ref().and_then(|f| f.last_run.clone());
    if let Some(f) = &facts {
        if let Some(b) = &f.broken {
            findings.push((
                State::Critical,
                format!("the ledger's hash chain is broken at {b}"),
            ));
        }
    }
    match &last_run {
        None if error.is_none() => {
            findings.push((State::Critical, "no run recorded in the ledger yet".into()));
        }
        None => {}
        Some(r) => {
            let when = r.finished_at.as_deref().unwrap_or(&r.started_at);
            let what = format!(
                "last run {} ({}) {} at {when}, {} rows changed",
                r.id, r.mode, r.status, r.changed
            );
            match r.status.as_str() {
                "ok" => findings.push((State::Ok, what)),
                "running" => findings.push((
                    State::Ok,
                    format!("run {} ({}) running since {}, {} rows changed so far", r.id, r.mode, r.started_at, r.changed),
                )),
                "tripped" => findings.push((
                    State::Warning,
                    format!("{what}: a class hit the circuit breaker (safety.max_fraction); acknowledge a large run with lethe run --once --allow-large"),
                )),
                "interrupted" => findings.push((
                    State::Warning,
                    format!("{what}: it stopped before the end; the next run finishes the work"),
                )),
                "failed" => findings.push((
                    State::Critical,
                    format!("{what}: see lethe ledger show {}", r.id),
                )),
                other => findings.push((State::Critical, format!("last run {} has the unknown status {other:?}", r.id))),
            }
        }
    }
    if let Some(m) = &missed {
        findings.push((State::Warning, m.clone()));
    }
    let state = findings
        .iter()
        .map(|(s, _)| *s)
        .max()
        .unwrap_or(State::Critical);
    findings.sort_by_key(|(s, _)| std::cmp::Reverse(*s));
    let mut message = findings
        .into_iter()
        .map(|(_, m)| m)
        .collect::<Vec<_>>()
        .join("; ");
    if let Some(n) = &next_run {
        message.push_str(&format!("; next run {}", n.local));
    }
    Status {
        state,
        message,
        checked_at: now.to_rfc3339_opts(SecondsFormat::Secs, true),
        mode: cfg.safety.mode.as_str().to_string(),
        last_success: facts
            .as_ref()
            .and_then(|f| f.last_success)
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true)),
        last_run,
        next_run,
        overdue: missed.is_some(),
        missed_run: missed,
        ledger: facts,
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        crate::config::parse_str(
            "database:\n  url: sqlite://x.db\nschedule:\n  cron: \"30 2 * * *\"\n  timezone: America/New_York\nprofile: koha\n",
            "x.yaml",
            std::path::Path::new("/tmp"),
            &|_| None,
        )
        .unwrap()
    }

    fn facts(status: &str) -> LedgerFacts {
        LedgerFacts {
            entries: 1,
            verified: true,
            broken: None,
            head_hash: Some("ab".into()),
            last_run: Some(LastRun {
                id: 3,
                mode: "enforce".into(),
                status: status.into(),
                started_at: "2026-12-01T07:30:00Z".into(),
                finished_at: Some("2026-12-01T07:30:02Z".into()),
                changed: 12,
            }),
            last_success: None,
        }
    }

    fn now() -> DateTime<Utc> {
        "2026-12-01T08:00:00Z".parse().unwrap()
    }

    #[test]
    fn each_finding_maps_to_its_state() {
        let c = cfg();
        for (status, state) in [
            ("ok", State::Ok),
            ("running", State::Ok),
            ("tripped", State::Warning),
            ("interrupted", State::Warning),
            ("failed", State::Critical),
        ] {
            let s = assess(&c, now(), None, Some(facts(status)), None, None);
            assert_eq!(s.state, state, "{status}: {}", s.message);
        }
        let overdue = assess(
            &c,
            now(),
            None,
            Some(facts("ok")),
            Some("Missed runs: …".into()),
            None,
        );
        assert_eq!(overdue.state, State::Warning);
        assert!(
            overdue.message.starts_with("Missed runs"),
            "{}",
            overdue.message
        );
        let mut broken = facts("ok");
        broken.verified = false;
        broken.broken = Some("ledger entry 2: its content does not match its hash".into());
        assert_eq!(
            assess(&c, now(), None, Some(broken), None, None).state,
            State::Critical
        );
        assert_eq!(
            assess(&c, now(), None, None, None, None).state,
            State::Critical
        );
        let unreachable = assess(&c, now(), None, None, None, Some("cannot connect".into()));
        assert_eq!(unreachable.state, State::Critical);
        assert!(
            unreachable
                .check_line()
                .starts_with("LETHE CRITICAL - cannot read the ledger: cannot connect")
        );
    }

    #[test]
    fn the_check_line_has_perfdata() {
        let s = assess(&cfg(), now(), None, Some(facts("ok")), None, None);
        assert_eq!(
            s.check_line(),
            "LETHE OK - last run 3 (enforce) ok at 2026-12-01T07:30:02Z, 12 rows changed | changed=12 last_run_age=1800s"
        );
    }
}
