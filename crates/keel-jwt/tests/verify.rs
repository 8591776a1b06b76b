//! keel-jwt through its public API: tokens signed with real keys (ring), static keys in
//! every form, claim checks, and a JWKS served by a real local HTTP server.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use keel_jwt::{Algorithm, Claims, Forbidden, JwtError, Requirements, Verifier, bearer};
use ring::signature::{self, KeyPair as _};
use ring::{hmac, rand};
use serde_json::{Value, json};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const SECRET: &str = "keel-jwt test secret, 32+ bytes long!";

// ---------------------------------------------------------------------------------------
// Signing (the test side of the contract)
// ---------------------------------------------------------------------------------------

struct Signers {
    rsa: signature::RsaKeyPair,
    rsa2: signature::RsaKeyPair,
    ec256: signature::EcdsaKeyPair,
    ec384: signature::EcdsaKeyPair,
    ed: signature::Ed25519KeyPair,
    rng: rand::SystemRandom,
}

static KEYS: LazyLock<Signers> = LazyLock::new(|| {
    let rng = rand::SystemRandom::new();
    let der = |name: &str| std::fs::read(format!("{FIXTURES}/{name}.pk8.der")).unwrap();
    Signers {
        rsa: signature::RsaKeyPair::from_pkcs8(&der("rsa")).unwrap(),
        rsa2: signature::RsaKeyPair::from_pkcs8(&der("rsa2")).unwrap(),
        ec256: signature::EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &der("ec256"),
            &rng,
        )
        .unwrap(),
        ec384: signature::EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
            &der("ec384"),
            &rng,
        )
        .unwrap(),
        ed: signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der("ed25519")).unwrap(),
        rng,
    }
});

fn pem_path(name: &str) -> String {
    format!("{FIXTURES}/{name}.pem")
}

fn pem(name: &str) -> String {
    std::fs::read_to_string(pem_path(name)).unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Standard claims valid for an hour.
fn claims() -> Value {
    json!({"sub": "user-1", "iss": "https://idp.test", "aud": "api", "exp": now() + 3600, "iat": now()})
}

fn with(extra: Value) -> Value {
    let mut c = claims();
    c.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    c
}

/// `header.payload` for `alg`/`kid` and `claims`.
fn signing_input(alg: &str, kid: Option<&str>, claims: &Value) -> String {
    let mut header = json!({"alg": alg, "typ": "JWT"});
    if let Some(k) = kid {
        header["kid"] = json!(k);
    }
    format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    )
}

fn rsa_sign(key: &signature::RsaKeyPair, alg: Algorithm, input: &str) -> Vec<u8> {
    let padding: &'static dyn signature::RsaEncoding = match alg {
        Algorithm::RS256 => &signature::RSA_PKCS1_SHA256,
        Algorithm::RS384 => &signature::RSA_PKCS1_SHA384,
        Algorithm::RS512 => &signature::RSA_PKCS1_SHA512,
        Algorithm::PS256 => &signature::RSA_PSS_SHA256,
        Algorithm::PS384 => &signature::RSA_PSS_SHA384,
        _ => &signature::RSA_PSS_SHA512,
    };
    let mut sig = vec![0; key.public().modulus_len()];
    key.sign(padding, &KEYS.rng, input.as_bytes(), &mut sig)
        .unwrap();
    sig
}

