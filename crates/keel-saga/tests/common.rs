//! A three-participant create-order saga used by the saga tests (and by the crash test's
//! worker processes): order (orchestrator, local steps), consumer (validates), kitchen
//! (ticket: create, cancel, confirm), accounting (authorize: the pivot).
#![allow(dead_code, unreachable_pub, missing_debug_implementations)]

use std::{sync::Arc, time::Duration};

use keel_bus_sqlite::{Settings, SqliteBus};
use keel_messaging::{Bus, Consumer, Inbox, Outbox, Subscription};
use keel_saga::{Command, CommandError, Orchestrator, SagaDefinition, Step, command_handler};
use keel_store::{Migration, Store, testing::TempDir};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OrderData {
    pub order_id: String,
    pub total: i64,
    /// Which participant refuses: "consumer", "kitchen", "accounting" or "".
    pub fail_at: String,
    pub ticket_id: Option<String>,
    pub authorization: Option<String>,
    pub rejection: Option<String>,
    /// Which participant fails transiently once per command (redelivered): "" for none.
    #[serde(default)]
    pub flaky_at: String,
}

static FLAKED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

pub const ORDER_TABLES: &[Migration] = &[Migration::new(
    1,
    "orders",
    "CREATE TABLE orders (id TEXT PRIMARY KEY, state TEXT NOT NULL)",
)];
pub const PARTICIPANT_TABLES: &[Migration] = &[Migration::new(
    1,
    "effects",
    "CREATE TABLE effects (seq {auto_id}, order_id TEXT NOT NULL, what TEXT NOT NULL)",
)];

pub fn settings() -> Settings {
    Settings {
        poll: Duration::from_millis(50),
        member_timeout: Duration::from_millis(1000),
        partitions: 4,
        ..Settings::default()
    }
}

async fn set_order_state(tx: &mut keel_store::Tx, id: &str, state: &str) -> Result<(), String> {
    sqlx::query("UPDATE orders SET state = $1 WHERE id = $2")
        .bind(state)
        .bind(id)
        .execute(tx.conn())
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

pub fn create_order_saga() -> SagaDefinition<OrderData> {
    SagaDefinition::new("create-order")
        .step(
            Step::local("create order", |tx, d: &mut OrderData| {
                Box::pin(async move {
                    sqlx::query("INSERT INTO orders (id, state) VALUES ($1, 'APPROVAL_PENDING')")
                        .bind(&d.order_id)
                        .execute(tx.conn())
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                })
            })
            .compensate_locally(|tx, d: &mut OrderData| {
                Box::pin(async move { set_order_state(tx, &d.order_id, "REJECTED").await })
            }),
        )
        .step(
            Step::command("validate consumer", |d: &OrderData| {
                Command::new(
                    "consumer.commands",
                    "ValidateOrder",
                    json!({"orderId": d.order_id, "total": d.total, "failAt": d.fail_at, "flakyAt": d.flaky_at}),
                )
            })
            .on_failure(|d, r| d.rejection = Some(r.reply_type.clone()))
            .timeout(Duration::from_secs(20)),
        )
        .step(
            Step::command("create ticket", |d: &OrderData| {
                Command::new(
                    "kitchen.commands",
                    "CreateTicket",
                    json!({"orderId": d.order_id, "failAt": d.fail_at, "flakyAt": d.flaky_at}),
                )
            })
            .on_reply(|d, r| d.ticket_id = r.payload["ticketId"].as_str().map(str::to_owned))
            .on_failure(|d, r| d.rejection = Some(r.reply_type.clone()))
            .compensate_with(|d: &OrderData| {
                Command::new(
                    "kitchen.commands",
                    "CancelTicket",
                    json!({"orderId": d.order_id}),
                )
            })
            .timeout(Duration::from_secs(20)),
        )
        .step(
            Step::command("authorize payment", |d: &OrderData| {
                Command::new(
                    "accounting.commands",
                    "Authorize",
                    json!({"orderId": d.order_id, "total": d.total, "failAt": d.fail_at, "flakyAt": d.flaky_at}),
                )
            })
            .on_reply(|d, r| {
                d.authorization = r.payload["authorizationId"].as_str().map(str::to_owned)
            })
            .on_failure(|d, r| d.rejection = Some(r.reply_type.clone()))
            .pivot()
            .timeout(Duration::from_secs(20)),
        )
        .step(
            Step::command("confirm ticket", |d: &OrderData| {
                Command::new(
                    "kitchen.commands",
                    "ConfirmTicket",
                    json!({"orderId": d.order_id}),
                )
            })
            .retriable()
            .timeout(Duration::from_secs(20)),
        )
        .step(
            Step::local("approve order", |tx, d: &mut OrderData| {
                Box::pin(async move { set_order_state(tx, &d.order_id, "APPROVED").await })
            })
            .retriable(),
        )
}

/// Records an effect; returns the reply payload.
async fn effect(tx: &mut keel_store::Tx, order: &str, what: &str) -> Result<(), CommandError> {
    sqlx::query("INSERT INTO effects (order_id, what) VALUES ($1, $2)")
        .bind(order)
        .bind(what)
        .execute(tx.conn())
        .await
        .map(|_| ())
        .map_err(|e| CommandError::Retry(e.to_string()))
}

/// Runs `outbox`'s relay until `stop`. (On PostgreSQL every service has a schema of its
/// own in one database; the relay's leadership lock is per outbox table, so each of them
/// leads its own.)
pub fn relay(outbox: Outbox, bus: Arc<dyn Bus>, stop: CancellationToken) {
    tokio::spawn(outbox.run_relay(bus, stop));
}

/// Where a test runs: stores and bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Env {
    /// SQLite files, the embedded bus.
    Sqlite,
    /// PostgreSQL schemas (`KEEL_TEST_DATABASE_URL`), the embedded bus.
    Postgres,
    /// PostgreSQL schemas and NATS JetStream (`KEEL_TEST_NATS_URL`).
    PostgresNats,
}

