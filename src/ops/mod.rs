//! Running Lethe as an administrator's service: one file per concern.
//!
//! [`notify`] speaks systemd's notify protocol for the daemon (ready, status, watchdog,
//! stopping); [`manual`] generates the man pages and shell completions from the command
//! line's definition; [`metrics`] writes the Prometheus text file of a run for
//! node_exporter's textfile collector; [`status`] is `lethe status` (last run, next
//! run, overdue, ledger) and its Nagios-style check.

pub mod manual;
pub mod metrics;
pub mod notify;
pub mod status;
