//! The manual page and shell completions, generated from the command line's clap
//! definition (`lethe man`, `lethe completions SHELL`), never written by hand: they
//! cannot drift from `lethe --help`.
//!
//! The top page, lethe(1), adds to what clap knows the sections an administrator looks
//! for in a manual: exit status, environment, files, and the systemd unit. Each
//! subcommand gets a page of its own (lethe-run(1), lethe-ledger-verify(1), …) when
//! the pages are written to a folder, as the Debian package installs them.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap_complete::Shell;
use roff::{Roff, bold, italic, roman};

/// The man section every page goes in: user commands.
const SECTION: &str = "1";
/// The manual's name in each page's header.
const MANUAL: &str = "Lethe Manual";
/// A roff request without arguments (`.TP`).
const NO_ARGS: [&str; 0] = [];

/// Writes lethe(1), the page of the top-level command, to `w`.
///
/// # Errors
/// Writing to `w` failed (a closed pipe, a full disk).
pub fn write_man(cmd: clap::Command, w: &mut dyn Write) -> io::Result<()> {
    let cmd = prepare(cmd);
    top_page(&cmd, w)
}

/// Writes lethe.1 and one page per subcommand (lethe-check.1, lethe-ledger-list.1, …)
/// into `dir`, creating it if needed. Returns the paths written, the top page first.
///
/// # Errors
/// Creating `dir` or writing a page failed.
pub fn write_man_dir(cmd: clap::Command, dir: &Path) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let cmd = prepare(cmd);
    let top = dir.join(format!("{}.{SECTION}", cmd.get_name()));
    let mut file = io::BufWriter::new(std::fs::File::create(&top)?);
    top_page(&cmd, &mut file)?;
    file.flush()?;
    let mut written = vec![top];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        sub_pages(sub.clone(), dir, &mut written)?;
    }
    Ok(written)
}

/// The completion script for `shell`.
///
/// Install it where the shell looks: bash `/usr/share/bash-completion/completions/lethe`,
/// zsh `/usr/share/zsh/vendor-completions/_lethe`, fish
/// `/usr/share/fish/vendor_completions.d/lethe.fish` (the Debian package does).
/// Returned as bytes rather than written to a stream: clap_complete panics when its
/// writer fails, and a closed stdout (`lethe completions bash | head`) must not.
pub fn completions(mut cmd: clap::Command, shell: Shell) -> Vec<u8> {
    let name = cmd.get_name().to_string();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut script);
    script
}

/// Builds the command as clap_mangen's own `generate_to` does, so that subcommands
/// carry their display names (`lethe-run`) and `help` is not listed as a command.
fn prepare(cmd: clap::Command) -> clap::Command {
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    cmd
}

fn man(cmd: clap::Command) -> clap_mangen::Man {
    clap_mangen::Man::new(cmd).section(SECTION).manual(MANUAL)
}

fn sub_pages(cmd: clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        sub_pages(sub.clone(), dir, written)?;
    }
    written.push(man(cmd).generate_to(dir)?);
    Ok(())
}

/// clap's page with exit status, environment, files and see also added before its
/// version section.
fn top_page(cmd: &clap::Command, w: &mut dyn Write) -> io::Result<()> {
    let mut page = Vec::new();
    man(cmd.clone()).render(&mut page)?;
    let page = String::from_utf8_lossy(&page);
    let extra = extra_sections(cmd).render();
    let at = page.find("\n.SH VERSION").map_or(page.len(), |i| i + 1);
    w.write_all(page[..at].as_bytes())?;
    w.write_all(extra.as_bytes())?;
    w.write_all(page[at..].as_bytes())
}

fn extra_sections(cmd: &clap::Command) -> Roff {
    let subcommands: Vec<String> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .map(|s| format!("{}-{}({SECTION})", cmd.get_name(), s.get_name()))
        .collect();
    let mut r = Roff::new();
    r.control("SH", ["EXIT STATUS"]);
    for (code, what) in [
        ("0", "Success."),
        (
            "1",
            "A run or check failed at run time: the database is unreachable, a class failed or tripped \
             the circuit breaker, the clocks disagree, overdue rows were found, or the ledger's hash chain is broken.",
        ),
        (
            "2",
            "Invalid configuration or usage, or a configuration that does not fit the database; nothing was touched.",
        ),
    ] {
        r.control("TP", NO_ARGS)
            .text([bold(code)])
            .text([roman(what)]);
    }
    r.control("SH", ["ENVIRONMENT"]);
    for (var, what) in [
        (
            "LETHE_CONFIG",
            "Path of retention.yaml when --config is not given.",
        ),
        (
            "RUST_LOG",
            "Log levels on stderr, e.g. info, debug, or info,sqlx=warn.",
        ),
        (
            "NOTIFY_SOCKET, WATCHDOG_USEC",
            "Set by systemd for a Type=notify service: lethe run reports READY=1 once its schedule \
             is armed, STATUS= lines, WATCHDOG=1 pings at half of WATCHDOG_USEC, and STOPPING=1 on shutdown.",
        ),
        (
            "CREDENTIALS_DIRECTORY",
            "Set by systemd's LoadCredential=; point a password_file at a file in it \
             (/run/credentials/lethe.service/NAME).",
        ),
    ] {
        r.control("TP", NO_ARGS)
            .text([bold(var)])
            .text([roman(what)]);
    }
    r.control("SH", ["FILES"]);
    for (file, what) in [
        (
            "./retention.yaml, /etc/lethe/retention.yaml",
            "The retention policy (the first is the default; the packaged service uses the second).",
        ),
        (
            "/var/lib/lethe",
            "State of the packaged service, and its outbox of unsent reports (/var/lib/lethe/outbox).",
        ),
        (
            "/lib/systemd/system/lethe.service",
            "The packaged systemd unit (Type=notify, watchdog, sandboxed).",
        ),
    ] {
        r.control("TP", NO_ARGS)
            .text([italic(file)])
            .text([roman(what)]);
    }
    r.control("SH", ["SEE ALSO"]);
    r.text([roman(format!(
        "{}, systemd.service(5), systemd.exec(5)",
        subcommands.join(", ")
    ))]);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli() -> clap::Command {
        clap::Command::new("lethe")
            .version("0.1.0")
            .about("test")
            .subcommand(clap::Command::new("check").about("validate"))
            .subcommand(
                clap::Command::new("ledger")
                    .about("the ledger")
                    .subcommand(clap::Command::new("verify").about("chain")),
            )
    }

    #[test]
    fn the_top_page_has_the_extra_sections() {
        let mut out = Vec::new();
        write_man(cli(), &mut out).unwrap();
        let page = String::from_utf8(out).unwrap();
        assert!(page.contains("\n.TH lethe 1 "), "{page}");
        for s in [
            "EXIT STATUS",
            "ENVIRONMENT",
            "FILES",
            "SEE ALSO",
            "lethe\\-check(1)",
        ] {
            assert!(page.contains(s), "{s} missing:\n{page}");
        }
    }

    #[test]
    fn completions_name_the_subcommands() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let script = String::from_utf8(completions(cli(), shell)).unwrap();
            assert!(
                script.contains("check") && script.contains("ledger"),
                "{shell}: {script}"
            );
        }
    }

    #[test]
    fn a_folder_gets_one_page_per_command() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_man_dir(cli(), dir.path()).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "lethe.1",
                "lethe-check.1",
                "lethe-ledger-verify.1",
                "lethe-ledger.1"
            ]
        );
    }
}
