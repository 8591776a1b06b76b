//! `GET /openapi.json`: the payment-network simulator's API as an OpenAPI 3.0 document.

use keel_chassis::axum::Json;
use serde_json::{Value, json};

fn problem(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } }
    })
}

fn body(schema: &str) -> Value {
    json!({
        "required": true,
        "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } }
    })
}

fn ok(description: &str, schema: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } }
    })
}

/// The document.
pub(crate) fn openapi() -> Value {
    let id = json!({
        "name": "id", "in": "path", "required": true,
        "description": "The network's authorization id.", "schema": { "type": "string" }
    });
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Payment network (VAN) simulator",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "A simulated card network (run as van-a, van-b): authorizations idempotent by key, cancel, network-cancel (void an unknown outcome, or refuse the key in advance), and injectable faults. An injected error is a 503 with nothing stored; injected latency comes after the operation is stored. Card 4000000000000002 is always declined. Errors are application/problem+json."
        },
        "paths": {
            "/authorizations": {
                "post": {
                    "summary": "Authorize an amount on a card, once per key",
                    "operationId": "authorize",
                    "requestBody": body("AuthorizeRequest"),
                    "responses": {
                        "201": ok("Decided now (APPROVED or DECLINED)", "Authorization"),
                        "200": ok("The key was seen before: the stored result", "Authorization"),
                        "400": problem("Malformed JSON, or a field out of range (`field` names it)"),
                        "409": problem("The key was network-cancelled before the request arrived, or used for another request"),
                        "415": problem("The body is not application/json"),
                        "422": problem("The body does not fit AuthorizeRequest (`field` names the field)"),
                        "503": problem("Injected error or database trouble: nothing was stored")
                    }
                },
                "get": {
                    "summary": "List authorizations (of one order)",
                    "operationId": "listAuthorizations",
                    "parameters": [
                        { "name": "orderId", "in": "query", "required": false, "schema": { "type": "string" } },
                        { "name": "limit", "in": "query", "required": false, "schema": { "type": "integer", "minimum": 1, "maximum": 1000, "default": 100 } }
                    ],
                    "responses": {
                        "200": {
                            "description": "The authorizations (tombstones included)",
                            "content": { "application/json": { "schema": {
                                "type": "object",
                                "properties": {
                                    "network": { "type": "string" },
                                    "authorizations": { "type": "array", "items": { "$ref": "#/components/schemas/Authorization" } }
                                }
                            } } }
                        },
                        "400": problem("limit out of range")
                    }
                }
            },
            "/authorizations/{id}": {
                "get": {
                    "summary": "One authorization",
                    "operationId": "getAuthorization",
                    "parameters": [id],
                    "responses": { "200": ok("The authorization", "Authorization"), "404": problem("No such authorization") }
                }
            },
            "/authorizations/{id}/cancel": {
                "post": {
                    "summary": "Release an approved authorization (APPROVED → CANCELLED); idempotent",
                    "operationId": "cancelAuthorization",
                    "parameters": [id],
                    "responses": {
                        "200": ok("The authorization, cancelled (or already cancelled or voided)", "Authorization"),
                        "404": problem("No such authorization"),
                        "409": problem("The authorization was declined"),
                        "503": problem("Injected error or database trouble: nothing changed")
                    }
                }
            },
            "/network-cancel": {
                "post": {
                    "summary": "Void whatever happened for a key; idempotent",
                    "description": "An APPROVED authorization under the key becomes VOIDED; if none has arrived, a tombstone is stored and a later request with the key is refused (409). A 200 means nothing is, or will be, held under the key.",
                    "operationId": "networkCancel",
                    "requestBody": body("NetworkCancelRequest"),
                    "responses": {
                        "200": ok("What was done", "NetworkCancelled"),
                        "400": problem("Blank or overlong key"),
                        "422": problem("The body does not fit NetworkCancelRequest"),
                        "503": problem("Injected error or database trouble: nothing changed")
                    }
                }
            },
            "/network": {
                "get": {
                    "summary": "The network's name, fee and faults",
                    "operationId": "getNetwork",
                    "responses": { "200": { "description": "`{network, feeBps, faults}`" } }
                }
            },
            "/admin/faults": {
                "get": {
                    "summary": "The injected faults",
                    "operationId": "getFaults",
                    "responses": { "200": ok("The faults in effect", "Faults") }
                },
                "put": {
                    "summary": "Inject faults (replaces the current ones)",
                    "operationId": "putFaults",
                    "requestBody": body("Faults"),
                    "responses": {
                        "200": ok("The faults now in effect", "Faults"),
                        "400": problem("A value out of range (`field` names it)"),
                        "422": problem("The body does not fit Faults")
                    }
                }
            }
        },
        "components": {
            "schemas": {
                "AuthorizeRequest": {
                    "type": "object",
                    "required": ["key", "orderId", "amount", "card"],
                    "additionalProperties": false,
                    "properties": {
                        "key": { "type": "string", "maxLength": 200, "description": "Idempotency key (accounting: `<orderId>:<attempt>`)." },
                        "orderId": { "type": "string" },
                        "amount": { "type": "string", "pattern": "^[0-9]+(\\.[0-9]{1,2})?$", "example": "12.50" },
                        "card": { "type": "string", "pattern": "^[0-9]{12,19}$" }
                    }
                },
                "NetworkCancelRequest": {
                    "type": "object",
                    "required": ["key"],
                    "additionalProperties": false,
                    "properties": {
                        "key": { "type": "string", "maxLength": 200 },
                        "orderId": { "type": "string", "description": "Recorded on a tombstone." }
                    }
                },
                "NetworkCancelled": {
                    "type": "object",
                    "required": ["key", "action", "authorization"],
                    "properties": {
                        "key": { "type": "string" },
                        "action": { "type": "string", "enum": ["VOIDED", "TOMBSTONED", "NONE"] },
                        "authorization": { "$ref": "#/components/schemas/Authorization" }
                    }
                },
                "Authorization": {
                    "type": "object",
                    "required": ["id", "key", "network", "status", "feeBps"],
                    "properties": {
                        "id": { "type": "string" },
                        "key": { "type": "string" },
                        "network": { "type": "string" },
                        "orderId": { "type": "string", "nullable": true },
                        "amount": { "type": "string", "nullable": true, "description": "null for a tombstone." },
                        "cardLast4": { "type": "string", "nullable": true },
                        "status": { "type": "string", "enum": ["APPROVED", "DECLINED", "CANCELLED", "VOIDED"] },
                        "reason": { "type": "string", "description": "CARD_DECLINED, CANCELLED, NETWORK_CANCELLED or VOIDED_BEFORE_ARRIVAL." },
                        "feeBps": { "type": "integer" }
                    }
                },
                "Faults": {
                    "type": "object",
                    "additionalProperties": false,
                    "properties": {
                        "errorRate": { "type": "number", "minimum": 0, "maximum": 1, "default": 0 },
                        "latencyMs": { "type": "integer", "minimum": 0, "maximum": 60000, "default": 0 },
                        "operations": {
                            "type": "array",
                            "items": { "type": "string", "enum": ["authorize", "cancel", "network-cancel"] },
                            "default": ["authorize"]
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
                        "key": { "type": "string", "description": "The idempotency key (409)." }
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
