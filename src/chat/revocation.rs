//! The revocation sweep: tokens are revoked in the database (a password
//! change, a deactivation), possibly by another process such as the
//! `chat-server user` command. Every few seconds each instance compares its
//! online sessions' `token_version` and their users' `is_active` with the
//! database and closes the sessions whose tokens were revoked. (A password change over REST closes them at
//! once; this catches every other path.)

use std::collections::HashMap;
use std::time::Duration;

use actix::Addr;
use entity::user;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QuerySelect};

use super::messages::{OnlineVersions, RevokeUser};
use super::protocol::UserId;
use super::server::ChatServer;

/// How often the sweep runs: the longest a revoked session stays open.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(5);
/// Users checked per query.
const CHUNK: usize = 1000;

/// Runs the sweep until the ChatServer stops.
pub async fn run(db: DatabaseConnection, server: Addr<ChatServer>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Ok(online) = server.send(OnlineVersions).await else {
            return;
        };
        for chunk in online.chunks(CHUNK) {
            match revoked(&db, chunk).await {
                Ok(revocations) => {
                    for revoke in revocations {
                        tracing::info!(
                            user = revoke.user.0,
                            "tokens revoked; closing the user's sessions on older tokens"
                        );
                        server.do_send(revoke);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "revocation sweep failed; retrying next round")
                }
            }
        }
    }
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
                Some((current, true)) => (current > *oldest).then_some(RevokeUser {
                    user,
                    current_version: current,
                    broadcast: false,
                }),
            }
        })
        .collect())
}
