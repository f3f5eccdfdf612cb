//! Database access: one typed pool per backend (SQLite, MySQL/MariaDB, PostgreSQL),
//! Lethe's own migrations, schema checks against the catalog, and the helpers the
//! engine uses to run sea-query statements inside transactions; the run lock that keeps
//! one worker active among replicas is in [`lock`].
//!
//! `sqlx::Any` is not used: it cannot bind chrono types and does not translate
//! placeholders (STACK.md). Every dynamic statement is built by sea-query from
//! validated identifiers; only such SQL is wrapped in `AssertSqlSafe`.

pub mod lock;
pub mod sql;

use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_query::{MysqlQueryBuilder, PostgresQueryBuilder, SqliteQueryBuilder};
use sea_query_sqlx::SqlxBinder;
use secrecy::ExposeSecret;
use sqlx::{AssertSqlSafe, MySqlPool, PgPool, Row, SqlitePool};

use crate::config::{
    AnonymousPatronSource, Backend, ClassDef, Condition, Config, Ident, TableName,
};

/// What went wrong talking to the database. Messages name tables, columns and causes,
/// never row contents.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The server could not be reached or refused the connection.
    #[error("cannot connect to the database {url}: {cause}")]
    Connect {
        /// The URL without password.
        url: String,
        /// The underlying cause.
        cause: String,
    },
    /// A statement failed.
    #[error("database error: {0}")]
    Query(#[from] sqlx::Error),
    /// Lethe's own migrations failed.
    #[error("migrating Lethe's own tables failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The library's schema does not have what the config names.
    #[error("{0}")]
    Schema(String),
    /// The anonymous patron preference is unusable.
    #[error("{0}")]
    AnonymousPatron(String),
    /// A batch's rows changed between reading and changing them (another writer): the
    /// batch was rolled back, nothing of it counted.
    #[error("{0}")]
    Consistency(String),
    /// The run lock could not be tried (not: it is taken; see [`lock::RunLock`]).
    #[error("run lock: {0}")]
    Lock(String),
}

impl DbError {
    /// Whether the error means the config does not fit this database (exit 2, nothing
    /// touched) rather than a failure at run time.
    pub fn is_config_mismatch(&self) -> bool {
        matches!(self, DbError::Schema(_) | DbError::AnonymousPatron(_))
    }
}

/// Whether an error is worth trying again after a pause: the connection was lost or
/// could not be had (I/O, pool timeout, TLS), the server is shutting down or restarting,
/// or the statement lost a deadlock or a lock wait. Anything else (a constraint, a
/// syntax or schema error) fails at once: trying again would fail the same way.
///
/// Codes: MySQL/MariaDB 1205 (lock wait timeout), 1213 (deadlock), 2006/2013 (server
/// gone, lost connection), 1053 (server shutdown); PostgreSQL SQLSTATE class 08
/// (connection exception), 40001 (serialization failure), 40P01 (deadlock), 57P01–57P03
/// (admin/crash shutdown, cannot connect now); SQLite 5 and 6 (busy, locked).
pub fn is_transient(e: &DbError) -> bool {
    match e {
        DbError::Connect { .. } => true,
        DbError::Query(q) => match q {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_) => true,
            sqlx::Error::Database(d) => {
                let code = d.code().map(|c| c.to_string()).unwrap_or_default();
                matches!(
                    code.as_str(),
                    "1205" | "1213" | "2006" | "2013" | "1053" | "40001" | "40P01" | "57P01"
                        | "57P02" | "57P03" | "5" | "6"
                ) || code.starts_with("08")
                    // MariaDB reports codes as SQLSTATE too: 40001 for a deadlock,
                    // HY000 with 1205 in the message for a lock wait timeout.
                    || d.message().contains("Lock wait timeout")
            }
            _ => false,
        },
        _ => false,
    }
}

/// The cause behind sqlx's `PoolTimedOut` when a pool could not make its first
/// connection within `waited`: one more direct attempt (at most 5 s) gives the error
/// the server or the network returns ("Connection refused"), or shows that nothing
/// answers at all (a firewall or a dead network path dropping packets).
async fn timed_out_cause<O>(opts: &O, waited: Duration) -> String
where
    O: sqlx::ConnectOptions,
    O::Connection: Sized,
{
    let secs = waited.as_secs();
    match tokio::time::timeout(Duration::from_secs(5), opts.connect()).await {
        Ok(Err(e)) => format!("{e} (tried for {secs} s)"),
        Ok(Ok(conn)) => {
            let _ = sqlx::Connection::close(conn).await;
            format!("no connection within {secs} s (the server answers now: try again)")
        }
        Err(_) => format!(
            "no answer from the server within {} s (a firewall or a dead network path dropping packets?)",
            secs + 5
        ),
    }
}

