//! Restaurant service of the reference system: owns restaurants, their menus and stock;
//! announces them (`RestaurantCreated`, `MenuStockChanged` on `restaurant.events`) and
//! takes stock when orders are approved and gives it back when they are cancelled
//! (`OrderApproved` / `OrderCancelled` from `order.events`, each applied once).
//!
//! `keel service restaurant` runs it; tests drive [`app`] over HTTP and the embedded bus.

mod stock;

use std::{collections::HashSet, sync::Arc};

use ftgo_contracts::{
    Money, SCHEMA_VERSION, destinations,
    events::{self, MenuItem, RestaurantCreated},
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
use keel_store::{Migration, Store, StoreError, sqlx};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use keel_chassis::json::{JsonBody, invalid_field};

/// The service's name: its registry id, consumer group and `lb://` name.
pub const SERVICE: &str = services::RESTAURANT;

/// The restaurant service's own settings (`[app]` in its config file, `KEEL_APP__…` in the
/// environment).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RestaurantConfig {
    /// The service's own database: `sqlite://path/file.db` or `postgres://…`.
    pub database: String,
    /// The message bus: `sqlite://path/bus.db` (embedded, shared by all services on the
    /// machine) or `nats://host:4222`.
    pub bus: String,
    /// Register with a Keel (or Eureka) registry when set (`[app.registration]`), under the
    /// name `restaurant` unless it names another.
    pub registration: Option<RegistrationConfig>,
}

impl Default for RestaurantConfig {
    fn default() -> Self {
        Self {
            database: ftgo_runtime::default_database(SERVICE),
            bus: ftgo_runtime::DEFAULT_BUS.to_owned(),
            registration: None,
        }
    }
}

