//! Verification keys, parsed once: HMAC secrets, RSA, EC and Ed25519 public keys, from
//! PEM, JWK or raw bytes.

use std::fmt;

use base64::Engine as _;
use ring::{hmac, signature};
use serde_json::Value;

use crate::alg::{Algorithm, Family};
use crate::der::{self, PublicKey};

/// The smallest HMAC secret accepted, in bytes (RFC 7518 §3.2: at least the hash size;
/// Nimbus, behind Spring Security, refuses shorter than 256 bits too).
pub(crate) const MIN_HMAC_SECRET: usize = 32;

/// A key ready to verify signatures, with the `kid` and `alg` it is restricted to.
pub(crate) struct VerifyingKey {
    /// The key id tokens name in their `kid` header.
    pub(crate) kid: Option<String>,
    /// When set, the only algorithm this key verifies.
    pub(crate) alg: Option<Algorithm>,
    material: Material,
}

enum Material {
    /// One precomputed HMAC key per algorithm this key may verify.
    Hmac(Vec<(Algorithm, hmac::Key)>),
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    P256(Vec<u8>),
    P384(Vec<u8>),
    Ed25519(Vec<u8>),
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.material {
            Material::Hmac(_) => "HMAC (secret redacted)",
            Material::Rsa { .. } => "RSA",
            Material::P256(_) => "EC P-256",
            Material::P384(_) => "EC P-384",
            Material::Ed25519(_) => "Ed25519",
        };
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("kind", &kind)
            .finish()
    }
}

/// Base64url as JWKs use it: padding tolerated, since some issuers add it.
const JWK_B64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// Decodes base64 in either alphabet, with or without padding (for configured secrets).
pub(crate) fn decode_any_base64(text: &str) -> Option<Vec<u8>> {
    let cfg = base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent);
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::GeneralPurpose::new(&base64::alphabet::STANDARD, cfg)
        .decode(&compact)
        .or_else(|_| {
            base64::engine::GeneralPurpose::new(&base64::alphabet::URL_SAFE, cfg).decode(&compact)
        })
        .ok()
}

impl VerifyingKey {
    /// An HMAC key from secret bytes.
    pub(crate) fn hmac(
        secret: &[u8],
        kid: Option<String>,
        alg: Option<Algorithm>,
    ) -> Result<Self, String> {
        if secret.len() < MIN_HMAC_SECRET {
            return Err(format!(
                "HMAC secret is {} bytes; at least {MIN_HMAC_SECRET} (256 bits) are required",
                secret.len()
            ));
        }
        let algs: &[Algorithm] = match alg {
            Some(a) if a.family() == Family::Hmac => &[a][..],
            Some(a) => return Err(format!("{a} needs a public key, not an HMAC secret")),
            None => &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
        };
        let keys = algs
            .iter()
            .map(|&a| {
                let ring_alg = match a {
                    Algorithm::HS384 => hmac::HMAC_SHA384,
                    Algorithm::HS512 => hmac::HMAC_SHA512,
                    _ => hmac::HMAC_SHA256,
                };
                (a, hmac::Key::new(ring_alg, secret))
            })
            .collect();
        Ok(VerifyingKey {
            kid,
            alg,
            material: Material::Hmac(keys),
        })
    }

    /// A public key (from PEM, DER or a JWK), checked for size and for fitting `alg`.
    pub(crate) fn public(
        key: PublicKey,
        kid: Option<String>,
        alg: Option<Algorithm>,
    ) -> Result<Self, String> {
        let (material, family) = match key {
            PublicKey::Rsa { n, e } => {
                let bits = n.len() * 8 - n.first().map_or(0, |b| b.leading_zeros() as usize);
                if !(2048..=8192).contains(&bits) {
                    return Err(format!(
                        "RSA key is {bits} bits; 2048 to 8192 bits are supported"
                    ));
                }
                if e.is_empty() || e.len() > 4 || e.last().is_some_and(|b| b & 1 == 0) || e == [1] {
                    return Err("RSA key has an unsupported public exponent".to_owned());
                }
                (Material::Rsa { n, e }, Family::Rsa)
            }
            PublicKey::P256(p) => (Material::P256(p), Family::EcP256),
            PublicKey::P384(p) => (Material::P384(p), Family::EcP384),
            PublicKey::Ed25519(p) => (Material::Ed25519(p), Family::Ed25519),
        };
        if let Some(a) = alg
            && a.family() != family
        {
            return Err(match (a.family(), family) {
                (Family::Hmac, _) => {
                    format!("{a} needs a shared `secret`; a public key cannot verify HMAC tokens")
                }
                _ => format!("{a} does not fit this key's type ({})", family_name(family)),
            });
        }
        Ok(VerifyingKey { kid, alg, material })
    }