/// A pool for one backend.
#[derive(Debug, Clone)]
pub enum Db {
    /// SQLite (the demo library, or a file).
    Sqlite(SqlitePool),
    /// MySQL or MariaDB (Koha).
    MySql(MySqlPool),
    /// PostgreSQL (Evergreen).
    Postgres(PgPool),
}

/// A transaction on one backend.
pub enum Tx {
    /// SQLite, begun with `BEGIN IMMEDIATE` so the write lock is taken up front.
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    /// MySQL/MariaDB.
    MySql(sqlx::Transaction<'static, sqlx::MySql>),
    /// PostgreSQL.
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

/// Builds a sea-query statement for the backend and runs `$body` with `sql`, `values`
/// and the executor bound.
macro_rules! on_backend {
    ($target:expr, $stmt:expr, |$sql:ident, $values:ident, $ex:ident| $body:expr) => {
        match $target {
            Target::Sqlite($ex) => {
                let ($sql, $values) = $stmt.build_sqlx(SqliteQueryBuilder);
                $body
            }
            Target::MySql($ex) => {
                let ($sql, $values) = $stmt.build_sqlx(MysqlQueryBuilder);
                $body
            }
            Target::Postgres($ex) => {
                let ($sql, $values) = $stmt.build_sqlx(PostgresQueryBuilder);
                $body
            }
        }
    };
}

enum Target<'a> {
    Sqlite(&'a mut sqlx::SqliteConnection),
    MySql(&'a mut sqlx::MySqlConnection),
    Postgres(&'a mut sqlx::PgConnection),
}

impl Tx {
    fn target(&mut self) -> Target<'_> {
        match self {
            Tx::Sqlite(t) => Target::Sqlite(t),
            Tx::MySql(t) => Target::MySql(t),
            Tx::Postgres(t) => Target::Postgres(t),
        }
    }

    /// Commits.
    ///
    /// # Errors
    /// The commit failed; nothing of the transaction stands.
    pub async fn commit(self) -> Result<(), DbError> {
        match self {
            Tx::Sqlite(t) => t.commit().await?,
            Tx::MySql(t) => t.commit().await?,
            Tx::Postgres(t) => t.commit().await?,
        }
        Ok(())
    }

    /// Runs a statement, returning the number of rows it changed.
    ///
    /// # Errors
    /// The statement failed.
    pub async fn execute<S: SqlxBinder>(&mut self, stmt: &S) -> Result<u64, DbError> {
        Ok(on_backend!(self.target(), stmt, |sql, values, ex| {
            sqlx::query_with(AssertSqlSafe(sql), values)
                .execute(&mut *ex)
                .await?
                .rows_affected()
        }))
    }

    /// Runs a query whose first column is a 64-bit integer, returning that column of
    /// every row (NULLs skipped).
    ///
    /// # Errors
    /// The statement failed.
    pub async fn fetch_i64s<S: SqlxBinder>(&mut self, stmt: &S) -> Result<Vec<i64>, DbError> {
        Ok(on_backend!(self.target(), stmt, |sql, values, ex| {
            let rows = sqlx::query_with(AssertSqlSafe(sql), values)
                .fetch_all(&mut *ex)
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                if let Some(v) = r.try_get::<Option<i64>, _>(0)? {
                    out.push(v);
                }
            }
            out
        }))
    }

    /// Runs a query returning one row of 64-bit integers (NULL as `None`).
    ///
    /// # Errors
    /// The statement failed or returned no row.
    pub async fn fetch_row_i64<S: SqlxBinder>(
        &mut self,
        stmt: &S,
    ) -> Result<Vec<Option<i64>>, DbError> {
        Ok(on_backend!(self.target(), stmt, |sql, values, ex| {
            let r = sqlx::query_with(AssertSqlSafe(sql), values)
                .fetch_one(&mut *ex)
                .await?;
            let mut out = Vec::with_capacity(r.len());
            for i in 0..r.len() {
                out.push(r.try_get::<Option<i64>, _>(i)?);
            }
            out
        }))
    }
}

impl Db {
    /// Connects with a small pool (2 connections, 10 s acquire timeout) and checks the
    /// connection at once, so a wrong URL fails at start with the real cause. A server
    /// that refuses connections is tried again for those 10 s (it may be restarting),
    /// and one that never answers is waited for as long; sqlx then reports only
    /// `PoolTimedOut`, so one more direct attempt names the cause (see
    /// [`timed_out_cause`]). A SQLite file must exist.
    ///
    /// # Errors
    /// [`DbError::Connect`] with the URL (without password) and the cause.
    pub async fn connect(cfg: &Config) -> Result<Db, DbError> {
        Self::connect_url(
            cfg.database.backend,
            cfg.database.url.expose_secret(),
            &cfg.database.display_url,
        )
        .await
    }

    /// [`Db::connect`] from a URL.
    ///
    /// # Errors
    /// [`DbError::Connect`].
    pub async fn connect_url(
        backend: Backend,
        url: &str,
        display_url: &str,
    ) -> Result<Db, DbError> {
        let fail = |e: sqlx::Error| DbError::Connect {
            url: display_url.to_string(),
            cause: e.to_string(),
        };
        let timeout = Duration::from_secs(10);
        match backend {
            Backend::Sqlite => {
                use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
                use std::str::FromStr;
                let opts = SqliteConnectOptions::from_str(url)
                    .map_err(fail)?
                    .create_if_missing(false)
                    .foreign_keys(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    // Deleted rows are overwritten, not left readable in free pages.
                    .pragma("secure_delete", "ON")
                    .busy_timeout(Duration::from_secs(30));
                let pool = SqlitePoolOptions::new()
                    .max_connections(2)
                    .acquire_timeout(timeout)
                    .connect_with(opts)
                    .await
                    .map_err(fail)?;
                Ok(Db::Sqlite(pool))
            }
            Backend::MySql => {
                use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
                use std::str::FromStr;
                let opts = MySqlConnectOptions::from_str(url).map_err(fail)?;
                let pool = match MySqlPoolOptions::new()
                    .max_connections(2)
                    .acquire_timeout(timeout)
                    .connect_with(opts.clone())
                    .await
                {
                    Ok(pool) => pool,
                    Err(sqlx::Error::PoolTimedOut) => {
                        return Err(DbError::Connect {
                            url: display_url.to_string(),
                            cause: timed_out_cause(&opts, timeout).await,
                        });
                    }
                    Err(e) => return Err(fail(e)),
                };
                Ok(Db::MySql(pool))
            }
            Backend::Postgres => {
                use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
                use std::str::FromStr;
                let opts = PgConnectOptions::from_str(url).map_err(fail)?;
                let pool = match PgPoolOptions::new()
                    .max_connections(2)
                    .acquire_timeout(timeout)
                    .connect_with(opts.clone())
                    .await
                {
                    Ok(pool) => pool,
                    Err(sqlx::Error::PoolTimedOut) => {
                        return Err(DbError::Connect {
                            url: display_url.to_string(),
                            cause: timed_out_cause(&opts, timeout).await,
                        });
                    }
                    Err(e) => return Err(fail(e)),
                };
                Ok(Db::Postgres(pool))
            }
        }
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        match self {
            Db::Sqlite(_) => Backend::Sqlite,
            Db::MySql(_) => Backend::MySql,
            Db::Postgres(_) => Backend::Postgres,
        }
    }

    /// Begins a transaction (`BEGIN IMMEDIATE` on SQLite).
    ///
    /// # Errors
    /// The database refused.
    pub async fn begin(&self) -> Result<Tx, DbError> {
        Ok(match self {
            Db::Sqlite(p) => Tx::Sqlite(p.begin_with("BEGIN IMMEDIATE").await?),
            Db::MySql(p) => Tx::MySql(p.begin().await?),
            Db::Postgres(p) => Tx::Postgres(p.begin().await?),
        })
    }

    /// Applies Lethe's own migrations (`migrations/<backend>`), recorded in
    /// `lethe_migrations`, apart from any other sqlx user's `_sqlx_migrations`. Never
    /// touches the library's own tables.
    ///
    /// # Errors
    /// [`DbError::Migrate`].
    pub async fn migrate(&self) -> Result<(), DbError> {
        match self {
            Db::Sqlite(p) => {
                let mut m = sqlx::migrate!("migrations/sqlite");
                m.dangerous_set_table_name("lethe_migrations");
                m.run(p).await?
            }
            Db::MySql(p) => {
                let mut m = sqlx::migrate!("migrations/mysql");
                m.dangerous_set_table_name("lethe_migrations");
                m.run(p).await?
            }
            Db::Postgres(p) => {
                let mut m = sqlx::migrate!("migrations/postgres");
                m.dangerous_set_table_name("lethe_migrations");
                m.run(p).await?
            }
        }
        Ok(())
    }

    /// The columns of `table` with their declared types (lower-case), from the catalog;
    /// empty when the table does not exist.
    ///
    /// # Errors
    /// The catalog query failed.
    pub async fn columns(&self, table: &TableName) -> Result<Vec<(String, String)>, DbError> {
        let rows: Vec<(String, String)> = match self {
            Db::Sqlite(p) => {
                sqlx::query_as("SELECT name, lower(type) FROM pragma_table_info(?)")
                    .bind(table.name.as_str())
                    .fetch_all(p)
                    .await?
            }
            Db::MySql(p) => {
                let rows = sqlx::query(
                    "SELECT CAST(column_name AS CHAR), CAST(lower(data_type) AS CHAR) FROM information_schema.columns \
                     WHERE table_schema = COALESCE(?, DATABASE()) AND table_name = ?",
                )
                .bind(table.schema.as_ref().map(|s| s.as_str().to_string()))
                .bind(table.name.as_str())
                .fetch_all(p)
                .await?;
                let mut out = Vec::new();
                for r in rows {
                    out.push((r.try_get::<String, _>(0)?, r.try_get::<String, _>(1)?));
                }
                out
            }
            Db::Postgres(p) => sqlx::query_as(
                "SELECT column_name::text, lower(data_type)::text FROM information_schema.columns \
                     WHERE table_schema = COALESCE($1, current_schema()) AND table_name = $2",
            )
            .bind(table.schema.as_ref().map(|s| s.as_str().to_string()))
            .bind(table.name.as_str())
            .fetch_all(p)
            .await?,
        };
        Ok(rows)
    }

    /// The columns of `table`'s primary key, from the catalog.
    ///
    /// # Errors
    /// The catalog query failed.
    pub async fn primary_key(&self, table: &TableName) -> Result<Vec<String>, DbError> {
        Ok(match self {
            Db::Sqlite(p) => {
                sqlx::query_scalar("SELECT name FROM pragma_table_info(?) WHERE pk > 0 ORDER BY pk")
                    .bind(table.name.as_str())
                    .fetch_all(p)
                    .await?
            }
            Db::MySql(p) => {
                sqlx::query_scalar(
                    "SELECT CAST(column_name AS CHAR) FROM information_schema.columns \
                     WHERE table_schema = COALESCE(?, DATABASE()) AND table_name = ? AND column_key = 'PRI'",
                )
                .bind(table.schema.as_ref().map(|s| s.as_str().to_string()))
                .bind(table.name.as_str())
                .fetch_all(p)
                .await?
            }
            Db::Postgres(p) => {
                sqlx::query_scalar(
                    "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a \
                     ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                     WHERE i.indrelid = to_regclass($1) AND i.indisprimary",
                )
                .bind(table.to_string())
                .fetch_all(p)
                .await?
            }
        })
    }

    /// Checks every table and column the classes and the anonymous-patron source name
    /// against the catalog, and that each class key is an integer column. Returns all
    /// problems in one error.
    ///
    /// # Errors
    /// [`DbError::Schema`] listing what is missing; [`DbError::Query`].
    pub async fn check_schema(&self, cfg: &Config) -> Result<(), DbError> {
        let mut wanted: Vec<(String, TableName, Ident)> = Vec::new();
        for c in &cfg.classes {
            collect_class_columns(c, &mut wanted);
        }
        if let Some(a) = &cfg.anonymous_patron {
            let ctx = "anonymous_patron".to_string();
            wanted.push((ctx.clone(), a.table.clone(), a.name_column.clone()));
            wanted.push((ctx.clone(), a.table.clone(), a.value_column.clone()));
            wanted.push((ctx, a.patron_table.clone(), a.patron_key.clone()));
        }
        let mut problems = Vec::new();
        let mut cache: std::collections::HashMap<TableName, Vec<(String, String)>> =
            Default::default();
        for (ctx, table, col) in &wanted {
            if !cache.contains_key(table) {
                let cols = self.columns(table).await?;
                cache.insert(table.clone(), cols);
            }
            let cols = cache.get(table).map(Vec::as_slice).unwrap_or(&[]);
            if cols.is_empty() {
                let m = format!("{ctx}: table {table} does not exist");
                if !problems.contains(&m) {
                    problems.push(m);
                }
            } else if !cols
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case(col.as_str()))
            {
                let m = format!("{ctx}: column {table}.{col} does not exist");
                if !problems.contains(&m) {
                    problems.push(m);
                }
            }
        }
        for c in &cfg.classes {
            if let Some(cols) = cache.get(&c.table).filter(|c| !c.is_empty()) {
                let pk = self.primary_key(&c.table).await?;
                match &c.key {
                    Some(key) if !(pk.len() == 1 && pk[0].eq_ignore_ascii_case(key.as_str())) => {
                        problems.push(format!(
                            "classes.{}: key {}.{key} is not the table's primary key: batches need a unique integer key",
                            c.name, c.table
                        ));
                    }
                    None if pk.len() == 1 => {
                        problems.push(format!(
                            "classes.{}: table {} has a primary key ({}): name it as key:",
                            c.name,
                            c.table,
                            pk.join(", ")
                        ));
                    }
                    _ => {}
                }
                for a in &c.age.columns {
                    if let Some((_, ty)) = cols
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case(a.as_str()))
                    {
                        if !(ty.contains("date") || ty.contains("time")) {
                            problems.push(format!(
                                "classes.{}: age column {}.{a} is of type {ty}, not a date or time",
                                c.name, c.table
                            ));
                        }
                    }
                }
                if let Some(key) = &c.key {
                    if let Some((_, ty)) = cols
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case(key.as_str()))
                    {
                        if !ty.contains("int") {
                            problems.push(format!(
                                "classes.{}: key {}.{key} is of type {ty}: batches need an integer key",
                                c.name, c.table
                            ));
                        }
                    }
                }
                for (col, s) in &c.anonymize {
                    if *s != crate::config::Strategy::Pseudonym {
                        continue;
                    }
                    if let Some((_, ty)) = cols
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case(col.as_str()))
                    {
                        if !ty.contains("int") {
                            problems.push(format!(
                                "classes.{}: pseudonym column {}.{col} is of type {ty}: pseudonyms are written into integer patron ids",
                                c.name, c.table
                            ));
                        }
                    }
                }
            }
        }
        for c in &cfg.classes {
            self.check_routines(c, &mut problems).await?;
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(DbError::Schema(problems.join("\n")))
        }
    }

    /// Checks what a class needs beyond tables and columns: its purge function exists,
    /// the triggers it relies on are installed and enabled (Evergreen's aging triggers:
    /// deleting a circulation without them would destroy the statistics instead of aging
    /// them), and chain conditions run only where the database supports them.
    async fn check_routines(
        &self,
        c: &ClassDef,
        problems: &mut Vec<String>,
    ) -> Result<(), DbError> {
        let backend = self.backend();
        if backend != Backend::Postgres && class_uses_chain(c) {
            problems.push(format!(
                "classes.{}: chain conditions need PostgreSQL (a recursive query that refers to the row)",
                c.name
            ));
        }
        if let Some(pc) = &c.purge {
            let found = match self {
                Db::Postgres(p) => sqlx::query_scalar::<_, i64>(
                    "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
                         WHERE n.nspname = COALESCE($1, current_schema()) AND p.proname = $2",
                )
                .bind(pc.function.schema.as_ref().map(|s| s.as_str().to_string()))
                .bind(pc.function.name.as_str())
                .fetch_one(p)
                .await?,
                Db::MySql(p) => {
                    sqlx::query_scalar::<_, i64>(
                        "SELECT count(*) FROM information_schema.routines \
                         WHERE routine_schema = COALESCE(?, DATABASE()) AND routine_name = ?",
                    )
                    .bind(pc.function.schema.as_ref().map(|s| s.as_str().to_string()))
                    .bind(pc.function.name.as_str())
                    .fetch_one(p)
                    .await?
                }
                Db::Sqlite(_) => {
                    problems.push(format!(
                        "classes.{}: action purge calls a database function, and SQLite has none",
                        c.name
                    ));
                    return Ok(());
                }
            };
            if found == 0 {
                problems.push(format!(
                    "classes.{}: purge function {} does not exist",
                    c.name, pc.function
                ));
            } else if backend == Backend::Postgres && self.purge_arg_types(pc).await?.is_none() {
                problems.push(format!(
                    "classes.{}: purge function {} takes no {} arguments (or has several forms that do)",
                    c.name,
                    pc.function,
                    pc.args.len()
                ));
            }
        }
        for f in &c.triggers {
            let Db::Postgres(p) = self else {
                problems.push(format!(
                    "classes.{}: triggers are checked on PostgreSQL only; remove triggers: for this database",
                    c.name
                ));
                break;
            };
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid \
                 JOIN pg_namespace n ON n.oid = p.pronamespace \
                 WHERE t.tgrelid = to_regclass($1) AND NOT t.tgisinternal AND t.tgenabled <> 'D' \
                 AND n.nspname = COALESCE($2, current_schema()) AND p.proname = $3",
            )
            .bind(c.table.to_string())
            .bind(f.schema.as_ref().map(|s| s.as_str().to_string()))
            .bind(f.name.as_str())
            .fetch_one(p)
            .await?;
            if n == 0 {
                problems.push(format!(
                    "classes.{}: no enabled trigger on {} calls {f}: deleting without it would destroy what the \
                     library system keeps (aged statistics); refusing to run",
                    c.name, c.table
                ));
            }
        }
        Ok(())
    }

    /// On PostgreSQL, the type names (`pg_type.typname`, e.g. `int4`) of the arguments
    /// of the one form of the purge function that takes as many arguments as configured,
    /// so that bound values can be cast to them (PostgreSQL does not turn a bound
    /// `bigint` into an `integer` when it picks a function: Evergreen's
    /// `actor.usr_delete(INT, INT)`). `None` when no such form, or several, exist. Other
    /// backends: `Some` of an empty list (no casts).
    ///
    /// # Errors
    /// [`DbError::Query`].
    pub async fn purge_arg_types(
        &self,
        pc: &crate::config::PurgeCall,
    ) -> Result<Option<Vec<String>>, DbError> {
        let Db::Postgres(p) = self else {
            return Ok(Some(Vec::new()));
        };
        let rows: Vec<Vec<String>> = sqlx::query_scalar(
            "SELECT ARRAY(SELECT t.typname::text FROM unnest(p.proargtypes) WITH ORDINALITY AS a(oid, n) \
                          JOIN pg_type t ON t.oid = a.oid ORDER BY a.n) \
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
             WHERE n.nspname = COALESCE($1, current_schema()) AND p.proname = $2 AND p.pronargs = $3",
        )
        .bind(pc.function.schema.as_ref().map(|s| s.as_str().to_string()))
        .bind(pc.function.name.as_str())
        .bind(i16::try_from(pc.args.len()).unwrap_or(i16::MAX))
        .fetch_all(p)
        .await?;
        Ok(match rows.as_slice() {
            [one] if one.iter().all(|t| Ident::new(t).is_ok()) => Some(one.clone()),
            _ => None,
        })
    }

    /// The distinct non-NULL values of the first column of `stmt`'s rows, as text.
    ///
    /// # Errors
    /// [`DbError::Query`].
    pub async fn fetch_strings<S: SqlxBinder>(&self, stmt: &S) -> Result<Vec<String>, DbError> {
        let mut tx = self.begin_read().await?;
        let out = on_backend!(tx.target(), stmt, |sql, values, ex| {
            let rows = sqlx::query_with(AssertSqlSafe(sql), values)
                .fetch_all(&mut *ex)
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                if let Some(v) = r.try_get::<Option<String>, _>(0)? {
                    out.push(v);
                }
            }
            out
        });
        drop(tx);
        Ok(out)
    }

    /// Reads the anonymous patron's id from the preference (Koha: `AnonymousPatron` in
    /// `systempreferences`). An empty or missing preference gives `None` (anonymized
    /// rows get NULL). A value that is not a number, or names a patron that does not
    /// exist, is an error: Koha's anonymize would fail on the foreign key
    /// (`old_issues_ibfk_1`), so Lethe stops before touching anything.
    ///
    /// # Errors
    /// [`DbError::AnonymousPatron`]; [`DbError::Query`].
    pub async fn anonymous_patron(
        &self,
        src: &AnonymousPatronSource,
    ) -> Result<Option<i64>, DbError> {
        use sea_query::{Alias, Expr, ExprTrait, Query};
        let mut q = Query::select();
        let tn = sql::table_ref(&src.table);
        q.column(Alias::new(src.value_column.as_str()))
            .from(tn)
            .and_where(Expr::col(Alias::new(src.name_column.as_str())).eq(src.name.clone()));
        let value: Option<String> = match self {
            Db::Sqlite(p) => {
                let (s, v) = q.build_sqlx(SqliteQueryBuilder);
                sqlx::query_scalar_with(AssertSqlSafe(s), v)
                    .fetch_optional(p)
                    .await?
            }
            Db::MySql(p) => {
                let (s, v) = q.build_sqlx(MysqlQueryBuilder);
                sqlx::query_scalar_with(AssertSqlSafe(s), v)
                    .fetch_optional(p)
                    .await?
            }
            Db::Postgres(p) => {
                let (s, v) = q.build_sqlx(PostgresQueryBuilder);
                sqlx::query_scalar_with(AssertSqlSafe(s), v)
                    .fetch_optional(p)
                    .await?
            }
        };
        let Some(value) = value
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
        else {
            return Ok(None);
        };
        let id: i64 = value.parse().map_err(|_| {
            DbError::AnonymousPatron(format!(
                "the {} preference is not a patron number: set it to the {} of the anonymous patron",
                src.name, src.patron_key
            ))
        })?;
        let mut q = Query::select();
        let pt = sql::table_ref(&src.patron_table);
        q.expr(Expr::val(1))
            .from(pt)
            .and_where(Expr::col(Alias::new(src.patron_key.as_str())).eq(id));
        let mut tx = self.begin_read().await?;
        let found = tx.fetch_i64s(&q).await?;
        drop(tx);
        if found.is_empty() {
            return Err(DbError::AnonymousPatron(format!(
                "the {} preference names patron {id}, which does not exist in {}: anonymizing would fail on the \
                 foreign key; create that patron or correct the preference",
                src.name, src.patron_table
            )));
        }
        Ok(Some(id))
    }

    /// A read-only unit of work (a transaction that is never committed).
    async fn begin_read(&self) -> Result<Tx, DbError> {
        Ok(match self {
            Db::Sqlite(p) => Tx::Sqlite(p.begin().await?),
            Db::MySql(p) => Tx::MySql(p.begin().await?),
            Db::Postgres(p) => Tx::Postgres(p.begin().await?),
        })
    }

    /// Runs a read-only query of 64-bit integers and returns its single row.
    ///
    /// # Errors
    /// [`DbError::Query`].
    pub async fn read_row_i64<S: SqlxBinder>(&self, stmt: &S) -> Result<Vec<Option<i64>>, DbError> {
        let mut tx = self.begin_read().await?;
        tx.fetch_row_i64(stmt).await
    }

    /// Runs a read-only query whose first column is a 64-bit integer: that column of
    /// every row (NULLs skipped).
    ///
    /// # Errors
    /// [`DbError::Query`].
    pub async fn read_i64s<S: SqlxBinder>(&self, stmt: &S) -> Result<Vec<i64>, DbError> {
        let mut tx = self.begin_read().await?;
        tx.fetch_i64s(stmt).await
    }

    /// The database server's clock, UTC; `None` for SQLite (same host as Lethe).
    ///
    /// # Errors
    /// [`DbError::Query`].
    pub async fn server_now(&self) -> Result<Option<DateTime<Utc>>, DbError> {
        match self {
            Db::Sqlite(_) => Ok(None),
            Db::MySql(p) => {
                let t: chrono::NaiveDateTime = sqlx::query_scalar("SELECT UTC_TIMESTAMP(6)")
                    .fetch_one(p)
                    .await?;
                Ok(Some(t.and_utc()))
            }
            Db::Postgres(p) => {
                let t: DateTime<Utc> = sqlx::query_scalar("SELECT now()").fetch_one(p).await?;
                Ok(Some(t))
            }
        }
    }

    /// Closes the pool.
    pub async fn close(&self) {
        match self {
            Db::Sqlite(p) => p.close().await,
            Db::MySql(p) => p.close().await,
            Db::Postgres(p) => p.close().await,
        }
    }
}

