//! The crate's errors: [`JwtError`] (the token is not accepted), [`Forbidden`] (it is
//! valid but lacks a required claim or role) and [`ConfigError`] (bad configuration).
//!
//! `Display` texts are written to be shown to the caller in a 401/403 problem detail:
//! they never contain the token or a secret.

/// Why a token was not accepted. Every variant but [`JwksUnavailable`](Self::JwksUnavailable)
/// is the caller's fault (401); that one is the identity provider's (503).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtError {
    /// Not a compact JWS (`header.payload.signature` in base64url with JSON inside).
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The header says `alg: none`: unsigned tokens are never accepted.
    #[error("unsigned tokens (alg \"none\") are not accepted")]
    AlgNone,
    /// The header's `alg` is not a supported algorithm (or the header uses `crit`
    /// extensions this crate does not understand).
    #[error("unsupported token algorithm")]
    UnsupportedAlgorithm,
    /// No configured key may verify the header's algorithm — e.g. an `HS256` token when
    /// only RSA keys are configured (the "algorithm confusion" attack ends here).
    #[error("token algorithm {alg} is not accepted by any configured key")]
    AlgorithmNotAllowed {
        /// The token's algorithm.
        alg: crate::Algorithm,
    },
    /// No key has the token's `kid` (after refetching the JWKS when that was allowed).
    #[error("no verification key matches the token's key id")]
    UnknownKey {
        /// The token's `kid`, for logs (not shown in the message).
        kid: Option<String>,
    },
    /// The signature does not verify with the selected key(s).
    #[error("invalid token signature")]
    BadSignature,
    /// `exp` is in the past (beyond the leeway).
    #[error("token has expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("token is not valid yet")]
    NotYetValid,
    /// `iss` is missing or is not the configured issuer.
    #[error("token issuer is not accepted")]
    WrongIssuer,
    /// `aud` is missing or names none of the configured audiences.
    #[error("token audience is not accepted")]
    WrongAudience,
    /// A registered claim has the wrong type (`exp` that is not a number, …), or a
    /// required one (`exp` by default) is missing.
    #[error("token claim `{0}` is missing or invalid")]
    InvalidClaim(&'static str),
    /// The JWKS could not be fetched and no earlier copy is available.
    #[error("signing keys are unavailable: {0}")]
    JwksUnavailable(String),
}

impl JwtError {
    /// The HTTP status to answer with: 503 for [`JwksUnavailable`](Self::JwksUnavailable),
    /// 401 for everything else.
    pub fn status(&self) -> u16 {
        match self {
            JwtError::JwksUnavailable(_) => 503,
            _ => 401,
        }
    }

    /// A short stable code, for metric labels and logs (`expired`, `bad_signature`, …).
    pub fn code(&self) -> &'static str {
        match self {
            JwtError::Malformed(_) => "malformed",
            JwtError::AlgNone => "alg_none",
            JwtError::UnsupportedAlgorithm => "unsupported_algorithm",
            JwtError::AlgorithmNotAllowed { .. } => "algorithm_not_allowed",
            JwtError::UnknownKey { .. } => "unknown_key",
            JwtError::BadSignature => "bad_signature",
            JwtError::Expired => "expired",
            JwtError::NotYetValid => "not_yet_valid",
            JwtError::WrongIssuer => "wrong_issuer",
            JwtError::WrongAudience => "wrong_audience",
            JwtError::InvalidClaim(_) => "invalid_claim",
            JwtError::JwksUnavailable(_) => "jwks_unavailable",
        }
    }
}

/// A verified token lacks what a route requires (403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Forbidden {
    /// A required claim is absent.
    #[error("token lacks the required claim `{claim}`")]
    MissingClaim {
        /// The claim path, as configured.
        claim: String,
    },
    /// A required claim has another value.
    #[error("token claim `{claim}` does not have a required value")]
    ClaimMismatch {
        /// The claim path, as configured.
        claim: String,
    },
    /// None (or, with `all_roles`, not all) of the required roles are held.
    #[error("token lacks the required role ({})", .required.join(if *.all { " and " } else { " or " }))]
    MissingRole {
        /// The required roles, as configured.
        required: Vec<String>,
        /// Whether all of them were required.
        all: bool,
    },
}

/// Invalid configuration, naming the field (`keys[1].pem_file: cannot read …`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// The dotted path of the offending field (`jwks_uri`, `keys[0].alg`, …).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages() {
        assert_eq!(JwtError::Expired.to_string(), "token has expired");
        assert_eq!(JwtError::JwksUnavailable("x".into()).status(), 503);
        assert_eq!(JwtError::BadSignature.status(), 401);
        let f = Forbidden::MissingRole {
            required: vec!["admin".into(), "ops".into()],
            all: false,
        };
        assert_eq!(
            f.to_string(),
            "token lacks the required role (admin or ops)"
        );
        assert_eq!(
            ConfigError::new("keys[1].pem_file", "cannot read x").to_string(),
            "keys[1].pem_file: cannot read x"
        );
    }
}
