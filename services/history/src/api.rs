//! The view's HTTP API: a consumer's order history with filters and paging, one order,
//! the dashboard, and the rebuild command. Every query accepts a consistency token.
//!
//! The query routes are served twice, at `/orders…`/`/dashboard` and under `/history/…`,
//! so a gateway can route either by path prefix or by query parameter.

use std::{collections::BTreeMap, time::Duration};

use ftgo_contracts::order_states;
use keel_chassis::{
    ApiResult, Problem,
    axum::{
        Json, Router,
        extract::{Path, Query, State},
        http::{HeaderMap, StatusCode},
        routing::{get, post},
    },
    json::invalid_field,
};
use serde::Serialize;
use serde_json::{Value, json};

use crate::{
    feed::Feed,
    token::{self, WaitError},
    view::{self, Dashboard, ListQuery, OrderRow},
};

/// Default page size of `GET /orders`.
const DEFAULT_LIMIT: u32 = 20;
/// Largest page size of `GET /orders`.
const MAX_LIMIT: u32 = 100;

#[derive(Debug, Clone)]
struct AppState {
    feed: Feed,
    wait: Duration,
    admin: bool,
}

/// The view's routes.
pub(crate) fn router(feed: Feed, wait: Duration, admin: bool) -> Router {
    Router::new()
        .route("/orders", get(list_orders))
        .route("/orders/{order_id}", get(get_order))
        .route("/dashboard", get(dashboard))
        .route("/history/orders", get(list_orders))
        .route("/history/orders/{order_id}", get(get_order))
        .route("/history/dashboard", get(dashboard))
        .route("/admin/view", get(view_status))
        .route("/admin/rebuild", post(rebuild))
        .route("/openapi.json", get(crate::openapi::document))
        .merge(keel_chassis::openapi::ui())
        .with_state(AppState { feed, wait, admin })
}

fn unavailable(e: impl std::fmt::Display) -> Problem {
    tracing::warn!(error = %e, "history database error");
    Problem::new(StatusCode::SERVICE_UNAVAILABLE).with_detail(format!("history database: {e}"))
}

/// A query parameter that is not acceptable: a 400 naming it.
#[derive(Debug)]
struct BadParam {
    field: String,
    detail: String,
}

fn bad(field: &str, detail: impl Into<String>) -> BadParam {
    BadParam {
        field: field.to_owned(),
        detail: detail.into(),
    }
}

impl From<BadParam> for Problem {
    fn from(b: BadParam) -> Self {
        invalid_field(&b.field, b.detail)
    }
}

/// The query parameters, refusing unknown and repeated ones.
fn params(
    raw: Vec<(String, String)>,
    allowed: &[&str],
) -> Result<BTreeMap<String, String>, BadParam> {
    let mut out = BTreeMap::new();
    for (k, v) in raw {
        if !allowed.contains(&k.as_str()) {
            return Err(bad(
                &k,
                format!(
                    "unknown query parameter {k:?}; this route takes {}",
                    allowed.join(", ")
                ),
            ));
        }
        if out.insert(k.clone(), v).is_some() {
            return Err(bad(&k, format!("{k} is given more than once")));
        }
    }
    Ok(out)
}

/// A present, non-blank parameter value (blank is refused).
fn non_blank(p: &BTreeMap<String, String>, name: &str) -> Result<Option<String>, BadParam> {
    match p.get(name).map(|v| v.trim()) {
        None => Ok(None),
        Some("") => Err(bad(
            name,
            format!("{name} must not be blank (leave it out instead)"),
        )),
        Some(v) => Ok(Some(v.to_owned())),
    }
}

/// Waits for the request's consistency token, if it has one.
async fn consistent(
    state: &AppState,
    p: &BTreeMap<String, String>,
    headers: &HeaderMap,
) -> ApiResult<()> {
    let header = match headers.get(token::HEADER) {
        None => None,
        Some(h) => Some(h.to_str().map_err(|_| {
            invalid_field(
                "consistencyToken",
                "the Keel-Consistency-Token header is not visible ASCII",
            )
        })?),
    };
    let Some(t) = token::from_request(p.get("consistencyToken").map(String::as_str), header)
        .map_err(|e| invalid_field("consistencyToken", e))?
    else {
        return Ok(());
    };
    match token::wait(&state.feed, &t, state.wait).await {
        Ok(()) => Ok(()),
        Err(WaitError::Store(e)) => Err(unavailable(e)),
        Err(WaitError::Behind(have)) => {
            let at = match have {
                Some(v) => format!("it has order {} at version {v}", t.order_id),
                None => format!("it has not seen order {} being created yet", t.order_id),
            };
            Err(Problem::conflict(format!(
                "the order history view is behind consistency token {t}: {at} after waiting {} ms; retry shortly",
                state.wait.as_millis()
            ))
            .with_title("View behind")
            .with_extension("consistencyToken", t.to_string())
            .with_extension("orderId", t.order_id.clone())
            .with_extension("wanted", t.version)
            .with_extension("position", have.map_or(Value::Null, Value::from)))
        }
    }
}