fn collect_class_columns(c: &ClassDef, out: &mut Vec<(String, TableName, Ident)>) {
    let ctx = format!("classes.{}", c.name);
    if let Some(key) = &c.key {
        out.push((ctx.clone(), c.table.clone(), key.clone()));
    }
    for a in &c.age.columns {
        out.push((ctx.clone(), c.table.clone(), a.clone()));
    }
    for col in c.aggregate.iter().flat_map(|a| a.columns()).flatten() {
        out.push((ctx.clone(), c.table.clone(), col.clone()));
    }
    for (col, _) in &c.anonymize {
        out.push((ctx.clone(), c.table.clone(), col.clone()));
    }
    let conds = c
        .scope
        .iter()
        .chain(c.immediate.iter())
        .chain(c.exempt.iter().map(|(_, x)| x))
        .chain(c.purged.iter());
    for cond in conds {
        collect_condition_columns(c, &ctx, cond, out);
    }
    for d in &c.delete_with {
        out.push((ctx.clone(), d.table.clone(), d.column.clone()));
    }
    if let Some(p) = &c.patron {
        out.push((ctx.clone(), c.table.clone(), p.clone()));
    }
    if let Some(u) = &c.unlink {
        for col in u.columns.iter().chain(u.chain.iter()) {
            out.push((ctx.clone(), c.table.clone(), col.clone()));
        }
    }
}

