//! Test support: real databases (SQLite files, the MariaDB server on this machine),
//! each test its own database, dropped after; a scenario builder for Koha-shaped rows.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{DateTime, TimeZone, Utc};
use lethe::config::{self, Backend, Config};
use sqlx::{AssertSqlSafe, Row};

pub const MYSQL_ROOT: &str = "mysql://root@127.0.0.1:3306";
/// The PostgreSQL server on this machine (trust authentication on loopback).
pub const PG_ROOT: &str = "postgres://postgres@127.0.0.1:5432";

/// The fixed "now" of engine tests: 2026-06-15 12:00:00 UTC = 08:00:00 in New York
/// (EDT). 30 days before is local 2026-05-16 08:00:00; 2 years before is 2024-06-15.
pub fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 15, 12, 0, 0).unwrap()
}

/// The two counts of Koha rows anonymized so far, for [`TestDb::ints`]: old_issues and
/// old_reserves rows that point to the anonymous patron `anon` and carry no note
/// (anonymizing clears the notes too, also on rows given to the anonymous patron
/// earlier).
pub fn koha_anonymized_sql(anon: i64) -> [String; 2] {
    [
        format!("SELECT COUNT(*) FROM old_issues WHERE borrowernumber = {anon} AND note IS NULL"),
        format!(
            "SELECT COUNT(*) FROM old_reserves WHERE borrowernumber = {anon} AND reservenotes IS NULL"
        ),
    ]
}

