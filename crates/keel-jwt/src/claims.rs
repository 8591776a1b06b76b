//! Claim checks: registered claims (`exp`, `nbf`, `iss`, `aud`) after the signature is
//! verified, and per-route [`Requirements`] (claim values and roles).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::Claims;
use crate::error::{Forbidden, JwtError};

/// The registered-claim checks of a [`Verifier`](crate::Verifier).
#[derive(Debug, Clone)]
pub(crate) struct Checks {
    pub(crate) issuer: Option<String>,
    pub(crate) audiences: Vec<String>,
    pub(crate) leeway_secs: f64,
    pub(crate) require_exp: bool,
}

fn numeric(claims: &Claims, name: &'static str) -> Result<Option<f64>, JwtError> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|n| n.is_finite())
            .map(Some)
            .ok_or(JwtError::InvalidClaim(name)),
    }
}

impl Checks {
    /// Checks `exp`, `nbf`, `iss` and `aud`; `now` is seconds since the Unix epoch.
    pub(crate) fn check(&self, claims: &Claims, now: f64) -> Result<(), JwtError> {
        match numeric(claims, "exp")? {
            Some(exp) if now >= exp + self.leeway_secs => return Err(JwtError::Expired),
            None if self.require_exp => return Err(JwtError::InvalidClaim("exp")),
            _ => {}
        }
        if let Some(nbf) = numeric(claims, "nbf")?
            && now + self.leeway_secs < nbf
        {
            return Err(JwtError::NotYetValid);
        }
        if let Some(want) = &self.issuer {
            match claims.get("iss") {
                Some(Value::String(iss)) if iss == want => {}
                Some(Value::String(_)) | None => return Err(JwtError::WrongIssuer),
                Some(_) => return Err(JwtError::InvalidClaim("iss")),
            }
        }
        if !self.audiences.is_empty() {
            let ok = match claims.get("aud") {
                Some(Value::String(a)) => self.audiences.iter().any(|w| w == a),
                Some(Value::Array(list)) => list
                    .iter()
                    .filter_map(Value::as_str)
                    .any(|a| self.audiences.iter().any(|w| w == a)),
                None => false,
                Some(_) => return Err(JwtError::InvalidClaim("aud")),
            };
            if !ok {
                return Err(JwtError::WrongAudience);
            }
        }
        Ok(())
    }
}

/// Looks up a claim by path: the whole path as one name first (claim names may contain
/// dots, as in `https://example.com/roles`), then as dotted segments into nested
/// objects (`realm_access.roles`).
pub fn claim<'a>(claims: &'a Claims, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let mut cur = claims.get(parts.next()?)?;
    for part in parts {
        cur = cur.as_object()?.get(part)?;
    }
    Some(cur)
}

/// The roles a token holds, read from each of `paths` (see [`claim`]): an array claim
/// gives its strings, a string claim is split on whitespace (as OAuth's `scope`).
/// Duplicates are kept out; order follows the claims.
pub fn roles<'a, P: AsRef<str>>(claims: &'a Claims, paths: &[P]) -> Vec<&'a str> {
    let mut out: Vec<&'a str> = Vec::new();
    let mut push = |r: &'a str| {
        if !r.is_empty() && !out.contains(&r) {
            out.push(r);
        }
    };
    for path in paths {
        match claim(claims, path.as_ref()) {
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).for_each(&mut push),
            Some(Value::String(s)) => s.split_whitespace().for_each(&mut push),
            _ => {}
        }
    }
    out
}

/// What a route requires of a verified token. Deserializable, e.g.
/// `{ "claims": { "tenant": "acme" }, "roles": ["admin", "ops"] }`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirements {
    /// Claim path (see [`claim`]) → required value. The claim matches when it equals the
    /// value or is an array containing it; a required array means "any of these".
    #[serde(default)]
    pub claims: BTreeMap<String, Value>,
    /// Roles (read from the verifier's `roles_claim`); the token must hold at least one,
    /// or every one when `all_roles` is set. Empty means no role is required.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Require every role in `roles` instead of any one.
    #[serde(default)]
    pub all_roles: bool,
}

impl Requirements {
    /// Whether nothing is required.
    pub fn is_empty(&self) -> bool {
        self.claims.is_empty() && self.roles.is_empty()
    }