/// The signature of `input` under `alg` with the primary test key of that type.
fn sign_raw(alg: Algorithm, input: &str) -> Vec<u8> {
    let k = &*KEYS;
    let mac = |a| {
        hmac::sign(&hmac::Key::new(a, SECRET.as_bytes()), input.as_bytes())
            .as_ref()
            .to_vec()
    };
    match alg {
        Algorithm::HS256 => mac(hmac::HMAC_SHA256),
        Algorithm::HS384 => mac(hmac::HMAC_SHA384),
        Algorithm::HS512 => mac(hmac::HMAC_SHA512),
        Algorithm::ES256 => k
            .ec256
            .sign(&k.rng, input.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec(),
        Algorithm::ES384 => k
            .ec384
            .sign(&k.rng, input.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec(),
        Algorithm::EdDSA => k.ed.sign(input.as_bytes()).as_ref().to_vec(),
        rsa => rsa_sign(&k.rsa, rsa, input),
    }
}

fn token(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let input = signing_input(alg.as_str(), kid, claims);
    let sig = sign_raw(alg, &input);
    format!("{input}.{}", B64.encode(sig))
}

fn rsa_token(key: &signature::RsaKeyPair, kid: Option<&str>, claims: &Value) -> String {
    let input = signing_input("RS256", kid, claims);
    format!(
        "{input}.{}",
        B64.encode(rsa_sign(key, Algorithm::RS256, &input))
    )
}

fn rsa_jwk(key: &signature::RsaKeyPair, kid: &str) -> Value {
    let c = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(key.public());
    json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": B64.encode(&c.n), "e": B64.encode(&c.e)})
}

fn ec_jwk(key: &signature::EcdsaKeyPair, crv: &str, kid: &str) -> Value {
    let p = key.public_key().as_ref();
    let half = (p.len() - 1) / 2;
    json!({"kty": "EC", "crv": crv, "kid": kid, "x": B64.encode(&p[1..1 + half]), "y": B64.encode(&p[1 + half..])})
}

/// A verifier holding one static key of every type, none pinned to an algorithm.
fn all_keys_verifier() -> Verifier {
    Verifier::from_value(&json!({
        "keys": [
            {"secret": SECRET},
            {"pem_file": pem_path("rsa.pub")},
            {"pem_file": pem_path("ec256.pub")},
            {"pem_file": pem_path("ec384.pub")},
            {"pem_file": pem_path("ed25519.pub")},
        ],
        "issuer": "https://idp.test",
        "audiences": ["web", "api"],
    }))
    .unwrap()
}

fn shown(e: &JwtError) -> String {
    e.to_string()
}

// ---------------------------------------------------------------------------------------
// Static keys and algorithms
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn good_token_for_each_algorithm() {
    let v = all_keys_verifier();
    for alg in Algorithm::ALL {
        let t = token(alg, None, &claims());
        let c = v.verify(&t).await.unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(c["sub"], "user-1", "{alg}");
    }
}

#[tokio::test]
async fn static_key_forms() {
    let rs = token(Algorithm::RS256, None, &claims());
    let es = token(Algorithm::ES256, None, &claims());
    let hs = token(Algorithm::HS256, None, &claims());
    let ok = |config: Value, t: String| async move {
        let v = Verifier::from_value(&config).unwrap_or_else(|e| panic!("{config}: {e}"));
        v.verify(&t)
            .await
            .unwrap_or_else(|e| panic!("{config}: {e}"));
    };
    ok(
        json!({"keys": [{"alg": "RS256", "pem": pem("rsa.pub")}]}),
        rs.clone(),
    )
    .await;
    ok(
        json!({"keys": [{"alg": "RS256", "pem_file": pem_path("rsa.pkcs1.pub")}]}),
        rs.clone(),
    )
    .await;
    ok(
        json!({"keys": [{"alg": "RS256", "pem_file": pem_path("rsa.cert")}]}),
        rs.clone(),
    )
    .await;
    ok(
        json!({"keys": [{"jwk": rsa_jwk(&KEYS.rsa, "r")}]}),
        rs.clone(),
    )
    .await;
    ok(
        json!({"keys": [{"jwk": ec_jwk(&KEYS.ec256, "P-256", "e")}]}),
        es.clone(),
    )
    .await;
    ok(
        json!({"keys": [{"alg": "ES256", "pem": pem("ec256.pub")}]}),
        es,
    )
    .await;
    ok(
        json!({"keys": [{"alg": "HS256", "secret": SECRET}]}),
        hs.clone(),
    )
    .await;
    ok(json!({"keys": [{"secret_base64": base64::engine::general_purpose::STANDARD.encode(SECRET)}]}), hs.clone()).await;
    ok(
        json!({"keys": [{"jwk": {"kty": "oct", "k": B64.encode(SECRET)}}]}),
        hs,
    )
    .await;
}

#[tokio::test]
async fn spring_shaped_config_from_the_gateway() {
    // What keel-gateway produces from spring.security.oauth2.resourceserver.jwt.
    let v = Verifier::from_value(&json!({
        "issuer": "https://idp.test",
        "audiences": ["api"],
        "keys": [{"pem_file": pem_path("rsa.pub"), "alg": "RS256"}],
    }))
    .unwrap();
    v.verify(&token(Algorithm::RS256, Some("any"), &claims()))
        .await
        .unwrap();
    assert_eq!(
        v.verify(&token(Algorithm::PS256, None, &claims())).await,
        Err(JwtError::AlgorithmNotAllowed {
            alg: Algorithm::PS256
        })
    );
}

#[tokio::test]
async fn expired() {
    let v = all_keys_verifier();
    let t = token(Algorithm::HS256, None, &with(json!({"exp": now() - 120})));
    let e = v.verify(&t).await.unwrap_err();
    assert_eq!(e, JwtError::Expired);
    assert_eq!(e.status(), 401);
    assert_eq!(shown(&e), "token has expired");
    // Within the 60 s default leeway: still accepted.
    let t = token(Algorithm::HS256, None, &with(json!({"exp": now() - 30})));
    v.verify(&t).await.unwrap();
    // No exp at all: refused by default.
    let mut c = claims();
    c.as_object_mut().unwrap().remove("exp");
    let t = token(Algorithm::HS256, None, &c);
    assert_eq!(v.verify(&t).await, Err(JwtError::InvalidClaim("exp")));
}

#[tokio::test]
async fn not_yet_valid() {
    let v = all_keys_verifier();
    let t = token(Algorithm::ES256, None, &with(json!({"nbf": now() + 600})));
    assert_eq!(v.verify(&t).await, Err(JwtError::NotYetValid));
    let t = token(Algorithm::ES256, None, &with(json!({"nbf": now() + 30})));
    v.verify(&t).await.unwrap();
    let strict =
        Verifier::from_value(&json!({"keys": [{"secret": SECRET}], "leeway": "0s"})).unwrap();
    let t = token(Algorithm::HS256, None, &with(json!({"nbf": now() + 30})));
    assert_eq!(strict.verify(&t).await, Err(JwtError::NotYetValid));
}

#[tokio::test]
async fn wrong_key() {
    let v = all_keys_verifier();
    let t = rsa_token(&KEYS.rsa2, None, &claims());
    assert_eq!(v.verify(&t).await, Err(JwtError::BadSignature));
    let input = signing_input("HS256", None, &claims());
    let tag = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, b"another secret of 32 bytes or more"),
        input.as_bytes(),
    );
    let t = format!("{input}.{}", B64.encode(tag));
    assert_eq!(v.verify(&t).await, Err(JwtError::BadSignature));
    // An ES256 signature from a different P-256 key.
    let rng = rand::SystemRandom::new();
    let other =
        signature::EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .unwrap();
    let other = signature::EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        other.as_ref(),
        &rng,
    )
    .unwrap();
    let input = signing_input("ES256", None, &claims());
    let t = format!(
        "{input}.{}",
        B64.encode(other.sign(&rng, input.as_bytes()).unwrap())
    );
    assert_eq!(v.verify(&t).await, Err(JwtError::BadSignature));
}

