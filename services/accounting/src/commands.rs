//! Accounting as a saga participant on `accounting.commands`: each command runs through the
//! inbox (a redelivered command is answered with its stored reply, never applied twice) and
//! its reply goes through the outbox in the same transaction.
//!
//! | Command | Effect | Failure replies |
//! |---|---|---|
//! | `AuthorizeCard` | an `AUTHORIZED` authorization; replies `{"authorizationId"}` — the existing one when the order has one (an order is never authorized twice) | `PaymentDeclined` `{"orderId","reason"}`, `InvalidCommand` |
//! | `ReverseAuthorization` | `AUTHORIZED` → `REVERSED`; missing, reversed or declined: success | `InvalidCommand` |
//!
//! A decline is recorded too (`GET /payments/{orderId}` shows it), but not in the command's
//! transaction — the saga helper rolls back whatever a refused command wrote — so it is
//! written right after that transaction commits.
//!
//! A consumer's account is opened from `ConsumerCreated`, which may still be on its way
//! when the consumer's first order is paid for: an `AuthorizeCard` for a consumer without
//! an account is retried (redelivered by the bus) until `account_wait_ms` after the command
//! was sent, and only then declined with `NO_ACCOUNT`.

use std::sync::Arc;

use ftgo_contracts::commands::{
    AUTHORIZE_CARD, AuthorizeCard, Authorized, OrderRef, PAYMENT_DECLINED, REVERSE_AUTHORIZATION,
};
use keel_messaging::{Handler, Inbox, Message, Outbox, headers};
use keel_saga::{CommandError, command_handler};
use keel_store::{Store, Tx, now_ms};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};

use crate::{
    authorizer::{AuthorizationRequest, Authorizer, Decision, NO_ACCOUNT, ReversalRequest},
    ledger::{self, Payment, state},
};

/// Failure: the command's payload does not fit its type.
pub(crate) const INVALID_COMMAND: &str = "InvalidCommand";
/// Failure: the command's type is not one accounting handles.
pub(crate) const UNKNOWN_COMMAND: &str = "UnknownCommand";

/// What the command handler works with.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) store: Store,
    pub(crate) authorizer: Arc<dyn Authorizer>,
    pub(crate) account_wait_ms: i64,
}

/// The bus handler for `accounting.commands`.
pub(crate) fn handler(inbox: Inbox, outbox: Outbox, ctx: Arc<Ctx>) -> Arc<dyn Handler> {
    command_handler(inbox, outbox, move |tx, cmd| {
        let ctx = ctx.clone();
        Box::pin(async move { handle(&ctx, tx, cmd).await })
    })
}

async fn handle(ctx: &Ctx, tx: &mut Tx, cmd: &Message) -> Result<Value, CommandError> {
    let kind = cmd.message_type().unwrap_or_default();
    let outcome = match kind {
        AUTHORIZE_CARD => authorize(ctx, tx, cmd, payload(cmd)?).await,
        REVERSE_AUTHORIZATION => reverse(ctx, tx, &payload::<OrderRef>(cmd)?.order_id).await,
        _ => Err(CommandError::failure(
            UNKNOWN_COMMAND,
            json!({ "type": kind, "reason": format!("accounting does not handle {kind:?}") }),
        )),
    };
    match &outcome {
        Ok(_) => tracing::debug!(command = kind, message_id = %cmd.id, "command applied"),
        Err(CommandError::Failure { reply_type, .. }) => {
            tracing::info!(command = kind, message_id = %cmd.id, failure = %reply_type, "command refused");
        }
        Err(CommandError::Retry(e)) => {
            tracing::info!(command = kind, message_id = %cmd.id, error = %e, "command will be retried");
        }
    }
    outcome
}

fn payload<T: DeserializeOwned>(cmd: &Message) -> Result<T, CommandError> {
    cmd.payload_as()
        .map_err(|e| invalid(cmd.message_type(), e.to_string()))
}

fn invalid(kind: Option<&str>, reason: impl Into<String>) -> CommandError {
    CommandError::failure(
        INVALID_COMMAND,
        json!({ "type": kind, "reason": reason.into() }),
    )
}

fn retry(e: impl std::fmt::Display) -> CommandError {
    CommandError::Retry(format!("accounting: {e}"))
}

fn ok(body: impl Serialize) -> Result<Value, CommandError> {
    serde_json::to_value(body).map_err(retry)
}

