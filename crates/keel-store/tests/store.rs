//! The same code path against real SQLite and (when configured) real PostgreSQL.

use keel_store::{Backend, Migration, Store, testing};

const MIGRATIONS: &[Migration] = &[
    Migration::new(
        1,
        "accounts",
        "CREATE TABLE accounts (id TEXT PRIMARY KEY, balance {bigint} NOT NULL);
         CREATE TABLE entries (seq {auto_id}, account TEXT NOT NULL REFERENCES accounts(id), amount {bigint} NOT NULL, note {blob})",
    ),
    Migration::new(2, "index", "CREATE INDEX entries_by_account ON entries (account)"),
];

async fn exercise(store: &Store) {
    store.migrate("bank", MIGRATIONS).await.unwrap();
    // Idempotent.
    store.migrate("bank", MIGRATIONS).await.unwrap();

    let mut tx = store.begin().await.unwrap();
    sqlx::query("INSERT INTO accounts (id, balance) VALUES ($1, $2)")
        .bind("a")
        .bind(100_i64)
        .execute(tx.conn())
        .await
        .unwrap();
    let hooked = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let h = hooked.clone();
    tx.after_commit(move || h.store(true, std::sync::atomic::Ordering::SeqCst));
    let seq: (i64,) = sqlx::query_as(
        "INSERT INTO entries (account, amount, note) VALUES ($1, $2, $3) RETURNING seq",
    )
    .bind("a")
    .bind(-30_i64)
    .bind(vec![1u8, 2, 3])
    .fetch_one(tx.conn())
    .await
    .unwrap();
    assert!(seq.0 >= 1);
    tx.commit().await.unwrap();
    assert!(
        hooked.load(std::sync::atomic::Ordering::SeqCst),
        "after-commit hook ran"
    );

    // A rolled-back transaction leaves nothing and runs no hook.
    let mut tx = store.begin().await.unwrap();
    sqlx::query("INSERT INTO accounts (id, balance) VALUES ($1, $2)")
        .bind("b")
        .bind(1_i64)
        .execute(tx.conn())
        .await
        .unwrap();
    tx.after_commit(|| panic!("must not run"));
    tx.rollback().await.unwrap();
    let n: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM accounts")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(n.0, 1);

    // Foreign keys are enforced on both engines.
    let err = sqlx::query("INSERT INTO entries (account, amount) VALUES ($1, $2)")
        .bind("nobody")
        .bind(1_i64)
        .execute(store.pool())
        .await;
    assert!(
        err.is_err(),
        "foreign key violation on {:?}",
        store.backend()
    );

    let row: (String, i64, Vec<u8>) =
        sqlx::query_as("SELECT account, amount, note FROM entries WHERE seq = $1")
            .bind(seq.0)
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(row, ("a".to_owned(), -30, vec![1, 2, 3]));
}

#[tokio::test]
async fn sqlite_file_store() {
    let dir = testing::TempDir::new("store");
    let store = Store::connect(&dir.sqlite_url("nested/dir/bank.db"))
        .await
        .unwrap();
    assert_eq!(store.backend(), Backend::Sqlite);
    exercise(&store).await;
    let mode: (String,) = sqlx::query_as("PRAGMA journal_mode")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(mode.0.to_lowercase(), "wal");
}

#[tokio::test]
async fn postgres_store() {
    let Some((store, _url)) = testing::fresh_postgres("postgres_store").await.unwrap() else {
        return;
    };
    assert_eq!(store.backend(), Backend::Postgres);
    exercise(&store).await;
}

#[tokio::test]
async fn concurrent_migrators_apply_each_migration_once() {
    let dir = testing::TempDir::new("store-mig");
    let url = dir.sqlite_url("m.db");
    let a = Store::connect(&url).await.unwrap();
    let b = Store::connect(&url).await.unwrap();
    let (ra, rb) = tokio::join!(a.migrate("bank", MIGRATIONS), b.migrate("bank", MIGRATIONS));
    ra.unwrap();
    rb.unwrap();
    let n: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM keel_migrations WHERE component = 'bank'")
        .fetch_one(a.pool())
        .await
        .unwrap();
    assert_eq!(n.0, 2);
}

#[tokio::test]
async fn a_failing_migration_names_itself_and_applies_nothing() {
    let dir = testing::TempDir::new("store-bad");
    let store = Store::connect(&dir.sqlite_url("bad.db")).await.unwrap();
    let bad = [Migration::new(
        1,
        "broken",
        "CREATE TABLE t (x INTEGER); CREATE TABL oops",
    )];
    let e = store.migrate("svc", &bad).await.unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("svc/1 (broken)"), "{msg}");
    let t = sqlx::query("SELECT * FROM t").execute(store.pool()).await;
    assert!(t.is_err(), "the migration's transaction was rolled back");
    let out_of_order = [
        Migration::new(2, "b", "SELECT 1"),
        Migration::new(1, "a", "SELECT 1"),
    ];
    assert!(store.migrate("svc", &out_of_order).await.is_err());
}
