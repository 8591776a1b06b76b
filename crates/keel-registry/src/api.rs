//! The HTTP interface: Eureka's REST API under `/eureka`, the native watch stream, the
//! admin endpoints and the dashboard.

use std::{collections::BTreeMap, convert::Infallible, sync::Arc, time::Duration};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{
        IntoResponse, Response,
        sse::{Event as SseEvent, KeepAlive, Sse},
    },
    routing::{get, post, put},
};
use futures::Stream;
use keel_chassis::Problem;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;

use keel_eureka::{
    Application, ApplicationEnvelope, Applications, ApplicationsEnvelope, Instance,
    InstanceEnvelope, REPLICATION_HEADER, Status, xml,
};

use crate::{
    dashboard,
    registry::{Registry, RenewOutcome, Renewal},
    replication::{Peers, Task},
};

/// Shared state of the handlers.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The registry.
    pub registry: Arc<Registry>,
    /// Peers to replicate to.
    pub peers: Peers,
    /// Bearer token required by admin endpoints, when set.
    pub admin_token: Option<String>,
    /// When this node started (epoch ms), for the dashboard.
    pub started_ms: u64,
    /// Cancelled when the registry starts draining: watch streams end then.
    pub draining: tokio_util::sync::CancellationToken,
}

/// All routes of the registry.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(dashboard::page))
        .route("/eureka/apps", get(all_apps))
        .route("/eureka/apps/", get(all_apps))
        .route("/eureka/apps/delta", get(delta))
        .route("/eureka/apps/{app}", post(register).get(get_app))
        .route(
            "/eureka/apps/{app}/{id}",
            put(renew).delete(cancel).get(get_instance),
        )
        .route(
            "/eureka/apps/{app}/{id}/status",
            put(override_status).delete(delete_override),
        )
        .route("/eureka/apps/{app}/{id}/metadata", put(update_metadata))
        .route("/eureka/instances/{id}", get(instance_by_id))
        .route("/eureka/vips/{vip}", get(vip))
        .route("/eureka/svips/{vip}", get(svip))
        .route("/keel/v1/watch", get(watch))
        .route("/keel/v1/stats", get(stats))
        .route("/keel/v1/admin/evict", post(evict))
        .route("/keel/v1/admin/self-preservation", put(self_preservation))
        .with_state(state)
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("json"))
}

fn is_replication(headers: &HeaderMap) -> bool {
    headers
        .get(REPLICATION_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

fn negotiated<T: Serialize>(
    headers: &HeaderMap,
    json: &T,
    xml: impl FnOnce() -> String,
) -> Response {
    if wants_json(headers) {
        axum::Json(json).into_response()
    } else {
        let mut res = xml().into_response();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/xml"),
        );
        res
    }
}

fn applications_response(headers: &HeaderMap, apps: Applications) -> Response {
    negotiated(
        headers,
        &ApplicationsEnvelope {
            applications: apps.clone(),
        },
        || xml::applications(&apps),
    )
}

async fn all_apps(State(s): State<AppState>, headers: HeaderMap) -> Response {
    applications_response(&headers, s.registry.applications())
}

async fn delta(State(s): State<AppState>, headers: HeaderMap) -> Response {
    applications_response(&headers, s.registry.delta())
}

async fn vip(State(s): State<AppState>, Path(vip): Path<String>, headers: HeaderMap) -> Response {
    applications_response(&headers, s.registry.vip(&vip, false))
}

async fn svip(State(s): State<AppState>, Path(vip): Path<String>, headers: HeaderMap) -> Response {
    applications_response(&headers, s.registry.vip(&vip, true))
}

fn unknown_instance(app: &str, id: &str) -> Response {
    Problem::not_found(format!("no instance {id} of application {app}")).into_response()
}

async fn get_app(
    State(s): State<AppState>,
    Path(app): Path<String>,
    headers: HeaderMap,
) -> Response {
    match s.registry.application(&app) {
        Some(a) => negotiated(
            &headers,
            &ApplicationEnvelope {
                application: a.clone(),
            },
            || xml::application_doc(&a),
        ),
        None => Problem::not_found(format!("no application {app}")).into_response(),
    }
}

fn instance_response(headers: &HeaderMap, i: Instance) -> Response {
    negotiated(
        headers,
        &InstanceEnvelope {
            instance: i.clone(),
        },
        || xml::instance_doc(&i),
    )
}

async fn get_instance(
    State(s): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    match s.registry.instance(&app, &id) {
        Some(i) => instance_response(&headers, i),
        None => unknown_instance(&app, &id),
    }
}

async fn instance_by_id(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    match s.registry.instance_by_id(&id) {
        Some(i) => instance_response(&headers, i),
        None => Problem::not_found(format!("no instance {id}")).into_response(),
    }
}

async fn register(
    State(s): State<AppState>,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if content_type.contains("xml") {
        return Problem::new(StatusCode::UNSUPPORTED_MEDIA_TYPE)
            .with_detail(
                "registrations must be JSON (application/json); XML bodies are not supported",
            )
            .into_response();
    }
    let env: InstanceEnvelope = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => {
            return Problem::bad_request(format!("malformed registration: {e}")).into_response();
        }
    };
    let mut instance = env.instance;
    if instance.app.is_empty() {
        instance.app = app.clone();
    }
    if !instance.app.eq_ignore_ascii_case(&app) {
        return Problem::bad_request(format!(
            "application in the body ({}) does not match the path ({app})",
            instance.app
        ))
        .into_response();
    }
    if let Err(reason) = instance.validate() {
        return Problem::bad_request(reason).into_response();
    }
    instance.app = instance.app.to_ascii_uppercase();
    let action = s.registry.register(instance.clone());
    metrics::counter!("keel_registry_registrations_total").increment(1);
    tracing::debug!(app = %instance.app, instance = %instance.instance_id, ?action, "registered");
    if !is_replication(&headers) {
        let current = s
            .registry
            .instance(&instance.app, &instance.instance_id)
            .unwrap_or(instance);
        s.peers.replicate(Task::Register(Box::new(current)));
    }
    StatusCode::NO_CONTENT.into_response()
}

