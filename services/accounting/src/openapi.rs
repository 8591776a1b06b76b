//! `GET /openapi.json`: accounting's API as an OpenAPI 3.0 document.

use keel_chassis::axum::Json;
use serde_json::{Value, json};

fn problem(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } }
    })
}

/// The document.
pub(crate) fn openapi() -> Value {
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Accounting",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The reference system's accounting: accounts opened from ConsumerCreated (consumer.events), card authorizations made and reversed by the order sagas (accounting.commands), through payment networks with breaker-driven failover when configured. Card 4000000000000002 is always declined. Errors are application/problem+json."
        },
        "paths": {
            "/payments/{orderId}": {
                "get": {
                    "summary": "The payment of an order: its authorization, or its decline",
                    "operationId": "getPayment",
                    "parameters": [{
                        "name": "orderId", "in": "path", "required": true,
                        "description": "The order's id.", "schema": { "type": "string" }
                    }],
                    "responses": {
                        "200": {
                            "description": "The payment",
                            "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Payment" } } }
                        },
                        "404": problem("No payment was attempted for the order")
                    }
                }
            },
            "/payment-networks": {
                "get": {
                    "summary": "The payment networks and their failover state",
                    "description": "Each network's circuit breaker (CLOSED, OPEN, HALF_OPEN), its recent calls and failures, its fee, and which network authorizations go to first now. With no networks configured: selection card-rule and an empty list.",
                    "operationId": "getPaymentNetworks",
                    "responses": {
                        "200": {
                            "description": "The networks",
                            "content": { "application/json": { "schema": { "$ref": "#/components/schemas/PaymentNetworks" } } }
                        }
                    }
                }
            },
            "/accounts/{consumerId}": {
                "get": {
                    "summary": "A consumer's account",
                    "operationId": "getAccount",
                    "parameters": [{
                        "name": "consumerId", "in": "path", "required": true,
                        "description": "The consumer's id.", "schema": { "type": "string" }
                    }],
                    "responses": {
                        "200": {
                            "description": "The account",
                            "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Account" } } }
                        },
                        "404": problem("No account for the consumer")
                    }
                }
            }
        },
        "components": {
            "schemas": {
                "Payment": {
                    "type": "object",
                    "required": ["orderId", "authorizationId", "consumerId", "state", "amount", "cardLast4"],
                    "properties": {
                        "orderId": { "type": "string" },
                        "authorizationId": { "type": "string", "nullable": true, "description": "null for a decline." },
                        "consumerId": { "type": "string" },
                        "state": { "type": "string", "enum": ["AUTHORIZED", "REVERSED", "DECLINED"] },
                        "amount": { "type": "string", "pattern": "^[0-9]+\\.[0-9]{2}$", "example": "12.50" },
                        "cardLast4": { "type": "string", "nullable": true, "description": "null when there was no card (or no account)." },
                        "reason": {
                            "type": "string",
                            "description": "Why it was declined (DECLINED only): CARD_DECLINED, NO_CARD, INVALID_CARD or NO_ACCOUNT."
                        },
                        "network": { "type": "string", "description": "The payment network holding the authorization (absent for the card rule)." },
                        "networkAuthorizationId": { "type": "string", "description": "The network's authorization id (absent for the card rule)." }
                    }
                },
                "PaymentNetworks": {
                    "type": "object",
                    "required": ["selection", "preferred", "networks"],
                    "properties": {
                        "selection": { "type": "string", "enum": ["ordered", "fee_weighted", "card-rule"] },
                        "preferred": { "type": "string", "nullable": true, "description": "Where the next authorization goes first; null when no network is available." },
                        "networks": { "type": "array", "items": { "$ref": "#/components/schemas/PaymentNetwork" } }
                    }
                },
                "PaymentNetwork": {
                    "type": "object",
                    "required": ["name", "breaker", "failureRate", "recentCalls", "recentFailures", "notPermittedCalls", "preferred"],
                    "properties": {
                        "name": { "type": "string" },
                        "url": { "type": "string", "nullable": true },
                        "breaker": { "type": "string", "enum": ["CLOSED", "OPEN", "HALF_OPEN", "DISABLED", "FORCED_OPEN", "METRICS_ONLY"] },
                        "failureRate": { "type": "number", "description": "Percent of the breaker's window; -1 while it holds too few calls." },
                        "recentCalls": { "type": "integer" },
                        "recentFailures": { "type": "integer" },
                        "notPermittedCalls": { "type": "integer" },
                        "feeBps": { "type": "integer", "nullable": true },
                        "preferred": { "type": "boolean" },
                        "lastError": { "type": "string", "nullable": true }
                    }
                },
                "Account": {
                    "type": "object",
                    "required": ["consumerId", "name", "cardLast4"],
                    "properties": {
                        "consumerId": { "type": "string" },
                        "name": { "type": "string" },
                        "cardLast4": { "type": "string", "nullable": true, "description": "null when the consumer gave no card." }
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
                        "instance": { "type": "string" }
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