impl Env {
    pub fn postgres(self) -> bool {
        self != Env::Sqlite
    }
}

/// The variable naming the NATS server (with JetStream) tests may use.
pub const NATS_URL_VAR: &str = "KEEL_TEST_NATS_URL";
/// The variable naming the PostgreSQL server tests may use.
pub const DATABASE_URL_VAR: &str = "KEEL_TEST_DATABASE_URL";

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Whether `env` can run here; if not, prints a `NOTICE:` line saying `test` is skipped.
pub fn available(test: &str, env: Env) -> bool {
    let missing: Vec<&str> = match env {
        Env::Sqlite => vec![],
        Env::Postgres => [DATABASE_URL_VAR]
            .into_iter()
            .filter(|v| var(v).is_none())
            .collect(),
        Env::PostgresNats => [DATABASE_URL_VAR, NATS_URL_VAR]
            .into_iter()
            .filter(|v| var(v).is_none())
            .collect(),
    };
    if missing.is_empty() {
        return true;
    }
    eprintln!(
        "NOTICE: skipping `{test}`: {} not set",
        missing.join(" and ")
    );
    false
}

/// A NATS prefix no other test (or earlier run) uses: subjects, streams and durable
/// consumers (the groups) all derive from it, so destinations and groups are unique too.
pub fn unique_prefix() -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(
        "ks{:x}",
        t ^ (u64::from(std::process::id()) << 40) ^ (n << 56)
    )
}

/// NATS settings for the saga tests under `prefix`.
pub fn nats_settings(prefix: &str) -> keel_bus_nats::Settings {
    keel_bus_nats::Settings {
        prefix: prefix.to_owned(),
        partitions: 4,
        ack_wait: Duration::from_secs(2),
        ..keel_bus_nats::Settings::default()
    }
}

/// Opens the NATS bus under `prefix` at `KEEL_TEST_NATS_URL`.
pub async fn open_nats(prefix: &str) -> Arc<dyn Bus> {
    let url = var(NATS_URL_VAR).expect("KEEL_TEST_NATS_URL");
    Arc::new(
        keel_bus_nats::NatsBus::connect_with(&url, nats_settings(prefix))
            .await
            .unwrap(),
    )
}

/// Deletes the streams of a NATS prefix on drop (on a thread of its own, so it also runs
/// while a failed test unwinds).
#[derive(Debug)]
pub struct NatsCleanup(pub String);

impl Drop for NatsCleanup {
    fn drop(&mut self) {
        let prefix = self.0.clone();
        let Some(url) = var(NATS_URL_VAR) else { return };
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(bus) =
                    keel_bus_nats::NatsBus::connect_with(&url, nats_settings(&prefix)).await
                {
                    let _ = bus.delete_all_streams().await;
                }
            });
        })
        .join();
    }
}

/// A test's bus, and (NATS) the guard deleting its streams.
pub struct TestBus {
    pub bus: Arc<dyn Bus>,
    pub cleanup: Option<NatsCleanup>,
}

/// The bus for `env`: the embedded one in `dir`, or NATS under a fresh prefix.
pub async fn test_bus(dir: &TempDir, env: Env) -> TestBus {
    match env {
        Env::Sqlite | Env::Postgres => TestBus {
            bus: open_bus(&dir.sqlite_url("bus.db")).await,
            cleanup: None,
        },
        Env::PostgresNats => {
            let prefix = unique_prefix();
            TestBus {
                bus: open_nats(&prefix).await,
                cleanup: Some(NatsCleanup(prefix)),
            }
        }
    }
}

/// Store URLs for `services`: SQLite files in `dir`, or — when `postgres` — fresh schemas
/// on the test PostgreSQL server (`None`, after a `NOTICE:` line, when it is not set).
pub async fn store_urls(
    test: &str,
    dir: &TempDir,
    postgres: bool,
    services: &[&str],
) -> Option<Vec<String>> {
    let mut urls = Vec::new();
    for s in services {
        if postgres {
            let (store, url) = keel_store::testing::fresh_postgres(test).await.unwrap()?;
            store.close().await;
            urls.push(url);
        } else {
            urls.push(dir.sqlite_url(&format!("{s}.db")));
        }
    }
    Some(urls)
}

