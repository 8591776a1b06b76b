//! Order history: the reference system's CQRS read model — one row per order, built only
//! from the events of order, kitchen, accounting and delivery (idempotent through the
//! inbox, order-tolerant by versions and ranks), queried by consumer with filters and
//! paging, summed up on a dashboard, rebuildable from scratch by replaying the bus.
//!
//! Run it with `keel service history`, or embed it: [`app`] builds the HTTP routes and the
//! background work from a [`HistoryConfig`]. [`reset`] is the offline rebuild command.
//! See `docs/order-history.md`.

mod api;
mod apply;
mod feed;
mod openapi;
mod token;
mod view;

use std::time::Duration;

use keel_chassis::{ChassisArgs, Invalid, KeelConfig, Validate};
use keel_discovery::RegistrationConfig;
use keel_messaging::BusError;
use keel_store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use feed::{DESTINATIONS, RebuildError, group};
pub use token::HEADER as CONSISTENCY_TOKEN_HEADER;
pub use view::{Dashboard, DeliveryPart, OrderRow, PaymentPart, TicketPart};

/// The service's name: registry id, `lb://order-history`, the prefix of its consumer groups.
pub const SERVICE: &str = ftgo_contracts::services::ORDER_HISTORY;

/// The longest `consistency_wait_ms` allowed.
pub const MAX_CONSISTENCY_WAIT_MS: u64 = 30_000;

/// The order history's own settings (`[app]` in its config file, `KEEL_APP__…` in the
/// environment).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// The view's database: `sqlite://path/file.db` or `postgres://…`.
    pub database: String,
    /// The message bus shared by the services: `sqlite://path/bus.db` or `nats://host:4222`.
    /// It must retain every event the view should be rebuildable from (see the docs).
    pub bus: String,
    /// Register with a Keel (or Eureka) registry when set (`[app.registration]`), under
    /// `order-history` unless `service` says otherwise.
    pub registration: Option<RegistrationConfig>,
    /// How long a query given a consistency token waits for the view to reach it before
    /// answering 409, in milliseconds (default 1000, at most 30000; 0: do not wait).
    pub consistency_wait_ms: u64,
    /// Serve `POST /admin/rebuild` (default true). Do not route `/admin/**` through a
    /// public gateway.
    pub admin_endpoints: bool,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            database: ftgo_runtime::default_database(SERVICE),
            bus: ftgo_runtime::DEFAULT_BUS.to_owned(),
            registration: None,
            consistency_wait_ms: 1000,
            admin_endpoints: true,
        }
    }
}

impl Validate for HistoryConfig {
    fn validate(&self) -> Result<(), Invalid> {
        ftgo_runtime::validate_common(&self.database, &self.bus, self.registration.as_ref())?;
        if self.consistency_wait_ms > MAX_CONSISTENCY_WAIT_MS {
            return Err(Invalid::new(
                "consistency_wait_ms",
                format!(
                    "at most {MAX_CONSISTENCY_WAIT_MS} ms (a query holds its connection while it waits), got {}",
                    self.consistency_wait_ms
                ),
            ));
        }
        Ok(())
    }
}

/// Why the order history could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database could not be opened or migrated.
    #[error("order history database: {0}")]
    Store(#[from] StoreError),
    /// The bus could not be opened or subscribed to.
    #[error("message bus: {0}")]
    Bus(#[from] BusError),
}

impl From<RebuildError> for StartError {
    fn from(e: RebuildError) -> Self {
        match e {
            RebuildError::Store(e) => StartError::Store(e),
            RebuildError::Bus(e) => StartError::Bus(e),
        }
    }
}

/// An order history ready to serve ([`ftgo_runtime::Running`]): its `router` (the HTTP
/// API: `/orders`, `/orders/{id}`, `/dashboard` (also under `/history`), `/admin/view`,
/// `/admin/rebuild` and `/openapi.json`), its `store` (the view's database: health checks,
/// tests) and its `background` work, which stops the consumers (the event in hand finishes
/// first) once the `stop` token given to [`app`] is cancelled. Spawn it.
pub type App = ftgo_runtime::Running;

/// Runs the order history until SIGTERM/SIGINT.
pub async fn run(args: &ChassisArgs) -> Result<(), keel_chassis::Error> {
    ftgo_runtime::run(
        SERVICE,
        args,
        |config: &HistoryConfig| config.registration.clone(),
        |config, stop| async move { app(&config, stop).await },
    )
    .await
}

/// Opens the view's database (migrating it) and the bus, subscribes the current
/// generation's group (`order-history.g<N>`) to the four event destinations and builds the
/// routes. The consumers run from now on; `background` stops them once `stop` is cancelled.
pub async fn app(config: &HistoryConfig, stop: CancellationToken) -> Result<App, StartError> {
    let store = open(config).await?;
    let bus = keel_bus::connect(&config.bus).await?;
    let feed = feed::Feed::start(store.clone(), bus).await?;
    let router = api::router(
        feed.clone(),
        Duration::from_millis(config.consistency_wait_ms),
        config.admin_endpoints,
    );
    let background = Box::pin(async move {
        stop.cancelled().await;
        feed.stop().await;
        tracing::info!("order history consumers stopped");
    });
    Ok(App {
        router,
        store,
        background,
    })
}

async fn open(config: &HistoryConfig) -> Result<Store, StoreError> {
    let store = Store::connect(&config.database).await?;
    store.migrate("order_history", view::MIGRATIONS).await?;
    // The inbox table, so a reset before the first start finds it.
    keel_messaging::Inbox::new(store.clone(), &group(0)).await?;
    Ok(store)
}

/// The offline rebuild: empties the view of `config` and starts its next generation, so
/// the service (started now, or already running — it picks the change up on its next
/// start) replays every retained event into it. Returns the new generation. Prefer
/// `POST /admin/rebuild` on a running service; this is for a stopped one.
pub async fn reset(config: &HistoryConfig) -> Result<u64, StartError> {
    let store = open(config).await?;
    let generation = feed::reset(&store).await?;
    store.close().await;
    Ok(generation)
}

/// `keel service history --rebuild`: loads the configuration as [`run`] does and
/// [`reset`]s the view; prints the new generation.
pub async fn rebuild_command(args: &ChassisArgs) -> Result<u64, keel_chassis::Error> {
    let config: KeelConfig<HistoryConfig> = keel_chassis::config::load(&args.layers()?)?;
    let generation = reset(&config.app)
        .await
        .map_err(|e| keel_chassis::Error::Serve(std::io::Error::other(e)))?;
    println!(
        "order history view emptied; generation {generation} (consumer group {}) replays every retained event when the service starts",
        group(generation)
    );
    Ok(generation)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_are_valid_and_bad_values_are_named() {
        let c = HistoryConfig::default();
        assert!(c.validate().is_ok());
        assert_eq!(c.database, "sqlite://.keel/order-history.db");
        assert_eq!(c.consistency_wait_ms, 1000);
        let bad = HistoryConfig {
            database: "mysql://x".to_owned(),
            ..HistoryConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().field, "database");
        let bad = HistoryConfig {
            consistency_wait_ms: 60_000,
            ..HistoryConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().field, "consistency_wait_ms");
    }

    #[test]
    fn groups_are_named_after_the_generation() {
        assert_eq!(group(3), "order-history.g3");
        assert!(keel_messaging::validate_name(&group(u64::MAX)).is_ok());
    }
}
