//! Reference system (food delivery, modeled on FTGO): the wire contracts between its
//! services — bus destinations, saga commands and their replies, domain events, and money.
//!
//! These are versioned API types: changing a name or a field is an API change. Domain
//! types live in each service; only these cross a service boundary. JSON field names are
//! camelCase, as in the public HTTP API. Every event carries its type in the message's
//! `type` header and its schema version in `schema-version` (see [`SCHEMA_VERSION`]).

use serde::{Deserialize, Serialize};

pub mod money;

pub use money::Money;

/// Schema version of every command, reply and event below.
pub const SCHEMA_VERSION: u32 = 1;

/// Bus destinations.
pub mod destinations {
    /// Commands to the consumer service.
    pub const CONSUMER_COMMANDS: &str = "consumer.commands";
    /// Commands to the kitchen service.
    pub const KITCHEN_COMMANDS: &str = "kitchen.commands";
    /// Commands to the accounting service.
    pub const ACCOUNTING_COMMANDS: &str = "accounting.commands";
    /// Events of the consumer service.
    pub const CONSUMER_EVENTS: &str = "consumer.events";
    /// Events of the restaurant service.
    pub const RESTAURANT_EVENTS: &str = "restaurant.events";
    /// Events of the order service.
    pub const ORDER_EVENTS: &str = "order.events";
    /// Events of the kitchen service.
    pub const KITCHEN_EVENTS: &str = "kitchen.events";
    /// Events of the accounting service.
    pub const ACCOUNTING_EVENTS: &str = "accounting.events";
    /// Events of the delivery service.
    pub const DELIVERY_EVENTS: &str = "delivery.events";
}

/// Service names (registry ids, consumer groups, `lb://` names).
pub mod services {
    /// consumer
    pub const CONSUMER: &str = "consumer";
    /// restaurant
    pub const RESTAURANT: &str = "restaurant";
    /// order
    pub const ORDER: &str = "order";
    /// kitchen
    pub const KITCHEN: &str = "kitchen";
    /// accounting
    pub const ACCOUNTING: &str = "accounting";
    /// delivery
    pub const DELIVERY: &str = "delivery";
    /// order history (the CQRS view)
    pub const ORDER_HISTORY: &str = "order-history";
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LineItem {
    /// The restaurant's menu item id.
    pub menu_item_id: String,
    /// The item's name (copied from the menu when the order was created).
    pub name: String,
    /// How many (≥ 1).
    pub quantity: u32,
    /// Unit price at order time.
    pub price: Money,
}

/// Saga commands (message `type` header = the constant; payload = the struct) and their
/// failure reply types. A success reply's payload is given per command.
pub mod commands {
    use super::*;

    /// consumer: may this consumer place this order? Success payload: `{}`.
    pub const VALIDATE_ORDER_BY_CONSUMER: &str = "ValidateOrderByConsumer";
    /// Payload of [`VALIDATE_ORDER_BY_CONSUMER`].
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct ValidateOrderByConsumer {
        /// The consumer.
        pub consumer_id: String,
        /// The order.
        pub order_id: String,
        /// Its total.
        pub order_total: Money,
    }
    /// Failure: no such consumer.
    pub const UNKNOWN_CONSUMER: &str = "UnknownConsumer";
    /// Failure: the total is above the consumer's order limit.
    pub const ORDER_LIMIT_EXCEEDED: &str = "OrderLimitExceeded";

    /// kitchen: create a ticket in `CREATE_PENDING`. Success payload: [`TicketCreated`].
    pub const CREATE_TICKET: &str = "CreateTicket";
    /// Payload of [`CREATE_TICKET`].
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct CreateTicket {
        /// The order (a ticket per order; the ticket id is chosen by the kitchen).
        pub order_id: String,
        /// The restaurant.
        pub restaurant_id: String,
        /// What to cook.
        pub line_items: Vec<LineItem>,
    }
    /// Success payload of [`CREATE_TICKET`].
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct TicketCreated {
        /// The new ticket.
        pub ticket_id: String,
    }
    /// kitchen: `CREATE_PENDING` → `AWAITING_ACCEPTANCE`. Payload: [`OrderRef`].
    pub const CONFIRM_CREATE_TICKET: &str = "ConfirmCreateTicket";
    /// kitchen (compensation): `CREATE_PENDING` → `CANCELLED`. Payload: [`OrderRef`]. A
    /// missing ticket is success (nothing to undo).
    pub const CANCEL_CREATE_TICKET: &str = "CancelCreateTicket";
    /// kitchen: `AWAITING_ACCEPTANCE`/`ACCEPTED` → `CANCEL_PENDING`. Payload: [`OrderRef`].
    pub const BEGIN_CANCEL_TICKET: &str = "BeginCancelTicket";
    /// Failure of [`BEGIN_CANCEL_TICKET`]: the ticket can no longer be cancelled.
    pub const TICKET_NOT_CANCELLABLE: &str = "TicketNotCancellable";
    /// kitchen (compensation): `CANCEL_PENDING` → the state before. Payload: [`OrderRef`].
    pub const UNDO_BEGIN_CANCEL_TICKET: &str = "UndoBeginCancelTicket";
    /// kitchen: `CANCEL_PENDING` → `CANCELLED`. Payload: [`OrderRef`].
    pub const CONFIRM_CANCEL_TICKET: &str = "ConfirmCancelTicket";

