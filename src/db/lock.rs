//! The run lock: one active worker among replicas.
//!
//! A consortium may run Lethe on two hosts against one database for availability. Before
//! a run writes anything (Lethe's migrations, the ledger, the library's rows) it takes a
//! lock that lives in the database itself, on a connection of its own held for the whole
//! run. A second worker that finds the lock taken skips its run; when the first is gone
//! its connection closes, the database frees the lock, and the next scheduled run of the
//! other worker enforces. `plan` and `verify` write nothing and never take it.
//!
//! | backend | lock | scope |
//! |---|---|---|
//! | PostgreSQL | `pg_try_advisory_lock(`[`PG_ADVISORY_KEY`]`)`, a session-level advisory lock | the database (advisory locks are per database) |
//! | MySQL/MariaDB | `GET_LOCK(`[`mysql_lock_name`]`, 0)`, a user-level lock | the server, so the name carries the database's name |
//! | SQLite | `BEGIN EXCLUSIVE` on a sidecar file `<db>`[`SQLITE_LOCK_SUFFIX`] | that file, next to the library's |
//!
//! Every one of them belongs to a session (a connection), not to a transaction, and none
//! waits: a taken lock answers at once. When the process dies (SIGKILL, a crash), its
//! sockets and file descriptors close, and the server (or the kernel, for SQLite's
//! POSIX file locks) releases the lock with the session. Sources:
//! - PostgreSQL, "Advisory Locks" (<https://www.postgresql.org/docs/15/explicit-locking.html#ADVISORY-LOCKS>)
//!   and "Advisory Lock Functions" (<https://www.postgresql.org/docs/15/functions-admin.html#FUNCTIONS-ADVISORY-LOCKS>):
//!   a session-level lock "is held until explicitly released or the session ends";
//!   `pg_try_advisory_lock` "will either obtain the lock immediately and return true, or
//!   return false if the lock cannot be acquired immediately".
//! - MariaDB, `GET_LOCK` (<https://mariadb.com/kb/en/get_lock/>): the lock "is released
//!   when you execute RELEASE_LOCK(), … or your connection terminates (either normally or
//!   abnormally)"; names are locked server-wide. MySQL 5.7.5 and later limit names to 64
//!   characters, so a longer name is shortened with a hash.
//! - SQLite, "File Locking And Concurrency" (<https://www.sqlite.org/lockingv3.html>) and
//!   `BEGIN EXCLUSIVE` (<https://www.sqlite.org/lang_transaction.html>): an exclusive
//!   lock on the sidecar file keeps every other connection out of *that* file only, so
//!   Lethe's own batch transactions on the library's file are never blocked by it.
//!
//! The holding connection sits idle for the whole run, and servers close idle sessions
//! (MariaDB's `wait_timeout`, 8 hours by default; PostgreSQL's `idle_session_timeout`).
//! A heartbeat pings it every [`HEARTBEAT`]; if a ping fails the lock may already be in
//! another worker's hands, so the run's cancellation token is cancelled: the current
//! batch commits and the run stops as `interrupted`, as on SIGTERM.
//!
//! A session lock needs a real session: do not point Lethe at the database through a
//! transaction-pooling proxy (PgBouncer in transaction mode), which would hand the
//! lock's session to other clients.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::{ConnectOptions, Connection, MySqlConnection, PgConnection, SqliteConnection};
use tokio_util::sync::CancellationToken;

use super::{Db, DbError, Pool};

/// The PostgreSQL advisory-lock key: the bytes of `"lethe"`, read as a big-endian
/// 64-bit integer (`0x0000_006c_6574_6865`). Advisory locks are scoped to the current
/// database, so two libraries on one server do not contend. In `pg_locks` it shows as
/// `locktype = 'advisory'`, `classid = 108`, `objid = 1702127717`, `objsubid = 1`.
pub const PG_ADVISORY_KEY: i64 = i64::from_be_bytes(*b"\0\0\0lethe");

