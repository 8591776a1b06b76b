//! Order service of the reference system: owns orders and a replica of restaurants and
//! menus (fed by `restaurant.events`), offers the public order API, and orchestrates the
//! create-order and cancel-order sagas with the consumer, kitchen and accounting services.
//!
//! `keel service order` runs it; tests drive [`app`] over HTTP and the embedded bus.

mod api;
mod db;
mod openapi;
mod replica;
mod sagas;

use std::sync::Arc;

use ftgo_contracts::services;
use keel_chassis::{ChassisArgs, Invalid, Validate, axum::Router};
use keel_discovery::RegistrationConfig;
use keel_messaging::{Bus, BusError, Consumer, Inbox};
use keel_saga::{Orchestrator, SagaError};
use keel_store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use sagas::{CANCEL_ORDER, CREATE_ORDER, CancelOrderData, CreateOrderData};

/// The order service's own settings (`[app]` in its config file, `KEEL_APP__…` in the
/// environment).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OrderConfig {
    /// The service's own database: `sqlite://path/file.db` or `postgres://…`.
    pub database: String,
    /// The message bus: `sqlite://path/bus.db` (embedded, shared by all services on the
    /// machine) or `nats://host:4222`.
    pub bus: String,
    /// Register with a Keel (or Eureka) registry when set (`[app.registration]`), under the
    /// name `order` unless it names another.
    pub registration: Option<RegistrationConfig>,
}

impl Default for OrderConfig {
    fn default() -> Self {
        Self {
            database: ftgo_runtime::default_database(services::ORDER),
            bus: ftgo_runtime::DEFAULT_BUS.to_owned(),
            registration: None,
        }
    }
}

impl Validate for OrderConfig {
    fn validate(&self) -> Result<(), Invalid> {
        ftgo_runtime::validate_common(&self.database, &self.bus, self.registration.as_ref())?;
        Ok(())
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database could not be opened or migrated.
    #[error("order database: {0}")]
    Store(#[from] StoreError),
    /// The bus could not be opened or subscribed to.
    #[error("message bus: {0}")]
    Bus(#[from] BusError),
    /// A saga could not be set up.
    #[error("sagas: {0}")]
    Saga(#[from] SagaError),
}

/// The service, started by [`app`]: serve its [`router`](App::router); its background work
/// runs until the stop token is cancelled.
#[derive(Debug)]
pub struct App {
    /// The HTTP API (without the chassis's built-in routes, which `serve` adds).
    pub router: Router,
    /// The service's database.
    pub store: Store,
    /// The create-order saga's orchestrator (e.g. [`Orchestrator::ended`] in tests).
    pub create_order: Orchestrator<CreateOrderData>,
    /// The cancel-order saga's orchestrator.
    pub cancel_order: Orchestrator<CancelOrderData>,
    /// The outbox relay, both orchestrators and the replica consumer.
    pub background: Background,
}

/// The background work of a started service.
#[derive(Debug)]
pub struct Background {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    replica: Consumer,
}

impl Background {
    /// Waits for the stop token, then stops consuming restaurant events (the event in hand
    /// finishes first) and waits for the relay (which hands back its leadership) and the
    /// orchestrators (which stop their reply consumers). Spawn it as a service task.
    pub async fn stopped(self) {
        self.stop.cancelled().await;
        self.replica.stop().await;
        for t in self.tasks {
            let _ = t.await;
        }
        tracing::info!("order background work stopped");
    }
}

/// Runs the order service until SIGTERM/SIGINT.
pub async fn run(args: &ChassisArgs) -> Result<(), keel_chassis::Error> {
    ftgo_runtime::run(
        services::ORDER,
        args,
        |config: &OrderConfig| config.registration.clone(),
        |config, stop| async move {
            let app = app(&config, stop).await?;
            Ok::<_, StartError>(ftgo_runtime::Running {
                router: app.router,
                store: app.store,
                background: Box::pin(app.background.stopped()),
            })
        },
    )
    .await
}

/// Starts the service: opens and migrates its database, starts the outbox relay, the
/// create-order and cancel-order orchestrators (replies on
/// `order.saga.<saga>.replies`, consumer group `order`) and the replica's consumer of
/// `restaurant.events` (group `order`), and builds the routes. Everything in the background
/// stops when `stop` is cancelled (see [`Background::stopped`]).
pub async fn app(config: &OrderConfig, stop: CancellationToken) -> Result<App, StartError> {
    let ftgo_runtime::Plumbing {
        store,
        bus,
        outbox,
        relay,
    } = ftgo_runtime::start::<StartError>(
        services::ORDER,
        &config.database,
        &config.bus,
        db::MIGRATIONS,
        &stop,
    )
    .await?;
    let create_order = Orchestrator::new(
        sagas::create_order(&outbox),
        store.clone(),
        outbox.clone(),
        services::ORDER,
    )
    .await?;
    let cancel_order = Orchestrator::new(
        sagas::cancel_order(&outbox),
        store.clone(),
        outbox.clone(),
        services::ORDER,
    )
    .await?;
    let inbox = Inbox::new(store.clone(), replica::INBOX).await?;
    let replica = replica::subscribe(&inbox, bus.as_ref()).await?;
    let tasks = vec![
        relay,
        spawn_orchestrator(&create_order, &bus, &stop),
        spawn_orchestrator(&cancel_order, &bus, &stop),
    ];
    let router = api::router(Arc::new(api::AppState {
        store: store.clone(),
        outbox: outbox.clone(),
        create: create_order.clone(),
        cancel: cancel_order.clone(),
    }));
    Ok(App {
        router,
        store,
        create_order,
        cancel_order,
        background: Background {
            stop,
            tasks,
            replica,
        },
    })
}

/// Runs `orchestrator` (reply consumer and timeout sweeper) until `stop`; if it cannot
/// subscribe, tries again every second, so a bus that is briefly down does not leave the
/// sagas without replies.
fn spawn_orchestrator<D: keel_saga::SagaData>(
    orchestrator: &Orchestrator<D>,
    bus: &Arc<dyn Bus>,
    stop: &CancellationToken,
) -> JoinHandle<()> {
    let (o, bus, stop) = (orchestrator.clone(), bus.clone(), stop.clone());
    tokio::spawn(async move {
        while !stop.is_cancelled() {
            match o.run(bus.clone(), stop.clone()).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::error!(saga = o.saga_type(), error = %e, "saga orchestrator failed; restarting");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    })
}
