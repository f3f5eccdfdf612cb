//! Lethe's integration tests: one test binary (STYLE.md), real SQLite files, the
//! MariaDB and PostgreSQL servers on this machine, a real SMTP server process.

#[macro_use]
mod common;
mod adaptive;
mod browser;
mod canary;
mod cli;
mod config;
mod config_fuzz;
mod crash;
mod daemon;
#[macro_use]
mod engine;
mod consent;
mod evergreen;
mod evergreen_fixture;
mod inventory;
mod keyless;
mod ledger;
mod legal_hold;
mod linked;
mod logs;
mod manual;
mod monitoring;
mod outage;
mod publish;
mod realistic;
mod refused_processing;
mod report;
mod schema;
mod service;
mod worker_lock;