/// The sidecar lock file of a SQLite library: `<db file>` followed by this suffix.
pub const SQLITE_LOCK_SUFFIX: &str = ".lethe-lock";

/// How often the holding connection is pinged during a run.
pub const HEARTBEAT: Duration = Duration::from_secs(30);

/// The longest user-level lock name MySQL 5.7.5+ accepts.
const MYSQL_NAME_MAX: usize = 64;

/// The MySQL/MariaDB user-level lock name for `database`: `lethe:<database>`, or, when
/// that is longer than 64 characters (MySQL's limit), `lethe:` and the first 58 hex
/// digits of the name's SHA-256. `GET_LOCK` names are server-wide, hence the database
/// name; they are case-insensitive.
pub fn mysql_lock_name(database: &str) -> String {
    let name = format!("lethe:{database}");
    if name.chars().count() <= MYSQL_NAME_MAX {
        return name;
    }
    let hash = hex::encode(Sha256::digest(database.as_bytes()));
    format!("lethe:{}", &hash[..MYSQL_NAME_MAX - "lethe:".len()])
}

/// The sidecar lock file of the SQLite library at `db_file`.
pub fn sqlite_lock_path(db_file: &Path) -> PathBuf {
    let mut p = db_file.as_os_str().to_owned();
    p.push(SQLITE_LOCK_SUFFIX);
    PathBuf::from(p)
}

/// The connection holding the lock, per backend.
enum Holder {
    Postgres(PgConnection),
    MySql(MySqlConnection, String),
    Sqlite(SqliteConnection),
    /// An in-memory SQLite database lives and dies with this process: no other worker
    /// can reach it, so there is nothing to lock.
    Memory,
}

impl Holder {
    async fn ping(&mut self) -> Result<(), sqlx::Error> {
        match self {
            Holder::Postgres(c) => c.ping().await,
            Holder::MySql(c, _) => c.ping().await,
            Holder::Sqlite(c) => c.ping().await,
            Holder::Memory => Ok(()),
        }
    }

    /// Releases the lock explicitly, then closes the connection. Closing alone would
    /// release it too; the explicit release is for a server that keeps a closing
    /// session around for a moment.
    async fn release(self) -> Result<(), sqlx::Error> {
        match self {
            Holder::Postgres(mut c) => {
                sqlx::query("SELECT pg_advisory_unlock($1)")
                    .bind(PG_ADVISORY_KEY)
                    .execute(&mut c)
                    .await?;
                c.close().await
            }
            Holder::MySql(mut c, name) => {
                sqlx::query("SELECT RELEASE_LOCK(?)")
                    .bind(name)
                    .execute(&mut c)
                    .await?;
                c.close().await
            }
            Holder::Sqlite(mut c) => {
                sqlx::query("ROLLBACK").execute(&mut c).await?;
                c.close().await
            }
            Holder::Memory => Ok(()),
        }
    }
}

