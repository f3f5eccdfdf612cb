//! The run report against a real SMTP server: `python3 -m aiosmtpd` with its Maildir
//! handler, one server process per test on a free loopback port. Also: the verdict, the
//! notices, the history chart (an inline PNG in `multipart/related`), the auditor's
//! footer, well-formed HTML, and the job reading the history from a real ledger.

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

    /// The body's bytes with its Content-Transfer-Encoding undone.
    fn decoded_bytes(&self) -> Vec<u8> {
        let cte = self
            .header("content-transfer-encoding")
            .unwrap_or("7bit")
            .to_ascii_lowercase();
        match cte.as_str() {
            "base64" => base64(&self.body),
            "quoted-printable" => quoted_printable(&self.body),
            _ => self.body.clone().into_bytes(),
        }
    }

    /// The body as text, with its Content-Transfer-Encoding undone.
    fn decoded(&self) -> String {
        String::from_utf8(self.decoded_bytes()).expect("utf-8 body")
    }

    fn content_type(&self) -> String {
        self.header("content-type")
            .unwrap_or("")
            .to_ascii_lowercase()
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

/// The inline chart of a report.
pub(crate) struct Chart {
    /// The image part's Content-ID, without angle brackets.
    pub(crate) cid: String,
    /// Its Content-Disposition header.
    pub(crate) disposition: String,
    /// The decoded PNG.
    pub(crate) png: Vec<u8>,
}

/// A received or outboxed report, taken apart.
pub(crate) struct Opened {
    pub(crate) subject: String,
    pub(crate) text: String,
    pub(crate) html: String,
    /// `Some` when the HTML came in a `multipart/related` part with its chart.
    pub(crate) chart: Option<Chart>,
}

/// Takes a report apart, checking its structure: `multipart/alternative` holding the
/// text part first and then either the HTML part, or a `multipart/related` part that
/// holds the HTML part first and the chart (`image/png`, inline, with a Content-ID).
pub(crate) fn open_report(raw: &str) -> Opened {
    let message = Mime::parse(raw);
    let subject = decode_header(message.header("subject").expect("subject"));
    assert!(
        message.content_type().starts_with("multipart/alternative"),
        "report must be multipart/alternative"
    );
    let parts = message.parts();
    assert_eq!(parts.len(), 2, "a text part and an HTML (or related) part");
    assert!(
        parts[0].content_type().starts_with("text/plain"),
        "text part first"
    );
    let text = parts[0].decoded();
    let second = &parts[1];
    if second.content_type().starts_with("text/html") {
        return Opened {
            subject,
            text,
            html: second.decoded(),
            chart: None,
        };
    }
    assert!(
        second.content_type().starts_with("multipart/related"),
        "the HTML part, or multipart/related, second: {}",
        second.content_type()
    );
    let related = second.parts();
    assert_eq!(related.len(), 2, "the HTML and the chart");
    assert!(
        related[0].content_type().starts_with("text/html"),
        "HTML first in multipart/related (its root)"
    );
    let image = &related[1];
    assert!(image.content_type().starts_with("image/png"), "a PNG chart");
    let cid = image
        .header("content-id")
        .expect("the chart has a Content-ID")
        .trim()
        .strip_prefix('<')
        .and_then(|c| c.strip_suffix('>'))
        .expect("Content-ID in angle brackets")
        .to_owned();
    Opened {
        subject,
        text,
        html: related[0].decoded(),
        chart: Some(Chart {
            cid,
            disposition: image.header("content-disposition").unwrap_or("").to_owned(),
            png: image.decoded_bytes(),
        }),
    }
}

/// Subject, text part and HTML part of a received or outboxed message.
pub(crate) fn open(raw: &str) -> (String, String, String) {
    let o = open_report(raw);
    (o.subject, o.text, o.html)
}

/// Width and height from a PNG's IHDR chunk, after checking the signature and that
/// IHDR comes first.
fn png_size(png: &[u8]) -> (u32, u32) {
    assert!(png.len() > 33, "too short for a PNG: {} bytes", png.len());
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    assert_eq!(&png[8..12], &13u32.to_be_bytes(), "IHDR length");
    assert_eq!(&png[12..16], b"IHDR", "IHDR first");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&png[16..20]), be(&png[20..24]))
}

