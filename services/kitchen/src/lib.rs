//! Kitchen: the reference system's tickets — one per order, created, confirmed and
//! cancelled as a participant of the create-order and cancel-order sagas
//! (`kitchen.commands`), accepted by the restaurant over HTTP (`TicketAccepted` on
//! `kitchen.events`).
//!
//! Run it with `keel service kitchen`, or embed it: [`app`] builds the HTTP routes and the
//! background work (outbox relay, command consumer) from a [`KitchenConfig`].

mod api;
mod commands;
mod openapi;
mod tickets;

use keel_chassis::{ChassisArgs, Invalid, Validate};
use keel_discovery::RegistrationConfig;
use keel_messaging::{BusError, Inbox, Subscription};
use keel_store::StoreError;
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
            database: ftgo_runtime::default_database(SERVICE),
            bus: ftgo_runtime::DEFAULT_BUS.to_owned(),
            registration: None,
        }
    }
}

impl Validate for KitchenConfig {
    fn validate(&self) -> Result<(), Invalid> {
        ftgo_runtime::validate_common(&self.database, &self.bus, self.registration.as_ref())?;
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

/// A kitchen ready to serve ([`ftgo_runtime::Running`]): its `router` (the HTTP API:
/// `/tickets/…` and `/openapi.json`), its `store` (the kitchen's database: health checks,
/// tests) and its `background` work — the outbox relay and the `kitchen.commands` consumer,
/// which ends (the command in hand finished) once the `stop` token given to [`app`] is
/// cancelled. Spawn it.
pub type App = ftgo_runtime::Running;

/// Runs the kitchen until SIGTERM/SIGINT.
pub async fn run(args: &ChassisArgs) -> Result<(), keel_chassis::Error> {
    ftgo_runtime::run(
        SERVICE,
        args,
        |config: &KitchenConfig| config.registration.clone(),
        |config, stop| async move { app(&config, stop).await },
    )
    .await
}

/// Opens the database (migrating it) and the bus, subscribes to `kitchen.commands` (group
/// `kitchen`) and builds the routes. The consumer runs from now on; `background` relays
/// the outbox and stops both once `stop` is cancelled.
pub async fn app(config: &KitchenConfig, stop: CancellationToken) -> Result<App, StartError> {
    let ftgo_runtime::Plumbing {
        store,
        bus,
        outbox,
        relay,
    } = ftgo_runtime::start::<StartError>(
        SERVICE,
        &config.database,
        &config.bus,
        tickets::MIGRATIONS,
        &stop,
    )
    .await?;
    let inbox = Inbox::new(store.clone(), "kitchen.commands").await?;
    let consumer = bus
        .subscribe(
            Subscription::new(ftgo_contracts::destinations::KITCHEN_COMMANDS, SERVICE),
            commands::handler(inbox, outbox.clone()),
        )
        .await?;
    let background = Box::pin(async move {
        let consume = async move {
            stop.cancelled().await;
            consumer.stop().await;
        };
        let _ = tokio::join!(consume, relay);
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