/// Whether any condition of the class is a chain condition.
fn class_uses_chain(c: &ClassDef) -> bool {
    fn uses(cond: &Condition) -> bool {
        match cond {
            Condition::Chain { .. } => true,
            Condition::All(l) | Condition::Any(l) => l.iter().any(uses),
            Condition::Not(x) => uses(x),
            _ => false,
        }
    }
    c.scope
        .iter()
        .chain(c.immediate.iter())
        .chain(c.exempt.iter().map(|(_, x)| x))
        .chain(c.purged.iter())
        .any(uses)
}

/// The (table, column) pairs one condition names, nested conditions included.
fn collect_condition_columns(
    c: &ClassDef,
    ctx: &str,
    cond: &Condition,
    out: &mut Vec<(String, TableName, Ident)>,
) {
    let ctx_s = ctx.to_string();
    match cond {
        Condition::Column(t) => out.push((ctx_s, c.table.clone(), t.column().clone())),
        Condition::AnonymousPatron(col) => out.push((ctx_s, c.table.clone(), col.clone())),
        Condition::Exists {
            table,
            column,
            matches,
            filter,
            ..
        } => {
            out.push((ctx_s.clone(), table.clone(), column.clone()));
            out.push((ctx_s.clone(), c.table.clone(), matches.clone()));
            for f in filter {
                out.push((ctx_s.clone(), table.clone(), f.column().clone()));
            }
        }
        Condition::All(list) | Condition::Any(list) => {
            for x in list {
                collect_condition_columns(c, ctx, x, out);
            }
        }
        Condition::Not(x) => collect_condition_columns(c, ctx, x, out),
        Condition::LegalHold(col) => out.push((ctx_s, c.table.clone(), col.clone())),
        Condition::Chain { parent, filter } => {
            out.push((ctx_s.clone(), c.table.clone(), parent.clone()));
            for f in filter {
                out.push((ctx_s.clone(), c.table.clone(), f.column().clone()));
            }
        }
        Condition::PatronPeriod(pp) => {
            out.push((ctx_s.clone(), pp.table.clone(), pp.column.clone()));
            out.push((ctx_s.clone(), pp.table.clone(), pp.name_column.clone()));
            out.push((ctx_s.clone(), pp.table.clone(), pp.value_column.clone()));
            out.push((ctx_s, c.table.clone(), pp.matches.clone()));
        }
    }
}