#[tokio::test]
async fn tampered_payload() {
    let v = all_keys_verifier();
    for alg in [
        Algorithm::HS256,
        Algorithm::RS256,
        Algorithm::ES256,
        Algorithm::EdDSA,
    ] {
        let t = token(alg, None, &claims());
        let parts: Vec<&str> = t.split('.').collect();
        let forged = B64.encode(with(json!({"sub": "admin"})).to_string());
        let tampered = format!("{}.{forged}.{}", parts[0], parts[2]);
        assert_eq!(
            v.verify(&tampered).await,
            Err(JwtError::BadSignature),
            "{alg}"
        );
        // One flipped signature bit.
        let mut sig = B64.decode(parts[2]).unwrap();
        sig[5] ^= 1;
        let flipped = format!("{}.{}.{}", parts[0], parts[1], B64.encode(sig));
        assert_eq!(
            v.verify(&flipped).await,
            Err(JwtError::BadSignature),
            "{alg}"
        );
        // Truncated signature.
        let short = format!("{}.{}.{}", parts[0], parts[1], &parts[2][..8]);
        assert_eq!(v.verify(&short).await, Err(JwtError::BadSignature), "{alg}");
    }
}

#[tokio::test]
async fn alg_none_is_refused() {
    let v = all_keys_verifier();
    for alg in ["none", "None", "NONE"] {
        let input = signing_input(alg, None, &claims());
        for sig in ["", "AAAA"] {
            let e = v.verify(&format!("{input}.{sig}")).await.unwrap_err();
            assert_eq!(e, JwtError::AlgNone, "{alg} {sig:?}");
        }
    }
    assert_eq!(
        shown(&JwtError::AlgNone),
        "unsigned tokens (alg \"none\") are not accepted"
    );
    let input = signing_input("ES512", None, &claims());
    assert_eq!(
        v.verify(&format!("{input}.AAAA")).await,
        Err(JwtError::UnsupportedAlgorithm)
    );
}

