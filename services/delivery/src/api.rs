//! The delivery service's HTTP API: read a delivery (by order), list and read couriers, and
//! set a courier's availability (which hands waiting deliveries to it).

use keel_chassis::{
    ApiResult, Problem,
    axum::{
        Json, Router,
        extract::{Path, State},
        http::StatusCode,
        routing::{get, post},
    },
    json::{JsonBody, invalid_field},
};
use keel_messaging::Outbox;
use keel_store::Store;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    scheduling,
    store::{self, CourierView, DeliveryView},
    telemetry,
};

#[derive(Debug, Clone)]
struct AppState {
    store: Store,
    outbox: Outbox,
}

/// `POST /couriers/{id}/availability` body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Availability {
    /// Whether the courier takes deliveries now.
    available: bool,
}

/// The longest courier id accepted.
const MAX_COURIER_ID: usize = 64;

/// The delivery service's routes.
pub(crate) fn router(store: Store, outbox: Outbox) -> Router {
    Router::new()
        .route("/deliveries/{order_id}", get(get_delivery))
        .route("/couriers", get(list_couriers))
        .route("/couriers/{courier_id}", get(get_courier))
        .route(
            "/couriers/{courier_id}/availability",
            post(set_availability),
        )
        .route("/openapi.json", get(crate::openapi::document))
        .merge(keel_chassis::openapi::ui())
        .with_state(AppState { store, outbox })
}

fn unavailable(e: impl std::fmt::Display) -> Problem {
    tracing::warn!(error = %e, "delivery database error");
    Problem::new(StatusCode::SERVICE_UNAVAILABLE).with_detail(format!("delivery database: {e}"))
}

fn no_courier(courier_id: &str) -> Problem {
    Problem::not_found(format!("no courier {courier_id}")).with_extension("courierId", courier_id)
}

/// A courier id is 1 to 64 letters, digits, `.`, `_` or `-`.
fn valid_courier_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_COURIER_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The 400 problem (naming `courierId`) for an invalid courier id.
fn bad_courier_id(id: &str) -> Problem {
    invalid_field(
        "courierId",
        format!(
            "a courier id is 1 to {MAX_COURIER_ID} letters, digits, '.', '_' or '-', got {id:?}"
        ),
    )
}

async fn get_delivery(
    State(state): State<AppState>,
    Path(order_id): Path<String>,
) -> ApiResult<Json<DeliveryView>> {
    store::delivery(state.store.pool(), &order_id)
        .await
        .map_err(unavailable)?
        .map(|d| Json(d.into()))
        .ok_or_else(|| {
            Problem::not_found(format!("no delivery for order {order_id}"))
                .with_extension("orderId", order_id)
        })
}

async fn list_couriers(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let all = store::couriers(state.store.pool(), None)
        .await
        .map_err(unavailable)?;
    Ok(Json(json!({ "couriers": all })))
}

async fn courier(store: &Store, courier_id: &str) -> ApiResult<CourierView> {
    store::couriers(store.pool(), Some(courier_id))
        .await
        .map_err(unavailable)?
        .into_iter()
        .next()
        .ok_or_else(|| no_courier(courier_id))
}

async fn get_courier(
    State(state): State<AppState>,
    Path(courier_id): Path<String>,
) -> ApiResult<Json<CourierView>> {
    if !valid_courier_id(&courier_id) {
        return Err(bad_courier_id(&courier_id));
    }
    Ok(Json(courier(&state.store, &courier_id).await?))
}

async fn set_availability(
    State(state): State<AppState>,
    Path(courier_id): Path<String>,
    JsonBody(req): JsonBody<Availability>,
) -> ApiResult<(StatusCode, Json<CourierView>)> {
    if !valid_courier_id(&courier_id) {
        return Err(bad_courier_id(&courier_id));
    }
    let mut tx = state.store.begin().await.map_err(unavailable)?;
    let before = store::courier_available(tx.conn(), &courier_id)
        .await
        .map_err(unavailable)?;
    match before {
        None => store::insert_courier(tx.conn(), &courier_id, req.available)
            .await
            .map_err(unavailable)?,
        Some(was) if was != req.available => {
            store::set_available(tx.conn(), &courier_id, req.available)
                .await
                .map_err(unavailable)?;
        }
        Some(_) => {}
    }
    if req.available {
        let assigned = scheduling::assign_pending(&mut tx, &state.outbox)
            .await
            .map_err(unavailable)?;
        if !assigned.is_empty() {
            tracing::info!(
                courier_id,
                assigned = assigned.len(),
                "waiting deliveries assigned"
            );
        }
    } else {
        telemetry::refresh_gauges(&mut tx)
            .await
            .map_err(unavailable)?;
    }
    tx.commit().await.map_err(unavailable)?;
    if before != Some(req.available) {
        tracing::info!(
            courier_id,
            available = req.available,
            "courier availability changed"
        );
    }
    let view = courier(&state.store, &courier_id).await?;
    let status = if before.is_none() {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn courier_ids_are_checked() {
        for ok in ["c-1", "Bob", "courier_7.x", &"a".repeat(64)] {
            assert!(valid_courier_id(ok), "{ok}");
        }
        for bad in ["", "a b", "é", "x/y", &"a".repeat(65)] {
            assert!(!valid_courier_id(bad), "{bad}");
        }
    }
}