    /// A key from PEM text (`PUBLIC KEY`, `RSA PUBLIC KEY` or `CERTIFICATE`).
    pub(crate) fn from_pem(
        text: &str,
        kid: Option<String>,
        alg: Option<Algorithm>,
    ) -> Result<Self, String> {
        Self::public(der::pem(text)?, kid, alg)
    }

    /// A key from a JWK object (RFC 7517). `kid` and `alg` given here override the JWK's.
    pub(crate) fn from_jwk(
        jwk: &Value,
        kid: Option<String>,
        alg: Option<Algorithm>,
    ) -> Result<Self, String> {
        let obj = jwk.as_object().ok_or("a JWK must be a JSON object")?;
        let text = |name: &str| -> Result<Option<&str>, String> {
            match obj.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.as_str())),
                Some(_) => Err(format!("JWK member `{name}` must be a string")),
            }
        };
        let bytes = |name: &str| -> Result<Vec<u8>, String> {
            let s = text(name)?.ok_or_else(|| format!("JWK has no `{name}`"))?;
            JWK_B64
                .decode(s)
                .map_err(|_| format!("JWK member `{name}` is not base64url"))
        };
        if let Some(u) = text("use")?
            && u != "sig"
        {
            return Err(format!("JWK is for use {u:?}, not \"sig\""));
        }
        if let Some(ops) = obj.get("key_ops").and_then(Value::as_array)
            && !ops.iter().any(|o| o == "verify")
        {
            return Err("JWK key_ops does not include \"verify\"".to_owned());
        }
        let alg = match alg {
            Some(a) => Some(a),
            None => text("alg")?
                .map(str::parse::<Algorithm>)
                .transpose()
                .map_err(|e| e.to_string())?,
        };
        let kid = kid.or(text("kid")?.map(str::to_owned));
        let kty = text("kty")?.ok_or("JWK has no `kty`")?;
        let key = match kty {
            "oct" => return Self::hmac(&bytes("k")?, kid, alg),
            "RSA" => match (obj.get("n"), obj.get("x5c")) {
                (None, Some(chain)) => x5c(chain)?,
                _ => PublicKey::Rsa {
                    n: strip_zeros(bytes("n")?),
                    e: strip_zeros(bytes("e")?),
                },
            },
            "EC" => {
                let (len, make): (usize, fn(Vec<u8>) -> PublicKey) =
                    match text("crv")?.ok_or("EC JWK has no `crv`")? {
                        "P-256" => (32, PublicKey::P256),
                        "P-384" => (48, PublicKey::P384),
                        other => {
                            return Err(format!(
                                "EC curve {other:?} is not supported (P-256 and P-384 are)"
                            ));
                        }
                    };
                let (x, y) = (bytes("x")?, bytes("y")?);
                if x.len() != len || y.len() != len {
                    return Err("EC JWK coordinates have the wrong length".to_owned());
                }
                let mut point = Vec::with_capacity(1 + 2 * len);
                point.push(0x04);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                make(point)
            }
            "OKP" => match text("crv")? {
                Some("Ed25519") => {
                    let x = bytes("x")?;
                    if x.len() != 32 {
                        return Err("Ed25519 JWK `x` must be 32 bytes".to_owned());
                    }
                    PublicKey::Ed25519(x)
                }
                other => {
                    return Err(format!(
                        "OKP curve {:?} is not supported (Ed25519 is)",
                        other.unwrap_or("")
                    ));
                }
            },
            other => return Err(format!("JWK kty {other:?} is not supported")),
        };
        Self::public(key, kid, alg)
    }

    fn family(&self) -> Family {
        match self.material {
            Material::Hmac(_) => Family::Hmac,
            Material::Rsa { .. } => Family::Rsa,
            Material::P256(_) => Family::EcP256,
            Material::P384(_) => Family::EcP384,
            Material::Ed25519(_) => Family::Ed25519,
        }
    }

    /// Whether this key may verify a token signed with `alg`: the key type must fit the
    /// algorithm (so an RSA public key can never act as an HMAC secret), and a key
    /// restricted to one algorithm accepts only that one.
    pub(crate) fn accepts(&self, alg: Algorithm) -> bool {
        self.alg.is_none_or(|a| a == alg) && self.family() == alg.family()
    }

    /// Verifies `signature` over `message`. The caller has checked [`accepts`](Self::accepts).
    pub(crate) fn verify(&self, alg: Algorithm, message: &[u8], sig: &[u8]) -> bool {
        match &self.material {
            Material::Hmac(keys) => keys
                .iter()
                .find(|(a, _)| *a == alg)
                .is_some_and(|(_, k)| hmac::verify(k, message, sig).is_ok()),
            Material::Rsa { n, e } => {
                let params: &signature::RsaParameters = match alg {
                    Algorithm::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                    Algorithm::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                    Algorithm::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                    Algorithm::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
                    Algorithm::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
                    Algorithm::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
                    _ => return false,
                };
                signature::RsaPublicKeyComponents { n, e }
                    .verify(params, message, sig)
                    .is_ok()
            }
            Material::P256(point) => {
                alg == Algorithm::ES256
                    && signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                        .verify(message, sig)
                        .is_ok()
            }
            Material::P384(point) => {
                alg == Algorithm::ES384
                    && signature::UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point)
                        .verify(message, sig)
                        .is_ok()
            }
            Material::Ed25519(key) => {
                alg == Algorithm::EdDSA
                    && signature::UnparsedPublicKey::new(&signature::ED25519, key)
                        .verify(message, sig)
                        .is_ok()
            }
        }
    }
}

