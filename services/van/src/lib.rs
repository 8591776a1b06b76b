//! Reference system: a payment-network (VAN) simulator — approve, cancel and network-cancel
//! card authorizations, idempotent by key, with error rate and latency injectable at
//! runtime. Run as several instances (`van-a`, `van-b`) that accounting fails over between.
//!
//! Run it with `keel service van --set app.network=van-a`, or embed it: [`app`] builds the
//! HTTP routes from a [`VanConfig`]. It needs no bus. See `docs/payment-networks.md`.

mod api;
mod faults;
mod ledger;
mod openapi;

use keel_chassis::{ChassisArgs, Invalid, Validate, axum::Router};
use keel_discovery::RegistrationConfig;
use keel_store::{Store, StoreError};
use serde::{Deserialize, Serialize};

pub use faults::{Faults, Operation};

/// The component name: chassis service name and migration component. Each instance
/// registers under its own [`VanConfig::network`] name.
pub const SERVICE: &str = "van";

/// The largest fee, in basis points (100 %).
pub const MAX_FEE_BPS: u32 = 10_000;

/// The simulator's own settings (`[app]` in its config file, `KEEL_APP__…` in the environment).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct VanConfig {
    /// The network's name (required), e.g. `van-a`: it names the authorizations' ids, the
    /// metrics' `network` label, and is the registry service name the instance registers
    /// under.
    pub network: String,
    /// The database: `sqlite://path/file.db` or `postgres://…`. Empty (the default) means
    /// `sqlite://.keel/<network>.db`.
    pub database: String,
    /// The network's fee in basis points (`150` = 1.5 %), reported with every answer;
    /// accounting may weight its choice of network by it. Default 100.
    pub fee_bps: u32,
    /// Faults injected from the start (change them at runtime with `PUT /admin/faults`).
    pub faults: Faults,
    /// Register with a Keel (or Eureka) registry when set (`[app.registration]`), under
    /// `network` unless `service` says otherwise.
    pub registration: Option<RegistrationConfig>,
}

impl Default for VanConfig {
    fn default() -> Self {
        Self {
            network: String::new(),
            database: String::new(),
            fee_bps: 100,
            faults: Faults::default(),
            registration: None,
        }
    }
}

impl VanConfig {
    /// The database URL in effect: `database`, or `sqlite://.keel/<network>.db`.
    pub fn database_url(&self) -> String {
        if self.database.is_empty() {
            ftgo_runtime::default_database(&self.network)
        } else {
            self.database.clone()
        }
    }
}

impl Validate for VanConfig {
    fn validate(&self) -> Result<(), Invalid> {
        if self.network.is_empty()
            || !self
                .network
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(Invalid::new(
                "network",
                format!(
                    "a network name of lower-case letters, digits and '-' is required (e.g. van-a), got {:?}",
                    self.network
                ),
            ));
        }
        // The bus is not used; validate the rest like every service does.
        ftgo_runtime::validate_common(
            &self.database_url(),
            ftgo_runtime::DEFAULT_BUS,
            self.registration.as_ref(),
        )?;
        if self.fee_bps > MAX_FEE_BPS {
            return Err(Invalid::new(
                "fee_bps",
                format!("must be at most {MAX_FEE_BPS}, got {}", self.fee_bps),
            ));
        }
        self.faults
            .validate()
            .map_err(|(field, why)| Invalid::new(format!("faults.{field}"), why))?;
        Ok(())
    }
}

/// Why the simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database could not be opened or migrated.
    #[error("payment network database: {0}")]
    Store(#[from] StoreError),
}

/// A network ready to serve: its routes and its database.
pub struct App {
    /// The HTTP API: `/authorizations…`, `/network-cancel`, `/network`, `/admin/faults`,
    /// `/openapi.json`.
    pub router: Router,
    /// The network's database (health checks, tests).
    pub store: Store,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// Runs one network until SIGTERM/SIGINT.
pub async fn run(args: &ChassisArgs) -> Result<(), keel_chassis::Error> {
    ftgo_runtime::run(
        SERVICE,
        args,
        |config: &VanConfig| {
            config.registration.clone().map(|mut r| {
                if r.service.is_empty() {
                    r.service = config.network.clone();
                }
                r
            })
        },
        |config, stop| async move {
            let app = app(&config).await?;
            Ok::<_, StartError>(ftgo_runtime::Running {
                router: app.router,
                store: app.store,
                background: Box::pin(async move { stop.cancelled().await }),
            })
        },
    )
    .await
}

/// Opens the database (migrating it) and builds the routes.
pub async fn app(config: &VanConfig) -> Result<App, StartError> {
    let store = Store::connect(&config.database_url()).await?;
    store.migrate(SERVICE, ledger::MIGRATIONS).await?;
    Ok(App {
        router: api::router(api::State::new(store.clone(), config)),
        store,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_needs_a_network_and_names_bad_fields() {
        let c = VanConfig::default();
        assert_eq!(c.validate().unwrap_err().field, "network");
        let c = VanConfig {
            network: "van-a".to_owned(),
            ..VanConfig::default()
        };
        assert!(c.validate().is_ok());
        assert_eq!(c.database_url(), "sqlite://.keel/van-a.db");
        for (bad, field) in [
            (
                VanConfig {
                    network: "Van A".to_owned(),
                    ..VanConfig::default()
                },
                "network",
            ),
            (
                VanConfig {
                    fee_bps: 10_001,
                    ..c.clone()
                },
                "fee_bps",
            ),
            (
                VanConfig {
                    database: "mysql://x".to_owned(),
                    ..c.clone()
                },
                "database",
            ),
            (
                VanConfig {
                    faults: Faults {
                        error_rate: 1.5,
                        ..Faults::default()
                    },
                    ..c.clone()
                },
                "faults.errorRate",
            ),
        ] {
            assert_eq!(bad.validate().unwrap_err().field, field);
        }
    }
}
