//! Accounts and authorizations: their tables and the queries on them.

use ftgo_contracts::Money;
use keel_store::{Migration, now_ms};
use serde::Serialize;
use sqlx::{Any, Executor};

/// The accounting service's tables.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration::new(
        1,
        "accounts and authorizations",
        "CREATE TABLE accounts (
        consumer_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        card TEXT NOT NULL,
        created_at {bigint} NOT NULL
    );
    CREATE TABLE authorizations (
        order_id TEXT PRIMARY KEY,
        authorization_id TEXT,
        consumer_id TEXT NOT NULL,
        amount {bigint} NOT NULL,
        card_last4 TEXT,
        state TEXT NOT NULL,
        reason TEXT,
        created_at {bigint} NOT NULL,
        updated_at {bigint} NOT NULL
    )",
    ),
    Migration::new(
        2,
        "payment networks: where an authorization is held, and the attempt journal",
        "ALTER TABLE authorizations ADD COLUMN network TEXT;
    ALTER TABLE authorizations ADD COLUMN network_authorization_id TEXT;
    CREATE TABLE payment_attempts (
        order_id TEXT NOT NULL,
        seq {bigint} NOT NULL,
        network TEXT NOT NULL,
        idempotency_key TEXT NOT NULL,
        status TEXT NOT NULL,
        network_authorization_id TEXT,
        reason TEXT,
        created_at {bigint} NOT NULL,
        updated_at {bigint} NOT NULL,
        PRIMARY KEY (order_id, seq)
    )",
    ),
];

/// An authorization's state (the API's strings).
pub(crate) mod state {
    /// The amount is held on the card.
    pub(crate) const AUTHORIZED: &str = "AUTHORIZED";
    /// Released again (cancel-order).
    pub(crate) const REVERSED: &str = "REVERSED";
    /// Declined (no authorization id).
    pub(crate) const DECLINED: &str = "DECLINED";
}

/// A consumer's account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Account {
    pub(crate) consumer_id: String,
    pub(crate) name: String,
    pub(crate) card: String,
}

/// An account in the HTTP API (the card only by its last four digits).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AccountView {
    consumer_id: String,
    name: String,
    card_last4: Option<String>,
}

impl From<Account> for AccountView {
    fn from(a: Account) -> Self {
        Self {
            card_last4: last4(&a.card),
            consumer_id: a.consumer_id,
            name: a.name,
        }
    }
}

/// The last four characters of a card, `None` for no card.
pub(crate) fn last4(card: &str) -> Option<String> {
    let n = card.chars().count();
    (n > 0).then(|| card.chars().skip(n.saturating_sub(4)).collect())
}

/// The payment of an order: an authorization (held, then maybe reversed) or a decline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Payment {
    pub(crate) order_id: String,
    /// `None` for a decline.
    pub(crate) authorization_id: Option<String>,
    pub(crate) consumer_id: String,
    pub(crate) amount: Money,
    pub(crate) card_last4: Option<String>,
    /// [`state`]
    pub(crate) state: String,
    /// Why it was declined.
    pub(crate) reason: Option<String>,
    /// The payment network that approved it (`card-rule` for the card rule).
    pub(crate) network: Option<String>,
    /// The network's authorization id (`None` when nothing is held at a network).
    pub(crate) network_authorization_id: Option<String>,
}

/// A payment in the HTTP API.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PaymentView {
    order_id: String,
    authorization_id: Option<String>,
    consumer_id: String,
    state: String,
    amount: Money,
    card_last4: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// Shown when the authorization is held at a payment network.
    #[serde(skip_serializing_if = "Option::is_none")]
    network: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    network_authorization_id: Option<String>,
}

impl From<Payment> for PaymentView {
    fn from(p: Payment) -> Self {
        let held = p.network_authorization_id.is_some();
        Self {
            network: p.network.filter(|_| held),
            network_authorization_id: p.network_authorization_id,
            order_id: p.order_id,
            authorization_id: p.authorization_id,
            consumer_id: p.consumer_id,
            state: p.state,
            amount: p.amount,
            card_last4: p.card_last4,
            reason: p.reason,
        }
    }
}