/// The run lock, held by a task of its own that pings the holding connection.
///
/// Release it with [`RunLock::release`] once the run is closed in the ledger. Dropping
/// it releases it too (the task unlocks and closes the connection in the background),
/// and a process that dies releases it through its closed connection.
#[derive(Debug)]
pub struct RunLock {
    what: String,
    stop: CancellationToken,
    lost: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl RunLock {
    /// Tries to take the run lock, without waiting, on a new connection to the same
    /// database as `db` (outside its pool, which keeps both its connections for the
    /// work). Returns `None` when another worker holds it; the connection tried with is
    /// closed. `on_lost` is cancelled if the holding connection fails during the run
    /// (see the module doc); pass the run's cancellation token.
    ///
    /// # Errors
    /// [`DbError::Query`] when the lock connection cannot be opened or the lock query
    /// fails; [`DbError::Lock`] when MySQL answers `GET_LOCK` with NULL (an error on
    /// the server).
    pub async fn try_acquire(
        db: &Db,
        on_lost: CancellationToken,
    ) -> Result<Option<RunLock>, DbError> {
        Self::try_acquire_with(db, on_lost, HEARTBEAT).await
    }

    /// [`RunLock::try_acquire`] with a heartbeat interval of `every` (tests use a short
    /// one).
    ///
    /// # Errors
    /// As [`RunLock::try_acquire`].
    pub async fn try_acquire_with(
        db: &Db,
        on_lost: CancellationToken,
        every: Duration,
    ) -> Result<Option<RunLock>, DbError> {
        let limit = db.statement_timeout();
        // A silent server must not hold the run at its start either.
        let tried = tokio::time::timeout(limit, acquire(db))
            .await
            .map_err(|_| DbError::Timeout {
                commit: false,
                after: limit,
            })?;
        let Some((holder, what)) = tried? else {
            return Ok(None);
        };
        let stop = CancellationToken::new();
        // Its own token: `on_lost` is usually the run's, which SIGTERM cancels too.
        let lost = CancellationToken::new();
        let task = tokio::spawn(hold(
            holder,
            what.clone(),
            [every, limit],
            stop.clone(),
            [lost.clone(), on_lost],
        ));
        Ok(Some(RunLock {
            what,
            stop,
            lost,
            task: Some(task),
        }))
    }

    /// What is held, for logs: the lock function and its key, name or file.
    pub fn describe(&self) -> &str {
        &self.what
    }

    /// Whether the holding connection failed during the run (`on_lost` was cancelled
    /// for that reason, not for a shutdown).
    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// Releases the lock and closes its connection, waiting until that is done. A
    /// failure is logged: the connection is dropped, which releases the lock anyway.
    pub async fn release(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, lock = %self.what, "the run lock's task ended abnormally");
            }
        }
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Opens the lock connection and tries the lock once. `None`: taken by another worker.
async fn acquire(db: &Db) -> Result<Option<(Holder, String)>, DbError> {
    match db.pool() {
        Pool::Postgres(pool) => {
            let opts = pool
                .connect_options()
                .as_ref()
                .clone()
                .application_name("lethe run lock");
            let mut conn = opts.connect().await?;
            let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(PG_ADVISORY_KEY)
                .fetch_one(&mut conn)
                .await?;
            let what = format!("PostgreSQL advisory lock {PG_ADVISORY_KEY}");
            if got {
                Ok(Some((Holder::Postgres(conn), what)))
            } else {
                let _ = conn.close().await;
                Ok(None)
            }
        }
        Pool::MySql(pool) => {
            let mut conn = pool.connect_options().connect().await?;
            let database: Option<String> = sqlx::query_scalar("SELECT DATABASE()")
                .fetch_one(&mut conn)
                .await?;
            let name = mysql_lock_name(database.as_deref().unwrap_or(""));
            let got: Option<i64> = sqlx::query_scalar("SELECT CAST(GET_LOCK(?, 0) AS SIGNED)")
                .bind(&name)
                .fetch_one(&mut conn)
                .await?;
            let what = format!("GET_LOCK {name}");
            match got {
                Some(1) => Ok(Some((Holder::MySql(conn, name), what))),
                Some(_) => {
                    let _ = conn.close().await;
                    Ok(None)
                }
                None => {
                    let _ = conn.close().await;
                    Err(DbError::Lock(format!(
                        "the server answered GET_LOCK('{name}', 0) with NULL (an error on the server)"
                    )))
                }
            }
        }
        Pool::Sqlite(pool) => {
            let main = pool.connect_options();
            let file = main.get_filename();
            if is_in_memory(file) {
                return Ok(Some((Holder::Memory, "none (in-memory SQLite)".into())));
            }
            let path = sqlite_lock_path(file);
            let what = format!("SQLite BEGIN EXCLUSIVE on {}", path.display());
            // No journal_mode pragma: setting one reads the file, which a held
            // exclusive lock refuses; a new file gets the rollback journal, whose
            // EXCLUSIVE lock keeps readers out too. No busy timeout: never wait.
            let opts = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true)
                .busy_timeout(Duration::ZERO);
            // Opening may already meet the other worker's lock (reading the schema).
            let mut conn = match opts.connect().await {
                Ok(c) => c,
                Err(e) if is_sqlite_busy(&e) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            match sqlx::query("BEGIN EXCLUSIVE").execute(&mut conn).await {
                Ok(_) => Ok(Some((Holder::Sqlite(conn), what))),
                Err(e) if is_sqlite_busy(&e) => {
                    let _ = conn.close().await;
                    Ok(None)
                }
                Err(e) => {
                    let _ = conn.close().await;
                    Err(e.into())
                }
            }
        }
    }
}

