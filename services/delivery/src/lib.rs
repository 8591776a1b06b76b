//! Delivery: the reference system's deliveries and couriers, by choreography — a delivery
//! is scheduled when `kitchen.events` says `TicketAccepted` and cancelled when
//! `order.events` says `OrderCancelled`, each through the inbox; `DeliveryScheduled`,
//! `CourierAssigned` and `DeliveryCancelled` go to `delivery.events` through the outbox.
//!
//! No saga waits for it: with the service stopped, orders are still approved, and when it
//! starts again its consumer group resumes from its committed offsets and catches up.
//!
//! Run it with `keel service delivery`, or embed it: [`app`] builds the HTTP routes and
//! the background work (outbox relay, event consumers, assignment sweep) from a
//! [`DeliveryConfig`].

mod api;
mod events;
mod openapi;
mod scheduling;
mod store;
mod telemetry;

use std::time::Duration;

use keel_chassis::{ChassisArgs, Invalid, Validate};
use keel_discovery::RegistrationConfig;
use keel_messaging::{BusError, Inbox, Outbox, Subscription};
use keel_store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use store::DeliveryState;

/// The service's name: registry id, consumer group, `lb://delivery`.
pub const SERVICE: &str = ftgo_contracts::services::DELIVERY;

/// The delivery service's own settings (`[app]` in its config file, `KEEL_APP__…` in the
/// environment).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    /// The delivery service's database: `sqlite://path/file.db` or `postgres://…`.
    pub database: String,
    /// The message bus shared by the services: `sqlite://path/bus.db` or `nats://host:4222`.
    pub bus: String,
    /// How often, in milliseconds, waiting (`PENDING`) deliveries are offered to available
    /// couriers in the background — a safety net: availability changes and new deliveries
    /// assign at once. `0` turns the sweep off; otherwise 100 to 3 600 000.
    pub assign_interval_ms: u64,
    /// Register with a Keel (or Eureka) registry when set (`[app.registration]`), under
    /// `delivery` unless `service` says otherwise.
    pub registration: Option<RegistrationConfig>,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            database: ftgo_runtime::default_database(SERVICE),
            bus: ftgo_runtime::DEFAULT_BUS.to_owned(),
            assign_interval_ms: 5_000,
            registration: None,
        }
    }
}

impl Validate for DeliveryConfig {
    fn validate(&self) -> Result<(), Invalid> {
        ftgo_runtime::validate_common(&self.database, &self.bus, self.registration.as_ref())?;
        if self.assign_interval_ms != 0 && !(100..=3_600_000).contains(&self.assign_interval_ms) {
            return Err(Invalid::new(
                "assign_interval_ms",
                "must be 0 (off) or between 100 and 3600000",
            ));
        }
        Ok(())
    }
}