/// The PNG decoded to RGB rows, with its width (checked to be RGB, 8 bits).
fn png_pixels(png: &[u8]) -> (u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::Cursor::new(png));
    let mut reader = decoder.read_info().expect("a PNG the png crate reads");
    let mut buf = vec![0; reader.output_buffer_size().expect("buffer size")];
    let info = reader.next_frame(&mut buf).expect("a frame");
    assert_eq!(info.color_type, png::ColorType::Rgb);
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    buf.truncate(info.buffer_size());
    (info.width, buf)
}

/// The message as bytes lettre would send, taken apart.
fn built(cfg: &ReportConfig, s: &RunSummary, ctx: &ReportContext) -> Opened {
    let message = build_message(cfg, s, ctx).expect("build");
    open_report(&String::from_utf8(message.formatted()).expect("utf-8"))
}

fn at(day: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, day, 6, 30, 0)
        .single()
        .expect("time")
}

fn point(run_id: i64, day: u32, affected: u64, status: &str) -> HistoryPoint {
    HistoryPoint {
        run_id,
        started_at: at(day),
        affected,
        status: status.to_owned(),
    }
}

const LEDGER_HASH: &str = "3f5a0c1e9b7d2468ace013579bdf2468ace013579bdf2468ace013579bdf0a1b";
const POLICY_SHA: &str = "9e107d9d372bb6826bd81d3542a419d6e277d4d731479571562f82a2a0a2b6c4";

