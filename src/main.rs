//! The `lethe` command line: wiring and exit codes (DESIGN.md, "Command-line contract").
//!
//! Exit codes: 0 success; 1 a run or check failed at run time; 2 invalid config or
//! usage, and nothing was touched.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use lethe::config::{self, Config};
use lethe::db::Db;
use lethe::demo;
use lethe::engine::{self, EngineError};
use lethe::job;
use lethe::report::Delivery;
use lethe::schedule;
use lethe::summary::{RunStatus, RunSummary};

/// `println!` that ignores a closed stdout (`lethe check | head -1`) instead of
/// panicking.
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// `print!` that ignores a closed stdout.
macro_rules! out_raw {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($t)*);
    }};
}

/// The shipped retention.yaml, used by `demo` when no config file is found.
const DEFAULT_CONFIG: &str = include_str!("../retention.yaml");

#[derive(Parser, Debug)]
#[command(
    name = "lethe",
    version,
    about = "Enforces data-retention policy on library systems: Koha, or any schema mapped in retention.yaml."
)]
struct Cli {
    /// Path of retention.yaml.
    #[arg(long, global = true, env = "LETHE_CONFIG", default_value = config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Log format on stderr (levels through RUST_LOG).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Validate the config, connect, and confirm every table and column exists; count
    /// undated rows; warn about library-system settings against opt-in (consent check).
    Check {
        /// Consent-check warnings are errors (exit 1).
        #[arg(long)]
        strict: bool,
        /// Create the indexes the advice names (online where the database can), each
        /// recorded in the ledger; in safety.mode dry-run, only print them.
        #[arg(long)]
        create_indexes: bool,
    },
    /// Every table and column the profile knows to hold personal data or usage
    /// history: the class that covers it (or how it is covered otherwise, or not),
    /// the date and age of its oldest row, and whether an index serves its age column.
    /// Changes nothing.
    Inventory {
        /// One JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Dry run: per class, rows eligible now (or at --as-of) and rows kept by exemption.
    Plan {
        /// One JSON object on stdout.
        #[arg(long)]
        json: bool,
        /// A local time in the library's zone: "2026-12-08 02:30" or "2026-12-08".
        #[arg(long)]
        as_of: Option<String>,
    },
    /// Enforce; without --once, stay up and run on the schedule.
    Run {
        /// Run once and exit.
        #[arg(long)]
        once: bool,
        /// One JSON object on stdout (with --once).
        #[arg(long)]
        json: bool,
        /// Acknowledge a large run: the circuit breaker does not trip.
        #[arg(long)]
        allow_large: bool,
    },
    /// Compliance check for auditors: rows past their period and not exempt, per class
    /// (should be 0; exit 1 otherwise). Changes nothing.
    Verify {
        /// One JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// The last run, the next scheduled run, whether the last enforced run is overdue,
    /// and the ledger's head. Changes nothing.
    ///
    /// With --check, a Nagios-style check: one line `LETHE OK - ...` and exit 0 OK (the
    /// last run ended ok, or is running, and none is overdue); 1 WARNING (the last run
    /// tripped or was interrupted, or the last enforced run is older than
    /// report.overdue_after); 2 CRITICAL (the last run failed, no run was ever recorded,
    /// the database is unreachable, the ledger's hash chain does not verify, or the
    /// config is invalid). Without --check: exit 0 when the status was read, 1 when the
    /// database is unreachable, 2 for an invalid config.
    Status {
        /// One JSON object on stdout (with --check, the exit code is the check's).
        #[arg(long)]
        json: bool,
        /// Nagios-style: one status line and exit 0 OK, 1 WARNING, 2 CRITICAL.
        #[arg(long)]
        check: bool,
    },
    /// The public retention schedule, written from the config.
    Policy {
        #[arg(long, value_enum, default_value_t = PolicyFormat::Markdown)]
        format: PolicyFormat,
    },
    /// The ledger of runs: list, show, verify the hash chain, export.
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
    },
    /// Legal holds: keep every record of one patron while a court order or an
    /// investigation requires it (recorded in the ledger).
    Hold {
        #[command(subcommand)]
        command: HoldCommand,
    },
    /// Create the demo library (SQLite) if absent, then run once on it.
    Demo {
        /// Folder of the demo library and its outbox.
        #[arg(long, default_value = "demo")]
        dir: PathBuf,
    },
    /// Write the manual page lethe(1) to stdout, or every page (one per command) into
    /// --out DIR. Generated from this command line; needs no config.
    Man {
        /// Folder to write lethe.1, lethe-run.1, ... into.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Write the JSON Schema (draft 2020-12) of retention.yaml to stdout, for editors
    /// and validators; retention.schema.json is its output. Needs no config.
    Schema,
    /// Write a shell completion script to stdout. Needs no config.
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand, Debug)]
enum HoldCommand {
    /// Place a hold: every class with a patron column keeps this patron's rows.
    Add {
        /// The library system's patron id (Koha borrowernumber, Evergreen actor.usr.id).
        #[arg(long)]
        patron: i64,
        /// A docket or reference number, stored in the ledger. Never a patron's name or
        /// anything else that identifies the patron: the ledger is read by auditors.
        #[arg(long = "reference", visible_alias = "case")]
        case_ref: String,
        /// The last day the hold stands (YYYY-MM-DD, the library's time zone); the first
        /// run after it releases the hold and records that in the ledger. Without it,
        /// the hold stands until `lethe hold release`.
        #[arg(long, value_parser = parse_hold_date)]
        until: Option<chrono::NaiveDate>,
    },
    /// The open holds (with --all, released ones too).
    List {
        /// Include released holds.
        #[arg(long)]
        all: bool,
        /// One JSON array on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Release a hold: the patron's rows follow the policy again from the next run.
    Release {
        /// The hold's id.
        id: i64,
    },
}

#[derive(Subcommand, Debug)]
enum LedgerCommand {
    /// One line per run: id, start, mode, status, rows changed, hash.
    List,
    /// One run in full: its classes, counts, cutoffs, policy and hashes.
    Show {
        /// The run id.
        id: i64,
        /// One JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Recompute the hash chain: the first altered, removed or reordered entry (exit 1),
    /// or the number of entries verified (exit 0).
    Verify {
        /// Verify an exported file offline, without a database.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Write the ledger to stdout: JSON (self-contained, verifiable offline) or CSV.
    Export {
        #[arg(long, value_enum, default_value_t = ExportFormat::Json)]
        format: ExportFormat,
        /// Only runs started on or after this date (UTC), e.g. 2026-01-01.
        #[arg(long)]
        since: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PolicyFormat {
    Markdown,
    Html,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ExportFormat {
    Json,
    Csv,
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // tokio_cron_scheduler logs an ERROR at every clean shutdown ("Error receiving
        // value Closed"): noise for administrators; RUST_LOG can turn it back on.
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new("info,sqlx=warn,tokio_cron_scheduler=off")
        });
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        // Through the progress bars, when `run --once` shows them: each line lifts
        // them off the screen and they are drawn again below it.
        .with_writer(lethe::progress::stderr_writer)
        // When stderr breaks (journald restarted, `lethe run 2>&1 | head`), the
        // subscriber's own report of the failed write is an eprintln!, which panics in
        // whatever task was logging: the run crashed half-way, or hung deaf to SIGTERM.
        // Dropping the line is the lesser harm: the ledger and the report still record
        // the run.
        .log_internal_errors(false);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    init_logs(cli.log_format);
    let code = match &cli.command {
        Command::Check {
            strict,
            create_indexes,
        } => check(&cli.config, *strict, *create_indexes).await,
        Command::Inventory { json } => inventory_cmd(&cli.config, *json).await,
        Command::Plan { json, as_of } => plan(&cli.config, *json, as_of.as_deref()).await,
        Command::Run {
            once,
            json,
            allow_large,
        } => {
            let json_logs = matches!(cli.log_format, LogFormat::Json);
            run(&cli.config, *once, *json, *allow_large, json_logs).await
        }
        Command::Demo { dir } => {
            demo_cmd(&cli.config, dir, matches!(cli.log_format, LogFormat::Json)).await
        }
        Command::Ledger { command } => ledger_cmd(&cli.config, command).await,
        Command::Hold { command } => hold_cmd(&cli.config, command).await,
        Command::Verify { json } => verify_cmd(&cli.config, *json).await,
        Command::Status { json, check } => status_cmd(&cli.config, *json, *check).await,
        Command::Man { out } => man_cmd(out.as_deref()),
        Command::Schema => {
            out_raw!("{}", lethe::config::schema::json_schema_text());
            0
        }
        Command::Completions { shell } => {
            use std::io::Write as _;
            let script = lethe::ops::manual::completions(Cli::command(), *shell);
            // A closed stdout is not an error.
            let _ = std::io::stdout().write_all(&script);
            0
        }
        Command::Policy { format } => match load(&cli.config) {
            Ok(cfg) => {
                let today = Utc::now()
                    .with_timezone(&cfg.schedule.timezone)
                    .date_naive();
                match format {
                    PolicyFormat::Markdown => out_raw!("{}", lethe::publish::markdown(&cfg, today)),
                    PolicyFormat::Html => out_raw!("{}", lethe::publish::html(&cfg, today)),
                }
                0
            }
            Err(c) => c,
        },
    };
    ExitCode::from(code)
}

/// `lethe man`: lethe(1) on stdout, or every page into `out`.
fn man_cmd(out: Option<&Path>) -> u8 {
    use lethe::ops::manual;
    match out {
        None => {
            // A closed stdout (`lethe man | head`) is not an error.
            let _ = manual::write_man(Cli::command(), &mut std::io::stdout());
            0
        }
        Some(dir) => match manual::write_man_dir(Cli::command(), dir) {
            Ok(pages) => {
                for p in pages {
                    out!("{}", p.display());
                }
                0
            }
            Err(e) => {
                eprintln!(
                    "lethe: cannot write the man pages into {}: {e}",
                    dir.display()
                );
                1
            }
        },
    }
}

fn load(path: &Path) -> Result<Config, u8> {
    config::load(path).map_err(|errs| {
        eprintln!("{errs}");
        let n = errs.0.len();
        eprintln!(
            "lethe: {n} {} in the configuration; nothing was touched",
            if n == 1 { "error" } else { "errors" }
        );
        2
    })
}

/// Loads the config and connects; the exit code on failure (2 invalid config, 1
/// unreachable database), its message already printed.
async fn load_and_connect(path: &Path) -> Result<(Config, Db), u8> {
    let cfg = load(path)?;
    match Db::connect(&cfg).await {
        Ok(db) => Ok((cfg, db)),
        Err(e) => Err(engine_exit(&e.into())),
    }
}

fn engine_exit(e: &EngineError) -> u8 {
    eprintln!("lethe: {e}");
    match e {
        EngineError::Mismatch(_) => {
            eprintln!("lethe: the configuration does not fit this database; nothing was touched");
            2
        }
        EngineError::Database(_) | EngineError::Clock(_) => 1,
    }
}

async fn check(path: &Path, strict: bool, create_indexes: bool) -> u8 {
    let cfg = match load(path) {
        Ok(c) => c,
        Err(c) => return c,
    };
    out!(
        "config: {} ok ({} classes)",
        path.display(),
        cfg.classes.len()
    );
    let db = match Db::connect(&cfg).await {
        Ok(db) => db,
        Err(e) => return engine_exit(&e.into()),
    };
    out!("database: {} reachable", cfg.database.display_url);
    // The outbox must take a report when SMTP is down.
    let probe = cfg.report.outbox.join(".lethe-check");
    let writable = std::fs::create_dir_all(&cfg.report.outbox)
        .and_then(|()| std::fs::write(&probe, b"ok"))
        .and_then(|()| std::fs::remove_file(&probe));
    match writable {
        Ok(()) => out!("outbox: {} writable", cfg.report.outbox.display()),
        Err(e) => {
            eprintln!(
                "lethe: the outbox {} is not writable: {e}",
                cfg.report.outbox.display()
            );
            db.close().await;
            return 1;
        }
    }
    if let Some(m) = &cfg.metrics {
        // The folder must take the metrics file after every run; the probe's name does
        // not end in .prom, so node_exporter never reads it.
        let folder = m
            .textfile
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let probe = folder.join(".lethe-check");
        match std::fs::write(&probe, b"ok").and_then(|()| std::fs::remove_file(&probe)) {
            Ok(()) => out!("metrics: {} writable", folder.display()),
            Err(e) => {
                eprintln!(
                    "lethe: the metrics folder {} is not writable: {e}",
                    folder.display()
                );
                db.close().await;
                return 1;
            }
        }
    }
    let code = match engine::prepare(&cfg, &db).await {
        Ok(p) => {
            out!("schema: every table and column the classes name exists");
            match p.anonymous_patron {
                Some(id) => out!("anonymous patron: {id} exists"),
                None if cfg.anonymous_patron.is_some() => {
                    out!("anonymous patron: not set (anonymized rows get NULL)")
                }
                None => {}
            }
            match engine::undated(&cfg, &db, &p, Utc::now()).await {
                Ok(counts) => {
                    let total: u64 = counts.iter().map(|(_, n)| n).sum();
                    out!(
                        "undated rows (age column NULL: never past a period; only immediate rules reach them): {total}"
                    );
                    for (name, n) in &counts {
                        out!("  {name:<30} {n}");
                    }
                }
                Err(e) => {
                    db.close().await;
                    return engine_exit(&e);
                }
            }
            let consent = match lethe::consent::check(&cfg, &db, p.anonymous_patron).await {
                Ok(findings) => findings,
                Err(e) => {
                    db.close().await;
                    return engine_exit(&e.into());
                }
            };
            if consent.is_empty() {
                out!("consent: no setting of the library system works against opt-in");
            }
            if let Err(code) = index_advice(&cfg, &db, create_indexes).await {
                db.close().await;
                return code;
            }
            for f in &consent {
                let level = if strict { "error" } else { "warning" };
                eprintln!("lethe: consent {level}: {}", f.message);
                tracing::warn!(check = f.check, patrons = f.patrons, "consent check");
            }
            match engine::check_clock(&cfg, &db, Utc::now()).await {
                Ok(()) if strict && !consent.is_empty() => {
                    out!("clock: within safety.max_clock_skew of the database");
                    1
                }
                Ok(()) => {
                    out!("clock: within safety.max_clock_skew of the database");
                    0
                }
                Err(e) => engine_exit(&e),
            }
        }
        Err(e) => engine_exit(&e),
    };
    db.close().await;
    code
}

/// The index advice of `check`, and with `create_indexes` the indexes created (or, in
/// dry-run mode, listed). Advice never fails the check; a failed creation exits 1.
async fn index_advice(cfg: &Config, db: &Db, create_indexes: bool) -> Result<(), u8> {
    let advice = match lethe::inventory::index_advice(cfg, db).await {
        Ok(a) => a,
        Err(e) => return Err(engine_exit(&e.into())),
    };
    if advice.is_empty() {
        out!("indexes: an index serves every enabled class's age column and linked column");
        return Ok(());
    }
    out!(
        "index advice ({}): no index serves these columns; counts and batches scan the table",
        advice.len()
    );
    if advice
        .iter()
        .any(|a| a.purpose == lethe::inventory::IndexPurpose::Linked)
    {
        out!(
            "  (linked: a linked column; each batch reads every linked row of its patrons instead)"
        );
    }
    let width = advice.iter().map(|a| a.class.len()).max().unwrap_or(0);
    for a in &advice {
        let rows = a
            .rows
            .map(|n| format!("~{n} rows scanned"))
            .unwrap_or_else(|| "rows unknown".into());
        let linked = if a.purpose == lethe::inventory::IndexPurpose::Linked {
            "  (linked)"
        } else {
            ""
        };
        out!("  {:<width$}  {}  {rows}{linked}", a.class, a.target());
        match (&a.statement, &a.note) {
            (Some(s), _) => out!("  {:<width$}    {s};", ""),
            (None, Some(n)) => out!("  {:<width$}    {n}", ""),
            (None, None) => {}
        }
    }
    if !create_indexes {
        if advice.iter().any(|a| a.statement.is_some()) {
            out!("  (lethe check --create-indexes creates them)");
        }
        return Ok(());
    }
    if cfg.safety.mode == lethe::summary::Mode::DryRun {
        for a in advice.iter().filter(|a| a.statement.is_some()) {
            out!(
                "dry run (safety.mode): would create index {} on {}",
                a.index,
                a.target()
            );
        }
        return Ok(());
    }
    match lethe::inventory::create_indexes(db, &advice).await {
        Ok(created) => {
            for c in &created {
                out!(
                    "created index {} on {} (ledger entry {})",
                    c.advice.index,
                    c.advice.target(),
                    c.ledger_entry
                );
            }
            Ok(())
        }
        Err(e) => {
            eprintln!("lethe: creating an index failed: {e}");
            Err(1)
        }
    }
}

/// `lethe inventory`.
async fn inventory_cmd(path: &Path, json: bool) -> u8 {
    let (cfg, db) = match load_and_connect(path).await {
        Ok(x) => x,
        Err(c) => return c,
    };
    let r = lethe::inventory::inventory(&cfg, &db, Utc::now()).await;
    db.close().await;
    match r {
        Ok(inv) if json => {
            out!("{}", serde_json::to_string(&inv).unwrap_or_default());
            0
        }
        Ok(inv) => {
            out_raw!("{}", inv.text());
            0
        }
        Err(e) => {
            if json {
                out!("{}", serde_json::json!({ "error": e.to_string() }));
            }
            engine_exit(&e.into())
        }
    }
}

/// Parses `--as-of` as a local time in the library's zone.
fn parse_as_of(s: &str, cfg: &Config) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    let local = [
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
    .or_else(|| {
        NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .ok()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
    })?;
    lethe::policy::resolve_local(cfg.schedule.timezone, local).map(|t| t.with_timezone(&Utc))
}

async fn plan(path: &Path, json: bool, as_of: Option<&str>) -> u8 {
    let cfg = match load(path) {
        Ok(c) => c,
        Err(c) => return c,
    };
    let at = match as_of {
        None => Utc::now(),
        Some(s) => match parse_as_of(s, &cfg) {
            Some(t) => t,
            None => {
                eprintln!(
                    "lethe: --as-of {s:?} is not a local date and time such as \"2026-12-08 02:30\""
                );
                return 2;
            }
        },
    };
    let db = match Db::connect(&cfg).await {
        Ok(db) => db,
        Err(e) => {
            let e: EngineError = e.into();
            json_failure(json, &e.to_string());
            return engine_exit(&e);
        }
    };
    let result = engine::plan(&cfg, &db, at).await;
    db.close().await;
    match result {
        Ok(s) => {
            print_summary(&s, json, "plan");
            0
        }
        Err(e) => {
            json_failure(json, &e.to_string());
            engine_exit(&e)
        }
    }
}

fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = match signal(SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        tracing::info!("shutdown requested: the current batch commits, then the run stops");
        t.cancel();
    });
    token
}

async fn run(path: &Path, once: bool, json: bool, allow_large: bool, json_logs: bool) -> u8 {
    let cfg = match load(path) {
        Ok(c) => c,
        Err(c) => return c,
    };
    let cancel = shutdown_token();
    if !once {
        // Health check at boot: a wrong URL or schema fails now, not at 02:30. The
        // metrics file says so too (monitoring hears of a daemon that cannot start).
        let started = Utc::now();
        let failed = match Db::connect(&cfg).await {
            Ok(db) => {
                let r = engine::prepare(&cfg, &db).await;
                db.close().await;
                r.err().map(|e| (e, true))
            }
            Err(e) => Some((e.into(), false)),
        };
        if let Some((e, reachable)) = failed {
            let summary = job::failure_summary(&cfg, started, &e);
            let _ = job::write_metrics(&cfg, &summary, reachable).await;
            return engine_exit(&e);
        }
        return match schedule::run_daemon(&cfg, cancel).await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("lethe: {e}");
                1
            }
        };
    }
    // On a terminal, a bar per class; otherwise progress events in the log.
    let progress = lethe::progress::Progress::for_run_once(json, json_logs);
    match job::run_once_with(&cfg, allow_large, cancel, progress).await {
        Ok(outcome) => {
            print_summary(&outcome.summary, json, "run");
            // Another worker holds the run lock: nothing done, no report, exit 0 (1
            // when the metrics file could not be written).
            if outcome.summary.status == RunStatus::Skipped {
                if !json {
                    print_metrics(outcome.metrics.as_ref());
                }
                return u8::from(metrics_failed(outcome.metrics.as_ref()));
            }
            if !json {
                print_delivery(outcome.delivery.as_ref());
                print_metrics(outcome.metrics.as_ref());
            }
            match (run_exit(&outcome.summary), &outcome.delivery) {
                // The director must hear of every run: a report that could be neither
                // sent nor kept in the outbox fails the run.
                (0, None) => 1,
                // Monitoring must hear of it too: a metrics file that could not be
                // written exits 1 (the run's changes and ledger entry stand).
                (0, _) if metrics_failed(outcome.metrics.as_ref()) => 1,
                (code, _) => code,
            }
        }
        Err(e) => {
            json_failure(json, &e.to_string());
            engine_exit(&e)
        }
    }
}

/// With `--json`, a failure before any summary still prints one JSON object.
fn json_failure(json: bool, error: &str) {
    if json {
        out!(
            "{}",
            serde_json::json!({"run_id": null, "status": "failed", "error": error, "classes": []})
        );
    }
}

fn run_exit(s: &RunSummary) -> u8 {
    match s.status {
        RunStatus::Ok | RunStatus::Skipped | RunStatus::Interrupted => 0,
        RunStatus::Failed | RunStatus::Tripped => 1,
    }
}

fn metrics_failed(m: Option<&job::MetricsWrite>) -> bool {
    matches!(m, Some(job::MetricsWrite::Failed { .. }))
}

fn print_metrics(m: Option<&job::MetricsWrite>) {
    match m {
        Some(job::MetricsWrite::Written(p)) => out!("metrics: {}", p.display()),
        Some(job::MetricsWrite::Failed { path, error }) => out!(
            "metrics: could not write {}: {error} (the run itself stands; exit 1)",
            path.display()
        ),
        None => {}
    }
}

fn print_delivery(d: Option<&Delivery>) {
    match d {
        Some(Delivery::Sent) => out!("report: sent"),
        Some(Delivery::Outboxed(p)) => out!("report: {}", p.display()),
        Some(Delivery::NotNeeded) => out!("report: not needed (report.on)"),
        None => out!("report: could not be delivered (see the log)"),
    }
}

fn print_summary(s: &RunSummary, json: bool, what: &str) {
    if json {
        match serde_json::to_string(s) {
            Ok(j) => out!("{j}"),
            Err(e) => eprintln!("lethe: cannot serialize the summary: {e}"),
        }
        return;
    }
    if s.status == RunStatus::Skipped {
        out!(
            "{what}: skipped: another Lethe worker holds the run lock; nothing was written, no report sent"
        );
        return;
    }
    match s.run_id {
        Some(id) => out!(
            "{what}: run {id}, mode {}, status {}",
            s.mode.as_str(),
            s.status.as_str()
        ),
        None => out!(
            "{what}: mode {}, as of {}",
            s.mode.as_str(),
            s.started_at.to_rfc3339()
        ),
    }
    // Columns as wide as the longest class and table names (Koha's and Evergreen's run
    // to 26 and 28 characters).
    let nw = s
        .classes
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(0)
        .max(22);
    let tw = s
        .classes
        .iter()
        .map(|c| c.table.len())
        .max()
        .unwrap_or(0)
        .max(16);
    out!(
        "{:<nw$} {:<tw$} {:<12} {:>9} {:>9} {:>8} {:>8} {:>11} {:>9}  status",
        "class",
        "table",
        "action",
        "eligible",
        "affected",
        "opt_in",
        "legal",
        "obligations",
        "protected"
    );
    for c in &s.classes {
        out!(
            "{:<nw$} {:<tw$} {:<12} {:>9} {:>9} {:>8} {:>8} {:>11} {:>9}  {}",
            c.name,
            c.table,
            c.action.as_str(),
            c.eligible,
            c.affected,
            c.kept.opt_in,
            c.kept.legal_hold,
            c.kept.obligations,
            c.kept.protected,
            c.status.as_str()
        );
        if let Some(e) = &c.error {
            out!("  {}: {e}", c.name);
        }
        out!("  cutoff {}", c.cutoff.to_rfc3339());
    }
}

async fn demo_cmd(config_path: &Path, dir: &Path, json_logs: bool) -> u8 {
    // The demo uses the given retention.yaml if present, else the shipped one, and
    // always points it at the demo library and outbox under DIR.
    let text = match std::fs::read_to_string(config_path) {
        Ok(t) => t,
        Err(_) => DEFAULT_CONFIG.to_string(),
    };
    let base = std::env::current_dir().unwrap_or_default();
    let lookup = |name: &str| std::env::var(name).ok();
    let mut cfg = match config::parse_str(&text, &config_path.display().to_string(), &base, &lookup)
    {
        Ok(c) => c,
        Err(errs) => {
            eprintln!("{errs}");
            return 2;
        }
    };
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!("lethe: cannot create {}: {e}", dir.display());
        return 1;
    }
    let db_path = dir.join("library.db");
    let today = Utc::now().date_naive();
    // The demo library's wall times are those of the config's zone.
    let mut opts = demo::DemoOptions::standard(today);
    opts.timezone = cfg.schedule.timezone;
    match demo::create_library_if_absent(&db_path, &opts).await {
        Ok(Some(stats)) => out!(
            "demo: created {} ({} patrons, {} returned checkouts, {} holds history, {} current checkouts)",
            db_path.display(),
            stats.patrons,
            stats.returned_checkouts,
            stats.old_holds,
            stats.current_checkouts
        ),
        Ok(None) => out!("demo: using the existing library {}", db_path.display()),
        Err(e) => {
            eprintln!("lethe: cannot create the demo library: {e}");
            return 1;
        }
    }
    let db_abs = if db_path.is_absolute() {
        db_path.clone()
    } else {
        base.join(&db_path)
    };
    let outbox = if dir.is_absolute() {
        dir.join("outbox")
    } else {
        base.join(dir).join("outbox")
    };
    let url = format!("sqlite://{}", db_abs.display());
    cfg.database = config::DatabaseConfig {
        url: url.clone().into(),
        display_url: url,
        backend: config::Backend::Sqlite,
    };
    cfg.report.outbox = outbox;
    cfg.report.smtp = None;
    let cancel = shutdown_token();
    let progress = lethe::progress::Progress::for_run_once(false, json_logs);
    match job::run_once_with(&cfg, true, cancel, progress).await {
        Ok(outcome) => {
            print_summary(&outcome.summary, false, "demo run");
            print_delivery(outcome.delivery.as_ref());
            print_metrics(outcome.metrics.as_ref());
            if dir == Path::new("demo") {
                out!(
                    "next: `target/release/lethe plan --json` (from this folder: the shipped retention.yaml points at \
                     demo/library.db) shows what a run would change now: 0 after this run"
                );
            } else {
                out!(
                    "next: point database.url in retention.yaml at sqlite://{}, then `lethe plan --json` shows what a \
                     run would change now: 0 after this run",
                    db_abs.display()
                );
            }
            match run_exit(&outcome.summary) {
                0 if metrics_failed(outcome.metrics.as_ref()) => 1,
                code => code,
            }
        }
        Err(e) => engine_exit(&e),
    }
}

