//! The simulator's HTTP API: authorize, cancel, network-cancel, list; faults at runtime.

use std::sync::Arc;

use ftgo_contracts::Money;
use keel_chassis::{
    ApiResult, Problem,
    axum::{
        Json, Router,
        extract::{Path, Query, State as AxumState},
        http::StatusCode,
        routing::{get, post},
    },
    json::{JsonBody, invalid_field},
};
use keel_store::Store;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{
    VanConfig,
    faults::{FaultState, Faults, Operation},
    ledger::{self, Authorization, AuthorizationView, status},
};

/// What the handlers share.
#[derive(Debug, Clone)]
pub(crate) struct State {
    store: Store,
    network: Arc<str>,
    fee_bps: u32,
    faults: Arc<FaultState>,
}

impl State {
    pub(crate) fn new(store: Store, config: &VanConfig) -> Self {
        Self {
            store,
            network: Arc::from(config.network.as_str()),
            fee_bps: config.fee_bps,
            faults: Arc::new(FaultState::new(config.faults.clone())),
        }
    }

    fn view(&self, a: Authorization) -> AuthorizationView {
        a.view(&self.network, self.fee_bps)
    }

    /// Counts a request in `ftgo_van_requests_total{network,operation,outcome}`.
    fn count(&self, op: Operation, outcome: &'static str) {
        metrics::counter!(
            "ftgo_van_requests_total",
            "network" => self.network.to_string(),
            "operation" => op.as_str(),
            "outcome" => outcome
        )
        .increment(1);
    }

    /// The injected error for `op`, if this request draws one.
    #[allow(clippy::result_large_err)] // a Problem is what the handler answers with
    fn injected_error(&self, op: Operation) -> Result<(), Problem> {
        if self.faults.fails(op) {
            self.count(op, "injected_error");
            tracing::debug!(network = %self.network, operation = op.as_str(), "injected error");
            return Err(Problem::new(StatusCode::SERVICE_UNAVAILABLE)
                .with_detail(format!(
                    "{}: injected error (nothing was stored)",
                    self.network
                ))
                .with_extension("network", self.network.to_string()));
        }
        Ok(())
    }

    /// Sleeps the injected latency of `op` (after the operation is stored).
    async fn delay(&self, op: Operation) {
        if let Some(d) = self.faults.latency(op) {
            tokio::time::sleep(d).await;
        }
    }

    fn unavailable(&self, op: Operation, e: impl std::fmt::Display) -> Problem {
        self.count(op, "unavailable");
        tracing::warn!(network = %self.network, error = %e, "payment network database error");
        Problem::new(StatusCode::SERVICE_UNAVAILABLE)
            .with_detail(format!("{} database: {e}", self.network))
    }
}

/// The routes.
pub(crate) fn router(state: State) -> Router {
    Router::new()
        .route("/authorizations", post(authorize).get(list))
        .route("/authorizations/{id}", get(get_one))
        .route("/authorizations/{id}/cancel", post(cancel))
        .route("/network-cancel", post(network_cancel))
        .route("/network", get(network))
        .route("/admin/faults", get(get_faults).put(put_faults))
        .route("/openapi.json", get(crate::openapi::document))
        .merge(keel_chassis::openapi::ui())
        .with_state(state)
}

/// The longest idempotency key.
const MAX_KEY: usize = 200;

/// `POST /authorizations` body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AuthorizeRequest {
    key: String,
    order_id: String,
    amount: Money,
    card: String,
}

#[allow(clippy::result_large_err)] // a Problem is what the handler answers with
fn check_key(key: &str) -> Result<(), Problem> {
    if key.trim().is_empty() || key.len() > MAX_KEY {
        return Err(invalid_field(
            "key",
            format!("key must be 1–{MAX_KEY} characters, not blank"),
        ));
    }
    Ok(())
}

impl AuthorizeRequest {
    #[allow(clippy::result_large_err)] // a Problem is what the handler answers with
    fn check(&self) -> Result<(), Problem> {
        check_key(&self.key)?;
        if self.order_id.trim().is_empty() {
            return Err(invalid_field("orderId", "orderId must not be empty"));
        }
        if self.amount.0 <= 0 {
            return Err(invalid_field("amount", "amount must be greater than 0.00"));
        }
        if !(12..=19).contains(&self.card.len()) || !self.card.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid_field("card", "card must be 12–19 digits"));
        }
        Ok(())
    }
}

