//! The order service's OpenAPI 3.0 document (`GET /openapi.json`), written by hand.

use serde_json::{Value, json};

/// The document.
pub(crate) fn document() -> Value {
    let problem = json!({"$ref": "#/components/schemas/Problem"});
    let problem_response = |description: &str| {
        json!({
            "description": description,
            "content": {"application/problem+json": {"schema": problem}}
        })
    };
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "order",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The order service of Keel's reference system: places orders (the create-order saga approves or rejects them), shows them, cancels approved ones (the cancel-order saga). States: APPROVAL_PENDING, APPROVED, REJECTED, CANCEL_PENDING, CANCELLED; the *_PENDING states are semantic locks. Every error is application/problem+json; a problem about one request field names it in `field`."
        },
        "paths": {
            "/orders": {
                "post": {
                    "operationId": "createOrder",
                    "summary": "Place an order",
                    "description": "Validates the request, prices the line items from the order service's replica of the restaurant's menu, stores the order APPROVAL_PENDING and starts the create-order saga in the same transaction. An order naming a menu item the replica does not know, or has too little stock of, is still created; the saga's first steps reject it at once with MENU_ITEM_UNAVAILABLE (the 201 then says REJECTED). Otherwise the saga validates the consumer, creates a kitchen ticket and authorizes the card; the order ends APPROVED or REJECTED with a reason.",
                    "requestBody": {
                        "required": true,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/NewOrder"}}}
                    },
                    "responses": {
                        "201": {
                            "description": "Created. `Location: /orders/{orderId}`; `Keel-Consistency-Token: <orderId>:<version>` (as in the body).",
                            "headers": {
                                "Location": {"schema": {"type": "string"}},
                                "Keel-Consistency-Token": {"$ref": "#/components/headers/ConsistencyToken"}
                            },
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OrderAccepted"}}}
                        },
                        "400": problem_response("Malformed JSON, or a field that parsed but is not acceptable (empty id, no line items, quantity below 1, blank delivery field); `field` names it."),
                        "415": problem_response("The body is not `application/json`."),
                        "422": problem_response("Well-formed JSON of the wrong shape (missing field, wrong type, unknown field; `field` names it), or a `restaurantId` the order service does not know (`field: restaurantId`)."),
                        "503": problem_response("The order database failed; retry.")
                    }
                }
            },
            "/orders/{orderId}": {
                "get": {
                    "operationId": "getOrder",
                    "summary": "Read an order",
                    "parameters": [{"$ref": "#/components/parameters/OrderId"}],
                    "responses": {
                        "200": {
                            "description": "The order.",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Order"}}}
                        },
                        "404": problem_response("No such order."),
                        "503": problem_response("The order database failed; retry.")
                    }
                }
            },
            "/orders/{orderId}/cancel": {
                "post": {
                    "operationId": "cancelOrder",
                    "summary": "Cancel an approved order",
                    "description": "Moves an APPROVED order to CANCEL_PENDING and starts the cancel-order saga (kitchen begins cancelling the ticket, accounting reverses the authorization, kitchen confirms), which ends the order CANCELLED — or, when the kitchen can no longer cancel the ticket (TicketNotCancellable), APPROVED again, with the reason in the saga (`GET /sagas/{id}`). No request body.",
                    "parameters": [{"$ref": "#/components/parameters/OrderId"}],
                    "responses": {
                        "202": {
                            "description": "Cancellation started. `Keel-Consistency-Token: <orderId>:<version>` (as in the body).",
                            "headers": {"Keel-Consistency-Token": {"$ref": "#/components/headers/ConsistencyToken"}},
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OrderAccepted"}}}
                        },
                        "404": problem_response("No such order."),
                        "409": problem_response("The order is not APPROVED (APPROVAL_PENDING, CANCEL_PENDING, REJECTED or CANCELLED): `detail` says why, `state` is its state."),
                        "503": problem_response("The order database failed; retry.")
                    }
                }
            },
            "/sagas": {
                "get": {
                    "operationId": "listSagas",
                    "summary": "List sagas, newest first",
                    "parameters": [
                        {"name": "type", "in": "query", "schema": {"type": "string", "enum": ["create-order", "cancel-order"]}},
                        {"name": "state", "in": "query", "schema": {"$ref": "#/components/schemas/SagaState"}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}}
                    ],
                    "responses": {
                        "200": {
                            "description": "Saga summaries.",
                            "content": {"application/json": {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/SagaSummary"}}}}
                        },
                        "400": problem_response("An unknown `state`.")
                    }
                }
            },
            "/sagas/{sagaId}": {
                "get": {
                    "operationId": "getSaga",
                    "summary": "A saga with its data and timeline",
                    "parameters": [{"name": "sagaId", "in": "path", "required": true, "schema": {"type": "string"}}],
                    "responses": {
                        "200": {
                            "description": "The saga: its summary, its data (CreateOrderData or CancelOrderData) and every step, command, reply, timeout and compensation.",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SagaDetail"}}}
                        },
                        "404": problem_response("No such saga.")
                    }
                }
            }
        },
        "components": {
            "parameters": {
                "OrderId": {"name": "orderId", "in": "path", "required": true, "schema": {"type": "string"}}
            },
            "headers": {
                "ConsistencyToken": {"description": "`<orderId>:<version>`: the position of the command's last event on order.events.", "schema": {"type": "string"}}
            },
            "schemas": {
                "Money": {"type": "string", "pattern": "^[0-9]+\\.[0-9]{2}$", "example": "12.50", "description": "A decimal amount with two decimals."},
                "OrderState": {"type": "string", "enum": ["APPROVAL_PENDING", "APPROVED", "REJECTED", "CANCEL_PENDING", "CANCELLED"]},
                "RejectionReason": {"type": "string", "enum": ["UNKNOWN_CONSUMER", "ORDER_LIMIT_EXCEEDED", "MENU_ITEM_UNAVAILABLE", "PAYMENT_DECLINED"]},
                "NewOrder": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["consumerId", "restaurantId", "lineItems"],
                    "properties": {
                        "consumerId": {"type": "string", "minLength": 1},
                        "restaurantId": {"type": "string", "minLength": 1},
                        "lineItems": {
                            "type": "array",
                            "minItems": 1,
                            "items": {
                                "type": "object",
                                "additionalProperties": false,
                                "required": ["menuItemId", "quantity"],
                                "properties": {
                                    "menuItemId": {"type": "string", "minLength": 1},
                                    "quantity": {"type": "integer", "minimum": 1, "maximum": 4_294_967_295_u64}
                                }
                            }
                        },
                        "deliveryAddress": {"type": "string", "minLength": 1},
                        "deliveryTime": {"type": "string", "minLength": 1}
                    }
                },
                "OrderAccepted": {
                    "type": "object",
                    "required": ["orderId", "state", "consistencyToken"],
                    "properties": {
                        "orderId": {"type": "string"},
                        "state": {"$ref": "#/components/schemas/OrderState"},
                        "rejectionReason": {"$ref": "#/components/schemas/RejectionReason"},
                        "consistencyToken": {"type": "string", "example": "0190c0ffee0000000000000000000001:1", "description": "The position of the command's last event, `<orderId>:<version>`. Give it to the order-history view (`?consistencyToken=` or the `Keel-Consistency-Token` header) to read your own write."}
                    }
                },
                "LineItem": {
                    "type": "object",
                    "required": ["menuItemId", "name", "quantity", "price"],
                    "properties": {
                        "menuItemId": {"type": "string"},
                        "name": {"type": "string", "description": "From the menu when the order was placed; empty for an item the menu does not know."},
                        "quantity": {"type": "integer", "minimum": 1},
                        "price": {"$ref": "#/components/schemas/Money"}
                    }
                },
                "Order": {
                    "type": "object",
                    "required": ["orderId", "state", "orderTotal", "lineItems", "consumerId", "restaurantId"],
                    "properties": {
                        "orderId": {"type": "string"},
                        "state": {"$ref": "#/components/schemas/OrderState"},
                        "rejectionReason": {"$ref": "#/components/schemas/RejectionReason"},
                        "orderTotal": {"$ref": "#/components/schemas/Money"},
                        "lineItems": {"type": "array", "items": {"$ref": "#/components/schemas/LineItem"}},
                        "consumerId": {"type": "string"},
                        "restaurantId": {"type": "string"},
                        "version": {"type": "integer", "minimum": 1, "description": "1 when placed; one more after every state change (each change's event on order.events carries it)."},
                        "ticketId": {"type": "string", "description": "The kitchen ticket (once the order is approved, or rejected after the ticket was created — that ticket is cancelled)."},
                        "authorizationId": {"type": "string", "description": "The payment authorization, once approved."},
                        "deliveryAddress": {"type": "string"},
                        "deliveryTime": {"type": "string"}
                    }
                },
                "SagaState": {"type": "string", "enum": ["RUNNING", "COMPENSATING", "COMPLETED", "COMPENSATED", "FAILED"]},
                "SagaSummary": {
                    "type": "object",
                    "required": ["id", "sagaType", "state", "step", "createdAt", "updatedAt"],
                    "properties": {
                        "id": {"type": "string"},
                        "sagaType": {"type": "string"},
                        "state": {"$ref": "#/components/schemas/SagaState"},
                        "step": {"type": "integer"},
                        "error": {"type": "string"},
                        "createdAt": {"type": "integer", "description": "Epoch milliseconds."},
                        "updatedAt": {"type": "integer"},
                        "endedAt": {"type": "integer"}
                    }
                },
                "SagaDetail": {
                    "allOf": [
                        {"$ref": "#/components/schemas/SagaSummary"},
                        {
                            "type": "object",
                            "required": ["data", "timeline"],
                            "properties": {
                                "data": {"type": "object"},
                                "timeline": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["at", "kind"],
                                        "properties": {
                                            "at": {"type": "integer"},
                                            "kind": {"type": "string"},
                                            "step": {"type": "integer"},
                                            "stepName": {"type": "string"},
                                            "detail": {"type": "string"}
                                        }
                                    }
                                }
                            }
                        }
                    ]
                },
                "Problem": {
                    "type": "object",
                    "description": "RFC 9457 problem details.",
                    "properties": {
                        "type": {"type": "string"},
                        "title": {"type": "string"},
                        "status": {"type": "integer"},
                        "detail": {"type": "string"},
                        "instance": {"type": "string"},
                        "field": {"type": "string", "description": "The request field at fault (`lineItems[0].quantity`)."},
                        "orderId": {"type": "string"},
                        "state": {"$ref": "#/components/schemas/OrderState"}
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_ref_resolves() {
        let doc = super::document();
        let text = doc.to_string();
        for part in text.split("\"$ref\":\"#/components/").skip(1) {
            let path: Vec<&str> = part.split('"').next().unwrap().split('/').collect();
            assert!(
                doc["components"][path[0]][path[1]].is_object(),
                "unresolved $ref {path:?}"
            );
        }
    }
}
