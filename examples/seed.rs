//! Fills a database that already has Koha's tables with the demo library's data, for
//! trying Lethe on MariaDB and for looking at query plans:
//!
//! ```sh
//! mariadb -uroot -e 'CREATE DATABASE koha_demo'
//! mariadb -uroot koha_demo < tests/fixtures/koha_mysql.sql
//! cargo run --release --example seed -- mysql://root@127.0.0.1/koha_demo [PATRONS] [CHECKOUTS]
//! ```

use lethe::demo::{self, DemoOptions, DemoTarget};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args.next().ok_or("usage: seed URL [PATRONS] [CHECKOUTS]")?;
    let mut opts = DemoOptions::standard(chrono::Utc::now().date_naive());
    if let Some(p) = args.next() {
        opts.patrons = p.parse()?;
    }
    if let Some(c) = args.next() {
        opts.returned_checkouts = c.parse()?;
    }
    let stats = if url.starts_with("mysql:") || url.starts_with("mariadb:") {
        let pool = sqlx::MySqlPool::connect(&url).await?;
        demo::populate(DemoTarget::MySql(&pool), &opts).await?
    } else {
        let pool = sqlx::SqlitePool::connect(&url).await?;
        demo::populate(DemoTarget::Sqlite(&pool), &opts).await?
    };
    println!("{}", serde_json::to_string_pretty(&stats)?);
    Ok(())
}
