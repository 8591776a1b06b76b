//! Splitting and decoding a compact JWS (`header.payload.signature`).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

use crate::Claims;
use crate::alg::Algorithm;
use crate::error::JwtError;

/// Tokens longer than this are refused before any decoding.
pub(crate) const MAX_TOKEN_LEN: usize = 16 * 1024;

/// A token whose header is decoded; the payload is decoded only after the signature
/// verifies.
#[derive(Debug)]
pub(crate) struct Parsed<'t> {
    pub(crate) alg: Algorithm,
    pub(crate) kid: Option<String>,
    /// `header.payload`, the bytes the signature covers.
    pub(crate) signing_input: &'t [u8],
    payload_b64: &'t str,
    pub(crate) signature: Vec<u8>,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
}

fn b64(part: &str, what: &'static str) -> Result<Vec<u8>, JwtError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwtError::Malformed(what))
}

/// Splits `token` and decodes its header; refuses `none` and unknown algorithms.
pub(crate) fn parse(token: &str) -> Result<Parsed<'_>, JwtError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtError::Malformed("token is too long"));
    }
    let mut parts = token.splitn(4, '.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed("expected three dot-separated parts"));
    };
    if h.is_empty() || p.is_empty() {
        return Err(JwtError::Malformed("empty header or payload"));
    }
    let header: Header = serde_json::from_slice(&b64(h, "header is not base64url")?)
        .map_err(|_| JwtError::Malformed("header is not a JSON object with `alg`"))?;
    if header.alg.eq_ignore_ascii_case("none") {
        return Err(JwtError::AlgNone);
    }
    // RFC 7515 §4.1.11: a recipient that does not understand a listed critical
    // extension must reject the token; this crate understands none.
    if header.crit.is_some() {
        return Err(JwtError::UnsupportedAlgorithm);
    }
    let alg = header
        .alg
        .parse::<Algorithm>()
        .map_err(|_| JwtError::UnsupportedAlgorithm)?;
    if s.is_empty() {
        return Err(JwtError::Malformed("missing signature"));
    }
    let signature = b64(s, "signature is not base64url")?;
    Ok(Parsed {
        alg,
        kid: header.kid,
        signing_input: &token.as_bytes()[..h.len() + 1 + p.len()],
        payload_b64: p,
        signature,
    })
}

impl Parsed<'_> {
    /// Decodes the payload (call only after the signature verified).
    pub(crate) fn claims(&self) -> Result<Claims, JwtError> {
        serde_json::from_slice(&b64(self.payload_b64, "payload is not base64url")?)
            .map_err(|_| JwtError::Malformed("payload is not a JSON object"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn shapes() {
        let h = enc(r#"{"alg":"HS256","kid":"k"}"#);
        let p = enc(r#"{"sub":"a"}"#);
        let t = format!("{h}.{p}.AAAA");
        let parsed = parse(&t).unwrap();
        assert_eq!(parsed.alg, Algorithm::HS256);
        assert_eq!(parsed.kid.as_deref(), Some("k"));
        assert_eq!(parsed.signing_input, format!("{h}.{p}").as_bytes());
        assert_eq!(parsed.claims().unwrap()["sub"], "a");

        let m = |t: &str| parse(t).unwrap_err();
        assert!(matches!(m(""), JwtError::Malformed(_)));
        assert!(matches!(m("a.b"), JwtError::Malformed(_)));
        assert!(matches!(
            m(&format!("{h}.{p}.AAAA.x")),
            JwtError::Malformed(_)
        ));
        assert!(matches!(
            m(&format!("{h}.{p}.")),
            JwtError::Malformed("missing signature")
        ));
        assert!(matches!(
            m(&format!("{h}.{p}.AA==")),
            JwtError::Malformed(_)
        ));
        assert!(matches!(m(&format!("%%.{p}.AAAA")), JwtError::Malformed(_)));
        assert!(matches!(
            m(&format!("{}.{p}.AAAA", enc("[1]"))),
            JwtError::Malformed(_)
        ));
        assert!(matches!(
            m(&format!(
                "{}.{p}.AAAA",
                enc(r#"{"alg":"HS256","alg":"none"}"#)
            )),
            JwtError::Malformed(_)
        ));
        assert_eq!(
            m(&format!("{}.{p}.", enc(r#"{"alg":"none"}"#))),
            JwtError::AlgNone
        );
        assert_eq!(
            m(&format!("{}.{p}.AAAA", enc(r#"{"alg":"nOnE"}"#))),
            JwtError::AlgNone
        );
        assert_eq!(
            m(&format!("{}.{p}.AAAA", enc(r#"{"alg":"ES512"}"#))),
            JwtError::UnsupportedAlgorithm
        );
        assert_eq!(
            m(&format!(
                "{}.{p}.AAAA",
                enc(r#"{"alg":"HS256","crit":["exp"]}"#)
            )),
            JwtError::UnsupportedAlgorithm
        );
        assert!(matches!(
            m(&"a".repeat(MAX_TOKEN_LEN + 1)),
            JwtError::Malformed(_)
        ));

        let bad_payload = format!("{h}.{}.AAAA", enc("[]"));
        assert!(matches!(
            parse(&bad_payload).unwrap().claims(),
            Err(JwtError::Malformed(_))
        ));
    }
}
