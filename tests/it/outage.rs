//! Outages (the reliability issue, item 2), with real processes and a real database:
//! the `lethe` binary talks to MariaDB through a TCP proxy in this test process, and
//! the test cuts the proxy: every live connection is dropped, and new ones are refused
//! (the port is closed, as when the server is down) or black-holed (accepted and never
//! answered, as behind a dead network path) until the test restores it. The seeded
//! state and the ledger are read through a direct connection, never the proxy.
//!
//! A cut can be armed to strike on the next command a client sends (not a ping): that
//! command reaches the server, its answer never comes back, and then every connection
//! drops. So the cut lands inside a batch transaction, deterministically, and a COMMIT
//! that the server applied may be the one whose answer is lost.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::common::*;

const LETHE: &str = env!("CARGO_BIN_EXE_lethe");
const MYSQL_PORT: u16 = 3306;
/// In every personal text column of the fixture; must never leave the database.
const CANARY: &str = "Qx9OutageCanary";
const RETRY_WARNING: &str = "transient database error: trying";

// ---------------------------------------------------------------------------------
// The proxy
// ---------------------------------------------------------------------------------

/// What the proxy does with new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Forwards them to MariaDB.
    Open,
    /// The port is closed: connecting fails at once with "connection refused".
    Refuse,
    /// Accepted and held, never answered: the client waits for the server's greeting.
    BlackHole,
    /// Live connections stay open but go silent (nothing forwarded either way, as when
    /// the server host hangs); new ones are black-holed.
    Frozen,
}

struct Shared {
    port: u16,
    mode: watch::Sender<Mode>,
    /// Bumped by a cut: every live connection drops.
    generation: watch::Sender<u64>,
    /// A cut waiting for the next client command (that contains the bytes, if given).
    armed: Mutex<Option<(Mode, Option<Vec<u8>>)>>,
    /// Set while an armed cut strikes, or by [`Proxy::freeze`]: bytes either way are
    /// thrown away.
    frozen: AtomicBool,
    accepted: AtomicU64,
    dropped: AtomicU64,
    /// Connections the client (Lethe) closed itself.
    client_closed: AtomicU64,
    cut_at: Mutex<Option<Instant>>,
}

/// A TCP proxy 127.0.0.1:<ephemeral> → MariaDB 127.0.0.1:3306 that the test can cut.
struct Proxy {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        // Live connections drop with their tasks' sockets.
        self.shared.generation.send_modify(|g| *g += 1);
    }
}

impl Proxy {
    async fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            port,
            mode: watch::channel(Mode::Open).0,
            generation: watch::channel(0).0,
            armed: Mutex::new(None),
            frozen: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            client_closed: AtomicU64::new(0),
            cut_at: Mutex::new(None),
        });
        let task = tokio::spawn(acceptor(shared.clone(), listener));
        Proxy { shared, task }
    }

    /// The test database's URL through this proxy.
    fn url(&self, db: &TestDb) -> String {
        db.url.replace(
            &format!("127.0.0.1:{MYSQL_PORT}/"),
            &format!("127.0.0.1:{}/", self.shared.port),
        )
    }

    /// Cuts now: drops every live connection; new ones meet `mode`.
    fn cut(&self, mode: Mode) {
        self.shared.cut(mode);
    }

    /// Cuts when a client next sends a command (see the module doc).
    fn arm(&self, mode: Mode) {
        *self.shared.armed.lock().unwrap() = Some((mode, None));
    }

    /// Cuts when a client next sends a command containing `text` (an SQL fragment:
    /// sqlx sends a statement's text when it first prepares it on a connection).
    fn arm_on(&self, text: &str, mode: Mode) {
        *self.shared.armed.lock().unwrap() = Some((mode, Some(text.as_bytes().to_vec())));
    }

    /// Waits until the armed cut has struck.
    async fn struck(&self, within: Duration) {
        let mut rx = self.shared.mode.subscribe();
        tokio::time::timeout(within, rx.wait_for(|m| *m != Mode::Open))
            .await
            .expect("the armed cut did not strike: no client command")
            .unwrap();
    }

    /// Accepts and forwards again (connections that lived through a freeze are dropped:
    /// bytes were lost). Returns how long the outage lasted.
    fn restore(&self) -> Duration {
        self.shared.frozen.store(false, Ordering::SeqCst);
        *self.shared.armed.lock().unwrap() = None;
        self.shared.mode.send_replace(Mode::Open);
        self.shared.generation.send_modify(|g| *g += 1);
        self.shared
            .cut_at
            .lock()
            .unwrap()
            .take()
            .map_or(Duration::ZERO, |t| t.elapsed())
    }

    /// Connections forwarded so far, and live connections dropped by cuts.
    fn stats(&self) -> (u64, u64) {
        (
            self.shared.accepted.load(Ordering::SeqCst),
            self.shared.dropped.load(Ordering::SeqCst),
        )
    }
}

impl Shared {
    /// [`Mode::Frozen`]: every live connection goes silent, new ones are black-holed.
    fn freeze(&self) {
        self.cut_at.lock().unwrap().get_or_insert_with(Instant::now);
        self.frozen.store(true, Ordering::SeqCst);
        self.mode.send_replace(Mode::Frozen);
    }