async fn ledger_cmd(path: &Path, command: &LedgerCommand) -> u8 {
    use lethe::ledger::chain;
    if let LedgerCommand::Verify { file: Some(f) } = command {
        // Offline: no config, no database.
        let text = match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("lethe: cannot read {}: {e}", f.display());
                return 2;
            }
        };
        let export: chain::Export = match serde_json::from_str(&text) {
            Ok(x) => x,
            Err(e) => {
                eprintln!("lethe: {} is not a Lethe ledger export: {e}", f.display());
                return 2;
            }
        };
        return match chain::verify_export(&export) {
            Ok(n) => {
                out!(
                    "ledger file {}: {n} entries verified, chain intact",
                    f.display()
                );
                0
            }
            Err(e) => {
                out!("ledger file {}: chain broken at {e}", f.display());
                1
            }
        };
    }
    let (_cfg, db) = match load_and_connect(path).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    let code = match ledger_on(&db, command).await {
        Ok(code) => code,
        Err(e) => engine_exit(&e.into()),
    };
    db.close().await;
    code
}

async fn ledger_on(db: &Db, command: &LedgerCommand) -> Result<u8, lethe::db::DbError> {
    use lethe::ledger::{self, chain};
    // Reading the ledger needs Lethe's tables; creating them empty is harmless.
    db.migrate().await?;
    match command {
        LedgerCommand::List => {
            out!(
                "{:>6}  {:<27}  {:<13}  {:<11}  {:>9}  hash",
                "entry",
                "started (UTC)",
                "mode",
                "status",
                "changed"
            );
            for e in ledger::entries(db, None).await? {
                out!(
                    "{:>6}  {:<27}  {:<13}  {:<11}  {:>9}  {}",
                    e.id,
                    e.started_at,
                    if e.kind == "run" {
                        e.mode.as_str()
                    } else {
                        e.kind.as_str()
                    },
                    e.status,
                    e.total_affected(),
                    e.hash
                        .as_deref()
                        .map(|h| &h[..h.len().min(16)])
                        .unwrap_or("(open)")
                );
            }
            Ok(0)
        }
        LedgerCommand::Show { id, json } => {
            let Some(e) = ledger::entry(db, *id).await? else {
                eprintln!("lethe: no run {id} in the ledger");
                return Ok(1);
            };
            if *json {
                out!("{}", serde_json::to_string(&e).unwrap_or_default());
                return Ok(0);
            }
            out!(
                "run {}: {} {} on {} (Lethe {})",
                e.id,
                e.mode,
                e.status,
                e.host,
                e.version
            );
            out!(
                "started {}  finished {}",
                e.started_at,
                e.finished_at.as_deref().unwrap_or("-")
            );
            if let Some(err) = &e.error {
                out!("error: {err}");
            }
            if let Some(ev) = &e.event {
                out!("{} {ev}", e.kind);
            }
            for c in &e.classes {
                out!(
                    "  {} ({} {}): cutoff {}, eligible {}, changed {} in {} batches, kept opt_in {} legal_hold {} \
                     obligations {} protected {}, {}{}",
                    c.class,
                    c.action,
                    c.table,
                    c.cutoff,
                    c.eligible,
                    c.affected,
                    c.batches,
                    c.kept_opt_in,
                    c.kept_legal_hold,
                    c.kept_obligations,
                    c.kept_protected,
                    c.status,
                    c.error
                        .as_deref()
                        .map(|x| format!(": {x}"))
                        .unwrap_or_default()
                );
            }
            out!("policy sha256 {}", e.policy_sha256);
            out!("policy {}", e.policy);
            out!("prev hash {}", e.prev_hash.as_deref().unwrap_or("-"));
            out!("hash {}", e.hash.as_deref().unwrap_or("(open)"));
            Ok(0)
        }
        LedgerCommand::Verify { .. } => {
            let entries = ledger::entries(db, None).await?;
            match chain::verify(&entries) {
                Ok(n) => {
                    out!("ledger: {n} entries verified, chain intact");
                    Ok(0)
                }
                Err(e) => {
                    out!("ledger: chain broken at {e}");
                    Ok(1)
                }
            }
        }
        LedgerCommand::Export { format, since } => {
            let since_t = match since.as_deref() {
                None => None,
                Some(s) => match NaiveDate::parse_from_str(s, "%Y-%m-%d") {
                    Ok(d) => d.and_hms_opt(0, 0, 0).map(|t| t.and_utc()),
                    Err(_) => {
                        eprintln!("lethe: --since {s:?} is not a date such as 2026-01-01");
                        return Ok(2);
                    }
                },
            };
            let entries = ledger::entries(db, since_t).await?;
            match format {
                ExportFormat::Json => {
                    let x = chain::Export {
                        format: chain::EXPORT_FORMAT.to_string(),
                        exported_at: Utc::now().to_rfc3339(),
                        complete: since_t.is_none(),
                        entries,
                    };
                    out!("{}", serde_json::to_string_pretty(&x).unwrap_or_default());
                }
                ExportFormat::Csv => {
                    out!(
                        "run_id,started_at,finished_at,mode,run_status,class,table,action,cutoff,eligible,affected,\
                         kept_opt_in,kept_legal_hold,kept_obligations,kept_protected,batches,class_status,hash"
                    );
                    for e in &entries {
                        for c in &e.classes {
                            out!(
                                "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                                e.id,
                                e.started_at,
                                e.finished_at.as_deref().unwrap_or(""),
                                e.mode,
                                e.status,
                                c.class,
                                c.table,
                                c.action,
                                c.cutoff,
                                c.eligible,
                                c.affected,
                                c.kept_opt_in,
                                c.kept_legal_hold,
                                c.kept_obligations,
                                c.kept_protected,
                                c.batches,
                                c.status,
                                e.hash.as_deref().unwrap_or("")
                            );
                        }
                    }
                }
            }
            Ok(0)
        }
    }
}

