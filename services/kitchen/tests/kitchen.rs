//! The kitchen through its real interfaces: HTTP on a free port, and saga commands and
//! events on the real embedded bus (a SQLite file in a temporary directory) — the way the
//! order service and the restaurant use it.

use std::{sync::Arc, time::Duration};

use ftgo_contracts::{
    LineItem, Money,
    commands::{self, CreateTicket, OrderRef},
    destinations, events,
};
use ftgo_kitchen::KitchenConfig;
use ftgo_runtime::testing::{self, Reply, Server, collect};
use keel_messaging::{Bus, Consumer, Message, Replies, Subscription};
use keel_store::testing::TempDir;
use serde_json::{Value, json};
use tokio::sync::mpsc;

struct Kitchen {
    server: Server,
    bus: Arc<dyn Bus>,
    replies: Replies,
    _dir: TempDir,
}

impl Kitchen {
    /// Starts the kitchen on a fresh database and bus, as `run` does.
    async fn start() -> Self {
        let dir = TempDir::new("kitchen-test");
        let app_config = KitchenConfig {
            database: dir.sqlite_url("kitchen.db"),
            bus: dir.sqlite_url("bus.db"),
            registration: None,
        };
        let server = Server::start("kitchen", app_config.clone(), |c, stop| async move {
            ftgo_kitchen::app(&c, stop).await
        })
        .await;
        let bus = keel_bus::connect(&app_config.bus).await.unwrap();
        let replies = Replies::start(bus.clone(), "kitchen-test").await.unwrap();
        server.wait_ready().await;
        Kitchen {
            server,
            bus,
            replies,
            _dir: dir,
        }
    }

    async fn stop(self) {
        self.server.stop().await;
    }

    fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    /// Sends `message` on kitchen.commands (as the order service's orchestrator does) and
    /// waits for the reply.
    async fn send(&self, message: Message) -> Reply {
        Reply::request(&self.replies, message).await
    }

    async fn command(&self, kind: &str, payload: Value) -> Reply {
        self.send(command(kind, payload)).await
    }

    async fn create_ticket(&self, order_id: &str) -> String {
        let reply = self.send(create_ticket_command(order_id, "r-1")).await;
        assert_eq!(reply.outcome, "SUCCESS", "{reply:?}");
        reply.payload["ticketId"].as_str().unwrap().to_owned()
    }

    async fn order_command(&self, kind: &str, order_id: &str) -> Reply {
        self.command(
            kind,
            json!(OrderRef {
                order_id: order_id.to_owned()
            }),
        )
        .await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.server.get_strict(path).await
    }

    async fn state_of_order(&self, order_id: &str) -> String {
        let (status, body) = self.get(&format!("/tickets/by-order/{order_id}")).await;
        assert_eq!(status, 200, "{body}");
        body["state"].as_str().unwrap().to_owned()
    }

    async fn accept(&self, ticket_id: &str, body: &str) -> (u16, Value) {
        self.server
            .post_strict(&format!("/tickets/{ticket_id}/accept"), body)
            .await
    }

    /// Collects what is published on kitchen.events.
    async fn events(&self) -> (Consumer, mpsc::UnboundedReceiver<Message>) {
        collect(
            &self.bus,
            Subscription::new(destinations::KITCHEN_EVENTS, "kitchen-test"),
        )
        .await
    }
}

fn command(kind: &str, payload: Value) -> Message {
    testing::command(destinations::KITCHEN_COMMANDS, kind, payload)
}

fn create_ticket_command(order_id: &str, restaurant_id: &str) -> Message {
    command(
        commands::CREATE_TICKET,
        json!(CreateTicket {
            order_id: order_id.to_owned(),
            restaurant_id: restaurant_id.to_owned(),
            line_items: vec![LineItem {
                menu_item_id: "m-1".to_owned(),
                name: "Chicken Vindaloo".to_owned(),
                quantity: 2,
                price: Money(1250),
            }],
        }),
    )
}

