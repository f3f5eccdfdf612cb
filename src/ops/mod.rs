//! Running Lethe as an administrator's service: one file per concern.
//!
//! [`notify`] speaks systemd's notify protocol for the daemon (ready, status, watchdog,
//! stopping).

pub mod notify;