impl Tx {
    /// Runs a query returning at most one row whose columns are all text (NULL as
    /// `None`).
    ///
    /// # Errors
    /// The statement failed.
    pub async fn fetch_opt_strings<S: SqlxBinder>(
        &mut self,
        stmt: &S,
    ) -> Result<Option<Vec<Option<String>>>, DbError> {
        Ok(on_backend!(self.target(), stmt, |sql, values, ex| {
            match sqlx::query_with(AssertSqlSafe(sql), values)
                .fetch_optional(&mut *ex)
                .await?
            {
                None => None,
                Some(r) => {
                    let mut out = Vec::with_capacity(r.len());
                    for i in 0..r.len() {
                        out.push(r.try_get::<Option<String>, _>(i)?);
                    }
                    Some(out)
                }
            }
        }))
    }

    /// Inserts a row and returns its generated `id` (RETURNING on SQLite and
    /// PostgreSQL, `LAST_INSERT_ID()` on MySQL, on the same connection).
    ///
    /// # Errors
    /// The statement failed.
    pub async fn insert_returning_id(
        &mut self,
        stmt: &mut sea_query::InsertStatement,
    ) -> Result<i64, DbError> {
        match self {
            Tx::MySql(t) => {
                let (sql, values) = stmt.build_sqlx(MysqlQueryBuilder);
                sqlx::query_with(AssertSqlSafe(sql), values)
                    .execute(&mut **t)
                    .await?;
                let id: i64 = sqlx::query_scalar("SELECT CAST(LAST_INSERT_ID() AS SIGNED)")
                    .fetch_one(&mut **t)
                    .await?;
                Ok(id)
            }
            Tx::Sqlite(t) => {
                stmt.returning_col(sea_query::Alias::new("id"));
                let (sql, values) = stmt.build_sqlx(SqliteQueryBuilder);
                Ok(sqlx::query_scalar_with(AssertSqlSafe(sql), values)
                    .fetch_one(&mut **t)
                    .await?)
            }
            Tx::Postgres(t) => {
                stmt.returning_col(sea_query::Alias::new("id"));
                let (sql, values) = stmt.build_sqlx(PostgresQueryBuilder);
                Ok(sqlx::query_scalar_with(AssertSqlSafe(sql), values)
                    .fetch_one(&mut **t)
                    .await?)
            }
        }
    }
}

