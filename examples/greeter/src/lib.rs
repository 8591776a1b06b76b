//! Greeter: a small example service built on the Keel chassis — configuration, a JSON
//! API with problem+json errors, a health check and a simulated-work knob.
//!
//! Run two instances with `cargo run --release -- up` (see the repository's `keel.toml`),
//! or one with `cargo run -- example greeter --listen 127.0.0.1:8081`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use keel_chassis::{
    ApiResult, ChassisArgs, Invalid, Problem, Service, Validate,
    axum::{
        Json, Router,
        extract::{Path, Query, State},
        http::StatusCode,
        routing::{get, post},
    },
};
use keel_discovery::{Registrar, RegistrationConfig};
use serde::{Deserialize, Serialize};

/// The greeter's own settings (`[app]` in its config file, `KEEL_APP__…` in the environment).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GreeterConfig {
    /// The word used to greet.
    pub greeting: String,
    /// The longest simulated work (`?delay_ms=`) a request may ask for.
    pub max_delay_ms: u64,
    /// Register with a Keel (or Eureka) registry when set (`[app.registration]`).
    pub registration: Option<RegistrationConfig>,
}

impl Default for GreeterConfig {
    fn default() -> Self {
        Self {
            greeting: "Hello".to_owned(),
            max_delay_ms: 10_000,
            registration: None,
        }
    }
}

impl Validate for GreeterConfig {
    fn validate(&self) -> Result<(), Invalid> {
        if self.greeting.trim().is_empty() {
            return Err(Invalid::new("greeting", "must not be empty"));
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

#[derive(Debug)]
struct AppState {
    greeting: String,
    max_delay: Duration,
    instance: String,
    served: AtomicU64,
}

/// A greeting.
#[derive(Debug, Serialize, Deserialize)]
pub struct Greeting {
    /// The text.
    pub greeting: String,
    /// The address of the instance that answered.
    pub instance: String,
    /// How many greetings this instance has served.
    pub served: u64,
}

#[derive(Debug, Deserialize)]
struct Work {
    delay_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewGreeting {
    name: String,
    #[serde(default)]
    shout: bool,
}

/// Runs the greeter until SIGTERM/SIGINT.
pub async fn run(args: &ChassisArgs) -> Result<(), keel_chassis::Error> {
    let service = Service::<GreeterConfig>::load("greeter", args)?;
    let config = service.config().clone();
    let bound = service.bind().await?;
    let addr = bound.local_addr().map_err(keel_chassis::Error::Serve)?;
    if let Some(mut reg) = config.registration.clone().filter(|r| r.enabled) {
        if reg.service.is_empty() {
            reg.service = "greeter".to_owned();
        }
        if reg.port == 0 {
            reg.port = addr.port();
        }
        // Registers now, heartbeats, and deregisters as soon as draining begins.
        let registrar = Registrar::new(reg, reqwest::Client::new());
        bound.spawn(registrar.run(bound.draining_token()));
    }
    bound.serve(router(&config, addr.to_string())).await
}

/// The greeter's routes.
pub fn router(config: &GreeterConfig, instance: String) -> Router {
    let state = Arc::new(AppState {
        greeting: config.greeting.clone(),
        max_delay: Duration::from_millis(config.max_delay_ms),
        instance,
        served: AtomicU64::new(0),
    });
    Router::new()
        .route("/greet/{name}", get(greet))
        .route("/greetings", post(create))
        .with_state(state)
}

async fn greet(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(work): Query<Work>,
) -> ApiResult<Json<Greeting>> {
    if let Some(ms) = work.delay_ms {
        let delay = Duration::from_millis(ms);
        if delay > state.max_delay {
            return Err(Problem::bad_request(format!(
                "delay_ms must be at most {}",
                state.max_delay.as_millis()
            ))
            .with_extension("field", "delay_ms"));
        }
        tokio::time::sleep(delay).await;
    }
    Ok(Json(greeting(&state, &name, false)))
}

async fn create(
    State(state): State<Arc<AppState>>,
    Json(req): Json<NewGreeting>,
) -> ApiResult<(StatusCode, Json<Greeting>)> {
    if req.name.trim().is_empty() {
        return Err(Problem::bad_request("name must not be empty").with_extension("field", "name"));
    }
    Ok((
        StatusCode::CREATED,
        Json(greeting(&state, &req.name, req.shout)),
    ))
}

fn greeting(state: &AppState, name: &str, shout: bool) -> Greeting {
    let served = state.served.fetch_add(1, Ordering::Relaxed) + 1;
    tracing::info!(%name, served, "greeting");
    let mut text = format!("{}, {}!", state.greeting, name.trim());
    if shout {
        text = text.to_uppercase();
    }
    Greeting {
        greeting: text,
        instance: state.instance.clone(),
        served,
    }
}
