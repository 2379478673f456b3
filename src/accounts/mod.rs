//! Account and conversation management shared by the REST API and the
//! command line: creating users, passwords, activation, direct conversations.

use chrono::Utc;
use entity::{chat, chat_member, revoked_token, user};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseConnection, DbErr, EntityTrait,
    IntoActiveModel, QueryFilter, SqlErr,
};

use crate::auth::password::MIN_PASSWORD_LEN;
use crate::auth::TokenId;

mod hashing;
pub use hashing::{hash_password, verify_password};

/// Longest username, as in Django.
pub const MAX_USERNAME_LEN: usize = 150;

/// Why an account operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("A user with that username already exists.")]
    UsernameTaken,
    #[error("A user with a confusingly similar username already exists.")]
    UsernameConfusable,
    #[error("{0}")]
    InvalidUsername(String),
    #[error("{0}")]
    InvalidPassword(String),
    #[error("no such user: {0}")]
    NoSuchUser(String),
    #[error("a conversation needs two different users")]
    SameUser,
    #[error("database error: {0}")]
    Database(#[from] DbErr),
    #[error("password hashing task failed: {0}")]
    Hashing(String),
    /// As many password hashes are waiting for a core as may: the request
    /// is refused at once (503, try again) instead of queued without end.
    #[error("{0} password hashes are waiting for a core already")]
    HashingBusy(usize),
    /// The account's tokens were revoked (its password changed, or it was
    /// deactivated) while this change was being made: the change is not made.
    #[error("the account changed meanwhile; log in again")]
    ChangedMeanwhile,
}

/// The fields of a new account.
#[derive(Debug, Clone, Default)]
pub struct NewUser {
    pub username: String,
    pub password: String,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    pub is_staff: bool,
    pub is_superuser: bool,
}

/// Checks a (normalised) username against Django's rules: 1-150 of
/// letters, digits and `@.+-_`.
pub fn validate_username(username: &str) -> Result<(), AccountError> {
    if username.is_empty() || username.chars().count() > MAX_USERNAME_LEN {
        return Err(AccountError::InvalidUsername(format!(
            "Ensure this field has between 1 and {MAX_USERNAME_LEN} characters."
        )));
    }
    if !username
        .chars()
        .all(|c| c.is_alphanumeric() || "@.+-_".contains(c))
    {
        return Err(AccountError::InvalidUsername(
            "Enter a valid username. This value may contain only letters, numbers, and @/./+/-/_ characters.".into(),
        ));
    }
    Ok(())
}

/// Longest password accepted (argon2 hashes any length; this bounds the work).
const MAX_PASSWORD_BYTES: usize = 1024;

/// Checks a new password: long enough, not easy to guess (zxcvbn's score
/// of at least 2, and not one of its 30,000 common passwords), and not the
/// username.
pub fn validate_password(password: &str, username: &str) -> Result<(), AccountError> {
    let invalid = |m: &str| Err(AccountError::InvalidPassword(m.to_string()));
    if password.chars().count() < MIN_PASSWORD_LEN {
        return invalid(&format!(
            "This password is too short. It must contain at least {MIN_PASSWORD_LEN} characters."
        ));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return invalid("This password is too long.");
    }
    let folded = password.trim().to_lowercase();
    let name = username.trim().to_lowercase();
    if !name.is_empty()
        && (folded == name || folded.contains(&name) && name.len() * 2 > folded.len())
    {
        return invalid("The password is too similar to the username.");
    }
    if is_common_password(password, username) {
        return invalid("This password is too common.");
    }
    Ok(())
}

/// Whether zxcvbn finds the password guessable within its first million
/// guesses (a score below 2: `Passw0rd!`, `Summer2024`), or finds it whole
/// in its list of common passwords.
fn is_common_password(password: &str, username: &str) -> bool {
    use zxcvbn::matching::patterns::MatchPattern;
    let estimate = zxcvbn::zxcvbn(password, &[username]);
    if estimate.score() < zxcvbn::Score::Two {
        return true;
    }
    match estimate.sequence() {
        [only] => matches!(
            &only.pattern,
            // zxcvbn does not export its dictionary type; its default is
            // `Passwords`, the list of common passwords.
            MatchPattern::Dictionary(d) if d.dictionary_name == Default::default()
        ),
        _ => false,
    }
}

