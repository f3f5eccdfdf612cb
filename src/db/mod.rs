//! Database access: one typed pool per backend (SQLite, MySQL/MariaDB, PostgreSQL),
//! Lethe's own migrations, schema checks against the catalog, and the helpers the
//! engine uses to run sea-query statements inside transactions; the run lock that keeps
//! one worker active among replicas is in [`lock`].
//!
//! `sqlx::Any` is not used: it cannot bind chrono types and does not translate
//! placeholders (STACK.md). Every dynamic statement is built by sea-query from
//! validated identifiers; only such SQL is wrapped in `AssertSqlSafe`.
//!
//! Every statement has a bound, `safety.statement_timeout` ([`Db::statement_timeout`]):
//! a server that goes silent (a hung host, a firewall dropping an established flow)
//! never answers and never closes the connection, so without one a run would wait
//! forever. The bound is kept here, on Lethe's side, around each statement, `BEGIN` and
//! `COMMIT` ([`DbError::Timeout`]); the connection it struck is dropped, never handed
//! back to the pool (its state is unknown: a statement may still be running, a reply may
//! still come). The servers get the same bound where they have one, so the work of an
//! abandoned statement stops there too: PostgreSQL's `statement_timeout` (sent at
//! connect), MariaDB's `max_statement_time` (MySQL: `max_execution_time`, SELECT only),
//! set on each new connection; SQLite's busy timeout is at most the same. sqlx offers
//! no TCP keepalive setting, and keepalive would not help here anyway: a hung server's
//! kernel still answers keepalive probes.
//!
//! Transactions are begun and ended by Lethe itself on a connection it holds ([`Tx`]),
//! so that a connection struck by the bound can be taken out of the pool; a [`Tx`]
//! dropped without commit is rolled back in a task of its own, bounded too.

pub mod lock;
pub mod sql;

use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_query::{MysqlQueryBuilder, PostgresQueryBuilder, SqliteQueryBuilder};
use sea_query_sqlx::SqlxBinder;
use secrecy::ExposeSecret;
use sqlx::pool::PoolConnection;
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
    /// No answer within `safety.statement_timeout`: the connection was dropped. For a
    /// `COMMIT`, whether the transaction committed is unknown.
    #[error("{}", timeout_message(*.commit, *.after))]
    Timeout {
        /// Whether the statement was a `COMMIT`.
        commit: bool,
        /// The bound that was reached (`safety.statement_timeout`).
        after: Duration,
    },
    /// No connection could be had from the pool within its acquire timeout (the
    /// server is down, unreachable or not answering).
    #[error(
        "no connection to the database within {} s (the server is down, unreachable or not answering)",
        .waited.as_secs()
    )]
    NoConnection {
        /// The pool's acquire timeout.
        waited: Duration,
    },
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

fn timeout_message(commit: bool, after: Duration) -> String {
    let secs = after.as_secs_f64();
    if commit {
        format!(
            "no answer to COMMIT within {secs} s (safety.statement_timeout): the connection was dropped, and \
             whether the transaction committed is unknown (its ledger count is in the same transaction, so \
             the ledger matches the data either way)"
        )
    } else {
        format!(
            "no answer from the database within {secs} s (safety.statement_timeout): the connection was dropped \
             and its transaction rolled back (a hung server or a dead network path?)"
        )
    }
}

impl DbError {
    /// Whether the error means the config does not fit this database (exit 2, nothing
    /// touched) rather than a failure at run time.
    pub fn is_config_mismatch(&self) -> bool {
        matches!(self, DbError::Schema(_) | DbError::AnonymousPatron(_))
    }
}

