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
///
/// The schema's name carries its creation time (`keel_test_<unix seconds>_<random>`); the
/// first call in a process drops the test schemas more than [`SCHEMA_MAX_AGE`] old, so runs
/// do not pile schemas up in the shared database. No test runs that long, so none in use
/// is dropped.
pub async fn fresh_postgres(test: &str) -> Result<Option<(Store, String)>, StoreError> {
    let Some(base) = postgres_url(test) else {
        return Ok(None);
    };
    let now = unix_now();
    let schema = format!("keel_test_{now}_{:x}", rand::random::<u64>());
    let admin = Store::connect_with(&base, 1).await?;
    static SWEPT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !SWEPT.swap(true, std::sync::atomic::Ordering::Relaxed) {
        drop_old_schemas(&admin, now).await;
    }
    // The schema name is generated above, never taken from input.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(admin.pool())
        .await?;
    admin.close().await;
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
    Ok(Some((Store::connect(&url).await?, url)))
}

/// How old a test schema must be before a later test run drops it.
pub const SCHEMA_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The time a test schema's name says it was made, if it is one of [`fresh_postgres`]'s.
/// Names of the older form (`keel_test_<random>`, no time) count as made at time 0.
fn schema_made_at(name: &str) -> Option<u64> {
    let rest = name.strip_prefix("keel_test_")?;
    match rest.split_once('_') {
        Some((secs, _)) => secs.parse().ok(),
        None => Some(0),
    }
}

/// Drops the test schemas made more than [`SCHEMA_MAX_AGE`] before `now`. Tidying only: a
/// failure (another process dropping the same schema at once, say) is printed and the test
/// goes on.
async fn drop_old_schemas(admin: &Store, now: u64) {
    let names: Vec<(String,)> = match sqlx::query_as(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'keel\\_test\\_%'",
    )
    .fetch_all(admin.pool())
    .await
    {
        Ok(names) => names,
        Err(e) => {
            eprintln!("NOTICE: old test schemas not listed: {e}");
            return;
        }
    };
    for (name,) in names {
        let old = schema_made_at(&name)
            .is_some_and(|made| now.saturating_sub(made) > SCHEMA_MAX_AGE.as_secs());
        // The name was read from the catalogue and has the generated form checked above
        // (a fixed prefix, then digits, `_` and hex); quoting keeps it an identifier.
        if old && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            let dropped = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS \"{name}\" CASCADE"
            )))
            .execute(admin.pool())
            .await;
            if let Err(e) = dropped {
                eprintln!("NOTICE: old test schema {name} not dropped: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_test_schema_name_tells_when_it_was_made() {
        assert_eq!(
            schema_made_at("keel_test_1764561000_3fa9c"),
            Some(1_764_561_000)
        );
        assert_eq!(
            schema_made_at("keel_test_3fa9c0d1"),
            Some(0),
            "the older form"
        );
        assert_eq!(schema_made_at("public"), None);
        assert_eq!(schema_made_at("keel_test_x_3fa9c"), None, "not a time");
    }
}
