//! The pages people read, rendered in a real browser: the report email's HTML part
//! with its inline chart, taken from the `.eml` files of real `lethe demo` runs, and
//! the public schedule (`lethe policy --format html`), in headless Chromium (Debian's
//! `chromium`) at a phone size (390×844) and a desktop size (1280×900).
//!
//! What is checked comes from the DOM as Chromium laid it out: a probe page holds the
//! page in an iframe of each size (the iframe is the page's viewport; a headless
//! window cannot be narrower than 500 px, an iframe can) and writes what it measured
//! into its own DOM, which `--dump-dom` prints. Per size: the viewport meta tag, no
//! horizontal overflow (`scrollWidth <= clientWidth`), the verdict as the first
//! paragraph, each class's counts and the ledger hash equal to `lethe ledger show`,
//! the chart loaded (`naturalWidth` and `naturalHeight` equal to the PNG's own size,
//! decoded here), the policy hash on the public page equal to the ledger's; and no
//! console message at all (the pages have no scripts; Chromium's
//! `--enable-logging=stderr` prints each console message as a `CONSOLE` line).
//! Screenshots, at each size and the whole page at the phone's width, go to
//! `target/screenshots/` (beside the binary's profile folder), kept by CI.
//!
//! Without Chromium the test fails when `LETHE_REQUIRE_BROWSER=1` (as `.ci/run` sets)
//! and is skipped, with a message on stderr, otherwise. `LETHE_CHROMIUM` names another
//! Chromium binary.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use lethe::demo::{self, DemoOptions};
use serde_json::Value;

use crate::report::open_report;

const LETHE: &str = env!("CARGO_BIN_EXE_lethe");
const PHONE: (u32, u32) = (390, 844);
const DESKTOP: (u32, u32) = (1280, 900);
/// Longest a Chromium run may take before the test kills it and fails.
const CHROMIUM_LIMIT: Duration = Duration::from_secs(120);

/// The Chromium binary, or `None` (after saying so) when it is missing and not required.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("LETHE_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if path.is_file() {
        return Some(path);
    }
    let msg = format!(
        "no Chromium at {} (Debian: apt-get install chromium; or set LETHE_CHROMIUM)",
        path.display()
    );
    if std::env::var("LETHE_REQUIRE_BROWSER").as_deref() == Ok("1") {
        panic!("{msg}; LETHE_REQUIRE_BROWSER=1 makes a missing browser a failure");
    }
    eprintln!("SKIPPED: the pages were not checked in a browser: {msg}");
    None
}

/// `<target>/screenshots`, created: the binary is `<target>/<profile>/lethe`.
fn screenshots_dir() -> PathBuf {
    let dir = Path::new(LETHE)
        .parent()
        .and_then(Path::parent)
        .expect("the binary lies in <target>/<profile>/")
        .join("screenshots");
    std::fs::create_dir_all(&dir).expect("create target/screenshots");
    dir
}

struct Browser {
    exe: PathBuf,
    scratch: tempfile::TempDir,
    runs: usize,
    /// Console lines seen in any run so far, with the run's arguments.
    console: Vec<String>,
}

impl Browser {
    fn new(exe: PathBuf) -> Browser {
        Browser {
            exe,
            scratch: tempfile::tempdir().expect("tempdir"),
            runs: 0,
            console: Vec::new(),
        }
    }

