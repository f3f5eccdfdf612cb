//! Configuration: the shipped file is valid; every file in `tests/bad-config/` is
//! rejected with a message naming its place (file:line:column) and the expected text.

use std::path::Path;

use lethe::config;

fn dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad-config")
}

/// The classes the shipped `retention.yaml` enforces: the whole Koha profile.
const SHIPPED_CLASSES: [&str; 16] = [
    "circulation_history",
    "holds_history",
    "expired_patrons",
    "refused_processing",
    "circulation_statistics",
    "notices",
    "patron_logs",
    "search_history",
    "deleted_patrons",
    "self_registrations",
    "fines_history",
    "purchase_suggestions",
    "ill_requests",
    "return_claims",
    "last_borrowers",
    "pseudonymized_transactions",
];

#[test]
fn shipped_retention_yaml_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("retention.yaml");
    let cfg = config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = cfg.classes.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, SHIPPED_CLASSES);
    assert_eq!(cfg.classes[0].retain.to_string(), "30 days");
    assert_eq!(cfg.classes[2].retain.to_string(), "2 years");
    assert_eq!(cfg.schedule.timezone.name(), "America/New_York");
    assert!(
        cfg.database.display_url.ends_with("demo/library.db"),
        "{}",
        cfg.database.display_url
    );
}

#[test]
fn every_bad_config_is_rejected_with_its_place() {
    let mut n = 0;
    for entry in std::fs::read_dir(dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        n += 1;
        let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect:"))
            .map(str::trim)
            .unwrap_or("");
        let started = std::time::Instant::now();
        let err = match config::load(&path) {
            Ok(_) => panic!("{} was accepted", path.display()),
            Err(e) => e,
        };
        assert!(
            started.elapsed().as_secs() < 2,
            "{} took too long",
            path.display()
        );
        let msg = err.to_string();
        assert!(
            msg.contains(expect),
            "{}: expected {expect:?} in:\n{msg}",
            path.display()
        );
        let file = path.display().to_string();
        for e in &err.0 {
            assert!(e.file.starts_with(&file), "{msg}");
        }
        // Every error names a line and column, except the ones about the whole file.
        let whole_file = ["empty", "not UTF-8", "brackets nested", "bytes, more than"];
        if !whole_file.iter().any(|w| msg.contains(w)) {
            assert!(
                err.0.iter().all(|e| e.location.is_some()),
                "{}: no location in:\n{msg}",
                path.display()
            );
        }
    }
    assert!(n >= 30, "only {n} bad configs");
}

#[test]
fn all_errors_are_reported_at_once() {
    let err = config::load(&dir().join("many-errors.yaml")).unwrap_err();
    let msg = err.to_string();
    for want in [
        "schedule.timezone",
        "safety.mode",
        "classes.circulation_history.retain",
        "classes.holds_history.retain",
    ] {
        assert!(msg.contains(want), "{want} missing in:\n{msg}");
    }
    let tz = err
        .0
        .iter()
        .find(|e| e.path == "schedule.timezone")
        .unwrap();
    assert_eq!(tz.location.map(|l| (l.line, l.column)), Some((7, 13)));
}

#[test]
fn env_expansion_and_password_from_environment() {
    let yaml = "database:\n  url: \"mysql://koha@${DBHOST:-127.0.0.1}/koha\"\n  password_env: KOHA_PW\n\
                schedule:\n  cron: \"30 2 * * *\"\n  timezone: Europe/Paris\nprofile: koha\n";
    let env = |n: &str| match n {
        "KOHA_PW" => Some("p@ss:w/rd".to_string()),
        _ => None,
    };
    let cfg = config::parse_str(yaml, "x.yaml", Path::new("/tmp"), &env).unwrap();
    use secrecy::ExposeSecret;
    assert_eq!(cfg.database.display_url, "mysql://koha@127.0.0.1/koha");
    assert!(
        cfg.database
            .url
            .expose_secret()
            .contains("koha:p%40ss%3Aw%2Frd@127.0.0.1")
    );
    // The password never shows in Debug output.
    assert!(!format!("{cfg:?}").contains("p@ss"));
    let missing = config::parse_str(yaml, "x.yaml", Path::new("/tmp"), &|_| None).unwrap_err();
    assert!(
        missing.to_string().contains("KOHA_PW is not set"),
        "{missing}"
    );
}

/// Regression: a file saved with a UTF-8 byte-order mark was read as two documents.
#[test]
fn a_byte_order_mark_is_not_content() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("retention.yaml");
    let text = format!("\u{feff}{}", std::fs::read_to_string(&path).unwrap());
    let cfg = config::parse_str(&text, "bom.yaml", Path::new("/tmp"), &|_| None).unwrap();
    assert_eq!(cfg.classes.len(), SHIPPED_CLASSES.len());
}