#[tokio::test]
async fn alg_confusion_is_refused() {
    // The classic attack: the RSA *public* key (which the attacker knows) used as an
    // HMAC secret, in a token claiming HS256.
    let public_pem = pem("rsa.pub");
    let public_der = base64::engine::general_purpose::STANDARD
        .decode(
            public_pem
                .lines()
                .filter(|l| !l.starts_with("-----"))
                .collect::<String>(),
        )
        .unwrap();
    for config in [
        json!({"keys": [{"alg": "RS256", "pem": public_pem}]}),
        json!({"keys": [{"pem": public_pem}]}),
        json!({"keys": [{"kid": "k1", "pem": public_pem}]}),
        json!({"keys": [{"jwk": rsa_jwk(&KEYS.rsa, "k1")}]}),
    ] {
        let v = Verifier::from_value(&config).unwrap();
        for secret in [public_pem.as_bytes(), &public_der[..]] {
            for alg in [hmac::HMAC_SHA256, hmac::HMAC_SHA384, hmac::HMAC_SHA512] {
                let name = match alg {
                    a if a == hmac::HMAC_SHA256 => "HS256",
                    a if a == hmac::HMAC_SHA384 => "HS384",
                    _ => "HS512",
                };
                let input = signing_input(name, Some("k1"), &claims());
                let tag = hmac::sign(&hmac::Key::new(alg, secret), input.as_bytes());
                let e = v
                    .verify(&format!("{input}.{}", B64.encode(tag)))
                    .await
                    .unwrap_err();
                assert!(
                    matches!(e, JwtError::AlgorithmNotAllowed { .. }),
                    "{config}: {name}: {e:?}"
                );
            }
        }
    }
    // Cross-family the other way: an ES256 header over an RSA-only key set.
    let v = Verifier::from_value(&json!({"keys": [{"pem": pem("rsa.pub")}]})).unwrap();
    assert_eq!(
        v.verify(&token(Algorithm::ES256, None, &claims())).await,
        Err(JwtError::AlgorithmNotAllowed {
            alg: Algorithm::ES256
        })
    );
    // And configuring a public key for an HMAC algorithm is refused up front.
    let e = Verifier::from_value(&json!({"keys": [{"alg": "HS256", "pem": pem("rsa.pub")}]}))
        .unwrap_err();
    assert_eq!(e.field, "keys[0].pem");
}

#[tokio::test]
async fn wrong_issuer_and_audience() {
    let v = all_keys_verifier();
    let t = token(
        Algorithm::RS256,
        None,
        &with(json!({"iss": "https://evil.test"})),
    );
    assert_eq!(v.verify(&t).await, Err(JwtError::WrongIssuer));
    let mut c = claims();
    c.as_object_mut().unwrap().remove("iss");
    assert_eq!(
        v.verify(&token(Algorithm::RS256, None, &c)).await,
        Err(JwtError::WrongIssuer)
    );
    let t = token(
        Algorithm::RS256,
        None,
        &with(json!({"aud": ["other", "admin"]})),
    );
    assert_eq!(v.verify(&t).await, Err(JwtError::WrongAudience));
    let t = token(
        Algorithm::RS256,
        None,
        &with(json!({"aud": ["other", "web"]})),
    );
    v.verify(&t).await.unwrap();
    assert_eq!(
        shown(&JwtError::WrongAudience),
        "token audience is not accepted"
    );
}