async fn authorize(
    AxumState(s): AxumState<State>,
    JsonBody(req): JsonBody<AuthorizeRequest>,
) -> ApiResult<(StatusCode, Json<AuthorizationView>)> {
    const OP: Operation = Operation::Authorize;
    req.check().inspect_err(|_| s.count(OP, "invalid"))?;
    s.injected_error(OP)?;
    let declined = req.card == ftgo_contracts::DECLINED_CARD;
    let candidate = Authorization {
        id: format!("{}-{}", s.network, keel_messaging::new_id()),
        key: req.key.clone(),
        order_id: Some(req.order_id.clone()),
        amount: Some(req.amount),
        card_last4: Some(req.card[req.card.len() - 4..].to_owned()),
        status: if declined {
            status::DECLINED
        } else {
            status::APPROVED
        }
        .to_owned(),
        reason: declined.then(|| ledger::CARD_DECLINED.to_owned()),
    };
    let mut tx = s.store.begin().await.map_err(|e| s.unavailable(OP, e))?;
    let stored = ledger::insert(tx.conn(), &candidate)
        .await
        .map_err(|e| s.unavailable(OP, e))?;
    let existing = if stored {
        None
    } else {
        ledger::by_key(tx.conn(), &req.key)
            .await
            .map_err(|e| s.unavailable(OP, e))?
    };
    tx.commit().await.map_err(|e| s.unavailable(OP, e))?;
    let answer = match existing {
        None => {
            s.count(OP, if declined { "declined" } else { "approved" });
            tracing::info!(network = %s.network, key = %req.key, order_id = %req.order_id, status = %candidate.status, "authorization");
            Ok((StatusCode::CREATED, Json(s.view(candidate))))
        }
        Some(a) if a.is_tombstone() => {
            s.count(OP, "refused");
            Err(Problem::conflict(format!(
                "key {} was network-cancelled before this request arrived; nothing was authorized",
                req.key
            ))
            .with_extension("key", req.key.clone())
            .with_extension("status", a.status))
        }
        Some(a) if a.order_id.as_deref() != Some(&req.order_id) || a.amount != Some(req.amount) => {
            s.count(OP, "refused");
            Err(Problem::conflict(format!(
                "key {} was used for another request (order {:?}, amount {:?})",
                req.key,
                a.order_id,
                a.amount.map(|m| m.to_string())
            ))
            .with_extension("key", req.key.clone()))
        }
        Some(a) => {
            s.count(OP, "replayed");
            Ok((StatusCode::OK, Json(s.view(a))))
        }
    };
    s.delay(OP).await;
    answer
}

async fn cancel(
    AxumState(s): AxumState<State>,
    Path(id): Path<String>,
) -> ApiResult<Json<AuthorizationView>> {
    const OP: Operation = Operation::Cancel;
    s.injected_error(OP)?;
    let mut tx = s.store.begin().await.map_err(|e| s.unavailable(OP, e))?;
    let Some(a) = ledger::by_id(tx.conn(), &id)
        .await
        .map_err(|e| s.unavailable(OP, e))?
    else {
        s.count(OP, "not_found");
        return Err(Problem::not_found(format!("no authorization {id}")).with_extension("id", id));
    };
    if a.status == status::DECLINED {
        s.count(OP, "refused");
        return Err(Problem::conflict(format!(
            "authorization {id} was declined; there is nothing to cancel"
        ))
        .with_extension("id", id)
        .with_extension("status", a.status));
    }
    let changed = a.status == status::APPROVED
        && ledger::release(tx.conn(), false, &id, status::CANCELLED, status::CANCELLED)
            .await
            .map_err(|e| s.unavailable(OP, e))?;
    let now = ledger::by_id(tx.conn(), &id)
        .await
        .map_err(|e| s.unavailable(OP, e))?
        .unwrap_or(a);
    tx.commit().await.map_err(|e| s.unavailable(OP, e))?;
    s.count(OP, if changed { "cancelled" } else { "unchanged" });
    if changed {
        tracing::info!(network = %s.network, %id, "authorization cancelled");
    }
    s.delay(OP).await;
    Ok(Json(s.view(now)))
}

