//! The plumbing the reference-system services share: the `[app]` settings each has
//! (`database`, `bus`, `registration`) with their defaults and validation, the start-up of
//! a service's store, bus and outbox relay ([`start`]), and the run loop that serves it
//! with a readiness check and registry registration ([`run`]).

#[cfg(feature = "testing")]
pub mod testing;
pub mod time;

use std::{future::Future, io, sync::Arc};

use futures::future::BoxFuture;
use keel_chassis::{
    ChassisArgs, CheckKind, ComponentHealth, Invalid, Service, Validate, axum::Router,
};
use keel_discovery::{Registrar, RegistrationConfig};
use keel_messaging::{Bus, BusError, Outbox};
use keel_store::{Migration, Store, StoreError};
use serde::{Serialize, de::DeserializeOwned};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The default `bus`: the embedded bus every service on the machine shares.
pub const DEFAULT_BUS: &str = "sqlite://.keel/bus.db";

/// The default `database` of `service`: `sqlite://.keel/<service>.db`.
pub fn default_database(service: &str) -> String {
    format!("sqlite://.keel/{service}.db")
}

/// Checks the settings every service has — `database` (`sqlite:…`, `postgres://…`), `bus`
/// (`sqlite:…`, `nats://…`) and an enabled `registration` naming a registry — and names the
/// field at fault.
pub fn validate_common(
    database: &str,
    bus: &str,
    registration: Option<&RegistrationConfig>,
) -> Result<(), Invalid> {
    if !["sqlite:", "postgres://", "postgresql://"]
        .iter()
        .any(|p| database.starts_with(p))
    {
        return Err(Invalid::new(
            "database",
            format!("expected sqlite://path/file.db or postgres://…, got {database:?}"),
        ));
    }
    if !["sqlite:", "nats://"].iter().any(|p| bus.starts_with(p)) {
        return Err(Invalid::new(
            "bus",
            format!("expected sqlite://path/bus.db or nats://host:port, got {bus:?}"),
        ));
    }
    if let Some(r) = registration
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

/// A service's store, bus and outbox, as [`start`] leaves them.
#[derive(Debug)]
pub struct Plumbing {
    /// The service's database, migrated.
    pub store: Store,
    /// The message bus.
    pub bus: Arc<dyn Bus>,
    /// The service's transactional outbox.
    pub outbox: Outbox,
    /// The outbox relay, running until the `stop` token given to [`start`] is cancelled
    /// (it then hands back its leadership); await it when stopping.
    pub relay: JoinHandle<()>,
}

/// Opens `database` and applies `migrations` (component `service`), opens `bus` and the
/// outbox, and spawns the outbox relay, which runs until `stop` is cancelled.
pub async fn start<E>(
    service: &str,
    database: &str,
    bus: &str,
    migrations: &[Migration],
    stop: &CancellationToken,
) -> Result<Plumbing, E>
where
    E: From<StoreError> + From<BusError>,
{
    let store = Store::connect(database).await?;
    store.migrate(service, migrations).await?;
    let bus = keel_bus::connect(bus).await?;
    let outbox = Outbox::new(store.clone()).await?;
    let relay = tokio::spawn(outbox.clone().run_relay(bus.clone(), stop.clone()));
    Ok(Plumbing {
        store,
        bus,
        outbox,
        relay,
    })
}

/// A started service, ready to serve: what its `app` returns (services name it `App`) and
/// what it hands to [`run`].
pub struct Running {
    /// The HTTP API (without the chassis's built-in routes, which serving adds).
    pub router: Router,
    /// The service's database, checked by the `database` readiness check (and by tests).
    pub store: Store,
    /// The background work (outbox relay, consumers, …), already started where it consumes;
    /// it ends once the stop token the service was started with is cancelled. Spawn it as a
    /// service task.
    pub background: BoxFuture<'static, ()>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// Runs service `service` until SIGTERM/SIGINT: loads its configuration `C`, makes the
/// messaging trace headers follow the current request's trace context, starts it with
/// `app` (given the configuration and the shutdown token), registers the `database`
/// readiness check, spawns the background work, binds, and — when `registration` of the
/// configuration is enabled — registers with the registry (under `service` and the bound
/// port unless it says otherwise), deregistering as soon as draining begins.
pub async fn run<C, F, Fut, E>(
    service: &str,
    args: &ChassisArgs,
    registration: impl FnOnce(&C) -> Option<RegistrationConfig>,
    app: F,
) -> Result<(), keel_chassis::Error>
where
    C: Serialize + DeserializeOwned + Default + Validate + Clone,
    F: FnOnce(C, CancellationToken) -> Fut,
    Fut: Future<Output = Result<Running, E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    let chassis = Service::<C>::load(service, args)?;
    let config = chassis.config().clone();
    keel_messaging::trace::set_source(|| {
        keel_chassis::trace_context::current().map(|cx| keel_messaging::trace::TraceHeaders {
            traceparent: cx.traceparent(),
            tracestate: cx.tracestate,
        })
    });
    keel_messaging::trace::set_scope(message_scope);
    let registration = registration(&config);
    let running = app(config, chassis.shutdown_token())
        .await
        .map_err(|e| keel_chassis::Error::Serve(io::Error::other(e)))?;
    let store = running.store.clone();
    chassis
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
    chassis.spawn(running.background);
    let bound = chassis.bind().await?;
    let addr = bound.local_addr().map_err(keel_chassis::Error::Serve)?;
    if let Some(mut reg) = registration.filter(|r| r.enabled) {
        if reg.service.is_empty() {
            reg.service = service.to_owned();
        }
        if reg.port == 0 {
            reg.port = addr.port();
        }
        let registrar = Registrar::new(reg, reqwest::Client::new());
        bound.spawn(registrar.run(bound.draining_token()));
    }
    bound.serve(running.router).await
}

/// Runs a message handler as a child span of the trace the message carries: the current
/// trace context while it runs (what it publishes or calls continues the trace) and a
/// `message.handle` span with the trace and span ids, so its log lines carry them.
fn message_scope<'a>(
    carried: keel_messaging::trace::TraceHeaders,
    work: BoxFuture<'a, Result<(), keel_messaging::HandlerError>>,
) -> BoxFuture<'a, Result<(), keel_messaging::HandlerError>> {
    use tracing::Instrument;
    let parent = keel_chassis::trace_context::TraceParent::parse(&carried.traceparent);
    let cx = keel_chassis::trace_context::TraceContext::continue_from(
        parent,
        parent.and(carried.tracestate),
    );
    let span = tracing::info_span!(
        "message.handle",
        trace_id = %cx.trace_id_hex(),
        span_id = %cx.span_id_hex()
    );
    Box::pin(keel_chassis::trace_context::scope(cx, work).instrument(span))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        let db = default_database("kitchen");
        assert_eq!(db, "sqlite://.keel/kitchen.db");
        assert!(validate_common(&db, DEFAULT_BUS, None).is_ok());
        assert!(validate_common("postgres://h/db", "nats://h:4222", None).is_ok());
        let field = |d: &str, b: &str, r: Option<&RegistrationConfig>| {
            validate_common(d, b, r).unwrap_err().field
        };
        assert_eq!(field("mysql://x", DEFAULT_BUS, None), "database");
        assert_eq!(field(&db, "kafka://x", None), "bus");
        let reg = RegistrationConfig {
            enabled: true,
            registry: Vec::new(),
            ..RegistrationConfig::default()
        };
        assert_eq!(field(&db, DEFAULT_BUS, Some(&reg)), "registration.registry");
    }
}
