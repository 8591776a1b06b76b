//! JWT verification for Keel's edge: compact JWS tokens signed with HMAC, RSA, ECDSA or Ed25519 keys from configuration or a cached JWKS URL, with `exp`/`nbf`/`iss`/`aud` and role checks.
//!
//! ```no_run
//! # async fn demo(header: &str) -> Result<(), Box<dyn std::error::Error>> {
//! use keel_jwt::{Requirements, Verifier, bearer};
//!
//! let verifier = Verifier::from_value(&serde_json::json!({
//!     "jwks_uri": "http://127.0.0.1:8180/realms/shop/protocol/openid-connect/certs",
//!     "issuer": "http://127.0.0.1:8180/realms/shop",
//!     "audiences": "shop-api",
//!     "roles_claim": "realm_access.roles",
//! }))?;
//! let token = bearer(header).ok_or("no bearer token")?;   // → 401
//! let claims = verifier.verify(token).await?;              // JwtError → 401 (503)
//! let admin = Requirements { roles: vec!["admin".into()], ..Requirements::default() };
//! verifier.authorize(&claims, &admin)?;                    // Forbidden → 403
//! # Ok(()) }
//! ```
//!
//! Verification order: the header is decoded and `alg: none` or an unknown algorithm is
//! refused; keys are chosen by `kid` (keys without a `kid` are tried for any token) and
//! must fit the algorithm — an RSA or EC public key never verifies an HMAC token, which
//! closes the algorithm-confusion attack; the signature is checked; only then is the
//! payload decoded and `exp`, `nbf` (with leeway), `iss` and `aud` checked.
//!
//! The configuration shape, algorithms and errors are described in this crate's
//! `README.md`.

mod alg;
mod claims;
mod config;
mod der;
mod error;
mod jwks;
mod key;
mod token;
mod verifier;

pub use alg::{Algorithm, UnknownAlgorithm};
pub use claims::{Requirements, claim, roles};
pub use config::{JwtConfig, KeyConfig};
pub use error::{ConfigError, Forbidden, JwtError};
pub use jwks::{BoxFuture, HttpFetcher, JwksFetcher, JwksStatus};
pub use verifier::Verifier;

/// A verified token's claims (the JSON payload object).
pub type Claims = serde_json::Map<String, serde_json::Value>;

/// The token in an `Authorization` header value of the `Bearer` scheme (RFC 6750; the
/// scheme name is case-insensitive), or `None` for another scheme, no token, or a value
/// that cannot be a token (containing spaces, commas or quotes).
pub fn bearer(header_value: &str) -> Option<&str> {
    let value = header_value.trim();
    let (scheme, rest) = value.split_once([' ', '\t'])?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim();
    let valid = !token.is_empty()
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b));
    valid.then_some(token)
}

#[cfg(test)]
mod tests {
    use super::bearer;

    #[test]
    fn bearer_header() {
        assert_eq!(bearer("Bearer abc.def.ghi"), Some("abc.def.ghi"));
        assert_eq!(bearer("bearer   abc-_.x "), Some("abc-_.x"));
        assert_eq!(bearer("BEARER a"), Some("a"));
        assert_eq!(bearer("Bearer"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Basic dXNlcjpwYXNz"), None);
        assert_eq!(bearer("Bearer a b"), None);
        assert_eq!(bearer("Bearer a,b"), None);
        assert_eq!(bearer("Bearerabc"), None);
        assert_eq!(bearer(""), None);
    }
}