fn parse_status(field: &str, v: Option<&String>) -> Result<Option<Status>, String> {
    match v.map(|s| s.as_str()).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => s
            .parse::<Status>()
            .map(Some)
            .map_err(|e| format!("{field}: {e}")),
    }
}

fn parse_dirty(q: &BTreeMap<String, String>) -> Result<Option<u64>, String> {
    match q.get("lastDirtyTimestamp").filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| format!("lastDirtyTimestamp: expected a number, got {v:?}")),
    }
}

fn renewal(q: &BTreeMap<String, String>) -> Result<Renewal, String> {
    Ok(Renewal {
        status: parse_status("status", q.get("status"))?,
        last_dirty: parse_dirty(q)?,
        overridden: parse_status("overriddenstatus", q.get("overriddenstatus"))?,
    })
}

async fn renew(
    State(s): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    Query(q): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let r = match renewal(&q) {
        Ok(r) => r,
        Err(e) => return Problem::bad_request(e).into_response(),
    };
    let replication = is_replication(&headers);
    metrics::counter!("keel_registry_renewals_total").increment(1);
    match s.registry.renew(&app, &id, &r, replication) {
        RenewOutcome::Renewed => {
            if !replication && let Some(i) = s.registry.instance(&app, &id) {
                s.peers.replicate(Task::Renew {
                    app: i.app.clone(),
                    id: id.clone(),
                    status: r.status,
                    last_dirty: i.last_dirty_timestamp,
                    overridden: i.overridden_status,
                });
            }
            let mut res = StatusCode::OK.into_response();
            res.extensions_mut()
                .insert(keel_chassis::server::QuietAccessLog);
            res
        }
        RenewOutcome::NotFound => unknown_instance(&app, &id),
        RenewOutcome::Conflict(i) => (StatusCode::CONFLICT, axum::Json(*i)).into_response(),
    }
}

async fn cancel(
    State(s): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if !s.registry.cancel(&app, &id) {
        return unknown_instance(&app, &id);
    }
    metrics::counter!("keel_registry_cancels_total").increment(1);
    if !is_replication(&headers) {
        s.peers.replicate(Task::Cancel {
            app: app.to_ascii_uppercase(),
            id,
        });
    }
    StatusCode::OK.into_response()
}

async fn override_status(
    State(s): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    Query(q): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let status = match parse_status("value", q.get("value")) {
        Ok(Some(s)) => s,
        Ok(None) => return Problem::bad_request("value: a status is required").into_response(),
        Err(e) => return Problem::bad_request(e).into_response(),
    };
    let dirty = match parse_dirty(&q) {
        Ok(d) => d,
        Err(e) => return Problem::bad_request(e).into_response(),
    };
    if !s.registry.override_status(&app, &id, status, dirty) {
        return unknown_instance(&app, &id);
    }
    if !is_replication(&headers) {
        s.peers.replicate(Task::Override {
            app: app.to_ascii_uppercase(),
            id,
            status,
        });
    }
    StatusCode::OK.into_response()
}