/// The ledger's count of rows changed, for [`TestDb::ints`]: of `class`, or of every
/// class.
pub fn ledger_sql(class: Option<&str>) -> String {
    match class {
        Some(c) => {
            format!("SELECT COALESCE(SUM(affected), 0) FROM lethe_run_classes WHERE class = '{c}'")
        }
        None => "SELECT COALESCE(SUM(affected), 0) FROM lethe_run_classes".to_string(),
    }
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A test database and a raw pool to seed and inspect it.
pub struct TestDb {
    pub url: String,
    pub backend: Backend,
    pub raw: Raw,
    _dir: Option<tempfile::TempDir>,
    mysql_name: Option<String>,
    pg_name: Option<String>,
    columns: std::sync::Mutex<HashMap<String, Vec<String>>>,
}

pub enum Raw {
    Sqlite(sqlx::SqlitePool),
    MySql(sqlx::MySqlPool),
    Postgres(sqlx::PgPool),
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = &self.mysql_name {
            // Drop the test database with the CLI: Drop cannot await.
            let _ = std::process::Command::new("mariadb")
                .args([
                    "-uroot",
                    "-h127.0.0.1",
                    "-e",
                    &format!("DROP DATABASE IF EXISTS `{name}`"),
                ])
                .status();
        }
        if let Some(name) = &self.pg_name {
            let _ = std::process::Command::new("psql")
                .args([
                    "-h127.0.0.1",
                    "-Upostgres",
                    "-dpostgres",
                    "-qc",
                    &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
                ])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// The project's own MariaDB fixture, or the DDL named by `LETHE_KOHA_DDL` (CI also
/// runs the MariaDB tests against Koha's own kohastructure.sql).
pub fn mysql_ddl() -> String {
    let path = std::env::var("LETHE_KOHA_DDL")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/koha_mysql.sql")
        });
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    // Koha's file declares sip_accounts.patron_branchcode_in_ao twice (ERROR 1060):
    // drop the second, identical line (shared/fixtures/koha/SOURCE.md).
    let mut seen = false;
    text.lines()
        .filter(|l| {
            if l.contains("`patron_branchcode_in_ao`") {
                if seen {
                    return false;
                }
                seen = true;
            }
            true
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether the PostgreSQL server must be reachable (in CI, or when asked).
pub fn pg_required() -> bool {
    std::env::var("CI").is_ok() || std::env::var("LETHE_REQUIRE_PG").is_ok()
}

pub fn mysql_required() -> bool {
    std::env::var("CI").is_ok() || std::env::var("LETHE_REQUIRE_MYSQL").is_ok()
}

impl TestDb {
    /// A new SQLite file with the demo's Koha-shaped schema.
    pub async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("library.db");
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                url.parse::<sqlx::sqlite::SqliteConnectOptions>()
                    .unwrap()
                    .foreign_keys(true),
            )
            .await
            .unwrap();
        lethe::demo::create_sqlite_schema(&pool).await.unwrap();
        TestDb {
            url: format!("sqlite://{}", path.display()),
            backend: Backend::Sqlite,
            raw: Raw::Sqlite(pool),
            _dir: Some(dir),
            mysql_name: None,
            pg_name: None,
            columns: Default::default(),
        }
    }

    /// A new PostgreSQL database loaded with `ddl`; `None` (with a visible message)
    /// when the server is not reachable outside CI. The database is dropped with the
    /// value.
    pub async fn postgres(ddl: &str) -> Option<TestDb> {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("lethe_t{}_{}_{}", std::process::id(), n, rand_suffix());
        let admin = match sqlx::PgPool::connect(&format!("{PG_ROOT}/postgres")).await {
            Ok(p) => p,
            Err(e) => {
                if pg_required() {
                    panic!("PostgreSQL at 127.0.0.1:5432 is required here and unreachable: {e}");
                }
                eprintln!("SKIPPED: PostgreSQL unreachable ({e})");
                return None;
            }
        };
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let url = format!("{PG_ROOT}/{name}");
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&url)
            .await
            .unwrap();
        {
            let mut conn = pool.acquire().await.unwrap();
            sqlx::raw_sql(AssertSqlSafe(ddl.to_string()))
                .execute(&mut *conn)
                .await
                .unwrap_or_else(|e| panic!("loading the PostgreSQL fixture: {e}"));
        }
        Some(TestDb {
            url,
            backend: Backend::Postgres,
            raw: Raw::Postgres(pool),
            _dir: None,
            mysql_name: None,
            pg_name: Some(name),
            columns: Default::default(),
        })
    }

    /// A new MariaDB database loaded with the Koha DDL; `None` (with a visible message)
    /// when the server is not reachable outside CI.
    pub async fn mysql() -> Option<TestDb> {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("lethe_t{}_{}_{}", std::process::id(), n, rand_suffix());
        let admin = match sqlx::MySqlPool::connect(&format!("{MYSQL_ROOT}/")).await {
            Ok(p) => p,
            Err(e) => {
                if mysql_required() {
                    panic!("MariaDB at 127.0.0.1:3306 is required here and unreachable: {e}");
                }
                eprintln!("SKIPPED: MariaDB unreachable ({e})");
                return None;
            }
        };
        sqlx::raw_sql(AssertSqlSafe(format!(
            "CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
        )))
        .execute(&admin)
        .await
        .unwrap();
        admin.close().await;
        let url = format!("{MYSQL_ROOT}/{name}");
        let pool = sqlx::mysql::MySqlPoolOptions::new()
            .max_connections(2)
            .connect(&url)
            .await
            .unwrap();
        let db = TestDb {
            url,
            backend: Backend::MySql,
            raw: Raw::MySql(pool),
            _dir: None,
            mysql_name: Some(name),
            pg_name: None,
            columns: Default::default(),
        };
        let ddl = mysql_ddl();
        if let Raw::MySql(p) = &db.raw {
            let mut conn = p.acquire().await.unwrap();
            sqlx::raw_sql(AssertSqlSafe(ddl))
                .execute(&mut *conn)
                .await
                .unwrap();
        }
        Some(db)
    }

    pub async fn exec(&self, sql: &str) {
        match &self.raw {
            Raw::Sqlite(p) => sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
                .execute(p)
                .await
                .map(|_| ()),
            Raw::MySql(p) => sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
                .execute(p)
                .await
                .map(|_| ()),
            Raw::Postgres(p) => sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
                .execute(p)
                .await
                .map(|_| ()),
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// A single integer (NULL as None).
    pub async fn int(&self, sql: &str) -> Option<i64> {
        let q = format!("SELECT CAST(({sql}) AS {}) AS v", self.int_type());
        match &self.raw {
            Raw::Sqlite(p) => sqlx::query(AssertSqlSafe(q))
                .fetch_one(p)
                .await
                .unwrap()
                .get::<Option<i64>, _>(0),
            Raw::MySql(p) => sqlx::query(AssertSqlSafe(q))
                .fetch_one(p)
                .await
                .unwrap()
                .get::<Option<i64>, _>(0),
            Raw::Postgres(p) => sqlx::query(AssertSqlSafe(q))
                .fetch_one(p)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
                .get::<Option<i64>, _>(0),
        }
    }

    /// Several integers read in one statement, so from one snapshot (NULL as 0): a
    /// server session of a killed process may still commit after a first read and
    /// before a second, and two reads would then disagree with each other.
    pub async fn ints(&self, sqls: &[String]) -> Vec<i64> {
        let ty = self.int_type();
        let cols: Vec<String> = sqls
            .iter()
            .map(|s| format!("CAST(({s}) AS {ty})"))
            .collect();
        let q = format!("SELECT {}", cols.join(", "));
        // One arm per pool type: the rows differ in type, the reading does not.
        macro_rules! one_row {
            ($pool:expr) => {
                sqlx::query(AssertSqlSafe(q.clone()))
                    .fetch_one($pool)
                    .await
                    .map(|r| {
                        (0..sqls.len())
                            .map(|i| r.get::<Option<i64>, _>(i))
                            .collect()
                    })
            };
        }
        let row = match &self.raw {
            Raw::Sqlite(p) => one_row!(p),
            Raw::MySql(p) => one_row!(p),
            Raw::Postgres(p) => one_row!(p),
        };
        let row: Vec<Option<i64>> = row.unwrap_or_else(|e| panic!("{q}: {e}"));
        row.into_iter().map(|v| v.unwrap_or(0)).collect()
    }

    pub async fn count(&self, sql_where: &str) -> i64 {
        self.int(&format!("SELECT COUNT(*) FROM {sql_where}"))
            .await
            .unwrap_or(0)
    }

    fn int_type(&self) -> &'static str {
        match self.backend {
            Backend::MySql => "SIGNED",
            Backend::Postgres => "BIGINT",
            _ => "INTEGER",
        }
    }

    pub async fn table_columns(&self, table: &str) -> Vec<String> {
        if let Some(c) = self.columns.lock().unwrap().get(table) {
            return c.clone();
        }
        let cols: Vec<String> = match &self.raw {
            Raw::Sqlite(p) => sqlx::query_scalar("SELECT name FROM pragma_table_info(?)")
                .bind(table)
                .fetch_all(p)
                .await
                .unwrap(),
            Raw::MySql(p) => sqlx::query_scalar(
                "SELECT CAST(column_name AS CHAR) FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = ?",
            )
            .bind(table)
            .fetch_all(p)
            .await
            .unwrap(),
            Raw::Postgres(p) => {
                let (schema, name) = table.split_once('.').unwrap_or(("public", table));
                sqlx::query_scalar(
                    "SELECT column_name::text FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2",
                )
                .bind(schema)
                .bind(name)
                .fetch_all(p)
                .await
                .unwrap()
            }
        };
        self.columns
            .lock()
            .unwrap()
            .insert(table.to_string(), cols.clone());
        cols
    }

    /// Inserts a row, leaving out columns the table does not have (our fixtures are a
    /// subset of Koha's real schema; Koha's has NOT NULL columns ours lacks).
    pub async fn insert(&self, table: &str, values: &[(&str, V)]) {
        let cols = self.table_columns(table).await;
        assert!(!cols.is_empty(), "no table {table}");
        let kept: Vec<&(&str, V)> = values
            .iter()
            .filter(|(c, _)| cols.iter().any(|x| x == c))
            .collect();
        let q = |c: &str| match self.backend {
            Backend::MySql => format!("`{c}`"),
            _ => format!("\"{c}\""),
        };
        let names: Vec<String> = kept.iter().map(|(c, _)| q(c)).collect();
        let vals: Vec<String> = kept.iter().map(|(_, v)| v.sql()).collect();
        // `schema.table` (PostgreSQL) is quoted part by part.
        let table_sql = table.split('.').map(q).collect::<Vec<_>>().join(".");
        self.exec(&format!(
            "INSERT INTO {} ({}) VALUES ({})",
            table_sql,
            names.join(", "),
            vals.join(", ")
        ))
        .await;
    }

    /// A config for this database: the Koha profile plus `extra` YAML lines.
    pub fn config(&self, extra: &str) -> Config {
        config_for(&self.url, extra)
    }
}

fn rand_suffix() -> u32 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos() % 100_000)
        .unwrap_or(0)
}

