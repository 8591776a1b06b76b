//! The JSON request body extractor of Keel APIs: [`JsonBody`].
//!
//! It follows axum's `Json` conventions — malformed JSON → 400, no
//! `content-type: application/json` → 415 (both rewritten as problem+json by the chassis) —
//! and answers JSON that does not fit the request type with a 422 problem whose `field`
//! extension names the offending field (`"field": "lineItems[0].quantity"`), found with
//! `serde_path_to_error`. A body that is not a JSON object is a 422 on `"field": "body"`
//! ([`LenientJsonBody`] lets serde read a struct from an array too).
//!
//! ```
//! use keel_chassis::json::{JsonBody, invalid_field};
//! use keel_chassis::ApiResult;
//!
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct NewThing {
//!     name: String,
//! }
//!
//! async fn create(JsonBody(req): JsonBody<NewThing>) -> ApiResult<String> {
//!     if req.name.is_empty() {
//!         return Err(invalid_field("name", "name must not be empty"));
//!     }
//!     Ok(req.name)
//! }
//! ```

use axum::{
    Json,
    extract::{FromRequest, Request},
    response::{IntoResponse, Response},
};
use http::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::Problem;

/// A request body of type `T`, read from a JSON object (see the [module](self) docs for the
/// problems it answers with); any other JSON value is a 422 on `"field": "body"`.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonBody<T>(pub T);

/// Like [`JsonBody`], but hands any JSON value to serde as it is: a struct may then also
/// come as an array of its fields, and a wrong one is named by its index (`"field": "[0]"`).
#[derive(Debug, Clone, Copy, Default)]
pub struct LenientJsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        read(req, state, true).await.map(JsonBody)
    }
}

impl<S, T> FromRequest<S> for LenientJsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        read(req, state, false).await.map(LenientJsonBody)
    }
}

async fn read<S, T>(req: Request, state: &S, object_only: bool) -> Result<T, Response>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    let Json(value) = Json::<Value>::from_request(req, state)
        .await
        .map_err(IntoResponse::into_response)?;
    // serde would read a struct from an array too (`["Ada"]`): only objects are bodies.
    if object_only && !value.is_object() {
        return Err(Problem::new(StatusCode::UNPROCESSABLE_ENTITY)
            .with_detail("the request body must be a JSON object")
            .with_extension("field", "body")
            .into_response());
    }
    serde_path_to_error::deserialize(value).map_err(|e| shape_problem(&e).into_response())
}

/// A 422 problem for JSON of the wrong shape, naming the field (`menu[1].price`; `body`
/// when it is the body as a whole).
pub fn shape_problem(e: &serde_path_to_error::Error<serde_json::Error>) -> Problem {
    let message = e.inner().to_string();
    let mut field = match e.path().to_string() {
        p if p == "." => String::new(),
        p => p,
    };
    // A missing field is reported on its parent (an unknown one, depending on the type, on
    // itself or its parent): name the field itself.
    for prefix in ["missing field `", "unknown field `"] {
        if let Some(rest) = message.strip_prefix(prefix)
            && let Some((name, _)) = rest.split_once('`')
            && field.rsplit('.').next() != Some(name)
        {
            if !field.is_empty() {
                field.push('.');
            }
            field.push_str(name);
        }
    }
    let detail = if field.is_empty() {
        format!("the request body does not fit: {message}")
    } else {
        format!("{field}: {message}")
    };
    if field.is_empty() {
        field = "body".to_owned();
    }
    Problem::new(StatusCode::UNPROCESSABLE_ENTITY)
        .with_detail(detail)
        .with_extension("field", field)
}

/// A 400 problem about one field that parsed but is not acceptable (`"field": "name"`).
pub fn invalid_field(field: &str, detail: impl Into<String>) -> Problem {
    Problem::bad_request(detail).with_extension("field", field)
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use http::header::CONTENT_TYPE;
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    #[allow(dead_code)]
    struct Outer {
        line_items: Vec<Inner>,
    }
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        quantity: u32,
    }

    async fn extract(content_type: Option<&str>, body: &str) -> Result<Outer, Response> {
        let mut req = Request::builder().method("POST").uri("/");
        if let Some(ct) = content_type {
            req = req.header(CONTENT_TYPE, ct);
        }
        let req = req.body(Body::from(body.to_owned())).unwrap();
        JsonBody::<Outer>::from_request(req, &()).await.map(|b| b.0)
    }

    async fn problem(resp: Response) -> (StatusCode, Value) {
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    const JSON: Option<&str> = Some("application/json");

    #[tokio::test]
    async fn reads_a_fitting_body() {
        let body = extract(JSON, r#"{"lineItems": [{"quantity": 2}]}"#)
            .await
            .unwrap();
        assert_eq!(body.line_items[0].quantity, 2);
    }

    #[tokio::test]
    async fn malformed_json_is_400() {
        let resp = extract(JSON, r#"{"lineItems": ["#).await.unwrap_err();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn wrong_content_type_is_415() {
        let resp = extract(Some("text/plain"), "{}").await.unwrap_err();
        assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let resp = extract(None, "{}").await.unwrap_err();
        assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }

    #[tokio::test]
    async fn wrong_shape_is_422_naming_the_field() {
        for (body, field) in [
            ("{}", "lineItems"),
            (r#"{"lineItems": [{}]}"#, "lineItems[0].quantity"),
            (
                r#"{"lineItems": [{"quantity": 1}, {"quantity": -1}]}"#,
                "lineItems[1].quantity",
            ),
            (
                r#"{"lineItems": [{"quantity": 1.5}]}"#,
                "lineItems[0].quantity",
            ),
            (r#"{"lineItems": [], "x": 1}"#, "x"),
            (
                r#"{"lineItems": [{"quantity": 1, "y": 2}]}"#,
                "lineItems[0].y",
            ),
            (r#"["a"]"#, "body"),
            (r#""text""#, "body"),
        ] {
            let resp = extract(JSON, body).await.unwrap_err();
            let (status, problem) = problem(resp).await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
            assert_eq!(problem["status"], 422, "{body}");
            assert_eq!(problem["field"], field, "{body}");
        }
    }

    #[tokio::test]
    async fn the_lenient_body_names_array_elements() {
        let req = |body: &str| {
            Request::builder()
                .method("POST")
                .header(CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_owned()))
                .unwrap()
        };
        let ok = LenientJsonBody::<Outer>::from_request(req(r#"[[{"quantity": 3}]]"#), &())
            .await
            .unwrap();
        assert_eq!(ok.0.line_items[0].quantity, 3);
        for (body, field) in [(r#"[{"quantity": 1}]"#, "[0]"), (r#""text""#, "body")] {
            let resp = LenientJsonBody::<Outer>::from_request(req(body), &())
                .await
                .unwrap_err();
            let (status, problem) = problem(resp).await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
            assert_eq!(problem["field"], field, "{body}");
        }
    }

    #[test]
    fn invalid_field_is_400_naming_the_field() {
        let p = invalid_field("name", "name must not be empty");
        assert_eq!(p.status, 400);
        assert_eq!(p.extensions["field"], "name");
        assert_eq!(p.detail.as_deref(), Some("name must not be empty"));
    }
}
