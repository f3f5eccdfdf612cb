//! Running Lethe as an administrator's service: one file per concern.
//!
//! [`notify`] speaks systemd's notify protocol for the daemon (ready, status, watchdog,
//! stopping); [`manual`] generates the man pages and shell completions from the command
//! line's definition.

pub mod manual;
pub mod notify;