#[tokio::test]
async fn roles_and_required_claims() {
    let v = Verifier::from_value(&json!({
        "keys": [{"secret": SECRET}],
        "roles_claim": ["realm_access.roles", "scope"],
    }))
    .unwrap();
    let t = token(
        Algorithm::HS256,
        None,
        &with(
            json!({"realm_access": {"roles": ["user", "ops"]}, "scope": "orders:read orders:write", "tenant": "acme"}),
        ),
    );
    let c: Claims = v.verify(&t).await.unwrap();
    assert_eq!(v.roles(&c), ["user", "ops", "orders:read", "orders:write"]);
    let need = |roles: &[&str], all: bool| Requirements {
        roles: roles.iter().map(|r| r.to_string()).collect(),
        all_roles: all,
        ..Requirements::default()
    };
    v.authorize(&c, &need(&["admin", "ops"], false)).unwrap();
    v.authorize(&c, &need(&["ops", "orders:write"], true))
        .unwrap();
    let e = v.authorize(&c, &need(&["admin"], false)).unwrap_err();
    assert_eq!(e.to_string(), "token lacks the required role (admin)");
    assert!(v.authorize(&c, &need(&["ops", "admin"], true)).is_err());
    let req: Requirements = serde_json::from_value(
        json!({"claims": {"tenant": "acme", "realm_access.roles": "ops"}, "roles": ["user"]}),
    )
    .unwrap();
    v.authorize(&c, &req).unwrap();
    let req: Requirements =
        serde_json::from_value(json!({"claims": {"tenant": "globex"}})).unwrap();
    assert_eq!(
        v.authorize(&c, &req),
        Err(Forbidden::ClaimMismatch {
            claim: "tenant".into()
        })
    );
}

#[tokio::test]
async fn malformed_tokens_and_messages_never_echo_the_token() {
    let v = all_keys_verifier();
    let good = token(Algorithm::HS256, Some("kid-secret-value"), &claims());
    let parts: Vec<&str> = good.split('.').collect();
    let cases = [
        String::new(),
        "not-a-jwt".to_owned(),
        format!("{}.{}", parts[0], parts[1]),
        format!("{}.{}.{}.{}", parts[0], parts[1], parts[2], parts[2]),
        format!("{}.{}.%%%", parts[0], parts[1]),
        format!("eyJhbGciOiJIUzI1NiJ9.{}.{}", "e30x", parts[2]),
        format!("{}.{}.{}", B64.encode("{\"kid\":1}"), parts[1], parts[2]),
        rsa_token(&KEYS.rsa2, Some("kid-secret-value"), &claims()),
        token(
            Algorithm::HS256,
            Some("kid-secret-value"),
            &with(json!({"exp": 1})),
        ),
        "x".repeat(20_000),
    ];
    for t in &cases {
        let e = v.verify(t).await.unwrap_err();
        let text = e.to_string();
        for part in t.split('.').filter(|p| p.len() > 3) {
            assert!(!text.contains(part), "{text:?} echoes the token");
        }
        assert!(!text.contains("kid-secret-value"), "{text}");
        assert_eq!(e.status(), 401);
    }
}

#[test]
fn bearer_header_values() {
    assert_eq!(bearer("Bearer a.b.c"), Some("a.b.c"));
    assert_eq!(bearer("bearer a.b.c"), Some("a.b.c"));
    assert_eq!(bearer("Basic a.b.c"), None);
    assert_eq!(bearer("Bearer"), None);
}

