//! The `lethe` command line: wiring and exit codes (DESIGN.md, "Command-line contract").
//!
//! Exit codes: 0 success; 1 a run or check failed at run time; 2 invalid config or
//! usage, and nothing was touched.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use lethe::config::{self, Config};
use lethe::db::Db;
use lethe::demo;
use lethe::engine::{self, EngineError};
use lethe::job;
use lethe::report::Delivery;
use lethe::schedule;
use lethe::summary::{RunStatus, RunSummary};

/// The shipped retention.yaml, used by `demo` when no config file is found.
const DEFAULT_CONFIG: &str = include_str!("../retention.yaml");

#[derive(Parser, Debug)]
#[command(
    name = "lethe",
    version,
    about = "Enforces data-retention policy on library systems (Koha, Evergreen)."
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
    /// Validate the config, connect, and confirm every table and column exists.
    Check,
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
    /// Create the demo library (SQLite) if absent, then run once on it.
    Demo {
        /// Folder of the demo library and its outbox.
        #[arg(long, default_value = "demo")]
        dir: PathBuf,
    },
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
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
        Command::Check => check(&cli.config).await,
        Command::Plan { json, as_of } => plan(&cli.config, *json, as_of.as_deref()).await,
        Command::Run {
            once,
            json,
            allow_large,
        } => run(&cli.config, *once, *json, *allow_large).await,
        Command::Demo { dir } => demo_cmd(&cli.config, dir).await,
    };
    ExitCode::from(code)
}

fn load(path: &Path) -> Result<Config, u8> {
    config::load(path).map_err(|errs| {
        eprintln!("{errs}");
        eprintln!(
            "lethe: {} error(s) in the configuration; nothing was touched",
            errs.0.len()
        );
        2
    })
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

async fn check(path: &Path) -> u8 {
    let cfg = match load(path) {
        Ok(c) => c,
        Err(c) => return c,
    };
    println!(
        "config: {} ok ({} classes)",
        path.display(),
        cfg.classes.len()
    );
    let db = match Db::connect(&cfg).await {
        Ok(db) => db,
        Err(e) => return engine_exit(&e.into()),
    };
    println!("database: {} reachable", cfg.database.display_url);
    let code = match engine::prepare(&cfg, &db).await {
        Ok(p) => {
            println!("schema: every table and column the classes name exists");
            match p.anonymous_patron {
                Some(id) => println!("anonymous patron: {id} exists"),
                None if cfg.anonymous_patron.is_some() => {
                    println!("anonymous patron: not set (anonymized rows get NULL)")
                }
                None => {}
            }
            match engine::check_clock(&cfg, &db, Utc::now()).await {
                Ok(()) => {
                    println!("clock: within safety.max_clock_skew of the database");
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
        Err(e) => return engine_exit(&e.into()),
    };
    let result = engine::plan(&cfg, &db, at).await;
    db.close().await;
    match result {
        Ok(s) => {
            print_summary(&s, json, "plan");
            0
        }
        Err(e) => engine_exit(&e),
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

async fn run(path: &Path, once: bool, json: bool, allow_large: bool) -> u8 {
    let cfg = match load(path) {
        Ok(c) => c,
        Err(c) => return c,
    };
    let cancel = shutdown_token();
    if !once {
        // Health check at boot: a wrong URL or schema fails now, not at 02:30.
        match Db::connect(&cfg).await {
            Ok(db) => {
                let r = engine::prepare(&cfg, &db).await;
                db.close().await;
                if let Err(e) = r {
                    return engine_exit(&e);
                }
            }
            Err(e) => return engine_exit(&e.into()),
        }
        return match schedule::run_daemon(&cfg, cancel).await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("lethe: {e}");
                1
            }
        };
    }
    match job::run_once(&cfg, allow_large, cancel).await {
        Ok(outcome) => {
            print_summary(&outcome.summary, json, "run");
            if !json {
                print_delivery(outcome.delivery.as_ref());
            }
            run_exit(&outcome.summary)
        }
        Err(e) => engine_exit(&e),
    }
}

fn run_exit(s: &RunSummary) -> u8 {
    match s.status {
        RunStatus::Ok | RunStatus::Skipped | RunStatus::Interrupted => 0,
        RunStatus::Failed | RunStatus::Tripped => 1,
    }
}

fn print_delivery(d: Option<&Delivery>) {
    match d {
        Some(Delivery::Sent) => println!("report: sent"),
        Some(Delivery::Outboxed(p)) => println!("report: {}", p.display()),
        Some(Delivery::NotNeeded) => println!("report: not needed (report.send)"),
        None => println!("report: could not be delivered (see the log)"),
    }
}

fn print_summary(s: &RunSummary, json: bool, what: &str) {
    if json {
        match serde_json::to_string(s) {
            Ok(j) => println!("{j}"),
            Err(e) => eprintln!("lethe: cannot serialize the summary: {e}"),
        }
        return;
    }
    match s.run_id {
        Some(id) => println!(
            "{what}: run {id}, mode {}, status {}",
            s.mode.as_str(),
            s.status.as_str()
        ),
        None => println!(
            "{what}: mode {}, as of {}",
            s.mode.as_str(),
            s.started_at.to_rfc3339()
        ),
    }
    println!(
        "{:<22} {:<16} {:<10} {:>9} {:>9} {:>8} {:>8} {:>11} {:>9}  status",
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
        println!(
            "{:<22} {:<16} {:<10} {:>9} {:>9} {:>8} {:>8} {:>11} {:>9}  {}",
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
            println!("  {}: {e}", c.name);
        }
        println!("  cutoff {}", c.cutoff.to_rfc3339());
    }
}

async fn demo_cmd(config_path: &Path, dir: &Path) -> u8 {
    // The demo uses the given retention.yaml if present, else the shipped one, and
    // always points it at the demo library and outbox under DIR.
    let text = match std::fs::read_to_string(config_path) {
        Ok(t) => t,
        Err(_) => DEFAULT_CONFIG.to_string(),
    };
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!("lethe: cannot create {}: {e}", dir.display());
        return 1;
    }
    let db_path = dir.join("library.db");
    let today = Utc::now().date_naive();
    match demo::create_library_if_absent(&db_path, &demo::DemoOptions::standard(today)).await {
        Ok(Some(stats)) => println!(
            "demo: created {} ({} patrons, {} returned checkouts, {} holds history, {} current checkouts)",
            db_path.display(),
            stats.patrons,
            stats.returned_checkouts,
            stats.old_holds,
            stats.current_checkouts
        ),
        Ok(None) => println!("demo: using the existing library {}", db_path.display()),
        Err(e) => {
            eprintln!("lethe: cannot create the demo library: {e}");
            return 1;
        }
    }
    let base = std::env::current_dir().unwrap_or_default();
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
    let lookup = |name: &str| std::env::var(name).ok();
    let mut cfg = match config::parse_str(&text, &config_path.display().to_string(), &base, &lookup)
    {
        Ok(c) => c,
        Err(errs) => {
            eprintln!("{errs}");
            return 2;
        }
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
    match job::run_once(&cfg, true, cancel).await {
        Ok(outcome) => {
            print_summary(&outcome.summary, false, "demo run");
            print_delivery(outcome.delivery.as_ref());
            println!(
                "next: `lethe plan --json` shows what a run would change now (0 after this run)"
            );
            run_exit(&outcome.summary)
        }
        Err(e) => engine_exit(&e),
    }
}
