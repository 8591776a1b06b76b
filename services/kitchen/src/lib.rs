//! Kitchen: the reference system's tickets — one per order, created, confirmed and
//! cancelled as a participant of the create-order and cancel-order sagas
//! (`kitchen.commands`), accepted by the restaurant over HTTP (`TicketAccepted` on
//! `kitchen.events`).
//!
//! Run it with `keel service kitchen`, or embed it: [`app`] builds the HTTP routes and the
//! background work (outbox relay, command consumer) from a [`KitchenConfig`].

mod api;
mod body;
mod commands;
mod openapi;
mod tickets;
mod time;

use std::io;

use futures::future::BoxFuture;
use keel_chassis::{
    ChassisArgs, CheckKind, ComponentHealth, Invalid, Service, Validate, axum::Router,
};
use keel_discovery::{Registrar, RegistrationConfig};
use keel_messaging::{BusError, Inbox, Outbox, Subscription};
use keel_store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use tickets::TicketState;

/// The service's name: registry id, consumer group, `lb://kitchen`.
pub const SERVICE: &str = ftgo_contracts::services::KITCHEN;

/// The kitchen's own settings (`[app]` in its config file, `KEEL_APP__…` in the environment).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KitchenConfig {
    /// The kitchen's database: `sqlite://path/file.db` or `postgres://…`.
    pub database: String,
    /// The message bus shared by the services: `sqlite://path/bus.db` or `nats://host:4222`.
    pub bus: String,
    /// Register with a Keel (or Eureka) registry when set (`[app.registration]`), under
    /// `kitchen` unless `service` says otherwise.
    pub registration: Option<RegistrationConfig>,
}

impl Default for KitchenConfig {
    fn default() -> Self {
        Self {
            database: "sqlite://.keel/kitchen.db".to_owned(),
            bus: "sqlite://.keel/bus.db".to_owned(),
            registration: None,
        }
    }
}

impl Validate for KitchenConfig {
    fn validate(&self) -> Result<(), Invalid> {
        if !(self.database.starts_with("sqlite:")
            || self.database.starts_with("postgres://")
            || self.database.starts_with("postgresql://"))
        {
            return Err(Invalid::new(
                "database",
                format!(
                    "expected sqlite://… or postgres://…, got {:?}",
                    self.database
                ),
            ));
        }
        if !(self.bus.starts_with("sqlite:") || self.bus.starts_with("nats://")) {
            return Err(Invalid::new(
                "bus",
                format!("expected sqlite://… or nats://…, got {:?}", self.bus),
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

/// Why the kitchen could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database could not be opened or migrated.
    #[error("kitchen database: {0}")]
    Store(#[from] StoreError),
    /// The bus could not be opened or subscribed to.
    #[error("message bus: {0}")]
    Bus(#[from] BusError),
}

/// A kitchen ready to serve: its routes, its database and its background work.
pub struct App {
    /// The HTTP API: `/tickets/…` and `/openapi.json`.
    pub router: Router,
    /// The kitchen's database (health checks, tests).
    pub store: Store,
    /// The outbox relay and the `kitchen.commands` consumer; ends (the command in hand
    /// finished) once the `stop` token given to [`app`] is cancelled. Spawn it.
    pub background: BoxFuture<'static, ()>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// Runs the kitchen until SIGTERM/SIGINT.
pub async fn run(args: &ChassisArgs) -> Result<(), keel_chassis::Error> {
    let service = Service::<KitchenConfig>::load(SERVICE, args)?;
    let config = service.config().clone();
    keel_messaging::trace::set_source(|| {
        keel_chassis::trace_context::current().map(|cx| keel_messaging::trace::TraceHeaders {
            traceparent: cx.traceparent(),
            tracestate: cx.tracestate,
        })
    });
    let bound = service.bind().await?;
    let addr = bound.local_addr().map_err(keel_chassis::Error::Serve)?;
    let app = app(&config, bound.shutdown_token())
        .await
        .map_err(|e| keel_chassis::Error::Serve(io::Error::other(e)))?;
    let store = app.store.clone();
    bound
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
    bound.spawn(app.background);
    if let Some(mut reg) = config.registration.clone().filter(|r| r.enabled) {
        if reg.service.is_empty() {
            reg.service = SERVICE.to_owned();
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

/// Opens the database (migrating it) and the bus, subscribes to `kitchen.commands` (group
/// `kitchen`) and builds the routes. The consumer runs from now on; `background` relays
/// the outbox and stops both once `stop` is cancelled.
pub async fn app(config: &KitchenConfig, stop: CancellationToken) -> Result<App, StartError> {
    let store = Store::connect(&config.database).await?;
    store.migrate(SERVICE, tickets::MIGRATIONS).await?;
    let bus = keel_bus::connect(&config.bus).await?;
    let outbox = Outbox::new(store.clone()).await?;
    let inbox = Inbox::new(store.clone(), "kitchen.commands").await?;
    let consumer = bus
        .subscribe(
            Subscription::new(ftgo_contracts::destinations::KITCHEN_COMMANDS, SERVICE),
            commands::handler(inbox, outbox.clone()),
        )
        .await?;
    let relay = outbox.clone().run_relay(bus, stop.clone());
    let background = Box::pin(async move {
        let consume = async move {
            stop.cancelled().await;
            consumer.stop().await;
        };
        tokio::join!(consume, relay);
    });
    Ok(App {
        router: api::router(store.clone(), outbox),
        store,
        background,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_are_valid_and_bad_urls_are_named() {
        let c = KitchenConfig::default();
        assert!(c.validate().is_ok());
        assert_eq!(c.database, "sqlite://.keel/kitchen.db");
        let bad = KitchenConfig {
            database: "mysql://x".to_owned(),
            ..KitchenConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().field, "database");
        let bad = KitchenConfig {
            bus: "kafka://x".to_owned(),
            ..KitchenConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().field, "bus");
    }
}
