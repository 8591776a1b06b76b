//! Accounting: the reference system's accounts (opened from `ConsumerCreated` on
//! `consumer.events`) and card authorizations — the pivot of the create-order saga and the
//! reversal of the cancel-order saga (`accounting.commands`), with the payment decision
//! behind the [`Authorizer`] trait: the card rule, or payment networks with breaker-driven
//! failover ([`NetworkAuthorizer`], configured under `[app.payments]`). Payment events go
//! to `accounting.events`.
//!
//! Run it with `keel service accounting`, or embed it: [`app`] builds the HTTP routes and
//! the background work (outbox relay, command and event consumers) from an
//! [`AccountingConfig`].

mod api;
pub mod authorizer;
mod commands;
mod events;
mod ledger;
mod openapi;
pub mod payments;

use std::{sync::Arc, time::Duration};

use keel_chassis::{ChassisArgs, Invalid, Validate};
use keel_discovery::{DiscoveryConfig, RegistrationConfig};
use keel_messaging::{BusError, Inbox, Subscription};
use keel_store::StoreError;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use authorizer::{
    Approval, AuthorizationRequest, Authorizer, AuthorizerError, CardRule, Decision,
    ReversalRequest,
};
pub use payments::{NetworkAuthorizer, PaymentNetworks, PaymentsConfig};

/// The service's name: registry id, consumer group, `lb://accounting`.
pub const SERVICE: &str = ftgo_contracts::services::ACCOUNTING;

/// Accounting's own settings (`[app]` in its config file, `KEEL_APP__…` in the environment).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AccountingConfig {
    /// Accounting's database: `sqlite://path/file.db` or `postgres://…`.
    pub database: String,
    /// The message bus shared by the services: `sqlite://path/bus.db` or `nats://host:4222`.
    pub bus: String,
    /// How long, in milliseconds after it was sent, an `AuthorizeCard` for a consumer
    /// without an account is retried — waiting for the consumer's `ConsumerCreated` — before
    /// it is declined with `NO_ACCOUNT`. `0` declines at once. At most 60 000.
    pub account_wait_ms: u64,
    /// Register with a Keel (or Eureka) registry when set (`[app.registration]`), under
    /// `accounting` unless `service` says otherwise.
    pub registration: Option<RegistrationConfig>,
    /// The payment networks to authorize through (`[app.payments]`); none: the card rule.
    pub payments: PaymentsConfig,
}

impl Default for AccountingConfig {
    fn default() -> Self {
        Self {
            database: ftgo_runtime::default_database(SERVICE),
            bus: ftgo_runtime::DEFAULT_BUS.to_owned(),
            account_wait_ms: 2_000,
            registration: None,
            payments: PaymentsConfig::default(),
        }
    }
}

impl Validate for AccountingConfig {
    fn validate(&self) -> Result<(), Invalid> {
        ftgo_runtime::validate_common(&self.database, &self.bus, self.registration.as_ref())?;
        if self.account_wait_ms > 60_000 {
            return Err(Invalid::new("account_wait_ms", "must be at most 60000"));
        }
        self.payments
            .validate()
            .map_err(|(field, why)| Invalid::new(format!("payments.{field}"), why))?;
        Ok(())
    }
}

