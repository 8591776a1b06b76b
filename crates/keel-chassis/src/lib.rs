//! The Keel service chassis: what every Keel process starts with — layered config,
//! structured logs, W3C trace context, Prometheus metrics, health probes, problem+json
//! errors and graceful shutdown — in a few lines.
//!
//! ```no_run
//! use keel_chassis::{ChassisArgs, NoAppConfig, Service, axum::{Router, routing::get}};
//!
//! # async fn run(args: ChassisArgs) -> Result<(), keel_chassis::Error> {
//! let service = Service::<NoAppConfig>::load("hello", &args)?;
//! let router = Router::new().route("/hello", get(|| async { "hello" }));
//! service.serve(router).await
//! # }
//! ```
//!
//! See `docs/chassis.md` for the whole story.

pub mod config;
pub use keel_duration as duration;
pub mod health;
pub mod json;
pub mod openapi;
pub mod problem;
pub mod server;
pub mod telemetry;
pub mod trace_context;

use std::{io, net::SocketAddr, path::PathBuf, time::Duration};

use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use axum;
pub use config::{
    ConfigError, Invalid, KeelConfig, Layers, NoAppConfig, ServerConfig, TelemetryConfig, Validate,
};
pub use health::{CheckKind, ComponentHealth, Health, Phase};
pub use problem::{ApiResult, Problem};
pub use trace_context::TraceContext;

/// Errors that stop a service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid; the message names the field and its source.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        error: io::Error,
    },
    /// The server failed while running.
    #[error("server error: {0}")]
    Serve(io::Error),
}

/// Command-line flags every chassis service accepts (flatten into your `clap` parser).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ChassisArgs {
    /// Configuration file (TOML). Also `KEEL_CONFIG`.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Listen address, e.g. 127.0.0.1:8080 (overrides `server.listen`).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Override any configuration key, e.g. `--set app.greeting=hi` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

impl ChassisArgs {
    /// The configuration layers these flags and the process environment describe.
    pub fn layers(&self) -> Result<Layers, ConfigError> {
        let mut layers = Layers::from_env(config::config_path(self.config.as_deref()));
        if let Some(listen) = &self.listen {
            layers = layers.cli("server.listen", listen, &format!("--listen {listen}"));
        }
        for kv in &self.set {
            let Some((k, v)) = kv.split_once('=') else {
                return Err(ConfigError::Invalid {
                    field: kv.clone(),
                    origin: config::Source::Cli(format!("--set {kv}")),
                    message: "expected KEY=VALUE".to_owned(),
                });
            };
            layers = layers.cli(k.trim(), v, &format!("--set {kv}"));
        }
        Ok(layers)
    }
}

/// A service being assembled: its configuration, health registry, shutdown signal and
/// background tasks. Serve a router with [`Service::serve`].
#[derive(Debug)]
pub struct Service<T> {
    name: String,
    config: KeelConfig<T>,
    health: Health,
    shutdown: CancellationToken,
    trigger: CancellationToken,
    tasks: TaskTracker,
    telemetry: telemetry::TelemetryGuard,
    handle_signals: bool,
}

impl<T> Service<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned + Default + Validate,
{
    /// Loads the configuration from defaults, file, environment and flags, and starts
    /// logging and tracing. Fails with an error naming the field and source.
    pub fn load(name: &str, args: &ChassisArgs) -> Result<Self, Error> {
        let config: KeelConfig<T> = config::load(&args.layers()?)?;
        Ok(Self::from_config(name, config))
    }

    /// Like [`Service::load`], starting from the component's own defaults instead of
    /// `KeelConfig::default()` (e.g. a registry that listens on 8761).
    pub fn load_with_defaults(
        name: &str,
        args: &ChassisArgs,
        defaults: KeelConfig<T>,
    ) -> Result<Self, Error> {
        let config: KeelConfig<T> = config::load_with(defaults, &args.layers()?)?;
        Ok(Self::from_config(name, config))
    }
}

impl<T> Service<T> {
    /// A service with an already-built configuration (tests, embedding).
    pub fn from_config(name: &str, config: KeelConfig<T>) -> Self {
        let telemetry = telemetry::init(name, &config.telemetry);
        // Install the metrics recorder before anyone creates metric handles (breakers and
        // bulkheads keep theirs from construction).
        let _ = telemetry::prometheus();
        Self {
            name: name.to_owned(),
            config,
            health: Health::new(),
            shutdown: CancellationToken::new(),
            trigger: CancellationToken::new(),
            tasks: TaskTracker::new(),
            telemetry,
            handle_signals: true,
        }
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The service's own settings (`[app]`).
    pub fn config(&self) -> &T {
        &self.config.app
    }

    /// The whole configuration.
    pub fn keel_config(&self) -> &KeelConfig<T> {
        &self.config
    }

    /// The health registry; register checks on it.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// A token cancelled when the service begins to shut down (after in-flight requests
    /// have drained). Background loops should stop when it fires.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// A token cancelled the moment shutdown begins (SIGTERM, or the shutdown handle),
    /// *before* in-flight requests drain: the time to deregister from a registry and to end
    /// long-lived responses such as event streams, which would otherwise hold the drain open.
    pub fn draining_token(&self) -> CancellationToken {
        self.trigger.clone()
    }

    /// A handle that triggers the same graceful shutdown as SIGTERM.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.trigger.clone())
    }