    fn cut(&self, mode: Mode) {
        self.cut_at.lock().unwrap().get_or_insert_with(Instant::now);
        // Mode first: a connection accepted meanwhile sees it and drops.
        self.mode.send_replace(mode);
        self.generation.send_modify(|g| *g += 1);
    }

    /// The armed cut, if `chunk` (what a client just sent) is a command that should
    /// set it off: a packet with sequence id 0 (a command, not a handshake reply) that
    /// is not COM_PING (the pool's liveness check) nor COM_QUIT.
    fn take_trigger(&self, chunk: &[u8]) -> Option<Mode> {
        let command = chunk.len() >= 5 && chunk[3] == 0 && !matches!(chunk[4], 0x0e | 0x01);
        if !command {
            return None;
        }
        let mut armed = self.armed.lock().unwrap();
        let wanted = match &*armed {
            Some((_, Some(text))) => chunk.windows(text.len()).any(|w| w == text.as_slice()),
            Some((_, None)) => true,
            None => false,
        };
        if wanted {
            armed.take().map(|(m, _)| m)
        } else {
            None
        }
    }
}

async fn bind(port: u16) -> TcpListener {
    // The port was ours a moment ago; retry briefly should something hold it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => return l,
            Err(e) if Instant::now() < deadline => {
                eprintln!("proxy: rebinding 127.0.0.1:{port}: {e}; trying again");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("proxy: cannot rebind 127.0.0.1:{port}: {e}"),
        }
    }
}

async fn acceptor(shared: Arc<Shared>, first: TcpListener) {
    let mut mode_rx = shared.mode.subscribe();
    let mut listener = Some(first);
    loop {
        let mode = *mode_rx.borrow_and_update();
        if mode == Mode::Refuse {
            // Closed port: the kernel refuses.
            drop(listener.take());
            if mode_rx.changed().await.is_err() {
                return;
            }
            continue;
        }
        let l = match listener.take() {
            Some(l) => l,
            None => bind(shared.port).await,
        };
        let mut held = Vec::new();
        loop {
            tokio::select! {
                r = l.accept() => {
                    let Ok((socket, _)) = r else { continue };
                    if mode == Mode::Open {
                        shared.accepted.fetch_add(1, Ordering::SeqCst);
                        tokio::spawn(pipe(shared.clone(), socket));
                    } else {
                        held.push(socket);
                    }
                }
                c = mode_rx.changed() => {
                    if c.is_err() {
                        return;
                    }
                    break;
                }
            }
        }
        // Rebound on the next turn if still wanted (a mode change closes the port
        // either way, so a cut to Refuse really refuses).
        drop(held);
        drop(l);
    }
}

async fn pipe(shared: Arc<Shared>, client: TcpStream) {
    let mut gen_rx = shared.generation.subscribe();
    if *shared.mode.borrow() != Mode::Open {
        return;
    }
    let Ok(server) = TcpStream::connect(("127.0.0.1", MYSQL_PORT)).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    shared.client_closed.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                Ok(n) => n,
            };
            if let Some(mode) = shared.take_trigger(&buf[..n]) {
                // The command reaches the server; its answer is lost.
                shared.frozen.store(true, Ordering::SeqCst);
                let _ = sw.write_all(&buf[..n]).await;
                if mode == Mode::Frozen {
                    shared.freeze();
                    continue;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                shared.cut(mode);
                return;
            }
            if shared.frozen.load(Ordering::SeqCst) {
                continue;
            }
            if sw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let down = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if shared.frozen.load(Ordering::SeqCst) {
                continue;
            }
            if cw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = gen_rx.changed() => {
            shared.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }
}

// ---------------------------------------------------------------------------------
// The lethe process
// ---------------------------------------------------------------------------------

/// A `lethe` process (killed if the test ends while it runs), its stderr lines on a
/// channel and kept whole, its stdout kept.
struct Lethe {
    child: tokio::process::Child,
    lines: mpsc::UnboundedReceiver<String>,
    stderr: Arc<Mutex<String>>,
    stdout: tokio::task::JoinHandle<String>,
    started: Instant,
}

struct Exit {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Lethe {
    fn spawn(dir: &Path, cfg: &Path, args: &[&str], log: &str) -> Lethe {
        let mut child = tokio::process::Command::new(LETHE)
            .current_dir(dir)
            .arg("--config")
            .arg(cfg)
            .args(args)
            .env("RUST_LOG", log)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        let stderr = Arc::new(Mutex::new(String::new()));
        let keep = stderr.clone();
        let err = child.stderr.take().unwrap();
        tokio::spawn(async move {
            let mut r = BufReader::new(err).lines();
            while let Ok(Some(line)) = r.next_line().await {
                {
                    let mut all = keep.lock().unwrap();
                    all.push_str(&line);
                    all.push('\n');
                }
                let _ = tx.send(line);
            }
        });
        let mut out = child.stdout.take().unwrap();
        let stdout = tokio::spawn(async move {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s).await;
            s
        });
        Lethe {
            child,
            lines,
            stderr,
            stdout,
            started: Instant::now(),
        }
    }

