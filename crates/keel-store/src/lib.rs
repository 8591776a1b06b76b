//! One code path over SQLite (the embedded default) and PostgreSQL: a pool chosen by URL,
//! per-component migrations written once with dialect placeholders, and a transaction
//! handle that domain code, the outbox and the inbox share.
//!
//! ```no_run
//! # async fn demo() -> Result<(), keel_store::StoreError> {
//! use keel_store::{Migration, Store};
//! let store = Store::connect("sqlite://orders.db").await?;   // or postgres://…
//! store
//!     .migrate("orders", &[Migration::new(1, "orders", "CREATE TABLE orders (id TEXT PRIMARY KEY, total {bigint} NOT NULL)")])
//!     .await?;
//! let mut tx = store.begin().await?;
//! sqlx::query("INSERT INTO orders (id, total) VALUES ($1, $2)")
//!     .bind("o-1")
//!     .bind(1250_i64)
//!     .execute(tx.conn())
//!     .await?;
//! tx.commit().await?;
//! # Ok(()) }
//! ```
//!
//! SQL uses `$1, $2, …` placeholders in order of first appearance; both engines accept
//! them. Types that travel through the shared path are `i64`, `f64`, `bool`, `String` and
//! `Vec<u8>`; times are epoch milliseconds in `{bigint}` columns.

mod migrate;
pub mod testing;

use std::{str::FromStr, sync::Arc, time::Duration};

pub use migrate::Migration;
pub use sqlx;
use sqlx::{
    Any, AnyConnection, AnyPool, Transaction,
    any::{AnyConnectOptions, AnyPoolOptions},
    pool::PoolConnection,
};

/// Which engine a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite: one file, WAL journal, 5 s busy timeout, foreign keys on.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL is not one Keel understands.
    #[error("invalid store URL {url:?}: {reason}")]
    Url {
        /// The URL (credentials removed).
        url: String,
        /// Why.
        reason: String,
    },
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration {component}/{version} ({name}) failed: {source}")]
    Migration {
        /// The component.
        component: String,
        /// The migration's version.
        version: i64,
        /// Its name.
        name: String,
        /// The error.
        source: sqlx::Error,
    },
}

impl StoreError {
    /// Whether retrying the operation may succeed (connection trouble, busy database,
    /// serialization failures), as opposed to a bug or bad data.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Database(e) => transient(e),
            _ => false,
        }
    }
}

fn transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
        sqlx::Error::Database(d) => {
            let code = d.code().unwrap_or_default();
            // SQLite BUSY/LOCKED; PostgreSQL serialization failure, deadlock, admin shutdown.
            matches!(
                code.as_ref(),
                "5" | "6" | "517" | "40001" | "40P01" | "57P01"
            )
        }
        _ => false,
    }
}

/// A database handle: a pool plus what Keel needs to know about it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    url: Arc<str>,
    /// SQLite has one writer at a time. Writers of this process queue here, in order,
    /// instead of meeting in SQLite's busy handler, whose sleeps (up to 100 ms each) would
    /// dominate tail latency. Other processes sharing the file still meet there.
    write_lock: Arc<tokio::sync::Mutex<()>>,
}

/// Removes a password from a URL for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

