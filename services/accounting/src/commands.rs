//! Accounting as a saga participant on `accounting.commands`: each command runs through the
//! inbox (a redelivered command is answered with its stored reply, never applied twice) and
//! its reply goes through the outbox in the same transaction.
//!
//! | Command | Effect | Failure replies |
//! |---|---|---|
//! | `AuthorizeCard` | an `AUTHORIZED` authorization; replies `{"authorizationId"}` — the existing one when the order has one (an order is never authorized twice) | `PaymentDeclined` `{"orderId","reason"}`, `InvalidCommand` |
//! | `ReverseAuthorization` | `AUTHORIZED` → `REVERSED`; missing, reversed or declined: success | `InvalidCommand` |
//!
//! The payment decision is made *before* the command's transaction begins ([`handler`]
//! wraps the saga helper): the authorizer may call payment networks and journal its attempts
//! in accounting's database without holding that transaction open. The transaction then
//! records the decision. A decision that is not at hand when the transaction needs it (the
//! account appeared in between) makes the command retry.
//!
//! Payment events go to `accounting.events` through the outbox (partition key: the order
//! id): `PaymentAuthorized` and `PaymentReversed` in the command's transaction,
//! `PaymentDeclined` with the decline's record.
//!
//! A decline is recorded too (`GET /payments/{orderId}` shows it), but not in the command's
//! transaction — the saga helper rolls back whatever a refused command wrote — so it is
//! written right after that transaction commits.
//!
//! A consumer's account is opened from `ConsumerCreated`, which may still be on its way
//! when the consumer's first order is paid for: an `AuthorizeCard` for a consumer without
//! an account is retried (redelivered by the bus) until `account_wait_ms` after the command
//! was sent, and only then declined with `NO_ACCOUNT`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use ftgo_contracts::{
    commands::{
        AUTHORIZE_CARD, AuthorizeCard, Authorized, OrderRef, PAYMENT_DECLINED,
        REVERSE_AUTHORIZATION,
    },
    payment_events,
};
use futures::future::BoxFuture;
use keel_messaging::{Delivery, Handler, HandlerError, Inbox, Message, Outbox, headers};
use keel_saga::{CommandError, command_handler};
use keel_store::{Store, Tx, now_ms};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};

use crate::{
    authorizer::{
        Approval, AuthorizationRequest, Authorizer, CARD_RULE_NETWORK, Decision, NO_ACCOUNT,
        ReversalRequest,
    },
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
    pub(crate) outbox: Outbox,
    pub(crate) authorizer: Arc<dyn Authorizer>,
    pub(crate) account_wait_ms: i64,
    /// Decisions made before their command's transaction, by command message id.
    pub(crate) decided: Mutex<HashMap<String, Decision>>,
}

impl Ctx {
    fn decided(&self) -> std::sync::MutexGuard<'_, HashMap<String, Decision>> {
        self.decided.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The bus handler for `accounting.commands`: decides payments, then runs the command
/// through the saga helper (inbox, transaction, reply through the outbox).
pub(crate) fn handler(inbox: Inbox, ctx: Arc<Ctx>) -> Arc<dyn Handler> {
    let inner = {
        let ctx = ctx.clone();
        command_handler(inbox, ctx.outbox.clone(), move |tx, cmd| {
            let ctx = ctx.clone();
            Box::pin(async move { handle(&ctx, tx, cmd).await })
        })
    };
    Arc::new(DecideFirst { inner, ctx })
}

/// Makes the payment decision of an `AuthorizeCard` outside the command's transaction.
struct DecideFirst {
    inner: Arc<dyn Handler>,
    ctx: Arc<Ctx>,
}

impl Handler for DecideFirst {
    fn handle(&self, delivery: Delivery) -> BoxFuture<'_, Result<(), HandlerError>> {
        Box::pin(async move {
            let id = delivery.message.id.clone();
            if let Some(request) = self.needs_decision(&delivery.message).await? {
                let decision = self
                    .ctx
                    .authorizer
                    .authorize(&request)
                    .await
                    .map_err(|e| HandlerError::Retry(format!("accounting: {e}")))?;
                self.ctx.decided().insert(id.clone(), decision);
            }
            let outcome = self.inner.handle(delivery).await;
            self.ctx.decided().remove(&id);
            outcome
        })
    }
}