/// Runs 10, 11 and 12 (the current one), with both hashes.
fn context_for_12() -> ReportContext {
    ReportContext {
        history: vec![
            point(10, 1, 1_180, "ok"),
            point(11, 2, 0, "failed"),
            point(12, 3, 1_234, "ok"),
        ],
        ledger_hash: Some(LEDGER_HASH.to_owned()),
        policy_sha256: Some(POLICY_SHA.to_owned()),
    }
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

    let delivery = deliver(&cfg, &typical(12), &ReportContext::default())
        .await
        .expect("deliver");
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
    assert!(
        html.contains(
            "<td style=\"padding:2px 0;vertical-align:top;overflow-wrap:anywhere\">17</td>"
        )
    );
    assert!(eml_files(&outbox).is_empty(), "nothing left in the outbox");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_smtp_the_report_goes_to_the_outbox() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let outbox = tmp.path().join("nested").join("outbox");
    let cfg = config(&outbox, None, Duration::from_secs(5));

    let Delivery::Outboxed(path) = deliver(&cfg, &typical(7), &ReportContext::default())
        .await
        .expect("deliver")
    else {
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
    let Delivery::Outboxed(second) = deliver(&cfg, &typical(8), &ReportContext::default())
        .await
        .expect("deliver")
    else {
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
    let first = deliver(&cfg, &typical(1), &ReportContext::default())
        .await
        .expect("deliver");
    assert!(started.elapsed() < timeout + Duration::from_secs(1));
    let Delivery::Outboxed(first_path) = first else {
        panic!("expected the outbox, got {first:?}");
    };
    assert!(first_path.exists());
    // The next report while still down queues behind the first.
    let second = deliver(&cfg, &typical(2), &ReportContext::default())
        .await
        .expect("deliver");
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
    let third = deliver(&cfg, &typical(3), &ReportContext::default())
        .await
        .expect("deliver");
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
    let delivery = deliver(&cfg, &typical(3), &ReportContext::default())
        .await
        .expect("deliver");
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
    s.notices = vec!["Check <i>this</i> & that".to_owned()];
    // Ledger texts are escaped too, should one ever hold markup.
    let ctx = ReportContext {
        history: vec![point(3, 2, 0, "<u>odd</u>"), point(4, 3, 3, "failed")],
        ledger_hash: Some("<em>hash</em>".to_owned()),
        policy_sha256: None,
    };

    let html = render_html(&cfg, &s, &ctx);
    assert!(!html.contains("<script"), "{html}");
    assert!(!html.contains("<b>") && !html.contains("<i>") && !html.contains("<u>"));
    assert!(!html.contains("<em>"));
    assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
    assert!(html.contains("Smith &amp; Jones &quot;Free&quot; Library"));
    assert!(html.contains("table &lt;b&gt;old_issues&lt;/b&gt; &amp; more"));
    assert!(html.contains("Check &lt;i&gt;this&lt;/i&gt; &amp; that"));
    assert!(html.contains("&lt;u&gt;odd&lt;/u&gt;"));
    assert!(html.contains("&lt;em&gt;hash&lt;/em&gt;"));
    assert_well_formed(&html);
    // Plain text is not HTML: it shows the name as it is.
    assert!(render_text(&cfg, &s, &ctx).contains("Class: <script>alert('x')</script>"));

    // The subject of a failed run says so first; the message builds with such names.
    let o = built(&cfg, &s, &ctx);
    assert!(
        o.subject.starts_with("[Lethe] FAILED: Smith & Jones"),
        "{}",
        o.subject
    );
    assert!(!o.html.contains("<script"));
    assert!(o.chart.is_some());
}

/// The words the report itself uses: anything else in a rendering must come from the
/// summary's names, numbers and times, or it is a field that should not be there.
const FIXED_WORDS: &str = "
    lethe data retention report run library mode enforce rows past their period were changed
    status completed every class finished started utc duration min s in total table action
    anonymized deleted cutoff eligible kept patron chose to keep history legal hold still
    checked out or owed staff guarantor protected account that no exemption keeps each
    counted once under its first reason this holds counts only and names an
    all kinds of record records enforced notice per oldest first for the auditor ledger hash
    policy sha 256 covers it before chain verify recomputes whole blue red failed orange
    tripped grey interrupted other a bar with black mark are heights scale tallest being
    largest count not available see show
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
    let mut s = typical(12);
    let notice = "Missed runs: the last completed enforcement run is 790 hours old.";
    s.notices = vec![notice.to_owned()];
    let ctx = context_for_12();
    let fixed = words(FIXED_WORDS);
    let from_summary: BTreeSet<String> = [
        "circulation_history",
        "old_issues",
        "expired_patrons",
        "borrowers",
        LEDGER_HASH,
        POLICY_SHA,
    ]
    .iter()
    .map(|w| w.to_string())
    .chain(words(&cfg.library))
    .chain(words(notice))
    // The ledger's statuses and the history's month.
    .chain(["ok", "failed", "nov"].map(str::to_owned))
    .collect();
    let allowed_numbers: BTreeSet<String> = [
        "12", "1", "200", "1,200", "34", "17", "2", "5", "3", "4", "234", "2026", "11", "03", "06",
        "30", "00", "2025", "05", "04", "03t06", "03t00", "00z", "10", "180", "0", "01", "02",
    ]
    .iter()
    .map(|w| w.to_string())
    .collect();

    for (kind, body) in [
        ("text", render_text(&cfg, &s, &ctx)),
        ("html", html_text(&render_html(&cfg, &s, &ctx))),
        (
            "bare text",
            render_text(&cfg, &s, &ReportContext::default()),
        ),
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
    let none = ReportContext::default();

    let mut dry = typical(5);
    dry.mode = Mode::DryRun;
    for c in &mut dry.classes {
        c.affected = 0;
    }
    let text = render_text(&cfg, &dry, &none);
    assert!(
        text.contains("This was a dry run: nothing was changed."),
        "{text}"
    );
    assert!(text.contains("would be anonymized"));
    let message = build_message(&cfg, &dry, &none).expect("build");
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
    let text = render_text(&cfg, &tripped, &none);
    assert!(text.contains("The circuit breaker tripped"), "{text}");
    assert!(text.contains("lethe plan") && text.contains("lethe run --once --allow-large"));
    assert!(text.contains("would change 62% of old_issues, limit 10%"));
    let html = render_html(&cfg, &tripped, &none);
    assert!(html.contains("lethe run --once --allow-large"));
    let message = build_message(&cfg, &tripped, &none).expect("build");
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
        deliver(&cfg, &changed, &ReportContext::default())
            .await
            .expect("deliver"),
        Delivery::NotNeeded
    );
    assert!(!outbox.exists(), "nothing written when not needed");
}

// ---------------------------------------------------------------------------------
// The verdict, notices, chart and footer
// ---------------------------------------------------------------------------------

/// The HTML element the report's body starts with, and its text.
fn first_body_paragraph(html: &str) -> String {
    let body = &html[html.find("<body").expect("<body")..];
    let body = &body[body.find('>').expect("body tag end") + 1..];
    let body = body.trim_start();
    assert!(
        body.starts_with("<p "),
        "the body starts with the verdict:\n{body}"
    );
    let end = body.find("</p>").expect("</p>");
    html_text(&body[..end]).trim().to_owned()
}

/// The verdict of a summary, checked to be the first line of the text and the first
/// paragraph of the HTML.
fn verdict_of(s: &RunSummary) -> String {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config(tmp.path(), None, Duration::from_secs(1));
    let ctx = ReportContext::default();
    let text = render_text(&cfg, s, &ctx);
    let first = text.lines().next().expect("a first line").to_owned();
    let html = render_html(&cfg, s, &ctx);
    assert_eq!(first_body_paragraph(&html), first, "text and HTML agree");
    assert_well_formed(&html);
    first
}

fn three_kinds(run_id: i64) -> RunSummary {
    summary(
        run_id,
        vec![
            class(
                "circulation_history",
                "old_issues",
                Action::Anonymize,
                80_000,
            ),
            class("holds_history", "old_reserves", Action::Anonymize, 6_637),
            class("expired_patrons", "borrowers", Action::Delete, 2_113),
        ],
    )
}

#[test]
fn verdicts_say_what_happened_at_a_glance() {
    assert_eq!(
        verdict_of(&three_kinds(20)),
        "All 3 kinds of record were enforced; 86,637 records anonymized, 2,113 patron records deleted."
    );
    assert_eq!(
        verdict_of(&typical(12)),
        "All 2 kinds of record were enforced; 1,200 records anonymized, 34 patron records deleted."
    );
    let mut one = summary(
        3,
        vec![class("expired_patrons", "borrowers", Action::Delete, 1)],
    );
    assert_eq!(
        verdict_of(&one),
        "The 1 kind of record was enforced; 1 patron record deleted."
    );
    one.classes[0].affected = 0;
    assert_eq!(
        verdict_of(&one),
        "The 1 kind of record was enforced; no record was due, so nothing was changed."
    );

    // A dry run: nothing changed, and what an enforcing run would change.
    let mut dry = three_kinds(21);
    dry.mode = Mode::DryRun;
    for c in &mut dry.classes {
        c.affected = 0;
    }
    assert_eq!(
        verdict_of(&dry),
        "Dry run: nothing was changed; 86,637 records would have been anonymized, \
         2,113 patron records would have been deleted. All 3 kinds of record were checked."
    );

    // A failed run names the class and why; what its other classes changed stands.
    let mut failed = typical(22);
    failed.status = RunStatus::Failed;
    failed.classes[1].status = ClassStatus::Failed;
    failed.classes[1].affected = 0;
    failed.classes[1].error =
        Some("database error on borrowers:\n  lock wait timeout exceeded.".to_owned());
    assert_eq!(
        verdict_of(&failed),
        "The run FAILED: class expired_patrons failed: database error on borrowers: \
         lock wait timeout exceeded. Changes that stand: 1,200 records anonymized."
    );
    // Failed before any class: the run's own error.
    let mut early = summary(23, Vec::new());
    early.run_id = None;
    early.status = RunStatus::Failed;
    early.error =
        Some("cannot connect to the database sqlite://library.db: no such file".to_owned());
    assert_eq!(
        verdict_of(&early),
        "The run FAILED: cannot connect to the database sqlite://library.db: no such file."
    );
    // A very long error is cut in the verdict (the class table has all of it).
    let mut long = failed.clone();
    long.classes[1].error = Some("x".repeat(5_000));
    let v = verdict_of(&long);
    assert!(v.len() < 500 && v.contains("x…"), "{v}");

    // A tripped run names the tripped classes.
    let mut tripped = three_kinds(24);
    tripped.status = RunStatus::Tripped;
    for i in [0, 1] {
        tripped.classes[i].status = ClassStatus::Tripped;
        tripped.classes[i].affected = 0;
    }
    tripped.classes[0].error = Some("would change 62% of old_issues, limit 10%".to_owned());
    assert_eq!(
        verdict_of(&tripped),
        "The run was STOPPED by the safety limit: classes circulation_history \
         (would change 62% of old_issues, limit 10%) and holds_history tripped, so nothing \
         in them was changed. Changes that stand: 2,113 patron records deleted."
    );

    // An interrupted run says so, and what it did not reach.
    let mut interrupted = typical(25);
    interrupted.status = RunStatus::Interrupted;
    interrupted.classes[1].status = ClassStatus::Skipped;
    interrupted.classes[1].affected = 0;
    assert_eq!(
        verdict_of(&interrupted),
        "The run was INTERRUPTED: Lethe was stopped during the run. \
         Changes that stand: 1,200 records anonymized. Not reached: class expired_patrons."
    );

    let mut skipped = typical(26);
    skipped.status = RunStatus::Skipped;
    for c in &mut skipped.classes {
        c.affected = 0;
    }
    assert!(verdict_of(&skipped).starts_with("Nothing was done"));
}

#[test]
fn notices_stand_right_under_the_verdict() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config(tmp.path(), None, Duration::from_secs(1));
    let mut s = typical(12);
    let notice = "Missed runs: the last completed enforcement run (run 9, started \
                  2026-10-01T02:30:00+00:00) is 790 hours old, more than the 48 hours allowed \
                  (report.overdue_after). Check that the Lethe service is running.";
    s.notices = vec![notice.to_owned()];
    let ctx = context_for_12();

    let text = render_text(&cfg, &s, &ctx);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("All 2 kinds of record were enforced"),
        "{text}"
    );
    assert_eq!(lines[1], "");
    assert!(lines[2].starts_with("NOTICE: Missed runs:"), "{text}");
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(flat.contains(&format!("NOTICE: {notice}")), "{text}");
    let notice_end = text.find("running.").expect("the whole notice");
    assert!(notice_end < text.find("Lethe data-retention report").expect("title"));

    let html = render_html(&cfg, &s, &ctx);
    let verdict_at = html.find("All 2 kinds of record").expect("verdict");
    let notice_at = html.find("Notice: Missed runs:").expect("notice");
    let title_at = html.find("<h1").expect("title");
    assert!(verdict_at < notice_at && notice_at < title_at);
    assert!(html_text(&html).contains(notice));
    assert_well_formed(&html);
}

