//! Lethe's integration tests: one test binary (STYLE.md), real SQLite files, the
//! MariaDB server on this machine, a real SMTP server process.

mod common;
mod config;
mod cli;
mod engine;