    /// The next stderr line containing `what`.
    async fn line(&mut self, what: &str, within: Duration) -> String {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) if line.contains(what) => return line,
                Ok(Some(_)) => {}
                Ok(None) => panic!("lethe exited before {what:?}:\n{}", self.stderr()),
                Err(_) => panic!("no {what:?} within {within:?}:\n{}", self.tail()),
            }
        }
    }

    /// Waits for `n` more "batch committed" lines.
    async fn batches(&mut self, n: usize, within: Duration) {
        for _ in 0..n {
            self.line("batch committed", within).await;
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn tail(&self) -> String {
        let all = self.stderr();
        let lines: Vec<&str> = all.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    async fn exit(mut self, within: Duration) -> Exit {
        let status = match tokio::time::timeout(within, self.child.wait()).await {
            Ok(s) => s.unwrap(),
            Err(_) => panic!("lethe did not exit within {within:?}:\n{}", self.tail()),
        };
        let took = self.started.elapsed();
        let stdout = (&mut self.stdout).await.unwrap();
        // The stderr reader ends with the pipe; give it a moment to drain.
        for _ in 0..50 {
            if self.lines.is_closed() && self.lines.is_empty() {
                break;
            }
            while self.lines.try_recv().is_ok() {}
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Exit {
            code: status.code(),
            stdout,
            stderr: self.stderr(),
            took,
        }
    }

    fn sigterm(&self) {
        let pid = self.child.id().expect("running").to_string();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
    }
}

// ---------------------------------------------------------------------------------
// The fixture
// ---------------------------------------------------------------------------------

/// A Koha-shaped MariaDB library with canaries, a proxy to it, and a config that
/// reaches it through the proxy.
struct Library {
    db: TestDb,
    proxy: Proxy,
    dir: tempfile::TempDir,
    cfg: PathBuf,
    anon: i64,
    /// Rows pointing to the anonymous patron before any run, per table.
    before: (i64, i64),
}

async fn library(checkouts: usize, cron: &str) -> Option<Library> {
    library_with(checkouts, cron, "").await
}

/// [`library`] with more `safety:` lines (each indented by two spaces, ending in a
/// newline).
async fn library_with(checkouts: usize, cron: &str, safety: &str) -> Option<Library> {
    let db = TestDb::mysql().await?;
    let mut opts = lethe::demo::DemoOptions::standard(chrono::Utc::now().date_naive());
    opts.patrons = 300;
    opts.returned_checkouts = checkouts;
    opts.canary = Some(CANARY.into());
    let Raw::MySql(p) = &db.raw else {
        unreachable!()
    };
    let stats = lethe::demo::populate(lethe::demo::DemoTarget::MySql(p), &opts)
        .await
        .unwrap();
    let anon = stats.anonymous_patron;
    let proxy = Proxy::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("retention.yaml");
    std::fs::write(
        &cfg,
        format!(
            "library: Outage Library\ndatabase:\n  url: \"{}\"\nschedule:\n  cron: \"{cron}\"\n  timezone: America/New_York\n\
             safety:\n  batch_size: 7\n  max_fraction: 1.0\n{safety}report:\n  outbox: outbox\nprofile: koha\n\
             classes:\n  expired_patrons: {{ enabled: false }}\n",
            proxy.url(&db)
        ),
    )
    .unwrap();
    let mut lib = Library {
        db,
        proxy,
        dir,
        cfg,
        anon,
        before: (0, 0),
    };
    lib.before = lib.anonymized().await;
    assert!(
        lib.db.count("old_issues").await > 1000,
        "the fixture has history to anonymize"
    );
    Some(lib)
}

impl Library {
    fn lethe(&self, args: &[&str]) -> Lethe {
        Lethe::spawn(self.dir.path(), &self.cfg, args, "debug")
    }

    /// Rows pointing to the anonymous patron with no note left, per table (direct
    /// connection): anonymizing clears the notes too.
    async fn anonymized(&self) -> (i64, i64) {
        let v = self.db.ints(&koha_anonymized_sql(self.anon)).await;
        (v[0], v[1])
    }

    /// Rows changed so far, per table, from the data.
    async fn changed(&self) -> (i64, i64) {
        let now = self.anonymized().await;
        (now.0 - self.before.0, now.1 - self.before.1)
    }

    /// The ledger equals the data, class by class, both read in one statement (one
    /// snapshot): a session whose client is gone may still commit between two reads.
    async fn assert_ledger_equals_data(&self, when: &str) -> (i64, i64) {
        let [issues, reserves] = koha_anonymized_sql(self.anon);
        let v = self
            .db
            .ints(&[
                ledger_sql(Some("circulation_history")),
                ledger_sql(Some("holds_history")),
                issues,
                reserves,
            ])
            .await;
        let ledger = (v[0], v[1]);
        let data = (v[2] - self.before.0, v[3] - self.before.1);
        assert_eq!(
            ledger, data,
            "{when}: the ledger (left) and the data disagree"
        );
        data
    }

    /// The runs' statuses in order (direct connection).
    async fn runs(&self) -> Vec<String> {
        let Raw::MySql(p) = &self.db.raw else {
            unreachable!()
        };
        sqlx::query_scalar::<_, String>(
            "SELECT CAST(status AS CHAR) FROM lethe_runs WHERE kind = 'run' ORDER BY id",
        )
        .fetch_all(p)
        .await
        .unwrap()
    }

    async fn lethe_tables(&self) -> i64 {
        self.db
            .count("information_schema.tables WHERE table_schema = DATABASE() AND table_name LIKE 'lethe%'")
            .await
    }

    /// The reports in the outbox: (subject, text, html) of each.
    fn outbox(&self) -> Vec<(String, String, String)> {
        let Ok(entries) = std::fs::read_dir(self.dir.path().join("outbox")) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = entries
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect();
        files.sort();
        files
            .iter()
            .map(|f| {
                let raw = std::fs::read_to_string(f).unwrap();
                assert!(!raw.contains(CANARY), "patron data in {}", f.display());
                let opened = crate::report::open(&raw);
                for part in [&opened.0, &opened.1, &opened.2] {
                    assert!(!part.contains(CANARY), "patron data in {}", f.display());
                }
                opened
            })
            .collect()
    }

    /// A run after the outage, through the restored proxy: ends ok.
    async fn run_ok(&self) -> (serde_json::Value, Exit) {
        let out = self
            .lethe(&["run", "--once", "--json"])
            .exit(Duration::from_secs(120))
            .await;
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        assert_no_canary(&out);
        let j: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(j["status"], "ok", "{j}");
        (j, out)
    }
}

fn assert_no_canary(out: &Exit) {
    assert!(!out.stdout.contains(CANARY), "patron data on stdout");
    assert!(!out.stderr.contains(CANARY), "patron data on stderr");
}

fn affected(j: &serde_json::Value) -> i64 {
    j["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["affected"].as_i64().unwrap())
        .sum()
}

fn no_panic(out: &Exit) {
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
}

// ---------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------

/// A cut of about 2 s inside a batch: the batch is tried again after the pause and the
/// run ends `ok`, with the ledger equal to the data and a fixed point.
#[tokio::test(flavor = "multi_thread")]
async fn a_two_second_blip_mid_run_is_retried_and_the_run_ends_ok() {
    let Some(lib) = library(6000, "30 2 * * *").await else {
        return;
    };
    let mut run = lib.lethe(&["run", "--once", "--json"]);
    run.batches(20, Duration::from_secs(60)).await;
    lib.proxy.arm(Mode::Refuse);
    lib.proxy.struck(Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let outage = lib.proxy.restore();
    let out = run.exit(Duration::from_secs(120)).await;
    no_panic(&out);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_no_canary(&out);
    let retries = out.stderr.matches(RETRY_WARNING).count();
    assert!(retries >= 1, "no retry warning:\n{}", out.stderr);
    for l in out.stderr.lines().filter(|l| l.contains(RETRY_WARNING)) {
        eprintln!("outage (blip): {l}");
    }
    let j: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    // The cut drops the run lock's connection too. A run that outlasts the lock's 30 s
    // heartbeat (a loaded machine) finds it gone and stops as `interrupted`, by design
    // (another worker may hold the lock now); the next run then finishes the work.
    let lock_lost = out
        .stderr
        .contains("the connection holding the run lock failed");
    if lock_lost {
        assert_eq!(j["status"], "interrupted", "{j}");
        eprintln!(
            "outage (blip): the run outlasted the lock heartbeat and lost the lock: interrupted"
        );
    } else {
        assert_eq!(j["status"], "ok", "{j}");
    }
    let changed = lib.assert_ledger_equals_data("after the blip").await;
    assert_eq!(affected(&j), changed.0 + changed.1, "{j}");
    assert_eq!(
        lib.runs().await,
        [if lock_lost { "interrupted" } else { "ok" }]
    );
    // A fixed point once the work is done: the last run changes nothing.
    if lock_lost {
        lib.run_ok().await;
    }
    let (again, _) = lib.run_ok().await;
    assert_eq!(affected(&again), 0, "{again}");
    lib.assert_ledger_equals_data("after the second run").await;
    let (accepted, dropped) = lib.proxy.stats();
    eprintln!(
        "outage figures (blip): outage {:.1} s, {retries} retry warning(s), {dropped} live connection(s) dropped, \
         {accepted} connections in all, run {:.1} s, {} rows changed",
        outage.as_secs_f64(),
        out.took.as_secs_f64(),
        changed.0 + changed.1
    );
}

/// The database stays away past what the retries cover: the run fails with a message
/// naming the database (exit 1, no panic), the director's failure report waits in the
/// outbox, committed batches stand with the ledger equal to the data, and once the
/// database is back the next run closes the stale run and finishes the work.
#[tokio::test(flavor = "multi_thread")]
async fn a_long_outage_mid_run_fails_the_run_and_the_next_run_finishes() {
    let Some(lib) = library(6000, "30 2 * * *").await else {
        return;
    };
    let mut run = lib.lethe(&["run", "--once", "--json"]);
    run.batches(20, Duration::from_secs(60)).await;
    lib.proxy.arm(Mode::Refuse);
    lib.proxy.struck(Duration::from_secs(10)).await;
    let cut = Instant::now();
    // Down until the run gives up.
    let out = run.exit(Duration::from_secs(300)).await;
    let gave_up_after = cut.elapsed();
    let outage = lib.proxy.restore();
    no_panic(&out);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert_no_canary(&out);
    let retries = out.stderr.matches(RETRY_WARNING).count();
    assert!(retries >= 1, "no retry warning:\n{}", out.stderr);
    for l in out.stderr.lines().filter(|l| {
        l.contains(RETRY_WARNING) || l.contains("class failed") || l.contains("run lock")
    }) {
        eprintln!("outage (long): {l}");
    }
    let j: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(j["status"], "failed", "{j}");
    let last = out
        .stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("lethe: "))
        .unwrap_or_else(|| panic!("no final message:\n{}", out.stderr));
    let proxied = format!("127.0.0.1:{}", lib.proxy.shared.port);
    assert!(
        last.contains(&proxied),
        "the message names the database: {last}"
    );
    // The director hears of it.
    let reports = lib.outbox();
    assert_eq!(reports.len(), 1, "one failure report");
    let (subject, text, _html) = &reports[0];
    assert!(subject.contains("FAILED"), "{subject}");
    assert!(
        text.contains(&proxied),
        "the report names the database:\n{text}"
    );
    // Committed batches stand, counted in the ledger.
    let committed = lib.assert_ledger_equals_data("after the failed run").await;
    assert!(committed.0 > 0, "batches committed before the cut stand");
    let total = lib.db.count("old_issues").await;
    assert!(
        committed.0 + lib.before.0 < total,
        "the run stopped before finishing"
    );
    assert_eq!(lib.runs().await, ["running"]);
    // Back: the next run closes the stale one and finishes the work.
    let (next, _) = lib.run_ok().await;
    assert_eq!(lib.runs().await, ["interrupted", "ok"]);
    let notices = next["notices"].as_array().map_or(0, Vec::len);
    assert!(
        notices >= 1,
        "the next report tells of the stale run: {next}"
    );
    assert!(
        next["notices"].to_string().contains("Run 1 did not finish"),
        "{next}"
    );
    let finished = lib.assert_ledger_equals_data("after the next run").await;
    let (again, _) = lib.run_ok().await;
    assert_eq!(affected(&again), 0, "{again}");
    let verify = lib
        .lethe(&["ledger", "verify"])
        .exit(Duration::from_secs(60))
        .await;
    assert_eq!(verify.code, Some(0), "{}", verify.stdout);
    eprintln!(
        "outage figures (long): run gave up {:.1} s after the cut (outage {:.1} s), {retries} retry warning(s), \
         {} rows committed before, {} after the next run; failed run {:.1} s; message: {last}",
        gave_up_after.as_secs_f64(),
        outage.as_secs_f64(),
        committed.0 + committed.1,
        finished.0 + finished.1,
        out.took.as_secs_f64()
    );
}

/// The database is unreachable from the start (port closed, then black-holed): exit 1
/// with a message naming the database, a failure report, nothing written.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_database_at_start_fails_cleanly_and_writes_nothing() {
    let Some(lib) = library(1500, "30 2 * * *").await else {
        return;
    };
    let proxied = format!("127.0.0.1:{}", lib.proxy.shared.port);
    let mut figures = Vec::new();
    for (n, mode) in [Mode::Refuse, Mode::BlackHole].into_iter().enumerate() {
        lib.proxy.cut(mode);
        let out = lib
            .lethe(&["run", "--once", "--json"])
            .exit(Duration::from_secs(120))
            .await;
        lib.proxy.restore();
        no_panic(&out);
        assert_eq!(out.code, Some(1), "{mode:?}: {}", out.stderr);
        assert_no_canary(&out);
        let last = out
            .stderr
            .lines()
            .rev()
            .find(|l| l.starts_with("lethe: "))
            .unwrap_or_else(|| panic!("{mode:?}: no final message:\n{}", out.stderr));
        assert!(
            last.contains("cannot connect to the database") && last.contains(&proxied),
            "{mode:?}: {last}"
        );
        // The real cause, not only sqlx's "pool timed out".
        let cause = match mode {
            Mode::Refuse => "Connection refused",
            _ => "no answer from the server",
        };
        assert!(last.contains(cause), "{mode:?}: {last}");
        let j: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(j["status"], "failed", "{j}");
        let reports = lib.outbox();
        assert_eq!(reports.len(), n + 1, "{mode:?}: a failure report each time");
        let (subject, text, _) = reports.last().unwrap();
        assert!(subject.contains("FAILED"), "{subject}");
        assert!(
            text.contains(&proxied),
            "{mode:?}: the report names the database:\n{text}"
        );
        // Nothing written: not even Lethe's own tables.
        assert_eq!(lib.lethe_tables().await, 0, "{mode:?}");
        assert_eq!(lib.changed().await, (0, 0), "{mode:?}");
        figures.push(format!("{mode:?} {:.1} s: {last}", out.took.as_secs_f64()));
    }
    eprintln!(
        "outage figures (unreachable at start): {}",
        figures.join("; ")
    );
}

/// `lethe run` (the daemon), a run every minute: the database is lost in the middle of
/// a scheduled run for longer than the retries cover. That run fails; the daemon stays
/// up; the next scheduled run, with the database back, closes the stale run and ends
/// ok. Takes up to about four minutes.
#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_survives_an_outage_and_the_next_scheduled_run_succeeds() {
    let Some(lib) = library(6000, "* * * * *").await else {
        return;
    };
    let mut daemon = Lethe::spawn(lib.dir.path(), &lib.cfg, &["run"], "info,lethe=debug");
    daemon.line("next run armed", Duration::from_secs(30)).await;
    daemon.line("run started", Duration::from_secs(90)).await;
    daemon.batches(20, Duration::from_secs(60)).await;
    lib.proxy.arm(Mode::Refuse);
    lib.proxy.struck(Duration::from_secs(10)).await;
    let cut = Instant::now();
    let failed = daemon
        .line("scheduled run failed", Duration::from_secs(240))
        .await;
    let gave_up_after = cut.elapsed();
    assert!(daemon.alive(), "the daemon stays up after a failed run");
    let committed = lib.assert_ledger_equals_data("after the failed run").await;
    assert!(committed.0 > 0);
    assert_eq!(lib.runs().await, ["running"]);
    let outage = lib.proxy.restore();
    daemon.line("next run armed", Duration::from_secs(10)).await;
    let ok = daemon
        .line("scheduled run finished", Duration::from_secs(150))
        .await;
    assert!(
        ok.contains("status=\"ok\"") || ok.contains("status=ok"),
        "{ok}"
    );
    assert!(daemon.alive());
    assert_eq!(lib.runs().await, ["interrupted", "ok"]);
    let finished = lib.assert_ledger_equals_data("after the next run").await;
    daemon.sigterm();
    let out = daemon.exit(Duration::from_secs(15)).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    no_panic(&out);
    assert_no_canary(&out);
    let retries = out.stderr.matches(RETRY_WARNING).count();
    let reports = lib.outbox();
    assert_eq!(reports.len(), 2, "a failure report, then the ok report");
    assert!(reports[0].0.contains("FAILED"), "{}", reports[0].0);
    assert!(!reports[1].0.contains("FAILED"), "{}", reports[1].0);
    eprintln!(
        "outage figures (daemon): run gave up {:.1} s after the cut (outage {:.1} s), {retries} retry warning(s), \
         {} rows committed before, {} after the next run; {failed}",
        gave_up_after.as_secs_f64(),
        outage.as_secs_f64(),
        committed.0 + committed.1,
        finished.0 + finished.1
    );
}

/// A cut of about 2 s outside any batch: on each step around the batches (opening a
/// class in the ledger, closing it, reading its count back, counting the next class,
/// closing the run), the answer to the statement is lost and the connections drop.
/// Retried like a batch, and the run ends `ok`.
///
/// Regression: only batches were retried, so a 2 s blip that struck while the second
/// class was being counted failed that class and the run (exit 1).
#[tokio::test(flavor = "multi_thread")]
async fn a_two_second_blip_outside_a_batch_is_retried_and_the_run_ends_ok() {
    let steps = [
        ("opening a class", "INSERT INTO `lethe_run_classes`"),
        (
            "closing a class",
            "UPDATE `lethe_run_classes` SET `eligible`",
        ),
        (
            "reading a class's count back",
            "SELECT `affected` FROM `lethe_run_classes`",
        ),
        ("counting the second class", "FROM `old_reserves`"),
        ("closing the run", "UPDATE `lethe_runs` SET `status`"),
    ];
    let mut figures = Vec::new();
    for (step, sql) in steps {
        let Some(lib) = library(1500, "30 2 * * *").await else {
            return;
        };
        lib.proxy.arm_on(sql, Mode::Refuse);
        let run = lib.lethe(&["run", "--once", "--json"]);
        lib.proxy.struck(Duration::from_secs(60)).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let outage = lib.proxy.restore();
        let out = run.exit(Duration::from_secs(120)).await;
        no_panic(&out);
        let warnings: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| {
                l.starts_with("lethe: ")
                    || (l.contains("lethe") && (l.contains(" WARN ") || l.contains(" ERROR ")))
            })
            .collect();
        assert_eq!(out.code, Some(0), "{step}: {}", warnings.join("\n"));
        assert_no_canary(&out);
        let j: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(j["status"], "ok", "{step}: {j}");
        let retries = out.stderr.matches(RETRY_WARNING).count();
        assert!(
            retries >= 1,
            "{step}: no retry warning:\n{}",
            warnings.join("\n")
        );
        let changed = lib.assert_ledger_equals_data(step).await;
        assert_eq!(affected(&j), changed.0 + changed.1, "{step}: {j}");
        assert_eq!(lib.runs().await, ["ok"], "{step}");
        let verify = lib
            .lethe(&["ledger", "verify"])
            .exit(Duration::from_secs(60))
            .await;
        assert_eq!(verify.code, Some(0), "{step}: {}", verify.stdout);
        let (again, _) = lib.run_ok().await;
        assert_eq!(affected(&again), 0, "{step}: {again}");
        figures.push(format!(
            "{step}: outage {:.1} s, {retries} retry warning(s), run {:.1} s",
            outage.as_secs_f64(),
            out.took.as_secs_f64()
        ));
    }
    eprintln!("outage figures (outside a batch): {}", figures.join("; "));
}

/// The server goes silent mid-run without closing anything (a hung host, a firewall
/// dropping an established flow): the statement in flight gets no answer within
/// `safety.statement_timeout`, its connection is dropped (Lethe closes it: the proxy
/// sees the client hang up, while nothing reaches the server), the batch is retried as
/// the retry budget allows on connections that cannot be had, and the run fails in
/// bounded time with the failure report, the ledger equal to the data. Once the
/// database answers again the next run closes the stale run and finishes the work.
///
/// Regression: with no statement timeout the batch waited for its answer forever (no
/// log line, no retry, no report, not exited after 180 s); a daemon would never have
/// run again.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_database_mid_run_fails_the_run_in_bounded_time() {
    let Some(lib) = library_with(
        6000,
        "30 2 * * *",
        "  statement_timeout: 5 seconds\n  retry_for: 20 seconds\n",
    )
    .await
    else {
        return;
    };
    let mut run = lib.lethe(&["run", "--once", "--json"]);
    run.batches(20, Duration::from_secs(60)).await;
    lib.proxy.arm(Mode::Frozen);
    lib.proxy.struck(Duration::from_secs(10)).await;
    let silent = Instant::now();
    let closed_before = lib.proxy.shared.client_closed.load(Ordering::SeqCst);
    let out = run.exit(Duration::from_secs(120)).await;
    let gave_up_after = silent.elapsed();
    // Lethe hung up on the silent connections itself, before the proxy let go.
    let closed = lib.proxy.shared.client_closed.load(Ordering::SeqCst) - closed_before;
    let outage = lib.proxy.restore();
    no_panic(&out);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert_no_canary(&out);
    assert!(
        out.stderr.contains("safety.statement_timeout"),
        "the timeout is named:\n{}",
        out.stderr
    );
    assert!(
        closed >= 1,
        "the connection that timed out is dropped by Lethe: {closed}"
    );
    let j: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(j["status"], "failed", "{j}");
    let last = out
        .stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("lethe: "))
        .unwrap_or_else(|| panic!("no final message:\n{}", out.stderr));
    let proxied = format!("127.0.0.1:{}", lib.proxy.shared.port);
    assert!(
        last.contains(&proxied),
        "the message names the database: {last}"
    );
    let reports = lib.outbox();
    assert_eq!(reports.len(), 1, "a failure report");
    assert!(reports[0].0.contains("FAILED"), "{}", reports[0].0);
    let committed = lib
        .assert_ledger_equals_data("after the silent outage")
        .await;
    assert!(committed.0 > 0, "batches committed before it stand");
    assert_eq!(lib.runs().await, ["running"]);
    // Back: the next run closes the stale one and finishes the work.
    let (_next, _) = lib.run_ok().await;
    assert_eq!(lib.runs().await, ["interrupted", "ok"]);
    let finished = lib.assert_ledger_equals_data("after the next run").await;
    let retries = out.stderr.matches(RETRY_WARNING).count();
    eprintln!(
        "outage figures (silent): run gave up {:.1} s after the server went silent (statement_timeout 5 s, \
         retry_for 20 s; silent {:.1} s), {retries} retry warning(s), {closed} connection(s) closed by Lethe, \
         {} rows committed before, {} after the next run; message: {last}",
        gave_up_after.as_secs_f64(),
        outage.as_secs_f64(),
        committed.0 + committed.1,
        finished.0 + finished.1
    );
}

