//! The order service's HTTP API: place an order, read it, cancel it; the sagas' query
//! routes; the OpenAPI document.

use std::sync::Arc;

use ftgo_contracts::{
    LineItem, Money,
    events::{self, OrderCancellation, OrderCreated},
    order_states,
};
use keel_chassis::{
    ApiResult, Problem,
    axum::{
        Json, Router,
        extract::{Path, State},
        http::{HeaderName, StatusCode, header},
        routing::{get, post},
    },
};
use keel_messaging::Outbox;
use keel_saga::Orchestrator;
use keel_store::Store;
use serde::{Deserialize, Serialize};

use crate::{
    db,
    sagas::{self, CancelOrderData, CreateOrderData},
};
use keel_chassis::json::{LenientJsonBody, invalid_field};

pub(crate) struct AppState {
    pub(crate) store: Store,
    pub(crate) outbox: Outbox,
    pub(crate) create: Orchestrator<CreateOrderData>,
    pub(crate) cancel: Orchestrator<CancelOrderData>,
}

pub(crate) fn router(state: Arc<AppState>) -> Router {
    let sagas = keel_saga::query::router(state.store.clone());
    Router::new()
        .route("/orders", post(create_order))
        .route("/orders/{id}", get(get_order))
        .route("/orders/{id}/cancel", post(cancel_order))
        .route("/openapi.json", get(openapi))
        .merge(keel_chassis::openapi::ui())
        .with_state(state)
        .merge(sagas)
}

/// Store trouble: the caller may retry.
fn store_failed(e: impl std::fmt::Display) -> Problem {
    tracing::error!(error = %e, "order database failed");
    Problem::new(StatusCode::SERVICE_UNAVAILABLE)
        .with_detail(format!("the order database failed: {e}"))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NewOrder {
    consumer_id: String,
    restaurant_id: String,
    line_items: Vec<NewLineItem>,
    #[serde(default)]
    delivery_address: Option<String>,
    #[serde(default)]
    delivery_time: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NewLineItem {
    menu_item_id: String,
    quantity: i64,
}

/// The response header carrying a command's consistency token.
pub(crate) const CONSISTENCY_TOKEN: HeaderName = HeaderName::from_static("keel-consistency-token");

/// The consistency token of an order command: the position of its (last) event,
/// `<orderId>:<version>`. A read model given it can tell whether it has caught up.
fn consistency_token(order_id: &str, version: u64) -> String {
    format!("{order_id}:{version}")
}

/// `201` and `202` bodies.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Accepted {
    order_id: String,
    state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    rejection_reason: Option<String>,
    /// `<orderId>:<version>` of the command's last event (also the
    /// `Keel-Consistency-Token` header).
    consistency_token: String,
}

/// An order as the API shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct OrderView {
    order_id: String,
    state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    rejection_reason: Option<String>,
    order_total: Money,
    line_items: Vec<LineItem>,
    consumer_id: String,
    restaurant_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    ticket_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    authorization_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delivery_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delivery_time: Option<String>,
    version: u64,
}

impl From<db::Order> for OrderView {
    fn from(o: db::Order) -> Self {
        Self {
            order_id: o.id,
            state: o.state,
            rejection_reason: o.rejection_reason,
            order_total: o.order_total,
            line_items: o.line_items,
            consumer_id: o.consumer_id,
            restaurant_id: o.restaurant_id,
            ticket_id: o.ticket_id,
            authorization_id: o.authorization_id,
            delivery_address: o.delivery_address,
            delivery_time: o.delivery_time,
            version: o.version,
        }
    }
}

/// The request after validation.
#[derive(Debug)]
struct Valid {
    consumer_id: String,
    restaurant_id: String,
    lines: Vec<(String, u32)>,
    delivery_address: Option<String>,
    delivery_time: Option<String>,
}

/// A request field that parsed but is not acceptable: a 400 naming it.
#[derive(Debug)]
struct BadField {
    field: String,
    detail: String,
}

fn bad(field: &str, detail: impl Into<String>) -> BadField {
    BadField {
        field: field.to_owned(),
        detail: detail.into(),
    }
}

impl From<BadField> for Problem {
    fn from(b: BadField) -> Self {
        invalid_field(&b.field, b.detail)
    }
}