    /// Runs Chromium headless once on `url` with a new, empty profile; returns its
    /// stdout. Fails when it exits non-zero or takes longer than [`CHROMIUM_LIMIT`].
    fn run(&mut self, args: &[String], url: &str) -> String {
        self.runs += 1;
        let n = self.runs;
        let profile = self.scratch.path().join(format!("profile-{n}"));
        std::fs::create_dir(&profile).expect("profile dir");
        let out_path = self.scratch.path().join(format!("stdout-{n}.txt"));
        let err_path = self.scratch.path().join(format!("stderr-{n}.txt"));
        let mut child = Command::new(&self.exe)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--enable-logging=stderr",
                "--v=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(args)
            .arg(url)
            .stdin(Stdio::null())
            .stdout(File::create(&out_path).expect("stdout file"))
            .stderr(File::create(&err_path).expect("stderr file"))
            .spawn()
            .expect("start chromium");
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for chromium") {
                break status;
            }
            if started.elapsed() > CHROMIUM_LIMIT {
                let _ = child.kill();
                let _ = child.wait();
                panic!("chromium {args:?} {url} did not finish within {CHROMIUM_LIMIT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let stdout = std::fs::read_to_string(&out_path).expect("read stdout");
        let stderr = std::fs::read_to_string(&err_path).expect("read stderr");
        assert!(
            status.success(),
            "chromium {args:?} {url} exited with {status}:\n{stderr}"
        );
        for line in stderr.lines() {
            if line.contains(":CONSOLE") || line.contains("Uncaught") {
                self.console.push(format!("{url} {args:?}: {line}"));
            }
        }
        stdout
    }

    /// A screenshot of `url` at `size`, saved as `path`; checks the PNG has that size.
    fn screenshot(&mut self, url: &str, (w, h): (u32, u32), path: &Path) {
        let _ = std::fs::remove_file(path);
        self.run(
            &[
                format!("--screenshot={}", path.display()),
                format!("--window-size={w},{h}"),
            ],
            url,
        );
        let png = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(png_size(&png), (w, h), "{}", path.display());
    }

    /// What the page `file` (in `dir`) looks like at the phone and at the desktop size,
    /// measured in the browser: `{"phone": {...}, "desktop": {...}}`, each as [`PROBE`]
    /// describes.
    fn probe(&mut self, dir: &Path, file: &str) -> Value {
        let harness = format!("probe-{file}");
        let page = PROBE_PAGE
            .replace("@PAGE@", file)
            .replace("@PW@", &PHONE.0.to_string())
            .replace("@PH@", &PHONE.1.to_string())
            .replace("@DW@", &DESKTOP.0.to_string())
            .replace("@DH@", &DESKTOP.1.to_string());
        std::fs::write(dir.join(&harness), page).expect("write probe page");
        let window = format!(
            "--window-size={},{}",
            DESKTOP.0 + 100,
            PHONE.1 + DESKTOP.1 + 100
        );
        let dom = self.run(
            &[
                // The probe reads the framed page's DOM: both are file:// URLs.
                "--allow-file-access-from-files".to_owned(),
                window,
                "--dump-dom".to_owned(),
            ],
            &file_url(&dir.join(&harness)),
        );
        let start = dom
            .find("<pre id=\"lethe-probe\">")
            .unwrap_or_else(|| panic!("the probe wrote nothing; the DOM was:\n{dom}"))
            + "<pre id=\"lethe-probe\">".len();
        let end = start + dom[start..].find("</pre>").expect("</pre>");
        let json = dom[start..end]
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&nbsp;", "\u{a0}")
            .replace("&amp;", "&");
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("probe output ({e}): {json}"))
    }
}

/// The probe: the page in an iframe of the phone's size and one of the desktop's; on
/// load, per frame: `width` (innerWidth), `client_width` and `scroll_width` of the
/// root element, `scroll_height`, `viewport` (the viewport meta tag's content),
/// `first_paragraph`, `images` (`src`, `complete`, `natural_width`,
/// `natural_height`, `width`, `height` as laid out), `sections` (each `h1`/`h2` with
/// the `th`/`td` and `dt`/`dd` pairs up to the next heading), `footer` and `text`
/// (innerText of the body).
const PROBE_PAGE: &str = r#"<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>probe</title></head>
<body style="margin:0">
<iframe id="phone" src="@PAGE@" style="width:@PW@px;height:@PH@px;border:0;display:block"></iframe>
<iframe id="desktop" src="@PAGE@" style="width:@DW@px;height:@DH@px;border:0;display:block"></iframe>
<script>
function text(el) { return el ? el.innerText.trim() : null; }
function pairs(heading) {
  var out = [];
  for (var el = heading.nextElementSibling; el && !/^H[12]$/.test(el.tagName); el = el.nextElementSibling) {
    el.querySelectorAll('tr').forEach(function (tr) {
      var th = tr.querySelector('th'), td = tr.querySelector('td');
      if (th && td) out.push([text(th), text(td)]);
    });
    el.querySelectorAll('dt').forEach(function (dt) {
      var dd = dt.nextElementSibling;
      if (dd && dd.tagName === 'DD') out.push([text(dt), text(dd)]);
    });
  }
  return out;
}
function probe(frame) {
  var d = frame.contentDocument, w = frame.contentWindow, root = d.documentElement;
  var meta = d.querySelector('meta[name="viewport"]');
  return {
    width: w.innerWidth,
    client_width: root.clientWidth,
    scroll_width: root.scrollWidth,
    scroll_height: root.scrollHeight,
    viewport: meta ? meta.getAttribute('content') : null,
    first_paragraph: text(d.body.querySelector('p')),
    images: Array.prototype.map.call(d.images, function (i) {
      return { src: i.getAttribute('src'), complete: i.complete, natural_width: i.naturalWidth,
               natural_height: i.naturalHeight, width: i.width, height: i.height };
    }),
    sections: Array.prototype.map.call(d.querySelectorAll('h1, h2'), function (h) {
      return { heading: text(h), pairs: pairs(h) };
    }),
    footer: text(d.querySelector('footer')),
    text: d.body.innerText
  };
}
window.addEventListener('load', function () {
  var pre = document.createElement('pre');
  pre.id = 'lethe-probe';
  pre.textContent = JSON.stringify({ phone: probe(document.getElementById('phone')),
                                     desktop: probe(document.getElementById('desktop')) });
  document.body.appendChild(pre);
});
</script>
</body></html>
"#;