/// Starts one participant (its store, outbox relay, inbox and command consumer).
pub async fn participant(
    name: &str,
    bus: Arc<dyn Bus>,
    store_url: &str,
    stop: CancellationToken,
) -> (Store, Consumer) {
    let store = Store::connect(store_url).await.unwrap();
    store.migrate(name, PARTICIPANT_TABLES).await.unwrap();
    let outbox = Outbox::new(store.clone()).await.unwrap();
    relay(outbox.clone(), bus.clone(), stop);
    let inbox = Inbox::new(store.clone(), &format!("{name}.commands"))
        .await
        .unwrap();
    let who = name.to_owned();
    let handler = command_handler(inbox, outbox, move |tx, cmd| {
        let who = who.clone();
        Box::pin(async move {
            let order = cmd.payload["orderId"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let fail = cmd.payload["failAt"].as_str().unwrap_or_default() == who;
            let t = cmd.message_type().unwrap_or_default().to_owned();
            if cmd.payload["flakyAt"].as_str().unwrap_or_default() == who {
                let key = format!("{who}/{order}/{t}");
                let mut f = FLAKED.lock().unwrap();
                if !f.contains(&key) {
                    f.push(key);
                    return Err(CommandError::Retry("transient failure (injected)".into()));
                }
            }
            match (who.as_str(), t.as_str()) {
                ("consumer", "ValidateOrder") => {
                    if fail {
                        return Err(CommandError::failure(
                            "OrderLimitExceeded",
                            json!({"limit": 100}),
                        ));
                    }
                    effect(tx, &order, "validated").await?;
                    Ok(json!({}))
                }
                ("kitchen", "CreateTicket") => {
                    if fail {
                        // Written, then refused: the helper's savepoint undoes the write.
                        effect(tx, &order, "ticket created (refused)").await?;
                        return Err(CommandError::failure("MenuItemUnavailable", json!({})));
                    }
                    effect(tx, &order, "ticket created").await?;
                    Ok(json!({"ticketId": format!("t-{order}")}))
                }
                ("kitchen", "CancelTicket") => {
                    effect(tx, &order, "ticket cancelled").await?;
                    Ok(json!({}))
                }
                ("kitchen", "ConfirmTicket") => {
                    effect(tx, &order, "ticket confirmed").await?;
                    Ok(json!({}))
                }
                ("accounting", "Authorize") => {
                    if fail {
                        effect(tx, &order, "authorized (refused)").await?;
                        return Err(CommandError::failure("PaymentDeclined", json!({})));
                    }
                    effect(tx, &order, "authorized").await?;
                    Ok(json!({"authorizationId": format!("a-{order}")}))
                }
                _ => Err(CommandError::failure("UnknownCommand", json!({"type": t}))),
            }
        })
    });
    let c = bus
        .subscribe(Subscription::new(format!("{name}.commands"), name), handler)
        .await
        .unwrap();
    (store, c)
}

/// The order service: its store, outbox relay and orchestrator loop.
pub async fn order_service(
    bus: Arc<dyn Bus>,
    store_url: &str,
    stop: CancellationToken,
) -> (Store, Orchestrator<OrderData>) {
    order_service_with(create_order_saga(), bus, store_url, stop).await
}

/// The order service running `def`.
pub async fn order_service_with(
    def: SagaDefinition<OrderData>,
    bus: Arc<dyn Bus>,
    store_url: &str,
    stop: CancellationToken,
) -> (Store, Orchestrator<OrderData>) {
    let store = Store::connect(store_url).await.unwrap();
    store.migrate("order", ORDER_TABLES).await.unwrap();
    let outbox = Outbox::new(store.clone()).await.unwrap();
    relay(outbox.clone(), bus.clone(), stop.clone());
    let orch = Orchestrator::new(def, store.clone(), outbox, "order")
        .await
        .unwrap();
    let o = orch.clone();
    tokio::spawn(async move { o.run(bus, stop).await });
    (store, orch)
}

pub async fn open_bus(url: &str) -> Arc<dyn Bus> {
    Arc::new(SqliteBus::open_with(url, settings()).await.unwrap())
}

pub async fn effects(store: &Store, order: &str) -> Vec<String> {
    sqlx::query_as::<_, (String,)>("SELECT what FROM effects WHERE order_id = $1 ORDER BY seq")
        .bind(order)
        .fetch_all(store.pool())
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.0)
        .collect()
}

pub async fn order_state(store: &Store, order: &str) -> Option<String> {
    sqlx::query_as::<_, (String,)>("SELECT state FROM orders WHERE id = $1")
        .bind(order)
        .fetch_optional(store.pool())
        .await
        .unwrap()
        .map(|r| r.0)
}
