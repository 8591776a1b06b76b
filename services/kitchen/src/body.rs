//! The JSON request body extractor: axum's `Json` conventions (malformed JSON → 400, no
//! `content-type: application/json` → 415, both rewritten as problem+json by the chassis),
//! plus 422 problems for a body that is not a JSON object and for JSON that does not fit
//! the request type, naming the offending field (`"field": "readyBy"`).

use keel_chassis::{
    Problem,
    axum::{
        Json,
        extract::{FromRequest, Request},
        http::StatusCode,
        response::{IntoResponse, Response},
    },
};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// A request body of type `T`.
#[derive(Debug)]
pub(crate) struct Body<T>(pub(crate) T);

impl<S, T> FromRequest<S> for Body<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(value) = Json::<Value>::from_request(req, state)
            .await
            .map_err(IntoResponse::into_response)?;
        // serde would read a struct from an array too (`["…"]`): only objects are bodies.
        if !value.is_object() {
            return Err(Problem::new(StatusCode::UNPROCESSABLE_ENTITY)
                .with_detail("the request body must be a JSON object")
                .with_extension("field", "body")
                .into_response());
        }
        serde_path_to_error::deserialize(value)
            .map(Body)
            .map_err(|e| shape_problem(&e).into_response())
    }
}

/// A 422 problem for JSON of the wrong shape, naming the field.
fn shape_problem(e: &serde_path_to_error::Error<serde_json::Error>) -> Problem {
    let message = e.inner().to_string();
    let mut field = match e.path().to_string() {
        p if p == "." => String::new(),
        p => p,
    };
    // A missing field is reported on its parent (an unknown one, depending on the type,
    // on itself or its parent): name the field itself.
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
    let field = if field.is_empty() {
        "body".to_owned()
    } else {
        field
    };
    Problem::new(StatusCode::UNPROCESSABLE_ENTITY)
        .with_detail(detail)
        .with_extension("field", field)
}

/// A 400 problem about one field that parsed but is not acceptable.
pub(crate) fn invalid(field: &str, detail: impl Into<String>) -> Problem {
    Problem::bad_request(detail).with_extension("field", field)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    #[allow(dead_code)]
    struct Accept {
        ready_by: String,
    }

    fn field_of(v: Value) -> String {
        let e = serde_path_to_error::deserialize::<_, Accept>(v).unwrap_err();
        shape_problem(&e).extensions["field"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    #[test]
    fn names_the_field() {
        assert_eq!(field_of(serde_json::json!({})), "readyBy");
        assert_eq!(field_of(serde_json::json!({"readyBy": 5})), "readyBy");
        assert_eq!(field_of(serde_json::json!({"readyBy": "x", "y": 1})), "y");
        assert_eq!(field_of(serde_json::json!([])), "body");
    }
}
