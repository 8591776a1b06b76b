//! [`JwtConfig`]: where keys come from and which claims are checked, deserializable from
//! the JSON object the gateway passes.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::alg::Algorithm;
use crate::error::ConfigError;
use crate::key::{self, VerifyingKey};

/// How tokens are verified: static keys and/or a JWKS URL, and the claim checks.
///
/// Deserializes from a JSON object (unknown fields are refused, so typos surface):
///
/// ```json
/// { "keys": [{ "kid": "k1", "alg": "RS256", "pem_file": "/etc/keel/jwt.pem" }],
///   "jwks_uri": "https://idp.example/realms/shop/protocol/openid-connect/certs",
///   "jwks_refresh": "5m", "issuer": "https://idp.example/realms/shop",
///   "audiences": ["shop"], "leeway": "60s", "roles_claim": "realm_access.roles" }
/// ```
///
/// Durations are a number of milliseconds or text such as `250ms`, `60s`, `5m`, `1h30m`
/// or ISO-8601 (`PT5M`), as everywhere in Keel's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Static keys. Tried before the JWKS.
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    /// A JWKS URL (`http://` or `https://`), fetched on first use and cached.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// How long a fetched JWKS is used before it is refreshed in the background.
    /// Default 5 minutes.
    #[serde(default = "default_refresh", deserialize_with = "duration")]
    pub jwks_refresh: Duration,
    /// The least time between two fetches caused by a token whose `kid` is unknown (or
    /// by a failed fetch). Bounds the load a flood of forged tokens can put on the
    /// identity provider. Default 30 seconds.
    #[serde(default = "default_min_refetch", deserialize_with = "duration")]
    pub jwks_min_refetch: Duration,
    /// Timeout of one JWKS (or discovery) request. Default 5 seconds.
    #[serde(default = "default_timeout", deserialize_with = "duration")]
    pub jwks_timeout: Duration,
    /// The issuer tokens must name in `iss` (exact match). When set and there are no
    /// `keys` and no `jwks_uri`, the JWKS URL is found by OpenID discovery
    /// (`{issuer}/.well-known/openid-configuration`), as Spring Security's `issuer-uri`
    /// does.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Accepted audiences: a token's `aud` must contain at least one. A string or a list;
    /// empty means `aud` is not checked.
    #[serde(default, deserialize_with = "one_or_many")]
    pub audiences: Vec<String>,
    /// Clock skew tolerated for `exp` and `nbf`. Default 60 seconds.
    #[serde(default = "default_leeway", deserialize_with = "duration")]
    pub leeway: Duration,
    /// Whether a token without `exp` is refused. Default true.
    #[serde(default = "yes")]
    pub require_exp: bool,
    /// Where roles are read: claim paths, dotted for nested objects (`realm_access.roles`).
    /// A string or a list; an array claim gives its strings, a string claim is split on
    /// whitespace (`scope`). Default `roles`.
    #[serde(default = "default_roles_claim", deserialize_with = "one_or_many")]
    pub roles_claim: Vec<String>,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            keys: Vec::new(),
            jwks_uri: None,
            jwks_refresh: default_refresh(),
            jwks_min_refetch: default_min_refetch(),
            jwks_timeout: default_timeout(),
            issuer: None,
            audiences: Vec::new(),
            leeway: default_leeway(),
            require_exp: true,
            roles_claim: default_roles_claim(),
        }
    }
}

/// One static key. Give exactly one of `secret`, `secret_base64`, `pem`, `pem_file`, `jwk`.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// The key id tokens must name in `kid` to use this key. Without one, the key is
    /// tried for every token whose algorithm fits it.
    #[serde(default)]
    pub kid: Option<String>,
    /// The only algorithm this key verifies (`HS256`, `RS256`, `ES256`, …). Without one,
    /// any algorithm of the key's type.
    #[serde(default)]
    pub alg: Option<String>,
    /// An HMAC secret as text (its UTF-8 bytes; at least 32).
    #[serde(default)]
    pub secret: Option<String>,
    /// An HMAC secret in base64 (standard or URL-safe, padding optional).
    #[serde(default)]
    pub secret_base64: Option<String>,
    /// A public key in PEM: `PUBLIC KEY` (SPKI), `RSA PUBLIC KEY` (PKCS#1) or `CERTIFICATE`.
    #[serde(default)]
    pub pem: Option<String>,
    /// A file holding such PEM text.
    #[serde(default)]
    pub pem_file: Option<PathBuf>,
    /// A JWK object (RFC 7517): `RSA`, `EC`, `OKP` (Ed25519) or `oct`.
    #[serde(default)]
    pub jwk: Option<Value>,
}

impl fmt::Debug for KeyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = |s: &Option<String>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("KeyConfig")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("secret", &redact(&self.secret))
            .field("secret_base64", &redact(&self.secret_base64))
            .field("pem", &self.pem.as_ref().map(|_| "<pem>"))
            .field("pem_file", &self.pem_file)
            .field("jwk", &self.jwk.as_ref().map(|_| "<jwk>"))
            .finish()
    }
}

