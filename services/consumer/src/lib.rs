//! Consumer service of the reference system: owns consumers (name, order limit, payment
//! card), announces new ones (`ConsumerCreated`) and validates orders for the create-order
//! saga (`ValidateOrderByConsumer` on `consumer.commands`).
//!
//! `keel service consumer` runs it; tests drive [`app`] over HTTP and the embedded bus.

use std::sync::Arc;

use ftgo_contracts::{
    Money, SCHEMA_VERSION,
    commands::{self, ValidateOrderByConsumer},
    destinations,
    events::{self, ConsumerCreated},
    services,
};
use keel_chassis::{
    ApiResult, ChassisArgs, Invalid, Problem, Validate,
    axum::{
        Json, Router,
        extract::{Path, State},
        http::StatusCode,
        routing::{get, post},
    },
};
use keel_discovery::RegistrationConfig;
use keel_messaging::{BusError, Inbox, Message, Outbox, Subscription};
use keel_saga::{CommandError, command_handler};
use keel_store::{Migration, Store, StoreError, Tx, sqlx};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use keel_chassis::json::{JsonBody, invalid_field};

/// The service's name: its registry id, consumer group and `lb://` name.
pub const SERVICE: &str = services::CONSUMER;

/// The order limit of a consumer registered without one.
pub const DEFAULT_ORDER_LIMIT: Money = Money(50_000);
/// The card of a consumer registered without one (a test card that is approved).
pub const DEFAULT_CARD: &str = "4242424242424242";

/// The consumer service's own settings (`[app]` in its config file, `KEEL_APP__…` in the
/// environment).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ConsumerConfig {
    /// The service's own database: `sqlite://path/file.db` or `postgres://…`.
    pub database: String,
    /// The message bus: `sqlite://path/bus.db` (embedded, shared by all services on the
    /// machine) or `nats://host:4222`.
    pub bus: String,
    /// Register with a Keel (or Eureka) registry when set (`[app.registration]`), under the
    /// name `consumer` unless it names another.
    pub registration: Option<RegistrationConfig>,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            database: ftgo_runtime::default_database(SERVICE),
            bus: ftgo_runtime::DEFAULT_BUS.to_owned(),
            registration: None,
        }
    }
}

impl Validate for ConsumerConfig {
    fn validate(&self) -> Result<(), Invalid> {
        ftgo_runtime::validate_common(&self.database, &self.bus, self.registration.as_ref())?;
        Ok(())
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database could not be opened or migrated.
    #[error("consumer database: {0}")]
    Store(#[from] StoreError),
    /// The bus could not be opened or subscribed to.
    #[error("message bus: {0}")]
    Bus(#[from] BusError),
}

const MIGRATIONS: &[Migration] = &[Migration::new(
    1,
    "consumers",
    "CREATE TABLE consumers (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        order_limit {bigint} NOT NULL,
        card TEXT NOT NULL,
        created_at {bigint} NOT NULL
    )",
)];

/// The service, started by [`app`] ([`ftgo_runtime::Running`]): serve its `router` (the
/// HTTP API, without the chassis's built-in routes, which `serve` adds), check its `store`
/// (health checks, tests) and spawn its `background` work as a service task — it stops the
/// outbox relay and the command consumer (both already running) once the `stop` token given
/// to [`app`] is cancelled: consuming ends after the message in hand, and the relay hands
/// back its leadership.
pub type App = ftgo_runtime::Running;

/// Runs the consumer service until SIGTERM/SIGINT.
pub async fn run(args: &ChassisArgs) -> Result<(), keel_chassis::Error> {
    ftgo_runtime::run(
        SERVICE,
        args,
        |config: &ConsumerConfig| config.registration.clone(),
        |config, stop| async move { app(&config, stop).await },
    )
    .await
}

/// Starts the service: opens and migrates its database, starts the outbox relay and the
/// `consumer.commands` participant (consumer group `consumer`), and builds the routes.
/// Everything in the background stops when `stop` is cancelled (see [`App`]).
pub async fn app(config: &ConsumerConfig, stop: CancellationToken) -> Result<App, StartError> {
    let ftgo_runtime::Plumbing {
        store,
        bus,
        outbox,
        relay,
    } = ftgo_runtime::start::<StartError>(
        SERVICE,
        &config.database,
        &config.bus,
        MIGRATIONS,
        &stop,
    )
    .await?;
    let inbox = Inbox::new(store.clone(), destinations::CONSUMER_COMMANDS).await?;
    let handler = command_handler(inbox, outbox.clone(), |tx, command| {
        Box::pin(handle_command(tx, command))
    });
    let commands = bus
        .subscribe(
            Subscription::new(destinations::CONSUMER_COMMANDS, SERVICE),
            handler,
        )
        .await?;
    let state = Arc::new(AppState {
        store: store.clone(),
        outbox,
    });
    let router = Router::new()
        .route("/consumers", post(create_consumer))
        .route("/consumers/{id}", get(get_consumer))
        .route("/openapi.json", get(openapi))
        .merge(keel_chassis::openapi::ui())
        .with_state(state);
    let background = Box::pin(async move {
        stop.cancelled().await;
        commands.stop().await;
        let _ = relay.await;
        tracing::info!("consumer background work stopped");
    });
    Ok(App {
        router,
        store,
        background,
    })
}

#[derive(Debug)]
struct AppState {
    store: Store,
    outbox: Outbox,
}

// ---------------------------------------------------------------- HTTP API

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NewConsumer {
    name: String,
    #[serde(default)]
    order_limit: Option<Money>,
    #[serde(default)]
    card: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Created {
    consumer_id: String,
}

/// A consumer as the API shows it (the card masked).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ConsumerView {
    consumer_id: String,
    name: String,
    order_limit: Money,
    card: String,
}

/// A card number: digits (spaces and dashes between them are ignored), 12 to 19 of them.
#[allow(clippy::result_large_err)] // a Problem is what the handler answers with
fn parse_card(card: &str) -> Result<String, Problem> {
    let digits: String = card.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid_field("card", "card must contain only digits"));
    }
    if !(12..=19).contains(&digits.len()) {
        return Err(invalid_field(
            "card",
            format!("card must have 12 to 19 digits, not {}", digits.len()),
        ));
    }
    Ok(digits)
}

