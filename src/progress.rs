//! Progress of a run, class by class (issue 7, item 6): rows changed of the rows
//! counted eligible, the rate, and the time left.
//!
//! Two ways to show it, chosen by the caller ([`Progress::for_run_once`]):
//! - **bars** on a terminal (`run --once` with stderr a TTY, text logs, no `--json`):
//!   one [`indicatif`] bar per class while it runs, cleared when the class is done (the
//!   summary table printed afterwards says what happened). Log lines written meanwhile
//!   go through [`stderr_writer`], which lifts the bars off the screen for the line and
//!   draws them again, so neither garbles the other;
//! - **log events** everywhere else (the daemon, `--json`, `--log-format json`, stderr
//!   not a TTY): an INFO event `progress` with `run_id`, `class`, `done`, `eligible`,
//!   `rows_per_s` and `eta_s`, at most once per interval (10 s) per class, the first one
//!   interval after the class began, so a class that finishes sooner logs none.
//!
//! Only class names and counts: no patron data.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often the log path reports a class in progress.
pub const DEFAULT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The bars on stderr, once a run asked for them; [`stderr_writer`] suspends them.
static BARS: OnceLock<MultiProgress> = OnceLock::new();

/// How a run shows its progress. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Progress {
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    /// INFO events at most every this long per class.
    Log(Duration),
    /// indicatif bars on stderr.
    Bars(MultiProgress),
}

impl Default for Progress {
    /// [`Progress::log`].
    fn default() -> Progress {
        Progress::log()
    }
}

impl Progress {
    /// Progress as log events, at most every [`DEFAULT_LOG_INTERVAL`] per class.
    pub fn log() -> Progress {
        Progress::log_every(DEFAULT_LOG_INTERVAL)
    }

    /// Progress as log events, at most every `interval` per class (tests use a zero
    /// interval: an event after every batch).
    pub fn log_every(interval: Duration) -> Progress {
        Progress {
            kind: Kind::Log(interval),
        }
    }

    /// Progress bars on stderr. Log lines must go through [`stderr_writer`] so that
    /// they do not cut through a bar. Bars are not drawn at all when stderr is not a
    /// terminal (indicatif checks).
    pub fn bars() -> Progress {
        let bars = BARS
            .get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
            .clone();
        Progress {
            kind: Kind::Bars(bars),
        }
    }

    /// What `run --once` (and `demo`) use: bars when stderr is a terminal, the logs
    /// are text and stdout is not the one JSON object of `--json`; log events
    /// otherwise (a JSON log shipper or a script must never see a bar).
    pub fn for_run_once(json_output: bool, json_logs: bool) -> Progress {
        use std::io::IsTerminal;
        if !json_output && !json_logs && std::io::stderr().is_terminal() {
            Progress::bars()
        } else {
            Progress::log()
        }
    }

    /// The progress of one class about to change `eligible` rows in run `run_id`.
    pub(crate) fn class(&self, run_id: i64, class: &str, eligible: u64) -> ClassProgress {
        let now = Instant::now();
        let (every, bar) = match &self.kind {
            Kind::Log(every) => (Some(*every), None),
            Kind::Bars(multi) => (None, Some(multi.add(class_bar(class, eligible)))),
        };
        ClassProgress {
            run_id,
            class: class.to_string(),
            eligible,
            done: 0,
            started: now,
            last: now,
            every,
            bar,
        }
    }
}

/// A bar for `class`, `eligible` long, not yet attached to a terminal.
fn class_bar(class: &str, eligible: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(eligible), ProgressDrawTarget::hidden());
    bar.set_style(bar_style());
    bar.set_prefix(class.to_string());
    bar.set_message(describe(0.0, None));
    bar
}

/// `circulation_history [#####>----] 4,500/10,000 rows  1,520 rows/s, 3 s left`.
fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix} [{bar:30}] {human_pos}/{human_len} rows  {msg}")
        // The template is a constant; if a future indicatif refused it, the default
        // style still shows the bar.
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("#>-")
}

/// The progress of one class in a run; dropping it clears its bar.
#[derive(Debug)]
pub(crate) struct ClassProgress {
    run_id: i64,
    class: String,
    eligible: u64,
    done: u64,
    started: Instant,
    last: Instant,
    every: Option<Duration>,
    bar: Option<ProgressBar>,
}