impl JwtConfig {
    /// Deserializes a config, naming the offending field on error
    /// (`keys[0].alg: invalid type: …`).
    pub fn from_value(value: &Value) -> Result<Self, ConfigError> {
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." { "jwt".to_owned() } else { path };
            ConfigError::new(field, e.into_inner().to_string())
        })
    }

    /// Parses and loads every static key (reading `pem_file`s).
    pub(crate) fn load_keys(&self) -> Result<Vec<VerifyingKey>, ConfigError> {
        self.keys
            .iter()
            .enumerate()
            .map(|(i, k)| k.load(&format!("keys[{i}]")))
            .collect()
    }

    /// Checks everything but the keys.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if let Some(uri) = &self.jwks_uri {
            check_url(uri).map_err(|m| ConfigError::new("jwks_uri", m))?;
        }
        if let Some(iss) = &self.issuer
            && iss.is_empty()
        {
            return Err(ConfigError::new("issuer", "must not be empty"));
        }
        if self.keys.is_empty() && self.jwks_uri.is_none() {
            match &self.issuer {
                Some(iss) => check_url(iss).map_err(|m| {
                    ConfigError::new(
                        "issuer",
                        format!("{m} (with no `keys` and no `jwks_uri`, the issuer is used for OpenID discovery)"),
                    )
                })?,
                None => {
                    return Err(ConfigError::new(
                        "keys",
                        "no verification keys: set `keys`, `jwks_uri`, or an `issuer` URL for OpenID discovery",
                    ));
                }
            }
        }
        if self.jwks_refresh.is_zero() {
            return Err(ConfigError::new("jwks_refresh", "must be more than zero"));
        }
        if self.jwks_timeout.is_zero() {
            return Err(ConfigError::new("jwks_timeout", "must be more than zero"));
        }
        for (i, a) in self.audiences.iter().enumerate() {
            if a.is_empty() {
                return Err(ConfigError::new(
                    format!("audiences[{i}]"),
                    "must not be empty",
                ));
            }
        }
        for (i, r) in self.roles_claim.iter().enumerate() {
            if r.is_empty() {
                return Err(ConfigError::new(
                    format!("roles_claim[{i}]"),
                    "must not be empty",
                ));
            }
        }
        Ok(())
    }
}