/// Regression: adding one exemption to a profile class replaced all of the profile's
/// exemptions, so staff, guarantors and patrons who owed money became deletable.
#[test]
fn a_class_override_adds_to_the_profiles_lists_and_never_replaces_them() {
    let yaml = "database:\n  url: sqlite://x.db\nschedule:\n  cron: \"30 2 * * *\"\n  timezone: UTC\nprofile: koha\n\
                classes:\n  expired_patrons:\n    exempt:\n      - { reason: legal_hold, column: borrowernotes, eq: \"LEGAL HOLD\" }\n\
                \x20   scope:\n      - { column: branchcode, eq: MAIN }\n";
    let cfg = config::parse_str(yaml, "x.yaml", Path::new("/tmp"), &|_| None).unwrap();
    let c = cfg
        .classes
        .iter()
        .find(|c| c.name == "expired_patrons")
        .unwrap();
    let profile = config::parse_str(
        "database:\n  url: sqlite://x.db\nschedule:\n  cron: \"30 2 * * *\"\n  timezone: UTC\nprofile: koha\n",
        "y.yaml",
        Path::new("/tmp"),
        &|_| None,
    )
    .unwrap();
    let p = profile
        .classes
        .iter()
        .find(|c| c.name == "expired_patrons")
        .unwrap();
    assert_eq!(c.exempt.len(), p.exempt.len() + 1);
    for e in &p.exempt {
        assert!(c.exempt.contains(e), "profile exemption {e:?} lost");
    }
    assert_eq!(c.scope.len(), p.scope.len() + 1);
    // Switching an anonymize class to delete drops its column strategies.
    let yaml = "database:\n  url: sqlite://x.db\nschedule:\n  cron: \"30 2 * * *\"\n  timezone: UTC\nprofile: koha\n\
                classes:\n  circulation_history:\n    action: delete\n";
    let cfg = config::parse_str(yaml, "x.yaml", Path::new("/tmp"), &|_| None).unwrap();
    assert!(cfg.classes[0].anonymize.is_empty());
    assert!(!cfg.classes[0].exempt.is_empty());
}

/// `safety.statement_timeout`, `safety.retries` and `safety.retry_for`: defaults, a
/// value given, and the bounds (the rejected values are files in `tests/bad-config/`).
#[test]
fn the_statement_timeout_and_the_retry_budget_are_read_with_their_defaults() {
    use std::time::Duration;
    let base = "database:\n  url: \"sqlite://library.db\"\nschedule:\n  cron: \"30 2 * * *\"\n  \
                timezone: Europe/Paris\nprofile: koha\n";
    let parse = |extra: &str| {
        config::parse_str(
            &format!("{base}{extra}"),
            "x.yaml",
            Path::new("/tmp"),
            &|_| None,
        )
    };
    let cfg = parse("").unwrap();
    assert_eq!(cfg.safety.statement_timeout, Duration::from_secs(300));
    assert_eq!(cfg.safety.retries, 5);
    assert_eq!(cfg.safety.retry_for, Duration::from_secs(60));
    let cfg =
        parse("safety:\n  statement_timeout: 30 seconds\n  retries: 0\n  retry_for: 1 hour\n")
            .unwrap();
    assert_eq!(cfg.safety.statement_timeout, Duration::from_secs(30));
    assert_eq!(cfg.safety.retries, 0);
    assert_eq!(cfg.safety.retry_for, Duration::from_secs(3600));
    // Each bad value is reported, all at once, each at its place.
    let err = parse("safety:\n  statement_timeout: 61 minutes\n  retries: 21\n  retry_for: soon\n")
        .unwrap_err();
    let places: Vec<(String, Option<usize>)> = err
        .0
        .iter()
        .map(|e| (e.path.clone(), e.location.map(|l| l.line)))
        .collect();
    assert_eq!(
        places,
        [
            ("safety.statement_timeout".to_string(), Some(8)),
            ("safety.retries".to_string(), Some(9)),
            ("safety.retry_for".to_string(), Some(10)),
        ],
        "{err}"
    );
}

