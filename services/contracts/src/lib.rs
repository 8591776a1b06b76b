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

    /// order.events: the create-order saga approved the order.
    pub const ORDER_APPROVED: &str = "OrderApproved";
    /// order.events: the cancel-order saga cancelled an approved order.
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
    /// order.events: the order was rejected.
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