impl ClassProgress {
    /// `changed` more rows committed.
    pub(crate) fn add(&mut self, changed: u64) {
        self.done += changed;
        // Rows made eligible by the class's own changes during a pass are changed
        // too: the total never reads less than what was done.
        self.eligible = self.eligible.max(self.done);
        let now = Instant::now();
        let (rate, eta) = rate_and_eta(self.done, self.eligible, now - self.started);
        if let Some(bar) = &self.bar {
            bar.set_length(self.eligible);
            bar.set_position(self.done);
            bar.set_message(describe(rate, eta));
        }
        let due = self.every.is_some_and(|every| now - self.last >= every);
        if due {
            self.last = now;
            tracing::info!(
                run_id = self.run_id,
                class = %self.class,
                done = self.done,
                eligible = self.eligible,
                rows_per_s = rate,
                eta_s = eta,
                "progress"
            );
        }
    }

    /// `more` rows counted eligible after a pass (the next round changes them).
    pub(crate) fn add_eligible(&mut self, more: u64) {
        self.eligible += more;
        if let Some(bar) = &self.bar {
            bar.set_length(self.eligible);
        }
    }
}

impl Drop for ClassProgress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Rows per second (one decimal) of `done` rows in `elapsed`, and the whole seconds
/// left at that rate for the rest of `eligible`; `None` while nothing is done yet.
pub fn rate_and_eta(done: u64, eligible: u64, elapsed: Duration) -> (f64, Option<u64>) {
    let secs = elapsed.as_secs_f64();
    if done == 0 || secs <= 0.0 {
        return (0.0, None);
    }
    let rate = done as f64 / secs;
    let left = eligible.saturating_sub(done) as f64 / rate;
    ((rate * 10.0).round() / 10.0, Some(left.ceil() as u64))
}

/// The rate and the time left as a bar shows them: `1,520 rows/s, 3 min 05 s left`.
pub fn describe(rate: f64, eta: Option<u64>) -> String {
    let Some(eta) = eta else {
        return "starting".to_string();
    };
    let left = match eta {
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => format!("{} min {:02} s", s / 60, s % 60),
        s => format!("{} h {:02} min", s / 3600, (s % 3600) / 60),
    };
    format!("{} rows/s, {left} left", thousands(rate.round() as u64))
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// The writer for log lines on stderr: while bars are shown, each line is written with
/// the bars lifted ([`MultiProgress::suspend`]) and they are drawn again below it.
/// `tracing_subscriber`'s fmt layer writes each event in one `write_all`, so a line is
/// never split around a bar.
pub fn stderr_writer() -> LogWriter {
    LogWriter
}

/// See [`stderr_writer`].
#[derive(Debug, Clone, Copy)]
pub struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let write = || std::io::stderr().lock().write_all(buf);
        match BARS.get() {
            Some(bars) => bars.suspend(write)?,
            None => write()?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_and_time_left() {
        assert_eq!(rate_and_eta(0, 100, Duration::from_secs(3)), (0.0, None));
        assert_eq!(
            rate_and_eta(450, 1000, Duration::from_secs(3)),
            (150.0, Some(4)),
            "550 rows left at 150 rows/s: 3.7 s, shown as 4"
        );
        assert_eq!(
            rate_and_eta(1000, 1000, Duration::from_millis(1500)),
            (666.7, Some(0))
        );
        // More done than counted (rows made eligible meanwhile): nothing left.
        assert_eq!(rate_and_eta(12, 10, Duration::from_secs(1)).1, Some(0));
    }

    #[test]
    fn the_message_reads_as_a_rate_and_a_time_left() {
        assert_eq!(describe(0.0, None), "starting");
        assert_eq!(describe(1519.6, Some(3)), "1,520 rows/s, 3 s left");
        assert_eq!(describe(88.0, Some(185)), "88 rows/s, 3 min 05 s left");
        assert_eq!(
            describe(1_234_567.0, Some(7260)),
            "1,234,567 rows/s, 2 h 01 min left"
        );
    }

    /// The bar as a terminal shows it (indicatif's in-memory terminal: the escape
    /// sequences applied, the screen read back).
    #[test]
    fn a_bar_shows_the_class_rows_done_of_eligible_rate_and_time_left() {
        let term = indicatif::InMemoryTerm::new(4, 100);
        let bar = class_bar("circulation_history", 10_000);
        bar.set_draw_target(ProgressDrawTarget::term_like(Box::new(term.clone())));
        bar.set_position(4_500);
        bar.set_message(describe(1519.6, Some(4)));
        bar.force_draw();
        let screen = term.contents();
        assert!(
            screen.starts_with(
                "circulation_history [#############>----------------] 4,500/10,000 rows  \
                 1,520 rows/s, 4 s left"
            ),
            "{screen:?}"
        );
        bar.finish_and_clear();
        assert_eq!(term.contents().trim(), "", "a finished class leaves no bar");
    }
}