/// sqlx names an in-memory database `file:sqlx-in-memory-N` (from `sqlite::memory:`).
fn is_in_memory(file: &Path) -> bool {
    let s = file.to_string_lossy();
    s == ":memory:" || s.starts_with("file:sqlx-in-memory-")
}

/// `SQLITE_BUSY` and its extended codes (the primary code is the low byte).
fn is_sqlite_busy(e: &sqlx::Error) -> bool {
    const SQLITE_BUSY: i64 = 5;
    match e {
        sqlx::Error::Database(d) => d
            .code()
            .and_then(|c| c.parse::<i64>().ok())
            .is_some_and(|c| c & 0xff == SQLITE_BUSY),
        _ => false,
    }
}

/// Holds the lock until `stop`, pinging every `every`. A failed ping, or one without an
/// answer within `limit` (the statement timeout), means the lock may be gone: both
/// `lost` tokens are cancelled and the connection dropped. Releasing is bounded by
/// `limit` too: a silent server must not keep the run from ending.
async fn hold(
    mut holder: Holder,
    what: String,
    [every, limit]: [Duration; 2],
    stop: CancellationToken,
    lost: [CancellationToken; 2],
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                match tokio::time::timeout(limit, holder.release()).await {
                    Ok(Ok(())) => tracing::debug!(lock = %what, "run lock released"),
                    Ok(Err(e)) => tracing::warn!(error = %e, lock = %what, "releasing the run lock failed; its connection is closed, which releases it"),
                    Err(_) => tracing::warn!(lock = %what, "no answer to releasing the run lock within safety.statement_timeout; its connection is dropped, which releases it"),
                }
                return;
            }
            _ = tick.tick() => {
                let pinged = tokio::time::timeout(limit, holder.ping())
                    .await
                    .unwrap_or_else(|_| Err(sqlx::Error::Protocol("no answer within safety.statement_timeout".into())));
                if let Err(e) = pinged {
                    tracing::error!(
                        error = %e,
                        lock = %what,
                        "the connection holding the run lock failed: the lock is lost; the run stops after the current batch"
                    );
                    for t in &lost {
                        t.cancel();
                    }
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_postgres_key_is_lethe_in_ascii() {
        assert_eq!(PG_ADVISORY_KEY, 0x6c_6574_6865);
        assert_eq!(PG_ADVISORY_KEY >> 32, 108);
        assert_eq!(PG_ADVISORY_KEY & 0xffff_ffff, 1_702_127_717);
    }

    #[test]
    fn mysql_names_carry_the_database_and_fit_in_64_characters() {
        assert_eq!(mysql_lock_name("koha_library"), "lethe:koha_library");
        let long = "x".repeat(64);
        let n = mysql_lock_name(&long);
        assert_eq!(n.len(), 64);
        assert!(n.starts_with("lethe:"));
        assert_ne!(n, mysql_lock_name(&"y".repeat(64)));
    }

    #[test]
    fn the_sqlite_lock_is_a_sidecar_file() {
        assert_eq!(
            sqlite_lock_path(Path::new("/var/lib/lethe/library.db")),
            PathBuf::from("/var/lib/lethe/library.db.lethe-lock")
        );
    }
}
