//! Helpers for tests that run against real databases: a fresh SQLite file, and — when
//! `KEEL_TEST_DATABASE_URL` points at a PostgreSQL server — a fresh schema on it.

use std::path::PathBuf;

use crate::{Store, StoreError};

/// The variable naming the PostgreSQL server tests may use.
pub const DATABASE_URL_VAR: &str = "KEEL_TEST_DATABASE_URL";

/// A temporary directory removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A new empty directory under the system temp dir.
    pub fn new(prefix: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "keel-{prefix}-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let _ = std::fs::create_dir_all(&p);
        Self(p)
    }

    /// A `sqlite://` URL for `name` inside the directory.
    pub fn sqlite_url(&self, name: &str) -> String {
        format!("sqlite://{}", self.0.join(name).display())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The PostgreSQL URL for tests, or `None` after printing a notice that the test is skipped.
pub fn postgres_url(test: &str) -> Option<String> {
    match std::env::var(DATABASE_URL_VAR) {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            eprintln!(
                "NOTICE: skipping the PostgreSQL part of `{test}`: {DATABASE_URL_VAR} is not set"
            );
            None
        }
    }
}

/// A store on a fresh schema of the test PostgreSQL server (its own `search_path`), so
/// tests never see each other's tables. `None` (with a notice) when no server is set.
pub async fn fresh_postgres(test: &str) -> Result<Option<(Store, String)>, StoreError> {
    let Some(base) = postgres_url(test) else {
        return Ok(None);
    };
    let schema = format!("keel_test_{:x}", rand::random::<u64>());
    let admin = Store::connect_with(&base, 1).await?;
    // The schema name is generated above, never taken from input.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(admin.pool())
        .await?;
    admin.close().await;
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
    Ok(Some((Store::connect(&url).await?, url)))
}
