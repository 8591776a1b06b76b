//! Seeing what sagas do: list them by type and state; for one saga, its data and the
//! timeline of steps, commands, replies, compensations and timings. As Rust functions and
//! as HTTP JSON routes to merge into a chassis service's router.

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    response::{IntoResponse, Response},
    routing,
};
use keel_store::Store;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::Row;

use crate::orchestrator::{SagaError, SagaState};

/// One saga in a list.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SagaSummary {
    /// Id.
    pub id: String,
    /// Saga type (definition name).
    pub saga_type: String,
    /// State.
    pub state: SagaState,
    /// Current step index.
    pub step: i64,
    /// Why it failed or compensated, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Epoch ms.
    pub created_at: i64,
    /// Epoch ms.
    pub updated_at: i64,
    /// Epoch ms, when ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<i64>,
}

/// One entry of a saga's timeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SagaEvent {
    /// Epoch ms.
    pub at: i64,
    /// `STARTED`, `COMMAND_SENT`, `STEP_SUCCEEDED`, `STEP_FAILED`, `TIMEOUT`,
    /// `RETRY_SCHEDULED`, `COMPENSATING`, `COMPENSATION_SENT`, `COMPENSATED`,
    /// `REPLY_IGNORED`, `STEP_SKIPPED`, `COMPLETED`, `FAILED`.
    pub kind: String,
    /// Step index.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<i64>,
    /// Step name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_name: Option<String>,
    /// Details (command type and destination, reply type, error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A saga with its data and timeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SagaDetail {
    /// The summary.
    #[serde(flatten)]
    pub summary: SagaSummary,
    /// The saga's data.
    pub data: Value,
    /// Every step, command, reply and compensation, in order.
    pub timeline: Vec<SagaEvent>,
}

fn summary(row: &sqlx::any::AnyRow) -> Result<SagaSummary, SagaError> {
    let state: String = row.try_get("state")?;
    Ok(SagaSummary {
        id: row.try_get("id")?,
        saga_type: row.try_get("saga_type")?,
        state: SagaState::parse(&state)
            .ok_or_else(|| SagaError::Data(format!("unknown state {state}")))?,
        step: row.try_get("step")?,
        error: row.try_get("error")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        ended_at: row.try_get("ended_at")?,
    })
}

/// Sagas, newest first, optionally of one type and/or in one state.
pub async fn list(
    store: &Store,
    saga_type: Option<&str>,
    state: Option<SagaState>,
    limit: i64,
) -> Result<Vec<SagaSummary>, SagaError> {
    let rows = sqlx::query(
        "SELECT id, saga_type, state, step, error, created_at, updated_at, ended_at FROM keel_sagas \
         WHERE ($1 = '' OR saga_type = $2) AND ($3 = '' OR state = $4) ORDER BY created_at DESC, id DESC LIMIT $5",
    )
    .bind(saga_type.unwrap_or(""))
    .bind(saga_type.unwrap_or(""))
    .bind(state.map(SagaState::as_str).unwrap_or(""))
    .bind(state.map(SagaState::as_str).unwrap_or(""))
    .bind(limit.clamp(1, 1000))
    .fetch_all(store.pool())
    .await?;
    rows.iter().map(summary).collect()
}

/// Counts by (type, state).
pub async fn counts(store: &Store) -> Result<Vec<(String, SagaState, i64)>, SagaError> {
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT saga_type, state, COUNT(*) FROM keel_sagas GROUP BY saga_type, state ORDER BY saga_type, state")
            .fetch_all(store.pool())
            .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(t, s, n)| SagaState::parse(&s).map(|s| (t, s, n)))
        .collect())
}

/// One saga with its data and timeline.
pub async fn get(store: &Store, id: &str) -> Result<Option<SagaDetail>, SagaError> {
    let row = sqlx::query(
        "SELECT id, saga_type, state, step, error, created_at, updated_at, ended_at, data FROM keel_sagas WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(store.pool())
    .await?;
    let Some(row) = row else { return Ok(None) };
    let data: String = row.try_get("data")?;
    let events = sqlx::query(
        "SELECT at, kind, step, step_name, detail FROM keel_saga_events WHERE saga_id = $1 ORDER BY seq",
    )
    .bind(id)
    .fetch_all(store.pool())
    .await?;
    let timeline = events
        .iter()
        .map(|e| {
            Ok(SagaEvent {
                at: e.try_get("at")?,
                kind: e.try_get("kind")?,
                step: e.try_get("step")?,
                step_name: e.try_get("step_name")?,
                detail: e.try_get("detail")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(Some(SagaDetail {
        summary: summary(&row)?,
        data: serde_json::from_str(&data).unwrap_or(Value::Null),
        timeline,
    }))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    #[serde(rename = "type")]
    saga_type: Option<String>,
    state: Option<String>,
    limit: Option<i64>,
}

/// `GET /sagas?type=&state=&limit=` and `GET /sagas/{id}` (problem+json 400/404).
pub fn router(store: Store) -> Router {
    Router::new()
        .route("/sagas", routing::get(list_route))
        .route("/sagas/{id}", routing::get(get_route))
        .with_state(store)
}

fn problem(status: axum::http::StatusCode, detail: String) -> Response {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    let mut res = (status, Json(body)).into_response();
    res.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/problem+json"),
    );
    res
}

async fn list_route(State(store): State<Store>, Query(q): Query<ListQuery>) -> Response {
    let state = match q.state.as_deref().map(|s| s.to_ascii_uppercase()) {
        None => None,
        Some(s) => match SagaState::parse(&s) {
            Some(st) => Some(st),
            None => {
                return problem(
                    axum::http::StatusCode::BAD_REQUEST,
                    format!(
                        "state: unknown state {s:?} (RUNNING, COMPENSATING, COMPLETED, COMPENSATED, FAILED)"
                    ),
                );
            }
        },
    };
    match list(
        &store,
        q.saga_type.as_deref(),
        state,
        q.limit.unwrap_or(100),
    )
    .await
    {
        Ok(v) => Json(v).into_response(),
        Err(e) => problem(axum::http::StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn get_route(State(store): State<Store>, Path(id): Path<String>) -> Response {
    match get(&store, &id).await {
        Ok(Some(d)) => Json(d).into_response(),
        Ok(None) => problem(axum::http::StatusCode::NOT_FOUND, format!("no saga {id}")),
        Err(e) => problem(axum::http::StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}