#[test]
fn the_footer_gives_the_auditor_the_hashes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config(tmp.path(), None, Duration::from_secs(1));
    let s = typical(12);
    let ctx = context_for_12();
    let text = render_text(&cfg, &s, &ctx);
    let footer = &text[text.find("For the auditor").expect("footer")..];
    assert!(
        footer.contains(&format!("Ledger hash of this run: {LEDGER_HASH}")),
        "{footer}"
    );
    assert!(
        footer.contains(&format!("Policy SHA-256:          {POLICY_SHA}")),
        "{footer}"
    );
    assert!(footer.contains("lethe ledger verify"));
    let html = render_html(&cfg, &s, &ctx);
    let footer = &html[html.find("For the auditor").expect("footer")..];
    assert!(footer.contains(LEDGER_HASH) && footer.contains(POLICY_SHA));

    // Without the hashes the footer says where to look.
    let bare = render_text(&cfg, &s, &ReportContext::default());
    assert!(
        bare.contains(
            "Ledger hash of this run: not available in this report; see `lethe ledger show 12`"
        ),
        "{bare}"
    );
}

/// Checks that an HTML document is well formed, stricter than browsers: the doctype
/// first; every element closed in order (void elements `meta`, `img`, `br` excepted);
/// `html` > `head` + `body`; `title`/`meta` in `head`; `tr` in `table`, `td`/`th` in
/// `tr`; no block inside `p`; attributes lower-case, double-quoted, not repeated; no raw
/// `>` in text and no `&` that does not start one of the entities the report writes.
fn assert_well_formed(html: &str) {
    const VOID: [&str; 3] = ["meta", "img", "br"];
    const BLOCK: [&str; 6] = ["p", "table", "h1", "h2", "div", "img"];
    const ENTITIES: [&str; 5] = ["&amp;", "&lt;", "&gt;", "&quot;", "&#39;"];
    let entity_ok = |s: &str| ENTITIES.iter().any(|e| s.starts_with(e));
    let rest = html
        .strip_prefix("<!DOCTYPE html>")
        .expect("starts with <!DOCTYPE html>");
    let bytes = rest.as_bytes();
    let mut stack: Vec<&str> = Vec::new();
    let mut roots = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'<' => {
                let end = i + rest[i..].find('>').expect("unclosed tag");
                let tag = &rest[i + 1..end];
                assert!(!tag.contains('<'), "'<' inside the tag {tag:?}");
                if let Some(name) = tag.strip_prefix('/') {
                    let open = stack
                        .pop()
                        .unwrap_or_else(|| panic!("</{name}> closes nothing"));
                    assert_eq!(open, name, "</{name}> closes <{open}>");
                } else {
                    let (name, attrs) = tag.split_once(' ').unwrap_or((tag, ""));
                    assert!(
                        !name.is_empty()
                            && name
                                .bytes()
                                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
                        "bad element name in <{tag}>"
                    );
                    let parent = stack.last().copied();
                    match name {
                        "html" => {
                            assert!(stack.is_empty(), "<html> nested");
                            roots += 1;
                        }
                        "head" | "body" => assert_eq!(parent, Some("html"), "<{name}>"),
                        "title" | "meta" => assert_eq!(parent, Some("head"), "<{name}>"),
                        "tr" => assert_eq!(parent, Some("table"), "<tr> outside a table"),
                        "td" | "th" => assert_eq!(parent, Some("tr"), "<{name}> outside a row"),
                        _ => assert!(stack.contains(&"body"), "<{name}> outside the body"),
                    }
                    if BLOCK.contains(&name) {
                        assert!(!stack.contains(&"p"), "<{name}> inside <p>");
                    }
                    // Attributes: name="value", separated by blanks.
                    let mut seen = BTreeSet::new();
                    let mut a = attrs.trim();
                    while !a.is_empty() {
                        let (attr, after) =
                            a.split_once("=\"").expect("attribute with a quoted value");
                        assert!(
                            !attr.is_empty()
                                && attr.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'),
                            "bad attribute name {attr:?} in <{tag}>"
                        );
                        assert!(seen.insert(attr), "attribute {attr} repeated in <{tag}>");
                        let (value, after) = after.split_once('"').expect("closing quote");
                        for (k, _) in value.match_indices('&') {
                            assert!(entity_ok(&value[k..]), "bare & in attribute {attr}");
                        }
                        assert!(
                            after.is_empty() || after.starts_with(' '),
                            "no blank after attribute {attr} in <{tag}>"
                        );
                        a = after.trim_start();
                    }
                    if !VOID.contains(&name) {
                        stack.push(name);
                    }
                }
                i = end + 1;
                continue;
            }
            b'>' => panic!("raw '>' in text: {:?}", &rest[i.saturating_sub(40)..i + 1]),
            b'&' => assert!(
                entity_ok(&rest[i..]),
                "bare & in text: {:?}",
                &rest[i..(i + 20).min(rest.len())]
            ),
            b if !b.is_ascii_whitespace() => {
                let parent = stack.last().copied();
                assert!(
                    !matches!(parent, None | Some("html" | "head" | "table" | "tr")),
                    "text directly in {parent:?}"
                );
            }
            _ => {}
        }
        i += 1;
    }
    assert!(stack.is_empty(), "never closed: {stack:?}");
    assert_eq!(roots, 1, "one <html> element");
}

