//! The benchmark harness of issue 7: Lethe against the database's own best, on the
//! same generated circulation history, in one run.
//!
//! ```sh
//! cargo build --release
//! cargo run --release --example bench -- mysql  --rows 1000000   # Koha shape, MariaDB
//! cargo run --release --example bench -- sqlite --rows 1000000   # Koha shape, SQLite
//! cargo run --release --example bench -- pg     --rows 1000000   # Evergreen shape, PostgreSQL
//! ```
//!
//! For each change measured (Koha: `circulation_history` as shipped, anonymize, and the
//! same class with `action: delete`; Evergreen: `circulation_history`, which deletes
//! chain tails so that Evergreen's triggers age them), on data reset from a pristine
//! copy before each method:
//!
//! - `lethe plan --json` (the release binary, as a child process) against a bare
//!   `SELECT COUNT(*) … WHERE <same predicate>`; the two counts must agree;
//! - (a) `lethe run --once --json --allow-large` with `RUST_LOG=lethe=debug` and JSON
//!   logs: the `"batch committed"` events' `batch_ms` give the batch transaction
//!   times, the child's `VmHWM` (polled from /proc) its peak resident memory;
//! - (b) the single SQL statement with the same predicate and cutoff;
//! - (c) the same statement over primary-key ranges inside the server, committing each
//!   range (a MariaDB stored procedure, a PostgreSQL procedure; SQLite has no server, so
//!   there the loop of range statements runs in this process);
//! - (d) the naive loop, one autocommitted statement per row from the client, on a
//!   sample (at most `--sample-rows` rows or `--sample-secs` seconds), as a rate.
//!
//! (a), (b) and (c) must change the same number of rows (a mismatch is an error). The
//! results go to stdout as a Markdown table and to `target/bench/<backend>-<rows>.json`.
//! The database (`lethe_bench` on MariaDB and PostgreSQL, `target/bench/lethe_bench.db`
//! for SQLite) is dropped at the end unless `--keep`. Nothing here touches the test
//! databases. No patron data is printed: counts, times and class names only.

mod mysql;
mod pg;
mod sqlite;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, FixedOffset};
use clap::Parser;
use serde::Serialize;

/// Command line of the harness.
#[derive(Parser, Debug, Clone)]
#[command(about = "Lethe against the database's own single statement, range loop and row loop")]
struct Args {
    /// mysql (Koha shape on MariaDB), sqlite (Koha shape), pg (Evergreen shape on PostgreSQL)
    backend: BackendKind,
    /// Rows of circulation history to generate (1M and 10M are the targets)
    #[arg(long, default_value_t = 100_000)]
    rows: u64,
    /// Leave the benchmark database behind (default: drop it at the end)
    #[arg(long)]
    keep: bool,
    /// Lethe's safety.batch_size for (a); default: none written, so Lethe's defaults
    /// apply (first batch 1000 keys, then sized toward safety.batch_target, up to 10,000)
    #[arg(long)]
    batch_size: Option<u32>,
    /// Lethe's safety.batch_max for (a): how far adaptive batches may grow past
    /// batch_size while they stay under safety.batch_target (100 ms); default: none written
    #[arg(long)]
    batch_max: Option<u32>,
    /// Keys per range of (c), each range committed; default: 1000 (Lethe's first batch)
    #[arg(long)]
    range: Option<u64>,
    /// Leave out (c), the range loop inside the server (then Lethe is compared with
    /// (b) alone). For a run that must fit a time budget: on PostgreSQL at 10M rows each
    /// method takes about a quarter of an hour.
    #[arg(long)]
    skip_ranges: bool,
    /// Measure only `plan`, the bare count and (a), Lethe's run: for trying a change to
    /// Lethe between full runs (no (b), (c), (d), so no ratios)
    #[arg(long)]
    lethe_only: bool,
    /// Koha shape (mysql, sqlite): index `checkout_renewals.checkout_id`, as `lethe check
    /// --create-indexes` does on the advice for a linked column (Koha has no index
    /// there), so that Lethe finds each batch's renewals by that column, not by patron
    #[arg(long)]
    linked_index: bool,
    /// Most rows the row-by-row loop (d) changes
    #[arg(long, default_value_t = 20_000)]
    sample_rows: u64,
    /// Most seconds the row-by-row loop (d) runs
    #[arg(long, default_value_t = 60.0)]
    sample_secs: f64,
    /// The Lethe binary (default: target/release/lethe beside this example)
    #[arg(long)]
    lethe: Option<PathBuf>,
}

