//! Authentication at the edge: the `JWT` filter verifies the bearer token with the gateway's
//! verifier (`gateway.jwt`, or Spring Security's resource-server settings), checks the route's
//! required claims and roles, and forwards verified claims as headers. Headers of those names
//! sent by the client are removed first, so they cannot be forged.
//!
//! ```yaml
//! filters:
//!   - name: JWT
//!     args:
//!       roles: [admin, ops]          # any one of them (all-roles: true for every one)
//!       claims: { tenant: acme }     # required claim values
//!       headers: { sub: X-User-Id }  # claim → header (default: sub → X-Auth-Subject, roles → X-Auth-Roles)
//! ```

use std::sync::Arc;

use http::{HeaderName, HeaderValue, Response, StatusCode, header};
use keel_jwt::{Claims, JwtError, Requirements, Verifier};
use serde_json::Value;

use crate::{
    body::Body,
    config::Args,
    exchange::Exchange,
    problem::{GatewayProblem, types},
};

/// A route's JWT filter.
#[derive(Debug, Clone)]
pub(crate) struct JwtPolicy {
    verifier: Arc<Verifier>,
    requirements: Requirements,
    /// Claim path → header forwarded upstream; the special path `roles` forwards the roles.
    headers: Vec<(String, HeaderName)>,
}

impl JwtPolicy {
    pub(crate) fn build(args: &Args, verifier: Option<&Arc<Verifier>>) -> Result<Self, String> {
        let verifier = verifier
            .ok_or("the JWT filter needs `gateway.jwt` (keys or a JWKS URL) or Spring Security's `spring.security.oauth2.resourceserver.jwt`")?
            .clone();
        let roles = args.list(usize::MAX, "roles");
        let all_roles = match args.get(usize::MAX, "all_roles") {
            Some(v) => crate::config::spec::boolean(v).map_err(|e| format!("`all-roles`: {e}"))?,
            None => false,
        };
        let claims = match args.get(usize::MAX, "claims") {
            None => Default::default(),
            Some(Value::Object(m)) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            Some(other) => return Err(format!("`claims` must be a map, got {other}")),
        };
        let headers = match args.get(usize::MAX, "headers") {
            None => vec![
                ("sub".to_owned(), HeaderName::from_static("x-auth-subject")),
                ("roles".to_owned(), HeaderName::from_static("x-auth-roles")),
            ],
            Some(Value::Object(m)) => m
                .iter()
                .map(|(claim, h)| {
                    let name = h
                        .as_str()
                        .and_then(|h| HeaderName::from_bytes(h.trim().as_bytes()).ok())
                        .ok_or_else(|| format!("`headers.{claim}`: {h} is not a header name"))?;
                    Ok((claim.clone(), name))
                })
                .collect::<Result<_, String>>()?,
            Some(other) => {
                return Err(format!(
                    "`headers` must map claims to header names, got {other}"
                ));
            }
        };
        Ok(Self {
            verifier,
            requirements: Requirements {
                claims,
                roles,
                all_roles,
            },
            headers,
        })
    }

    /// Verifies the request's token; `Err` is the 401/403/503 answer.
    pub(crate) async fn apply(
        &self,
        ex: &mut Exchange,
        route: &str,
    ) -> Result<(), Box<Response<Body>>> {
        for (_, h) in &self.headers {
            ex.headers.remove(h);
        }
        let token = ex
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(keel_jwt::bearer);
        let Some(token) = token else {
            return Err(unauthorized(
                route,
                &ex.path,
                "a bearer token is required",
                "invalid_request",
            ));
        };
        let claims = match self.verifier.verify(token).await {
            Ok(c) => c,
            Err(e @ JwtError::JwksUnavailable(_)) => {
                tracing::warn!(route, error = %e, "cannot verify tokens: key set unavailable");
                return Err(Box::new(
                    GatewayProblem::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        types::UNAUTHORIZED,
                        "the token cannot be verified right now",
                    )
                    .route(route)
                    .instance(&ex.path)
                    .into_response(),
                ));
            }
            Err(e) => {
                return Err(unauthorized(
                    route,
                    &ex.path,
                    &e.to_string(),
                    "invalid_token",
                ));
            }
        };
        if let Err(f) = self.verifier.authorize(&claims, &self.requirements) {
            return Err(Box::new(
                GatewayProblem::new(StatusCode::FORBIDDEN, types::FORBIDDEN, f.to_string())
                    .route(route)
                    .instance(&ex.path)
                    .into_response(),
            ));
        }
        for (claim, h) in &self.headers {
            let text = if claim == "roles" {
                Some(self.verifier.roles(&claims).join(","))
            } else {
                claim_text(&claims, claim)
            };
            if let Some(v) = text.and_then(|t| HeaderValue::from_str(&t).ok()) {
                ex.headers.insert(h.clone(), v);
            }
        }
        ex.claims = Some(Arc::new(claims));
        Ok(())
    }
}

fn claim_text(claims: &Claims, path: &str) -> Option<String> {
    let v = keel_jwt::claim(claims, path)?;
    Some(match v {
        Value::String(s) => s.clone(),
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    })
}

fn unauthorized(route: &str, path: &str, detail: &str, error: &str) -> Box<Response<Body>> {
    let mut res = GatewayProblem::new(StatusCode::UNAUTHORIZED, types::UNAUTHORIZED, detail)
        .route(route)
        .instance(path)
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("Bearer error=\"{error}\"")) {
        res.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    Box::new(res)
}
