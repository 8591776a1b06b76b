//! Order service of the reference system: owns orders and a replica of restaurants and
//! menus (fed by `restaurant.events`), offers the public order API, and orchestrates the
//! create-order and cancel-order sagas with the consumer, kitchen and accounting services.
//!
//! `keel service order` runs it; tests drive [`app`] over HTTP and the embedded bus.

mod api;
mod body;
mod db;
mod openapi;
mod replica;
mod sagas;

use std::sync::Arc;

use ftgo_contracts::services;
use keel_chassis::{
    ChassisArgs, CheckKind, ComponentHealth, Invalid, Service, Validate, axum::Router,
};
use keel_discovery::{Registrar, RegistrationConfig};
use keel_messaging::{Bus, BusError, Consumer, Inbox, Outbox};
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
            database: "sqlite://.keel/order.db".to_owned(),
            bus: "sqlite://.keel/bus.db".to_owned(),
            registration: None,
        }
    }
}

impl Validate for OrderConfig {
    fn validate(&self) -> Result<(), Invalid> {
        if !["sqlite:", "postgres://", "postgresql://"]
            .iter()
            .any(|p| self.database.starts_with(p))
        {
            return Err(Invalid::new(
                "database",
                "expected sqlite://path/file.db or postgres://…",
            ));
        }
        if !["sqlite:", "nats://"]
            .iter()
            .any(|p| self.bus.starts_with(p))
        {
            return Err(Invalid::new(
                "bus",
                "expected sqlite://path/bus.db or nats://host:port",
            ));
        }
        if let Some(r) = &self.registration
            && r.enabled
            && r.registry.is_empty()
        {
            return Err(Invalid::new(
                "registration.registry",
                "at least one registry URL is required",
            ));
        }
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
    let service = Service::<OrderConfig>::load(services::ORDER, args)?;
    let config = service.config().clone();
    keel_messaging::trace::set_source(|| {
        keel_chassis::trace_context::current().map(|cx| keel_messaging::trace::TraceHeaders {
            traceparent: cx.traceparent(),
            tracestate: cx.tracestate,
        })
    });
    let app = app(&config, service.shutdown_token())
        .await
        .map_err(|e| keel_chassis::Error::Serve(std::io::Error::other(e)))?;
    let store = app.store.clone();
    service
        .health()
        .register("database", CheckKind::Readiness, move || {
            let store = store.clone();
            async move {
                match store.ping().await {
                    Ok(()) => ComponentHealth::up(),
                    Err(e) => ComponentHealth::down(e),
                }
            }
        });
    service.spawn(app.background.stopped());
    let bound = service.bind().await?;
    let addr = bound.local_addr().map_err(keel_chassis::Error::Serve)?;
    if let Some(mut reg) = config.registration.clone().filter(|r| r.enabled) {
        if reg.service.is_empty() {
            reg.service = services::ORDER.to_owned();
        }
        if reg.port == 0 {
            reg.port = addr.port();
        }
        // Registers now, heartbeats, and deregisters as soon as draining begins.
        let registrar = Registrar::new(reg, reqwest::Client::new());
        bound.spawn(registrar.run(bound.draining_token()));
    }
    bound.serve(app.router).await
}

/// Starts the service: opens and migrates its database, starts the outbox relay, the
/// create-order and cancel-order orchestrators (replies on
/// `order.saga.<saga>.replies`, consumer group `order`) and the replica's consumer of
/// `restaurant.events` (group `order`), and builds the routes. Everything in the background
/// stops when `stop` is cancelled (see [`Background::stopped`]).
pub async fn app(config: &OrderConfig, stop: CancellationToken) -> Result<App, StartError> {
    let store = Store::connect(&config.database).await?;
    store.migrate(services::ORDER, db::MIGRATIONS).await?;
    let bus: Arc<dyn Bus> = keel_bus::connect(&config.bus).await?;
    let outbox = Outbox::new(store.clone()).await?;
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
        tokio::spawn(outbox.clone().run_relay(bus.clone(), stop.clone())),
        spawn_orchestrator(&create_order, &bus, &stop),
        spawn_orchestrator(&cancel_order, &bus, &stop),
    ];
    let router = api::router(Arc::new(api::AppState {
        store: store.clone(),
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
