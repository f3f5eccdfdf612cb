//! The metrics of the last run in the Prometheus text format (version 0.0.4), written
//! to a file for node_exporter's textfile collector (`--collector.textfile.directory`;
//! on Debian `/var/lib/prometheus/node-exporter/lethe.prom`).
//!
//! Counts, class and table names, statuses, run ids and times only: nothing about a
//! patron. The file is replaced atomically (a temporary file in the same folder, then
//! a rename), so a scrape never reads half a file; node_exporter ignores the temporary
//! file, whose name does not end in `.prom`.
//!
//! `lethe_last_success_timestamp_seconds` must survive failed runs (an alert fires when
//! it grows old): when the run did not succeed and the caller does not know the last
//! success, the value is carried over from the file being replaced.

use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use crate::summary::{ClassStatus, RunStatus, RunSummary};

/// What the metrics file describes.
#[derive(Debug, Clone, Copy)]
pub struct MetricsInput<'a> {
    /// The run just finished (a failure summary when the run could not start).
    pub summary: &'a RunSummary,
    /// When the last successful run finished, if the caller knows it (from the
    /// ledger). Ignored when `summary` itself succeeded.
    pub last_success: Option<DateTime<Utc>>,
    /// Per class, rows past their period and not exempt after the run (from
    /// `engine::compliance`), when it was checked.
    pub overdue: Option<&'a [(String, u64)]>,
    /// Whether the ledger's hash chain verified after the run, when it was checked.
    pub ledger_verified: Option<bool>,
}

/// Every run status, so each `lethe_last_run_status` series is present (1 for the
/// status of the run, 0 for the others) and alerts need no `absent()`.
const RUN_STATUSES: [RunStatus; 5] = [
    RunStatus::Ok,
    RunStatus::Skipped,
    RunStatus::Failed,
    RunStatus::Tripped,
    RunStatus::Interrupted,
];

/// Every class status, for the same reason.
const CLASS_STATUSES: [ClassStatus; 4] = [
    ClassStatus::Ok,
    ClassStatus::Skipped,
    ClassStatus::Failed,
    ClassStatus::Tripped,
];

const LAST_SUCCESS: &str = "lethe_last_success_timestamp_seconds";