impl KeyConfig {
    fn load(&self, at: &str) -> Result<VerifyingKey, ConfigError> {
        let alg = self
            .alg
            .as_deref()
            .map(str::parse::<Algorithm>)
            .transpose()
            .map_err(|e| ConfigError::new(format!("{at}.alg"), e.to_string()))?;
        let kid = self.kid.clone();
        let given: Vec<&str> = [
            ("secret", self.secret.is_some()),
            ("secret_base64", self.secret_base64.is_some()),
            ("pem", self.pem.is_some()),
            ("pem_file", self.pem_file.is_some()),
            ("jwk", self.jwk.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        let [source] = given[..] else {
            return Err(ConfigError::new(
                at,
                if given.is_empty() {
                    "no key material: give one of `secret`, `secret_base64`, `pem`, `pem_file`, `jwk`".to_owned()
                } else {
                    format!("give only one of {}", given.join(", "))
                },
            ));
        };
        let field = format!("{at}.{source}");
        let fail = |m: String| ConfigError::new(field.clone(), m);
        match source {
            "secret" => {
                VerifyingKey::hmac(self.secret.as_deref().unwrap_or("").as_bytes(), kid, alg)
            }
            "secret_base64" => {
                let bytes = key::decode_any_base64(self.secret_base64.as_deref().unwrap_or(""))
                    .ok_or_else(|| fail("is not valid base64".to_owned()))?;
                VerifyingKey::hmac(&bytes, kid, alg)
            }
            "pem" => VerifyingKey::from_pem(self.pem.as_deref().unwrap_or(""), kid, alg),
            "pem_file" => {
                let path = self.pem_file.as_deref().unwrap_or(std::path::Path::new(""));
                let text = std::fs::read_to_string(path)
                    .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
                VerifyingKey::from_pem(&text, kid, alg)
                    .map_err(|m| format!("{}: {m}", path.display()))
            }
            _ => VerifyingKey::from_jwk(self.jwk.as_ref().unwrap_or(&Value::Null), kid, alg),
        }
        .map_err(fail)
    }
}

fn check_url(uri: &str) -> Result<(), String> {
    match reqwest::Url::parse(uri) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => Ok(()),
        Ok(_) => Err(format!("{uri:?} is not an http:// or https:// URL")),
        Err(e) => Err(format!("{uri:?} is not a URL: {e}")),
    }
}

fn default_refresh() -> Duration {
    Duration::from_secs(300)
}
fn default_min_refetch() -> Duration {
    Duration::from_secs(30)
}
fn default_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_leeway() -> Duration {
    Duration::from_secs(60)
}
fn default_roles_claim() -> Vec<String> {
    vec!["roles".to_owned()]
}
fn yes() -> bool {
    true
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    match Option::<OneOrMany>::deserialize(d)? {
        None => Ok(Vec::new()),
        Some(OneOrMany::One(s)) => Ok(s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()),
        Some(OneOrMany::Many(v)) => Ok(v),
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let v = Value::deserialize(d)?;
    match &v {
        Value::Number(n) => n
            .as_u64()
            .map(Duration::from_millis)
            .ok_or_else(|| format!("{n} is not a whole number of milliseconds")),
        Value::String(s) => keel_duration::parse(s),
        other => Err(format!("{other} is not a duration")),
    }
    .map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn gateway_shape_from_spring() {
        let c = JwtConfig::from_value(&json!({
            "jwks_uri": "http://127.0.0.1:9/certs",
            "issuer": "http://idp/realms/x",
            "audiences": "a, b",
            "keys": [{"pem_file": "/x.pem", "alg": "RS256"}],
            "jwks_refresh": 1000,
            "leeway": "5s",
        }))
        .unwrap();
        assert_eq!(c.audiences, ["a", "b"]);
        assert_eq!(c.jwks_refresh, Duration::from_secs(1));
        assert_eq!(c.leeway, Duration::from_secs(5));
        assert_eq!(c.roles_claim, ["roles"]);
        assert!(c.require_exp);
        let c =
            JwtConfig::from_value(&json!({"audiences": ["a"], "roles_claim": ["scope", "roles"]}))
                .unwrap();
        assert_eq!(c.audiences, ["a"]);
        assert_eq!(c.roles_claim, ["scope", "roles"]);
    }

    #[test]
    fn errors_name_the_field() {
        let e = JwtConfig::from_value(&json!({"keys": [{"secret": "x"}, {"alg": 5}]})).unwrap_err();
        assert_eq!(e.field, "keys[1].alg");
        let e = JwtConfig::from_value(&json!({"issuers": "x"})).unwrap_err();
        assert!(e.message.contains("unknown field `issuers`"), "{e}");
        let e = JwtConfig::from_value(&json!({"leeway": "soon"})).unwrap_err();
        assert_eq!(e.field, "leeway");
        let e = JwtConfig::from_value(&json!("x")).unwrap_err();
        assert_eq!(e.field, "jwt");
    }

    #[test]
    fn key_errors_name_the_field() {
        let load = |v: Value| {
            let c = JwtConfig::from_value(
                &json!({ "keys": [{"secret": "0123456789abcdef0123456789abcdef"}, v] }),
            )
            .unwrap();
            c.load_keys().unwrap_err()
        };
        let e = load(json!({"pem_file": "/nonexistent/k.pem", "alg": "RS256"}));
        assert_eq!(e.field, "keys[1].pem_file");
        assert!(
            e.to_string()
                .starts_with("keys[1].pem_file: cannot read /nonexistent/k.pem"),
            "{e}"
        );
        let e = load(json!({"secret": "x", "pem": "y"}));
        assert_eq!(e.to_string(), "keys[1]: give only one of secret, pem");
        let e = load(json!({"kid": "a"}));
        assert!(e.message.contains("no key material"), "{e}");
        let e = load(json!({"secret": "short"}));
        assert_eq!(e.field, "keys[1].secret");
        let e = load(json!({"secret": "0123456789abcdef0123456789abcdef", "alg": "none"}));
        assert_eq!(e.field, "keys[1].alg");
        let e = load(json!({"secret_base64": "%%%"}));
        assert_eq!(e.to_string(), "keys[1].secret_base64: is not valid base64");
        let e = load(
            json!({"pem": "-----BEGIN PUBLIC KEY-----\nMAA=\n-----END PUBLIC KEY-----", "alg": "RS256"}),
        );
        assert_eq!(e.field, "keys[1].pem");
    }

    #[test]
    fn validate() {
        let e = JwtConfig::default().validate().unwrap_err();
        assert_eq!(e.field, "keys");
        let c = JwtConfig {
            jwks_uri: Some("ftp://x".into()),
            ..JwtConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().field, "jwks_uri");
        let c = JwtConfig {
            issuer: Some("not a url".into()),
            ..JwtConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().field, "issuer");
        let c = JwtConfig {
            issuer: Some("https://idp.example/realms/x".into()),
            ..JwtConfig::default()
        };
        assert!(c.validate().is_ok());
    }

    #[test]
    fn debug_redacts_secrets() {
        let k = KeyConfig {
            secret: Some("hunter2hunter2".into()),
            ..KeyConfig::default()
        };
        assert!(!format!("{k:?}").contains("hunter2"));
    }
}