    /// accounting: authorize the order total on the consumer's card (the pivot of
    /// create-order). Success payload: [`Authorized`].
    pub const AUTHORIZE_CARD: &str = "AuthorizeCard";
    /// Payload of [`AUTHORIZE_CARD`].
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct AuthorizeCard {
        /// Whose card.
        pub consumer_id: String,
        /// The order.
        pub order_id: String,
        /// How much.
        pub order_total: Money,
    }
    /// Success payload of [`AUTHORIZE_CARD`].
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Authorized {
        /// The authorization.
        pub authorization_id: String,
    }
    /// Failure of [`AUTHORIZE_CARD`]: the card was declined (or the consumer has no
    /// account).
    pub const PAYMENT_DECLINED: &str = "PaymentDeclined";
    /// accounting: reverse the order's authorization (cancel-order). Payload: [`OrderRef`].
    /// A missing or already reversed authorization is success.
    pub const REVERSE_AUTHORIZATION: &str = "ReverseAuthorization";

    /// The payload of commands that only name the order.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct OrderRef {
        /// The order.
        pub order_id: String,
    }
}

/// Domain events (message `type` header = the constant; payload = the struct; partition key
/// = the aggregate id).
pub mod events {
    use super::*;

    /// consumer.events: a consumer was registered.
    pub const CONSUMER_CREATED: &str = "ConsumerCreated";
    /// Payload of [`CONSUMER_CREATED`].
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct ConsumerCreated {
        /// The consumer.
        pub consumer_id: String,
        /// Their name.
        pub name: String,
        /// The card to charge (digits only). Accounting opens an account with it.
        pub card: String,
    }

