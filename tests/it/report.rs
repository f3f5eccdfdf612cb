//! The run report against a real SMTP server: `python3 -m aiosmtpd` with its Maildir
//! handler, one server process per test on a free loopback port.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, FixedOffset, TimeZone, Utc};
use lethe::report::*;
use lethe::summary::*;

// ---------------------------------------------------------------------------------
// A real SMTP server
// ---------------------------------------------------------------------------------

/// An aiosmtpd process storing every message it accepts in a Maildir; killed on drop.
struct SmtpServer {
    child: Child,
    maildir: PathBuf,
    port: u16,
}

impl SmtpServer {
    /// Starts aiosmtpd on `127.0.0.1:port`, storing into `maildir` (which must not exist
    /// yet), and waits (at most 20 s) until the port accepts connections.
    fn start(port: u16, maildir: PathBuf) -> SmtpServer {
        assert!(
            !maildir.exists(),
            "aiosmtpd wants to create its Maildir itself"
        );
        let child = Command::new("python3")
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 -m aiosmtpd could not be started (pip install aiosmtpd)");
        let mut server = SmtpServer {
            child,
            maildir,
            port,
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let mut err = String::new();
                if let Some(mut stderr) = self.child.stderr.take() {
                    use std::io::Read;
                    let _ = stderr.read_to_string(&mut err);
                }
                panic!("aiosmtpd exited early ({status}); is it installed? stderr:\n{err}");
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "aiosmtpd did not listen on port {} within 20 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// The raw messages received so far, in the order the server stored them.
    fn messages(&self) -> Vec<String> {
        let new = self.maildir.join("new");
        let Ok(entries) = std::fs::read_dir(&new) else {
            return Vec::new();
        };
        let mut files: Vec<(u64, PathBuf)> = entries
            .map(|e| e.expect("maildir entry").path())
            .map(|p| (maildir_sequence(&p), p))
            .collect();
        files.sort();
        files
            .into_iter()
            .map(|(_, p)| std::fs::read_to_string(&p).expect("read message"))
            .collect()
    }
}

/// Python's `mailbox.Maildir` names files `<secs>.M<usecs>P<pid>Q<counter>.<host>`: the
/// counter orders the deliveries of one server process.
fn maildir_sequence(path: &Path) -> u64 {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.split_once('Q')
        .and_then(|(_, rest)| rest.split('.').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX)
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port that nothing listens on (free a moment ago).
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind loopback");
    listener.local_addr().expect("local addr").port()
}

// ---------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------

fn config(outbox: &Path, smtp_url: Option<String>, timeout: Duration) -> ReportConfig {
    ReportConfig {
        from: "Lethe <lethe@library.example>".parse().expect("from"),
        to: vec![
            "Director <director@library.example>".parse().expect("to"),
            "deputy@library.example".parse().expect("to"),
        ],
        smtp: smtp_url.map(|url| SmtpConfig {
            url,
            password: None,
            timeout,
        }),
        outbox: outbox.to_path_buf(),
        send: SendWhen::Always,
        library: "Example Library".to_owned(),
    }
}

fn cutoff() -> DateTime<FixedOffset> {
    FixedOffset::west_opt(4 * 3600)
        .expect("offset")
        .with_ymd_and_hms(2025, 5, 3, 0, 0, 0)
        .single()
        .expect("cutoff")
}

fn class(name: &str, table: &str, action: Action, affected: u64) -> ClassSummary {
    ClassSummary {
        name: name.to_owned(),
        table: table.to_owned(),
        action,
        cutoff: cutoff(),
        eligible: affected,
        affected,
        kept: Kept {
            opt_in: 17,
            legal_hold: 2,
            obligations: 5,
            protected: 3,
        },
        status: ClassStatus::Ok,
        error: None,
    }
}

fn summary(run_id: i64, classes: Vec<ClassSummary>) -> RunSummary {
    let started_at = Utc
        .with_ymd_and_hms(2026, 11, 3, 6, 30, 0)
        .single()
        .expect("start");
    RunSummary {
        run_id: Some(run_id),
        mode: Mode::Enforce,
        started_at,
        finished_at: Some(started_at + chrono::TimeDelta::seconds(252)),
        status: RunStatus::Ok,
        classes,
        error: None,
        notices: Vec::new(),
    }
}

fn typical(run_id: i64) -> RunSummary {
    summary(
        run_id,
        vec![
            class(
                "circulation_history",
                "old_issues",
                Action::Anonymize,
                1_200,
            ),
            class("expired_patrons", "borrowers", Action::Delete, 34),
        ],
    )
}

fn eml_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries.map(|e| e.expect("entry").path()).collect();
    files.sort();
    files
}

// ---------------------------------------------------------------------------------
// A small MIME reader (enough for what lettre writes)
// ---------------------------------------------------------------------------------

struct Mime {
    headers: Vec<(String, String)>,
    body: String,
}

impl Mime {
    fn parse(raw: &str) -> Mime {
        let raw = raw.replace("\r\n", "\n");
        let (head, body) = raw.split_once("\n\n").unwrap_or((raw.as_str(), ""));
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in head.lines() {
            if line.starts_with([' ', '\t']) {
                if let Some((_, value)) = headers.last_mut() {
                    value.push(' ');
                    value.push_str(line.trim());
                }
            } else if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
            }
        }
        Mime {
            headers,
            body: body.to_owned(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The parts of a multipart body.
    fn parts(&self) -> Vec<Mime> {
        let ct = self.header("content-type").expect("content-type");
        let boundary = ct
            .split(';')
            .filter_map(|p| p.trim().strip_prefix("boundary="))
            .map(|b| b.trim_matches('"').to_owned())
            .next()
            .expect("boundary");
        let delimiter = format!("--{boundary}");
        self.body
            .split(&delimiter)
            .skip(1)
            .filter(|chunk| !chunk.starts_with("--"))
            .map(|chunk| Mime::parse(chunk.trim_start_matches('\n')))
            .collect()
    }

    /// The body with its Content-Transfer-Encoding undone.
    fn decoded(&self) -> String {
        let cte = self
            .header("content-transfer-encoding")
            .unwrap_or("7bit")
            .to_ascii_lowercase();
        let bytes = match cte.as_str() {
            "base64" => base64(&self.body),
            "quoted-printable" => quoted_printable(&self.body),
            _ => self.body.clone().into_bytes(),
        };
        String::from_utf8(bytes).expect("utf-8 body")
    }
}

fn base64(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => continue,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

fn quoted_printable(text: &str) -> Vec<u8> {
    let lines: Vec<&str> = text.split('\n').collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let (line, soft) = match line.strip_suffix('=') {
            Some(l) => (l, true),
            None => (*line, false),
        };
        let b = line.as_bytes();
        let mut j = 0;
        while j < b.len() {
            let escaped = (b[j] == b'=')
                .then(|| b.get(j + 1..j + 3))
                .flatten()
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match escaped {
                Some(v) => {
                    out.push(v);
                    j += 3;
                }
                None => {
                    out.push(b[j]);
                    j += 1;
                }
            }
        }
        if !soft && i + 1 < lines.len() {
            out.push(b'\n');
        }
    }
    out
}

/// Decodes RFC 2047 encoded words (`=?utf-8?b?...?=`, `=?utf-8?q?...?=`); the blanks
/// between two adjacent encoded words are dropped.
pub fn decode_header(value: &str) -> String {
    let mut out: Vec<u8> = Vec::new();
    let mut previous_encoded = false;
    for (i, token) in value.split_whitespace().enumerate() {
        let encoded = token
            .strip_prefix("=?")
            .and_then(|t| t.strip_suffix("?="))
            .and_then(|t| {
                let mut it = t.splitn(3, '?');
                Some((it.next()?, it.next()?, it.next()?))
            });
        match encoded {
            Some((_charset, enc, text)) => {
                if i > 0 && !previous_encoded {
                    out.push(b' ');
                }
                if enc.eq_ignore_ascii_case("b") {
                    out.extend(base64(text));
                } else {
                    out.extend(quoted_printable(&text.replace('_', " ")));
                }
                previous_encoded = true;
            }
            None => {
                if i > 0 {
                    out.push(b' ');
                }
                out.extend_from_slice(token.as_bytes());
                previous_encoded = false;
            }
        }
    }
    String::from_utf8(out).expect("utf-8 header")
}

/// Subject, text part and HTML part of a received or outboxed message.
fn open(raw: &str) -> (String, String, String) {
    let message = Mime::parse(raw);
    let subject = decode_header(message.header("subject").expect("subject"));
    assert!(
        message
            .header("content-type")
            .expect("content-type")
            .starts_with("multipart/alternative"),
        "report must be multipart/alternative"
    );
    let parts = message.parts();
    assert_eq!(parts.len(), 2, "a text part and an HTML part");
    let ct = |p: &Mime| p.header("content-type").unwrap_or("").to_owned();
    assert!(ct(&parts[0]).starts_with("text/plain"), "text part first");
    assert!(ct(&parts[1]).starts_with("text/html"), "HTML part second");
    (subject, parts[0].decoded(), parts[1].decoded())
}

// ---------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn report_is_delivered_to_a_real_smtp_server() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = SmtpServer::start(free_port(), tmp.path().join("maildir"));
    let outbox = tmp.path().join("outbox");
    let cfg = config(&outbox, Some(server.url()), Duration::from_secs(10));

    let delivery = deliver(&cfg, &typical(12)).await.expect("deliver");
    assert_eq!(delivery, Delivery::Sent);

    let messages = server.messages();
    assert_eq!(messages.len(), 1, "exactly one message arrived");
    let raw = &messages[0];
    let head = Mime::parse(raw);
    assert!(
        head.header("message-id")
            .is_some_and(|v| v.ends_with("@library.example>"))
    );
    assert!(head.header("date").is_some(), "Date header");
    assert!(
        head.header("from")
            .is_some_and(|v| v.contains("lethe@library.example"))
    );
    let to = head.header("to").expect("To");
    assert!(to.contains("director@library.example") && to.contains("deputy@library.example"));
    // Both recipients were in the SMTP envelope.
    let rcpt = head
        .header("x-rcptto")
        .expect("aiosmtpd records the envelope");
    assert!(rcpt.contains("director@library.example") && rcpt.contains("deputy@library.example"));

    let (subject, text, html) = open(raw);
    assert_eq!(
        subject,
        "[Lethe] Example Library: run 12 ok — 1,234 rows changed"
    );
    for part in [&text, &html] {
        for expected in [
            "Example Library",
            "circulation_history",
            "old_issues",
            "expired_patrons",
            "borrowers",
            "1,200",
            "34",
            "1,234 rows",
            "anonymized",
            "deleted",
            "patron chose to keep history",
            "still checked out or owed",
            "staff, guarantor or protected account",
            "2026-11-03T06:30:00Z",
            "2025-05-03T00:00:00-04:00",
            "4 min 12 s",
        ] {
            assert!(part.contains(expected), "{expected:?} missing from\n{part}");
        }
    }
    let kept_line = |label: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label).map(|v| v.trim().to_owned()))
            .unwrap_or_default()
    };
    assert_eq!(kept_line("Kept: patron chose to keep history:"), "17");
    assert_eq!(kept_line("Kept: legal hold:"), "2");
    assert_eq!(kept_line("Kept: still checked out or owed:"), "5");
    assert_eq!(
        kept_line("Kept: staff, guarantor or protected account:"),
        "3"
    );
    assert!(html.contains("<td style=\"padding:2px 0;vertical-align:top\">17</td>"));
    assert!(eml_files(&outbox).is_empty(), "nothing left in the outbox");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_smtp_the_report_goes_to_the_outbox() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let outbox = tmp.path().join("nested").join("outbox");
    let cfg = config(&outbox, None, Duration::from_secs(5));

    let Delivery::Outboxed(path) = deliver(&cfg, &typical(7)).await.expect("deliver") else {
        panic!("expected the outbox");
    };
    assert_eq!(
        eml_files(&outbox),
        vec![path.clone()],
        "one file, no temp file"
    );
    let name = path.file_name().and_then(|n| n.to_str()).expect("name");
    assert!(name.ends_with(".eml") && name.contains("-run7-"), "{name}");
    assert!(name.as_bytes()[..8].iter().all(u8::is_ascii_digit) && name.as_bytes()[8] == b'T');

    let raw = std::fs::read_to_string(&path).expect("read eml");
    let (subject, text, _html) = open(&raw);
    assert_eq!(
        subject,
        "[Lethe] Example Library: run 7 ok — 1,234 rows changed"
    );
    assert!(text.contains("1,200"));

    // A second one sorts after the first.
    let Delivery::Outboxed(second) = deliver(&cfg, &typical(8)).await.expect("deliver") else {
        panic!("expected the outbox");
    };
    assert_eq!(eml_files(&outbox), vec![path, second]);

    let flushed = flush_outbox(&cfg).await.expect("flush");
    assert_eq!(
        flushed,
        FlushOutcome {
            sent: 0,
            remaining: 2
        }
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn smtp_down_then_up_delivers_each_message_exactly_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let outbox = tmp.path().join("outbox");
    let timeout = Duration::from_secs(3);
    let cfg = config(&outbox, Some(format!("smtp://127.0.0.1:{port}")), timeout);

    // Nothing listens: the report is kept, within the timeout.
    let started = Instant::now();
    let first = deliver(&cfg, &typical(1)).await.expect("deliver");
    assert!(started.elapsed() < timeout + Duration::from_secs(1));
    let Delivery::Outboxed(first_path) = first else {
        panic!("expected the outbox, got {first:?}");
    };
    assert!(first_path.exists());
    // The next report while still down queues behind the first.
    let second = deliver(&cfg, &typical(2)).await.expect("deliver");
    assert!(matches!(second, Delivery::Outboxed(_)), "{second:?}");
    assert_eq!(eml_files(&outbox).len(), 2);
    assert_eq!(
        flush_outbox(&cfg).await.expect("flush while down"),
        FlushOutcome {
            sent: 0,
            remaining: 2
        }
    );

    // The relay comes back: the old reports go first, then the new one.
    let server = SmtpServer::start(port, tmp.path().join("maildir"));
    let third = deliver(&cfg, &typical(3)).await.expect("deliver");
    assert_eq!(third, Delivery::Sent);
    assert!(eml_files(&outbox).is_empty(), "outbox emptied");

    // Flushing again sends nothing more.
    assert_eq!(
        flush_outbox(&cfg).await.expect("flush"),
        FlushOutcome::default()
    );
    let subjects: Vec<String> = server.messages().iter().map(|m| open(m).0).collect();
    assert_eq!(
        subjects,
        vec![
            "[Lethe] Example Library: run 1 ok — 1,234 rows changed".to_owned(),
            "[Lethe] Example Library: run 2 ok — 1,234 rows changed".to_owned(),
            "[Lethe] Example Library: run 3 ok — 1,234 rows changed".to_owned(),
        ],
        "each report exactly once, oldest first"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_relay_that_never_answers_is_cut_off_by_the_timeout() {
    // Accepts TCP connections (the kernel completes the handshake) but never greets:
    // lettre's own timeout covers only connecting, so only the outer bound ends this.
    let silent = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let tmp = tempfile::tempdir().expect("tempdir");
    let outbox = tmp.path().join("outbox");
    let timeout = Duration::from_millis(1500);
    let cfg = config(&outbox, Some(format!("smtp://127.0.0.1:{port}")), timeout);

    let started = Instant::now();
    let delivery = deliver(&cfg, &typical(3)).await.expect("deliver");
    let elapsed = started.elapsed();
    assert!(matches!(delivery, Delivery::Outboxed(_)), "{delivery:?}");
    assert!(
        elapsed >= timeout,
        "gave up after {elapsed:?}, before the timeout"
    );
    assert!(
        elapsed < timeout + Duration::from_secs(2),
        "took {elapsed:?}"
    );
    assert_eq!(eml_files(&outbox).len(), 1);
    drop(silent);
}

#[tokio::test(flavor = "multi_thread")]
async fn html_escapes_what_it_interpolates() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(tmp.path(), None, Duration::from_secs(1));
    cfg.library = "Smith & Jones \"Free\" Library".to_owned();
    let mut evil = class(
        "<script>alert('x')</script>",
        "old_issues",
        Action::Delete,
        3,
    );
    evil.status = ClassStatus::Failed;
    evil.error = Some("table <b>old_issues</b> & more".to_owned());
    let mut s = summary(4, vec![evil]);
    s.status = RunStatus::Failed;

    let html = render_html(&cfg, &s);
    assert!(!html.contains("<script"), "{html}");
    assert!(!html.contains("<b>"));
    assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
    assert!(html.contains("Smith &amp; Jones &quot;Free&quot; Library"));
    assert!(html.contains("table &lt;b&gt;old_issues&lt;/b&gt; &amp; more"));
    // Plain text is not HTML: it shows the name as it is.
    assert!(render_text(&cfg, &s).contains("Class: <script>alert('x')</script>"));

    // The subject of a failed run says so first; the message builds with such names.
    let message = build_message(&cfg, &s).expect("build");
    let (subject, _, html_part) = open(&String::from_utf8(message.formatted()).expect("utf-8"));
    assert!(
        subject.starts_with("[Lethe] FAILED: Smith & Jones"),
        "{subject}"
    );
    assert!(!html_part.contains("<script"));
}

/// The words the report itself uses: anything else in a rendering must come from the
/// summary's names, numbers and times, or it is a field that should not be there.
const FIXED_WORDS: &str = "
    lethe data retention report run library mode enforce rows past their period were changed
    status completed every class finished started utc duration min s in total table action
    anonymized deleted cutoff eligible kept patron chose to keep history legal hold still
    checked out or owed staff guarantor protected account that no exemption keeps each
    counted once under its first reason this holds counts only and names an
";

fn words(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Text content of an HTML document: tags removed, the few entities decoded.
fn html_text(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

#[tokio::test(flavor = "multi_thread")]
async fn rendering_holds_names_counts_and_fixed_words_only() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config(tmp.path(), None, Duration::from_secs(1));
    let s = typical(12);
    let fixed = words(FIXED_WORDS);
    let from_summary: BTreeSet<String> = [
        "circulation_history",
        "old_issues",
        "expired_patrons",
        "borrowers",
    ]
    .iter()
    .map(|w| w.to_string())
    .chain(words(&cfg.library))
    .collect();
    let allowed_numbers: BTreeSet<String> = [
        "12", "1", "200", "1,200", "34", "17", "2", "5", "3", "4", "234", "2026", "11", "03", "06",
        "30", "00", "2025", "05", "04", "03t06", "03t00", "00z",
    ]
    .iter()
    .map(|w| w.to_string())
    .collect();

    for (kind, body) in [
        ("text", render_text(&cfg, &s)),
        ("html", html_text(&render_html(&cfg, &s))),
    ] {
        let unexpected: Vec<String> = words(&body)
            .into_iter()
            .filter(|w| {
                !fixed.contains(w) && !from_summary.contains(w) && !allowed_numbers.contains(w)
            })
            .collect();
        assert!(
            unexpected.is_empty(),
            "{kind} holds unexpected words {unexpected:?}:\n{body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_runs_and_tripped_classes_are_explained() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config(tmp.path(), None, Duration::from_secs(1));

    let mut dry = typical(5);
    dry.mode = Mode::DryRun;
    for c in &mut dry.classes {
        c.affected = 0;
    }
    let text = render_text(&cfg, &dry);
    assert!(
        text.contains("This was a dry run: nothing was changed."),
        "{text}"
    );
    assert!(text.contains("would be anonymized"));
    let message = build_message(&cfg, &dry).expect("build");
    let (subject, _, html) = open(&String::from_utf8(message.formatted()).expect("utf-8"));
    assert_eq!(
        subject,
        "[Lethe] Example Library: run 5 (dry run) ok — nothing changed, 1,234 rows eligible"
    );
    assert!(html.contains("nothing was changed"));

    let mut tripped = typical(6);
    tripped.status = RunStatus::Tripped;
    tripped.classes[0].status = ClassStatus::Tripped;
    tripped.classes[0].affected = 0;
    tripped.classes[0].error = Some("would change 62% of old_issues, limit 10%".to_owned());
    let text = render_text(&cfg, &tripped);
    assert!(text.contains("The circuit breaker tripped"), "{text}");
    assert!(text.contains("lethe plan") && text.contains("lethe run --once --allow-large"));
    assert!(text.contains("would change 62% of old_issues, limit 10%"));
    let html = render_html(&cfg, &tripped);
    assert!(html.contains("lethe run --once --allow-large"));
    let message = build_message(&cfg, &tripped).expect("build");
    let (subject, _, _) = open(&String::from_utf8(message.formatted()).expect("utf-8"));
    assert_eq!(
        subject,
        "[Lethe] TRIPPED: Example Library: run 6 tripped — 34 rows changed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn send_policy_and_not_needed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let outbox = tmp.path().join("outbox");
    let mut cfg = config(&outbox, None, Duration::from_secs(1));
    let changed = typical(1);
    let mut quiet = typical(2);
    for c in &mut quiet.classes {
        c.affected = 0;
    }
    let mut failed = quiet.clone();
    failed.status = RunStatus::Failed;
    let mut skipped = quiet.clone();
    skipped.status = RunStatus::Skipped;

    cfg.send = SendWhen::Always;
    assert!(
        [&changed, &quiet, &failed, &skipped]
            .iter()
            .all(|s| should_send(&cfg, s))
    );
    cfg.send = SendWhen::Changed;
    assert!(should_send(&cfg, &changed) && should_send(&cfg, &failed));
    assert!(!should_send(&cfg, &quiet) && !should_send(&cfg, &skipped));
    cfg.send = SendWhen::Failure;
    assert!(should_send(&cfg, &failed));
    assert!(!should_send(&cfg, &changed) && !should_send(&cfg, &quiet));

    assert_eq!(
        deliver(&cfg, &changed).await.expect("deliver"),
        Delivery::NotNeeded
    );
    assert!(!outbox.exists(), "nothing written when not needed");
}
