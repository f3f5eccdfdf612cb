//! Fuzzing the config parser (the reliability issue, item 3): arbitrary bytes, mutated
//! valid and bad configs, and random YAML trees over the config's own vocabulary go to
//! `config::parse_str`. It must never panic, must return within a hang guard, and every
//! error must name its place: the file, and a line and column or a config path (only
//! errors about the whole file, such as an empty or oversized one, have neither). A
//! config it accepts must hold values within their documented bounds.
//!
//! `PROPTEST_CASES` sets the cases per strategy (256 by default here; the long
//! campaign in RELIABILITY.md used more). The same properties run over
//! `tests/fuzz-corpus/` (inputs the fuzzers found or that once broke something, and the
//! bad-config corpus), and `fuzz/` holds a cargo-fuzz target for longer campaigns.

use std::path::Path;
use std::time::{Duration, Instant};

use lethe::config::{self, ConfigErrors};
use proptest::prelude::*;

/// Errors about the whole file: they have no place inside it.
const WHOLE_FILE: [&str; 5] = [
    "the file is empty",
    "not UTF-8",
    "brackets nested",
    "bytes, more than",
    "cannot read",
];

/// Generous: the parser takes milliseconds. This catches hangs, it is not a speed target.
const HANG_GUARD: Duration = Duration::from_secs(5);

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// The properties every input must satisfy; `Err` with what was wrong.
pub fn check(text: &str) -> Result<(), String> {
    let started = Instant::now();
    let result = config::parse_str(text, "fuzz.yaml", Path::new("/nonexistent"), &|_| None);
    let took = started.elapsed();
    if took > HANG_GUARD {
        return Err(format!("took {took:?}"));
    }
    match result {
        Ok(cfg) => {
            let s = &cfg.safety;
            let within = (1..=10_000).contains(&s.batch_size)
                && s.max_fraction > 0.0
                && s.max_fraction <= 1.0
                && (1..=100).contains(&s.max_rounds)
                && s.retries <= 20
                && s.statement_timeout >= Duration::from_secs(1)
                && s.statement_timeout <= Duration::from_secs(3600)
                && s.retry_for >= Duration::from_secs(1)
                && s.retry_for <= Duration::from_secs(3600);
            if within {
                Ok(())
            } else {
                Err(format!("accepted out-of-bounds safety values: {s:?}"))
            }
        }
        Err(ConfigErrors(errors)) => {
            if errors.is_empty() {
                return Err("rejected without an error".into());
            }
            for e in &errors {
                let whole_file = WHOLE_FILE.iter().any(|w| e.message.contains(w));
                if !e.file.starts_with("fuzz.yaml") {
                    return Err(format!("an error names another file: {e}"));
                }
                if e.message.trim().is_empty() {
                    return Err(format!("an empty message: {e:?}"));
                }
                if e.location.is_none() && e.path.is_empty() && !whole_file {
                    return Err(format!("an error without a place: {e:?}"));
                }
            }
            Ok(())
        }
    }
}

fn shipped() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("retention.yaml")).unwrap()
}

/// Valid and invalid configs to mutate: the shipped one, the bad-config corpus and the
/// fuzz corpus.
fn seeds() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = vec![shipped()];
    for dir in ["tests/bad-config", "tests/fuzz-corpus"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        let mut files: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
        files.sort();
        for f in files {
            out.push(String::from_utf8_lossy(&std::fs::read(f).unwrap()).into_owned());
        }
    }
    out
}

/// Tokens that mean something to YAML or to the config.
const TOKENS: &[&str] = &[
    ":",
    ": ",
    "- ",
    "\n",
    "\n  ",
    "\n    ",
    "[",
    "]",
    "{",
    "}",
    ",",
    "&a ",
    "*a",
    "!!str ",
    "!!binary ",
    "|",
    ">",
    "'",
    "\"",
    "#",
    "%YAML 1.2\n",
    "---\n",
    "...\n",
    "? ",
    "~",
    "null",
    "true",
    "no",
    "0x1F",
    "1e400",
    "-1",
    "0",
    "999999999999999999999",
    ".inf",
    ".nan",
    "30 days",
    "30 dyas",
    "0 days",
    "-5 years",
    "1 hour",
    "18446744073709551616 years",
    "\"* * * * *\"",
    "\"61 25 * * *\"",
    "Mars/Olympus",
    "`x`; DROP TABLE borrowers; --",
    "a.b.c",
    "lethe_runs",
    "${UNSET}",
    "${X:-y}",
    "$$",
    "\u{feff}",
    "\u{0}",
    "é",
    "classes",
    "safety",
    "retain",
    "scope",
    "exempt",
    "not",
    "all",
    "any",
    "exists",
    "chain",
    "patron_period",
    "anonymize",
    "purge",
    "delete_with",
    "unlink",
    "linked",
    "statement_timeout",
    "retries",
    "retry_for",
    "batch_size",
    "max_fraction",
    "enabled",
];

