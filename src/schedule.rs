//! The daemon: `lethe run` without `--once`. Runs the job at each fire time of the
//! cron line in the library's zone, never two at once, until SIGTERM or SIGINT.
//!
//! tokio-cron-scheduler's time-zone cron jobs keep the UTC offset they had when created
//! (its issue #107), so after a daylight-saving change they fire an hour off. Instead,
//! each next fire time is computed with croner in the library's zone, a one-shot job is
//! armed for that instant, and it is re-armed after each run (STACK.md, "Scheduling").
//! The one-shot job only signals this loop; the run itself happens here, so runs never
//! overlap, and shutdown waits for the current batch to commit.
//!
//! Under systemd (`Type=notify`) it reports `READY=1` once the first run is armed,
//! a `STATUS=` line at each change, `WATCHDOG=1` pings from a task of their own, and
//! `STOPPING=1` on shutdown ([`crate::ops::notify`]).

use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Schedule};
use crate::job;
use crate::ops::notify::Notifier;

/// The first fire time strictly after `after`, computed on the library's local clock
/// (croner resolves daylight-saving gaps and folds in the zone). `None` when the
/// pattern never fires.
pub fn next_fire(schedule: &Schedule, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    // Whole seconds: croner keeps the start's fraction of a second in its result.
    let after = after.with_nanosecond(0).unwrap_or(after);
    let local = after.with_timezone(&schedule.timezone);
    schedule
        .cron
        .find_next_occurrence(&local, false)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Why the daemon stopped other than by a signal.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The scheduler could not start or arm a job.
    #[error("scheduler: {0}")]
    Scheduler(#[from] tokio_cron_scheduler::JobSchedulerError),
    /// The cron line never fires.
    #[error("the cron line {0:?} has no next fire time")]
    NoNextFire(String),
}

/// Runs until `cancel` is cancelled. A failed run is logged (and reported by the job);
/// the next scheduled run still happens.
///
/// # Errors
/// [`DaemonError`] when scheduling itself fails.
pub async fn run_daemon(cfg: &Config, cancel: CancellationToken) -> Result<(), DaemonError> {
    let mut sched = JobScheduler::new().await?;
    sched.start().await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    tracing::info!(cron = %cfg.schedule.cron_line, timezone = cfg.schedule.timezone.name(), "daemon started");
    // The slot last run: the next one is armed strictly after it, even when a run takes
    // less time than the scheduler fired early.
    let mut last: Option<DateTime<Utc>> = None;
    let notifier = Notifier::from_env();
    // Pings the watchdog while idle and during runs; says STOPPING=1 on shutdown.
    let _supervisor = notifier.supervise(cancel.clone());
    let mut ready = false;
    let mut last_run: Option<String> = None;
    let result = loop {
        let now = Utc::now();
        let after = last.map_or(now, |l| l.max(now));
        let Some(next) = next_fire(&cfg.schedule, after) else {
            break Err(DaemonError::NoNextFire(cfg.schedule.cron_line.clone()));
        };
        let wait = (next - now).to_std().unwrap_or(Duration::ZERO);
        let signal = tx.clone();
        let armed = Job::new_one_shot_async(wait, move |_id, _l| {
            let signal = signal.clone();
            Box::pin(async move {
                let _ = signal.try_send(());
            })
        })?;
        let id = sched.add(armed).await?;
        let next_local = next.with_timezone(&cfg.schedule.timezone).to_rfc3339();
        tracing::info!(next_run = %next_local, "next run armed");
        let status = match &last_run {
            Some(last) => format!("next run at {next_local}; {last}"),
            None => format!("next run at {next_local}"),
        };
        if ready {
            notifier.status(&status);
        } else {
            notifier.ready(&status);
            ready = true;
        }
        tokio::select! {
            _ = cancel.cancelled() => {
                let _ = sched.remove(&id).await;
                break Ok(());
            }
            _ = rx.recv() => {}
        }
        // tokio-cron-scheduler 0.15 arms a one-shot job in whole seconds (now and the
        // delay both truncated) and checks every 500 ms, so it fires up to 1.5 s early;
        // a run that short would otherwise re-arm the same slot and run twice (with
        // two workers, the one that skipped would run the slot again). Wait out the rest.
        if let Ok(early) = (next - Utc::now()).to_std() {
            tokio::select! {
                _ = cancel.cancelled() => {
                    let _ = sched.remove(&id).await;
                    break Ok(());
                }
                _ = tokio::time::sleep(early) => {}
            }
        }
        last = Some(next);
        notifier.status(&format!("running the run scheduled at {next_local}"));
        match job::run_once(cfg, false, cancel.clone()).await {
            Ok(outcome) => {
                tracing::info!(
                    run_id = outcome.summary.run_id,
                    status = outcome.summary.status.as_str(),
                    "scheduled run finished"
                );
                let mut line = match outcome.summary.run_id {
                    Some(id) => format!("last run {id} {}", outcome.summary.status.as_str()),
                    None => format!("last run {}", outcome.summary.status.as_str()),
                };
                // Logged at ERROR by the job; the daemon goes on (the next run writes
                // the file again), and systemctl status shows it meanwhile.
                if matches!(outcome.metrics, Some(job::MetricsWrite::Failed { .. })) {
                    line.push_str("; metrics file NOT written (see the log)");
                }
                last_run = Some(line);
            }
            Err(e) => {
                tracing::error!(error = %e, "scheduled run failed; the next one is still scheduled");
                last_run = Some(format!("last run failed at {}", Utc::now().to_rfc3339()));
            }
        }
        if cancel.is_cancelled() {
            break Ok(());
        }
    };
    if cancel.is_cancelled() {
        // The supervisor task says STOPPING=1 as soon as the signal arrives, but the
        // loop can end (and drop it) before that task is polled: say it here too, so
        // systemd always hears it (a repeated STOPPING=1 is harmless).
        notifier.stopping("stopping: Lethe exits");
    }
    let _ = sched.shutdown().await;
    tracing::info!("daemon stopped");
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::str::FromStr;

    fn sched(line: &str, tz: &str) -> Schedule {
        Schedule {
            cron_line: line.into(),
            cron: croner::Cron::from_str(line).unwrap(),
            timezone: tz.parse().unwrap(),
        }
    }

    #[test]
    fn fires_at_local_time_across_spring_forward() {
        let s = sched("30 3 * * *", "America/New_York");
        // 2026-03-08 is the spring-forward day in New York (02:00 → 03:00).
        let before = Utc.with_ymd_and_hms(2026, 3, 7, 12, 0, 0).unwrap();
        let a = next_fire(&s, before).unwrap();
        assert_eq!(
            a.with_timezone(&s.timezone).to_rfc3339(),
            "2026-03-08T03:30:00-04:00"
        );
        let b = next_fire(&s, a).unwrap();
        assert_eq!(
            b.with_timezone(&s.timezone).to_rfc3339(),
            "2026-03-09T03:30:00-04:00"
        );
    }

    #[test]
    fn fires_once_on_fall_back_day() {
        let s = sched("30 1 * * *", "America/New_York");
        // 2026-11-01: 01:30 happens twice; fire once.
        let before = Utc.with_ymd_and_hms(2026, 10, 31, 12, 0, 0).unwrap();
        let a = next_fire(&s, before).unwrap();
        let b = next_fire(&s, a).unwrap();
        assert_eq!(
            a.with_timezone(&s.timezone).date_naive().to_string(),
            "2026-11-01"
        );
        assert_eq!(
            b.with_timezone(&s.timezone).date_naive().to_string(),
            "2026-11-02"
        );
    }

    #[test]
    fn keeps_local_time_after_daylight_change() {
        let s = sched("30 2 * * *", "Europe/Berlin");
        let t1 = next_fire(&s, Utc.with_ymd_and_hms(2026, 10, 20, 0, 0, 0).unwrap()).unwrap();
        let t2 = next_fire(&s, Utc.with_ymd_and_hms(2026, 11, 20, 0, 0, 0).unwrap()).unwrap();
        assert_eq!(
            t1.with_timezone(&s.timezone).format("%H:%M").to_string(),
            "02:30"
        );
        assert_eq!(
            t2.with_timezone(&s.timezone).format("%H:%M").to_string(),
            "02:30"
        );
    }
}