    /// Checks `claims` against these requirements, reading roles from `roles_claim` paths.
    pub fn check<P: AsRef<str>>(
        &self,
        claims: &Claims,
        roles_claim: &[P],
    ) -> Result<(), Forbidden> {
        for (path, want) in &self.claims {
            let have = claim(claims, path).ok_or_else(|| Forbidden::MissingClaim {
                claim: path.clone(),
            })?;
            let wanted: &[Value] = match want {
                Value::Array(any) => any,
                one => std::slice::from_ref(one),
            };
            let matches = |w: &Value| match have {
                Value::Array(list) => have == w || list.contains(w),
                _ => have == w,
            };
            if !wanted.iter().any(matches) {
                return Err(Forbidden::ClaimMismatch {
                    claim: path.clone(),
                });
            }
        }
        if !self.roles.is_empty() {
            let held = roles(claims, roles_claim);
            let has = |r: &String| held.contains(&r.as_str());
            let ok = if self.all_roles {
                self.roles.iter().all(has)
            } else {
                self.roles.iter().any(has)
            };
            if !ok {
                return Err(Forbidden::MissingRole {
                    required: self.roles.clone(),
                    all: self.all_roles,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn c(v: Value) -> Claims {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    fn checks() -> Checks {
        Checks {
            issuer: Some("https://idp".into()),
            audiences: vec!["api".into(), "web".into()],
            leeway_secs: 60.0,
            require_exp: true,
        }
    }

    #[test]
    fn time_checks_with_leeway() {
        let k = checks();
        let base = json!({"iss": "https://idp", "aud": "api"});
        let with = |extra: Value| {
            let mut m = c(base.clone());
            m.extend(c(extra));
            m
        };
        assert_eq!(k.check(&with(json!({"exp": 1000})), 1059.0), Ok(()));
        assert_eq!(
            k.check(&with(json!({"exp": 1000})), 1060.0),
            Err(JwtError::Expired)
        );
        assert_eq!(k.check(&with(json!({"exp": 1000.5})), 1060.0), Ok(()));
        assert_eq!(
            k.check(&with(json!({"exp": 2000, "nbf": 1100})), 1040.0),
            Ok(())
        );
        assert_eq!(
            k.check(&with(json!({"exp": 2000, "nbf": 1100})), 1039.0),
            Err(JwtError::NotYetValid)
        );
        assert_eq!(
            k.check(&with(json!({})), 1000.0),
            Err(JwtError::InvalidClaim("exp"))
        );
        assert_eq!(
            k.check(&with(json!({"exp": "soon"})), 1000.0),
            Err(JwtError::InvalidClaim("exp"))
        );
        assert_eq!(
            k.check(&with(json!({"exp": 2000, "nbf": null})), 1000.0),
            Err(JwtError::InvalidClaim("nbf"))
        );
        let lax = Checks {
            require_exp: false,
            ..checks()
        };
        assert_eq!(lax.check(&with(json!({})), 1000.0), Ok(()));
    }

    #[test]
    fn issuer_and_audience() {
        let k = checks();
        let ok = |v: Value| k.check(&c(v), 0.0);
        assert_eq!(
            ok(json!({"exp": 100, "iss": "https://idp", "aud": ["x", "web"]})),
            Ok(())
        );
        assert_eq!(
            ok(json!({"exp": 100, "iss": "https://idp/", "aud": "api"})),
            Err(JwtError::WrongIssuer)
        );
        assert_eq!(
            ok(json!({"exp": 100, "aud": "api"})),
            Err(JwtError::WrongIssuer)
        );
        assert_eq!(
            ok(json!({"exp": 100, "iss": 7, "aud": "api"})),
            Err(JwtError::InvalidClaim("iss"))
        );
        assert_eq!(
            ok(json!({"exp": 100, "iss": "https://idp", "aud": ["x"]})),
            Err(JwtError::WrongAudience)
        );
        assert_eq!(
            ok(json!({"exp": 100, "iss": "https://idp"})),
            Err(JwtError::WrongAudience)
        );
        let open = Checks {
            issuer: None,
            audiences: vec![],
            ..checks()
        };
        assert_eq!(open.check(&c(json!({"exp": 100})), 0.0), Ok(()));
    }

    #[test]
    fn claim_paths_and_roles() {
        let m = c(json!({
            "roles": ["admin", "user", "admin"],
            "scope": "read write  read",
            "realm_access": {"roles": ["ops"]},
            "https://example.com/roles": ["dotted"],
            "n": 5,
        }));
        assert_eq!(claim(&m, "realm_access.roles"), Some(&json!(["ops"])));
        assert_eq!(
            claim(&m, "https://example.com/roles"),
            Some(&json!(["dotted"]))
        );
        assert_eq!(claim(&m, "realm_access.nope"), None);
        assert_eq!(claim(&m, "n.x"), None);
        assert_eq!(roles(&m, &["roles"]), ["admin", "user"]);
        assert_eq!(roles(&m, &["scope"]), ["read", "write"]);
        assert_eq!(
            roles(&m, &["realm_access.roles", "roles", "n", "missing"]),
            ["ops", "admin", "user"]
        );
    }

    #[test]
    fn requirements() {
        let m = c(json!({"roles": ["user"], "tenant": "acme", "groups": ["a", "b"], "lvl": 3}));
        let paths = ["roles"];
        let req = |v: Value| serde_json::from_value::<Requirements>(v).unwrap();
        assert_eq!(req(json!({})).check(&m, &paths), Ok(()));
        assert!(req(json!({})).is_empty());
        assert_eq!(
            req(json!({"roles": ["admin", "user"]})).check(&m, &paths),
            Ok(())
        );
        assert_eq!(
            req(json!({"roles": ["admin", "user"], "all_roles": true})).check(&m, &paths),
            Err(Forbidden::MissingRole {
                required: vec!["admin".into(), "user".into()],
                all: true
            })
        );
        assert!(req(json!({"roles": ["admin"]})).check(&m, &paths).is_err());
        assert_eq!(
            req(json!({"claims": {"tenant": "acme", "groups": "b", "lvl": 3}})).check(&m, &paths),
            Ok(())
        );
        assert_eq!(
            req(json!({"claims": {"tenant": ["x", "acme"]}})).check(&m, &paths),
            Ok(())
        );
        assert_eq!(
            req(json!({"claims": {"tenant": "other"}})).check(&m, &paths),
            Err(Forbidden::ClaimMismatch {
                claim: "tenant".into()
            })
        );
        assert_eq!(
            req(json!({"claims": {"org": "x"}})).check(&m, &paths),
            Err(Forbidden::MissingClaim {
                claim: "org".into()
            })
        );
        assert!(serde_json::from_value::<Requirements>(json!({"role": ["x"]})).is_err());
    }
}