#[test]
fn the_well_formedness_check_catches_broken_html() {
    let page = |body: &str| {
        format!(
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <title>t</title></head><body>{body}</body></html>"
        )
    };
    assert_well_formed(&page("<p style=\"a:b\">Smith &amp; Jones<br>x</p>"));
    for broken in [
        "<p>a<span>b</p></span>",
        "<p>Smith & Jones</p>",
        "<p>a > b</p>",
        "<p><p>x</p></p>",
        "<td>x</td>",
        "<table><tr><td>x</td></table>",
        "<img src=cid:x>",
        "<p class=\"a\" class=\"b\">x</p>",
        "<p>never closed",
    ] {
        let doc = page(broken);
        let caught = std::panic::catch_unwind(|| assert_well_formed(&doc));
        assert!(caught.is_err(), "not caught: {broken}");
    }
}

#[test]
fn html_is_well_formed_and_holds_the_counts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config(tmp.path(), None, Duration::from_secs(1));
    let mut failed = typical(12);
    failed.status = RunStatus::Failed;
    failed.classes[1].status = ClassStatus::Failed;
    failed.classes[1].error = Some("line one\nline <two> & three".to_owned());
    failed.error = Some("run error".to_owned());
    failed.notices = vec!["a notice".to_owned(), "another".to_owned()];
    let mut dry = typical(12);
    dry.mode = Mode::DryRun;
    let mut tripped = typical(12);
    tripped.status = RunStatus::Tripped;
    tripped.classes[0].status = ClassStatus::Tripped;
    let empty = summary(12, Vec::new());
    for s in [&typical(12), &failed, &dry, &tripped, &empty] {
        for ctx in [&ReportContext::default(), &context_for_12()] {
            let html = render_html(&cfg, s, ctx);
            assert_well_formed(&html);
            // The message's HTML is the same document.
            assert_well_formed(&built(&cfg, s, ctx).html);
        }
    }
    let html = render_html(&cfg, &typical(12), &context_for_12());
    let shown = html_text(&html);
    for count in ["1,200", "34", "1,234 rows", "17", "1,180"] {
        assert!(shown.contains(count), "{count} missing:\n{shown}");
    }
    assert!(shown.contains("1,200 records anonymized, 34 patron records deleted"));
    // Every bar of the chart has its run, day and count under it.
    for label in ["run 10", "run 11", "run 12", "Nov 1", "Nov 2", "Nov 3"] {
        assert!(shown.contains(label), "{label} missing");
    }
}