/// The `safety:` keys the harness writes for (a); `None` leaves Lethe's default.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Tuning {
    pub batch_size: Option<u32>,
    pub batch_max: Option<u32>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum BackendKind {
    Mysql,
    Sqlite,
    Pg,
}

/// The change a class makes, and so which statements (b)–(d) run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// Koha circulation_history as shipped: `borrowernumber` to the AnonymousPatron.
    Anonymize,
    /// Delete the eligible rows (Koha: the same class with `action: delete`; Evergreen:
    /// chain tails, aged by Evergreen's triggers).
    Delete,
}

/// What one backend's harness provides. Every method works on the benchmark database
/// only; counts are rows of the class's table changed by the statement itself.
pub(crate) trait Bench {
    /// The `retention.yaml` that enables only the measured class, making `change`.
    fn config_yaml(&self, change: Change, tuning: Tuning) -> String;
    /// The changes measured on this backend.
    fn changes(&self) -> Vec<Change>;
    /// The measured table, for the report.
    fn table(&self) -> &'static str;
    /// Rows generated, helpers included, for the report.
    fn shape(&self) -> serde_json::Value;
    /// Puts the measured table back as generated (from the pristine copy) and analyzes it.
    async fn reset(&mut self) -> Result<()>;
    /// `SELECT COUNT(*) … WHERE <predicate>` at `cutoff`.
    async fn count(&mut self, change: Change, cutoff: DateTime<FixedOffset>) -> Result<u64>;
    /// (b): the single statement; rows changed.
    async fn single(&mut self, change: Change, cutoff: DateTime<FixedOffset>) -> Result<u64>;
    /// (c): the statement over key ranges of `step`, committing each; rows changed.
    async fn ranges(
        &mut self,
        change: Change,
        cutoff: DateTime<FixedOffset>,
        step: u64,
    ) -> Result<u64>;
    /// (d): one autocommitted statement per row; (rows changed, seconds of the loop).
    async fn row_by_row(
        &mut self,
        change: Change,
        cutoff: DateTime<FixedOffset>,
        max_rows: u64,
        max_secs: f64,
    ) -> Result<(u64, f64)>;
    /// Rows now in the measured table (the check after a delete: triggers may remove
    /// more than the statement reports).
    async fn table_rows(&mut self) -> Result<u64>;
    /// Drops the benchmark database unless `keep`.
    async fn finish(self, keep: bool) -> Result<()>;
}

/// Batch transaction times of one Lethe run, in milliseconds.
#[derive(Debug, Clone, Serialize, Default)]
pub struct BatchStats {
    /// Batches committed.
    pub n: usize,
    /// Median.
    pub p50: f64,
    /// 99th percentile (nearest rank).
    pub p99: f64,
    /// Longest.
    pub max: f64,
    /// All batches together: the rest of the run is start-up, checks and counts.
    pub total: f64,
    /// Keys per range the events reported (`batch_size`): smallest, median, largest.
    /// Adaptive batches move between safety.batch_min and safety.batch_max.
    pub keys_min: Option<u64>,
    pub keys_p50: Option<u64>,
    pub keys_max: Option<u64>,
}