/// Creates an account.
pub async fn create_user(
    db: &DatabaseConnection,
    new: NewUser,
) -> Result<user::Model, AccountError> {
    let username = user::normalize_username(&new.username);
    validate_username(&username)?;
    validate_password(&new.password, &username)?;
    check_username_free(db, &username).await?;
    let password_hash = hash_password(new.password.clone()).await?;
    insert_user(db, new, password_hash).await
}

/// Inserts an account whose password is already hashed (`password_hash`, a
/// PHC string from [`crate::auth::password::hash_password`]); `new.password` is not read.
/// For callers that hash once and create many accounts with one password,
/// such as the test fixtures. The username's form is checked here; a taken
/// or confusable one is refused by the unique key (`UsernameTaken`), where
/// [`create_user`] tells the two apart before it hashes.
pub async fn insert_user(
    db: &DatabaseConnection,
    new: NewUser,
    password_hash: String,
) -> Result<user::Model, AccountError> {
    let username = user::normalize_username(&new.username);
    validate_username(&username)?;
    let model = user::ActiveModel {
        username_key: Set(user::username_key(&username)),
        username: Set(username),
        email: Set(new.email),
        first_name: Set(new.first_name),
        last_name: Set(new.last_name),
        password_hash: Set(password_hash),
        is_active: Set(true),
        is_staff: Set(new.is_staff),
        is_superuser: Set(new.is_superuser),
        token_version: Set(0),
        tokens_changed_at: Set(0),
        created_at: Set(Utc::now()),
        last_login: Set(None),
        ..Default::default()
    };
    model.insert(db).await.map_err(|e| match e.sql_err() {
        Some(SqlErr::UniqueConstraintViolation(_)) => AccountError::UsernameTaken,
        _ => AccountError::Database(e),
    })
}

/// Refuses a username that is taken, or that looks like one that is
/// (`Bob`, `ｂｏｂ` or `bоb` beside `bob`). Checked before any password is
/// asked for or hashed; the unique key catches a concurrent registration.
pub async fn check_username_free(db: &DatabaseConnection, raw: &str) -> Result<(), AccountError> {
    let username = user::normalize_username(raw);
    let key = user::username_key(&username);
    let existing = user::Entity::find()
        .filter(
            sea_orm::Condition::any()
                .add(user::Column::Username.eq(username.as_str()))
                .add(user::Column::UsernameKey.eq(key)),
        )
        .one(db)
        .await?;
    match existing {
        None => Ok(()),
        Some(u) if u.username == username => Err(AccountError::UsernameTaken),
        Some(_) => Err(AccountError::UsernameConfusable),
    }
}

/// The account with this username: the exact name, else the one whose name
/// differs only in case, width or look-alike letters.
pub async fn find_by_username(
    db: &DatabaseConnection,
    username: &str,
) -> Result<Option<user::Model>, DbErr> {
    let exact = user::Entity::find()
        .filter(user::Column::Username.eq(username))
        .one(db)
        .await?;
    if exact.is_some() {
        return Ok(exact);
    }
    user::Entity::find()
        .filter(user::Column::UsernameKey.eq(user::username_key(username)))
        .one(db)
        .await
}

async fn require_user(
    db: &DatabaseConnection,
    username: &str,
) -> Result<user::Model, AccountError> {
    find_by_username(db, username)
        .await?
        .ok_or_else(|| AccountError::NoSuchUser(username.to_string()))
}