/// Why accounting could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database could not be opened or migrated.
    #[error("accounting database: {0}")]
    Store(#[from] StoreError),
    /// The bus could not be opened or subscribed to.
    #[error("message bus: {0}")]
    Bus(#[from] BusError),
    /// The payment networks are misconfigured.
    #[error(transparent)]
    Payments(#[from] payments::BuildError),
}

/// Accounting ready to serve ([`ftgo_runtime::Running`]): its `router` (the HTTP API:
/// `/payments/…`, `/accounts/…`, `/payment-networks` and `/openapi.json`), its `store`
/// (accounting's database: health checks, tests) and its `background` work — the outbox
/// relay and the `accounting.commands` and `consumer.events` consumers, which ends (the
/// messages in hand finished) once the `stop` token given to [`app`] is cancelled. Spawn
/// it.
pub type App = ftgo_runtime::Running;

/// Runs accounting until SIGTERM/SIGINT.
pub async fn run(args: &ChassisArgs) -> Result<(), keel_chassis::Error> {
    ftgo_runtime::run(
        SERVICE,
        args,
        |config: &AccountingConfig| config.registration.clone(),
        |config, stop| async move { app(&config, stop).await },
    )
    .await
}

/// [`app_with`] the authorizer `config` asks for: a [`NetworkAuthorizer`] over
/// `payments.networks`, or the reference system's [`CardRule`] when none are configured.
pub async fn app(config: &AccountingConfig, stop: CancellationToken) -> Result<App, StartError> {
    build(config, None, stop).await
}

/// Opens the database (migrating it) and the bus, subscribes to `accounting.commands` and
/// `consumer.events` (group `accounting`) and builds the routes; payments are decided by
/// `authorizer` (`payments` in `config` is then not used). The consumers run from now on;
/// `background` relays the outbox and stops them once `stop` is cancelled.
pub async fn app_with(
    config: &AccountingConfig,
    authorizer: Arc<dyn Authorizer>,
    stop: CancellationToken,
) -> Result<App, StartError> {
    build(config, Some(authorizer), stop).await
}

/// Where networks without a fixed URL are discovered: `payments.discovery`, else the
/// registry accounting registers with, else the default local registry.
fn discovery_config(config: &AccountingConfig) -> DiscoveryConfig {
    if let Some(d) = &config.payments.discovery {
        return d.clone();
    }
    let mut d = DiscoveryConfig::default();
    if let Some(r) = config
        .registration
        .as_ref()
        .filter(|r| !r.registry.is_empty())
    {
        d.registry = r.registry.clone();
    }
    d
}

async fn build(
    config: &AccountingConfig,
    authorizer: Option<Arc<dyn Authorizer>>,
    stop: CancellationToken,
) -> Result<App, StartError> {
    let ftgo_runtime::Plumbing {
        store,
        bus,
        outbox,
        relay,
    } = ftgo_runtime::start::<StartError>(
        SERVICE,
        &config.database,
        &config.bus,
        ledger::MIGRATIONS,
        &stop,
    )
    .await?;
    let authorizer: Arc<dyn Authorizer> = match authorizer {
        Some(a) => a,
        None if config.payments.networks.is_empty() => Arc::new(CardRule),
        None => Arc::new(NetworkAuthorizer::new(
            &config.payments,
            store.clone(),
            discovery_config(config),
        )?),
    };
    let ctx = Arc::new(commands::Ctx {
        store: store.clone(),
        outbox: outbox.clone(),
        authorizer: authorizer.clone(),
        account_wait_ms: i64::try_from(config.account_wait_ms).unwrap_or(i64::MAX),
        decided: std::sync::Mutex::default(),
    });
    // Enough redeliveries (100 ms doubling to 1 s) to outlast the wait for an account.
    let attempts = 10 + u32::try_from(config.account_wait_ms / 1000).unwrap_or(60);
    let commands = bus
        .subscribe(
            Subscription::new(ftgo_contracts::destinations::ACCOUNTING_COMMANDS, SERVICE)
                .max_attempts(attempts)
                .backoff(Duration::from_millis(100), Duration::from_secs(1)),
            commands::handler(Inbox::new(store.clone(), "accounting.commands").await?, ctx),
        )
        .await?;
    let consumer_events = Inbox::new(store.clone(), "accounting.consumer-events")
        .await?
        .subscribe(
            bus.as_ref(),
            Subscription::new(ftgo_contracts::destinations::CONSUMER_EVENTS, SERVICE),
            events::on_consumer_event,
        )
        .await?;
    let background = Box::pin(async move {
        let consume = async move {
            stop.cancelled().await;
            tokio::join!(commands.stop(), consumer_events.stop());
        };
        let _ = tokio::join!(consume, relay);
    });
    Ok(App {
        router: api::router(store.clone(), authorizer),
        store,
        background,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_are_valid_and_bad_values_are_named() {
        let c = AccountingConfig::default();
        assert!(c.validate().is_ok());
        assert_eq!(c.database, "sqlite://.keel/accounting.db");
        for (bad, field) in [
            (
                AccountingConfig {
                    database: "mysql://x".to_owned(),
                    ..AccountingConfig::default()
                },
                "database",
            ),
            (
                AccountingConfig {
                    bus: "kafka://x".to_owned(),
                    ..AccountingConfig::default()
                },
                "bus",
            ),
            (
                AccountingConfig {
                    account_wait_ms: 3_600_000,
                    ..AccountingConfig::default()
                },
                "account_wait_ms",
            ),
            (
                AccountingConfig {
                    payments: PaymentsConfig {
                        networks: vec!["van-a".to_owned(), String::new()],
                        ..PaymentsConfig::default()
                    },
                    ..AccountingConfig::default()
                },
                "payments.networks[1]",
            ),
        ] {
            assert_eq!(bad.validate().unwrap_err().field, field);
        }
    }
}