async fn delete_override(
    State(s): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    Query(q): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let status = match parse_status("value", q.get("value")) {
        Ok(s) => s,
        Err(e) => return Problem::bad_request(e).into_response(),
    };
    if !s.registry.delete_status_override(&app, &id, status) {
        return unknown_instance(&app, &id);
    }
    if !is_replication(&headers) {
        s.peers.replicate(Task::DeleteOverride {
            app: app.to_ascii_uppercase(),
            id,
        });
    }
    StatusCode::OK.into_response()
}

async fn update_metadata(
    State(s): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    Query(q): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if q.is_empty() {
        return Problem::bad_request("give metadata as query parameters: ?key=value")
            .into_response();
    }
    if !s.registry.update_metadata(&app, &id, &q) {
        return unknown_instance(&app, &id);
    }
    if !is_replication(&headers) {
        s.peers.replicate(Task::Metadata {
            app: app.to_ascii_uppercase(),
            id,
            entries: q,
        });
    }
    StatusCode::OK.into_response()
}

#[derive(Debug, Deserialize)]
struct WatchQuery {
    app: Option<String>,
}

/// The snapshot event's payload.
#[derive(Debug, Serialize)]
struct Snapshot<'a> {
    index: u64,
    applications: &'a [Application],
}

/// `GET /keel/v1/watch[?app=NAME]`: server-sent events. First `snapshot` (every instance
/// and the index), then one `change` per registration, status change, metadata change,
/// cancel or eviction, in index order. A watcher that falls behind gets a new `snapshot`.
async fn watch(
    State(s): State<AppState>,
    Query(q): Query<WatchQuery>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let registry = s.registry.clone();
    let filter = q.app.map(|a| a.to_ascii_uppercase());
    let draining = s.draining.clone().cancelled_owned();
    let stream = futures::StreamExt::take_until(async_stream(registry, filter), draining);
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

fn snapshot_event(apps: &Applications, filter: &Option<String>) -> SseEvent {
    let index = apps.versions_delta.parse().unwrap_or(0);
    let selected: Vec<Application> = apps
        .application
        .iter()
        .filter(|a| filter.as_ref().is_none_or(|f| &a.name == f))
        .cloned()
        .collect();
    let data = serde_json::to_string(&Snapshot {
        index,
        applications: &selected,
    })
    .unwrap_or_default();
    SseEvent::default()
        .event("snapshot")
        .id(index.to_string())
        .data(data)
}

fn async_stream(
    registry: Arc<Registry>,
    filter: Option<String>,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let (snapshot, rx) = registry.watch();
    let first = snapshot_event(&snapshot, &filter);
    futures::stream::unfold(
        (Some(first), rx, registry, filter),
        |(pending, mut rx, registry, filter)| async move {
            if let Some(ev) = pending {
                return Some((Ok(ev), (None, rx, registry, filter)));
            }
            loop {
                match rx.recv().await {
                    Ok(e) => {
                        if filter.as_ref().is_some_and(|f| &e.app != f) {
                            continue;
                        }
                        let data = serde_json::to_string(e.as_ref()).unwrap_or_default();
                        let ev = SseEvent::default()
                            .event("change")
                            .id(e.index.to_string())
                            .data(data);
                        return Some((Ok(ev), (None, rx, registry, filter)));
                    }
                    Err(RecvError::Lagged(_)) => {
                        let (snap, new_rx) = registry.watch();
                        let ev = snapshot_event(&snap, &filter);
                        return Some((Ok(ev), (None, new_rx, registry, filter)));
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        },
    )
}

async fn stats(State(s): State<AppState>) -> Response {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Out {
        #[serde(flatten)]
        stats: crate::registry::Stats,
        peers: Vec<crate::replication::PeerStatus>,
        watchers: usize,
    }
    axum::Json(Out {
        stats: s.registry.stats(),
        peers: s.peers.status(),
        watchers: s.registry.watchers(),
    })
    .into_response()
}

#[allow(clippy::result_large_err)]
fn authorized(s: &AppState, headers: &HeaderMap) -> Result<(), Response> {
    keel_chassis::server::check_admin_token(headers, s.admin_token.as_deref())
}

async fn evict(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(r) = authorized(&s, &headers) {
        return r;
    }
    let n = s.registry.evict();
    axum::Json(serde_json::json!({ "evicted": n })).into_response()
}

#[derive(Debug, Deserialize)]
struct Enabled {
    enabled: Option<String>,
}

async fn self_preservation(
    State(s): State<AppState>,
    Query(q): Query<Enabled>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorized(&s, &headers) {
        return r;
    }
    let enabled = match q.enabled.as_deref() {
        Some("true") => true,
        Some("false") => false,
        other => {
            return Problem::bad_request(format!("enabled: expected true or false, got {other:?}"))
                .into_response();
        }
    };
    s.registry.set_self_preservation(enabled);
    axum::Json(s.registry.stats()).into_response()
}