/// The retry budget is the administrator's (`safety.retries`, `safety.retry_for`): with
/// 2 retries and 15 s, a cut that stays kept the batch is tried twice more, the step
/// after it (reading the class's count back) finds the budget spent and fails at its
/// first try, and the run gives up within the budget plus the two tries that were
/// under way (each waits up to the pool's 10 s acquire timeout). The ledger still
/// equals the data.
#[tokio::test(flavor = "multi_thread")]
async fn a_small_retry_budget_gives_up_within_it() {
    let Some(lib) = library_with(
        6000,
        "30 2 * * *",
        "  retries: 2\n  retry_for: 15 seconds\n",
    )
    .await
    else {
        return;
    };
    let mut run = lib.lethe(&["run", "--once", "--json"]);
    run.batches(20, Duration::from_secs(60)).await;
    lib.proxy.arm(Mode::Refuse);
    lib.proxy.struck(Duration::from_secs(10)).await;
    let cut = Instant::now();
    let out = run.exit(Duration::from_secs(120)).await;
    let gave_up_after = cut.elapsed();
    lib.proxy.restore();
    no_panic(&out);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert_no_canary(&out);
    let retries = out.stderr.matches(RETRY_WARNING).count();
    assert_eq!(retries, 2, "safety.retries: 2\n{}", out.stderr);
    assert!(
        gave_up_after < Duration::from_secs(15 + 2 * 10 + 10),
        "gave up {gave_up_after:?} after the cut"
    );
    assert_eq!(lib.outbox().len(), 1, "a failure report");
    lib.assert_ledger_equals_data("after giving up").await;
    eprintln!(
        "outage figures (retry budget 2 retries, 15 s): run gave up {:.1} s after the cut, {retries} retry warnings",
        gave_up_after.as_secs_f64()
    );
}