/// One value of a row read without knowing its type in advance: the ledger reads its
/// own tables this way on every backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    /// NULL.
    Null,
    /// An integer.
    Int(i64),
    /// Text.
    Text(String),
}

impl Cell {
    /// The text, or the integer as text; `None` for NULL.
    pub fn text(&self) -> Option<String> {
        match self {
            Cell::Null => None,
            Cell::Int(i) => Some(i.to_string()),
            Cell::Text(s) => Some(s.clone()),
        }
    }

    /// The integer (text that parses as one counts); 0 for NULL or other text.
    pub fn int(&self) -> i64 {
        match self {
            Cell::Int(i) => *i,
            Cell::Text(s) => s.parse().unwrap_or(0),
            Cell::Null => 0,
        }
    }
}

fn cell<R: Row>(r: &R, i: usize) -> Result<Cell, sqlx::Error>
where
    usize: sqlx::ColumnIndex<R>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i32: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    if let Ok(v) = r.try_get::<Option<i64>, _>(i) {
        return Ok(v.map_or(Cell::Null, Cell::Int));
    }
    // PostgreSQL decodes strictly: an INTEGER column (lethe_run_classes.position) is
    // not an i64 there.
    if let Ok(v) = r.try_get::<Option<i32>, _>(i) {
        return Ok(v.map_or(Cell::Null, |v| Cell::Int(i64::from(v))));
    }
    Ok(r.try_get::<Option<String>, _>(i)?
        .map_or(Cell::Null, Cell::Text))
}

impl Tx {
    /// Runs a query and returns every row as [`Cell`]s.
    ///
    /// # Errors
    /// The statement failed.
    pub async fn fetch_cells<S: SqlxBinder>(
        &mut self,
        stmt: &S,
    ) -> Result<Vec<Vec<Cell>>, DbError> {
        Ok(on_backend!(self.target(), stmt, |sql, values, ex| {
            let rows = sqlx::query_with(AssertSqlSafe(sql), values)
                .fetch_all(&mut *ex)
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                let mut row = Vec::with_capacity(r.len());
                for i in 0..r.len() {
                    row.push(cell(r, i)?);
                }
                out.push(row);
            }
            out
        }))
    }
}