    /// restaurant.events: a restaurant and its menu were created.
    pub const RESTAURANT_CREATED: &str = "RestaurantCreated";
    /// Payload of [`RESTAURANT_CREATED`].
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct RestaurantCreated {
        /// The restaurant.
        pub restaurant_id: String,
        /// Its name.
        pub name: String,
        /// Its menu.
        pub menu: Vec<MenuItem>,
    }
    /// A menu item in events.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct MenuItem {
        /// Id, unique within the restaurant.
        pub id: String,
        /// Name.
        pub name: String,
        /// Unit price.
        pub price: Money,
        /// Units left; `None`: unlimited.
        pub stock: Option<u32>,
    }
    /// restaurant.events: stock of menu items changed (after an approved or cancelled
    /// order). Carries the new absolute values, so replicas converge whatever the order.
    pub const MENU_STOCK_CHANGED: &str = "MenuStockChanged";
    /// Payload of [`MENU_STOCK_CHANGED`].
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct MenuStockChanged {
        /// The restaurant.
        pub restaurant_id: String,
        /// Item id → units left now.
        pub stock: Vec<MenuStock>,
        /// The restaurant's stock version after the change (increases by one per change).
        pub version: u64,
    }

    /// One item's stock in [`MenuStockChanged`].
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct MenuStock {
        /// The menu item.
        pub menu_item_id: String,
        /// Units left now.
        pub stock: u32,
    }

    /// order.events: the create-order saga approved the order. Payload: [`OrderDetails`]
    /// (the order service sends it as [`Versioned`]`<OrderDetails>`).
    pub const ORDER_APPROVED: &str = "OrderApproved";
    /// order.events: the cancel-order saga cancelled an approved order. Payload:
    /// [`OrderDetails`] (sent as [`Versioned`]`<OrderDetails>`).
    pub const ORDER_CANCELLED: &str = "OrderCancelled";
    /// Payload of [`ORDER_APPROVED`] and [`ORDER_CANCELLED`].
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct OrderDetails {
        /// The order.
        pub order_id: String,
        /// Who ordered.
        pub consumer_id: String,
        /// From where.
        pub restaurant_id: String,
        /// What.
        pub line_items: Vec<LineItem>,
        /// Total.
        pub order_total: Money,
    }
    /// order.events: an order was placed (`APPROVAL_PENDING`, version 1), published in the
    /// transaction that creates it.
    pub const ORDER_CREATED: &str = "OrderCreated";
    /// Payload of [`ORDER_CREATED`].
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct OrderCreated {
        /// The order.
        pub order_id: String,
        /// Who ordered.
        pub consumer_id: String,
        /// From where.
        pub restaurant_id: String,
        /// What, priced from the order service's menu replica.
        pub line_items: Vec<LineItem>,
        /// Total.
        pub order_total: Money,
        /// Where to deliver, when the order says.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub delivery_address: Option<String>,
        /// When to deliver, when the order says.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub delivery_time: Option<String>,
        /// The order's version after this event (1). See [`Versioned`].
        #[serde(default)]
        pub version: u64,
    }

    /// An order event's payload `T` with the order's `version` after the event, as one flat
    /// JSON object (`{"orderId": …, …, "version": 3}`). Every state change of an order
    /// increases its version by one, starting at 1 for [`ORDER_CREATED`]; the consistency
    /// token of an order command is `<orderId>:<version>`. Events published before versions
    /// existed read as version 0. Readers that only know `T` ignore the extra field.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Versioned<T> {
        /// The event.
        #[serde(flatten)]
        pub event: T,
        /// The order's version after the event (0: not known).
        #[serde(default)]
        pub version: u64,
    }

    /// order.events: a cancellation of an approved order began (`APPROVED` →
    /// `CANCEL_PENDING`). Payload: [`OrderCancellation`].
    pub const ORDER_CANCELLATION_STARTED: &str = "OrderCancellationStarted";
    /// order.events: a cancellation failed and the order is `APPROVED` again (e.g. the
    /// kitchen could no longer cancel its ticket). Payload: [`OrderCancellation`] with the
    /// participant's failure as `reason`.
    pub const ORDER_CANCELLATION_FAILED: &str = "OrderCancellationFailed";
    /// Payload of [`ORDER_CANCELLATION_STARTED`] and [`ORDER_CANCELLATION_FAILED`].
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct OrderCancellation {
        /// The order.
        pub order_id: String,
        /// Why a cancellation failed (the failure reply's type, e.g. `TicketNotCancellable`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub reason: Option<String>,
        /// The order's version after this event.
        #[serde(default)]
        pub version: u64,
    }

    /// order.events: the order was rejected. Payload: [`OrderRejected`] (sent as
    /// [`Versioned`]`<OrderRejected>`).
    pub const ORDER_REJECTED: &str = "OrderRejected";
    /// Payload of [`ORDER_REJECTED`].
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct OrderRejected {
        /// The order.
        pub order_id: String,
        /// `UNKNOWN_CONSUMER`, `ORDER_LIMIT_EXCEEDED`, `MENU_ITEM_UNAVAILABLE` or
        /// `PAYMENT_DECLINED`.
        pub reason: String,
    }

    /// kitchen.events: the restaurant accepted a ticket and promised when it will be ready
    /// (`AWAITING_ACCEPTANCE` → `ACCEPTED`). Partition key: the ticket id.
    pub const TICKET_ACCEPTED: &str = "TicketAccepted";
    /// Payload of [`TICKET_ACCEPTED`].
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct TicketAccepted {
        /// The ticket.
        pub ticket_id: String,
        /// Its order.
        pub order_id: String,
        /// The restaurant that accepted it.
        pub restaurant_id: String,
        /// When the food will be ready: an RFC 3339 timestamp in UTC
        /// (`2030-01-01T12:30:00Z`).
        pub ready_by: String,
    }
}

/// Payment events of accounting (`accounting.events`; partition key = the order id).
pub mod payment_events {
    use super::*;

    /// accounting.events: an order's payment was authorized.
    pub const PAYMENT_AUTHORIZED: &str = "PaymentAuthorized";
    /// Payload of [`PAYMENT_AUTHORIZED`].
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct PaymentAuthorized {
        /// The order paid for.
        pub order_id: String,
        /// Who pays.
        pub consumer_id: String,
        /// Accounting's authorization id.
        pub authorization_id: String,
        /// How much.
        pub amount: Money,
        /// The payment network that authorized it (`card-rule` when no network is
        /// configured).
        pub network: String,
    }
    /// accounting.events: an order's payment was declined.
    pub const PAYMENT_DECLINED: &str = "PaymentDeclined";
    /// Payload of [`PAYMENT_DECLINED`].
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct PaymentDeclined {
        /// The order.
        pub order_id: String,
        /// Who would have paid.
        pub consumer_id: String,
        /// Why (`CARD_DECLINED`, `NO_CARD`, …).
        pub reason: String,
    }
    /// accounting.events: an authorization was reversed (the order was cancelled).
    pub const PAYMENT_REVERSED: &str = "PaymentReversed";
    /// Payload of [`PAYMENT_REVERSED`].
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct PaymentReversed {
        /// The order.
        pub order_id: String,
        /// The authorization reversed.
        pub authorization_id: String,
        /// How much was released.
        pub amount: Money,
    }
}