/// `lethe run` (the daemon), a run every minute: the database goes silent in the middle
/// of a scheduled run. That run fails in bounded time (statement timeout, then the
/// retry budget), the daemon stays up, and its next scheduled run, with the database
/// answering again, closes the stale run and ends ok.
#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_survives_a_silent_database_and_the_next_scheduled_run_succeeds() {
    let Some(lib) = library_with(
        6000,
        "* * * * *",
        "  statement_timeout: 5 seconds\n  retry_for: 20 seconds\n",
    )
    .await
    else {
        return;
    };
    let mut daemon = Lethe::spawn(lib.dir.path(), &lib.cfg, &["run"], "info,lethe=debug");
    daemon.line("next run armed", Duration::from_secs(30)).await;
    daemon.line("run started", Duration::from_secs(90)).await;
    daemon.batches(20, Duration::from_secs(60)).await;
    lib.proxy.arm(Mode::Frozen);
    lib.proxy.struck(Duration::from_secs(10)).await;
    let silent = Instant::now();
    let failed = daemon
        .line("scheduled run failed", Duration::from_secs(120))
        .await;
    let gave_up_after = silent.elapsed();
    assert!(daemon.alive(), "the daemon stays up after a failed run");
    lib.assert_ledger_equals_data("after the failed run").await;
    assert_eq!(lib.runs().await, ["running"]);
    lib.proxy.restore();
    daemon.line("next run armed", Duration::from_secs(30)).await;
    let ok = daemon
        .line("scheduled run finished", Duration::from_secs(150))
        .await;
    assert!(
        ok.contains("status=\"ok\"") || ok.contains("status=ok"),
        "{ok}"
    );
    assert_eq!(lib.runs().await, ["interrupted", "ok"]);
    lib.assert_ledger_equals_data("after the next run").await;
    daemon.sigterm();
    let out = daemon.exit(Duration::from_secs(15)).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    no_panic(&out);
    assert_no_canary(&out);
    let reports = lib.outbox();
    assert_eq!(reports.len(), 2, "a failure report, then the ok report");
    assert!(reports[0].0.contains("FAILED"), "{}", reports[0].0);
    eprintln!(
        "outage figures (daemon, silent): scheduled run gave up {:.1} s after the server went silent; {failed}",
        gave_up_after.as_secs_f64()
    );
}

