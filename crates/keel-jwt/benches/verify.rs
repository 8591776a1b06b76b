//! Verification cost per algorithm: `cargo bench -p keel-jwt`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use criterion::{Criterion, criterion_group, criterion_main};
use keel_jwt::Verifier;
use ring::{hmac, rand, signature};
use serde_json::json;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fn input(alg: &str) -> String {
    let header = json!({"alg": alg, "typ": "JWT"});
    let claims = json!({
        "sub": "user-42", "iss": "https://idp.example", "aud": "api",
        "exp": 4_000_000_000u64, "iat": 1_700_000_000u64, "roles": ["user", "admin"],
    });
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let v = Verifier::from_value(&json!({
        "keys": [
            {"alg": "HS256", "secret": std::str::from_utf8(SECRET).unwrap()},
            {"alg": "RS256", "pem_file": format!("{fixtures}/rsa.pub.pem")},
            {"alg": "ES256", "pem_file": format!("{fixtures}/ec256.pub.pem")},
        ],
        "issuer": "https://idp.example", "audiences": "api",
    }))
    .unwrap();

    let hs = {
        let i = input("HS256");
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, SECRET), i.as_bytes());
        format!("{i}.{}", URL_SAFE_NO_PAD.encode(tag))
    };
    let rs = {
        let i = input("RS256");
        let key =
            signature::RsaKeyPair::from_pkcs8(include_bytes!("../tests/fixtures/rsa.pk8.der"))
                .unwrap();
        let mut sig = vec![0; key.public().modulus_len()];
        key.sign(
            &signature::RSA_PKCS1_SHA256,
            &rand::SystemRandom::new(),
            i.as_bytes(),
            &mut sig,
        )
        .unwrap();
        format!("{i}.{}", URL_SAFE_NO_PAD.encode(sig))
    };
    let es = {
        let i = input("ES256");
        let rng = rand::SystemRandom::new();
        let key = signature::EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            include_bytes!("../tests/fixtures/ec256.pk8.der"),
            &rng,
        )
        .unwrap();
        let sig = key.sign(&rng, i.as_bytes()).unwrap();
        format!("{i}.{}", URL_SAFE_NO_PAD.encode(sig))
    };

    for (name, token) in [("HS256", &hs), ("RS256", &rs), ("ES256", &es)] {
        assert!(rt.block_on(v.verify(token)).is_ok(), "{name}");
        c.bench_function(&format!("verify {name}"), |b| {
            b.iter(|| rt.block_on(v.verify(std::hint::black_box(token))).unwrap())
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