fn mask(card: &str) -> String {
    format!("**** {}", &card[card.len().saturating_sub(4)..])
}

fn internal(e: impl std::fmt::Display) -> Problem {
    tracing::error!(error = %e, "consumer store failed");
    Problem::new(StatusCode::SERVICE_UNAVAILABLE).with_detail("the consumer store is unavailable")
}

async fn create_consumer(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<NewConsumer>,
) -> ApiResult<(StatusCode, Json<Created>)> {
    let name = req.name.trim();
    if name.is_empty() {
        return Err(invalid_field("name", "name must not be empty"));
    }
    if name.chars().count() > 200 {
        return Err(invalid_field("name", "name must be at most 200 characters"));
    }
    let order_limit = req.order_limit.unwrap_or(DEFAULT_ORDER_LIMIT);
    let card = match req.card.as_deref() {
        Some(c) => parse_card(c)?,
        None => DEFAULT_CARD.to_owned(),
    };
    let id = keel_messaging::new_id();
    let event = ConsumerCreated {
        consumer_id: id.clone(),
        name: name.to_owned(),
        card: card.clone(),
    };
    let message = Message::typed(
        destinations::CONSUMER_EVENTS,
        events::CONSUMER_CREATED,
        SCHEMA_VERSION,
        &event,
    )
    .map_err(internal)?
    .with_key(id.clone());
    let mut tx = state.store.begin().await.map_err(internal)?;
    sqlx::query(
        "INSERT INTO consumers (id, name, order_limit, card, created_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&id)
    .bind(name)
    .bind(order_limit.0)
    .bind(&card)
    .bind(keel_store::now_ms())
    .execute(tx.conn())
    .await
    .map_err(internal)?;
    state
        .outbox
        .send(&mut tx, &message)
        .await
        .map_err(internal)?;
    tx.commit().await.map_err(internal)?;
    tracing::info!(consumer_id = %id, "consumer created");
    Ok((StatusCode::CREATED, Json(Created { consumer_id: id })))
}

async fn get_consumer(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<Json<ConsumerView>> {
    let row: Option<(String, i64, String)> =
        sqlx::query_as("SELECT name, order_limit, card FROM consumers WHERE id = $1")
            .bind(&id)
            .fetch_optional(state.store.pool())
            .await
            .map_err(internal)?;
    let Some((name, order_limit, card)) = row else {
        return Err(Problem::not_found(format!("no consumer with id {id}"))
            .with_extension("consumerId", id));
    };
    Ok(Json(ConsumerView {
        consumer_id: id,
        name,
        order_limit: Money(order_limit),
        card: mask(&card),
    }))
}

// ---------------------------------------------------------------- saga participant

/// Handles one command of `consumer.commands` (inside the participant helper's transaction:
/// a duplicate is answered with the stored reply, never applied again).
async fn handle_command(tx: &mut Tx, command: &Message) -> Result<Value, CommandError> {
    match command.message_type() {
        Some(commands::VALIDATE_ORDER_BY_CONSUMER) => {
            let cmd: ValidateOrderByConsumer = command.payload_as().map_err(|e| {
                CommandError::failure("InvalidCommand", json!({ "error": e.to_string() }))
            })?;
            validate_order(tx, &cmd).await
        }
        other => Err(CommandError::failure(
            "UnknownCommand",
            json!({ "type": other }),
        )),
    }
}

async fn validate_order(tx: &mut Tx, cmd: &ValidateOrderByConsumer) -> Result<Value, CommandError> {
    let limit: Option<(i64,)> = sqlx::query_as("SELECT order_limit FROM consumers WHERE id = $1")
        .bind(&cmd.consumer_id)
        .fetch_optional(tx.conn())
        .await
        .map_err(|e| CommandError::Retry(e.to_string()))?;
    let Some((limit,)) = limit else {
        tracing::info!(consumer_id = %cmd.consumer_id, order_id = %cmd.order_id, "order refused: unknown consumer");
        return Err(CommandError::failure(
            commands::UNKNOWN_CONSUMER,
            json!({ "consumerId": cmd.consumer_id }),
        ));
    };
    let limit = Money(limit);
    if cmd.order_total > limit {
        tracing::info!(consumer_id = %cmd.consumer_id, order_id = %cmd.order_id, %limit, total = %cmd.order_total, "order refused: over the limit");
        return Err(CommandError::failure(
            commands::ORDER_LIMIT_EXCEEDED,
            json!({ "consumerId": cmd.consumer_id, "limit": limit, "total": cmd.order_total }),
        ));
    }
    Ok(json!({}))
}

// ---------------------------------------------------------------- OpenAPI

async fn openapi() -> Json<Value> {
    Json(openapi_document())
}

/// The service's OpenAPI 3.0 document (served at `GET /openapi.json`).
pub fn openapi_document() -> Value {
    let problem = json!({ "description": "Problem", "content": { "application/problem+json": {
        "schema": { "$ref": "#/components/schemas/Problem" } } } });
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Consumer service",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Consumers of the food-delivery reference system: name, order limit and payment card. Validates orders for the create-order saga over the bus (ValidateOrderByConsumer on consumer.commands)."
        },
        "paths": {
            "/consumers": { "post": {
                "operationId": "createConsumer",
                "summary": "Register a consumer (publishes ConsumerCreated on consumer.events)",
                "requestBody": { "required": true, "content": { "application/json": {
                    "schema": { "$ref": "#/components/schemas/NewConsumer" } } } },
                "responses": {
                    "201": { "description": "Created", "content": { "application/json": {
                        "schema": { "$ref": "#/components/schemas/ConsumerCreated" } } } },
                    "400": problem, "415": problem, "422": problem
                }
            } },
            "/consumers/{id}": { "get": {
                "operationId": "getConsumer",
                "summary": "A consumer (the card masked)",
                "parameters": [ { "name": "id", "in": "path", "required": true,
                                  "schema": { "type": "string" } } ],
                "responses": {
                    "200": { "description": "The consumer", "content": { "application/json": {
                        "schema": { "$ref": "#/components/schemas/Consumer" } } } },
                    "404": problem
                }
            } }
        },
        "components": { "schemas": {
            "Money": { "type": "string", "pattern": "^[0-9]+(\\.[0-9]{1,2})?$", "example": "12.50" },
            "NewConsumer": {
                "type": "object", "required": ["name"], "additionalProperties": false,
                "properties": {
                    "name": { "type": "string", "minLength": 1, "maxLength": 200 },
                    "orderLimit": { "allOf": [ { "$ref": "#/components/schemas/Money" } ],
                                    "description": "Largest order total; default \"500.00\"" },
                    "card": { "type": "string", "pattern": "^[0-9 -]+$",
                              "description": "12 to 19 digits (spaces and dashes ignored); default 4242424242424242. 4000000000000002 is always declined." }
                }
            },
            "ConsumerCreated": { "type": "object", "required": ["consumerId"],
                "properties": { "consumerId": { "type": "string" } } },
            "Consumer": { "type": "object", "required": ["consumerId", "name", "orderLimit", "card"],
                "properties": {
                    "consumerId": { "type": "string" },
                    "name": { "type": "string" },
                    "orderLimit": { "$ref": "#/components/schemas/Money" },
                    "card": { "type": "string", "example": "**** 4242" }
                } },
            "Problem": { "type": "object", "required": ["type", "title", "status"],
                "properties": {
                    "type": { "type": "string" }, "title": { "type": "string" },
                    "status": { "type": "integer" }, "detail": { "type": "string" },
                    "instance": { "type": "string" },
                    "field": { "type": "string", "description": "The request field at fault" }
                } }
        } }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cards() {
        assert_eq!(parse_card("4242 4242-4242 4242").unwrap(), DEFAULT_CARD);
        assert!(parse_card("4242x").is_err());
        assert!(parse_card("12345678901").is_err());
        assert!(parse_card("12345678901234567890").is_err());
        assert_eq!(mask(DEFAULT_CARD), "**** 4242");
    }

    #[test]
    fn config_is_validated() {
        assert!(ConsumerConfig::default().validate().is_ok());
        let bad = ConsumerConfig {
            database: "mysql://x".to_owned(),
            ..ConsumerConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().field, "database");
        let bad = ConsumerConfig {
            bus: "kafka://x".to_owned(),
            ..ConsumerConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().field, "bus");
    }
}