/// Why the delivery service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database could not be opened or migrated.
    #[error("delivery database: {0}")]
    Store(#[from] StoreError),
    /// The bus could not be opened or subscribed to.
    #[error("message bus: {0}")]
    Bus(#[from] BusError),
}

/// A delivery service ready to serve ([`ftgo_runtime::Running`]): its `router` (the HTTP
/// API: `/deliveries/…`, `/couriers/…`, `/openapi.json` and `/docs`), its `store` (the
/// delivery service's database: health checks, tests) and its `background` work — the
/// outbox relay, the `kitchen.events` and `order.events` consumers and the assignment
/// sweep, which ends (the events in hand finished) once the `stop` token given to [`app`]
/// is cancelled. Spawn it.
pub type App = ftgo_runtime::Running;

/// Runs the delivery service until SIGTERM/SIGINT.
pub async fn run(args: &ChassisArgs) -> Result<(), keel_chassis::Error> {
    ftgo_runtime::run(
        SERVICE,
        args,
        |config: &DeliveryConfig| config.registration.clone(),
        |config, stop| async move { app(&config, stop).await },
    )
    .await
}

/// Opens the database (migrating it) and the bus, subscribes to `kitchen.events` and
/// `order.events` (group `delivery`, each through its inbox) and builds the routes. The
/// consumers run from now on — first catching up on whatever was published while the
/// service was stopped; `background` relays the outbox, sweeps waiting deliveries and
/// stops it all once `stop` is cancelled.
pub async fn app(config: &DeliveryConfig, stop: CancellationToken) -> Result<App, StartError> {
    let ftgo_runtime::Plumbing {
        store,
        bus,
        outbox,
        relay,
    } = ftgo_runtime::start::<StartError>(
        SERVICE,
        &config.database,
        &config.bus,
        store::MIGRATIONS,
        &stop,
    )
    .await?;
    if let Ok((pending, available)) = store::gauges(store.pool()).await {
        telemetry::set_gauges(pending, available);
    }
    let kitchen_outbox = outbox.clone();
    let kitchen_events = Inbox::new(store.clone(), "delivery.kitchen-events")
        .await?
        .subscribe(
            bus.as_ref(),
            Subscription::new(ftgo_contracts::destinations::KITCHEN_EVENTS, SERVICE),
            move |tx, d| events::on_kitchen_event(tx, d, kitchen_outbox.clone()),
        )
        .await?;
    let order_outbox = outbox.clone();
    let order_events = Inbox::new(store.clone(), "delivery.order-events")
        .await?
        .subscribe(
            bus.as_ref(),
            Subscription::new(ftgo_contracts::destinations::ORDER_EVENTS, SERVICE),
            move |tx, d| events::on_order_event(tx, d, order_outbox.clone()),
        )
        .await?;
    let sweep = sweep(
        store.clone(),
        outbox.clone(),
        config.assign_interval_ms,
        stop.clone(),
    );
    let background = Box::pin(async move {
        let consume = async move {
            stop.cancelled().await;
            tokio::join!(kitchen_events.stop(), order_events.stop());
        };
        let _ = tokio::join!(consume, relay, sweep);
    });
    Ok(App {
        router: api::router(store.clone(), outbox),
        store,
        background,
    })
}

/// Every `interval_ms` (never when 0), offers waiting deliveries to available couriers,
/// until `stop` is cancelled.
async fn sweep(store: Store, outbox: Outbox, interval_ms: u64, stop: CancellationToken) {
    if interval_ms == 0 {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_millis(interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = sweep_once(&store, &outbox).await {
            tracing::warn!(error = %e, "assignment sweep failed; next round retries");
        }
    }
}

async fn sweep_once(store: &Store, outbox: &Outbox) -> Result<(), scheduling::Error> {
    // Read-only check first: most rounds have nothing to do and need no write lock.
    let (pending, _) = store::gauges(store.pool()).await?;
    if pending == 0 {
        return Ok(());
    }
    let mut tx = store.begin().await?;
    let assigned = scheduling::assign_pending(&mut tx, outbox).await?;
    tx.commit().await?;
    if !assigned.is_empty() {
        tracing::info!(
            assigned = assigned.len(),
            "waiting deliveries assigned by the sweep"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_are_valid_and_bad_values_are_named() {
        let c = DeliveryConfig::default();
        assert!(c.validate().is_ok());
        assert_eq!(c.database, "sqlite://.keel/delivery.db");
        assert_eq!(c.bus, "sqlite://.keel/bus.db");
        for (bad, field) in [
            (
                DeliveryConfig {
                    database: "mysql://x".to_owned(),
                    ..DeliveryConfig::default()
                },
                "database",
            ),
            (
                DeliveryConfig {
                    bus: "kafka://x".to_owned(),
                    ..DeliveryConfig::default()
                },
                "bus",
            ),
            (
                DeliveryConfig {
                    assign_interval_ms: 5,
                    ..DeliveryConfig::default()
                },
                "assign_interval_ms",
            ),
        ] {
            assert_eq!(bad.validate().unwrap_err().field, field);
        }
        let off = DeliveryConfig {
            assign_interval_ms: 0,
            ..DeliveryConfig::default()
        };
        assert!(off.validate().is_ok());
    }
}