impl BatchStats {
    fn of(mut ms: Vec<f64>, mut sizes: Vec<u64>) -> BatchStats {
        ms.sort_by(f64::total_cmp);
        sizes.sort_unstable();
        let rank = |p: f64| -> f64 {
            if ms.is_empty() {
                return 0.0;
            }
            let i = ((p * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1;
            ms[i]
        };
        BatchStats {
            n: ms.len(),
            p50: rank(0.50),
            p99: rank(0.99),
            max: ms.last().copied().unwrap_or(0.0),
            total: ms.iter().sum(),
            keys_min: sizes.first().copied(),
            keys_p50: sizes.get(sizes.len() / 2).copied(),
            keys_max: sizes.last().copied(),
        }
    }
}

/// One method's measurement.
#[derive(Debug, Clone, Serialize)]
struct Measure {
    change: Change,
    /// `a-lethe`, `b-single`, `c-ranges`, `d-row-by-row`.
    method: &'static str,
    rows: u64,
    secs: f64,
    rows_per_sec: f64,
    /// Only for (d): a bounded sample, its rate stands for the whole.
    sampled: bool,
    /// Rows left in the table afterwards (deletes), for the cross-check.
    table_rows_after: Option<u64>,
    /// (a) only.
    batches: Option<BatchStats>,
    /// (a) only: the child's peak resident memory, MiB.
    peak_rss_mib: Option<f64>,
}

/// `lethe plan` against the bare count, for one change.
#[derive(Debug, Clone, Serialize)]
struct PlanVsCount {
    change: Change,
    eligible: u64,
    cutoff: String,
    plan_secs: f64,
    count_secs: f64,
    ratio: f64,
    plan_peak_rss_mib: f64,
}

#[derive(Debug, Clone, Serialize)]
struct Summary {
    change: Change,
    /// (a) ÷ the better of (b) and (c), by rows per second.
    lethe_vs_best: f64,
    best_method: &'static str,
}

#[derive(Debug, Serialize)]
struct Report {
    backend: String,
    table: String,
    rows: u64,
    started_at: String,
    machine: serde_json::Value,
    load_before: String,
    load_after: String,
    generate_secs: f64,
    shape: serde_json::Value,
    /// The safety keys written for (a) (`null`: Lethe's default).
    tuning: Tuning,
    plan_vs_count: Vec<PlanVsCount>,
    results: Vec<Measure>,
    summary: Vec<Summary>,
}

/// What a finished child process left: exit code, peak RSS, wall time.
struct ChildRun {
    code: i32,
    maxrss_kib: i64,
    secs: f64,
    stdout: String,
    stderr_path: PathBuf,
}

/// Runs `bin args…` with stdout and stderr in files; returns its exit code, wall time
/// and its own peak resident memory (KiB).
fn run_child(bin: &Path, args: &[&str], dir: &Path, tag: &str) -> Result<ChildRun> {
    let out_path = dir.join(format!("{tag}.stdout"));
    let err_path = dir.join(format!("{tag}.stderr"));
    let out = std::fs::File::create(&out_path)?;
    let err = std::fs::File::create(&err_path)?;
    let start = Instant::now();
    let child = std::process::Command::new(bin)
        .args(args)
        .env("RUST_LOG", "lethe=debug")
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // Peak memory is the child's own high-water mark (`VmHWM` in /proc/<pid>/status),
    // read every 10 ms while it runs. Not `ru_maxrss` from wait4: Linux carries the
    // parent's peak RSS over into a child it spawns (the exec'd process inherits the
    // spawning mm's high-water mark), so a child of this harness, which has generated
    // millions of rows, reported the harness's own growth as Lethe's (the first
    // BENCHMARKS.md numbers: 15.9 MiB at 100k rows, 56.8 MiB at 1M).
    let hwm_path = format!("/proc/{pid}/status");
    let mut peak_kib: i64 = 0;
    let secs = loop {
        if let Some(kib) = vm_hwm_kib(&hwm_path) {
            peak_kib = peak_kib.max(kib);
        }
        // SAFETY: pid is our own child, not yet reaped (std's Child does not wait on
        // drop); WNOHANG returns 0 while it runs.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            break start.elapsed().as_secs_f64();
        }
        if r != 0 {
            bail!("waitpid failed: {}", std::io::Error::last_os_error());
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    drop(child);
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    Ok(ChildRun {
        code,
        maxrss_kib: peak_kib,
        secs,
        stdout: std::fs::read_to_string(&out_path)?,
        stderr_path: err_path,
    })
}

/// `VmHWM` (peak resident set, KiB) of a running process's /proc status file; `None`
/// once it has exited (a zombie has no memory map) or when the line is missing.
fn vm_hwm_kib(status_path: &str) -> Option<i64> {
    let text = std::fs::read_to_string(status_path).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The `"batch committed"` events' `batch_ms` and `batch_size` in a JSON log.
fn batch_times(stderr: &Path) -> Result<(Vec<f64>, Vec<u64>)> {
    let text = std::fs::read_to_string(stderr)?;
    let mut ms = Vec::new();
    let mut sizes = Vec::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let f = &v["fields"];
        if f["message"] == "batch committed" {
            let Some(t) = f["batch_ms"].as_f64() else {
                bail!(
                    "a \"batch committed\" event without batch_ms: this Lethe binary predates the \
                     field (rebuild with `cargo build --release`)"
                );
            };
            ms.push(t);
            sizes.extend(f["batch_size"].as_u64());
        }
    }
    Ok((ms, sizes))
}

/// The one class of a `plan --json` / `run --once --json` answer.
fn class_of(json: &str, class: &str) -> Result<serde_json::Value> {
    let v: serde_json::Value =
        serde_json::from_str(json.trim()).context("lethe did not print one JSON object")?;
    let c = v["classes"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == class))
        .cloned()
        .with_context(|| format!("no class {class} in lethe's answer: {v}"))?;
    if c["status"] != "ok" {
        bail!("class {class} ended {} : {}", c["status"], c["error"]);
    }
    Ok(c)
}

fn mib(kib: i64) -> f64 {
    kib as f64 / 1024.0
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn machine() -> serde_json::Value {
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    serde_json::json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "mem_gib": (mem_kib as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        "cpu": cpu,
    })
}

/// Where results and the SQLite files go: `<target>/bench/` (the example runs from
/// `<target>/release/examples/`).
fn bench_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let target = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .context("cannot place target/bench beside this example")?;
    let d = target.join("bench");
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

fn lethe_bin(args: &Args) -> Result<PathBuf> {
    let p = match &args.lethe {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .context("no folder above this example")?
            .join("lethe"),
    };
    if !p.exists() {
        bail!(
            "{} not found: run `cargo build --release` first (or pass --lethe PATH)",
            p.display()
        );
    }
    Ok(p)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let bin = lethe_bin(&args)?;
    let dir = bench_dir()?;
    let load_before = loadavg();
    let started_at = chrono::Utc::now().to_rfc3339();
    eprintln!(
        "bench {:?}: generating {} rows (load {load_before})",
        args.backend, args.rows
    );
    let t = Instant::now();
    let report = match args.backend {
        BackendKind::Mysql => {
            let b = mysql::Koha::setup(args.rows, &dir, args.linked_index).await?;
            let gen_secs = t.elapsed().as_secs_f64();
            measure(b, &args, &bin, &dir, gen_secs, "mysql").await?
        }
        BackendKind::Sqlite => {
            let b = sqlite::Koha::setup(args.rows, &dir, args.linked_index).await?;
            let gen_secs = t.elapsed().as_secs_f64();
            measure(b, &args, &bin, &dir, gen_secs, "sqlite").await?
        }
        BackendKind::Pg => {
            let b = pg::Evergreen::setup(args.rows).await?;
            let gen_secs = t.elapsed().as_secs_f64();
            measure(b, &args, &bin, &dir, gen_secs, "pg").await?
        }
    };
    let report = Report {
        started_at,
        load_before,
        load_after: loadavg(),
        ..report
    };
    let path = dir.join(format!("{}-{}.json", report.backend, report.rows));
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    print!("{}", markdown(&report));
    eprintln!("results: {}", path.display());
    Ok(())
}

/// Runs every method for every change of `b`, checking that the counts agree.
async fn measure<B: Bench>(
    mut b: B,
    args: &Args,
    bin: &Path,
    dir: &Path,
    generate_secs: f64,
    backend: &str,
) -> Result<Report> {
    let class = "circulation_history";
    let mut plans = Vec::new();
    let mut results = Vec::new();
    let mut summary = Vec::new();
    let outcome: Result<()> = async {
        for change in b.changes() {
            let cfg = dir.join(format!("{backend}-{change:?}.yaml").to_lowercase());
            std::fs::write(&cfg, b.config_yaml(
                change,
                Tuning {
                    batch_size: args.batch_size,
                    batch_max: args.batch_max,
                },
            ))?;
            let cfg_s = cfg.to_str().context("config path is not UTF-8")?;
            b.reset().await?;

            // plan vs the bare count. A first `plan`, untimed, warms the caches (the
            // table was just reset), so that neither side reads it cold.
            run_child(
                bin,
                &["--config", cfg_s, "plan", "--json"],
                dir,
                &format!("{backend}-plan-warmup"),
            )?;
            let plan = run_child(
                bin,
                &["--config", cfg_s, "plan", "--json"],
                dir,
                &format!("{backend}-plan"),
            )?;
            if plan.code != 0 {
                bail!(
                    "lethe plan exited {}: see {}",
                    plan.code,
                    plan.stderr_path.display()
                );
            }
            let pc = class_of(&plan.stdout, class)?;
            let eligible = pc["eligible"].as_u64().context("plan: no eligible count")?;
            let cutoff_s = pc["cutoff"].as_str().context("plan: no cutoff")?.to_string();
            let cutoff = DateTime::parse_from_rfc3339(&cutoff_s)
                .with_context(|| format!("plan's cutoff {cutoff_s}"))?;
            let t = Instant::now();
            let counted = b.count(change, cutoff).await?;
            let count_secs = t.elapsed().as_secs_f64();
            if counted != eligible {
                bail!(
                    "{change:?}: lethe plan says {eligible} eligible, the bare count {counted}: the \
                     predicates differ"
                );
            }
            eprintln!("{change:?}: {eligible} eligible; plan {:.2}s, count {count_secs:.2}s", plan.secs);
            plans.push(PlanVsCount {
                change,
                eligible,
                cutoff: cutoff_s,
                plan_secs: plan.secs,
                count_secs,
                ratio: plan.secs / count_secs.max(1e-9),
                plan_peak_rss_mib: mib(plan.maxrss_kib),
            });

            // (a) Lethe, on the data plan has only read.
            let run = run_child(
                bin,
                &[
                    "--config",
                    cfg_s,
                    "--log-format",
                    "json",
                    "run",
                    "--once",
                    "--json",
                    "--allow-large",
                ],
                dir,
                &format!("{backend}-run"),
            )?;
            if run.code != 0 {
                bail!(
                    "lethe run exited {}: see {}",
                    run.code,
                    run.stderr_path.display()
                );
            }
            let rc = class_of(&run.stdout, class)?;
            let affected = rc["affected"].as_u64().context("run: no affected count")?;
            let (ms, sizes) = batch_times(&run.stderr_path)?;
            let after_a = if change == Change::Delete {
                Some(b.table_rows().await?)
            } else {
                None
            };
            eprintln!("(a) lethe: {affected} rows in {:.2}s", run.secs);
            results.push(Measure {
                change,
                method: "a-lethe",
                rows: affected,
                secs: run.secs,
                rows_per_sec: affected as f64 / run.secs,
                sampled: false,
                table_rows_after: after_a,
                batches: Some(BatchStats::of(ms, sizes)),
                peak_rss_mib: Some(mib(run.maxrss_kib)),
            });

            if args.lethe_only {
                continue;
            }
            // (b) and (c), each on fresh data.
            let step = args.range.unwrap_or(u64::from(args.batch_size.unwrap_or(1000)));
            let methods: &[&'static str] = if args.skip_ranges {
                &["b-single"]
            } else {
                &["b-single", "c-ranges"]
            };
            for &method in methods {
                b.reset().await?;
                let t = Instant::now();
                let n = if method == "b-single" {
                    b.single(change, cutoff).await?
                } else {
                    b.ranges(change, cutoff, step).await?
                };
                let secs = t.elapsed().as_secs_f64();
                let after = if change == Change::Delete {
                    Some(b.table_rows().await?)
                } else {
                    None
                };
                eprintln!("({method}): {n} rows in {secs:.2}s");
                if n != affected || after != after_a {
                    bail!(
                        "{change:?}: {method} changed {n} rows (table then {after:?}), Lethe {affected} \
                         (table then {after_a:?})"
                    );
                }
                results.push(Measure {
                    change,
                    method,
                    rows: n,
                    secs,
                    rows_per_sec: n as f64 / secs,
                    sampled: false,
                    table_rows_after: after,
                    batches: None,
                    peak_rss_mib: None,
                });
            }

            // (d) sampled.
            b.reset().await?;
            let (n, secs) = b
                .row_by_row(change, cutoff, args.sample_rows, args.sample_secs)
                .await?;
            eprintln!("(d) row by row: {n} rows in {secs:.2}s (sample)");
            results.push(Measure {
                change,
                method: "d-row-by-row",
                rows: n,
                secs,
                rows_per_sec: n as f64 / secs,
                sampled: true,
                table_rows_after: None,
                batches: None,
                peak_rss_mib: None,
            });

            let rate = |m: &str| {
                results
                    .iter()
                    .find(|r| r.change == change && r.method == m)
                    .map_or(0.0, |r| r.rows_per_sec)
            };
            let (best_method, best) = if rate("b-single") >= rate("c-ranges") {
                ("b-single", rate("b-single"))
            } else {
                ("c-ranges", rate("c-ranges"))
            };
            summary.push(Summary {
                change,
                lethe_vs_best: rate("a-lethe") / best.max(1e-9),
                best_method,
            });
        }
        Ok(())
    }
    .await;
    let table = b.table().to_string();
    let shape = b.shape();
    let finished = b.finish(args.keep).await;
    outcome?;
    finished?;
    Ok(Report {
        backend: backend.to_string(),
        table,
        rows: args.rows,
        started_at: String::new(),
        machine: machine(),
        load_before: String::new(),
        load_after: String::new(),
        generate_secs,
        shape,
        tuning: Tuning {
            batch_size: args.batch_size,
            batch_max: args.batch_max,
        },
        plan_vs_count: plans,
        results,
        summary,
    })
}

/// The report as Markdown, to paste into BENCHMARKS.md.
fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### {} — {} rows in `{}` (load {} → {}; generated in {:.0} s)\n",
        r.backend, r.rows, r.table, r.load_before, r.load_after, r.generate_secs
    );
    let tuned = safety_yaml(r.tuning);
    let _ = writeln!(
        s,
        "Lethe's safety keys for (a): {}\n",
        if tuned.is_empty() {
            "none written (the defaults)".to_string()
        } else {
            tuned
                .lines()
                .skip(1)
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    let _ = writeln!(
        s,
        "| change | method | rows changed | s | rows/s | vs best (b,c) | batch p50 / p99 / max ms | batches (s in them; keys min / p50 / max) | peak RSS MiB |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for m in &r.results {
        let best = r
            .summary
            .iter()
            .find(|x| x.change == m.change)
            .map_or(0.0, |x| {
                let best_rate = r
                    .results
                    .iter()
                    .find(|y| y.change == m.change && y.method == x.best_method)
                    .map_or(1.0, |y| y.rows_per_sec);
                m.rows_per_sec / best_rate.max(1e-9)
            });
        let (batch, nb) = match &m.batches {
            Some(b) => (
                format!("{:.1} / {:.1} / {:.1}", b.p50, b.p99, b.max),
                match (b.keys_min, b.keys_p50, b.keys_max) {
                    (Some(lo), Some(mid), Some(hi)) if lo != hi => format!(
                        "{} ({:.1} s; keys {lo} / {mid} / {hi})",
                        b.n,
                        b.total / 1000.0
                    ),
                    (Some(k), _, _) => format!("{} ({:.1} s; keys {k})", b.n, b.total / 1000.0),
                    _ => format!("{} ({:.1} s)", b.n, b.total / 1000.0),
                },
            ),
            None => ("".into(), "".into()),
        };
        let method = if m.sampled {
            format!("{} (sampled)", m.method)
        } else {
            m.method.to_string()
        };
        let _ = writeln!(
            s,
            "| {:?} | {} | {} | {:.2} | {:.0} | {:.2}× | {} | {} | {} |",
            m.change,
            method,
            m.rows,
            m.secs,
            m.rows_per_sec,
            best,
            batch,
            nb,
            m.peak_rss_mib.map_or(String::new(), |x| format!("{x:.1}"))
        );
    }
    let _ = writeln!(
        s,
        "\n| change | eligible | `lethe plan` s | bare COUNT(*) s | plan ÷ count | plan peak RSS MiB |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
    for p in &r.plan_vs_count {
        let _ = writeln!(
            s,
            "| {:?} | {} | {:.2} | {:.2} | {:.2}× | {:.1} |",
            p.change, p.eligible, p.plan_secs, p.count_secs, p.ratio, p.plan_peak_rss_mib
        );
    }
    s
}

/// Koha `circulation_history`'s eligibility as a DBA would write it from the profile
/// (src/config/profiles/koha.yaml): returned loans of a patron, not yet given to the
/// AnonymousPatron (anonymize only), returned before the cutoff or of a patron with
/// privacy 2 ("never keep"), and not of a patron with privacy 0 ("keep forever") nor
/// with an outstanding fine on the loan. Placeholders: anonymize `(anonymous patron,
/// cutoff)`, delete `(cutoff)`. Lethe's legal-hold exemption is left out: the
/// benchmark places no hold. `lethe plan` must count the same rows (checked).
pub fn koha_predicate(change: Change) -> String {
    let not_anonymized = match change {
        Change::Anonymize => "AND old_issues.borrowernumber <> ? ",
        Change::Delete => "",
    };
    format!(
        "old_issues.borrowernumber IS NOT NULL AND old_issues.returndate IS NOT NULL \
         {not_anonymized}\
         AND (old_issues.returndate < ? OR EXISTS (SELECT 1 FROM borrowers o \
              WHERE o.borrowernumber = old_issues.borrowernumber AND o.privacy = 2)) \
         AND NOT EXISTS (SELECT 1 FROM borrowers o \
              WHERE o.borrowernumber = old_issues.borrowernumber AND o.privacy = 0) \
         AND NOT EXISTS (SELECT 1 FROM accountlines o \
              WHERE o.old_issue_id = old_issues.issue_id AND o.amountoutstanding > 0)"
    )
}

/// The Koha `retention.yaml` of the benchmark: only `circulation_history`, as shipped
/// or with `action: delete`; the report waits in an outbox beside the config.
pub fn koha_config(url: &str, change: Change, tuning: Tuning) -> String {
    let action = match change {
        Change::Anonymize => "",
        Change::Delete => "\n    action: delete",
    };
    let safety = safety_yaml(tuning);
    format!(
        "library: Lethe benchmark\n\
         database:\n  url: \"{url}\"\n\
         schedule:\n  cron: \"30 2 * * *\"\n  timezone: UTC\n\
         {safety}\
         report:\n  outbox: outbox\n  on: failures\n\
         profile: koha\n\
         classes:\n  circulation_history:\n    retain: 30 days{action}\n  \
         holds_history: {{ enabled: false }}\n  expired_patrons: {{ enabled: false }}\n"
    )
}

/// The `safety:` section: `batch_size` and `batch_max` only when given on the command
/// line (otherwise Lethe's defaults, adaptive batches included, are what is measured).
pub fn safety_yaml(tuning: Tuning) -> String {
    let mut keys = String::new();
    if let Some(n) = tuning.batch_size {
        keys.push_str(&format!("  batch_size: {n}\n"));
    }
    if let Some(n) = tuning.batch_max {
        keys.push_str(&format!("  batch_max: {n}\n"));
    }
    if keys.is_empty() {
        keys
    } else {
        format!("safety:\n{keys}")
    }
}

/// Age in days (SQL) of generated row number `n`: 28 values in [0, 28) and 28 in [33, 61), so half
/// the rows are past a 30-day period and none lies within days of the cutoff (which
/// moves while the benchmark runs).
pub fn age_days(n: &str) -> String {
    let r = format!("(({n}) * 7919 % 56)");
    format!("(CASE WHEN {r} < 28 THEN {r} ELSE {r} + 5 END)")
}