fn family_name(f: Family) -> &'static str {
    match f {
        Family::Hmac => "HMAC",
        Family::Rsa => "RSA",
        Family::EcP256 => "EC P-256",
        Family::EcP384 => "EC P-384",
        Family::Ed25519 => "Ed25519",
    }
}

fn strip_zeros(mut v: Vec<u8>) -> Vec<u8> {
    let start = v.iter().position(|&b| b != 0).unwrap_or(v.len());
    v.drain(..start);
    v
}

/// The key of the first certificate in a JWK `x5c` chain (standard base64 DER).
fn x5c(chain: &Value) -> Result<PublicKey, String> {
    let first = chain
        .as_array()
        .and_then(|a| a.first())
        .and_then(Value::as_str)
        .ok_or("JWK `x5c` must be a non-empty array of strings")?;
    let der = decode_any_base64(first).ok_or("JWK `x5c` is not base64")?;
    der::certificate(&der).map_err(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn short_hmac_secrets_are_refused() {
        let e = VerifyingKey::hmac(b"short", None, None).unwrap_err();
        assert!(e.contains("at least 32"), "{e}");
        assert!(VerifyingKey::hmac(&[7; 32], None, Some(Algorithm::HS256)).is_ok());
    }

    #[test]
    fn pinned_alg_must_fit_key_type() {
        let pem = include_str!("../tests/fixtures/rsa.pub.pem");
        let e = VerifyingKey::from_pem(pem, None, Some(Algorithm::HS256)).unwrap_err();
        assert!(e.contains("shared `secret`"), "{e}");
        let e = VerifyingKey::from_pem(pem, None, Some(Algorithm::ES256)).unwrap_err();
        assert!(e.contains("does not fit"), "{e}");
        let k = VerifyingKey::from_pem(pem, None, Some(Algorithm::RS256)).unwrap();
        assert!(k.accepts(Algorithm::RS256));
        assert!(!k.accepts(Algorithm::PS256));
        assert!(!k.accepts(Algorithm::HS256));
        let k = VerifyingKey::from_pem(pem, None, None).unwrap();
        assert!(k.accepts(Algorithm::PS512));
        assert!(!k.accepts(Algorithm::HS256));
        let e = VerifyingKey::hmac(&[1; 40], None, Some(Algorithm::RS256)).unwrap_err();
        assert!(e.contains("public key"), "{e}");
    }

    #[test]
    fn jwk_forms() {
        let k = VerifyingKey::from_jwk(
            &json!({"kty": "oct", "k": JWK_B64.encode([9u8; 32]), "kid": "h", "alg": "HS384"}),
            None,
            None,
        )
        .unwrap();
        assert_eq!(k.kid.as_deref(), Some("h"));
        assert!(k.accepts(Algorithm::HS384) && !k.accepts(Algorithm::HS256));

        let e =
            VerifyingKey::from_jwk(&json!({"kty": "RSA", "n": "AQAB", "e": "AQAB"}), None, None)
                .unwrap_err();
        assert!(e.contains("bits"), "{e}");
        let e = VerifyingKey::from_jwk(
            &json!({"kty": "EC", "crv": "P-521", "x": "", "y": ""}),
            None,
            None,
        )
        .unwrap_err();
        assert!(e.contains("P-521"), "{e}");
        let e = VerifyingKey::from_jwk(&json!({"kty": "oct", "k": "AA", "use": "enc"}), None, None)
            .unwrap_err();
        assert!(e.contains("enc"), "{e}");
        let e =
            VerifyingKey::from_jwk(&json!({"kty": "oct", "k": "AA", "alg": "none"}), None, None)
                .unwrap_err();
        assert!(e.contains("unsupported algorithm"), "{e}");
        assert!(VerifyingKey::from_jwk(&json!("x"), None, None).is_err());
    }

    #[test]
    fn any_base64_secret() {
        assert_eq!(decode_any_base64("AAEC/w==").unwrap(), vec![0, 1, 2, 255]);
        assert_eq!(decode_any_base64("AAEC_w").unwrap(), vec![0, 1, 2, 255]);
        assert!(decode_any_base64("***").is_none());
    }

    #[test]
    fn debug_never_shows_secrets() {
        let k = VerifyingKey::hmac(b"0123456789abcdef0123456789abcdef", None, None).unwrap();
        let s = format!("{k:?}");
        assert!(s.contains("redacted") && !s.contains("0123"), "{s}");
    }
}