/// Renders the metrics in the Prometheus text format. `last_success` is used as given
/// (see [`write_textfile`] for carrying it over).
pub fn render(input: &MetricsInput<'_>) -> String {
    let s = input.summary;
    let mut out = String::new();
    let mut family = |name: &str, help: &str, kind: &str, samples: &[(String, String)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let one = |v: String| vec![(String::new(), v)];
    family(
        "lethe_last_run_start_timestamp_seconds",
        "When the last run started, Unix time.",
        "gauge",
        &one(seconds(s.started_at)),
    );
    if let Some(end) = s.finished_at {
        family(
            "lethe_last_run_end_timestamp_seconds",
            "When the last run ended, Unix time.",
            "gauge",
            &one(seconds(end)),
        );
        family(
            "lethe_last_run_duration_seconds",
            "How long the last run took.",
            "gauge",
            &one(format!(
                "{:.3}",
                (end - s.started_at).num_milliseconds().max(0) as f64 / 1e3
            )),
        );
    }
    if let Some(id) = s.run_id {
        family(
            "lethe_last_run_id",
            "The ledger id of the last run.",
            "gauge",
            &one(id.to_string()),
        );
    }
    family(
        "lethe_last_run_status",
        "1 for the status of the last run (ok, skipped, failed, tripped, interrupted), 0 for the others.",
        "gauge",
        &RUN_STATUSES
            .iter()
            .map(|st| {
                (
                    labels(&[("status", st.as_str())]),
                    u8::from(*st == s.status).to_string(),
                )
            })
            .collect::<Vec<_>>(),
    );
    family(
        "lethe_last_run_mode",
        "1 for the mode of the last run (enforce or dry-run).",
        "gauge",
        &[(labels(&[("mode", s.mode.as_str())]), "1".into())],
    );
    family(
        "lethe_last_run_affected_rows",
        "Rows the last run changed, over all classes.",
        "gauge",
        &one(s.total_affected().to_string()),
    );
    let last_success = if s.status == RunStatus::Ok {
        Some(s.finished_at.unwrap_or(s.started_at))
    } else {
        input.last_success
    };
    if let Some(t) = last_success {
        family(
            LAST_SUCCESS,
            "When the last run with status ok ended, Unix time.",
            "gauge",
            &one(seconds(t)),
        );
    }
    let per_class = |f: &dyn Fn(&crate::summary::ClassSummary) -> u64| {
        s.classes
            .iter()
            .map(|c| {
                (
                    labels(&[("class", &c.name), ("table", &c.table)]),
                    f(c).to_string(),
                )
            })
            .collect::<Vec<_>>()
    };
    family(
        "lethe_class_eligible_rows",
        "Rows past their period and not exempt when the class started, in the last run.",
        "gauge",
        &per_class(&|c| c.eligible),
    );
    family(
        "lethe_class_affected_rows",
        "Rows the class deleted or anonymized in the last run.",
        "gauge",
        &per_class(&|c| c.affected),
    );
    let mut kept = Vec::new();
    for c in &s.classes {
        for (reason, n) in [
            ("opt_in", c.kept.opt_in),
            ("legal_hold", c.kept.legal_hold),
            ("obligations", c.kept.obligations),
            ("protected", c.kept.protected),
        ] {
            kept.push((
                labels(&[("class", &c.name), ("table", &c.table), ("reason", reason)]),
                n.to_string(),
            ));
        }
    }
    family(
        "lethe_class_kept_rows",
        "Rows past their period that an exemption kept in the last run, by reason.",
        "gauge",
        &kept,
    );
    let mut statuses = Vec::new();
    for c in &s.classes {
        for st in CLASS_STATUSES {
            statuses.push((
                labels(&[("class", &c.name), ("status", st.as_str())]),
                u8::from(st == c.status).to_string(),
            ));
        }
    }
    family(
        "lethe_class_status",
        "1 for the status of the class in the last run (ok, skipped, failed, tripped), 0 for the others.",
        "gauge",
        &statuses,
    );
    if let Some(overdue) = input.overdue {
        family(
            "lethe_class_overdue_rows",
            "Rows past their period and not exempt after the last run (should be 0).",
            "gauge",
            &overdue
                .iter()
                .map(|(class, n)| (labels(&[("class", class)]), n.to_string()))
                .collect::<Vec<_>>(),
        );
    }
    if let Some(ok) = input.ledger_verified {
        family(
            "lethe_ledger_verified",
            "1 when the ledger's hash chain verified after the last run, 0 when it is broken.",
            "gauge",
            &one(u8::from(ok).to_string()),
        );
    }
    out
}

/// Writes [`render`]'s text to `path`, atomically: a temporary file in the same
/// folder, flushed to disk, then renamed over `path`. When the run did not succeed
/// and `input.last_success` is `None`, the last success is carried over from the file
/// being replaced, if it has one.
///
/// # Errors
/// The folder is missing or not writable, or the disk is full; the previous file, if
/// any, is left as it was, and the temporary file is removed.
pub fn write_textfile(path: &Path, input: &MetricsInput<'_>) -> io::Result<()> {
    let mut input = *input;
    if input.summary.status != RunStatus::Ok && input.last_success.is_none() {
        input.last_success = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| previous_last_success(&t));
    }
    let text = render(&input);
    let tmp = temp_path(path);
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// `.NAME.tmp.PID` beside `path`: same folder (so the rename is atomic), not `*.prom`
/// (so the collector skips it), per process (so two writers do not share one).
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "lethe.prom".into());
    path.with_file_name(format!(".{name}.tmp.{}", std::process::id()))
}

/// The last-success sample of a metrics file written earlier.
fn previous_last_success(text: &str) -> Option<DateTime<Utc>> {
    let value = text.lines().find_map(|l| {
        l.strip_prefix(LAST_SUCCESS)
            .and_then(|rest| rest.strip_prefix(' '))
    })?;
    let secs: f64 = value.trim().parse().ok()?;
    if !secs.is_finite() {
        return None;
    }
    DateTime::from_timestamp_millis((secs * 1e3).round() as i64)
}

/// Unix time in seconds, to the millisecond.
fn seconds(t: DateTime<Utc>) -> String {
    format!("{:.3}", t.timestamp_millis() as f64 / 1e3)
}

