//! Just enough PEM and DER to read public keys: SPKI (`PUBLIC KEY`), PKCS#1
//! (`RSA PUBLIC KEY`) and the SPKI inside an X.509 `CERTIFICATE`.
//!
//! This reads trusted configuration, but it is still written defensively: every length is
//! bounds-checked and nothing panics on malformed input.

use base64::Engine as _;

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;
const OID: u8 = 0x06;
const CONTEXT_0: u8 = 0xA0;

/// 1.2.840.113549.1.1.1
const OID_RSA: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x01];
/// 1.2.840.113549.1.1.10 (RSASSA-PSS keys; used like plain RSA keys here)
const OID_RSA_PSS: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x0A];
/// 1.2.840.10045.2.1
const OID_EC: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01];
/// 1.2.840.10045.3.1.7
const OID_P256: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];
/// 1.3.132.0.34
const OID_P384: &[u8] = &[0x2B, 0x81, 0x04, 0x00, 0x22];
/// 1.3.132.0.35
const OID_P521: &[u8] = &[0x2B, 0x81, 0x04, 0x00, 0x23];
/// 1.3.101.112
const OID_ED25519: &[u8] = &[0x2B, 0x65, 0x70];

/// A public key read from DER, not yet checked for size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PublicKey {
    /// RSA modulus and exponent, big-endian, leading zeros stripped.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// An uncompressed P-256 point (`04 || x || y`).
    P256(Vec<u8>),
    /// An uncompressed P-384 point.
    P384(Vec<u8>),
    /// A 32-byte Ed25519 public key.
    Ed25519(Vec<u8>),
}

/// A cursor over DER bytes.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(rest: &'a [u8]) -> Self {
        Reader { rest }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn peek_tag(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    /// Reads one tag-length-value and returns the tag and the value.
    fn any(&mut self) -> Result<(u8, &'a [u8]), &'static str> {
        let (&tag, rest) = self.rest.split_first().ok_or("truncated DER")?;
        if tag & 0x1F == 0x1F {
            return Err("unsupported DER tag");
        }
        let (&first, mut rest) = rest.split_first().ok_or("truncated DER")?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let count = usize::from(first & 0x7F);
            if count == 0 || count > 4 {
                return Err("unsupported DER length");
            }
            if rest.len() < count {
                return Err("truncated DER");
            }
            let (bytes, after) = rest.split_at(count);
            rest = after;
            bytes
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
        };
        if rest.len() < len {
            return Err("truncated DER");
        }
        let (value, after) = rest.split_at(len);
        self.rest = after;
        Ok((tag, value))
    }

    /// Reads one element with tag `want`; any failure is reported as `what`.
    fn expect(&mut self, want: u8, what: &'static str) -> Result<&'a [u8], &'static str> {
        match self.any() {
            Ok((tag, value)) if tag == want => Ok(value),
            _ => Err(what),
        }
    }
}

/// Strips the sign byte(s) DER puts before a positive integer.
fn unsigned(int: &[u8]) -> &[u8] {
    let start = int.iter().position(|&b| b != 0).unwrap_or(int.len());
    &int[start..]
}

/// Reads a PKCS#1 `RSAPublicKey` (`SEQUENCE { n INTEGER, e INTEGER }`).
pub(crate) fn pkcs1_rsa(der: &[u8]) -> Result<PublicKey, &'static str> {
    let mut outer = Reader::new(der);
    let seq = outer.expect(SEQUENCE, "not an RSA public key (expected a SEQUENCE)")?;
    let mut r = Reader::new(seq);
    let n = r.expect(INTEGER, "RSA public key: bad modulus")?;
    let e = r.expect(INTEGER, "RSA public key: bad exponent")?;
    if !r.is_empty() || !outer.is_empty() {
        return Err("RSA public key: trailing data");
    }
    if n.first().is_some_and(|b| b & 0x80 != 0) || e.first().is_some_and(|b| b & 0x80 != 0) {
        return Err("RSA public key: negative integer");
    }
    Ok(PublicKey::Rsa {
        n: unsigned(n).to_vec(),
        e: unsigned(e).to_vec(),
    })
}