/// A batch's COMMIT reaches the server, which commits, and then the server goes silent:
/// the answer never comes. Lethe waits `safety.statement_timeout`, drops the
/// connection, says that whether the transaction committed is unknown, and counts
/// nothing for it itself; because the batch's ledger count was in that same
/// transaction, the ledger still equals the data, and the next run, re-counting what
/// is still eligible, finishes the work without doing that batch twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_commit_whose_answer_never_comes_leaves_the_ledger_equal_to_the_data() {
    let Some(lib) = library_with(
        6000,
        "30 2 * * *",
        "  statement_timeout: 3 seconds\n  retry_for: 10 seconds\n",
    )
    .await
    else {
        return;
    };
    let mut run = lib.lethe(&["run", "--once", "--json"]);
    run.batches(20, Duration::from_secs(60)).await;
    lib.proxy.arm_on("COMMIT", Mode::Frozen);
    lib.proxy.struck(Duration::from_secs(10)).await;
    let out = run.exit(Duration::from_secs(120)).await;
    lib.proxy.restore();
    no_panic(&out);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert_no_canary(&out);
    assert!(
        out.stderr
            .contains("whether the transaction committed is unknown"),
        "the unknown outcome is said:\n{}",
        out.stderr
    );
    // The server applied the COMMIT: its rows and its ledger count stand together.
    let committed = lib.assert_ledger_equals_data("after the lost COMMIT").await;
    let (next, _) = lib.run_ok().await;
    assert_eq!(lib.runs().await, ["interrupted", "ok"]);
    let finished = lib.assert_ledger_equals_data("after the next run").await;
    let (again, _) = lib.run_ok().await;
    assert_eq!(affected(&again), 0, "{again}");
    eprintln!(
        "outage figures (lost COMMIT): {} rows committed before (the unanswered batch included), {} after the next \
         run ({} by it)",
        committed.0 + committed.1,
        finished.0 + finished.1,
        affected(&next)
    );
}
