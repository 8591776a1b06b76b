//! The attempt journal (`payment_attempts`): every call to a network is written down, in its
//! own committed transaction, *before* it is made, and its outcome after. A crash between the
//! two leaves a `PENDING` attempt, which is voided before anything else is tried for the
//! order — so no approval can be forgotten at one network while another approves.

use keel_store::{Store, StoreError, now_ms};

/// An attempt's status.
pub(crate) mod status {
    /// Written before the call; still so after a crash.
    pub(crate) const PENDING: &str = "PENDING";
    /// The network approved (the approval accounting uses).
    pub(crate) const APPROVED: &str = "APPROVED";
    /// The network declined.
    pub(crate) const DECLINED: &str = "DECLINED";
    /// Nothing happened (refused, 503).
    pub(crate) const FAILED: &str = "FAILED";
    /// The outcome is unknown and not voided yet.
    pub(crate) const UNKNOWN: &str = "UNKNOWN";
    /// Voided by a confirmed network-cancel.
    pub(crate) const VOIDED: &str = "VOIDED";
}

/// One attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Attempt {
    pub(crate) order_id: String,
    pub(crate) seq: i64,
    pub(crate) network: String,
    pub(crate) key: String,
    pub(crate) status: String,
    pub(crate) network_authorization_id: Option<String>,
}

impl Attempt {
    /// Whether its outcome must be voided before another attempt.
    pub(crate) fn unresolved(&self) -> bool {
        self.status == status::PENDING || self.status == status::UNKNOWN
    }
}

/// The attempts for `order_id`, in order.
pub(crate) async fn attempts(store: &Store, order_id: &str) -> Result<Vec<Attempt>, StoreError> {
    let rows = sqlx::query_as::<_, (String, i64, String, String, String, Option<String>)>(
        "SELECT order_id, seq, network, idempotency_key, status, network_authorization_id \
         FROM payment_attempts WHERE order_id = $1 ORDER BY seq",
    )
    .bind(order_id)
    .fetch_all(store.pool())
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Attempt {
            order_id: r.0,
            seq: r.1,
            network: r.2,
            key: r.3,
            status: r.4,
            network_authorization_id: r.5,
        })
        .collect())
}

/// Writes `a` down (committed) before its call is made.
pub(crate) async fn begin(store: &Store, a: &Attempt) -> Result<(), StoreError> {
    store
        .write(
            sqlx::query(
                "INSERT INTO payment_attempts (order_id, seq, network, idempotency_key, status, \
                 network_authorization_id, reason, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, NULL, NULL, $6, $6)",
            )
            .bind(&a.order_id)
            .bind(a.seq)
            .bind(&a.network)
            .bind(&a.key)
            .bind(&a.status)
            .bind(now_ms()),
        )
        .await?;
    Ok(())
}

/// Records the outcome of attempt `seq` of `order_id`.
pub(crate) async fn settle(
    store: &Store,
    order_id: &str,
    seq: i64,
    status: &str,
    network_authorization_id: Option<&str>,
    reason: Option<&str>,
) -> Result<(), StoreError> {
    store
        .write(
            sqlx::query(
                "UPDATE payment_attempts SET status = $1, \
                 network_authorization_id = COALESCE($2, network_authorization_id), \
                 reason = $3, updated_at = $4 WHERE order_id = $5 AND seq = $6",
            )
            .bind(status)
            .bind(network_authorization_id)
            .bind(reason)
            .bind(now_ms())
            .bind(order_id)
            .bind(seq),
        )
        .await?;
    Ok(())
}