/// Delivery events (`delivery.events`; partition key = the order id).
pub mod delivery_events {
    use super::*;

    /// delivery.events: a delivery was scheduled for an accepted ticket.
    pub const DELIVERY_SCHEDULED: &str = "DeliveryScheduled";
    /// Payload of [`DELIVERY_SCHEDULED`].
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct DeliveryScheduled {
        /// The order delivered.
        pub order_id: String,
        /// The restaurant to pick it up from.
        pub restaurant_id: String,
        /// When to pick it up (RFC 3339, UTC): the ticket's `readyBy`.
        pub pickup_time: String,
    }
    /// delivery.events: a courier was assigned to a delivery.
    pub const COURIER_ASSIGNED: &str = "CourierAssigned";
    /// Payload of [`COURIER_ASSIGNED`].
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct CourierAssigned {
        /// The order delivered.
        pub order_id: String,
        /// The courier.
        pub courier_id: String,
    }
    /// delivery.events: a delivery was cancelled (its order was cancelled).
    pub const DELIVERY_CANCELLED: &str = "DeliveryCancelled";
    /// Payload of [`DELIVERY_CANCELLED`].
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct DeliveryCancelled {
        /// The order.
        pub order_id: String,
    }
}

/// Delivery states (the public API's strings).
pub mod delivery_states {
    /// Scheduled; no courier was available yet.
    pub const PENDING: &str = "PENDING";
    /// A courier is assigned.
    pub const SCHEDULED: &str = "SCHEDULED";
    /// Cancelled with its order.
    pub const CANCELLED: &str = "CANCELLED";
}

/// Order states (the public API's strings).
pub mod order_states {
    /// Created; the create-order saga runs (a semantic lock).
    pub const APPROVAL_PENDING: &str = "APPROVAL_PENDING";
    /// Approved.
    pub const APPROVED: &str = "APPROVED";
    /// Rejected (with a reason).
    pub const REJECTED: &str = "REJECTED";
    /// The cancel-order saga runs (a semantic lock).
    pub const CANCEL_PENDING: &str = "CANCEL_PENDING";
    /// Cancelled.
    pub const CANCELLED: &str = "CANCELLED";
}

/// Rejection reasons (the public API's strings).
pub mod rejection {
    /// The consumer does not exist.
    pub const UNKNOWN_CONSUMER: &str = "UNKNOWN_CONSUMER";
    /// The total is above the consumer's limit.
    pub const ORDER_LIMIT_EXCEEDED: &str = "ORDER_LIMIT_EXCEEDED";
    /// A menu item is unknown or out of stock.
    pub const MENU_ITEM_UNAVAILABLE: &str = "MENU_ITEM_UNAVAILABLE";
    /// The card was declined.
    pub const PAYMENT_DECLINED: &str = "PAYMENT_DECLINED";
}

/// The test card that is always declined (the common test-card convention).
pub const DECLINED_CARD: &str = "4000000000000002";

#[cfg(test)]
mod tests {
    use super::events::{OrderDetails, OrderRejected, Versioned};
    use super::*;

    #[test]
    fn versioned_events_are_flat_and_readable_by_old_and_new_readers() {
        let e = Versioned {
            event: OrderRejected {
                order_id: "o-1".to_owned(),
                reason: rejection::PAYMENT_DECLINED.to_owned(),
            },
            version: 2,
        };
        let wire = serde_json::to_value(&e).unwrap();
        assert_eq!(
            wire,
            serde_json::json!({"orderId": "o-1", "reason": "PAYMENT_DECLINED", "version": 2})
        );
        // A reader of the plain payload ignores the version …
        let plain: OrderRejected = serde_json::from_value(wire.clone()).unwrap();
        assert_eq!(plain, e.event);
        // … and an event from before versions reads as version 0.
        let old = serde_json::json!({"orderId": "o-1", "consumerId": "c", "restaurantId": "r",
            "lineItems": [], "orderTotal": "1.00"});
        let v: Versioned<OrderDetails> = serde_json::from_value(old).unwrap();
        assert_eq!(v.version, 0);
        assert_eq!(v.event.order_total, Money(100));
    }
}
