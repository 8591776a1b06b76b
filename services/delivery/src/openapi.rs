//! `GET /openapi.json`: the delivery service's API as an OpenAPI 3.0 document.

use keel_chassis::axum::Json;
use serde_json::{Value, json};

fn problem(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } }
    })
}

fn body(description: &str, schema: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } }
    })
}

/// The document.
pub(crate) fn openapi() -> Value {
    let courier_id = json!({
        "name": "courierId", "in": "path", "required": true,
        "description": "The courier's id: 1 to 64 letters, digits, '.', '_' or '-' (chosen by the caller).",
        "schema": { "type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$" }
    });
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Delivery",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The reference system's deliveries and couriers, by choreography: a delivery is scheduled when kitchen.events says TicketAccepted and cancelled when order.events says OrderCancelled; DeliveryScheduled, CourierAssigned and DeliveryCancelled are published on delivery.events. Errors are application/problem+json."
        },
        "paths": {
            "/deliveries/{orderId}": {
                "get": {
                    "summary": "The delivery of an order",
                    "operationId": "getDelivery",
                    "parameters": [{
                        "name": "orderId", "in": "path", "required": true,
                        "description": "The order's id.", "schema": { "type": "string" }
                    }],
                    "responses": {
                        "200": body("The order's delivery", "Delivery"),
                        "404": problem("The order has no delivery (its ticket was not accepted, or the acceptance has not reached the delivery service yet)")
                    }
                }
            },
            "/couriers": {
                "get": {
                    "summary": "Every courier, by id",
                    "operationId": "listCouriers",
                    "responses": { "200": body("The couriers", "Couriers") }
                }
            },
            "/couriers/{courierId}": {
                "get": {
                    "summary": "A courier",
                    "operationId": "getCourier",
                    "parameters": [courier_id.clone()],
                    "responses": {
                        "200": body("The courier", "Courier"),
                        "400": problem("Malformed courier id (`field`: courierId)"),
                        "404": problem("No such courier")
                    }
                }
            },
            "/couriers/{courierId}/availability": {
                "post": {
                    "summary": "Make a courier available or unavailable (creating it if unknown)",
                    "description": "An available courier is handed waiting (PENDING) deliveries at once, oldest first, each going to the available courier with the fewest active deliveries. A courier made unavailable keeps the deliveries it has.",
                    "operationId": "setCourierAvailability",
                    "parameters": [courier_id],
                    "requestBody": {
                        "required": true,
                        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Availability" } } }
                    },
                    "responses": {
                        "200": body("The courier, after the change", "Courier"),
                        "201": body("The courier, created", "Courier"),
                        "400": problem("Malformed JSON, or a malformed courier id (`field` names it)"),
                        "415": problem("The body is not application/json"),
                        "422": problem("The body does not fit Availability (`field` names the field)")
                    }
                }
            }
        },
        "components": {
            "schemas": {
                "Delivery": {
                    "type": "object",
                    "required": ["orderId", "restaurantId", "state"],
                    "properties": {
                        "orderId": { "type": "string" },
                        "restaurantId": { "type": "string" },
                        "state": { "type": "string", "enum": ["PENDING", "SCHEDULED", "CANCELLED"] },
                        "pickupTime": {
                            "type": "string", "format": "date-time",
                            "description": "When to pick the food up (UTC): the ticket's readyBy. Absent on a delivery cancelled before its ticket's acceptance arrived."
                        },
                        "courierId": { "type": "string", "description": "The assigned courier (kept once cancelled)." },
                        "ticketId": { "type": "string", "description": "The accepted ticket." }
                    }
                },
                "Courier": {
                    "type": "object",
                    "required": ["courierId", "available", "activeDeliveries"],
                    "properties": {
                        "courierId": { "type": "string" },
                        "available": { "type": "boolean" },
                        "activeDeliveries": {
                            "type": "array", "items": { "type": "string" },
                            "description": "Order ids of its SCHEDULED deliveries, oldest first."
                        }
                    }
                },
                "Couriers": {
                    "type": "object",
                    "required": ["couriers"],
                    "properties": {
                        "couriers": { "type": "array", "items": { "$ref": "#/components/schemas/Courier" } }
                    }
                },
                "Availability": {
                    "type": "object",
                    "required": ["available"],
                    "additionalProperties": false,
                    "properties": { "available": { "type": "boolean" } }
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
                        "orderId": { "type": "string", "description": "The order without a delivery (404)." },
                        "courierId": { "type": "string", "description": "The unknown courier (404)." }
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
