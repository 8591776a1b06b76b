//! The create-order and cancel-order sagas (PRODUCT.md, "Reference system").
//!
//! Create-order: `create order` (local; compensation: reject with the recorded reason and
//! publish `OrderRejected`) → `check menu items` (local; fails `MENU_ITEM_UNAVAILABLE` when
//! an item is unknown to the replica or short of stock) → `validate consumer` → `create
//! ticket` (compensation `CancelCreateTicket`) → `authorize card` (pivot) → `confirm ticket`
//! (retriable) → `approve order` (local, retriable: APPROVED and `OrderApproved`).
//!
//! Cancel-order: `begin cancel` (local; compensation: back to APPROVED and
//! `OrderCancellationFailed`) → `begin cancel
//! ticket` (compensation `UndoBeginCancelTicket`) → `reverse authorization` (pivot) →
//! `confirm cancel ticket` (retriable) → `cancel order` (local, retriable: CANCELLED and
//! `OrderCancelled`).
//!
//! Command steps before and at the pivot wait for their participant: an unanswered
//! command is resent (the same message, so it is applied once) every
//! [`STEP_TIMEOUT`] until it is answered, instead of failing the step. The participant may
//! still apply a command nobody waits for — an authorization above all — so the order
//! keeps its semantic lock (`*_PENDING`) until the outcome is known. Every *answer* ends
//! the order in a terminal state: a failure reply compensates the completed steps.
//!
//! Every state change increases the order's version, and its event carries the new
//! version ([`Versioned`]); `POST /orders` publishes `OrderCreated` (version 1) and
//! `POST /orders/{id}/cancel` `OrderCancellationStarted` in their own transactions.

use std::time::Duration;

use ftgo_contracts::{
    LineItem, Money, SCHEMA_VERSION,
    commands::{self, AuthorizeCard, Authorized, CreateTicket, OrderRef, TicketCreated},
    destinations,
    events::{self, OrderCancellation, OrderDetails, OrderRejected, Versioned},
    order_states, rejection,
};
use keel_messaging::{Message, Outbox};
use keel_saga::{Command, Reply, SagaDefinition, Step};
use keel_store::{Tx, sqlx};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::db;

/// How long a command step waits for its reply before resending the command.
pub(crate) const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// The create-order saga's name (`GET /sagas?type=create-order`).
pub const CREATE_ORDER: &str = "create-order";
/// The cancel-order saga's name (`GET /sagas?type=cancel-order`).
pub const CANCEL_ORDER: &str = "cancel-order";

/// The create-order saga's data (shown by `GET /sagas/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateOrderData {
    /// The order.
    pub order_id: String,
    /// Who ordered.
    pub consumer_id: String,
    /// From where.
    pub restaurant_id: String,
    /// What, priced from the replica.
    pub line_items: Vec<LineItem>,
    /// The total.
    pub order_total: Money,
    /// Menu items the replica does not know or has too little stock of.
    #[serde(default)]
    pub unavailable: Vec<String>,
    /// The kitchen's ticket, once created.
    #[serde(default)]
    pub ticket_id: Option<String>,
    /// The accounting authorization, once granted.
    #[serde(default)]
    pub authorization_id: Option<String>,
    /// Why the order was rejected (a `rejection` reason).
    #[serde(default)]
    pub rejection: Option<String>,
    /// The failure reply that rejected it, as the participant sent it.
    #[serde(default)]
    pub failure: Option<String>,
}

/// The cancel-order saga's data (shown by `GET /sagas/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CancelOrderData {
    /// The order.
    pub order_id: String,
    /// Who ordered.
    pub consumer_id: String,
    /// From where.
    pub restaurant_id: String,
    /// What.
    pub line_items: Vec<LineItem>,
    /// The total.
    pub order_total: Money,
    /// The failure reply that ended the cancellation (e.g. `TicketNotCancellable`): the
    /// order is APPROVED again.
    #[serde(default)]
    pub failure: Option<String>,
}

fn command<T: Serialize>(destination: &str, command_type: &str, payload: &T) -> Command {
    Command::new(
        destination,
        command_type,
        serde_json::to_value(payload).unwrap_or_else(|_| json!({})),
    )
}

fn order_ref(order_id: &str) -> OrderRef {
    OrderRef {
        order_id: order_id.to_owned(),
    }
}

fn db_err(e: sqlx::Error) -> String {
    format!("database: {e}")
}

pub(crate) async fn publish<T: Serialize>(
    tx: &mut Tx,
    outbox: &Outbox,
    event_type: &str,
    order_id: &str,
    event: &T,
) -> Result<(), String> {
    let m = Message::typed(
        destinations::ORDER_EVENTS,
        event_type,
        SCHEMA_VERSION,
        event,
    )
    .map_err(|e| e.to_string())?
    .with_key(order_id);
    outbox.send(tx, &m).await.map_err(|e| e.to_string())
}