fn validate(req: NewOrder) -> Result<Valid, BadField> {
    let consumer_id = req.consumer_id.trim().to_owned();
    if consumer_id.is_empty() {
        return Err(bad("consumerId", "consumerId must not be empty"));
    }
    let restaurant_id = req.restaurant_id.trim().to_owned();
    if restaurant_id.is_empty() {
        return Err(bad("restaurantId", "restaurantId must not be empty"));
    }
    if req.line_items.is_empty() {
        return Err(bad(
            "lineItems",
            "lineItems must name at least one menu item",
        ));
    }
    let mut lines = Vec::with_capacity(req.line_items.len());
    for (i, l) in req.line_items.into_iter().enumerate() {
        let id = l.menu_item_id.trim().to_owned();
        if id.is_empty() {
            let f = format!("lineItems[{i}].menuItemId");
            return Err(bad(&f, format!("{f} must not be empty")));
        }
        let quantity = match u32::try_from(l.quantity) {
            Ok(q) if q >= 1 => q,
            _ => {
                let f = format!("lineItems[{i}].quantity");
                return Err(bad(
                    &f,
                    format!(
                        "{f} must be an integer from 1 to {}, not {}",
                        u32::MAX,
                        l.quantity
                    ),
                ));
            }
        };
        lines.push((id, quantity));
    }
    let optional = |field: &str, v: Option<String>| match v {
        Some(s) if s.trim().is_empty() => Err(bad(
            field,
            format!("{field} must not be blank (leave it out instead)"),
        )),
        other => Ok(other),
    };
    Ok(Valid {
        consumer_id,
        restaurant_id,
        lines,
        delivery_address: optional("deliveryAddress", req.delivery_address)?,
        delivery_time: optional("deliveryTime", req.delivery_time)?,
    })
}

/// `POST /orders`: the order (APPROVAL_PENDING, priced from the replica), its
/// `OrderCreated` event and its create-order saga commit together.
async fn create_order(
    State(state): State<Arc<AppState>>,
    LenientJsonBody(req): LenientJsonBody<NewOrder>,
) -> ApiResult<(
    StatusCode,
    [(header::HeaderName, String); 2],
    Json<Accepted>,
)> {
    let req = validate(req)?;
    let mut tx = state.store.begin().await.map_err(store_failed)?;
    if !db::restaurant_exists(&mut tx, &req.restaurant_id)
        .await
        .map_err(store_failed)?
    {
        let _ = tx.rollback().await;
        return Err(Problem::new(StatusCode::UNPROCESSABLE_ENTITY)
            .with_detail(format!(
                "restaurantId: no restaurant {:?} is known to the order service",
                req.restaurant_id
            ))
            .with_extension("field", "restaurantId")
            .with_extension("restaurantId", req.restaurant_id));
    }
    let menu = db::menu(&mut tx, &req.restaurant_id)
        .await
        .map_err(store_failed)?;
    let mut total = Money(0);
    let mut line_items = Vec::with_capacity(req.lines.len());
    for (menu_item_id, quantity) in req.lines {
        // An item the replica does not know is kept (name empty, price 0): the saga's
        // first steps reject the order with MENU_ITEM_UNAVAILABLE.
        let (name, price) = menu
            .get(&menu_item_id)
            .map(|m| (m.name.clone(), m.price))
            .unwrap_or_default();
        total = price
            .times(quantity)
            .and_then(|p| total.plus(p))
            .ok_or_else(|| invalid_field("lineItems", "the order total is too large"))?;
        line_items.push(LineItem {
            menu_item_id,
            name,
            quantity,
            price,
        });
    }
    let order = db::Order {
        id: keel_messaging::new_id(),
        consumer_id: req.consumer_id,
        restaurant_id: req.restaurant_id,
        state: order_states::APPROVAL_PENDING.to_owned(),
        rejection_reason: None,
        order_total: total,
        line_items,
        delivery_address: req.delivery_address,
        delivery_time: req.delivery_time,
        ticket_id: None,
        authorization_id: None,
        version: 1,
    };
    db::insert_order(&mut tx, &order)
        .await
        .map_err(store_failed)?;
    let created = OrderCreated {
        order_id: order.id.clone(),
        consumer_id: order.consumer_id.clone(),
        restaurant_id: order.restaurant_id.clone(),
        line_items: order.line_items.clone(),
        order_total: order.order_total,
        delivery_address: order.delivery_address.clone(),
        delivery_time: order.delivery_time.clone(),
        version: order.version,
    };
    sagas::publish(
        &mut tx,
        &state.outbox,
        events::ORDER_CREATED,
        &order.id,
        &created,
    )
    .await
    .map_err(store_failed)?;
    let data = CreateOrderData {
        order_id: order.id.clone(),
        consumer_id: order.consumer_id.clone(),
        restaurant_id: order.restaurant_id.clone(),
        line_items: order.line_items.clone(),
        order_total: order.order_total,
        unavailable: Vec::new(),
        ticket_id: None,
        authorization_id: None,
        rejection: None,
        failure: None,
    };
    let saga_id = state
        .create
        .start(&mut tx, data)
        .await
        .map_err(store_failed)?;
    // The saga's leading local steps ran in this transaction: an order with an
    // unavailable item is already REJECTED.
    let now = db::get_order(tx.conn(), &order.id)
        .await
        .map_err(store_failed)?
        .ok_or_else(|| store_failed("the new order vanished"))?;
    tx.commit().await.map_err(store_failed)?;
    tracing::info!(order_id = %order.id, %saga_id, state = %now.state, total = %order.order_total, version = now.version, "order placed");
    let token = consistency_token(&order.id, now.version);
    Ok((
        StatusCode::CREATED,
        [
            (header::LOCATION, format!("/orders/{}", order.id)),
            (CONSISTENCY_TOKEN, token.clone()),
        ],
        Json(Accepted {
            order_id: order.id,
            state: now.state,
            rejection_reason: now.rejection_reason,
            consistency_token: token,
        }),
    ))
}