/// `{a="x",b="y"}` with values escaped as the text format requires.
fn labels(pairs: &[(&str, &str)]) -> String {
    let mut s = String::from("{");
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(k);
        s.push_str("=\"");
        for ch in v.chars() {
            match ch {
                '\\' => s.push_str("\\\\"),
                '"' => s.push_str("\\\""),
                '\n' => s.push_str("\\n"),
                c => s.push(c),
            }
        }
        s.push('"');
    }
    s.push('}');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::{Action, ClassSummary, Kept, Mode};
    use chrono::TimeZone;

    fn summary(status: RunStatus) -> RunSummary {
        let started = Utc.with_ymd_and_hms(2026, 12, 1, 7, 30, 0).unwrap();
        RunSummary {
            run_id: Some(12),
            mode: Mode::Enforce,
            started_at: started,
            finished_at: Some(started + chrono::Duration::milliseconds(2500)),
            status,
            classes: vec![ClassSummary {
                name: "circulation_history".into(),
                table: "old_issues".into(),
                action: Action::Anonymize,
                cutoff: started.fixed_offset(),
                eligible: 412,
                affected: 412,
                kept: Kept {
                    opt_in: 37,
                    legal_hold: 0,
                    obligations: 5,
                    protected: 0,
                },
                status: ClassStatus::Ok,
                error: None,
            }],
            error: None,
            notices: Vec::new(),
        }
    }

    /// Every line is a comment or `name{labels} value` with a numeric value.
    fn assert_exposition_format(text: &str) {
        let sample = regex::Regex::new(
            r#"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? -?[0-9.eE+]+$"#,
        )
        .unwrap();
        for line in text.lines() {
            assert!(
                line.starts_with("# HELP ") || line.starts_with("# TYPE ") || sample.is_match(line),
                "not the text format: {line:?}"
            );
        }
    }

    #[test]
    fn a_successful_run_gives_counts_per_class_and_a_last_success() {
        let s = summary(RunStatus::Ok);
        let overdue = vec![("circulation_history".to_string(), 0)];
        let text = render(&MetricsInput {
            summary: &s,
            last_success: None,
            overdue: Some(&overdue),
            ledger_verified: Some(true),
        });
        assert_exposition_format(&text);
        for line in [
            "lethe_last_run_start_timestamp_seconds 1796110200.000",
            "lethe_last_run_end_timestamp_seconds 1796110202.500",
            "lethe_last_run_duration_seconds 2.500",
            "lethe_last_run_id 12",
            "lethe_last_run_status{status=\"ok\"} 1",
            "lethe_last_run_status{status=\"failed\"} 0",
            "lethe_last_run_mode{mode=\"enforce\"} 1",
            "lethe_last_success_timestamp_seconds 1796110202.500",
            "lethe_class_affected_rows{class=\"circulation_history\",table=\"old_issues\"} 412",
            "lethe_class_kept_rows{class=\"circulation_history\",table=\"old_issues\",reason=\"opt_in\"} 37",
            "lethe_class_status{class=\"circulation_history\",status=\"ok\"} 1",
            "lethe_class_overdue_rows{class=\"circulation_history\"} 0",
            "lethe_ledger_verified 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }

    #[test]
    fn a_failed_run_keeps_the_last_success_of_the_file_it_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lethe.prom");
        let ok = summary(RunStatus::Ok);
        let input = |s| MetricsInput {
            summary: s,
            last_success: None,
            overdue: None,
            ledger_verified: None,
        };
        write_textfile(&path, &input(&ok)).unwrap();
        let mut failed = summary(RunStatus::Failed);
        failed.started_at += chrono::Duration::days(1);
        failed.finished_at = Some(failed.started_at);
        write_textfile(&path, &input(&failed)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("lethe_last_success_timestamp_seconds 1796110202.500"),
            "{text}"
        );
        assert!(text.contains("lethe_last_run_status{status=\"failed\"} 1"));
        // Only the .prom file is left: the temporary file was renamed.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["lethe.prom"]);
    }

    #[test]
    fn a_missing_folder_is_an_error_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such-folder").join("lethe.prom");
        let s = summary(RunStatus::Ok);
        let input = MetricsInput {
            summary: &s,
            last_success: None,
            overdue: None,
            ledger_verified: None,
        };
        assert!(write_textfile(&path, &input).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(
            labels(&[("class", "a\"b\\c\nd")]),
            r#"{class="a\"b\\c\nd"}"#
        );
    }
}