#[test]
fn config_errors_name_the_field() {
    let e = Verifier::from_value(&json!({"keys": [{"secret": SECRET}, {"pem_file": "/nonexistent/key.pem", "alg": "RS256"}]}))
        .unwrap_err();
    assert_eq!(e.field, "keys[1].pem_file");
    assert!(
        e.to_string()
            .starts_with("keys[1].pem_file: cannot read /nonexistent/key.pem: "),
        "{e}"
    );
    let e =
        Verifier::from_value(&json!({"keys": [{"alg": "XX256", "secret": SECRET}]})).unwrap_err();
    assert_eq!(e.field, "keys[0].alg");
    let e = Verifier::from_value(&json!({"keys": [{"secret": SECRET}], "jwks_refresh": "often"}))
        .unwrap_err();
    assert_eq!(e.field, "jwks_refresh");
    let e = Verifier::from_value(&json!({})).unwrap_err();
    assert_eq!(e.field, "keys");
    let e = Verifier::from_value(&json!({"jwks_uri": "file:///etc/passwd"})).unwrap_err();
    assert_eq!(e.field, "jwks_uri");
    let e =
        Verifier::from_value(&json!({"keys": [{"pem_file": pem_path("rsa.pub"), "alg": "ES256"}]}))
            .unwrap_err();
    assert_eq!(e.field, "keys[0].pem_file");
    assert!(e.message.contains("does not fit"), "{e}");
}

// ---------------------------------------------------------------------------------------
// JWKS over real HTTP
// ---------------------------------------------------------------------------------------