async fn hold_cmd(path: &Path, command: &HoldCommand) -> u8 {
    use lethe::legal_hold::{self, HoldError};
    let (_cfg, db) = match load_and_connect(path).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    let fail = |e: HoldError| match e {
        HoldError::Db(d) => engine_exit(&d.into()),
        other => {
            eprintln!("lethe: {other}");
            2
        }
    };
    let code = match command {
        HoldCommand::Add {
            patron,
            case_ref,
            until,
        } => {
            match legal_hold::place(&db, *patron, case_ref, *until, &legal_hold::operator()).await {
                Ok((id, entry)) => {
                    out!(
                        "legal hold {id} placed (ledger entry {entry}): from the next run, every class with a patron column keeps this patron's rows"
                    );
                    0
                }
                Err(e) => fail(e),
            }
        }
        HoldCommand::Release { id } => {
            match legal_hold::release(&db, *id, &legal_hold::operator()).await {
                Ok(entry) => {
                    out!(
                        "legal hold {id} released (ledger entry {entry}): the patron's rows follow the policy again from the next run"
                    );
                    0
                }
                Err(e) => fail(e),
            }
        }
        HoldCommand::List { all, json } => match legal_hold::list(&db, *all).await {
            Ok(holds) if *json => {
                out!("{}", serde_json::to_string(&holds).unwrap_or_default());
                0
            }
            Ok(holds) => {
                out!(
                    "{:>4}  {:>10}  {:<24}  {:<10}  {:<27}  {:<12}  released",
                    "id",
                    "patron",
                    "reference",
                    "until",
                    "placed",
                    "by"
                );
                for h in &holds {
                    out!(
                        "{:>4}  {:>10}  {:<24}  {:<10}  {:<27}  {:<12}  {}{}",
                        h.id,
                        h.patron,
                        h.case_ref,
                        h.held_until.as_deref().unwrap_or("-"),
                        h.placed_at,
                        h.placed_by.as_deref().unwrap_or("-"),
                        h.released_at.as_deref().unwrap_or("-"),
                        h.released_by
                            .as_deref()
                            .map(|b| format!(" by {b}"))
                            .unwrap_or_default()
                    );
                }
                0
            }
            Err(e) => fail(HoldError::Db(e)),
        },
    };
    db.close().await;
    code
}

