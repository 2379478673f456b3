//! Identity: password hashing, tokens, and the extractor that turns a bearer
//! token into the user behind it. One function (`authenticate`) validates a
//! token for REST and WebSocket alike.

pub mod extractor;
pub mod password;
pub mod token;

use entity::{revoked_token, user};
use sea_orm::{DatabaseConnection, DbErr, EntityTrait};

pub use extractor::{authenticate_request, AuthUser};
pub use token::{Claims, TokenId, TokenKeys};

/// Why a token does not identify an active user.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Malformed, wrongly signed, expired, or revoked (password changed,
    /// signed out).
    #[error("invalid token")]
    InvalidToken,
    /// The token is fine but its user has been deactivated.
    #[error("inactive user")]
    InactiveUser,
    #[error("database error while checking a token")]
    Database(#[from] DbErr),
    /// The ChatServer did not take a session's registration (the instance
    /// is stopping).
    #[error("chat server")]
    Server(#[source] actix::MailboxError),
}

/// The user a token stands for, if the token is valid, current and the user active.
pub async fn authenticate(
    db: &DatabaseConnection,
    keys: &TokenKeys,
    token: &str,
) -> Result<user::Model, AuthError> {
    authenticate_claims(db, keys, token)
        .await
        .map(|(user, _)| user)
}

/// `authenticate`, with the token's claims (a session closes at `exp`).
pub async fn authenticate_claims(
    db: &DatabaseConnection,
    keys: &TokenKeys,
    token: &str,
) -> Result<(user::Model, Claims), AuthError> {
    let claims = keys.decode(token).map_err(|_| AuthError::InvalidToken)?;
    current_user(db, claims).await
}

/// The user behind claims already decoded (signature and expiry checked),
/// if the token is still current and the user active: the database's part
/// of `authenticate`.
pub async fn current_user(
    db: &DatabaseConnection,
    claims: Claims,
) -> Result<(user::Model, Claims), AuthError> {
    let user = user::Entity::find_by_id(claims.user_id())
        .one(db)
        .await?
        .ok_or(AuthError::InvalidToken)?;
    if !user.is_active {
        return Err(AuthError::InactiveUser);
    }
    if user.token_version != claims.ver {
        return Err(AuthError::InvalidToken);
    }
    if let Some(id) = claims.token_id() {
        if revoked_token::Entity::find_by_id(id.to_string())
            .one(db)
            .await?
            .is_some()
        {
            return Err(AuthError::InvalidToken);
        }
    }
    Ok((user, claims))
}