/// What colour family a chart pixel is.
fn colour(px: &[u8]) -> &'static str {
    let (r, g, b) = (i32::from(px[0]), i32::from(px[1]), i32::from(px[2]));
    if r > 240 && g > 240 && b > 240 {
        "white"
    } else if r < 70 && g < 70 && b < 70 {
        "black"
    } else if (r - g).abs() < 20 && (g - b).abs() < 20 {
        "grey"
    } else if b > r + 40 {
        "blue"
    } else if r > 180 && g < 60 && b < 60 {
        "red"
    } else if r > 200 && (80..180).contains(&g) && b < 60 {
        "orange"
    } else {
        "other"
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_report_arrives_with_an_inline_png_chart_of_the_last_12_runs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = SmtpServer::start(free_port(), tmp.path().join("maildir"));
    let outbox = tmp.path().join("outbox");
    let cfg = config(&outbox, Some(server.url()), Duration::from_secs(10));
    // Runs 1 to 14, the current one last; only runs 3 to 14 are shown.
    let status = |id: i64| match id {
        7 => "interrupted",
        9 => "tripped",
        13 => "failed",
        _ => "ok",
    };
    let history: Vec<HistoryPoint> = (1..=14)
        .map(|id| {
            let affected = match id {
                14 => 1_234,
                9 | 13 => 0,
                _ => 100 * id as u64,
            };
            point(id, id as u32, affected, status(id))
        })
        .collect();
    let ctx = ReportContext {
        history,
        ledger_hash: Some(LEDGER_HASH.to_owned()),
        policy_sha256: Some(POLICY_SHA.to_owned()),
    };

    let delivery = deliver(&cfg, &typical(14), &ctx).await.expect("deliver");
    assert_eq!(delivery, Delivery::Sent);
    let messages = server.messages();
    assert_eq!(messages.len(), 1);
    let o = open_report(&messages[0]);
    assert_eq!(
        o.subject,
        "[Lethe] Example Library: run 14 ok — 1,234 rows changed"
    );
    let chart = o.chart.expect("the chart in multipart/related");
    assert!(
        chart.disposition.starts_with("inline"),
        "{}",
        chart.disposition
    );
    assert!(chart.cid.ends_with("@library.example"), "{}", chart.cid);
    assert_eq!(o.html.matches("<img ").count(), 1);
    assert!(
        o.html.contains(&format!("<img src=\"cid:{}\"", chart.cid)),
        "the HTML names the chart by its Content-ID"
    );
    assert_well_formed(&o.html);

    // A valid PNG, one 50-pixel slot per run.
    assert_eq!(png_size(&chart.png), (600, 120));
    let (width, pixels) = png_pixels(&chart.png);
    assert_eq!(width, 600);
    let px = |x: u32, y: u32| {
        let i = ((y * width + x) * 3) as usize;
        colour(&pixels[i..i + 3])
    };
    let shown: Vec<i64> = (3..=14).collect();
    for (slot, id) in shown.iter().enumerate() {
        let x = slot as u32 * 50 + 25;
        let expected = match status(*id) {
            "ok" => "blue",
            "failed" => "red",
            "tripped" => "orange",
            _ => "grey",
        };
        // Every bar stands on the baseline, a run that changed nothing as a stub.
        assert_eq!(px(x, 104), expected, "run {id}");
        // Between bars: background.
        assert_eq!(px(slot as u32 * 50 + 3, 100), "white");
        // Only the current run is marked under the baseline.
        let marked = (107..120).any(|y| px(x, y) == "black");
        assert_eq!(marked, *id == 14, "mark under run {id}");
    }
    // The largest count reaches the top; the bars are to scale.
    assert_eq!(px(11 * 50 + 25, 7), "blue", "the tallest bar");
    // Run 3 (300) is about a quarter of it (1,234): 25 of the 100 pixels.
    assert_eq!(px(25, 90), "blue", "run 3");
    assert_eq!(px(25, 75), "white", "run 3");
    assert_eq!(px(10 * 50 + 25, 100), "white", "run 13 changed nothing");

    // The text part lists the same numbers, a line per run, oldest first.
    let history_lines: Vec<&str> = o
        .text
        .lines()
        .filter(|l| l.trim_start().starts_with("run "))
        .collect();
    assert_eq!(history_lines.len(), 12, "{}", o.text);
    for (line, id) in history_lines.iter().zip(&shown) {
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words[1], id.to_string(), "{line}");
        assert!(
            line.contains(&format!("2026-11-{id:02} 06:30 UTC")) && line.contains(status(*id)),
            "{line}"
        );
    }
    assert!(history_lines[11].contains("1,234 rows") && history_lines[11].ends_with("(this run)"));
    assert!(history_lines[10].contains(" 0 rows") && history_lines[10].contains("failed"));
    assert!(history_lines[0].contains(" 300 rows"));
    assert!(
        o.text
            .contains("Records changed per run, last 12 runs (oldest first)")
    );
    // The HTML labels the bars alike.
    let shown_html = html_text(&o.html);
    assert!(shown_html.contains("run 3") && shown_html.contains("Nov 14"));
    assert!(
        !shown_html.contains("run 2 "),
        "run 2 is not among the last 12"
    );
    assert!(o.text.contains(LEDGER_HASH) && o.html.contains(POLICY_SHA));
}

