//! The revocation sweep: tokens are revoked in the database (a password
//! change, a deactivation, a sign-out), possibly by another process such as
//! the `chat-server user` command or an instance whose bus message was lost.
//! Every few seconds each instance compares its online sessions' tokens
//! (`token_version`, `jti`) and their users' `is_active` with the database
//! and closes the sessions whose tokens were revoked. (A change over REST
//! closes them at once; this catches every other path.) It also deletes the
//! signed-out tokens that have expired.

use std::collections::HashMap;
use std::time::Duration;

use actix::Addr;
use entity::{revoked_token, user};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QuerySelect};

use super::messages::{OnlineTokens, OnlineVersions, RevokeUser};
use super::protocol::UserId;
use super::server::ChatServer;
use crate::accounts;
use crate::auth::TokenId;

/// How often the sweep runs: the longest a revoked session stays open.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(5);
/// Every how many rounds expired signed-out tokens are deleted (5 minutes).
const PURGE_EVERY: u32 = 60;
/// Users (or tokens) checked per query.
const CHUNK: usize = 1000;

/// Runs the sweep until the ChatServer stops.
pub async fn run(db: DatabaseConnection, server: Addr<ChatServer>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut round: u32 = 0;
    loop {
        tick.tick().await;
        let (Ok(online), Ok(tokens)) = (
            server.send(OnlineVersions).await,
            server.send(OnlineTokens).await,
        ) else {
            return;
        };
        for chunk in online.chunks(CHUNK) {
            close(&server, revoked(&db, chunk).await);
        }
        for chunk in tokens.chunks(CHUNK) {
            close(&server, signed_out(&db, chunk).await);
        }
        if round.is_multiple_of(PURGE_EVERY) {
            purge_expired(&db).await;
        }
        round = round.wrapping_add(1);
    }
}

fn close(server: &Addr<ChatServer>, found: Result<Vec<RevokeUser>, sea_orm::DbErr>) {
    match found {
        Ok(revocations) => {
            for revoke in revocations {
                tracing::info!(
                    user = revoke.user.0,
                    "tokens revoked; closing the user's sessions on them"
                );
                server.do_send(revoke);
            }
        }
        Err(e) => tracing::warn!(error = %e, "revocation sweep failed; retrying next round"),
    }
}

async fn purge_expired(db: &DatabaseConnection) {
    let now = chrono::Utc::now().timestamp();
    match accounts::sweep_revoked_tokens(db, now).await {
        Ok(0) => {}
        Ok(n) => tracing::debug!(rows = n, "deleted expired signed-out tokens"),
        Err(e) => tracing::warn!(error = %e, "deleting expired signed-out tokens failed"),
    }
}

/// The sessions among `online` whose token was signed out.
async fn signed_out(
    db: &DatabaseConnection,
    online: &[(UserId, TokenId)],
) -> Result<Vec<RevokeUser>, sea_orm::DbErr> {
    let rows: Vec<(String, i64)> = revoked_token::Entity::find()
        .select_only()
        .column(revoked_token::Column::Id)
        .column(revoked_token::Column::UserId)
        .filter(revoked_token::Column::Id.is_in(online.iter().map(|(_, t)| t.to_string())))
        .into_tuple()
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, user)| {
            let token = TokenId::parse(&id)?;
            Some(RevokeUser::token(UserId(user), token, false))
        })
        .collect())
}

/// For the users among `online` with a session on a token no longer valid,
/// what to revoke. Each session's own version counts: a user who logged in
/// again after a password change does not shield their older sessions.
async fn revoked(
    db: &DatabaseConnection,
    online: &[(UserId, i32)],
) -> Result<Vec<RevokeUser>, sea_orm::DbErr> {
    let authorized: HashMap<i64, i32> = online.iter().map(|(u, v)| (u.0, *v)).collect();
    let current: Vec<(i64, i32, bool)> = user::Entity::find()
        .select_only()
        .column(user::Column::Id)
        .column(user::Column::TokenVersion)
        .column(user::Column::IsActive)
        .filter(user::Column::Id.is_in(authorized.keys().copied()))
        .into_tuple()
        .all(db)
        .await?;
    let mut found: HashMap<i64, (i32, bool)> =
        current.into_iter().map(|(id, v, a)| (id, (v, a))).collect();
    Ok(authorized
        .iter()
        .filter_map(|(id, oldest)| {
            let user = UserId(*id);
            match found.remove(id) {
                Some((_, false)) | None => Some(RevokeUser::all(user, false)),
                Some((current, true)) => {
                    (current > *oldest).then(|| RevokeUser::older_than(user, current, false))
                }
            }
        })
        .collect())
}