/// Sets a new password and revokes every token issued before, if the
/// account is still at `user`'s `token_version` (the one the caller's token
/// carries): a compare-and-swap, so a change made meanwhile elsewhere (the
/// command line, another request) is never overwritten, and the caller's
/// new token is of the version actually written. Otherwise
/// `ChangedMeanwhile`, and nothing is changed.
pub async fn set_password(
    db: &DatabaseConnection,
    user: user::Model,
    password: String,
) -> Result<user::Model, AccountError> {
    validate_password(&password, &user.username)?;
    let hash = hash_password(password).await?;
    let written = user::Entity::update_many()
        .col_expr(user::Column::PasswordHash, Expr::value(hash.clone()))
        .col_expr(
            user::Column::TokenVersion,
            Expr::value(user.token_version + 1),
        )
        .col_expr(user::Column::TokensChangedAt, Expr::value(now_seconds()))
        .filter(user::Column::Id.eq(user.id))
        .filter(user::Column::TokenVersion.eq(user.token_version))
        .exec(db)
        .await?;
    if written.rows_affected == 0 {
        return Err(AccountError::ChangedMeanwhile);
    }
    Ok(user::Model {
        password_hash: hash,
        token_version: user.token_version + 1,
        ..user
    })
}

/// Sets a password by username (the command line's form): whatever else
/// happens meanwhile, this one wins, and every token issued before it is
/// revoked (the version moves in the database, never from a value read
/// earlier).
pub async fn set_password_of(
    db: &DatabaseConnection,
    username: &str,
    password: String,
) -> Result<user::Model, AccountError> {
    let user = require_user(db, username).await?;
    validate_password(&password, &user.username)?;
    let hash = hash_password(password).await?;
    revoke_with(db, user.id, user::Column::PasswordHash, Expr::value(hash)).await
}

/// Activates or deactivates an account; deactivating revokes its tokens.
pub async fn set_active(
    db: &DatabaseConnection,
    username: &str,
    active: bool,
) -> Result<user::Model, AccountError> {
    let user = require_user(db, username).await?;
    if active {
        let mut model = user.into_active_model();
        model.is_active = Set(true);
        return Ok(model.update(db).await?);
    }
    revoke_with(db, user.id, user::Column::IsActive, Expr::value(false)).await
}

/// Revokes every token of account `id` (and so closes its sessions once
/// the ChatServer is told): `token_version` moves forward in one statement.
pub async fn revoke_tokens(db: &DatabaseConnection, id: i64) -> Result<user::Model, AccountError> {
    revoke(db, id, None).await
}