#[test]
fn without_history_the_report_has_no_chart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config(tmp.path(), None, Duration::from_secs(1));
    let o = built(&cfg, &typical(12), &ReportContext::default());
    assert!(o.chart.is_none(), "plain multipart/alternative");
    assert!(!o.html.contains("<img"));
    assert!(!o.text.contains("Records changed per run"));
    assert!(o.text.starts_with("All 2 kinds of record were enforced"));

    // One run of history: one bar.
    let ctx = ReportContext {
        history: vec![point(12, 3, 1_234, "ok")],
        ..ReportContext::default()
    };
    let o = built(&cfg, &typical(12), &ctx);
    let chart = o.chart.expect("chart");
    assert_eq!(png_size(&chart.png), (50, 120));
    assert!(
        o.text
            .contains("Records changed per run, last 1 run (oldest first)")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_job_reports_the_history_and_hashes_from_the_ledger() {
    use crate::common::{TestDb, koha_reference, old_issue, patron};
    let db = TestDb::sqlite().await;
    koha_reference(&db, None).await;
    patron(&db, 10, 1, "2099-01-01", "PT").await;
    old_issue(&db, 101, Some(10), Some("2020-01-01 10:00:00")).await;
    old_issue(&db, 102, Some(10), Some("2020-02-01 10:00:00")).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let outbox = tmp.path().join("outbox");
    let mut cfg = db.config("");
    cfg.report.outbox = outbox.clone();
    cfg.report.smtp = None;
    cfg.report.send = SendWhen::Always;

    for _ in 0..3 {
        let outcome = lethe::job::run_once(&cfg, false, tokio_util::sync::CancellationToken::new())
            .await
            .expect("run");
        assert!(matches!(outcome.delivery, Some(Delivery::Outboxed(_))));
    }
    let files = eml_files(&outbox);
    assert_eq!(files.len(), 3);
    let read = |p: &PathBuf| open_report(&std::fs::read_to_string(p).expect("read eml"));

    // The first report: its own run only.
    let first = read(&files[0]);
    assert_eq!(png_size(&first.chart.expect("chart").png), (50, 120));
    // The third: runs 1 to 3, the first having changed the two old checkouts.
    let third = read(&files[2]);
    assert_eq!(png_size(&third.chart.expect("chart").png), (150, 120));
    let lines: Vec<&str> = third
        .text
        .lines()
        .filter(|l| l.trim_start().starts_with("run "))
        .collect();
    assert_eq!(lines.len(), 3, "{}", third.text);
    assert!(
        lines[0].contains("run 1") && lines[0].contains(" ok ") && lines[0].contains(" 2 rows")
    );
    assert!(lines[2].contains("run 3") && lines[2].ends_with("(this run)"));

    let ledger_db = lethe::db::Db::connect(&cfg).await.expect("connect");
    let entry = lethe::ledger::entry(&ledger_db, 3)
        .await
        .expect("ledger")
        .expect("run 3");
    ledger_db.close().await;
    let hash = entry.hash.expect("sealed");
    for part in [&third.text, &third.html] {
        assert!(part.contains(&hash), "the ledger hash of run 3");
        assert!(part.contains(&entry.policy_sha256), "the policy hash");
    }
    assert!(
        third
            .text
            .starts_with("All 3 kinds of record were enforced; no record was due")
    );
}