/// `GET /orders` body.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Page {
    orders: Vec<OrderRow>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

async fn list_orders(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(raw): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Page>> {
    let p = params(
        raw,
        &[
            "consumerId",
            "state",
            "restaurantId",
            "limit",
            "cursor",
            "consistencyToken",
        ],
    )?;
    let Some(consumer_id) = non_blank(&p, "consumerId")? else {
        return Err(invalid_field(
            "consumerId",
            "consumerId is required: whose order history?",
        ));
    };
    let state_filter = non_blank(&p, "state")?;
    if let Some(s) = &state_filter {
        let states = [
            order_states::APPROVAL_PENDING,
            order_states::APPROVED,
            order_states::REJECTED,
            order_states::CANCEL_PENDING,
            order_states::CANCELLED,
        ];
        if !states.contains(&s.as_str()) {
            return Err(invalid_field(
                "state",
                format!("state must be one of {}, not {s:?}", states.join(", ")),
            ));
        }
    }
    let limit = match non_blank(&p, "limit")? {
        None => DEFAULT_LIMIT,
        Some(l) => match l.parse::<u32>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(invalid_field(
                    "limit",
                    format!("limit must be a whole number from 1 to {MAX_LIMIT}, not {l:?}"),
                ));
            }
        },
    };
    let cursor = non_blank(&p, "cursor")?;
    if let Some(c) = &cursor
        && (c.len() > 200 || c.chars().any(|ch| ch.is_whitespace() || ch.is_control()))
    {
        return Err(invalid_field(
            "cursor",
            "cursor must be the nextCursor of a previous page",
        ));
    }
    consistent(&state, &p, &headers).await?;
    let q = ListQuery {
        consumer_id,
        state: state_filter,
        restaurant_id: non_blank(&p, "restaurantId")?,
        before: cursor,
        limit,
    };
    let mut orders = view::list(state.feed.store().pool(), &q)
        .await
        .map_err(unavailable)?;
    let next_cursor = if orders.len() > limit as usize {
        orders.truncate(limit as usize);
        orders.last().map(|o| o.order_id.clone())
    } else {
        None
    };
    Ok(Json(Page {
        orders,
        next_cursor,
    }))
}

async fn get_order(
    State(state): State<AppState>,
    Path(order_id): Path<String>,
    headers: HeaderMap,
    Query(raw): Query<Vec<(String, String)>>,
) -> ApiResult<Json<OrderRow>> {
    let p = params(raw, &["consistencyToken"])?;
    consistent(&state, &p, &headers).await?;
    view::get(state.feed.store().pool(), &order_id)
        .await
        .map_err(unavailable)?
        .map(Json)
        .ok_or_else(|| {
            Problem::not_found(format!("the order history view has no order {order_id}"))
                .with_extension("orderId", order_id)
        })
}

async fn dashboard(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(raw): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Dashboard>> {
    let p = params(raw, &["restaurantId", "consistencyToken"])?;
    let restaurant = non_blank(&p, "restaurantId")?;
    consistent(&state, &p, &headers).await?;
    view::dashboard(state.feed.store().pool(), restaurant.as_deref())
        .await
        .map(Json)
        .map_err(unavailable)
}

async fn view_status(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let generation = state.feed.generation().await;
    Ok(Json(json!({
        "generation": generation,
        "group": crate::feed::group(generation),
        "destinations": crate::feed::DESTINATIONS,
    })))
}

async fn rebuild(State(state): State<AppState>) -> ApiResult<(StatusCode, Json<Value>)> {
    if !state.admin {
        return Err(Problem::new(StatusCode::FORBIDDEN)
            .with_detail("the admin endpoints are disabled (app.admin_endpoints = false)"));
    }
    let generation = state.feed.rebuild().await.map_err(unavailable)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "generation": generation,
            "group": crate::feed::group(generation),
            "status": "the view was emptied and is replaying every retained event",
        })),
    ))
}
