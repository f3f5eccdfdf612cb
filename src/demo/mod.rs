// TEMP STUB: the demo generator lands from a helper and replaces this file.
#![allow(missing_docs)]
#[derive(Debug, Clone)]
pub struct DemoOptions { pub seed: u64, pub today: chrono::NaiveDate, pub patrons: usize, pub returned_checkouts: usize, pub canary: Option<String> }
impl DemoOptions { pub fn standard(today: chrono::NaiveDate) -> Self { DemoOptions { seed: 4509, today, patrons: 5000, returned_checkouts: 100_000, canary: None } } }
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DemoStats { pub patrons: u64, pub staff: u64, pub guarantor_pairs: u64, pub returned_checkouts: u64, pub current_checkouts: u64, pub old_holds: u64, pub current_holds: u64, pub accountlines: u64, pub anonymous_patron: i64 }
#[derive(Debug, thiserror::Error)] pub enum DemoError { #[error("db {0}")] Database(#[from] sqlx::Error) }
pub async fn create_library_if_absent(_path: &std::path::Path, _opts: &DemoOptions) -> Result<Option<DemoStats>, DemoError> { Ok(None) }
pub async fn create_sqlite_schema(_pool: &sqlx::SqlitePool) -> Result<(), DemoError> { Ok(()) }