/// Reads a `SubjectPublicKeyInfo`.
pub(crate) fn spki(der: &[u8]) -> Result<PublicKey, &'static str> {
    let mut outer = Reader::new(der);
    let seq = outer.expect(SEQUENCE, "not a public key (expected a SEQUENCE)")?;
    if !outer.is_empty() {
        return Err("public key: trailing data");
    }
    spki_fields(seq)
}

fn spki_fields(seq: &[u8]) -> Result<PublicKey, &'static str> {
    let mut r = Reader::new(seq);
    let alg = r.expect(SEQUENCE, "public key: bad algorithm identifier")?;
    let bits = r.expect(BIT_STRING, "public key: bad key bit string")?;
    let (&unused, key) = bits.split_first().ok_or("public key: empty bit string")?;
    if unused != 0 {
        return Err("public key: bit string is not whole bytes");
    }
    let mut a = Reader::new(alg);
    let oid = a.expect(OID, "public key: bad algorithm identifier")?;
    let params = if a.is_empty() { None } else { Some(a.any()?) };
    match oid {
        OID_RSA | OID_RSA_PSS => pkcs1_rsa(key),
        OID_EC => match params {
            Some((OID, OID_P256)) => point(key, 65).map(PublicKey::P256),
            Some((OID, OID_P384)) => point(key, 97).map(PublicKey::P384),
            Some((OID, OID_P521)) => Err("P-521 keys (ES512) are not supported"),
            _ => Err("unsupported elliptic curve (P-256 and P-384 are supported)"),
        },
        OID_ED25519 => match (params, key.len()) {
            (None, 32) => Ok(PublicKey::Ed25519(key.to_vec())),
            _ => Err("bad Ed25519 public key"),
        },
        _ => Err("unsupported public key type (RSA, EC P-256/P-384 and Ed25519 are supported)"),
    }
}

fn point(key: &[u8], len: usize) -> Result<Vec<u8>, &'static str> {
    match key.first() {
        Some(0x04) if key.len() == len => Ok(key.to_vec()),
        Some(0x02 | 0x03) => Err("compressed EC points are not supported"),
        _ => Err("bad EC public key point"),
    }
}

/// Reads the `SubjectPublicKeyInfo` inside an X.509 certificate (the certificate itself
/// is not validated: it is only a container for the key).
pub(crate) fn certificate(der: &[u8]) -> Result<PublicKey, &'static str> {
    let mut outer = Reader::new(der);
    let cert = outer.expect(SEQUENCE, "not a certificate")?;
    let mut c = Reader::new(cert);
    let tbs = c.expect(SEQUENCE, "certificate: bad tbsCertificate")?;
    let mut t = Reader::new(tbs);
    if t.peek_tag() == Some(CONTEXT_0) {
        t.any()?; // version
    }
    t.expect(INTEGER, "certificate: bad serial number")?;
    t.expect(SEQUENCE, "certificate: bad signature algorithm")?;
    t.expect(SEQUENCE, "certificate: bad issuer")?;
    t.expect(SEQUENCE, "certificate: bad validity")?;
    t.expect(SEQUENCE, "certificate: bad subject")?;
    let spki = t.expect(SEQUENCE, "certificate: bad subject public key info")?;
    spki_fields(spki)
}

