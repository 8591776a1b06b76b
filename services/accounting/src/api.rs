//! Accounting's HTTP API: the payment of an order, the account of a consumer, the payment
//! networks' failover state.

use std::sync::Arc;

use keel_chassis::{
    ApiResult, Problem,
    axum::{
        Json, Router,
        extract::{Path, State},
        http::StatusCode,
        routing::get,
    },
};
use keel_store::Store;

use crate::{
    authorizer::Authorizer,
    ledger::{self, AccountView, PaymentView},
    payments::PaymentNetworks,
};

/// Accounting's routes.
pub(crate) fn router(store: Store, authorizer: Arc<dyn Authorizer>) -> Router {
    Router::new()
        .route("/payments/{order_id}", get(get_payment))
        .route("/accounts/{consumer_id}", get(get_account))
        .route(
            "/payment-networks",
            get(move || payment_networks(authorizer.clone())),
        )
        .route("/openapi.json", get(crate::openapi::document))
        .merge(keel_chassis::openapi::ui())
        .with_state(store)
}

async fn payment_networks(authorizer: Arc<dyn Authorizer>) -> Json<PaymentNetworks> {
    Json(authorizer.networks().unwrap_or_else(|| PaymentNetworks {
        selection: crate::authorizer::CARD_RULE_NETWORK.to_owned(),
        preferred: None,
        networks: Vec::new(),
    }))
}

fn unavailable(e: impl std::fmt::Display) -> Problem {
    tracing::warn!(error = %e, "accounting database error");
    Problem::new(StatusCode::SERVICE_UNAVAILABLE).with_detail(format!("accounting database: {e}"))
}

async fn get_payment(
    State(store): State<Store>,
    Path(order_id): Path<String>,
) -> ApiResult<Json<PaymentView>> {
    ledger::payment(store.pool(), &order_id)
        .await
        .map_err(unavailable)?
        .map(|p| Json(p.into()))
        .ok_or_else(|| {
            Problem::not_found(format!("no payment for order {order_id}"))
                .with_extension("orderId", order_id)
        })
}

async fn get_account(
    State(store): State<Store>,
    Path(consumer_id): Path<String>,
) -> ApiResult<Json<AccountView>> {
    ledger::account(store.pool(), &consumer_id)
        .await
        .map_err(unavailable)?
        .map(|a| Json(a.into()))
        .ok_or_else(|| {
            Problem::not_found(format!("no account for consumer {consumer_id}"))
                .with_extension("consumerId", consumer_id)
        })
}