/// Whether an error is worth trying again after a pause: the connection was lost or
/// could not be had (I/O, pool timeout, TLS), no answer came within the statement
/// timeout (the next try gets a new connection), the server is shutting down or
/// restarting, or the statement lost a deadlock or a lock wait. Anything else (a
/// constraint, a syntax or schema error, the server's own statement timeout) fails at
/// once: trying again would fail the same way.
///
/// Codes: MySQL/MariaDB 1205 (lock wait timeout), 1213 (deadlock), 2006/2013 (server
/// gone, lost connection), 1053 (server shutdown); PostgreSQL SQLSTATE class 08
/// (connection exception), 40001 (serialization failure), 40P01 (deadlock), 57P01–57P03
/// (admin/crash shutdown, cannot connect now); SQLite 5 and 6 (busy, locked).
pub fn is_transient(e: &DbError) -> bool {
    match e {
        DbError::Connect { .. } | DbError::Timeout { .. } | DbError::NoConnection { .. } => true,
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

/// The pool of one backend.
#[derive(Debug, Clone)]
pub(crate) enum Pool {
    /// SQLite (the demo library, or a file).
    Sqlite(SqlitePool),
    /// MySQL or MariaDB (Koha).
    MySql(MySqlPool),
    /// PostgreSQL (Evergreen).
    Postgres(PgPool),
}

/// A pool for one backend (2 connections), and the bound on each statement.
#[derive(Debug, Clone)]
pub struct Db {
    pool: Pool,
    limit: Duration,
    /// SQLite: when [`Db::checkpoint`] last copied the write-ahead log back.
    checkpointed: std::sync::Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

/// SQLite: the least time between two checkpoints of [`Db::checkpoint`]. Checkpointing
/// after every batch cost about 50 ms a batch (copying and syncing the pages of each
/// batch separately; 5 of a 14 s run on 1M rows); once a second bounds the log to a
/// second of Lethe's writes and copies a page changed by several batches once.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// Whether `e` is SQLite's SQLITE_BUSY ("database is locked"), primary code 5, with
/// any extended code (SQLITE_BUSY_RECOVERY, SQLITE_BUSY_SNAPSHOT, …).
fn sqlite_busy(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => d
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .is_some_and(|c| c & 0xff == 5),
        _ => false,
    }
}

/// The default of `safety.statement_timeout`: 5 minutes. Lethe's statements are
/// batches of at most `safety.batch_size` keys and counts over one table; a statement
/// taking longer than this on a library's database is stuck, or its answer is lost.
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(300);

/// How long taking a connection from the pool may take (opening one included).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// Prepared statements each connection keeps (sqlx's default is 100). A run's
/// statements with `IN (…)` lists take one text per padded length
/// ([`sql::padded`]: about 20 lengths) per statement kind and class, so that a
/// connection keeps them all instead of closing one for each new one: a close is a
/// round trip that stalled for the server's delayed ACK on a socket without
/// `TCP_NODELAY` (sqlx does not set it).
const STATEMENT_CACHE: usize = 2048;

/// How long closing a pool may take before its connections are abandoned (a silent
/// server never acknowledges anything).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A held connection of one backend.
enum Conn {
    Sqlite(PoolConnection<sqlx::Sqlite>),
    MySql(PoolConnection<sqlx::MySql>),
    Postgres(PoolConnection<sqlx::Postgres>),
}

impl Conn {
    fn target(&mut self) -> Target<'_> {
        match self {
            Conn::Sqlite(c) => Target::Sqlite(c),
            Conn::MySql(c) => Target::MySql(c),
            Conn::Postgres(c) => Target::Postgres(c),
        }
    }

    /// Takes the connection out of the pool and closes its socket without a word to
    /// the server (which rolls back whatever was open on it); the pool may open a new
    /// one in its place.
    fn abandon(self) {
        match self {
            Conn::Sqlite(c) => drop(c.detach()),
            Conn::MySql(c) => drop(c.detach()),
            Conn::Postgres(c) => drop(c.detach()),
        }
    }

    async fn raw(&mut self, sql: &'static str) -> Result<(), sqlx::Error> {
        match self {
            Conn::Sqlite(c) => sqlx::raw_sql(sql).execute(&mut **c).await.map(|_| ()),
            Conn::MySql(c) => sqlx::raw_sql(sql).execute(&mut **c).await.map(|_| ()),
            Conn::Postgres(c) => sqlx::raw_sql(sql).execute(&mut **c).await.map(|_| ()),
        }
    }
}

/// A unit of work on one connection held from the pool: a transaction ([`Db::begin`];
/// `BEGIN IMMEDIATE` on SQLite, so the write lock is taken up front) or a read that is
/// never committed. Every statement is bounded by `safety.statement_timeout`; once one
/// timed out, the connection is gone and every further statement fails with
/// [`DbError::Timeout`]. Dropped without [`Tx::commit`], the transaction is rolled back
/// in the background (bounded the same way; on failure the connection is abandoned)
/// before the connection goes back to the pool.
pub struct Tx {
    conn: Option<Conn>,
    /// A transaction was begun and not yet committed or rolled back.
    open: bool,
    limit: Duration,
}

impl Drop for Tx {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if !self.open {
            return; // back to the pool
        }
        let limit = self.limit;
        let rollback = async move {
            match tokio::time::timeout(limit, conn.raw("ROLLBACK")).await {
                Ok(Ok(())) => drop(conn),
                _ => conn.abandon(),
            }
        };
        // Without a runtime (shutting down) the connection closes with the process and
        // the server rolls back.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(rollback);
        }
    }
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