fn file_url(path: &Path) -> String {
    format!("file://{}", path.display())
}

/// Width and height from a PNG, decoded with the png crate (so it really decodes).
fn png_size(png: &[u8]) -> (u32, u32) {
    let mut reader = png::Decoder::new(std::io::Cursor::new(png))
        .read_info()
        .expect("a PNG the png crate reads");
    let mut buf = vec![0; reader.output_buffer_size().expect("buffer size")];
    let info = reader.next_frame(&mut buf).expect("a frame");
    (info.width, info.height)
}

fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn lethe(dir: &Path, args: &[&str]) -> Output {
    let o = Command::new(LETHE)
        .current_dir(dir)
        .args(args)
        .env_remove("LETHE_CONFIG")
        .env_remove("LETHE_DATABASE_URL")
        .output()
        .expect("run lethe");
    assert_eq!(
        o.status.code(),
        Some(0),
        "lethe {args:?}:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// The `[key, value]` pairs of the section whose heading is `heading`.
fn section<'a>(frame: &'a Value, heading: &str) -> &'a [Value] {
    frame["sections"]
        .as_array()
        .expect("sections")
        .iter()
        .find(|s| s["heading"] == heading)
        .unwrap_or_else(|| panic!("no section {heading:?} in {}", frame["sections"]))["pairs"]
        .as_array()
        .expect("pairs")
}

fn value<'a>(pairs: &'a [Value], key: &str) -> &'a str {
    pairs
        .iter()
        .find(|p| p[0] == key)
        .and_then(|p| p[1].as_str())
        .unwrap_or_else(|| panic!("no row {key:?} in {pairs:?}"))
}

/// What holds at both sizes: a viewport for phones, no sideways scrolling.
fn assert_fits(page: &str, size: &str, frame: &Value) {
    let content = frame["viewport"].as_str().unwrap_or("");
    assert!(
        content.contains("width=device-width"),
        "{page} at the {size} size: viewport meta {:?}",
        frame["viewport"]
    );
    let (scroll, client) = (
        frame["scroll_width"].as_u64().expect("scroll_width"),
        frame["client_width"].as_u64().expect("client_width"),
    );
    assert!(
        scroll <= client,
        "{page} at the {size} size ({} px wide): the content is {scroll} px wide in a \
         {client} px viewport, so the page scrolls sideways",
        frame["width"]
    );
}