    /// Whether SIGTERM/SIGINT start a graceful shutdown (default true).
    pub fn handle_signals(mut self, yes: bool) -> Self {
        self.handle_signals = yes;
        self
    }

    /// Runs `task` in the background. It is awaited (up to the grace period) on shutdown;
    /// it should watch [`Service::shutdown_token`].
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task);
    }

    /// Binds the configured listen address.
    pub async fn bind(self) -> Result<Bound<T>, Error> {
        let addr = self.config.server.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|error| Error::Bind { addr, error })?;
        Ok(Bound {
            service: self,
            listener,
        })
    }

    /// Binds and serves `router` behind the standard stack until shutdown.
    pub async fn serve(self, router: axum::Router) -> Result<(), Error> {
        self.bind().await?.serve(router).await
    }
}

/// Triggers a graceful shutdown.
#[derive(Debug, Clone)]
pub struct ShutdownHandle(CancellationToken);

impl ShutdownHandle {
    /// Starts the shutdown sequence (idempotent).
    pub fn shutdown(&self) {
        self.0.cancel();
    }
}

/// A service whose listener is bound; [`Bound::local_addr`] tells the port.
#[derive(Debug)]
pub struct Bound<T> {
    service: Service<T>,
    listener: TcpListener,
}

impl<T> Bound<T> {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The service's health registry.
    pub fn health(&self) -> &Health {
        &self.service.health
    }

    /// A handle that triggers graceful shutdown.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.service.shutdown_handle()
    }

    /// See [`Service::draining_token`].
    pub fn draining_token(&self) -> CancellationToken {
        self.service.draining_token()
    }

    /// See [`Service::shutdown_token`].
    pub fn shutdown_token(&self) -> CancellationToken {
        self.service.shutdown_token()
    }

    /// See [`Service::spawn`].
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.service.spawn(task);
    }

    /// Serves until SIGTERM/SIGINT (or the shutdown handle), then drains:
    ///
    /// 1. readiness turns DOWN (`/health/ready` → 503);
    /// 2. the listener stays open for `server.drain_delay_ms` so balancers notice;
    /// 3. the listener closes; in-flight requests get `server.shutdown_grace_ms` to finish;
    /// 4. the shutdown token is cancelled and background tasks get the rest of the grace;
    /// 5. spans are flushed and `Ok(())` is returned.
    pub async fn serve(self, router: axum::Router) -> Result<(), Error> {
        let Bound {
            mut service,
            listener,
        } = self;
        let server_cfg = service.config.server.clone();
        let addr = listener.local_addr().map_err(Error::Serve)?;
        let app = server::apply_stack(
            server::with_builtin_routes(
                router,
                service.health.clone(),
                server_cfg.admin_token.clone(),
            ),
            &server_cfg,
        );

        let trigger = service.trigger.clone();
        if service.handle_signals {
            let t = trigger.clone();
            tokio::spawn(async move {
                wait_for_signal().await;
                t.cancel();
            });
        }

        let close = CancellationToken::new();
        let close_fut = close.clone().cancelled_owned();
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(close_fut)
                .await
        });
        service.health.set_phase(Phase::Ready);
        tracing::info!(service = %service.name, %addr, "listening");

        let mut server = server;
        let early = tokio::select! {
            _ = trigger.cancelled() => None,
            res = &mut server => Some(res),
        };
        if let Some(res) = early {
            // The server stopped on its own: an I/O error.
            service.shutdown.cancel();
            return match res {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(Error::Serve(e)),
                Err(e) => Err(Error::Serve(io::Error::other(e))),
            };
        }

        tracing::info!(service = %service.name, "shutting down: readiness is DOWN, draining");
        service.health.set_phase(Phase::Draining);
        if server_cfg.drain_delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(server_cfg.drain_delay_ms)).await;
        }
        close.cancel();
        let grace = Duration::from_millis(server_cfg.shutdown_grace_ms);
        let deadline = tokio::time::Instant::now() + grace;
        match tokio::time::timeout_at(deadline, &mut server).await {
            Ok(_) => tracing::info!("in-flight requests finished"),
            Err(_) => {
                tracing::warn!(?grace, "grace period over; abandoning in-flight requests");
                server.abort();
            }
        }
        service.shutdown.cancel();
        service.tasks.close();
        if tokio::time::timeout_at(deadline, service.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("background tasks did not stop within the grace period");
        }
        tracing::info!(service = %service.name, "stopped");
        service.telemetry.shutdown();
        Ok(())
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