/// The account of `consumer_id`.
pub(crate) async fn account<'e>(
    ex: impl Executor<'e, Database = Any>,
    consumer_id: &str,
) -> Result<Option<Account>, sqlx::Error> {
    Ok(sqlx::query_as::<_, (String, String, String)>(
        "SELECT consumer_id, name, card FROM accounts WHERE consumer_id = $1",
    )
    .bind(consumer_id)
    .fetch_optional(ex)
    .await?
    .map(|(consumer_id, name, card)| Account {
        consumer_id,
        name,
        card,
    }))
}

/// Opens an account unless the consumer has one (the first `ConsumerCreated` wins).
/// `true` when it was opened now.
pub(crate) async fn open_account<'e>(
    ex: impl Executor<'e, Database = Any>,
    a: &Account,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO accounts (consumer_id, name, card, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (consumer_id) DO NOTHING",
    )
    .bind(&a.consumer_id)
    .bind(&a.name)
    .bind(&a.card)
    .bind(now_ms())
    .execute(ex)
    .await?;
    Ok(done.rows_affected() == 1)
}

type Row = (
    String,
    Option<String>,
    String,
    i64,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// The payment of order `order_id`.
pub(crate) async fn payment<'e>(
    ex: impl Executor<'e, Database = Any>,
    order_id: &str,
) -> Result<Option<Payment>, sqlx::Error> {
    Ok(sqlx::query_as::<_, Row>(
        "SELECT order_id, authorization_id, consumer_id, amount, card_last4, state, reason, \
         network, network_authorization_id FROM authorizations WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(ex)
    .await?
    .map(|r| Payment {
        order_id: r.0,
        authorization_id: r.1,
        consumer_id: r.2,
        amount: Money(r.3),
        card_last4: r.4,
        state: r.5,
        reason: r.6,
        network: r.7,
        network_authorization_id: r.8,
    }))
}

/// Records `p` (an authorization or a decline) for its order, unless the order already has
/// an authorization: only a recorded decline is replaced. `true` when `p` was recorded.
pub(crate) async fn record<'e>(
    ex: impl Executor<'e, Database = Any>,
    p: &Payment,
) -> Result<bool, sqlx::Error> {
    let now = now_ms();
    let done = sqlx::query(
        "INSERT INTO authorizations (order_id, authorization_id, consumer_id, amount, card_last4, \
         state, reason, network, network_authorization_id, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $9, $10, $8, $8) \
         ON CONFLICT (order_id) DO UPDATE SET authorization_id = excluded.authorization_id, \
         consumer_id = excluded.consumer_id, amount = excluded.amount, \
         card_last4 = excluded.card_last4, state = excluded.state, reason = excluded.reason, \
         network = excluded.network, network_authorization_id = excluded.network_authorization_id, \
         updated_at = excluded.updated_at WHERE authorizations.state = 'DECLINED'",
    )
    .bind(&p.order_id)
    .bind(p.authorization_id.as_deref())
    .bind(&p.consumer_id)
    .bind(p.amount.0)
    .bind(p.card_last4.as_deref())
    .bind(&p.state)
    .bind(p.reason.as_deref())
    .bind(now)
    .bind(p.network.as_deref())
    .bind(p.network_authorization_id.as_deref())
    .execute(ex)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// `AUTHORIZED` → `REVERSED`. `false` when the order's payment was not authorized.
pub(crate) async fn reverse<'e>(
    ex: impl Executor<'e, Database = Any>,
    order_id: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE authorizations SET state = $1, updated_at = $2 WHERE order_id = $3 AND state = $4",
    )
    .bind(state::REVERSED)
    .bind(now_ms())
    .bind(order_id)
    .bind(state::AUTHORIZED)
    .execute(ex)
    .await?;
    Ok(done.rows_affected() == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_four() {
        assert_eq!(last4("4111111111111234").as_deref(), Some("1234"));
        assert_eq!(last4("12").as_deref(), Some("12"));
        assert_eq!(last4(""), None);
    }
}
