//! `GET /openapi.json`: the order history's API as an OpenAPI 3.0 document.

use keel_chassis::axum::Json;
use serde_json::{Value, json};

fn problem(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } }
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
    let token = json!({"$ref": "#/components/parameters/ConsistencyToken"});
    let token_header = json!({"$ref": "#/components/parameters/ConsistencyTokenHeader"});
    let behind = problem(
        "The view did not reach the consistency token within the configured wait: `position` is the order's version in the view (null: its creation has not arrived), `wanted` the token's.",
    );
    let list = json!({
        "get": {
            "summary": "A consumer's order history, newest first",
            "operationId": "listOrders",
            "parameters": [
                {"name": "consumerId", "in": "query", "required": true, "schema": {"type": "string"}},
                {"name": "state", "in": "query", "schema": {"$ref": "#/components/schemas/OrderState"}},
                {"name": "restaurantId", "in": "query", "schema": {"type": "string"}},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}},
                {"name": "cursor", "in": "query", "description": "The previous page's nextCursor.", "schema": {"type": "string"}},
                token, token_header
            ],
            "responses": {
                "200": ok("A page of orders", "Page"),
                "400": problem("A parameter is missing, unknown, repeated or not acceptable; `field` names it"),
                "409": behind,
                "503": problem("The view's database failed; retry")
            }
        }
    });
    let one = json!({
        "get": {
            "summary": "One order as the view has it",
            "operationId": "getOrder",
            "parameters": [
                {"name": "orderId", "in": "path", "required": true, "schema": {"type": "string"}},
                token, token_header
            ],
            "responses": {
                "200": ok("The order", "Order"),
                "400": problem("Malformed consistency token (`field: consistencyToken`) or unknown parameter"),
                "404": problem("No order event of this order has reached the view"),
                "409": behind,
                "503": problem("The view's database failed; retry")
            }
        }
    });
    let dashboard = json!({
        "get": {
            "summary": "Orders by state and revenue",
            "operationId": "dashboard",
            "parameters": [
                {"name": "restaurantId", "in": "query", "description": "Only this restaurant's orders.", "schema": {"type": "string"}},
                token, token_header
            ],
            "responses": {
                "200": ok("The figures", "Dashboard"),
                "400": problem("A parameter is unknown, blank or malformed; `field` names it"),
                "409": behind,
                "503": problem("The view's database failed; retry")
            }
        }
    });
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Order history",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The reference system's CQRS read model: one row per order, built only from the events of order, kitchen, accounting and delivery (idempotent, order-tolerant, rebuildable by replaying). Queries given the consistency token an order command returned wait until the view has caught up, or answer 409. The query routes are also served under /history. Errors are application/problem+json."
        },
        "paths": {
            "/orders": list.clone(),
            "/history/orders": list,
            "/orders/{orderId}": one.clone(),
            "/history/orders/{orderId}": one,
            "/dashboard": dashboard.clone(),
            "/history/dashboard": dashboard,
            "/admin/view": {
                "get": {
                    "summary": "The view's generation and the consumer group feeding it",
                    "operationId": "viewStatus",
                    "responses": { "200": { "description": "`{generation, group, destinations}`" } }
                }
            },
            "/admin/rebuild": {
                "post": {
                    "summary": "Rebuild the view by replaying every retained event",
                    "description": "Stops the consumers, empties the view and starts the next generation, whose new consumer group starts at the oldest retained message of each destination. Returns once replay has begun.",
                    "operationId": "rebuild",
                    "responses": {
                        "202": { "description": "`{generation, group, status}`" },
                        "403": problem("app.admin_endpoints is false"),
                        "503": problem("The database or the bus failed")
                    }
                }
            }
        },
        "components": {
            "parameters": {
                "ConsistencyToken": {
                    "name": "consistencyToken", "in": "query",
                    "description": "`<orderId>:<version>` as POST /orders or POST /orders/{id}/cancel returned it: wait until the view has applied it.",
                    "schema": {"type": "string", "example": "0190c0ffee0000000000000000000001:1"}
                },
                "ConsistencyTokenHeader": {
                    "name": "Keel-Consistency-Token", "in": "header",
                    "description": "The same, as a header (must agree with the parameter when both are given).",
                    "schema": {"type": "string"}
                }
            },
            "schemas": {
                "OrderState": {"type": "string", "enum": ["APPROVAL_PENDING", "APPROVED", "REJECTED", "CANCEL_PENDING", "CANCELLED"]},
                "Money": {"type": "string", "pattern": "^[0-9]+\\.[0-9]{2}$", "example": "12.50"},
                "Page": {
                    "type": "object",
                    "required": ["orders"],
                    "properties": {
                        "orders": {"type": "array", "items": {"$ref": "#/components/schemas/Order"}},
                        "nextCursor": {"type": "string", "description": "Absent on the last page."}
                    }
                },
                "Order": {
                    "type": "object",
                    "required": ["orderId", "version"],
                    "description": "Parts whose events have not arrived are null.",
                    "properties": {
                        "orderId": {"type": "string"},
                        "consumerId": {"type": "string", "nullable": true},
                        "restaurantId": {"type": "string", "nullable": true},
                        "state": {"allOf": [{"$ref": "#/components/schemas/OrderState"}], "nullable": true},
                        "rejectionReason": {"type": "string"},
                        "cancellationFailure": {"type": "string", "description": "Why the last cancellation failed (the order is APPROVED again)."},
                        "orderTotal": {"allOf": [{"$ref": "#/components/schemas/Money"}], "nullable": true},
                        "lineItems": {"type": "array", "nullable": true, "items": {"type": "object"}},
                        "deliveryAddress": {"type": "string"},
                        "deliveryTime": {"type": "string"},
                        "version": {"type": "integer", "description": "The highest order version applied."},
                        "ticket": {"type": "object", "nullable": true, "properties": {"ticketId": {"type": "string"}, "state": {"type": "string"}, "readyBy": {"type": "string"}}},
                        "payment": {"type": "object", "nullable": true, "properties": {"status": {"type": "string", "enum": ["AUTHORIZED", "DECLINED", "REVERSED"]}, "network": {"type": "string"}, "authorizationId": {"type": "string"}, "amount": {"$ref": "#/components/schemas/Money"}, "declineReason": {"type": "string"}}},
                        "delivery": {"type": "object", "nullable": true, "properties": {"status": {"type": "string", "enum": ["PENDING", "SCHEDULED", "CANCELLED"]}, "pickupTime": {"type": "string"}, "courierId": {"type": "string"}}}
                    }
                },
                "Dashboard": {
                    "type": "object",
                    "required": ["orders", "byState", "revenue", "awaitingOrderEvents"],
                    "properties": {
                        "orders": {"type": "integer"},
                        "byState": {"type": "object", "additionalProperties": {"type": "integer"}},
                        "revenue": {"allOf": [{"$ref": "#/components/schemas/Money"}], "description": "Sum of the totals of APPROVED and CANCEL_PENDING orders."},
                        "awaitingOrderEvents": {"type": "integer", "description": "Rows only other services' events have created so far."}
                    }
                },
                "Problem": {
                    "type": "object",
                    "description": "RFC 9457 problem details.",
                    "required": ["type", "title", "status"],
                    "properties": {
                        "type": {"type": "string"},
                        "title": {"type": "string"},
                        "status": {"type": "integer"},
                        "detail": {"type": "string"},
                        "field": {"type": "string", "description": "The offending parameter (400)."},
                        "position": {"type": "integer", "nullable": true, "description": "409: the view's version of the order."},
                        "wanted": {"type": "integer", "description": "409: the token's version."}
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
