//! JWT tokens (HS256, signed with `SECRET_KEY`): who, until when, and which
//! `token_version` of the user they were issued under.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// What a token says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user id, as a string (RFC 7519 makes `sub` a string).
    pub sub: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Issue time, seconds since the epoch.
    pub iat: u64,
    /// The user's `token_version` at issue; a bump revokes the token.
    pub ver: i32,
    /// The token's own id (128 random bits, hex): `POST /api/logout/`
    /// revokes this one token by it. Tokens issued before it existed have
    /// none; signing such a token out revokes every token of its user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}

impl Claims {
    /// How long until the token expires (zero once it has).
    pub fn remaining(&self) -> Duration {
        Duration::from_secs(self.exp.saturating_sub(now_seconds()))
    }

    /// The user id the token was issued to (0, which no user has, if `sub` is garbage).
    pub fn user_id(&self) -> i64 {
        self.sub.parse().unwrap_or(0)
    }

    /// The token's id, if it has a well-formed one (32 hex digits).
    pub fn token_id(&self) -> Option<TokenId> {
        TokenId::parse(self.jti.as_deref()?)
    }

    /// The expiry as a database value (seconds since the epoch).
    pub fn expires_at(&self) -> i64 {
        i64::try_from(self.exp).unwrap_or(i64::MAX)
    }
}

/// A token's `jti`: what `POST /api/logout/` revokes and a session remembers
/// (16 bytes, where the text would be a 32-byte heap string per session; as
/// bytes, not a `u128`, so it does not raise a session's record to 16-byte
/// alignment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenId([u8; 16]);

impl TokenId {
    pub fn new(id: u128) -> Self {
        TokenId(id.to_be_bytes())
    }

    /// From its text (32 hex digits).
    pub fn parse(text: &str) -> Option<Self> {
        (text.len() == 32)
            .then(|| u128::from_str_radix(text, 16).ok())
            .flatten()
            .map(Self::new)
    }
}

impl std::fmt::Display for TokenId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", u128::from_be_bytes(self.0))
    }
}

/// Signing and verification keys, and how long a new token lives.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl TokenKeys {
    /// Keys derived from the secret.
    pub fn new(secret: &str, ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub", "iat"]);
        Self {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
            ttl,
        }
    }

    /// A new token for the user at their current `token_version`.
    pub fn issue(&self, user_id: i64, token_version: i32) -> String {
        let now = now_seconds();
        let claims = Claims {
            sub: user_id.to_string(),
            iat: now,
            exp: now + self.ttl.as_secs(),
            ver: token_version,
            jti: Some(TokenId::new(rand::random()).to_string()),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing of plain claims cannot fail")
    }

    /// The claims of a well-formed, correctly signed, unexpired token.
    pub fn decode(&self, token: &str) -> Result<Claims, jsonwebtoken::errors::Error> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).map(|d| d.claims)
    }
}

fn now_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_and_decode() {
        let keys = TokenKeys::new("secret", Duration::from_secs(60));
        let token = keys.issue(7, 3);
        let claims = keys.decode(&token).unwrap();
        assert_eq!((claims.user_id(), claims.ver), (7, 3));
        let id = claims.token_id().expect("a new token has an id");
        assert_eq!(claims.jti.as_deref(), Some(id.to_string().as_str()));
        let again = keys.decode(&keys.issue(7, 3)).unwrap().token_id();
        assert_ne!(again, Some(id), "each token has its own id");
    }

    #[test]
    fn a_token_without_a_well_formed_id_has_none() {
        let mut claims = Claims {
            sub: "7".into(),
            exp: 1,
            iat: 0,
            ver: 0,
            jti: None,
        };
        assert_eq!(claims.token_id(), None);
        claims.jti = Some("xyz".into());
        assert_eq!(claims.token_id(), None);
        claims.jti = Some("0".repeat(31) + "a");
        assert_eq!(claims.token_id(), Some(TokenId::new(10)));
    }

    #[test]
    fn rejects_other_secret_and_garbage() {
        let keys = TokenKeys::new("secret", Duration::from_secs(60));
        let other = TokenKeys::new("other", Duration::from_secs(60));
        assert!(keys.decode(&other.issue(7, 0)).is_err());
        assert!(keys.decode("not.a.token").is_err());
    }
}