/// One mutation of a text.
#[derive(Debug, Clone)]
enum Mutation {
    Delete(usize, usize),
    Insert(usize, &'static str),
    Replace(usize, usize, &'static str),
    DuplicateLine(usize),
    SwapLines(usize, usize),
    Byte(usize, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let token = proptest::sample::select(TOKENS);
    prop_oneof![
        (any::<usize>(), 0usize..40).prop_map(|(a, n)| Mutation::Delete(a, n)),
        (any::<usize>(), token.clone()).prop_map(|(a, t)| Mutation::Insert(a, t)),
        (any::<usize>(), 0usize..12, token).prop_map(|(a, n, t)| Mutation::Replace(a, n, t)),
        any::<usize>().prop_map(Mutation::DuplicateLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(a, b)| Mutation::Byte(a, b)),
    ]
}

/// The nearest char boundary at or before `i % (len + 1)`.
fn at(s: &str, i: usize) -> usize {
    let mut i = i % (s.len() + 1);
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn apply(mut s: String, m: &Mutation) -> String {
    match *m {
        Mutation::Delete(a, n) => {
            let a = at(&s, a);
            let b = at(&s, a + n).max(a);
            s.replace_range(a..b, "");
        }
        Mutation::Insert(a, t) => {
            let a = at(&s, a);
            s.insert_str(a, t);
        }
        Mutation::Replace(a, n, t) => {
            let a = at(&s, a);
            let b = at(&s, a + n).max(a);
            s.replace_range(a..b, t);
        }
        Mutation::DuplicateLine(i) | Mutation::SwapLines(i, _) if s.lines().count() == 0 => {
            let _ = i;
        }
        Mutation::DuplicateLine(i) => {
            let mut lines: Vec<&str> = s.lines().collect();
            let i = i % lines.len();
            lines.insert(i, lines[i]);
            s = lines.join("\n");
        }
        Mutation::SwapLines(i, j) => {
            let mut lines: Vec<&str> = s.lines().collect();
            let n = lines.len();
            lines.swap(i % n, j % n);
            s = lines.join("\n");
        }
        Mutation::Byte(a, b) => {
            let mut bytes = s.into_bytes();
            if !bytes.is_empty() {
                let i = a % bytes.len();
                bytes[i] = b;
            }
            s = String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    s
}

/// Keys of the config at every level, and a few that are not.
const KEYS: &[&str] = &[
    "library",
    "database",
    "url",
    "password_env",
    "password_file",
    "schedule",
    "cron",
    "timezone",
    "safety",
    "mode",
    "batch_size",
    "max_fraction",
    "max_clock_skew",
    "min_retention",
    "max_rounds",
    "statement_timeout",
    "retries",
    "retry_for",
    "report",
    "from",
    "to",
    "smtp",
    "outbox",
    "on",
    "overdue_after",
    "timeout",
    "profile",
    "anonymous_patron",
    "classes",
    "circulation_history",
    "holds_history",
    "expired_patrons",
    "web_sessions",
    "description",
    "enabled",
    "table",
    "key",
    "age",
    "columns",
    "type",
    "retain",
    "action",
    "anonymize",
    "scope",
    "immediate",
    "exempt",
    "reason",
    "column",
    "eq",
    "like",
    "is_null",
    "exists",
    "not_exists",
    "matches",
    "where",
    "all",
    "any",
    "not",
    "chain",
    "parent",
    "patron_period",
    "name",
    "value_column",
    "name_column",
    "delete_with",
    "patron",
    "unlink",
    "linked",
    "set_value",
    "purge",
    "function",
    "args",
    "value",
    "triggers",
    "purged",
    "colour",
    "",
    "<<",
];

/// Scalars the config reads, good and bad.
const SCALARS: &[&str] = &[
    "sqlite://library.db",
    "mysql://koha@127.0.0.1/koha",
    "postgres://u:pw@h/db",
    "30 2 * * *",
    "* * * * * *",
    "America/New_York",
    "Mars/Olympus",
    "enforce",
    "dry-run",
    "koha",
    "evergreen",
    "none",
    "30 days",
    "30 dyas",
    "0 days",
    "-1 days",
    "1000000000 years",
    "2 years",
    "6 hours",
    "5 minutes",
    "1 hour",
    "0 seconds",
    "always",
    "failures",
    "anonymize",
    "delete",
    "purge",
    "set_null",
    "anonymous_patron",
    "old_issues",
    "borrowers",
    "lethe_runs",
    "pg_catalog.pg_class",
    "x; DROP TABLE y",
    "a`b",
    "a'b",
    "a\"b",
    "a--b",
    "a/*b*/",
    "opt_in",
    "obligations",
    "protected",
    "key",
    "",
    "~",
    "true",
    "1",
    "-1",
    "0.5",
    "1.5",
    "1e309",
    "18446744073709551616",
    "Director <d@library.example>",
    "not an address",
    "${LETHE_UNSET}",
];

/// A random YAML tree over the vocabulary: mappings with config keys, sequences,
/// scalars of every kind.
fn tree() -> impl Strategy<Value = serde_yaml::Value> {
    use serde_yaml::Value;
    let leaf = prop_oneof![
        proptest::sample::select(SCALARS).prop_map(|s| Value::String(s.to_string())),
        any::<i64>().prop_map(|i| Value::Number(i.into())),
        any::<f64>().prop_map(|f| Value::Number(f.into())),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::Null),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Sequence),
            proptest::collection::vec((proptest::sample::select(KEYS), inner), 0..6).prop_map(
                |pairs| {
                    let mut m = serde_yaml::Mapping::new();
                    for (k, v) in pairs {
                        m.insert(Value::String(k.to_string()), v);
                    }
                    Value::Mapping(m)
                }
            ),
        ]
    })
}

/// A top-level mapping shaped like a config: some of its sections, each a random tree.
fn config_tree() -> impl Strategy<Value = serde_yaml::Value> {
    let section = proptest::sample::select(&KEYS[..26]);
    proptest::collection::vec((section, tree()), 1..8).prop_map(|pairs| {
        let mut m = serde_yaml::Mapping::new();
        for (k, v) in pairs {
            m.insert(serde_yaml::Value::String(k.to_string()), v);
        }
        serde_yaml::Value::Mapping(m)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn arbitrary_bytes_never_panic_and_every_error_has_a_place(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048)
    ) {
        let text = String::from_utf8_lossy(&bytes);
        prop_assert_eq!(check(&text), Ok(()), "{:?}", text);
    }

    #[test]
    fn mutated_configs_never_panic_and_every_error_has_a_place(
        seed in any::<prop::sample::Index>(),
        mutations in proptest::collection::vec(mutation(), 1..8)
    ) {
        let seeds = seeds();
        let mut text = seeds[seed.index(seeds.len())].clone();
        for m in &mutations {
            text = apply(text, m);
        }
        prop_assert_eq!(check(&text), Ok(()), "{:?}", text);
    }

    #[test]
    fn random_yaml_structures_never_panic_and_every_error_has_a_place(v in config_tree()) {
        let text = serde_yaml::to_string(&v).unwrap();
        prop_assert_eq!(check(&text), Ok(()), "{}", text);
    }
}

/// The regression corpus: every file in `tests/fuzz-corpus/` and `tests/bad-config/`
/// holds the properties (and the shipped config parses).
#[test]
fn the_fuzz_corpus_holds_the_properties() {
    let seeds = seeds();
    assert!(seeds.len() > 50, "only {} inputs", seeds.len());
    for text in &seeds {
        assert_eq!(check(text), Ok(()), "{text:?}");
    }
    assert!(
        config::parse_str(
            &shipped(),
            "fuzz.yaml",
            Path::new(env!("CARGO_MANIFEST_DIR")),
            &|_| None
        )
        .is_ok()
    );
}
