//! A browsable page for a service's OpenAPI document: `GET /docs` renders the document
//! the service serves at `/openapi.json` — paths, operations, parameters, request and
//! response schemas — with no external assets (the page works offline).

use axum::{Router, response::Html, routing::get};

const PAGE: &str = include_str!("openapi.html");

/// `GET /docs`: the API browser for the service's `/openapi.json`.
pub fn ui<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/docs", get(|| async { Html(PAGE) }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_page_reads_the_services_document() {
        assert!(super::PAGE.contains("openapi.json"));
        assert!(!super::PAGE.contains("https://"), "no external assets");
    }
}
