//! `GET /openapi.json`: the kitchen's API as an OpenAPI 3.0 document.

use keel_chassis::axum::Json;
use serde_json::{Value, json};

fn problem(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } }
    })
}

fn ticket(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Ticket" } } }
    })
}

/// The document.
pub(crate) fn openapi() -> Value {
    let ticket_id = json!({
        "name": "ticketId", "in": "path", "required": true,
        "description": "The ticket's id (chosen by the kitchen).", "schema": { "type": "string" }
    });
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Kitchen",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The reference system's kitchen: one ticket per order, created and cancelled by the order sagas (kitchen.commands); the restaurant accepts tickets here, which publishes TicketAccepted on kitchen.events. Errors are application/problem+json."
        },
        "paths": {
            "/tickets/{ticketId}": {
                "get": {
                    "summary": "A ticket by its id",
                    "operationId": "getTicket",
                    "parameters": [ticket_id],
                    "responses": {
                        "200": ticket("The ticket"),
                        "404": problem("No such ticket")
                    }
                }
            },
            "/tickets/by-order/{orderId}": {
                "get": {
                    "summary": "The ticket of an order",
                    "operationId": "getTicketByOrder",
                    "parameters": [{
                        "name": "orderId", "in": "path", "required": true,
                        "description": "The order's id.", "schema": { "type": "string" }
                    }],
                    "responses": {
                        "200": ticket("The order's ticket"),
                        "404": problem("The order has no ticket")
                    }
                }
            },
            "/tickets/{ticketId}/accept": {
                "post": {
                    "summary": "Accept a ticket (AWAITING_ACCEPTANCE → ACCEPTED)",
                    "description": "Publishes TicketAccepted {ticketId, orderId, restaurantId, readyBy} on kitchen.events.",
                    "operationId": "acceptTicket",
                    "parameters": [ticket_id],
                    "requestBody": {
                        "required": true,
                        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/AcceptTicket" } } }
                    },
                    "responses": {
                        "200": ticket("The accepted ticket"),
                        "400": problem("Malformed JSON, or readyBy not an RFC 3339 timestamp in the future (`field` names it)"),
                        "404": problem("No such ticket"),
                        "409": problem("The ticket is not AWAITING_ACCEPTANCE (`state` says what it is)"),
                        "415": problem("The body is not application/json"),
                        "422": problem("The body does not fit AcceptTicket (`field` names the field)")
                    }
                }
            }
        },
        "components": {
            "schemas": {
                "Ticket": {
                    "type": "object",
                    "required": ["ticketId", "orderId", "restaurantId", "state", "lineItems"],
                    "properties": {
                        "ticketId": { "type": "string" },
                        "orderId": { "type": "string" },
                        "restaurantId": { "type": "string" },
                        "state": {
                            "type": "string",
                            "enum": ["CREATE_PENDING", "AWAITING_ACCEPTANCE", "ACCEPTED", "CANCEL_PENDING", "CANCELLED"]
                        },
                        "lineItems": { "type": "array", "items": { "$ref": "#/components/schemas/LineItem" } },
                        "readyBy": {
                            "type": "string", "format": "date-time",
                            "description": "When the food will be ready (UTC); present once accepted."
                        }
                    }
                },
                "LineItem": {
                    "type": "object",
                    "required": ["menuItemId", "name", "quantity", "price"],
                    "properties": {
                        "menuItemId": { "type": "string" },
                        "name": { "type": "string" },
                        "quantity": { "type": "integer", "minimum": 1 },
                        "price": { "type": "string", "pattern": "^[0-9]+(\\.[0-9]{1,2})?$", "example": "12.50" }
                    }
                },
                "AcceptTicket": {
                    "type": "object",
                    "required": ["readyBy"],
                    "additionalProperties": false,
                    "properties": {
                        "readyBy": {
                            "type": "string", "format": "date-time",
                            "description": "RFC 3339, in the future.", "example": "2030-01-01T12:30:00Z"
                        }
                    }
                },
                "Problem": {
                    "type": "object",
                    "description": "RFC 9457 problem details.",
                    "required": ["type", "title", "status"],
                    "properties": {
                        "type": { "type": "string" },
                        "title": { "type": "string" },
                        "status": { "type": "integer" },
                        "detail": { "type": "string" },
                        "instance": { "type": "string" },
                        "field": { "type": "string", "description": "The offending request field (400, 422)." },
                        "state": { "type": "string", "description": "The ticket's state (409)." }
                    }
                }
            }
        }
    })
}

/// `GET /openapi.json`.
pub(crate) async fn document() -> Json<Value> {
    Json(openapi())
}