/// Runs `$body` (an expression using `.await?`, with `$t` the [`Target`]) on `$tx`'s
/// connection within the statement timeout; a timeout abandons the connection.
macro_rules! bounded {
    ($tx:expr, |$t:ident| $body:expr) => {{
        let limit = $tx.limit;
        let r = tokio::time::timeout(limit, async {
            let $t = $tx.target()?;
            Ok::<_, DbError>($body)
        })
        .await;
        $tx.settle(r, false)
    }};
}

// After the macros, which it uses.
pub mod catalog;

enum Target<'a> {
    Sqlite(&'a mut sqlx::SqliteConnection),
    MySql(&'a mut sqlx::MySqlConnection),
    Postgres(&'a mut sqlx::PgConnection),
}

impl Tx {
    fn target(&mut self) -> Result<Target<'_>, DbError> {
        match &mut self.conn {
            Some(c) => Ok(c.target()),
            None => Err(DbError::Timeout {
                commit: false,
                after: self.limit,
            }),
        }
    }

    /// The result of a bounded call: a timeout abandons the connection.
    fn settle<T>(
        &mut self,
        r: Result<Result<T, DbError>, tokio::time::error::Elapsed>,
        commit: bool,
    ) -> Result<T, DbError> {
        match r {
            Ok(r) => r,
            Err(_) => {
                if let Some(c) = self.conn.take() {
                    c.abandon();
                }
                self.open = false;
                tracing::warn!(
                    timeout_s = self.limit.as_secs_f64(),
                    commit,
                    "no answer from the database within safety.statement_timeout: connection dropped"
                );
                Err(DbError::Timeout {
                    commit,
                    after: self.limit,
                })
            }
        }
    }

    /// Begins a transaction on the held connection (within the statement timeout).
    async fn start(&mut self, sql: &'static str) -> Result<(), DbError> {
        let limit = self.limit;
        let r = tokio::time::timeout(limit, async {
            match &mut self.conn {
                Some(c) => Ok(c.raw(sql).await?),
                None => Err(DbError::Timeout {
                    commit: false,
                    after: limit,
                }),
            }
        })
        .await;
        // Open from here: should BEGIN have failed half-way, the drop rolls back.
        self.open = true;
        self.settle(r, false)
    }

    /// Commits, within the statement timeout.
    ///
    /// # Errors
    /// The commit failed: nothing of the transaction stands. [`DbError::Timeout`] with
    /// `commit: true`: no answer came, the connection was dropped, and whether the
    /// server committed is unknown; everything Lethe writes in one transaction (a
    /// batch and its ledger count) then stands or falls together.
    pub async fn commit(mut self) -> Result<(), DbError> {
        let limit = self.limit;
        let r = tokio::time::timeout(limit, async {
            match &mut self.conn {
                Some(c) => Ok(c.raw("COMMIT").await?),
                None => Err(DbError::Timeout {
                    commit: false,
                    after: limit,
                }),
            }
        })
        .await;
        let r = self.settle(r, true);
        if r.is_ok() {
            self.open = false;
        }
        r
    }

    /// Runs a statement, returning the number of rows it changed.
    ///
    /// # Errors
    /// The statement failed, or [`DbError::Timeout`].
    pub async fn execute<S: SqlxBinder>(&mut self, stmt: &S) -> Result<u64, DbError> {
        bounded!(self, |t| on_backend!(t, stmt, |sql, values, ex| {
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
    /// The statement failed, or [`DbError::Timeout`].
    pub async fn fetch_i64s<S: SqlxBinder>(&mut self, stmt: &S) -> Result<Vec<i64>, DbError> {
        bounded!(self, |t| on_backend!(t, stmt, |sql, values, ex| {
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
    /// The statement failed or returned no row, or [`DbError::Timeout`].
    pub async fn fetch_row_i64<S: SqlxBinder>(
        &mut self,
        stmt: &S,
    ) -> Result<Vec<Option<i64>>, DbError> {
        bounded!(self, |t| on_backend!(t, stmt, |sql, values, ex| {
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
    /// [`timed_out_cause`]). A SQLite file must exist. Statements are bounded by
    /// `safety.statement_timeout` (see the module doc).
    ///
    /// # Errors
    /// [`DbError::Connect`] with the URL (without password) and the cause.
    pub async fn connect(cfg: &Config) -> Result<Db, DbError> {
        Self::connect_url(
            cfg.database.backend,
            cfg.database.url.expose_secret(),
            &cfg.database.display_url,
            cfg.safety.statement_timeout,
        )
        .await
    }

    /// [`Db::connect`] from a URL, each statement bounded by `statement_timeout`.
    ///
    /// # Errors
    /// [`DbError::Connect`].
    pub async fn connect_url(
        backend: Backend,
        url: &str,
        display_url: &str,
        statement_timeout: Duration,
    ) -> Result<Db, DbError> {
        let fail = |e: sqlx::Error| DbError::Connect {
            url: display_url.to_string(),
            cause: e.to_string(),
        };
        let timeout = ACQUIRE_TIMEOUT;
        let limit = statement_timeout.max(Duration::from_millis(1));
        let pool = match backend {
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
                    // No checkpoint inside a COMMIT: Lethe checkpoints after each
                    // batch, outside its transaction ([`Db::checkpoint`]).
                    .pragma("wal_autocheckpoint", "0")
                    .busy_timeout(limit.min(Duration::from_secs(30)))
                    .statement_cache_capacity(STATEMENT_CACHE);
                // Opening can answer SQLITE_BUSY at once, without waiting out the
                // busy timeout: switching a rollback-journal file (as Koha's demo and
                // other tools leave it) to WAL while another process opens it too,
                // e.g. two replicas' daemons starting together. Retry for as long as
                // the busy timeout would have waited; nothing is written before.
                let busy_until = std::time::Instant::now() + limit.min(Duration::from_secs(30));
                let pool = loop {
                    match SqlitePoolOptions::new()
                        .max_connections(2)
                        .acquire_timeout(timeout)
                        .connect_with(opts.clone())
                        .await
                    {
                        Ok(pool) => break pool,
                        Err(e) if sqlite_busy(&e) && std::time::Instant::now() < busy_until => {
                            tracing::debug!(error = %e, "SQLite file busy while opening; retrying");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(e) => return Err(fail(e)),
                    }
                };
                Pool::Sqlite(pool)
            }
            Backend::MySql => {
                use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
                use std::str::FromStr;
                let opts = MySqlConnectOptions::from_str(url)
                    .map_err(fail)?
                    .statement_cache_capacity(STATEMENT_CACHE);
                let pool = match MySqlPoolOptions::new()
                    .max_connections(2)
                    .acquire_timeout(timeout)
                    .after_connect(move |conn, _meta| {
                        Box::pin(async move {
                            set_mysql_statement_limit(conn, limit).await;
                            Ok(())
                        })
                    })
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
                Pool::MySql(pool)
            }
            Backend::Postgres => {
                use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
                use std::str::FromStr;
                let opts = PgConnectOptions::from_str(url)
                    .map_err(fail)?
                    // The server's own bound (a later `-c` wins over one in the URL).
                    // JIT off for Lethe's sessions: a batch statement whose exemptions
                    // (Evergreen's renewal chain, a recursive CTE) the planner costs
                    // high was JIT-compiled anew in every batch, about 0.5 s each, for
                    // a statement that touches a thousand rows (BENCHMARKS.md).
                    .options([
                        ("statement_timeout", format!("{}ms", limit.as_millis())),
                        ("jit", "off".to_string()),
                    ])
                    .statement_cache_capacity(STATEMENT_CACHE);
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
                Pool::Postgres(pool)
            }
        };
        Ok(Db {
            pool,
            limit,
            checkpointed: std::sync::Arc::new(std::sync::Mutex::new(None)),
        })
    }

    /// The pool, for the run lock (which opens a connection of its own with the same
    /// options).
    pub(crate) fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The bound on each statement (`safety.statement_timeout`).
    pub fn statement_timeout(&self) -> Duration {
        self.limit
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        match &self.pool {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::MySql(_) => Backend::MySql,
            Pool::Postgres(_) => Backend::Postgres,
        }
    }

    /// A connection from the pool, held (the pool's 10 s acquire timeout applies).
    async fn hold(&self) -> Result<Tx, DbError> {
        let none = |e: sqlx::Error| match e {
            sqlx::Error::PoolTimedOut => DbError::NoConnection {
                waited: ACQUIRE_TIMEOUT,
            },
            e => DbError::Query(e),
        };
        let conn = match &self.pool {
            Pool::Sqlite(p) => Conn::Sqlite(p.acquire().await.map_err(none)?),
            Pool::MySql(p) => Conn::MySql(p.acquire().await.map_err(none)?),
            Pool::Postgres(p) => Conn::Postgres(p.acquire().await.map_err(none)?),
        };
        Ok(Tx {
            conn: Some(conn),
            open: false,
            limit: self.limit,
        })
    }

    /// Begins a transaction (`BEGIN IMMEDIATE` on SQLite).
    ///
    /// # Errors
    /// The database refused, or [`DbError::Timeout`].
    pub async fn begin(&self) -> Result<Tx, DbError> {
        let mut tx = self.hold().await?;
        let sql = match self.backend() {
            Backend::Sqlite => "BEGIN IMMEDIATE",
            _ => "BEGIN",
        };
        tx.start(sql).await?;
        Ok(tx)
    }

    /// Applies Lethe's own migrations (`migrations/<backend>`), recorded in
    /// `lethe_migrations`, apart from any other sqlx user's `_sqlx_migrations`. Never
    /// touches the library's own tables.
    ///
    /// # Errors
    /// [`DbError::Migrate`].
    pub async fn migrate(&self) -> Result<(), DbError> {
        let mut tx = self.hold().await?;
        bounded!(tx, |t| match t {
            Target::Sqlite(p) => {
                let mut m = sqlx::migrate!("migrations/sqlite");
                m.dangerous_set_table_name("lethe_migrations");
                m.run(p).await?
            }
            Target::MySql(p) => {
                let mut m = sqlx::migrate!("migrations/mysql");
                m.dangerous_set_table_name("lethe_migrations");
                m.run(p).await?
            }
            Target::Postgres(p) => {
                let mut m = sqlx::migrate!("migrations/postgres");
                m.dangerous_set_table_name("lethe_migrations");
                m.run(p).await?
            }
        })
    }

    /// The columns of `table` with their declared types (lower-case), from the catalog;
    /// empty when the table does not exist.
    ///
    /// # Errors
    /// The catalog query failed.
    pub async fn columns(&self, table: &TableName) -> Result<Vec<(String, String)>, DbError> {
        let mut tx = self.hold().await?;
        let rows: Vec<(String, String)> = bounded!(tx, |t| match t {
            Target::Sqlite(p) => {
                sqlx::query_as("SELECT name, lower(type) FROM pragma_table_info(?)")
                    .bind(table.name.as_str())
                    .fetch_all(p)
                    .await?
            }
            Target::MySql(p) => {
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
            Target::Postgres(p) => sqlx::query_as(
                "SELECT column_name::text, lower(data_type)::text FROM information_schema.columns \
                     WHERE table_schema = COALESCE($1, current_schema()) AND table_name = $2",
            )
            .bind(table.schema.as_ref().map(|s| s.as_str().to_string()))
            .bind(table.name.as_str())
            .fetch_all(p)
            .await?,
        })?;
        Ok(rows)
    }

    /// The columns of `table`'s primary key, from the catalog.
    ///
    /// # Errors
    /// The catalog query failed.
    pub async fn primary_key(&self, table: &TableName) -> Result<Vec<String>, DbError> {
        let mut tx = self.hold().await?;
        bounded!(tx, |t| match t {
            Target::Sqlite(p) => {
                sqlx::query_scalar("SELECT name FROM pragma_table_info(?) WHERE pk > 0 ORDER BY pk")
                    .bind(table.name.as_str())
                    .fetch_all(p)
                    .await?
            }
            Target::MySql(p) => {
                sqlx::query_scalar(
                    "SELECT CAST(column_name AS CHAR) FROM information_schema.columns \
                     WHERE table_schema = COALESCE(?, DATABASE()) AND table_name = ? AND column_key = 'PRI'",
                )
                .bind(table.schema.as_ref().map(|s| s.as_str().to_string()))
                .bind(table.name.as_str())
                .fetch_all(p)
                .await?
            }
            Target::Postgres(p) => {
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
                // The age columns are the `age.from` table's when there is one.
                let (age_table, age_cols) = match &c.age.from {
                    None => (&c.table, cols.as_slice()),
                    Some(f) => (
                        &f.table,
                        cache.get(&f.table).map(Vec::as_slice).unwrap_or(&[]),
                    ),
                };
                for a in &c.age.columns {
                    if let Some((_, ty)) = age_cols
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case(a.as_str()))
                    {
                        if !(ty.contains("date") || ty.contains("time")) {
                            problems.push(format!(
                                "classes.{}: age column {age_table}.{a} is of type {ty}, not a date or time",
                                c.name
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
            if backend == Backend::Sqlite {
                problems.push(format!(
                    "classes.{}: action purge calls a database function, and SQLite has none",
                    c.name
                ));
                return Ok(());
            }
            let mut tx = self.hold().await?;
            let found: i64 = bounded!(tx, |t| match t {
                Target::Postgres(p) => sqlx::query_scalar::<_, i64>(
                    "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
                         WHERE n.nspname = COALESCE($1, current_schema()) AND p.proname = $2",
                )
                .bind(pc.function.schema.as_ref().map(|s| s.as_str().to_string()))
                .bind(pc.function.name.as_str())
                .fetch_one(p)
                .await?,
                Target::MySql(p) => {
                    sqlx::query_scalar::<_, i64>(
                        "SELECT count(*) FROM information_schema.routines \
                         WHERE routine_schema = COALESCE(?, DATABASE()) AND routine_name = ?",
                    )
                    .bind(pc.function.schema.as_ref().map(|s| s.as_str().to_string()))
                    .bind(pc.function.name.as_str())
                    .fetch_one(p)
                    .await?
                }
                Target::Sqlite(_) => 0,
            })?;
            drop(tx);
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
            if backend != Backend::Postgres {
                problems.push(format!(
                    "classes.{}: triggers are checked on PostgreSQL only; remove triggers: for this database",
                    c.name
                ));
                break;
            }
            let mut tx = self.hold().await?;
            let n: i64 = bounded!(tx, |t| match t {
                Target::Postgres(p) =>
                    sqlx::query_scalar(
                        "SELECT count(*) FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid \
                 JOIN pg_namespace n ON n.oid = p.pronamespace \
                 WHERE t.tgrelid = to_regclass($1) AND NOT t.tgisinternal AND t.tgenabled <> 'D' \
                 AND n.nspname = COALESCE($2, current_schema()) AND p.proname = $3",
                    )
                    .bind(c.table.to_string())
                    .bind(f.schema.as_ref().map(|s| s.as_str().to_string()))
                    .bind(f.name.as_str())
                    .fetch_one(p)
                    .await?,
                _ => 1,
            })?;
            drop(tx);
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
        if self.backend() != Backend::Postgres {
            return Ok(Some(Vec::new()));
        }
        let mut tx = self.hold().await?;
        let rows: Vec<Vec<String>> = bounded!(tx, |t| {
            match t {
            Target::Postgres(p) => sqlx::query_scalar(
            "SELECT ARRAY(SELECT t.typname::text FROM unnest(p.proargtypes) WITH ORDINALITY AS a(oid, n) \
                          JOIN pg_type t ON t.oid = a.oid ORDER BY a.n) \
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
             WHERE n.nspname = COALESCE($1, current_schema()) AND p.proname = $2 AND p.pronargs = $3",
        )
        .bind(pc.function.schema.as_ref().map(|s| s.as_str().to_string()))
        .bind(pc.function.name.as_str())
        .bind(i16::try_from(pc.args.len()).unwrap_or(i16::MAX))
        .fetch_all(p)
        .await?,
            _ => Vec::new(),
        }
        })?;
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
        let out = bounded!(tx, |t| on_backend!(t, stmt, |sql, values, ex| {
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
        }))?;
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
        let mut tx = self.begin_read().await?;
        let value: Option<String> = bounded!(tx, |t| match t {
            Target::Sqlite(p) => {
                let (s, v) = q.build_sqlx(SqliteQueryBuilder);
                sqlx::query_scalar_with(AssertSqlSafe(s), v)
                    .fetch_optional(p)
                    .await?
            }
            Target::MySql(p) => {
                let (s, v) = q.build_sqlx(MysqlQueryBuilder);
                sqlx::query_scalar_with(AssertSqlSafe(s), v)
                    .fetch_optional(p)
                    .await?
            }
            Target::Postgres(p) => {
                let (s, v) = q.build_sqlx(PostgresQueryBuilder);
                sqlx::query_scalar_with(AssertSqlSafe(s), v)
                    .fetch_optional(p)
                    .await?
            }
        })?;
        drop(tx);
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
        // A 64-bit 1: PostgreSQL types a plain `1` as int4, which will not decode as i64
        // (found with the Koha profile on PostgreSQL in the refused_processing test).
        q.expr(Expr::val(1i64))
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

    /// SQLite: copies the write-ahead log back into the database file with
    /// `PRAGMA wal_checkpoint(PASSIVE)`, which waits for no reader or writer. Lethe's
    /// SQLite connections do not checkpoint when they commit (`wal_autocheckpoint = 0`):
    /// SQLite's automatic checkpoint runs inside the COMMIT call of whichever
    /// transaction crosses 1000 WAL pages, so about one batch in a hundred took
    /// 1.6–4 s instead of 50 ms (BENCHMARKS.md). The engine calls this after each
    /// batch, outside its transaction, so a batch's time is its own; it checkpoints at
    /// most once per [`CHECKPOINT_EVERY`] unless `force` (the end of a class). A no-op on the
    /// servers. A failed checkpoint is logged and otherwise ignored: the log still
    /// holds every committed change, and the next checkpoint copies it.
    pub async fn checkpoint(&self, force: bool) {
        if let Pool::Sqlite(p) = &self.pool {
            {
                let mut last = self
                    .checkpointed
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let now = std::time::Instant::now();
                if !force && last.is_some_and(|t| now.duration_since(t) < CHECKPOINT_EVERY) {
                    return;
                }
                *last = Some(now);
            }
            if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .execute(p)
                .await
            {
                tracing::debug!(error = %e, "WAL checkpoint failed; the next one copies the log");
            }
        }
    }

    /// A read-only unit of work: a held connection, each statement its own
    /// (auto-committed) transaction.
    async fn begin_read(&self) -> Result<Tx, DbError> {
        self.hold().await
    }

    /// Runs a read-only query of 64-bit integers and returns its single row.
    ///
    /// # Errors
    /// [`DbError::Query`].
    pub async fn read_row_i64<S: SqlxBinder>(&self, stmt: &S) -> Result<Vec<Option<i64>>, DbError> {
        let mut tx = self.begin_read().await?;
        tx.fetch_row_i64(stmt).await
    }

    /// Runs a read-only query and returns every row as [`Cell`]s.
    ///
    /// # Errors
    /// [`DbError::Query`].
    pub async fn read_cells<S: SqlxBinder>(&self, stmt: &S) -> Result<Vec<Vec<Cell>>, DbError> {
        let mut tx = self.begin_read().await?;
        tx.fetch_cells(stmt).await
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
        if self.backend() == Backend::Sqlite {
            return Ok(None);
        }
        let mut tx = self.hold().await?;
        bounded!(tx, |t| match t {
            Target::Sqlite(_) => None,
            Target::MySql(p) => {
                let t: chrono::NaiveDateTime = sqlx::query_scalar("SELECT UTC_TIMESTAMP(6)")
                    .fetch_one(p)
                    .await?;
                Some(t.and_utc())
            }
            Target::Postgres(p) => {
                let t: DateTime<Utc> = sqlx::query_scalar("SELECT now()").fetch_one(p).await?;
                Some(t)
            }
        })
    }

    /// Closes the pool, waiting at most 5 s for its connections to close gracefully (a
    /// silent server would keep a graceful close waiting for ever); connections still
    /// open then are dropped with the pool.
    pub async fn close(&self) {
        let close = async {
            match &self.pool {
                Pool::Sqlite(p) => p.close().await,
                Pool::MySql(p) => p.close().await,
                Pool::Postgres(p) => p.close().await,
            }
        };
        if tokio::time::timeout(CLOSE_TIMEOUT, close).await.is_err() {
            tracing::warn!(
                timeout_s = CLOSE_TIMEOUT.as_secs(),
                "the database connections did not close in time; they are dropped"
            );
        }
    }
}

/// The server's own bound on a new MySQL/MariaDB session: MariaDB's
/// `max_statement_time` (seconds, every statement), else MySQL's `max_execution_time`
/// (milliseconds, SELECT only). Neither is needed for Lethe's own bound, so a server that
/// has neither is only logged.
async fn set_mysql_statement_limit(conn: &mut sqlx::MySqlConnection, limit: Duration) {
    let maria = format!(
        "SET SESSION max_statement_time = {:.3}",
        limit.as_secs_f64()
    );
    if sqlx::raw_sql(AssertSqlSafe(maria))
        .execute(&mut *conn)
        .await
        .is_ok()
    {
        return;
    }
    let mysql = format!("SET SESSION max_execution_time = {}", limit.as_millis());
    if let Err(e) = sqlx::raw_sql(AssertSqlSafe(mysql))
        .execute(&mut *conn)
        .await
    {
        tracing::debug!(error = %e, "the server takes no statement time limit; Lethe's own applies");
    }
}

fn collect_class_columns(c: &ClassDef, out: &mut Vec<(String, TableName, Ident)>) {
    let ctx = format!("classes.{}", c.name);
    if let Some(key) = &c.key {
        out.push((ctx.clone(), c.table.clone(), key.clone()));
    }
    match &c.age.from {
        None => {
            for a in &c.age.columns {
                out.push((ctx.clone(), c.table.clone(), a.clone()));
            }
        }
        Some(f) => {
            for a in &c.age.columns {
                out.push((ctx.clone(), f.table.clone(), a.clone()));
            }
            out.push((ctx.clone(), f.table.clone(), f.column.clone()));
            out.push((ctx.clone(), c.table.clone(), f.matches.clone()));
            for t in &f.filter {
                out.push((ctx.clone(), f.table.clone(), t.column().clone()));
            }
        }
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
    for l in &c.linked {
        out.push((ctx.clone(), l.table.clone(), l.column.clone()));
        out.push((ctx.clone(), l.table.clone(), l.patron.clone()));
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
        bounded!(self, |t| on_backend!(t, stmt, |sql, values, ex| {
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
        bounded!(self, |t| match t {
            Target::MySql(t) => {
                let (sql, values) = stmt.build_sqlx(MysqlQueryBuilder);
                sqlx::query_with(AssertSqlSafe(sql), values)
                    .execute(&mut *t)
                    .await?;
                let id: i64 = sqlx::query_scalar("SELECT CAST(LAST_INSERT_ID() AS SIGNED)")
                    .fetch_one(&mut *t)
                    .await?;
                id
            }
            Target::Sqlite(t) => {
                stmt.returning_col(sea_query::Alias::new("id"));
                let (sql, values) = stmt.build_sqlx(SqliteQueryBuilder);
                sqlx::query_scalar_with(AssertSqlSafe(sql), values)
                    .fetch_one(&mut *t)
                    .await?
            }
            Target::Postgres(t) => {
                stmt.returning_col(sea_query::Alias::new("id"));
                let (sql, values) = stmt.build_sqlx(PostgresQueryBuilder);
                sqlx::query_scalar_with(AssertSqlSafe(sql), values)
                    .fetch_one(&mut *t)
                    .await?
            }
        })
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
        bounded!(self, |t| on_backend!(t, stmt, |sql, values, ex| {
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