/// Writes the report `eml` (its HTML part, with the chart's `cid:` reference rewritten
/// to `<stem>.png` beside it) into `pages` as `<stem>.html`, probes it at both sizes
/// and checks what the director must see against the ledger (`lethe ledger show`):
/// the verdict first (the text part's first line), each class's table, the chart
/// loaded at its own size, the run's and the policy's hashes. Returns the probe and
/// the ledger entry.
fn check_report(
    browser: &mut Browser,
    root: &Path,
    pages: &Path,
    eml: &Path,
    stem: &str,
) -> (Value, Value) {
    let name = eml.file_name().unwrap().to_string_lossy().into_owned();
    let run_id: String = name
        .split("-run")
        .nth(1)
        .expect("-run<id>- in the file name")
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let raw = std::fs::read_to_string(eml).expect("read eml");
    let report = open_report(&raw);
    let chart = report.chart.expect("the report has its inline chart");
    let (chart_w, chart_h) = png_size(&chart.png);
    let cid_ref = format!("cid:{}", chart.cid);
    assert_eq!(
        report.html.matches(&cid_ref).count(),
        1,
        "one <img> names the chart"
    );
    std::fs::write(pages.join(format!("{stem}.png")), &chart.png).expect("write chart");
    std::fs::write(
        pages.join(format!("{stem}.html")),
        report.html.replace(&cid_ref, &format!("{stem}.png")),
    )
    .expect("write report");
    let ledger: Value =
        serde_json::from_slice(&lethe(root, &["ledger", "show", &run_id, "--json"]).stdout)
            .expect("ledger show --json");
    let verdict = report.text.lines().next().expect("verdict line").trim();

    let probed = browser.probe(pages, &format!("{stem}.html"));
    for size in ["phone", "desktop"] {
        let frame = &probed[size];
        let what = format!("the report of run {run_id}");
        assert_fits(&what, size, frame);
        assert_eq!(
            frame["first_paragraph"], verdict,
            "{what}, {size}: the verdict first"
        );
        let images = frame["images"].as_array().expect("images");
        assert_eq!(
            images.len(),
            1,
            "{what}, {size}: one image, the chart: {images:?}"
        );
        let img = &images[0];
        assert_eq!(img["src"], format!("{stem}.png"));
        assert_eq!(img["complete"], true, "{what}, {size}: chart loaded");
        assert_eq!(
            (
                img["natural_width"].as_u64(),
                img["natural_height"].as_u64()
            ),
            (Some(u64::from(chart_w)), Some(u64::from(chart_h))),
            "{what}, {size}: the browser decoded the chart at its own size"
        );
        assert_eq!(
            (img["width"].as_u64(), img["height"].as_u64()),
            (Some(u64::from(chart_w)), Some(u64::from(chart_h))),
            "{what}, {size}: the chart is laid out at its own size"
        );
        let classes = ledger["classes"].as_array().expect("classes");
        assert!(
            classes.len() >= 3,
            "the shipped config's classes: {classes:?}"
        );
        for class in classes {
            let name = class["class"].as_str().expect("class name");
            let rows = section(frame, &format!("Class: {name}"));
            let n = |k: &str| grouped(class[k].as_u64().expect(k));
            let at = format!("{what}, {size}, {name}");
            assert_eq!(value(rows, "Table"), class["table"], "{at}");
            assert_eq!(value(rows, "Rows changed"), n("affected"), "{at}");
            assert_eq!(value(rows, "Rows eligible"), n("eligible"), "{at}");
            assert_eq!(
                value(rows, "Kept: patron chose to keep history"),
                n("kept_opt_in"),
                "{at}"
            );
            assert_eq!(
                value(rows, "Kept: legal hold"),
                n("kept_legal_hold"),
                "{at}"
            );
            assert_eq!(
                value(rows, "Kept: still checked out or owed"),
                n("kept_obligations"),
                "{at}"
            );
            assert_eq!(
                value(rows, "Kept: staff, guarantor or protected account"),
                n("kept_protected"),
                "{at}"
            );
        }
        let audit = section(frame, "For the auditor");
        assert_eq!(value(audit, "Ledger hash of this run"), ledger["hash"]);
        assert_eq!(value(audit, "Policy SHA-256"), ledger["policy_sha256"]);
        let text = frame["text"].as_str().expect("text");
        let label = format!("run {run_id}");
        assert!(
            text.contains(&label),
            "{what}, {size}: {label:?} missing under the chart"
        );
    }
    (probed, ledger)
}

/// The whole page at the phone's width, as tall as the probe measured it.
fn full_height(probed: &Value) -> u32 {
    let tall = probed["phone"]["scroll_height"].as_u64().expect("height");
    u32::try_from(tall).expect("height").clamp(PHONE.1, 16_000)
}