/// Reads a public key from PEM text: the first `PUBLIC KEY`, `RSA PUBLIC KEY` or
/// `CERTIFICATE` block.
pub(crate) fn pem(text: &str) -> Result<PublicKey, String> {
    let mut rest = text;
    let mut seen = Vec::new();
    while let Some(start) = rest.find("-----BEGIN ") {
        let after = &rest[start + "-----BEGIN ".len()..];
        let label_end = after.find("-----").ok_or("bad PEM header line")?;
        let label = &after[..label_end];
        let body = &after[label_end + 5..];
        let end_marker = format!("-----END {label}-----");
        let end = body
            .find(&end_marker)
            .ok_or_else(|| format!("PEM block {label:?} has no END line"))?;
        let b64: String = body[..end]
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        rest = &body[end + end_marker.len()..];
        let reader = match label {
            "PUBLIC KEY" => spki,
            "RSA PUBLIC KEY" => pkcs1_rsa,
            "CERTIFICATE" => certificate,
            "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY" | "ENCRYPTED PRIVATE KEY" => {
                return Err(format!(
                    "found a {label}; configure the public key (`openssl pkey -pubout`), never a private key"
                ));
            }
            other => {
                seen.push(other.to_owned());
                continue;
            }
        };
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("PEM block {label:?} is not valid base64: {e}"))?;
        return reader(&der).map_err(str::to_owned);
    }
    if seen.is_empty() {
        Err("no PEM block found (expected -----BEGIN PUBLIC KEY-----)".to_owned())
    } else {
        Err(format!(
            "no public key in PEM (found {}; expected PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE)",
            seen.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA_SPKI: &str = include_str!("../tests/fixtures/rsa.pub.pem");
    const RSA_PKCS1: &str = include_str!("../tests/fixtures/rsa.pkcs1.pub.pem");
    const RSA_CERT: &str = include_str!("../tests/fixtures/rsa.cert.pem");
    const EC256: &str = include_str!("../tests/fixtures/ec256.pub.pem");
    const EC384: &str = include_str!("../tests/fixtures/ec384.pub.pem");
    const ED: &str = include_str!("../tests/fixtures/ed25519.pub.pem");

    #[test]
    fn rsa_spki_pkcs1_and_certificate_agree() {
        let a = pem(RSA_SPKI).unwrap();
        assert_eq!(pem(RSA_PKCS1).unwrap(), a);
        assert_eq!(pem(RSA_CERT).unwrap(), a);
        let PublicKey::Rsa { n, e } = a else {
            panic!("not RSA")
        };
        assert_eq!(n.len(), 256);
        assert_eq!(e, vec![1, 0, 1]);
    }

    #[test]
    fn ec_and_ed25519() {
        assert!(matches!(pem(EC256).unwrap(), PublicKey::P256(p) if p.len() == 65));
        assert!(matches!(pem(EC384).unwrap(), PublicKey::P384(p) if p.len() == 97));
        assert!(matches!(pem(ED).unwrap(), PublicKey::Ed25519(p) if p.len() == 32));
    }

    #[test]
    fn private_keys_and_garbage_are_refused() {
        let e = pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").unwrap_err();
        assert!(e.contains("never a private key"), "{e}");
        assert!(pem("hello").unwrap_err().contains("no PEM block"));
        let e = pem("-----BEGIN PUBLIC KEY-----\n!!!\n-----END PUBLIC KEY-----").unwrap_err();
        assert!(e.contains("base64"), "{e}");
        let e = pem("-----BEGIN PUBLIC KEY-----\nMAA=\n-----END PUBLIC KEY-----").unwrap_err();
        assert!(e.contains("algorithm identifier"), "{e}");
    }

    #[test]
    fn truncated_der_never_panics() {
        let der = base64::engine::general_purpose::STANDARD
            .decode(
                RSA_SPKI
                    .lines()
                    .filter(|l| !l.starts_with("-----"))
                    .collect::<String>(),
            )
            .unwrap();
        for len in 0..der.len() {
            assert!(spki(&der[..len]).is_err(), "prefix {len} parsed");
        }
        // Every single-byte corruption either fails or yields some key; none panics.
        for i in 0..der.len() {
            let mut d = der.clone();
            d[i] ^= 0xFF;
            let _ = spki(&d);
        }
    }
}