/// The rejection reason for a failure reply of the consumer's validation.
fn consumer_rejection(reply_type: &str) -> &'static str {
    match reply_type {
        commands::ORDER_LIMIT_EXCEEDED => rejection::ORDER_LIMIT_EXCEEDED,
        // `UnknownConsumer`, or anything else the consumer service refuses with: it could
        // not vouch for this consumer.
        _ => rejection::UNKNOWN_CONSUMER,
    }
}

/// Which requested items the menu cannot serve (unknown, or stock below the quantity
/// asked for across all lines).
pub(crate) fn unavailable(
    items: &[LineItem],
    menu: &std::collections::BTreeMap<String, db::MenuItem>,
) -> Vec<String> {
    let mut wanted: std::collections::BTreeMap<&str, i64> = std::collections::BTreeMap::new();
    for i in items {
        *wanted.entry(&i.menu_item_id).or_default() += i64::from(i.quantity);
    }
    wanted
        .into_iter()
        .filter(|(id, qty)| match menu.get(*id) {
            None => true,
            Some(m) => m.stock.is_some_and(|s| s < *qty),
        })
        .map(|(id, _)| id.to_owned())
        .collect()
}

/// The create-order saga, publishing its events through `outbox`.
pub(crate) fn create_order(outbox: &Outbox) -> SagaDefinition<CreateOrderData> {
    let reject_outbox = outbox.clone();
    let approve_outbox = outbox.clone();
    SagaDefinition::new(CREATE_ORDER)
        .step(
            Step::local("create order", |tx, d: &mut CreateOrderData| {
                Box::pin(async move {
                    let order = db::get_order(tx.conn(), &d.order_id)
                        .await
                        .map_err(db_err)?;
                    match order {
                        Some(o) if o.state == order_states::APPROVAL_PENDING => {}
                        Some(o) => return Err(format!("order is {}", o.state)),
                        None => return Err("no such order".to_owned()),
                    }
                    let menu = db::menu(tx, &d.restaurant_id).await.map_err(db_err)?;
                    d.unavailable = unavailable(&d.line_items, &menu);
                    Ok(())
                })
            })
            .compensate_locally(move |tx, d: &mut CreateOrderData| {
                let outbox = reject_outbox.clone();
                Box::pin(async move {
                    // Every failure reply records its reason; otherwise the menu check
                    // failed (its data changes are rolled back with it, so the reason is
                    // derived here from what `create order` found).
                    let reason = d
                        .rejection
                        .clone()
                        .unwrap_or_else(|| rejection::MENU_ITEM_UNAVAILABLE.to_owned());
                    if !db::reject(tx, &d.order_id, &reason, d.ticket_id.as_deref())
                        .await
                        .map_err(db_err)?
                    {
                        return Err("order is no longer APPROVAL_PENDING".to_owned());
                    }
                    let event = Versioned {
                        event: OrderRejected {
                            order_id: d.order_id.clone(),
                            reason: reason.clone(),
                        },
                        version: db::version_of(tx, &d.order_id).await.map_err(db_err)?,
                    };
                    publish(tx, &outbox, events::ORDER_REJECTED, &d.order_id, &event).await?;
                    d.rejection = Some(reason);
                    Ok(())
                })
            }),
        )
        .step(Step::local(
            "check menu items",
            |_tx, d: &mut CreateOrderData| {
                Box::pin(async move {
                    if d.unavailable.is_empty() {
                        Ok(())
                    } else {
                        Err(format!(
                            "{}: {} unknown or out of stock",
                            rejection::MENU_ITEM_UNAVAILABLE,
                            d.unavailable.join(", ")
                        ))
                    }
                })
            },
        ))
        .step(
            Step::command("validate consumer", |d: &CreateOrderData| {
                command(
                    destinations::CONSUMER_COMMANDS,
                    commands::VALIDATE_ORDER_BY_CONSUMER,
                    &commands::ValidateOrderByConsumer {
                        consumer_id: d.consumer_id.clone(),
                        order_id: d.order_id.clone(),
                        order_total: d.order_total,
                    },
                )
            })
            .on_failure(|d, r: &Reply| {
                d.rejection = Some(consumer_rejection(&r.reply_type).to_owned());
                d.failure = Some(r.reply_type.clone());
            })
            .timeout(STEP_TIMEOUT)
            .attempts(u32::MAX),
        )
        .step(
            Step::command("create ticket", |d: &CreateOrderData| {
                command(
                    destinations::KITCHEN_COMMANDS,
                    commands::CREATE_TICKET,
                    &CreateTicket {
                        order_id: d.order_id.clone(),
                        restaurant_id: d.restaurant_id.clone(),
                        line_items: d.line_items.clone(),
                    },
                )
            })
            .on_reply(|d, r: &Reply| {
                d.ticket_id = serde_json::from_value::<TicketCreated>(r.payload.clone())
                    .ok()
                    .map(|t| t.ticket_id);
            })
            .on_failure(|d, r: &Reply| {
                // The kitchen cannot make it.
                d.rejection = Some(rejection::MENU_ITEM_UNAVAILABLE.to_owned());
                d.failure = Some(r.reply_type.clone());
            })
            .compensate_with(|d: &CreateOrderData| {
                command(
                    destinations::KITCHEN_COMMANDS,
                    commands::CANCEL_CREATE_TICKET,
                    &order_ref(&d.order_id),
                )
            })
            .timeout(STEP_TIMEOUT)
            .attempts(u32::MAX),
        )
        .step(
            Step::command("authorize card", |d: &CreateOrderData| {
                command(
                    destinations::ACCOUNTING_COMMANDS,
                    commands::AUTHORIZE_CARD,
                    &AuthorizeCard {
                        consumer_id: d.consumer_id.clone(),
                        order_id: d.order_id.clone(),
                        order_total: d.order_total,
                    },
                )
            })
            .on_reply(|d, r: &Reply| {
                d.authorization_id = serde_json::from_value::<Authorized>(r.payload.clone())
                    .ok()
                    .map(|a| a.authorization_id);
            })
            .on_failure(|d, r: &Reply| {
                // `PaymentDeclined`, or any other refusal: the payment was not authorized.
                d.rejection = Some(rejection::PAYMENT_DECLINED.to_owned());
                d.failure = Some(r.reply_type.clone());
            })
            .pivot()
            .timeout(STEP_TIMEOUT)
            .attempts(u32::MAX),
        )
        .step(
            Step::command("confirm ticket", |d: &CreateOrderData| {
                command(
                    destinations::KITCHEN_COMMANDS,
                    commands::CONFIRM_CREATE_TICKET,
                    &order_ref(&d.order_id),
                )
            })
            .retriable()
            .timeout(STEP_TIMEOUT),
        )
        .step(
            Step::local("approve order", move |tx, d: &mut CreateOrderData| {
                let outbox = approve_outbox.clone();
                Box::pin(async move {
                    if !db::approve(
                        tx,
                        &d.order_id,
                        d.ticket_id.as_deref(),
                        d.authorization_id.as_deref(),
                    )
                    .await
                    .map_err(db_err)?
                    {
                        return Err("order is no longer APPROVAL_PENDING".to_owned());
                    }
                    let event = Versioned {
                        event: OrderDetails {
                            order_id: d.order_id.clone(),
                            consumer_id: d.consumer_id.clone(),
                            restaurant_id: d.restaurant_id.clone(),
                            line_items: d.line_items.clone(),
                            order_total: d.order_total,
                        },
                        version: db::version_of(tx, &d.order_id).await.map_err(db_err)?,
                    };
                    publish(tx, &outbox, events::ORDER_APPROVED, &d.order_id, &event).await
                })
            })
            .retriable(),
        )
}