/// A small library from the demo's generator and real runs on it: `lethe demo` under a
/// 1-year circulation period, `lethe demo` again under the shipped config (30 days:
/// it changes rows, and its report carries the policy-change notice), then ten
/// `lethe run --once` (nothing left to change) so the last report's chart holds the
/// 12 runs a report shows, 600 px wide. Both reports and the public schedule in
/// Chromium at both sizes.
#[tokio::test(flavor = "multi_thread")]
async fn the_report_and_the_public_schedule_render_in_chromium_at_phone_and_desktop_sizes() {
    let Some(exe) = chromium() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let mut opts = DemoOptions::standard(chrono::Utc::now().date_naive());
    opts.patrons = 400;
    opts.returned_checkouts = 4000;
    demo::create_library_if_absent(&root.join("demo/library.db"), &opts)
        .await
        .expect("demo library")
        .expect("created");
    let shipped =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("retention.yaml"))
            .expect("shipped retention.yaml");
    let thirty =
        regex::Regex::new(r"(?m)^(  circulation_history:.*\n    retain: )30 days$").expect("regex");
    assert!(
        thirty.is_match(&shipped),
        "the shipped config changed shape"
    );
    let a_year = thirty.replace(&shipped, "${1}1 year").into_owned();
    std::fs::write(root.join("retention.yaml"), a_year).expect("write config");
    lethe(root, &["demo", "--dir", "demo"]);
    std::fs::write(root.join("retention.yaml"), &shipped).expect("write config");
    lethe(root, &["demo", "--dir", "demo"]);
    for _ in 0..10 {
        lethe(root, &["run", "--once"]);
    }
    let mut emls: Vec<PathBuf> = std::fs::read_dir(root.join("demo/outbox"))
        .expect("outbox")
        .map(|e| e.expect("entry").path())
        .collect();
    emls.sort();
    assert_eq!(emls.len(), 12, "{emls:?}");

    let pages = root.join("pages");
    std::fs::create_dir(&pages).expect("pages dir");
    let mut browser = Browser::new(exe);
    let shots = screenshots_dir();

    // The run that tightened the policy: rows changed, a notice, a chart of 2 runs.
    let (probed, ledger) = check_report(&mut browser, root, &pages, &emls[1], "change");
    let classes = ledger["classes"].as_array().expect("classes");
    let circulation = classes
        .iter()
        .find(|c| c["class"] == "circulation_history")
        .expect("circulation_history in the run");
    assert!(
        circulation["affected"].as_u64() > Some(0),
        "the 30-day run anonymized circulation history"
    );
    let enforced = format!("All {} kinds of record were enforced;", classes.len());
    for size in ["phone", "desktop"] {
        let frame = &probed[size];
        let verdict = frame["first_paragraph"].as_str().expect("verdict");
        assert!(verdict.starts_with(&enforced), "{verdict}");
        let text = frame["text"].as_str().expect("text");
        assert!(
            text.contains("Notice: The retention policy changed"),
            "{size}:\n{text}"
        );
    }
    let url = file_url(&pages.join("change.html"));
    browser.screenshot(
        &url,
        (PHONE.0, full_height(&probed)),
        &shots.join("report-change-phone-full.png"),
    );

    // The twelfth run: the full chart (12 × 50 px, wider than a phone).
    let (probed, ledger) = check_report(&mut browser, root, &pages, &emls[11], "report");
    assert_eq!(
        probed["desktop"]["images"][0]["natural_width"].as_u64(),
        Some(600),
        "12 runs in the chart"
    );
    let url = file_url(&pages.join("report.html"));
    browser.screenshot(&url, PHONE, &shots.join("report-phone.png"));
    browser.screenshot(&url, DESKTOP, &shots.join("report-desktop.png"));
    browser.screenshot(
        &url,
        (PHONE.0, full_height(&probed)),
        &shots.join("report-phone-full.png"),
    );

    // The public schedule.
    let policy = lethe(root, &["policy", "--format", "html"]);
    std::fs::write(pages.join("policy.html"), &policy.stdout).expect("write policy");
    let probed = browser.probe(&pages, "policy.html");
    for size in ["phone", "desktop"] {
        let frame = &probed[size];
        assert_fits("the public schedule", size, frame);
        assert_eq!(frame["images"].as_array().map(Vec::len), Some(0));
        section(frame, "How long Demo Public Library keeps your records");
        for (heading, period) in [
            ("Circulation history", "30 days"),
            ("Holds history", "30 days"),
            ("Expired patrons", "2 years"),
        ] {
            let kept = value(section(frame, heading), "How long it is kept");
            assert!(kept.starts_with(period), "{size} {heading}: {kept}");
        }
        // The published page names the policy the ledger recorded for the last run.
        let footer = frame["footer"].as_str().expect("footer");
        let hash = ledger["policy_sha256"].as_str().expect("policy hash");
        assert!(footer.contains(hash), "{size}: {footer} lacks {hash}");
    }
    let url = file_url(&pages.join("policy.html"));
    browser.screenshot(&url, PHONE, &shots.join("policy-phone.png"));
    browser.screenshot(&url, DESKTOP, &shots.join("policy-desktop.png"));
    browser.screenshot(
        &url,
        (PHONE.0, full_height(&probed)),
        &shots.join("policy-phone-full.png"),
    );

    assert!(
        browser.console.is_empty(),
        "console messages:\n{}",
        browser.console.join("\n")
    );
    eprintln!(
        "browser: {} Chromium runs; screenshots in {}",
        browser.runs,
        shots.display()
    );
}