/// A tiny identity provider: `/jwks`, and OpenID discovery under `/realm`.
struct Idp {
    addr: SocketAddr,
    jwks: Mutex<Value>,
    hits: AtomicUsize,
    failing: AtomicBool,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Idp {
    async fn start(jwks: Value) -> Arc<Idp> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let idp = Arc::new(Idp {
            addr,
            jwks: Mutex::new(jwks),
            hits: AtomicUsize::new(0),
            failing: AtomicBool::new(false),
            task: Mutex::new(None),
        });
        async fn serve_jwks(State(idp): State<Arc<Idp>>) -> Response {
            idp.hits.fetch_add(1, Ordering::SeqCst);
            if idp.failing.load(Ordering::SeqCst) {
                return (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response();
            }
            Json(idp.jwks.lock().unwrap().clone()).into_response()
        }
        async fn serve_discovery(State(idp): State<Arc<Idp>>) -> Json<Value> {
            Json(json!({
                "issuer": format!("http://{}/realm", idp.addr),
                "jwks_uri": format!("http://{}/realm/certs", idp.addr),
            }))
        }
        let app = axum::Router::new()
            .route("/jwks", get(serve_jwks))
            .route("/realm/certs", get(serve_jwks))
            .route(
                "/realm/.well-known/openid-configuration",
                get(serve_discovery),
            )
            .with_state(idp.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        *idp.task.lock().unwrap() = Some(task);
        idp
    }

    fn uri(&self) -> String {
        format!("http://{}/jwks", self.addr)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn publish(&self, keys: Vec<Value>) {
        *self.jwks.lock().unwrap() = json!({ "keys": keys });
    }

    /// Stops listening: later connections are refused.
    fn kill(&self) {
        if let Some(t) = self.task.lock().unwrap().take() {
            t.abort();
        }
    }
}

fn jwks_verifier(uri: String, extra: Value) -> Verifier {
    let mut config = json!({"jwks_uri": uri, "issuer": "https://idp.test", "audiences": "api"});
    config
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    Verifier::from_value(&config).unwrap()
}

#[tokio::test]
async fn jwks_is_fetched_once_and_cached() {
    let idp = Idp::start(json!({"keys": [
        rsa_jwk(&KEYS.rsa, "rsa-1"),
        ec_jwk(&KEYS.ec256, "P-256", "ec-1"),
        {"kty": "RSA", "use": "enc", "kid": "enc-1", "n": "AQAB", "e": "AQAB"},
    ]}))
    .await;
    let v = jwks_verifier(idp.uri(), json!({}));
    assert_eq!(v.jwks_status().unwrap().keys, 0);
    for _ in 0..5 {
        v.verify(&rsa_token(&KEYS.rsa, Some("rsa-1"), &claims()))
            .await
            .unwrap();
        v.verify(&token(Algorithm::ES256, Some("ec-1"), &claims()))
            .await
            .unwrap();
    }
    assert_eq!(idp.hits(), 1);
    let status = v.jwks_status().unwrap();
    assert_eq!(status.keys, 2, "the enc key is skipped");
    assert_eq!(status.uri.as_deref(), Some(idp.uri().as_str()));
    assert!(status.fetched_at.is_some() && status.last_error.is_none());
    // A kid the set has, with the wrong key: a bad signature, and no refetch.
    let forged = rsa_token(&KEYS.rsa2, Some("rsa-1"), &claims());
    assert_eq!(v.verify(&forged).await, Err(JwtError::BadSignature));
    assert_eq!(idp.hits(), 1);
}

#[tokio::test]
async fn jwks_key_rotation_refetches_on_unknown_kid() {
    let idp = Idp::start(json!({"keys": [rsa_jwk(&KEYS.rsa, "2024")]})).await;
    let v = jwks_verifier(idp.uri(), json!({"jwks_min_refetch": "3s"}));
    assert_eq!(v.prefetch().await, Ok(1));
    assert_eq!(idp.hits(), 1);

    // The IdP rotates: the new key is published beside the old one.
    idp.publish(vec![
        rsa_jwk(&KEYS.rsa, "2024"),
        rsa_jwk(&KEYS.rsa2, "2025"),
    ]);
    let new_token = rsa_token(&KEYS.rsa2, Some("2025"), &claims());
    // Too soon after the last fetch: not refetched, the kid is unknown. (3 s: a stalled
    // machine still checks within it.)
    assert_eq!(
        v.verify(&new_token).await,
        Err(JwtError::UnknownKey {
            kid: Some("2025".into())
        })
    );
    assert_eq!(idp.hits(), 1);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    v.verify(&new_token).await.unwrap();
    assert_eq!(idp.hits(), 2, "one refetch for the unknown kid");
    v.verify(&rsa_token(&KEYS.rsa, Some("2024"), &claims()))
        .await
        .unwrap();
    v.verify(&new_token).await.unwrap();
    assert_eq!(idp.hits(), 2);

    // A flood of forged kids causes no more than one fetch per interval.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    for i in 0..20 {
        let t = rsa_token(&KEYS.rsa2, Some(&format!("forged-{i}")), &claims());
        assert!(matches!(
            v.verify(&t).await,
            Err(JwtError::UnknownKey { .. })
        ));
    }
    assert_eq!(idp.hits(), 3);
}

#[tokio::test]
async fn jwks_refreshes_in_the_background_when_stale() {
    let idp = Idp::start(json!({"keys": [rsa_jwk(&KEYS.rsa, "a")]})).await;
    let v = jwks_verifier(
        idp.uri(),
        json!({"jwks_refresh": "200ms", "jwks_min_refetch": "50ms"}),
    );
    let t = rsa_token(&KEYS.rsa, Some("a"), &claims());
    v.verify(&t).await.unwrap();
    idp.publish(vec![
        rsa_jwk(&KEYS.rsa, "a"),
        ec_jwk(&KEYS.ec256, "P-256", "b"),
    ]);
    tokio::time::sleep(Duration::from_millis(250)).await;
    // Stale: answered from the cache at once, refreshed behind it.
    v.verify(&t).await.unwrap();
    for _ in 0..250 {
        if v.jwks_status().unwrap().keys == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(v.jwks_status().unwrap().keys, 2);
    assert_eq!(idp.hits(), 2);
}

#[tokio::test]
async fn jwks_server_down_keeps_the_cached_keys() {
    let idp = Idp::start(json!({"keys": [rsa_jwk(&KEYS.rsa, "a")]})).await;
    let v = jwks_verifier(
        idp.uri(),
        json!({"jwks_refresh": "100ms", "jwks_min_refetch": "50ms", "jwks_timeout": "2s"}),
    );
    let t = rsa_token(&KEYS.rsa, Some("a"), &claims());
    v.verify(&t).await.unwrap();
    idp.kill();
    tokio::time::sleep(Duration::from_millis(150)).await;
    // Stale and the server is gone: the refresh fails, the cached key still verifies.
    v.verify(&t).await.unwrap();
    let mut status = v.jwks_status().unwrap();
    for _ in 0..250 {
        if status.last_error.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        status = v.jwks_status().unwrap();
    }
    assert!(status.last_error.is_some(), "{status:?}");
    assert_eq!(status.keys, 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    v.verify(&t).await.unwrap();
    // An unknown kid while the server is down: refetch fails, answered as unknown key
    // from the last good set (not a 503).
    let other = rsa_token(&KEYS.rsa2, Some("new"), &claims());
    assert_eq!(
        v.verify(&other).await,
        Err(JwtError::UnknownKey {
            kid: Some("new".into())
        })
    );
    v.verify(&t).await.unwrap();
}

#[tokio::test]
async fn jwks_unavailable_until_the_first_good_fetch() {
    let idp = Idp::start(json!({"keys": [rsa_jwk(&KEYS.rsa, "a")]})).await;
    idp.failing.store(true, Ordering::SeqCst);
    let v = jwks_verifier(idp.uri(), json!({"jwks_min_refetch": "100ms"}));
    let t = rsa_token(&KEYS.rsa, Some("a"), &claims());
    let e = v.verify(&t).await.unwrap_err();
    assert!(matches!(e, JwtError::JwksUnavailable(_)), "{e:?}");
    assert_eq!(e.status(), 503);
    assert!(e.to_string().contains("500"), "{e}");
    assert!(v.prefetch().await.is_err());
    idp.failing.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(150)).await;
    v.verify(&t).await.unwrap();

    // Nothing listening at all.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let v = jwks_verifier(format!("http://{dead}/jwks"), json!({}));
    assert!(matches!(
        v.verify(&t).await,
        Err(JwtError::JwksUnavailable(_))
    ));
    assert!(v.jwks_status().unwrap().last_error.is_some());
}

#[tokio::test]
async fn static_keys_are_tried_before_the_jwks() {
    let idp = Idp::start(json!({"keys": [rsa_jwk(&KEYS.rsa, "a")]})).await;
    let v = jwks_verifier(
        idp.uri(),
        json!({"keys": [{"kid": "local", "secret": SECRET}]}),
    );
    v.verify(&token(Algorithm::HS256, Some("local"), &claims()))
        .await
        .unwrap();
    assert_eq!(idp.hits(), 0);
    v.verify(&rsa_token(&KEYS.rsa, Some("a"), &claims()))
        .await
        .unwrap();
    assert_eq!(idp.hits(), 1);
}

#[tokio::test]
async fn openid_discovery_from_the_issuer() {
    let idp = Idp::start(json!({"keys": [ec_jwk(&KEYS.ec384, "P-384", "k")]})).await;
    let issuer = format!("http://{}/realm", idp.addr);
    let v = Verifier::from_value(&json!({"issuer": issuer})).unwrap();
    let t = token(Algorithm::ES384, Some("k"), &with(json!({"iss": issuer})));
    v.verify(&t).await.unwrap();
    assert_eq!(
        v.jwks_status().unwrap().uri,
        Some(format!("http://{}/realm/certs", idp.addr))
    );
}

/// A fetcher of one's own (the gateway's TLS client, say): `https://` works through it.
#[derive(Debug)]
struct InMemory(Value, AtomicUsize);

impl keel_jwt::JwksFetcher for InMemory {
    fn get<'a>(&'a self, url: &'a str) -> keel_jwt::BoxFuture<'a, Result<Vec<u8>, String>> {
        self.1.fetch_add(1, Ordering::SeqCst);
        let body = match url {
            "https://idp.test/jwks" => Ok(self.0.to_string().into_bytes()),
            other => Err(format!("unexpected {other}")),
        };
        Box::pin(async move { body })
    }
}

#[tokio::test]
async fn custom_fetcher() {
    let fetcher = Arc::new(InMemory(
        json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": B64.encode(KEYS.ed.public_key().as_ref())}]}),
        AtomicUsize::new(0),
    ));
    let config =
        keel_jwt::JwtConfig::from_value(&json!({"jwks_uri": "https://idp.test/jwks"})).unwrap();
    let v = Verifier::with_fetcher(config, fetcher.clone()).unwrap();
    v.verify(&token(Algorithm::EdDSA, Some("ed"), &claims()))
        .await
        .unwrap();
    v.verify(&token(Algorithm::EdDSA, None, &claims()))
        .await
        .unwrap();
    assert_eq!(fetcher.1.load(Ordering::SeqCst), 1);
}