/// A ready-by time safely in the future.
fn later() -> String {
    "2999-06-01T12:30:00Z".to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_ticket_once_per_order_and_read_it_back() {
    let k = Kitchen::start().await;
    let message = create_ticket_command("o-1", "r-7");
    let first = k.send(message.clone()).await;
    assert_eq!(first.outcome, "SUCCESS", "{first:?}");
    let ticket_id = first.payload["ticketId"].as_str().unwrap().to_owned();
    assert!(!ticket_id.is_empty());

    // The same message delivered again: answered with the stored reply, not applied again.
    let again = k.send(message).await;
    assert_eq!(again.outcome, "SUCCESS");
    assert_eq!(again.id, first.id, "the stored reply, under the same id");
    assert_eq!(again.payload, first.payload);
    // A new CreateTicket for the same order: the same ticket.
    let other = k.send(create_ticket_command("o-1", "r-7")).await;
    assert_eq!(other.payload["ticketId"], ticket_id.as_str());

    let (status, by_id) = k.get(&format!("/tickets/{ticket_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(
        by_id,
        json!({
            "ticketId": ticket_id,
            "orderId": "o-1",
            "restaurantId": "r-7",
            "state": "CREATE_PENDING",
            "lineItems": [{"menuItemId": "m-1", "name": "Chicken Vindaloo", "quantity": 2, "price": "12.50"}]
        })
    );
    let (status, by_order) = k.get("/tickets/by-order/o-1").await;
    assert_eq!(status, 200);
    assert_eq!(by_order, by_id);

    let (status, p) = k.get("/tickets/nope").await;
    assert_eq!(status, 404);
    assert_eq!(p["ticketId"], "nope");
    let (status, p) = k.get("/tickets/by-order/nope").await;
    assert_eq!(status, 404);
    assert_eq!(p["orderId"], "nope");
    k.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirm_then_accept_publishes_ticket_accepted() {
    let k = Kitchen::start().await;
    let (events, mut rx) = k.events().await;
    let ticket = k.create_ticket("o-2").await;

    // Not yet confirmed: the restaurant cannot accept it.
    let ready_by = later();
    let (status, p) = k
        .accept(&ticket, &json!({"readyBy": ready_by}).to_string())
        .await;
    assert_eq!(status, 409, "{p}");
    assert_eq!(p["state"], "CREATE_PENDING");

    let confirm = command(commands::CONFIRM_CREATE_TICKET, json!({"orderId": "o-2"}));
    let r = k.send(confirm.clone()).await;
    assert_eq!(
        (r.outcome.as_str(), r.kind.as_str()),
        ("SUCCESS", "ConfirmCreateTicketReply")
    );
    assert_eq!(k.state_of_order("o-2").await, "AWAITING_ACCEPTANCE");
    // Delivered again: the stored reply.
    assert_eq!(k.send(confirm).await.id, r.id);
    // A retried confirmation (a new message) of a confirmed ticket still succeeds.
    assert_eq!(
        k.order_command(commands::CONFIRM_CREATE_TICKET, "o-2")
            .await
            .outcome,
        "SUCCESS"
    );

    let (status, body) = k
        .accept(&ticket, &json!({"readyBy": ready_by}).to_string())
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "ACCEPTED");
    assert_eq!(body["readyBy"], ready_by.as_str());
    let (_, read) = k.get(&format!("/tickets/{ticket}")).await;
    assert_eq!(read, body);

    let event = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("TicketAccepted published")
        .unwrap();
    assert_eq!(event.message_type(), Some(events::TICKET_ACCEPTED));
    assert_eq!(event.header("schema-version"), Some("1"));
    assert_eq!(event.key.as_deref(), Some(ticket.as_str()));
    let payload: events::TicketAccepted = event.payload_as().unwrap();
    assert_eq!(
        payload,
        events::TicketAccepted {
            ticket_id: ticket.clone(),
            order_id: "o-2".to_owned(),
            restaurant_id: "r-1".to_owned(),
            ready_by: ready_by.clone(),
        }
    );

    // Accepting twice is a conflict, and publishes nothing more.
    let (status, p) = k
        .accept(&ticket, &json!({"readyBy": ready_by}).to_string())
        .await;
    assert_eq!(status, 409);
    assert_eq!(p["state"], "ACCEPTED");
    assert!(
        tokio::time::timeout(Duration::from_millis(600), rx.recv())
            .await
            .is_err(),
        "one event per acceptance"
    );
    events.stop().await;
    k.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_rejects_bad_input_naming_the_field() {
    let k = Kitchen::start().await;
    let ticket = k.create_ticket("o-3").await;
    k.order_command(commands::CONFIRM_CREATE_TICKET, "o-3")
        .await;

    let cases: &[(&str, u16, Option<&str>)] = &[
        ("{bad", 400, None),
        ("{}", 422, Some("readyBy")),
        (r#"{"readyBy": 5}"#, 422, Some("readyBy")),
        (
            r#"{"readyBy": "2030-01-01T12:00:00Z", "extra": 1}"#,
            422,
            Some("extra"),
        ),
        (r#"{"readyBy": "tomorrow"}"#, 400, Some("readyBy")),
        (
            r#"{"readyBy": "2030-02-30T12:00:00Z"}"#,
            400,
            Some("readyBy"),
        ),
        (
            r#"{"readyBy": "2001-01-01T12:00:00Z"}"#,
            400,
            Some("readyBy"),
        ),
        ("[]", 422, Some("body")),
    ];
    for (body, status, field) in cases {
        let (got, p) = k.accept(&ticket, body).await;
        assert_eq!(got, *status, "{body}: {p}");
        if let Some(field) = field {
            assert_eq!(p["field"], *field, "{body}: {p}");
        }
    }
    // Not JSON at all.
    let r = k
        .server
        .http
        .post(k.url(&format!("/tickets/{ticket}/accept")))
        .body("readyBy=soon")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    // An unknown ticket.
    let (status, p) = k
        .accept("nope", &json!({"readyBy": later()}).to_string())
        .await;
    assert_eq!(status, 404);
    assert_eq!(p["ticketId"], "nope");
    // Nothing of that changed the ticket.
    assert_eq!(k.state_of_order("o-3").await, "AWAITING_ACCEPTANCE");
    // An offset is accepted and normalised to UTC.
    let (status, body) = k
        .accept(&ticket, r#"{"readyBy": "2999-01-01T14:30:00.5+02:00"}"#)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["readyBy"], "2999-01-01T12:30:00.500Z");
    k.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_create_ticket_compensates() {
    let k = Kitchen::start().await;
    // Nothing to undo: success.
    let r = k
        .order_command(commands::CANCEL_CREATE_TICKET, "o-missing")
        .await;
    assert_eq!(r.outcome, "SUCCESS", "{r:?}");

    k.create_ticket("o-4").await;
    let cancel = command(commands::CANCEL_CREATE_TICKET, json!({"orderId": "o-4"}));
    let r = k.send(cancel.clone()).await;
    assert_eq!(r.outcome, "SUCCESS");
    assert_eq!(k.state_of_order("o-4").await, "CANCELLED");
    assert_eq!(k.send(cancel).await.id, r.id);
    // Compensating again (a new message) is still success.
    assert_eq!(
        k.order_command(commands::CANCEL_CREATE_TICKET, "o-4")
            .await
            .outcome,
        "SUCCESS"
    );
    // A cancelled ticket is not confirmed.
    let r = k
        .order_command(commands::CONFIRM_CREATE_TICKET, "o-4")
        .await;
    assert_eq!(
        (r.outcome.as_str(), r.kind.as_str()),
        ("FAILURE", "InvalidTicketState")
    );
    assert_eq!(r.payload["state"], "CANCELLED");
    assert_eq!(k.state_of_order("o-4").await, "CANCELLED");
    // A confirmation for an order without a ticket.
    let r = k
        .order_command(commands::CONFIRM_CREATE_TICKET, "o-missing")
        .await;
    assert_eq!(
        (r.outcome.as_str(), r.kind.as_str()),
        ("FAILURE", "TicketNotFound")
    );
    k.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_order_saga_begin_undo_confirm() {
    let k = Kitchen::start().await;
    // From AWAITING_ACCEPTANCE, undone back to it.
    k.create_ticket("o-5").await;
    // CREATE_PENDING is not cancellable.
    let r = k.order_command(commands::BEGIN_CANCEL_TICKET, "o-5").await;
    assert_eq!(
        (r.outcome.as_str(), r.kind.as_str()),
        ("FAILURE", "TicketNotCancellable")
    );
    assert_eq!(r.payload["state"], "CREATE_PENDING");
    k.order_command(commands::CONFIRM_CREATE_TICKET, "o-5")
        .await;
    let begin = command(commands::BEGIN_CANCEL_TICKET, json!({"orderId": "o-5"}));
    let r = k.send(begin.clone()).await;
    assert_eq!(r.outcome, "SUCCESS", "{r:?}");
    assert_eq!(k.state_of_order("o-5").await, "CANCEL_PENDING");
    // The same command again is not applied again: the stored SUCCESS (a new BeginCancel
    // of a CANCEL_PENDING ticket would fail).
    let again = k.send(begin).await;
    assert_eq!(
        (again.outcome.as_str(), again.id.as_str()),
        ("SUCCESS", r.id.as_str())
    );
    let r = k.order_command(commands::BEGIN_CANCEL_TICKET, "o-5").await;
    assert_eq!(
        (r.outcome.as_str(), r.kind.as_str()),
        ("FAILURE", "TicketNotCancellable")
    );
    // The ticket cannot be accepted meanwhile.
    let ticket = k.get("/tickets/by-order/o-5").await.1["ticketId"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = k
        .accept(&ticket, &json!({"readyBy": later()}).to_string())
        .await;
    assert_eq!(status, 409);
    let r = k
        .order_command(commands::UNDO_BEGIN_CANCEL_TICKET, "o-5")
        .await;
    assert_eq!(r.outcome, "SUCCESS");
    assert_eq!(k.state_of_order("o-5").await, "AWAITING_ACCEPTANCE");

    // From ACCEPTED: undo restores ACCEPTED (and its readyBy); then the cancel completes.
    let ready_by = later();
    let (status, _) = k
        .accept(&ticket, &json!({"readyBy": ready_by}).to_string())
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        k.order_command(commands::BEGIN_CANCEL_TICKET, "o-5")
            .await
            .outcome,
        "SUCCESS"
    );
    let undo = command(
        commands::UNDO_BEGIN_CANCEL_TICKET,
        json!({"orderId": "o-5"}),
    );
    assert_eq!(k.send(undo.clone()).await.outcome, "SUCCESS");
    let (_, t) = k.get("/tickets/by-order/o-5").await;
    assert_eq!(
        (t["state"].as_str(), t["readyBy"].as_str()),
        (Some("ACCEPTED"), Some(ready_by.as_str()))
    );
    assert_eq!(
        k.order_command(commands::BEGIN_CANCEL_TICKET, "o-5")
            .await
            .outcome,
        "SUCCESS"
    );
    // The old undo delivered again changes nothing: the ticket stays CANCEL_PENDING.
    assert_eq!(k.send(undo).await.outcome, "SUCCESS");
    assert_eq!(k.state_of_order("o-5").await, "CANCEL_PENDING");
    let confirm = command(commands::CONFIRM_CANCEL_TICKET, json!({"orderId": "o-5"}));
    let r = k.send(confirm.clone()).await;
    assert_eq!(r.outcome, "SUCCESS");
    assert_eq!(k.state_of_order("o-5").await, "CANCELLED");
    assert_eq!(k.send(confirm).await.id, r.id);
    // Cancelled: not cancellable again; undo (nothing to undo) and confirm are harmless.
    let r = k.order_command(commands::BEGIN_CANCEL_TICKET, "o-5").await;
    assert_eq!(
        (r.outcome.as_str(), r.payload["state"].as_str()),
        ("FAILURE", Some("CANCELLED"))
    );
    assert_eq!(
        k.order_command(commands::UNDO_BEGIN_CANCEL_TICKET, "o-5")
            .await
            .outcome,
        "SUCCESS"
    );
    assert_eq!(
        k.order_command(commands::CONFIRM_CANCEL_TICKET, "o-5")
            .await
            .outcome,
        "SUCCESS"
    );
    assert_eq!(k.state_of_order("o-5").await, "CANCELLED");

    // Unknown order: not cancellable; undo is success; confirm cancel is TicketNotFound.
    let r = k
        .order_command(commands::BEGIN_CANCEL_TICKET, "o-none")
        .await;
    assert_eq!(
        (r.outcome.as_str(), r.kind.as_str()),
        ("FAILURE", "TicketNotCancellable")
    );
    assert_eq!(
        k.order_command(commands::UNDO_BEGIN_CANCEL_TICKET, "o-none")
            .await
            .outcome,
        "SUCCESS"
    );
    let r = k
        .order_command(commands::CONFIRM_CANCEL_TICKET, "o-none")
        .await;
    assert_eq!(
        (r.outcome.as_str(), r.kind.as_str()),
        ("FAILURE", "TicketNotFound")
    );
    // Confirming a cancel that never began.
    k.create_ticket("o-6").await;
    let r = k
        .order_command(commands::CONFIRM_CANCEL_TICKET, "o-6")
        .await;
    assert_eq!(
        (r.outcome.as_str(), r.kind.as_str()),
        ("FAILURE", "InvalidTicketState")
    );
    assert_eq!(k.state_of_order("o-6").await, "CREATE_PENDING");
    k.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_commands_get_failure_replies() {
    let k = Kitchen::start().await;
    let r = k
        .command(
            commands::CREATE_TICKET,
            json!({"orderId": "o-7", "restaurantId": 5}),
        )
        .await;
    assert_eq!(
        (r.outcome.as_str(), r.kind.as_str()),
        ("FAILURE", "InvalidCommand")
    );
    assert!(r.payload["reason"].is_string(), "{r:?}");
    let r = k
        .command(
            commands::CREATE_TICKET,
            json!({"orderId": "", "restaurantId": "r", "lineItems": []}),
        )
        .await;
    assert_eq!(r.kind, "InvalidCommand");
    let r = k.command(commands::BEGIN_CANCEL_TICKET, json!({})).await;
    assert_eq!(r.kind, "InvalidCommand");
    let r = k.command("CookEverything", json!({"orderId": "o-7"})).await;
    assert_eq!(
        (r.outcome.as_str(), r.kind.as_str()),
        ("FAILURE", "UnknownCommand")
    );
    // None of it created a ticket.
    assert_eq!(k.get("/tickets/by-order/o-7").await.0, 404);
    // The kitchen still works.
    k.create_ticket("o-7").await;
    assert_eq!(k.state_of_order("o-7").await, "CREATE_PENDING");
    k.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_its_openapi_document() {
    let k = Kitchen::start().await;
    let (status, doc) = k.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.0.3");
    for path in [
        "/tickets/{ticketId}",
        "/tickets/by-order/{orderId}",
        "/tickets/{ticketId}/accept",
    ] {
        assert!(doc["paths"][path].is_object(), "{path}");
    }
    assert_eq!(
        doc["components"]["schemas"]["Ticket"]["properties"]["state"]["enum"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    let (status, p) = k.get("/tickets").await;
    assert_eq!(status, 404);
    assert_eq!(p["status"], 404);
    k.stop().await;
}
