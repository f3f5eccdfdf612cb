//! systemd's notify protocol (`sd_notify(3)`) for the daemon (`lethe run` without
//! `--once`, unit `Type=notify`): `READY=1` once the schedule is armed, `STATUS=` lines
//! a person reads in `systemctl status lethe`, `WATCHDOG=1` pings, and `STOPPING=1` as
//! soon as a shutdown is requested.
//!
//! The messages go through the `sd-notify` crate to the datagram socket named by
//! `NOTIFY_SOCKET`; without that variable (not under systemd, or `run --once`) every
//! call is a no-op. The crate connects to a path: an abstract socket (`@name`, used by
//! some container managers) is not supported.
//!
//! The watchdog pings come from a tokio task of their own ([`Notifier::supervise`]),
//! at half of `WATCHDOG_USEC` as `sd_watchdog_enabled(3)` recommends. The run is async
//! on the same multi-threaded runtime, so the task keeps pinging while a run is in
//! progress, between its batches as well as while idle, without any call from the
//! engine. What a ping proves is that the process and its runtime are alive and
//! scheduling tasks: a run stuck on a database statement still pings. The engine's own
//! guards (pool acquire timeouts, the single-instance lock) cover that case.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The shortest ping interval used, whatever `WATCHDOG_USEC` says: a zero interval
/// would make tokio's interval panic, and a busy loop helps no one.
const MIN_PING_INTERVAL: Duration = Duration::from_millis(10);

/// Whether a service manager listens, and how often it wants a watchdog ping.
///
/// Cheap to copy: it holds what the environment said at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notifier {
    /// `NOTIFY_SOCKET` is set.
    active: bool,
    /// `WATCHDOG_USEC`, when set for this process (`WATCHDOG_PID` absent or ours).
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from the environment.
    /// The variables are left in place (Lethe starts no child processes).
    pub fn from_env() -> Self {
        let active = std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty());
        let watchdog = sd_notify::watchdog_enabled().filter(|d| !d.is_zero());
        Notifier {
            active,
            watchdog: if active { watchdog } else { None },
        }
    }

    /// A notifier that sends nothing (for callers outside the daemon and for tests).
    pub fn disabled() -> Self {
        Notifier {
            active: false,
            watchdog: None,
        }
    }

    /// Whether a service manager listens (`NOTIFY_SOCKET` is set).
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// How often [`Notifier::supervise`] pings: half of `WATCHDOG_USEC`, at least
    /// 10 ms. `None` when no watchdog is configured.
    pub fn ping_interval(&self) -> Option<Duration> {
        self.watchdog.map(ping_interval)
    }

    /// `READY=1` with a status line: the daemon's start-up is finished (the schedule
    /// is armed). A failure to send is logged; systemd then fails the start by its
    /// `TimeoutStartSec`, which says more than this process could.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)], "READY");
    }

    /// A `STATUS=` line, shown by `systemctl status`. It must carry no patron data:
    /// run ids, counts and times only.
    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)], "STATUS");
    }

    /// `STOPPING=1` with a status line: the daemon is shutting down.
    pub fn stopping(&self, status: &str) {
        self.send(
            &[NotifyState::Stopping, NotifyState::Status(status)],
            "STOPPING",
        );
    }

    /// One `WATCHDOG=1` ping. Returns whether it was sent (or there is no socket).
    pub fn ping(&self) -> bool {
        !self.active || sd_notify::notify(&[NotifyState::Watchdog]).is_ok()
    }

    /// Starts the task that pings the watchdog every [`Notifier::ping_interval`] and
    /// sends `STOPPING=1` once `shutdown` is cancelled (the current batch then
    /// commits, which may take a while: systemd's `TimeoutStopSec` applies, and the
    /// pings go on until the daemon returns). The task ends when the returned
    /// [`Supervisor`] is dropped. Must be called within a tokio runtime.
    pub fn supervise(&self, shutdown: CancellationToken) -> Supervisor {
        if !self.active {
            return Supervisor { task: None };
        }
        let me = *self;
        let task = tokio::spawn(async move {
            let mut ticker = me.ping_interval().map(|p| {
                let mut t = tokio::time::interval(p);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            let mut warned = false;
            let mut stopping = false;
            loop {
                tokio::select! {
                    // A ticker of None never fires: only the shutdown branch is live.
                    _ = tick(ticker.as_mut()) => {
                        if !me.ping() && !warned {
                            warned = true;
                            tracing::warn!("cannot send the watchdog ping to NOTIFY_SOCKET; systemd may restart the service");
                        }
                    }
                    _ = shutdown.cancelled(), if !stopping => {
                        stopping = true;
                        me.stopping("stopping: the current batch commits, then Lethe exits");
                        if ticker.is_none() {
                            break;
                        }
                    }
                }
            }
        });
        Supervisor { task: Some(task) }
    }

    fn send(&self, states: &[NotifyState], what: &str) {
        if !self.active {
            return;
        }
        if let Err(e) = sd_notify::notify(states) {
            tracing::warn!(message_kind = what, error = %e, "cannot notify systemd through NOTIFY_SOCKET");
        }
    }
}

/// Waits for the next tick, or forever without a ticker.
async fn tick(ticker: Option<&mut tokio::time::Interval>) {
    match ticker {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Half the watchdog timeout, at least [`MIN_PING_INTERVAL`].
fn ping_interval(timeout: Duration) -> Duration {
    (timeout / 2).max(MIN_PING_INTERVAL)
}

/// The running watchdog task of [`Notifier::supervise`]; dropping it stops the task.
#[derive(Debug)]
pub struct Supervisor {
    task: Option<JoinHandle<()>>,
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_at_half_the_watchdog_timeout() {
        assert_eq!(
            ping_interval(Duration::from_secs(60)),
            Duration::from_secs(30)
        );
        // WATCHDOG_USEC=1 would otherwise make a zero (panicking) interval.
        assert_eq!(ping_interval(Duration::from_micros(1)), MIN_PING_INTERVAL);
    }

    #[tokio::test]
    async fn a_disabled_notifier_sends_nothing_and_spawns_nothing() {
        let n = Notifier::disabled();
        assert!(!n.is_active());
        assert_eq!(n.ping_interval(), None);
        assert!(n.ping());
        let s = n.supervise(CancellationToken::new());
        assert!(s.task.is_none());
    }
}