/// A SQL literal for test seeding (test data only; Lethe itself binds every value).
#[derive(Debug, Clone)]
pub enum V {
    I(i64),
    F(f64),
    S(String),
    Null,
}

impl V {
    fn sql(&self) -> String {
        match self {
            V::I(i) => i.to_string(),
            V::F(f) => f.to_string(),
            V::S(s) => format!("'{}'", s.replace('\'', "''")),
            V::Null => "NULL".into(),
        }
    }
}

pub fn s(x: &str) -> V {
    V::S(x.to_string())
}

pub fn i(x: i64) -> V {
    V::I(x)
}

pub fn config_for(url: &str, extra: &str) -> Config {
    config_with_profile(url, "koha", extra)
}

/// [`config_for`] with another profile (`evergreen`, `none`).
pub fn config_with_profile(url: &str, profile: &str, extra: &str) -> Config {
    // `safety:` and `report:` blocks in `extra` join the base ones.
    let mut safety = String::new();
    let mut report = String::new();
    let mut rest = String::new();
    let mut into: Option<&mut String> = None;
    for line in extra.lines() {
        if line == "safety:" {
            into = Some(&mut safety);
        } else if line == "report:" {
            into = Some(&mut report);
        } else if let (true, Some(buf)) = (line.starts_with("  "), into.as_deref_mut()) {
            buf.push_str(line);
            buf.push('\n');
        } else {
            into = None;
            rest.push_str(line);
            rest.push('\n');
        }
    }
    let yaml = format!(
        "library: Test Library\n\
         database:\n  url: \"{url}\"\n\
         schedule:\n  cron: \"30 2 * * *\"\n  timezone: America/New_York\n\
         safety:\n  max_fraction: 1.0\n{safety}\
         report:\n  outbox: outbox\n{report}\
         profile: {profile}\n{rest}"
    );
    let dir = std::env::temp_dir();
    config::parse_str(&yaml, "test.yaml", &dir, &|_| None).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

/// The Koha reference rows every scenario needs: a branch, categories (adult, child,
/// staff), a biblio with items, the anonymous patron (borrowernumber 1) named in
/// systempreferences.
pub async fn koha_reference(db: &TestDb, anonymous: Option<&str>) {
    db.insert(
        "branches",
        &[("branchcode", s("MAIN")), ("branchname", s("Main Library"))],
    )
    .await;
    for (code, ty) in [("PT", "A"), ("CH", "C"), ("ST", "S")] {
        db.insert(
            "categories",
            &[
                ("categorycode", s(code)),
                ("description", s(code)),
                ("category_type", s(ty)),
            ],
        )
        .await;
    }
    db.insert(
        "biblio",
        &[
            ("biblionumber", i(1)),
            ("title", s("A Book")),
            ("frameworkcode", s("")),
            ("datecreated", s("2020-01-01")),
        ],
    )
    .await;
    if !db.table_columns("biblioitems").await.is_empty() {
        db.insert(
            "biblioitems",
            &[
                ("biblioitemnumber", i(1)),
                ("biblionumber", i(1)),
                ("itemtype", s("BK")),
            ],
        )
        .await;
    }
    for n in 1..=40 {
        db.insert(
            "items",
            &[
                ("itemnumber", i(n)),
                ("biblionumber", i(1)),
                ("biblioitemnumber", i(1)),
                ("barcode", s(&format!("B{n:05}"))),
                ("homebranch", s("MAIN")),
                ("holdingbranch", s("MAIN")),
            ],
        )
        .await;
    }
    patron(db, 1, 1, "2099-12-31", "PT").await;
    db.insert(
        "systempreferences",
        &[
            ("variable", s("AnonymousPatron")),
            ("value", s(anonymous.unwrap_or("1"))),
            ("type", s("Integer")),
        ],
    )
    .await;
}

/// A patron with the given privacy, expiry date and category.
pub async fn patron(db: &TestDb, n: i64, privacy: i64, expiry: &str, category: &str) {
    db.insert(
        "borrowers",
        &[
            ("borrowernumber", i(n)),
            ("cardnumber", s(&format!("C{n:06}"))),
            ("surname", s(&format!("Surname{n}"))),
            ("firstname", s("First")),
            ("branchcode", s("MAIN")),
            ("categorycode", s(category)),
            ("dateexpiry", s(expiry)),
            ("privacy", i(privacy)),
        ],
    )
    .await;
}

/// A returned checkout.
pub async fn old_issue(db: &TestDb, id: i64, borrower: Option<i64>, returndate: Option<&str>) {
    db.insert(
        "old_issues",
        &[
            ("issue_id", i(id)),
            ("borrowernumber", borrower.map(V::I).unwrap_or(V::Null)),
            ("itemnumber", i(1)),
            ("issuedate", s("2020-01-01 10:00:00")),
            ("returndate", returndate.map(s).unwrap_or(V::Null)),
            ("branchcode", s("MAIN")),
        ],
    )
    .await;
}

/// A fine or credit.
pub async fn accountline(
    db: &TestDb,
    id: i64,
    borrower: Option<i64>,
    old_issue: Option<i64>,
    outstanding: f64,
) {
    db.insert(
        "accountlines",
        &[
            ("accountlines_id", i(id)),
            ("borrowernumber", borrower.map(V::I).unwrap_or(V::Null)),
            ("old_issue_id", old_issue.map(V::I).unwrap_or(V::Null)),
            ("amount", V::F(outstanding)),
            ("amountoutstanding", V::F(outstanding)),
            ("debit_type_code", V::Null),
            ("interface", s("intranet")),
            ("date", s("2026-01-01 10:00:00")),
        ],
    )
    .await;
}

/// One test per backend (`mod $name { sqlite, mysql, postgres }`), each on a scratch
/// database: SQLite and MariaDB (beside the Koha fixture) with `$sqlite` / `$mysql`
/// run first, PostgreSQL created with `$pg`. The form with `pg = $pg` loads nothing
/// more into SQLite and MariaDB. The expressions are evaluated inside `mod $name`, so
/// a test file's own constants are `super::NAME`. MariaDB and PostgreSQL tests return
/// at once when their server is not there (`TestDb::mysql`/`postgres`).
macro_rules! three_backends_with {
    ($name:ident, $sqlite:expr, $mysql:expr, $pg:expr) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread")]
            async fn sqlite() {
                let db = $crate::common::TestDb::sqlite().await;
                db.exec($sqlite).await;
                super::$name(db).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn mysql() {
                if let Some(db) = $crate::common::TestDb::mysql().await {
                    db.exec($mysql).await;
                    super::$name(db).await
                }
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn postgres() {
                if let Some(db) = $crate::common::TestDb::postgres($pg).await {
                    super::$name(db).await
                }
            }
        }
    };
    ($name:ident, pg = $pg:expr) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread")]
            async fn sqlite() {
                super::$name($crate::common::TestDb::sqlite().await).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn mysql() {
                if let Some(db) = $crate::common::TestDb::mysql().await {
                    super::$name(db).await
                }
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn postgres() {
                if let Some(db) = $crate::common::TestDb::postgres($pg).await {
                    super::$name(db).await
                }
            }
        }
    };
}
