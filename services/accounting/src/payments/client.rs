//! The payment networks' HTTP API as accounting calls it, with each failure classified by
//! what it means for the money: nothing happened, or the outcome is unknown.

use std::time::Duration;

use ftgo_contracts::Money;
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::json;

/// A network's authorization, as it answers.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct NetworkAuthorization {
    pub(crate) id: String,
    pub(crate) status: String,
    #[serde(default)]
    pub(crate) reason: Option<String>,
    #[serde(default)]
    pub(crate) fee_bps: Option<u32>,
}

/// The network's statuses.
pub(crate) mod status {
    pub(crate) const APPROVED: &str = "APPROVED";
    pub(crate) const DECLINED: &str = "DECLINED";
}

/// Why a call gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CallError {
    /// Nothing happened at the network: the connection was refused, or it answered 503
    /// (the simulator stores nothing when it does), or it could not be found.
    #[error("refused: {0}")]
    Refused(String),
    /// The request may have been applied: a timeout, a connection lost after sending, an
    /// unexpected status or body.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// The network refused the request itself (4xx): for an authorization, the key was
    /// network-cancelled or reused; nothing was authorized by this request.
    #[error("rejected: {0}")]
    Rejected(String),
}

fn classify(e: &reqwest::Error) -> CallError {
    if e.is_connect() {
        CallError::Refused(e.to_string())
    } else if e.is_timeout() {
        CallError::Unknown(format!("timed out: {e}"))
    } else {
        CallError::Unknown(e.to_string())
    }
}

async fn send<T: serde::de::DeserializeOwned>(
    request: reqwest::RequestBuilder,
    timeout: Duration,
) -> Result<(StatusCode, T), CallError> {
    let response = request
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| classify(&e))?;
    let status = response.status();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        return Err(CallError::Refused(format!("{status}")));
    }
    if status.is_client_error() {
        let body = response.text().await.unwrap_or_default();
        return Err(CallError::Rejected(format!("{status}: {body}")));
    }
    if !status.is_success() {
        return Err(CallError::Unknown(format!("{status}")));
    }
    let body = response
        .json::<T>()
        .await
        .map_err(|e| CallError::Unknown(format!("unreadable answer: {e}")))?;
    Ok((status, body))
}

/// `POST {base}/authorizations`.
pub(crate) async fn authorize(
    http: &reqwest::Client,
    base: &str,
    timeout: Duration,
    key: &str,
    order_id: &str,
    amount: Money,
    card: &str,
) -> Result<NetworkAuthorization, CallError> {
    let request = http
        .post(format!("{base}/authorizations"))
        .json(&json!({ "key": key, "orderId": order_id, "amount": amount, "card": card }));
    Ok(send(request, timeout).await?.1)
}

/// What a network-cancel left behind.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct NetworkCancelled {
    pub(crate) action: String,
    pub(crate) authorization: NetworkAuthorization,
}

/// `POST {base}/network-cancel`: a 200 means nothing is, or will be, held under `key`.
pub(crate) async fn network_cancel(
    http: &reqwest::Client,
    base: &str,
    timeout: Duration,
    key: &str,
    order_id: &str,
) -> Result<NetworkCancelled, CallError> {
    let request = http
        .post(format!("{base}/network-cancel"))
        .json(&json!({ "key": key, "orderId": order_id }));
    Ok(send(request, timeout).await?.1)
}

/// `POST {base}/authorizations/{id}/cancel`. A 404 (unknown id) or 409 (declined) means
/// nothing is held: `Ok(None)`.
pub(crate) async fn cancel(
    http: &reqwest::Client,
    base: &str,
    timeout: Duration,
    id: &str,
) -> Result<Option<NetworkAuthorization>, CallError> {
    let request = http.post(format!("{base}/authorizations/{id}/cancel"));
    match send(request, timeout).await {
        Ok((_, a)) => Ok(Some(a)),
        Err(CallError::Rejected(_)) => Ok(None),
        Err(e) => Err(e),
    }
}
