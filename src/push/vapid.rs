//! VAPID (RFC 8292): the server signs, for each push service, a short-lived
//! JWT (ES256) with its P-256 key; browsers subscribed with the matching
//! public key, so a push service accepts pushes from this server only.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};

/// How long a signature is good for (RFC 8292 allows at most 24 h).
const VALID_SECONDS: i64 = 12 * 3600;

/// The server's VAPID key pair.
#[derive(Clone)]
pub struct Vapid {
    key: SigningKey,
    /// The uncompressed public point, base64url: what browsers subscribe with.
    public: String,
    subject: String,
}

impl std::fmt::Debug for Vapid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vapid")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// The configured key is not a P-256 private key.
#[derive(Debug, thiserror::Error)]
#[error("the VAPID private key is not a valid P-256 key")]
pub struct BadKey;

impl Vapid {
    /// From the 32-byte private scalar and the `sub` contact.
    pub fn new(private: &[u8], subject: &str) -> Result<Self, BadKey> {
        let key = SigningKey::from_slice(private).map_err(|_| BadKey)?;
        let point = key.verifying_key().to_encoded_point(false);
        Ok(Vapid {
            public: URL_SAFE_NO_PAD.encode(point.as_bytes()),
            key,
            subject: subject.to_string(),
        })
    }

    /// The public key, base64url (`GET /api/push/key/`).
    pub fn public_key(&self) -> &str {
        &self.public
    }

    /// The `Authorization` header for a push service at `origin`
    /// (`https://host[:port]`): `vapid t=<JWT>, k=<public key>`.
    pub fn authorization(&self, origin: &str, now: i64) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ES256"}"#);
        let claims = serde_json::json!({
            "aud": origin,
            "exp": now + VALID_SECONDS,
            "sub": self.subject,
        });
        let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signed = format!("{header}.{claims}");
        let signature: Signature = self.key.sign(signed.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(signature.to_bytes());
        format!("vapid t={signed}.{signature}, k={}", self.public)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Verifier;
    use p256::ecdsa::VerifyingKey;

    #[test]
    fn the_header_is_a_jwt_the_public_key_verifies() {
        let vapid = Vapid::new(&[7u8; 32], "mailto:ops@example.com").unwrap();
        let header = vapid.authorization("https://push.example", 1_000);
        let (token, key) = header
            .strip_prefix("vapid t=")
            .and_then(|rest| rest.split_once(", k="))
            .unwrap();
        assert_eq!(key, vapid.public_key());
        let (signed, signature) = token.rsplit_once('.').unwrap();
        let public = URL_SAFE_NO_PAD.decode(key).unwrap();
        let verifier = VerifyingKey::from_sec1_bytes(&public).unwrap();
        let signature = Signature::from_slice(&URL_SAFE_NO_PAD.decode(signature).unwrap()).unwrap();
        verifier.verify(signed.as_bytes(), &signature).unwrap();
        let claims = URL_SAFE_NO_PAD
            .decode(signed.split('.').nth(1).unwrap())
            .unwrap();
        let claims: serde_json::Value = serde_json::from_slice(&claims).unwrap();
        assert_eq!(
            claims,
            serde_json::json!({"aud": "https://push.example", "exp": 1_000 + 12 * 3600, "sub": "mailto:ops@example.com"})
        );
    }

    #[test]
    fn a_zero_key_is_refused() {
        assert!(Vapid::new(&[0u8; 32], "mailto:a@b").is_err());
    }
}