impl Validate for RestaurantConfig {
    fn validate(&self) -> Result<(), Invalid> {
        ftgo_runtime::validate_common(&self.database, &self.bus, self.registration.as_ref())?;
        Ok(())
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database could not be opened or migrated.
    #[error("restaurant database: {0}")]
    Store(#[from] StoreError),
    /// The bus could not be opened or subscribed to.
    #[error("message bus: {0}")]
    Bus(#[from] BusError),
}

const MIGRATIONS: &[Migration] = &[Migration::new(
    1,
    "restaurants, menus, stock taken per order",
    "CREATE TABLE restaurants (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        stock_version {bigint} NOT NULL,
        created_at {bigint} NOT NULL
    );
    CREATE TABLE menu_items (
        restaurant_id TEXT NOT NULL REFERENCES restaurants (id),
        item_id TEXT NOT NULL,
        position {bigint} NOT NULL,
        name TEXT NOT NULL,
        price {bigint} NOT NULL,
        stock {bigint},
        PRIMARY KEY (restaurant_id, item_id)
    );
    CREATE TABLE order_stock (
        order_id TEXT PRIMARY KEY,
        restaurant_id TEXT NOT NULL,
        state TEXT NOT NULL,
        updated_at {bigint} NOT NULL
    );
    CREATE TABLE order_stock_items (
        order_id TEXT NOT NULL REFERENCES order_stock (order_id),
        item_id TEXT NOT NULL,
        taken {bigint} NOT NULL,
        PRIMARY KEY (order_id, item_id)
    )",
)];

/// The service, started by [`app`] ([`ftgo_runtime::Running`]): serve its `router` (the
/// HTTP API, without the chassis's built-in routes, which `serve` adds), check its `store`
/// (health checks, tests) and spawn its `background` work as a service task — it stops the
/// outbox relay and the order-event consumer (both already running) once the `stop` token
/// given to [`app`] is cancelled: consuming ends after the message in hand, and the relay
/// hands back its leadership.
pub type App = ftgo_runtime::Running;

/// Runs the restaurant service until SIGTERM/SIGINT.
pub async fn run(args: &ChassisArgs) -> Result<(), keel_chassis::Error> {
    ftgo_runtime::run(
        SERVICE,
        args,
        |config: &RestaurantConfig| config.registration.clone(),
        |config, stop| async move { app(&config, stop).await },
    )
    .await
}

/// Starts the service: opens and migrates its database, starts the outbox relay and the
/// `order.events` consumer (group `restaurant`, through the inbox), and builds the routes.
/// Everything in the background stops when `stop` is cancelled (see [`App`]).
pub async fn app(config: &RestaurantConfig, stop: CancellationToken) -> Result<App, StartError> {
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
    let inbox = Inbox::new(store.clone(), "restaurant.order-events").await?;
    let events_outbox = outbox.clone();
    let order_events = inbox
        .subscribe(
            bus.as_ref(),
            Subscription::new(destinations::ORDER_EVENTS, SERVICE),
            move |tx, delivery| {
                let outbox = events_outbox.clone();
                async move { stock::on_order_event(tx, &outbox, &delivery.message).await }
            },
        )
        .await?;
    let state = Arc::new(AppState {
        store: store.clone(),
        outbox,
    });
    let router = Router::new()
        .route(
            "/restaurants",
            post(create_restaurant).get(list_restaurants),
        )
        .route("/restaurants/{id}", get(get_restaurant))
        .route("/openapi.json", get(openapi))
        .merge(keel_chassis::openapi::ui())
        .with_state(state);
    let background = Box::pin(async move {
        stop.cancelled().await;
        order_events.stop().await;
        let _ = relay.await;
        tracing::info!("restaurant background work stopped");
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

/// Most menu items one restaurant may have.
const MAX_MENU_ITEMS: usize = 1000;
/// Longest name or id, in characters.
const MAX_TEXT: usize = 200;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRestaurant {
    name: String,
    menu: Vec<NewMenuItem>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewMenuItem {
    id: String,
    name: String,
    price: Money,
    #[serde(default)]
    stock: Option<u32>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Created {
    restaurant_id: String,
}

/// A restaurant as the API shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RestaurantView {
    restaurant_id: String,
    name: String,
    /// Items in the order they were given; `stock` is `null` when unlimited.
    menu: Vec<MenuItem>,
    /// The stock version (the `version` of the latest `MenuStockChanged`; 0 before any).
    stock_version: u64,
}

fn internal(e: impl std::fmt::Display) -> Problem {
    tracing::error!(error = %e, "restaurant store failed");
    Problem::new(StatusCode::SERVICE_UNAVAILABLE).with_detail("the restaurant store is unavailable")
}

#[allow(clippy::result_large_err)] // a Problem is what the handler answers with
fn text(field: &str, value: &str) -> Result<String, Problem> {
    let v = value.trim();
    if v.is_empty() {
        return Err(invalid_field(field, format!("{field} must not be empty")));
    }
    if v.chars().count() > MAX_TEXT {
        return Err(invalid_field(
            field,
            format!("{field} must be at most {MAX_TEXT} characters"),
        ));
    }
    Ok(v.to_owned())
}

/// Checks a new restaurant; the first problem names its field (`menu[2].price`).
#[allow(clippy::result_large_err)] // a Problem is what the handler answers with
fn validate(req: NewRestaurant) -> Result<(String, Vec<MenuItem>), Problem> {
    let name = text("name", &req.name)?;
    if req.menu.is_empty() {
        return Err(invalid_field("menu", "menu must have at least one item"));
    }
    if req.menu.len() > MAX_MENU_ITEMS {
        return Err(invalid_field(
            "menu",
            format!("menu must have at most {MAX_MENU_ITEMS} items"),
        ));
    }
    let mut seen = HashSet::new();
    let mut menu = Vec::with_capacity(req.menu.len());
    for (i, item) in req.menu.into_iter().enumerate() {
        let id = text(&format!("menu[{i}].id"), &item.id)?;
        if !seen.insert(id.clone()) {
            return Err(invalid_field(
                &format!("menu[{i}].id"),
                format!("menu[{i}].id {id:?} appears more than once"),
            ));
        }
        let item_name = text(&format!("menu[{i}].name"), &item.name)?;
        if item.price <= Money(0) {
            return Err(invalid_field(
                &format!("menu[{i}].price"),
                format!("menu[{i}].price must be more than 0.00"),
            ));
        }
        menu.push(MenuItem {
            id,
            name: item_name,
            price: item.price,
            stock: item.stock,
        });
    }
    Ok((name, menu))
}

async fn create_restaurant(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<NewRestaurant>,
) -> ApiResult<(StatusCode, Json<Created>)> {
    let (name, menu) = validate(req)?;
    let id = keel_messaging::new_id();
    let event = RestaurantCreated {
        restaurant_id: id.clone(),
        name: name.clone(),
        menu,
    };
    let message = Message::typed(
        destinations::RESTAURANT_EVENTS,
        events::RESTAURANT_CREATED,
        SCHEMA_VERSION,
        &event,
    )
    .map_err(internal)?
    .with_key(id.clone());
    let mut tx = state.store.begin().await.map_err(internal)?;
    sqlx::query(
        "INSERT INTO restaurants (id, name, stock_version, created_at) VALUES ($1, $2, 0, $3)",
    )
    .bind(&id)
    .bind(&name)
    .bind(keel_store::now_ms())
    .execute(tx.conn())
    .await
    .map_err(internal)?;
    for (position, item) in event.menu.iter().enumerate() {
        sqlx::query(
            "INSERT INTO menu_items (restaurant_id, item_id, position, name, price, stock) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&id)
        .bind(&item.id)
        .bind(position as i64)
        .bind(&item.name)
        .bind(item.price.0)
        .bind(item.stock.map(i64::from))
        .execute(tx.conn())
        .await
        .map_err(internal)?;
    }
    state
        .outbox
        .send(&mut tx, &message)
        .await
        .map_err(internal)?;
    tx.commit().await.map_err(internal)?;
    tracing::info!(restaurant_id = %id, items = event.menu.len(), "restaurant created");
    Ok((StatusCode::CREATED, Json(Created { restaurant_id: id })))
}

type MenuRow = (String, String, String, i64, Option<i64>);

/// Reads restaurants (all, or the one with `id`) with their menus.
async fn load(store: &Store, id: Option<&str>) -> Result<Vec<RestaurantView>, StoreError> {
    let restaurants: Vec<(String, String, i64)> = match id {
        Some(id) => {
            sqlx::query_as("SELECT id, name, stock_version FROM restaurants WHERE id = $1")
                .bind(id)
                .fetch_all(store.pool())
                .await?
        }
        None => {
            sqlx::query_as(
                "SELECT id, name, stock_version FROM restaurants ORDER BY created_at, id",
            )
            .fetch_all(store.pool())
            .await?
        }
    };
    let items: Vec<MenuRow> = match id {
        Some(id) => {
            sqlx::query_as(
                "SELECT restaurant_id, item_id, name, price, stock FROM menu_items \
                 WHERE restaurant_id = $1 ORDER BY position",
            )
            .bind(id)
            .fetch_all(store.pool())
            .await?
        }
        None => {
            sqlx::query_as(
                "SELECT restaurant_id, item_id, name, price, stock FROM menu_items \
                 ORDER BY restaurant_id, position",
            )
            .fetch_all(store.pool())
            .await?
        }
    };
    let mut views: Vec<RestaurantView> = restaurants
        .into_iter()
        .map(|(id, name, version)| RestaurantView {
            restaurant_id: id,
            name,
            menu: Vec::new(),
            stock_version: u64::try_from(version).unwrap_or(0),
        })
        .collect();
    let index: std::collections::HashMap<String, usize> = views
        .iter()
        .enumerate()
        .map(|(i, v)| (v.restaurant_id.clone(), i))
        .collect();
    for (restaurant, item_id, name, price, stock) in items {
        if let Some(&i) = index.get(&restaurant) {
            views[i].menu.push(MenuItem {
                id: item_id,
                name,
                price: Money(price),
                stock: stock.map(|s| u32::try_from(s).unwrap_or(0)),
            });
        }
    }
    Ok(views)
}

async fn get_restaurant(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<Json<RestaurantView>> {
    let mut found = load(&state.store, Some(&id)).await.map_err(internal)?;
    match found.pop() {
        Some(view) => Ok(Json(view)),
        None => Err(Problem::not_found(format!("no restaurant with id {id}"))
            .with_extension("restaurantId", id)),
    }
}

async fn list_restaurants(State(state): State<Arc<AppState>>) -> ApiResult<Json<Value>> {
    let all = load(&state.store, None).await.map_err(internal)?;
    Ok(Json(json!({ "restaurants": all })))
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
            "title": "Restaurant service",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Restaurants, menus and stock of the food-delivery reference system. Publishes RestaurantCreated and MenuStockChanged on restaurant.events; takes stock on OrderApproved and restores it on OrderCancelled (order.events)."
        },
        "paths": {
            "/restaurants": {
                "post": {
                    "operationId": "createRestaurant",
                    "summary": "Create a restaurant and its menu (publishes RestaurantCreated)",
                    "requestBody": { "required": true, "content": { "application/json": {
                        "schema": { "$ref": "#/components/schemas/NewRestaurant" } } } },
                    "responses": {
                        "201": { "description": "Created", "content": { "application/json": {
                            "schema": { "$ref": "#/components/schemas/RestaurantCreated" } } } },
                        "400": problem, "415": problem, "422": problem
                    }
                },
                "get": {
                    "operationId": "listRestaurants",
                    "summary": "Every restaurant with its menu and current stock",
                    "responses": {
                        "200": { "description": "All restaurants", "content": { "application/json": {
                            "schema": { "type": "object", "required": ["restaurants"], "properties": {
                                "restaurants": { "type": "array", "items": {
                                    "$ref": "#/components/schemas/Restaurant" } } } } } } }
                    }
                }
            },
            "/restaurants/{id}": { "get": {
                "operationId": "getRestaurant",
                "summary": "A restaurant with its menu and current stock",
                "parameters": [ { "name": "id", "in": "path", "required": true,
                                  "schema": { "type": "string" } } ],
                "responses": {
                    "200": { "description": "The restaurant", "content": { "application/json": {
                        "schema": { "$ref": "#/components/schemas/Restaurant" } } } },
                    "404": problem
                }
            } }
        },
        "components": { "schemas": {
            "Money": { "type": "string", "pattern": "^[0-9]+(\\.[0-9]{1,2})?$", "example": "12.50" },
            "NewMenuItem": {
                "type": "object", "required": ["id", "name", "price"], "additionalProperties": false,
                "properties": {
                    "id": { "type": "string", "minLength": 1, "maxLength": 200,
                            "description": "Unique within the restaurant" },
                    "name": { "type": "string", "minLength": 1, "maxLength": 200 },
                    "price": { "allOf": [ { "$ref": "#/components/schemas/Money" } ],
                               "description": "More than 0.00" },
                    "stock": { "type": "integer", "minimum": 0, "maximum": 4294967295u64,
                               "nullable": true, "description": "Units available; absent or null: unlimited" }
                }
            },
            "NewRestaurant": {
                "type": "object", "required": ["name", "menu"], "additionalProperties": false,
                "properties": {
                    "name": { "type": "string", "minLength": 1, "maxLength": 200 },
                    "menu": { "type": "array", "minItems": 1, "maxItems": 1000,
                              "items": { "$ref": "#/components/schemas/NewMenuItem" } }
                }
            },
            "RestaurantCreated": { "type": "object", "required": ["restaurantId"],
                "properties": { "restaurantId": { "type": "string" } } },
            "MenuItem": { "type": "object", "required": ["id", "name", "price", "stock"],
                "properties": {
                    "id": { "type": "string" },
                    "name": { "type": "string" },
                    "price": { "$ref": "#/components/schemas/Money" },
                    "stock": { "type": "integer", "minimum": 0, "nullable": true,
                               "description": "Units left; null: unlimited" }
                } },
            "Restaurant": { "type": "object",
                "required": ["restaurantId", "name", "menu", "stockVersion"],
                "properties": {
                    "restaurantId": { "type": "string" },
                    "name": { "type": "string" },
                    "menu": { "type": "array", "items": { "$ref": "#/components/schemas/MenuItem" } },
                    "stockVersion": { "type": "integer", "minimum": 0,
                        "description": "The version of the latest MenuStockChanged (0: none yet)" }
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
    fn config_is_validated() {
        assert!(RestaurantConfig::default().validate().is_ok());
        let bad = RestaurantConfig {
            database: "mysql://x".to_owned(),
            ..RestaurantConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().field, "database");
    }
}