/// `--until`: a calendar date, `YYYY-MM-DD`.
fn parse_hold_date(s: &str) -> Result<chrono::NaiveDate, String> {
    chrono::NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
        .map_err(|_| "expected a date such as 2027-06-30 (YYYY-MM-DD)".to_string())
}

async fn status_cmd(path: &Path, json: bool, check: bool) -> u8 {
    use lethe::ops::status;
    let cfg = match config::load(path) {
        Ok(c) => c,
        Err(errs) => {
            if check || json {
                let n = errs.0.len();
                let first = errs.0.first().map(ToString::to_string).unwrap_or_default();
                let noun = if n == 1 { "error" } else { "errors" };
                let line = format!("LETHE CRITICAL - invalid configuration ({n} {noun}): {first}");
                if json {
                    out!(
                        "{}",
                        serde_json::json!({"state": "CRITICAL", "message": line, "error": errs.to_string()})
                    );
                } else {
                    out!("{line}");
                }
            }
            eprintln!("{errs}");
            return 2;
        }
    };
    let s = status::status(&cfg, Utc::now()).await;
    if json {
        out!("{}", serde_json::to_string(&s).unwrap_or_default());
    } else if check {
        out!("{}", s.check_line());
    } else {
        match &s.last_run {
            Some(r) => out!(
                "last run:     {} ({}) {}, started {}, ended {}, {} rows changed",
                r.id,
                r.mode,
                r.status,
                r.started_at,
                r.finished_at.as_deref().unwrap_or("-"),
                r.changed
            ),
            None => out!("last run:     none recorded"),
        }
        out!(
            "last success: {}",
            s.last_success.as_deref().unwrap_or("none")
        );
        match &s.next_run {
            Some(n) => out!("next run:     {} ({}), {}", n.local, n.timezone, n.utc),
            None => out!("next run:     none (the cron line never fires again)"),
        }
        match &s.missed_run {
            Some(m) => out!("overdue:      yes: {m}"),
            None => out!("overdue:      no"),
        }
        match &s.ledger {
            Some(l) if l.verified => out!(
                "ledger:       {} entries, chain verified, head {}",
                l.entries,
                l.head_hash.as_deref().unwrap_or("-")
            ),
            Some(l) => out!(
                "ledger:       {} entries, chain BROKEN: {}",
                l.entries,
                l.broken.as_deref().unwrap_or("")
            ),
            None if s.error.is_none() => out!("ledger:       empty (Lethe has never run here)"),
            None => {}
        }
        if let Some(e) = &s.error {
            eprintln!("lethe: {e}");
        }
        out!("state:        {}: {}", s.state.as_str(), s.message);
    }
    if check {
        s.state.exit_code()
    } else if s.error.is_some() {
        1
    } else {
        0
    }
}

