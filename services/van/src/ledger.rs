//! The network's authorizations, one per idempotency key: their table and the queries on it.
//!
//! A network-cancel for a key that has no authorization yet stores a *tombstone* (a
//! `VOIDED` row without an amount) under that key, so a request that arrives late is refused.
//! The key's uniqueness makes "authorize" and "network-cancel" race-free on SQLite and
//! PostgreSQL alike: whichever insert wins decides, the other sees its row.

use ftgo_contracts::Money;
use keel_store::{Migration, now_ms};
use serde::Serialize;
use sqlx::{Any, Executor};

/// The simulator's tables.
pub(crate) const MIGRATIONS: &[Migration] = &[Migration::new(
    1,
    "authorizations",
    "CREATE TABLE authorizations (
        id TEXT PRIMARY KEY,
        idempotency_key TEXT NOT NULL UNIQUE,
        order_id TEXT,
        amount {bigint},
        card_last4 TEXT,
        status TEXT NOT NULL,
        reason TEXT,
        created_at {bigint} NOT NULL,
        updated_at {bigint} NOT NULL
    );
    CREATE INDEX authorizations_by_order ON authorizations (order_id)",
)];

/// An authorization's status (the API's strings).
pub(crate) mod status {
    /// The amount is held on the card.
    pub(crate) const APPROVED: &str = "APPROVED";
    /// Declined; nothing is held.
    pub(crate) const DECLINED: &str = "DECLINED";
    /// Released by the merchant (`/authorizations/{id}/cancel`).
    pub(crate) const CANCELLED: &str = "CANCELLED";
    /// Voided by a network-cancel (or refused in advance: a tombstone).
    pub(crate) const VOIDED: &str = "VOIDED";
}

/// Reason of a decline: the always-declined test card.
pub(crate) const CARD_DECLINED: &str = "CARD_DECLINED";
/// Reason of a voided authorization.
pub(crate) const NETWORK_CANCELLED: &str = "NETWORK_CANCELLED";
/// Reason of a tombstone: voided before any authorization arrived.
pub(crate) const VOIDED_BEFORE_ARRIVAL: &str = "VOIDED_BEFORE_ARRIVAL";

/// One row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Authorization {
    pub(crate) id: String,
    pub(crate) key: String,
    pub(crate) order_id: Option<String>,
    /// `None` for a tombstone.
    pub(crate) amount: Option<Money>,
    pub(crate) card_last4: Option<String>,
    pub(crate) status: String,
    pub(crate) reason: Option<String>,
}

impl Authorization {
    /// Whether this is a tombstone (a network-cancel that came before any request).
    pub(crate) fn is_tombstone(&self) -> bool {
        self.amount.is_none()
    }
}

/// An authorization in the HTTP API.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AuthorizationView {
    pub(crate) id: String,
    pub(crate) key: String,
    pub(crate) network: String,
    pub(crate) order_id: Option<String>,
    pub(crate) amount: Option<Money>,
    pub(crate) card_last4: Option<String>,
    pub(crate) status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reason: Option<String>,
    pub(crate) fee_bps: u32,
}

impl Authorization {
    pub(crate) fn view(self, network: &str, fee_bps: u32) -> AuthorizationView {
        AuthorizationView {
            id: self.id,
            key: self.key,
            network: network.to_owned(),
            order_id: self.order_id,
            amount: self.amount,
            card_last4: self.card_last4,
            status: self.status,
            reason: self.reason,
            fee_bps,
        }
    }
}

type Row = (
    String,
    String,
    Option<String>,
    Option<i64>,
    Option<String>,
    String,
    Option<String>,
);

/// `SELECT <the row's columns> FROM authorizations <tail>` (sqlx wants static SQL).
macro_rules! select {
    ($tail:literal) => {
        concat!(
            "SELECT id, idempotency_key, order_id, amount, card_last4, status, reason \
             FROM authorizations ",
            $tail
        )
    };
}

fn from_row(r: Row) -> Authorization {
    Authorization {
        id: r.0,
        key: r.1,
        order_id: r.2,
        amount: r.3.map(Money),
        card_last4: r.4,
        status: r.5,
        reason: r.6,
    }
}

/// The authorization stored under `key`.
pub(crate) async fn by_key<'e>(
    ex: impl Executor<'e, Database = Any>,
    key: &str,
) -> Result<Option<Authorization>, sqlx::Error> {
    Ok(
        sqlx::query_as::<_, Row>(select!("WHERE idempotency_key = $1"))
            .bind(key)
            .fetch_optional(ex)
            .await?
            .map(from_row),
    )
}

/// The authorization `id`.
pub(crate) async fn by_id<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: &str,
) -> Result<Option<Authorization>, sqlx::Error> {
    Ok(sqlx::query_as::<_, Row>(select!("WHERE id = $1"))
        .bind(id)
        .fetch_optional(ex)
        .await?
        .map(from_row))
}

/// Authorizations of `order_id` (every one when `None`, newest first, at most `limit`).
pub(crate) async fn list<'e>(
    ex: impl Executor<'e, Database = Any>,
    order_id: Option<&str>,
    limit: i64,
) -> Result<Vec<Authorization>, sqlx::Error> {
    let rows = match order_id {
        Some(o) => {
            sqlx::query_as::<_, Row>(select!(
                "WHERE order_id = $1 ORDER BY created_at, id LIMIT $2"
            ))
            .bind(o)
            .bind(limit)
            .fetch_all(ex)
            .await?
        }
        None => {
            sqlx::query_as::<_, Row>(select!("ORDER BY created_at DESC, id LIMIT $1"))
                .bind(limit)
                .fetch_all(ex)
                .await?
        }
    };
    Ok(rows.into_iter().map(from_row).collect())
}

/// Stores `a` unless its key is taken. `true` when it was stored.
pub(crate) async fn insert<'e>(
    ex: impl Executor<'e, Database = Any>,
    a: &Authorization,
) -> Result<bool, sqlx::Error> {
    let now = now_ms();
    let done = sqlx::query(
        "INSERT INTO authorizations (id, idempotency_key, order_id, amount, card_last4, status, \
         reason, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) \
         ON CONFLICT (idempotency_key) DO NOTHING",
    )
    .bind(&a.id)
    .bind(&a.key)
    .bind(a.order_id.as_deref())
    .bind(a.amount.map(|m| m.0))
    .bind(a.card_last4.as_deref())
    .bind(&a.status)
    .bind(a.reason.as_deref())
    .bind(now)
    .execute(ex)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The `APPROVED` authorization whose key (`by_key`) or id is `value` becomes `to` (with `reason`).
/// `true` when one changed.
pub(crate) async fn release<'e>(
    ex: impl Executor<'e, Database = Any>,
    by_key: bool,
    value: &str,
    to: &str,
    reason: &str,
) -> Result<bool, sqlx::Error> {
    let sql = if by_key {
        "UPDATE authorizations SET status = $1, reason = $2, updated_at = $3 \
         WHERE idempotency_key = $4 AND status = $5"
    } else {
        "UPDATE authorizations SET status = $1, reason = $2, updated_at = $3 \
         WHERE id = $4 AND status = $5"
    };
    let done = sqlx::query(sql)
        .bind(to)
        .bind(reason)
        .bind(now_ms())
        .bind(value)
        .bind(status::APPROVED)
        .execute(ex)
        .await?;
    Ok(done.rows_affected() == 1)
}
