//! Lethe's integration tests: one test binary (STYLE.md), real SQLite files, the
//! MariaDB and PostgreSQL servers on this machine, a real SMTP server process.

#[macro_use]
mod common;
mod cli;
mod config;
mod config_fuzz;
mod crash;
mod daemon;
#[macro_use]
mod engine;
mod evergreen;
mod evergreen_fixture;
mod ledger;
mod legal_hold;
mod logs;
mod manual;
mod outage;
mod publish;
mod realistic;
mod report;
mod service;
mod worker_lock;