async fn verify_cmd(path: &Path, json: bool) -> u8 {
    let (cfg, db) = match load_and_connect(path).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    let result = engine::compliance(&cfg, &db, Utc::now()).await;
    db.close().await;
    let c = match result {
        Ok(c) => c,
        Err(e) => return engine_exit(&e),
    };
    if json {
        out!("{}", serde_json::to_string(&c).unwrap_or_default());
    } else {
        out!("compliance check at {}", c.checked_at.to_rfc3339());
        let nw = c
            .classes
            .iter()
            .map(|k| k.name.len())
            .max()
            .unwrap_or(0)
            .max(22);
        let tw = c
            .classes
            .iter()
            .map(|k| k.table.len())
            .max()
            .unwrap_or(0)
            .max(16);
        out!(
            "{:<nw$} {:<tw$} {:>9} {:>13}  kept (opt_in/legal/obligations/protected)",
            "class",
            "table",
            "overdue",
            "oldest (days)"
        );
        for k in &c.classes {
            out!(
                "{:<nw$} {:<tw$} {:>9} {:>13}  {}/{}/{}/{}",
                k.name,
                k.table,
                k.overdue,
                k.oldest_overdue_days
                    .map(|d| d.to_string())
                    .unwrap_or_else(|| "-".into()),
                k.kept.opt_in,
                k.kept.legal_hold,
                k.kept.obligations,
                k.kept.protected
            );
        }
        for k in c.classes.iter().filter(|k| k.traces > 0) {
            out!(
                "{}: {} rows in {} still refer to records already purged",
                k.name,
                k.traces,
                k.trace_tables.join(", ")
            );
        }
        if let Some(m) = &c.missed_run {
            out!("warning: {m}");
        }
        if c.overdue == 0 && c.traces == 0 {
            out!("compliant: nothing past its retention period remains");
        } else if c.overdue == 0 {
            out!(
                "NOT compliant: {} rows still hold personal data of purged records",
                c.traces
            );
        } else {
            out!(
                "NOT compliant: {} rows are past their retention period and not exempt",
                c.overdue
            );
        }
    }
    if c.overdue == 0 && c.traces == 0 {
        0
    } else {
        1
    }
}