impl Store {
    /// Connects to `url`: `sqlite://path/to/file.db` (created if missing), `sqlite::memory:`
    /// (one connection), or `postgres://user@host/db`.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, 8).await
    }

    /// Like [`connect`](Self::connect) with a pool of at most `max_connections`.
    pub async fn connect_with(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let bad = |reason: &str| StoreError::Url {
            url: redact(url),
            reason: reason.to_owned(),
        };
        let (backend, url) = if let Some(rest) = url.strip_prefix("sqlite:") {
            let path = rest.trim_start_matches("//");
            if path.is_empty() {
                return Err(bad("no file path (sqlite://path/to/file.db)"));
            }
            if path != ":memory:"
                && let Some(dir) =
                    std::path::Path::new(path.split('?').next().unwrap_or(path)).parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir)
                    .map_err(|e| bad(&format!("cannot create {}: {e}", dir.display())))?;
            }
            let mut u = format!("sqlite://{path}");
            if path != ":memory:" && !u.contains("mode=") {
                u.push_str(if u.contains('?') {
                    "&mode=rwc"
                } else {
                    "?mode=rwc"
                });
            }
            (Backend::Sqlite, u)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_owned())
        } else {
            return Err(bad("expected sqlite://… or postgres://…"));
        };
        let options = AnyConnectOptions::from_str(&url).map_err(|e| bad(&e.to_string()))?;
        let memory = url.contains(":memory:");
        let mut pool = AnyPoolOptions::new()
            .max_connections(if memory { 1 } else { max_connections.max(1) })
            .acquire_timeout(Duration::from_secs(10));
        if backend == Backend::Sqlite {
            // A local file cannot go stale: no ping round trip to the connection's worker
            // thread before every use.
            pool = pool.test_before_acquire(false);
            pool = pool.after_connect(|conn, _| {
                Box::pin(async move {
                    for pragma in [
                        "PRAGMA journal_mode = WAL",
                        "PRAGMA busy_timeout = 5000",
                        "PRAGMA foreign_keys = ON",
                        "PRAGMA synchronous = NORMAL",
                    ] {
                        sqlx::query(pragma).execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            });
        }
        let pool = pool.connect_with(options).await?;
        Ok(Self {
            pool,
            backend,
            url: Arc::from(url.as_str()),
            write_lock: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// The engine.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The URL this store was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The pool, for queries outside a transaction.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// A pooled connection.
    pub async fn acquire(&self) -> Result<PoolConnection<Any>, StoreError> {
        Ok(self.pool.acquire().await?)
    }

    /// Starts a transaction. On SQLite it takes the write lock at once (`BEGIN IMMEDIATE`),
    /// so two writers queue instead of failing with "database is locked" halfway through.
    pub async fn begin(&self) -> Result<Tx, StoreError> {
        let (inner, guard) = match self.backend {
            Backend::Sqlite => {
                let guard = self.write_lock.clone().lock_owned().await;
                (self.pool.begin_with("BEGIN IMMEDIATE").await?, Some(guard))
            }
            Backend::Postgres => (self.pool.begin().await?, None),
        };
        Ok(Tx {
            inner,
            backend: self.backend,
            on_commit: Vec::new(),
            _write: guard,
        })
    }

    /// Applies `component`'s migrations that have not been applied yet, in order, each in
    /// its own transaction. Safe to run from several processes at once.
    pub async fn migrate(
        &self,
        component: &str,
        migrations: &[Migration],
    ) -> Result<(), StoreError> {
        migrate::run(self, component, migrations).await
    }

    /// Runs one writing statement in its own short transaction (on SQLite: in this
    /// process's writer queue). Use it instead of executing writes on the pool.
    pub async fn write<'q>(
        &self,
        query: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments>,
    ) -> Result<sqlx::any::AnyQueryResult, StoreError> {
        let mut tx = self.begin().await?;
        let r = query.execute(tx.conn()).await?;
        tx.commit().await?;
        Ok(r)
    }

    /// `true` when the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// A transaction shared by domain code, the outbox and the inbox. Hooks registered with
/// [`Tx::after_commit`] run once the commit succeeded (the outbox uses one to wake its
/// relay immediately).
pub struct Tx {
    inner: Transaction<'static, Any>,
    backend: Backend,
    on_commit: Vec<Box<dyn FnOnce() + Send>>,
    _write: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl std::fmt::Debug for Tx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx")
            .field("backend", &self.backend)
            .field("hooks", &self.on_commit.len())
            .finish()
    }
}

impl Tx {
    /// The connection to run queries on: `query.execute(tx.conn())`.
    pub fn conn(&mut self) -> &mut AnyConnection {
        &mut self.inner
    }

    /// The engine.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Runs `f` after a successful commit.
    pub fn after_commit(&mut self, f: impl FnOnce() + Send + 'static) {
        self.on_commit.push(Box::new(f));
    }

    /// Commits, then runs the after-commit hooks.
    pub async fn commit(self) -> Result<(), StoreError> {
        let Tx {
            inner,
            on_commit,
            _write,
            ..
        } = self;
        inner.commit().await?;
        drop(_write);
        for f in on_commit {
            f();
        }
        Ok(())
    }

    /// Rolls back; hooks are dropped.
    pub async fn rollback(self) -> Result<(), StoreError> {
        self.inner.rollback().await?;
        Ok(())
    }
}

/// Milliseconds since the Unix epoch, the time representation of every Keel table.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite://x.db"), "sqlite://x.db");
    }

    #[tokio::test]
    async fn bad_urls_are_named() {
        let e = Store::connect("mysql://x").await.unwrap_err();
        assert!(e.to_string().contains("expected sqlite"), "{e}");
        let e = Store::connect("sqlite://").await.unwrap_err();
        assert!(e.to_string().contains("no file path"), "{e}");
    }
}