/// Revokes one token of account `id` (`POST /api/logout/`): it is refused
/// from now on, and its row is swept once the token would have expired.
/// Signing the same token out twice changes nothing.
pub async fn revoke_token(
    db: &DatabaseConnection,
    id: i64,
    token: TokenId,
    expires_at: i64,
) -> Result<(), AccountError> {
    let row = revoked_token::ActiveModel {
        id: Set(token.to_string()),
        user_id: Set(id),
        expires_at: Set(expires_at),
        revoked_at: Set(now_seconds()),
    };
    revoked_token::Entity::insert(row)
        .on_conflict(
            OnConflict::column(revoked_token::Column::Id)
                // Not `do_nothing`: MySQL has no portable spelling of it.
                .update_column(revoked_token::Column::ExpiresAt)
                .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    Ok(())
}

/// Deletes the revoked tokens that have expired by `now` (seconds since
/// the epoch); any instance may run it at any time.
pub async fn sweep_revoked_tokens(db: &DatabaseConnection, now: i64) -> Result<u64, DbErr> {
    let deleted = revoked_token::Entity::delete_many()
        .filter(revoked_token::Column::ExpiresAt.lte(now))
        .exec(db)
        .await?;
    Ok(deleted.rows_affected)
}

/// Sets `column` and moves the account's `token_version` forward in one
/// statement, then reads the account back.
async fn revoke_with(
    db: &DatabaseConnection,
    id: i64,
    column: user::Column,
    value: Expr,
) -> Result<user::Model, AccountError> {
    revoke(db, id, Some((column, value))).await
}

/// Moves the account's `token_version` forward (`token_version + 1`, so a
/// concurrent change cannot undo the revocation), setting `also` in the
/// same statement, and reads the account back.
async fn revoke(
    db: &DatabaseConnection,
    id: i64,
    also: Option<(user::Column, Expr)>,
) -> Result<user::Model, AccountError> {
    let mut update = user::Entity::update_many()
        .col_expr(
            user::Column::TokenVersion,
            Expr::col(user::Column::TokenVersion).add(1),
        )
        .col_expr(user::Column::TokensChangedAt, Expr::value(now_seconds()));
    if let Some((column, value)) = also {
        update = update.col_expr(column, value);
    }
    update.filter(user::Column::Id.eq(id)).exec(db).await?;
    // No device is signed in any more: none is pushed to either.
    crate::push::subscriptions::remove_all(db, crate::chat::protocol::UserId(id)).await?;
    user::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or_else(|| AccountError::NoSuchUser(id.to_string()))
}

/// The direct conversation of two users, created on first use. Safe under
/// concurrent calls: `direct_key` is unique, the loser of a race reads the winner's.
pub async fn direct_chat(
    db: &DatabaseConnection,
    a: i64,
    b: i64,
) -> Result<(chat::Model, bool), AccountError> {
    if a == b {
        return Err(AccountError::SameUser);
    }
    let key = chat::direct_key(a, b);
    if let Some(existing) = find_direct(db, &key).await? {
        return Ok((existing, false));
    }
    let now = Utc::now();
    let created = async {
        let txn = crate::db::begin(db).await?;
        let chat = chat::ActiveModel {
            id: Set(uuid::Uuid::new_v4()),
            kind: Set(chat::ChatKind::Direct),
            title: Set(None),
            direct_key: Set(Some(key.clone())),
            created_at: Set(now),
            seq: Set(0),
        }
        .insert(&txn)
        .await?;
        for user_id in [a, b] {
            chat_member::ActiveModel {
                chat_id: Set(chat.id),
                user_id: Set(user_id),
                joined_at: Set(now),
                last_read_message_id: Set(None),
                role: Set(chat_member::Role::Member),
                muted: Set(false),
            }
            .insert(&txn)
            .await?;
        }
        txn.commit().await?;
        Ok::<_, DbErr>(chat)
    }
    .await;
    match created {
        Ok(chat) => Ok((chat, true)),
        Err(e) => match find_direct(db, &key).await? {
            Some(existing) => Ok((existing, false)),
            None => Err(AccountError::Database(e)),
        },
    }
}

async fn find_direct(db: &DatabaseConnection, key: &str) -> Result<Option<chat::Model>, DbErr> {
    chat::Entity::find()
        .filter(chat::Column::DirectKey.eq(key))
        .one(db)
        .await
}

/// `direct_chat` by usernames (the command line's `contact add`).
pub async fn add_contact(
    db: &DatabaseConnection,
    first: &str,
    second: &str,
) -> Result<(chat::Model, bool), AccountError> {
    let a = require_user(db, first).await?;
    let b = require_user(db, second).await?;
    direct_chat(db, a.id, b.id).await
}

/// Now, in seconds since the epoch: the stamp the revocation sweep reads
/// revocations by (`chat::revocation`).
pub fn now_seconds() -> i64 {
    Utc::now().timestamp()
}

#[cfg(test)]
mod tests {
    use super::validate_password;

    #[test]
    fn guessable_passwords_are_refused_and_passphrases_accepted() {
        for weak in [
            "Passw0rd!",
            "Qwerty123!",
            "Summer2024",
            "password1",
            "12345678",
        ] {
            assert!(validate_password(weak, "someone").is_err(), "{weak}");
        }
        for fine in [
            "correct horse battery",
            "a fine password",
            "long enough pw",
            "a long passphrase",
            "another long passphrase",
            "a brand new password",
            "a changed password",
            "another long one",
            "another good one",
            "quiet river stones",
            "bench password 123",
        ] {
            assert!(validate_password(fine, "someone").is_ok(), "{fine}");
        }
    }
}