/// `POST /network-cancel` body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NetworkCancelRequest {
    key: String,
    /// The order the key was for, recorded on a tombstone (optional).
    #[serde(default)]
    order_id: Option<String>,
}

/// What a network-cancel did.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct NetworkCancelled {
    key: String,
    /// `VOIDED` (an approved authorization was voided), `TOMBSTONED` (none had arrived; a
    /// late one will be refused) or `NONE` (declined, cancelled or voided before).
    action: &'static str,
    authorization: AuthorizationView,
}

async fn network_cancel(
    AxumState(s): AxumState<State>,
    JsonBody(req): JsonBody<NetworkCancelRequest>,
) -> ApiResult<Json<NetworkCancelled>> {
    const OP: Operation = Operation::NetworkCancel;
    check_key(&req.key).inspect_err(|_| s.count(OP, "invalid"))?;
    s.injected_error(OP)?;
    let tombstone = Authorization {
        id: format!("{}-{}", s.network, keel_messaging::new_id()),
        key: req.key.clone(),
        order_id: req.order_id.clone().filter(|o| !o.trim().is_empty()),
        amount: None,
        card_last4: None,
        status: status::VOIDED.to_owned(),
        reason: Some(ledger::VOIDED_BEFORE_ARRIVAL.to_owned()),
    };
    let mut tx = s.store.begin().await.map_err(|e| s.unavailable(OP, e))?;
    let action = if ledger::insert(tx.conn(), &tombstone)
        .await
        .map_err(|e| s.unavailable(OP, e))?
    {
        "TOMBSTONED"
    } else if ledger::release(
        tx.conn(),
        true,
        &req.key,
        status::VOIDED,
        ledger::NETWORK_CANCELLED,
    )
    .await
    .map_err(|e| s.unavailable(OP, e))?
    {
        "VOIDED"
    } else {
        "NONE"
    };
    let now = ledger::by_key(tx.conn(), &req.key)
        .await
        .map_err(|e| s.unavailable(OP, e))?
        .unwrap_or(tombstone);
    tx.commit().await.map_err(|e| s.unavailable(OP, e))?;
    s.count(
        OP,
        match action {
            "TOMBSTONED" => "tombstoned",
            "VOIDED" => "voided",
            _ => "unchanged",
        },
    );
    tracing::info!(network = %s.network, key = %req.key, action, "network-cancel");
    s.delay(OP).await;
    Ok(Json(NetworkCancelled {
        key: req.key,
        action,
        authorization: s.view(now),
    }))
}

/// `GET /authorizations` query.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    order_id: Option<String>,
    limit: Option<i64>,
}

async fn list(
    AxumState(s): AxumState<State>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(invalid_field("limit", "limit must be between 1 and 1000"));
    }
    let rows = ledger::list(s.store.pool(), q.order_id.as_deref(), limit)
        .await
        .map_err(|e| s.unavailable(Operation::Authorize, e))?;
    let items: Vec<AuthorizationView> = rows.into_iter().map(|a| s.view(a)).collect();
    Ok(Json(
        json!({ "network": &*s.network, "authorizations": items }),
    ))
}

async fn get_one(
    AxumState(s): AxumState<State>,
    Path(id): Path<String>,
) -> ApiResult<Json<AuthorizationView>> {
    ledger::by_id(s.store.pool(), &id)
        .await
        .map_err(|e| s.unavailable(Operation::Authorize, e))?
        .map(|a| Json(s.view(a)))
        .ok_or_else(|| {
            Problem::not_found(format!("no authorization {id}")).with_extension("id", id)
        })
}

async fn network(AxumState(s): AxumState<State>) -> Json<Value> {
    Json(json!({
        "network": &*s.network,
        "feeBps": s.fee_bps,
        "faults": s.faults.get(),
    }))
}

async fn get_faults(AxumState(s): AxumState<State>) -> Json<Faults> {
    Json(s.faults.get())
}

async fn put_faults(
    AxumState(s): AxumState<State>,
    JsonBody(faults): JsonBody<Faults>,
) -> ApiResult<Json<Faults>> {
    faults
        .validate()
        .map_err(|(field, why)| invalid_field(&field, why))?;
    tracing::warn!(network = %s.network, error_rate = faults.error_rate, latency_ms = faults.latency_ms, operations = ?faults.operations, "faults changed");
    s.faults.set(faults.clone());
    Ok(Json(faults))
}
