//! Lethe enforces data-retention policy on library systems (Koha, Evergreen, or any
//! schema mapped in YAML): it purges or anonymizes patron records past their retention
//! period, respects patron opt-in, legal holds and open obligations, records every run
//! in a hash-chained ledger, and emails directors a summary of counts.
//!
//! Layout: [`config`] (retention.yaml), [`policy`] (periods and cutoffs), [`db`]
//! (pools, SQL, schema checks, the catalog's indexes), [`inventory`] (where personal data
//! is and what covers it; index advice), [`engine`] (plan and enforce), [`ledger`] (the record
//! of runs), [`report`] (the email and outbox), [`schedule`] (the daemon), [`job`] (one
//! whole run: connect, guard, enforce, report), [`progress`] (bars on a terminal,
//! progress events in the logs), [`demo`] (the embedded demo library),
//! [`ops`] (running as a service: systemd notify, man pages and completions, metrics file).

pub mod config;
pub mod consent;
pub mod db;
pub mod demo;
pub mod engine;
pub mod inventory;
pub mod job;
pub mod ledger;
pub mod legal_hold;
pub mod ops;
pub mod policy;
pub mod progress;
pub mod pseudonym;
pub mod publish;
pub mod report;
pub mod schedule;
pub mod summary;