/// `safety.batch_target`, `batch_min` and `batch_max`: defaults, the forms a target is
/// written in, the bounds each default derives from `batch_size`, and every bad value
/// reported at its place (more rejected values are files in `tests/bad-config/`).
#[test]
fn adaptive_batch_settings_are_read_with_their_defaults_and_bounds() {
    use std::time::Duration;
    let base = "database:\n  url: \"sqlite://library.db\"\nschedule:\n  cron: \"30 2 * * *\"\n  \
                timezone: Europe/Paris\nprofile: koha\n";
    let parse = |extra: &str| {
        config::parse_str(
            &format!("{base}{extra}"),
            "x.yaml",
            Path::new("/tmp"),
            &|_| None,
        )
    };
    let cfg = parse("").unwrap();
    assert_eq!(cfg.safety.batch_target, Duration::from_millis(100));
    // Nothing written: start at 1000, grow to 10,000 while under the target.
    assert_eq!(
        (cfg.safety.batch_size, cfg.safety.batch_bounds()),
        (1000, (100, 10_000))
    );
    // A written batch_size is the start and the most: batches only shrink when slow.
    let cfg = parse("safety:\n  batch_size: 1000\n").unwrap();
    assert_eq!(cfg.safety.batch_bounds(), (100, 1000));
    // A small batch_size is its own floor: fixed batches, as before adaptation.
    let cfg = parse("safety:\n  batch_size: 7\n").unwrap();
    assert_eq!(cfg.safety.batch_bounds(), (7, 7));
    let cfg = parse(
        "safety:\n  batch_size: 500\n  batch_min: 10\n  batch_max: 10000\n  batch_target: 250ms\n",
    )
    .unwrap();
    assert_eq!(cfg.safety.batch_bounds(), (10, 10_000));
    assert_eq!(cfg.safety.batch_target, Duration::from_millis(250));
    for (written, ms) in [
        ("100ms", 100),
        ("10 ms", 10),
        ("250 milliseconds", 250),
        ("2 seconds", 2000),
        ("1s", 1000),
        ("10 seconds", 10_000),
    ] {
        assert_eq!(
            config::parse_batch_target(written),
            Ok(Duration::from_millis(ms)),
            "{written}"
        );
    }
    for bad in [
        "9ms",
        "11 seconds",
        "0 ms",
        "1 minute",
        "fast",
        "-5ms",
        "0.5 s",
        "",
    ] {
        assert!(config::parse_batch_target(bad).is_err(), "{bad}");
    }
    // Each bad value is reported, all at once, each at its place.
    let err = parse(
        "safety:\n  batch_size: 100\n  batch_target: 5 seconds later\n  batch_min: 0\n  batch_max: 99\n",
    )
    .unwrap_err();
    let places: Vec<(String, Option<usize>)> = err
        .0
        .iter()
        .map(|e| (e.path.clone(), e.location.map(|l| l.line)))
        .collect();
    assert_eq!(
        places,
        [
            ("safety.batch_target".to_string(), Some(9)),
            ("safety.batch_min".to_string(), Some(10)),
            ("safety.batch_max".to_string(), Some(11)),
        ],
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("99 is smaller than safety.batch_size (100)"),
        "{err}"
    );
}

/// serde stops at the first structural error; the first one of every other section is
/// reported too, each at its place.
///
/// Regression: a wrong type in `safety` hid an unknown key in `report` and a wrong
/// type in a class; the administrator fixed one, ran again, and met the next.
#[test]
fn structural_errors_in_several_sections_are_all_reported() {
    let yaml = "database:\n  url: \"sqlite://library.db\"\nschedule:\n  cron: \"30 2 * * *\"\n  \
                timezone: Europe/Paris\nsafety:\n  batch_size: lots\nreport:\n  outbox: outbox\n  \
                colour: blue\nprofile: koha\nclasses:\n  circulation_history:\n    retain: [30, days]\n\
                frobnicate: 1\n";
    let err = config::parse_str(yaml, "x.yaml", Path::new("/tmp"), &|_| None).unwrap_err();
    let got: Vec<(String, Option<(usize, usize)>)> = err
        .0
        .iter()
        .map(|e| (e.path.clone(), e.location.map(|l| (l.line, l.column))))
        .collect();
    let msg = err.to_string();
    for (path, line) in [
        ("safety.batch_size", 7),
        ("report", 10),
        ("classes.circulation_history.retain", 14),
    ] {
        assert!(
            got.iter()
                .any(|(p, l)| p == path && l.is_some_and(|(ln, _)| ln == line)),
            "{path} at line {line} missing in {got:?}:\n{msg}"
        );
    }
    assert!(msg.contains("frobnicate"), "{msg}");
    assert!(err.0.iter().all(|e| e.location.is_some()), "{msg}");
}

/// Regression (found by the config fuzzer): a `%YAML` directive or a `---` after content
/// starts a second document; serde_yaml's error for a directive has no place, so Lethe
/// names the line where that document begins.
#[test]
fn a_second_document_is_reported_where_it_begins() {
    // (serde_yaml places the `---` case itself, at the end of the first document.)
    for (yaml, line) in [
        ("library: Test\n%YAML 1.2\nprofile: koha\n", 2),
        (
            "# policy\nlibrary: Test\nprofile: koha\n---\nschedule: {}\n",
            2,
        ),
    ] {
        let err = config::parse_str(yaml, "x.yaml", Path::new("/tmp"), &|_| None).unwrap_err();
        let e = err
            .0
            .iter()
            .find(|e| e.message.contains("more than one document"))
            .unwrap_or_else(|| panic!("{err}"));
        assert_eq!(e.location.map(|l| l.line), Some(line), "{err}");
    }
}