impl DecideFirst {
    /// The request to decide, when `cmd` is an `AuthorizeCard` that will need a decision:
    /// well-formed, for an order not authorized yet, of a consumer with an account.
    async fn needs_decision(
        &self,
        cmd: &Message,
    ) -> Result<Option<AuthorizationRequest>, HandlerError> {
        if cmd.message_type() != Some(AUTHORIZE_CARD) {
            return Ok(None);
        }
        let Ok(c) = cmd.payload_as::<AuthorizeCard>() else {
            return Ok(None);
        };
        if c.order_id.trim().is_empty() || c.consumer_id.trim().is_empty() {
            return Ok(None);
        }
        let pool = self.ctx.store.pool();
        if ledger::payment(pool, &c.order_id)
            .await
            .map_err(HandlerError::retry)?
            .is_some_and(|p| p.authorization_id.is_some() && p.state != state::DECLINED)
        {
            return Ok(None);
        }
        let Some(account) = ledger::account(pool, &c.consumer_id)
            .await
            .map_err(HandlerError::retry)?
        else {
            return Ok(None);
        };
        Ok(Some(AuthorizationRequest {
            order_id: c.order_id,
            consumer_id: c.consumer_id,
            amount: c.order_total,
            card: account.card,
        }))
    }
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
        network: None,
        network_authorization_id: None,
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
    let Some(decision) = ctx.decided().remove(&cmd.id) else {
        // The account appeared after the decision step looked: decide on redelivery.
        return Err(retry(format!(
            "no payment decision for order {} yet",
            c.order_id
        )));
    };
    match decision {
        Decision::Approved(approval) => {
            let id = keel_messaging::new_id();
            payment.authorization_id = Some(id.clone());
            payment.state = state::AUTHORIZED.to_owned();
            payment.network = Some(approval.network.clone());
            payment.network_authorization_id = approval.reference.clone();
            if !ledger::record(tx.conn(), &payment).await.map_err(retry)? {
                // Authorized concurrently: roll back; the redelivery answers with that one.
                return Err(retry(format!(
                    "order {} was authorized concurrently",
                    c.order_id
                )));
            }
            let event = payment_events::PaymentAuthorized {
                order_id: c.order_id.clone(),
                consumer_id: c.consumer_id.clone(),
                authorization_id: id.clone(),
                amount: c.order_total,
                network: approval.network.clone(),
            };
            publish(
                ctx,
                tx,
                payment_events::PAYMENT_AUTHORIZED,
                &c.order_id,
                &event,
            )
            .await?;
            tracing::info!(order_id = %c.order_id, authorization_id = %id, amount = %c.order_total, network = %approval.network, "card authorized");
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
    let outbox = ctx.outbox.clone();
    tx.after_commit(move || {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(record_decline(store, outbox, p));
        }
    });
    failure
}

/// An event of `kind` about `order_id` on `accounting.events`, sent through the outbox in
/// `tx`.
async fn publish(
    ctx: &Ctx,
    tx: &mut Tx,
    kind: &str,
    order_id: &str,
    event: &impl Serialize,
) -> Result<(), CommandError> {
    let message = event_message(kind, order_id, event).map_err(retry)?;
    ctx.outbox.send(tx, &message).await.map_err(retry)
}

fn event_message(
    kind: &str,
    order_id: &str,
    event: &impl Serialize,
) -> Result<Message, serde_json::Error> {
    Ok(Message::typed(
        ftgo_contracts::destinations::ACCOUNTING_EVENTS,
        kind,
        ftgo_contracts::SCHEMA_VERSION,
        event,
    )?
    .with_key(order_id.to_owned()))
}

async fn record_decline(store: Store, outbox: Outbox, p: Payment) {
    let mut delay = std::time::Duration::from_millis(50);
    let event = payment_events::PaymentDeclined {
        order_id: p.order_id.clone(),
        consumer_id: p.consumer_id.clone(),
        reason: p.reason.clone().unwrap_or_default(),
    };
    let Ok(message) = event_message(payment_events::PAYMENT_DECLINED, &p.order_id, &event) else {
        return;
    };
    for _ in 0..8 {
        let attempt = async {
            let mut tx = store.begin().await?;
            if ledger::record(tx.conn(), &p).await? {
                outbox.send(&mut tx, &message).await?;
            }
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
            approval: Approval {
                network: p
                    .network
                    .clone()
                    .unwrap_or_else(|| CARD_RULE_NETWORK.to_owned()),
                reference: p.network_authorization_id.clone(),
            },
        };
        ctx.authorizer.reverse(&request).await.map_err(retry)?;
        if !ledger::reverse(tx.conn(), order_id).await.map_err(retry)? {
            return Err(retry(format!(
                "the payment of order {order_id} changed concurrently"
            )));
        }
        let event = payment_events::PaymentReversed {
            order_id: order_id.to_owned(),
            authorization_id: request.authorization_id.clone(),
            amount: p.amount,
        };
        publish(ctx, tx, payment_events::PAYMENT_REVERSED, order_id, &event).await?;
        tracing::info!(%order_id, authorization_id = %request.authorization_id, network = %request.approval.network, "authorization reversed");
    }
    ok(json!({}))
}