async fn authorize(
    ctx: &Ctx,
    tx: &mut Tx,
    cmd: &Message,
    c: AuthorizeCard,
) -> Result<Value, CommandError> {
    if c.order_id.trim().is_empty() || c.consumer_id.trim().is_empty() {
        return Err(invalid(
            Some(AUTHORIZE_CARD),
            "orderId and consumerId must not be empty",
        ));
    }
    if let Some(p) = ledger::payment(tx.conn(), &c.order_id)
        .await
        .map_err(retry)?
        && let Some(id) = p.authorization_id.filter(|_| p.state != state::DECLINED)
    {
        // Authorized before (and maybe reversed since): never authorize an order twice.
        return ok(Authorized {
            authorization_id: id,
        });
    }
    let mut payment = Payment {
        order_id: c.order_id.clone(),
        authorization_id: None,
        consumer_id: c.consumer_id.clone(),
        amount: c.order_total,
        card_last4: None,
        state: state::DECLINED.to_owned(),
        reason: None,
    };
    let Some(account) = ledger::account(tx.conn(), &c.consumer_id)
        .await
        .map_err(retry)?
    else {
        let sent = cmd
            .header(headers::CREATED_AT)
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0);
        if now_ms() < sent.saturating_add(ctx.account_wait_ms) {
            return Err(CommandError::Retry(format!(
                "no account for consumer {} yet; waiting for its ConsumerCreated",
                c.consumer_id
            )));
        }
        payment.reason = Some(NO_ACCOUNT.to_owned());
        return Err(decline(ctx, tx, payment));
    };
    payment.card_last4 = ledger::last4(&account.card);
    let request = AuthorizationRequest {
        order_id: c.order_id.clone(),
        consumer_id: c.consumer_id.clone(),
        amount: c.order_total,
        card: account.card,
    };
    match ctx.authorizer.authorize(&request).await.map_err(retry)? {
        Decision::Approved => {
            let id = keel_messaging::new_id();
            payment.authorization_id = Some(id.clone());
            payment.state = state::AUTHORIZED.to_owned();
            if !ledger::record(tx.conn(), &payment).await.map_err(retry)? {
                // Authorized concurrently: roll back; the redelivery answers with that one.
                return Err(retry(format!(
                    "order {} was authorized concurrently",
                    c.order_id
                )));
            }
            tracing::info!(order_id = %c.order_id, authorization_id = %id, amount = %c.order_total, "card authorized");
            ok(Authorized {
                authorization_id: id,
            })
        }
        Decision::Declined { reason } => {
            payment.reason = Some(reason);
            Err(decline(ctx, tx, payment))
        }
    }
}

/// The `PaymentDeclined` failure for `p`, recording the decline once the command's
/// transaction has committed (the saga helper rolls back what a refused command wrote).
fn decline(ctx: &Ctx, tx: &mut Tx, p: Payment) -> CommandError {
    let reason = p.reason.clone().unwrap_or_default();
    tracing::info!(order_id = %p.order_id, consumer_id = %p.consumer_id, %reason, "payment declined");
    let failure = CommandError::failure(
        PAYMENT_DECLINED,
        json!({ "orderId": p.order_id, "reason": reason }),
    );
    let store = ctx.store.clone();
    tx.after_commit(move || {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(record_decline(store, p));
        }
    });
    failure
}

async fn record_decline(store: Store, p: Payment) {
    let mut delay = std::time::Duration::from_millis(50);
    for _ in 0..8 {
        let attempt = async {
            let mut tx = store.begin().await?;
            ledger::record(tx.conn(), &p).await?;
            tx.commit().await
        };
        match attempt.await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(order_id = %p.order_id, error = %e, "cannot record the decline yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(2));
            }
        }
    }
    tracing::error!(order_id = %p.order_id, "the decline was replied but could not be recorded");
}

async fn reverse(ctx: &Ctx, tx: &mut Tx, order_id: &str) -> Result<Value, CommandError> {
    let Some(p) = ledger::payment(tx.conn(), order_id).await.map_err(retry)? else {
        // Nothing to reverse (never authorized): success.
        return ok(json!({}));
    };
    if p.state == state::AUTHORIZED {
        let request = ReversalRequest {
            authorization_id: p.authorization_id.clone().unwrap_or_default(),
            order_id: p.order_id.clone(),
            amount: p.amount,
        };
        ctx.authorizer.reverse(&request).await.map_err(retry)?;
        if !ledger::reverse(tx.conn(), order_id).await.map_err(retry)? {
            return Err(retry(format!(
                "the payment of order {order_id} changed concurrently"
            )));
        }
        tracing::info!(%order_id, authorization_id = %request.authorization_id, "authorization reversed");
    }
    ok(json!({}))
}
