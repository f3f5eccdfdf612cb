//! Lethe's integration tests: one test binary (STYLE.md), real SQLite files, the
//! MariaDB server on this machine, a real SMTP server process.

#[macro_use]
mod common;
mod cli;
mod config;
mod crash;
mod daemon;
#[macro_use]
mod engine;
mod ledger;
mod outage;
mod publish;
mod realistic;
mod report;