/// The cancel-order saga, publishing its events through `outbox`. The HTTP handler moves
/// the order to CANCEL_PENDING in the transaction that starts it.
pub(crate) fn cancel_order(outbox: &Outbox) -> SagaDefinition<CancelOrderData> {
    let cancel_outbox = outbox.clone();
    let restore_outbox = outbox.clone();
    SagaDefinition::new(CANCEL_ORDER)
        .step(
            Step::local("begin cancel", |tx, d: &mut CancelOrderData| {
                Box::pin(async move {
                    match db::get_order(tx.conn(), &d.order_id)
                        .await
                        .map_err(db_err)?
                    {
                        Some(o) if o.state == order_states::CANCEL_PENDING => Ok(()),
                        Some(o) => Err(format!("order is {}", o.state)),
                        None => Err("no such order".to_owned()),
                    }
                })
            })
            .compensate_locally(move |tx, d: &mut CancelOrderData| {
                let outbox = restore_outbox.clone();
                Box::pin(async move {
                    if !db::transition(
                        tx,
                        &d.order_id,
                        order_states::CANCEL_PENDING,
                        order_states::APPROVED,
                    )
                    .await
                    .map_err(db_err)?
                    {
                        return Err("order is no longer CANCEL_PENDING".to_owned());
                    }
                    let event = OrderCancellation {
                        order_id: d.order_id.clone(),
                        reason: d.failure.clone(),
                        version: db::version_of(tx, &d.order_id).await.map_err(db_err)?,
                    };
                    publish(
                        tx,
                        &outbox,
                        events::ORDER_CANCELLATION_FAILED,
                        &d.order_id,
                        &event,
                    )
                    .await
                })
            }),
        )
        .step(
            Step::command("begin cancel ticket", |d: &CancelOrderData| {
                command(
                    destinations::KITCHEN_COMMANDS,
                    commands::BEGIN_CANCEL_TICKET,
                    &order_ref(&d.order_id),
                )
            })
            .on_failure(|d, r: &Reply| d.failure = Some(r.reply_type.clone()))
            .compensate_with(|d: &CancelOrderData| {
                command(
                    destinations::KITCHEN_COMMANDS,
                    commands::UNDO_BEGIN_CANCEL_TICKET,
                    &order_ref(&d.order_id),
                )
            })
            .timeout(STEP_TIMEOUT)
            .attempts(u32::MAX),
        )
        .step(
            Step::command("reverse authorization", |d: &CancelOrderData| {
                command(
                    destinations::ACCOUNTING_COMMANDS,
                    commands::REVERSE_AUTHORIZATION,
                    &order_ref(&d.order_id),
                )
            })
            .on_failure(|d, r: &Reply| d.failure = Some(r.reply_type.clone()))
            .pivot()
            .timeout(STEP_TIMEOUT)
            .attempts(u32::MAX),
        )
        .step(
            Step::command("confirm cancel ticket", |d: &CancelOrderData| {
                command(
                    destinations::KITCHEN_COMMANDS,
                    commands::CONFIRM_CANCEL_TICKET,
                    &order_ref(&d.order_id),
                )
            })
            .retriable()
            .timeout(STEP_TIMEOUT),
        )
        .step(
            Step::local("cancel order", move |tx, d: &mut CancelOrderData| {
                let outbox = cancel_outbox.clone();
                Box::pin(async move {
                    if !db::transition(
                        tx,
                        &d.order_id,
                        order_states::CANCEL_PENDING,
                        order_states::CANCELLED,
                    )
                    .await
                    .map_err(db_err)?
                    {
                        return Err("order is no longer CANCEL_PENDING".to_owned());
                    }
                    let event = Versioned {
                        event: OrderDetails {
                            order_id: d.order_id.clone(),
                            consumer_id: d.consumer_id.clone(),
                            restaurant_id: d.restaurant_id.clone(),
                            line_items: d.line_items.clone(),
                            order_total: d.order_total,
                        },
                        version: db::version_of(tx, &d.order_id).await.map_err(db_err)?,
                    };
                    publish(tx, &outbox, events::ORDER_CANCELLED, &d.order_id, &event).await
                })
            })
            .retriable(),
        )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn item(id: &str, qty: u32) -> LineItem {
        LineItem {
            menu_item_id: id.to_owned(),
            name: String::new(),
            quantity: qty,
            price: Money(100),
        }
    }

    #[test]
    fn unavailable_items_are_unknown_or_short_of_stock_across_lines() {
        let mut menu = BTreeMap::new();
        let m = |stock| db::MenuItem {
            name: "x".to_owned(),
            price: Money(100),
            stock,
        };
        menu.insert("plenty".to_owned(), m(None));
        menu.insert("three".to_owned(), m(Some(3)));
        menu.insert("none".to_owned(), m(Some(0)));
        assert!(unavailable(&[item("plenty", 1000), item("three", 3)], &menu).is_empty());
        assert_eq!(
            unavailable(&[item("three", 2), item("three", 2)], &menu),
            vec!["three"]
        );
        assert_eq!(
            unavailable(&[item("none", 1), item("ghost", 1)], &menu),
            vec!["ghost", "none"]
        );
    }

    #[test]
    fn consumer_failures_map_to_reasons() {
        assert_eq!(
            consumer_rejection(commands::UNKNOWN_CONSUMER),
            rejection::UNKNOWN_CONSUMER
        );
        assert_eq!(
            consumer_rejection(commands::ORDER_LIMIT_EXCEEDED),
            rejection::ORDER_LIMIT_EXCEEDED
        );
    }

    #[test]
    fn both_definitions_are_valid() {
        // Building an outbox needs a store; the structure check does not.
        fn check<D: keel_saga::SagaData>(d: SagaDefinition<D>) {
            d.validate().unwrap();
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let dir = keel_store::testing::TempDir::new("order-saga-defs");
            let store = keel_store::Store::connect(&dir.sqlite_url("order.db"))
                .await
                .unwrap();
            let outbox = Outbox::new(store).await.unwrap();
            check(create_order(&outbox));
            check(cancel_order(&outbox));
        });
    }
}
