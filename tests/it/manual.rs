//! `lethe man` and `lethe completions`: generated from the command line, they name
//! every subcommand, and they need no config file.

use std::path::Path;
use std::process::{Command, Output};

const LETHE: &str = env!("CARGO_BIN_EXE_lethe");

/// The subcommands an administrator must find in the manual and the completions.
const SUBCOMMANDS: [&str; 11] = [
    "check",
    "plan",
    "run",
    "verify",
    "status",
    "schema",
    "policy",
    "ledger",
    "demo",
    "man",
    "completions",
];

/// Runs lethe in an empty folder, with a config path that does not exist.
fn lethe(dir: &Path, args: &[&str]) -> Output {
    let o = Command::new(LETHE)
        .current_dir(dir)
        .args(args)
        .env("LETHE_CONFIG", dir.join("no-such-retention.yaml"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

#[test]
fn man_writes_a_page_naming_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let page = String::from_utf8(lethe(dir.path(), &["man"]).stdout).unwrap();
    assert!(page.contains("\n.TH lethe 1 "), "{page}");
    for s in SUBCOMMANDS {
        assert!(page.contains(&format!("lethe\\-{s}(1)")), "{s} missing");
    }
    for section in ["EXIT STATUS", "ENVIRONMENT", "FILES", "SEE ALSO"] {
        // roff quotes a heading of several words.
        assert!(
            page.contains(&format!(".SH {section}\n"))
                || page.contains(&format!(".SH \"{section}\"\n")),
            "{section} missing"
        );
    }
}

#[test]
fn man_out_writes_one_page_per_command() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("man");
    lethe(dir.path(), &["man", "--out", out.to_str().unwrap()]);
    for page in [
        "lethe.1",
        "lethe-run.1",
        "lethe-ledger.1",
        "lethe-ledger-verify.1",
        "lethe-completions.1",
    ] {
        let text = std::fs::read_to_string(out.join(page)).unwrap();
        assert!(text.contains(".TH "), "{page}: {text}");
    }
    let run = std::fs::read_to_string(out.join("lethe-run.1")).unwrap();
    assert!(run.contains("\\-\\-once"), "{run}");
}

#[test]
fn completions_for_bash_zsh_and_fish_name_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let script = String::from_utf8(lethe(dir.path(), &["completions", shell]).stdout).unwrap();
        assert!(script.len() > 500, "{shell}: {script}");
        for s in SUBCOMMANDS {
            assert!(script.contains(s), "{shell}: {s} missing");
        }
    }
    // A shell clap_complete does not know is a usage error.
    let o = Command::new(LETHE)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}