fn no_order(id: &str) -> Problem {
    Problem::not_found(format!("no order {id}")).with_extension("orderId", id)
}

/// `GET /orders/{id}`.
async fn get_order(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<Json<OrderView>> {
    db::get_order(state.store.pool(), &id)
        .await
        .map_err(store_failed)?
        .map(|o| Json(o.into()))
        .ok_or_else(|| no_order(&id))
}

/// `POST /orders/{id}/cancel`: APPROVED → CANCEL_PENDING, its `OrderCancellationStarted`
/// event and the cancel-order saga, in one transaction; any other state is a 409 (the
/// `*_PENDING` states are semantic locks).
async fn cancel_order(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<(
    StatusCode,
    [(header::HeaderName, String); 1],
    Json<Accepted>,
)> {
    let mut tx = state.store.begin().await.map_err(store_failed)?;
    let moved = db::transition(
        &mut tx,
        &id,
        order_states::APPROVED,
        order_states::CANCEL_PENDING,
    )
    .await
    .map_err(store_failed)?;
    let order = db::get_order(tx.conn(), &id).await.map_err(store_failed)?;
    let Some(order) = order else {
        let _ = tx.rollback().await;
        return Err(no_order(&id));
    };
    if !moved {
        let _ = tx.rollback().await;
        let why = match order.state.as_str() {
            order_states::APPROVAL_PENDING => {
                "it is APPROVAL_PENDING: the create-order saga is still deciding; an order can be cancelled once it is APPROVED"
            }
            order_states::CANCEL_PENDING => {
                "it is CANCEL_PENDING: a cancellation is already running"
            }
            order_states::REJECTED => "it was REJECTED: there is nothing to cancel",
            order_states::CANCELLED => "it is already CANCELLED",
            _ => "only an APPROVED order can be cancelled",
        };
        return Err(
            Problem::conflict(format!("order {id} cannot be cancelled: {why}"))
                .with_extension("orderId", id)
                .with_extension("state", order.state),
        );
    }
    let started = OrderCancellation {
        order_id: order.id.clone(),
        reason: None,
        version: order.version,
    };
    sagas::publish(
        &mut tx,
        &state.outbox,
        events::ORDER_CANCELLATION_STARTED,
        &order.id,
        &started,
    )
    .await
    .map_err(store_failed)?;
    let token = consistency_token(&order.id, order.version);
    let data = CancelOrderData {
        order_id: order.id.clone(),
        consumer_id: order.consumer_id,
        restaurant_id: order.restaurant_id,
        line_items: order.line_items,
        order_total: order.order_total,
        failure: None,
    };
    let saga_id = state
        .cancel
        .start(&mut tx, data)
        .await
        .map_err(store_failed)?;
    tx.commit().await.map_err(store_failed)?;
    tracing::info!(order_id = %id, %saga_id, "order cancellation started");
    Ok((
        StatusCode::ACCEPTED,
        [(CONSISTENCY_TOKEN, token.clone())],
        Json(Accepted {
            order_id: id,
            state: order_states::CANCEL_PENDING.to_owned(),
            rejection_reason: None,
            consistency_token: token,
        }),
    ))
}

async fn openapi() -> Json<serde_json::Value> {
    Json(crate::openapi::document())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: serde_json::Value) -> Result<Valid, String> {
        let r: NewOrder = serde_json::from_value(v).unwrap();
        validate(r).map_err(|b| b.field)
    }

    #[test]
    fn validation_names_the_field() {
        let ok = serde_json::json!({"consumerId": "c", "restaurantId": "r",
            "lineItems": [{"menuItemId": "m", "quantity": 2}]});
        assert!(req(ok.clone()).is_ok());
        let mut v = ok.clone();
        v["consumerId"] = " ".into();
        assert_eq!(req(v).unwrap_err(), "consumerId");
        let mut v = ok.clone();
        v["restaurantId"] = "".into();
        assert_eq!(req(v).unwrap_err(), "restaurantId");
        let mut v = ok.clone();
        v["lineItems"] = serde_json::json!([]);
        assert_eq!(req(v).unwrap_err(), "lineItems");
        let mut v = ok.clone();
        v["lineItems"] = serde_json::json!([{"menuItemId": "m", "quantity": 1}, {"menuItemId": "m", "quantity": -3}]);
        assert_eq!(req(v).unwrap_err(), "lineItems[1].quantity");
        let mut v = ok.clone();
        v["lineItems"][0]["quantity"] = 0.into();
        assert_eq!(req(v).unwrap_err(), "lineItems[0].quantity");
        let mut v = ok.clone();
        v["lineItems"][0]["quantity"] = 5_000_000_000_i64.into();
        assert_eq!(req(v).unwrap_err(), "lineItems[0].quantity");
        let mut v = ok.clone();
        v["lineItems"][0]["menuItemId"] = "".into();
        assert_eq!(req(v).unwrap_err(), "lineItems[0].menuItemId");
        let mut v = ok;
        v["deliveryAddress"] = "  ".into();
        assert_eq!(req(v).unwrap_err(), "deliveryAddress");
    }
}
