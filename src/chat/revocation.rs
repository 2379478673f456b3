//! The revocation sweep: tokens are revoked in the database (a password
//! change, a deactivation, a sign-out), possibly by another process such as
//! the `chat-server user` command or an instance whose bus message was lost.
//! A change over REST closes its sessions at once; this catches every other
//! path, within `SWEEP_INTERVAL`. It also deletes the signed-out tokens that
//! have expired.
//!
//! Each round reads only what changed: every revocation is stamped when it
//! is written (`users.tokens_changed_at`, `revoked_tokens.revoked_at`), and
//! a round reads the rows stamped since the previous round began, less
//! `CLOCK_SLACK` for a writer whose clock is behind ours. The ChatServer
//! closes the sessions here that those rows revoke, so a round costs the
//! revocations of the last minute, not the sessions online (it was 19
//! queries of 1,000 tokens every 5 s at 19,000 sessions, a tenth of an idle
//! server's CPU). A full round, at start and every
//! `REVOCATION_FULL_SWEEP_SECONDS`, checks every online user and token
//! against the database as before: it finds rows written before the stamps
//! existed, and by a clock further behind than the slack.

use std::time::{Duration, Instant};

use actix::Addr;
use entity::{revoked_token, user};
use sea_orm::{
    ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QuerySelect, Select,
};

use super::messages::{LocalUsers, OnlineTokens, Recheck};
use super::protocol::UserId;
use super::server::ChatServer;
use crate::accounts;
use crate::auth::TokenId;

/// How often the sweep runs: the longest a revoked session stays open.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(5);
/// How far before the previous round a round looks: a revocation written by
/// a clock up to this much behind ours (another host) is still read.
const CLOCK_SLACK_SECONDS: i64 = 60;
/// Every how many rounds expired signed-out tokens are deleted (5 minutes).
const PURGE_EVERY: u32 = 60;
/// Users (or tokens) checked per query in a full round.
const CHUNK: usize = 1000;

/// Runs the sweep until the ChatServer stops; a full round every `full_every`.
pub async fn run(db: DatabaseConnection, server: Addr<ChatServer>, full_every: Duration) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut round: u32 = 0;
    let mut last_full: Option<Instant> = None;
    // The stamp the next round reads from (after a round that succeeded).
    let mut since = None;
    loop {
        tick.tick().await;
        let started = accounts::now_seconds();
        // Until a full round has succeeded there is no `since` either.
        let full = last_full.is_none_or(|t| t.elapsed() >= full_every);
        let found = match since.filter(|_| !full) {
            Some(since) => changed_since(&db, since).await.map(Some),
            None => everyone_online(&db, &server).await,
        };
        match found {
            Ok(Some(recheck)) => {
                if server.send(recheck).await.is_err() {
                    return;
                }
                since = Some(started - CLOCK_SLACK_SECONDS);
                if full {
                    last_full = Some(Instant::now());
                }
            }
            Ok(None) => return,
            Err(e) => tracing::warn!(error = %e, "revocation sweep failed; retrying next round"),
        }
        if round.is_multiple_of(PURGE_EVERY) {
            purge_expired(&db).await;
        }
        round = round.wrapping_add(1);
    }
}

async fn purge_expired(db: &DatabaseConnection) {
    let now = accounts::now_seconds();
    match accounts::sweep_revoked_tokens(db, now).await {
        Ok(0) => {}
        Ok(n) => tracing::debug!(rows = n, "deleted expired signed-out tokens"),
        Err(e) => tracing::warn!(error = %e, "deleting expired signed-out tokens failed"),
    }
}

/// The revocations stamped at or after `since`, wherever their users are.
async fn changed_since(db: &DatabaseConnection, since: i64) -> Result<Recheck, DbErr> {
    let users: Vec<(i64, i32, bool)> = user_rows()
        .filter(user::Column::TokensChangedAt.gte(since))
        .into_tuple()
        .all(db)
        .await?;
    let tokens: Vec<(String, i64)> = token_rows()
        .filter(revoked_token::Column::RevokedAt.gte(since))
        .into_tuple()
        .all(db)
        .await?;
    Ok(Recheck {
        users: users
            .into_iter()
            .map(|(id, version, active)| (UserId(id), valid_version(Some((version, active)))))
            .collect(),
        tokens: signed_out(tokens),
    })
}

/// Every user and token online here, as the database has them now; `None`
/// when the ChatServer is gone.
async fn everyone_online(
    db: &DatabaseConnection,
    server: &Addr<ChatServer>,
) -> Result<Option<Recheck>, DbErr> {
    let (Ok(online), Ok(tokens)) = (
        server.send(LocalUsers).await,
        server.send(OnlineTokens).await,
    ) else {
        return Ok(None);
    };
    let mut recheck = Recheck::default();
    for chunk in online.chunks(CHUNK) {
        let rows: Vec<(i64, i32, bool)> = user_rows()
            .filter(user::Column::Id.is_in(chunk.iter().map(|u| u.0)))
            .into_tuple()
            .all(db)
            .await?;
        let found: std::collections::HashMap<i64, (i32, bool)> =
            rows.into_iter().map(|(id, v, a)| (id, (v, a))).collect();
        recheck.users.extend(
            chunk
                .iter()
                .map(|u| (*u, valid_version(found.get(&u.0).copied()))),
        );
    }
    for chunk in tokens.chunks(CHUNK) {
        let rows: Vec<(String, i64)> = token_rows()
            .filter(revoked_token::Column::Id.is_in(chunk.iter().map(TokenId::to_string)))
            .into_tuple()
            .all(db)
            .await?;
        recheck.tokens.extend(signed_out(rows));
    }
    Ok(Some(recheck))
}

/// What a round reads of `users`: (`id`, `token_version`, `is_active`).
fn user_rows() -> Select<user::Entity> {
    user::Entity::find().select_only().columns([
        user::Column::Id,
        user::Column::TokenVersion,
        user::Column::IsActive,
    ])
}

/// What a round reads of `revoked_tokens`: (`id`, `user_id`).
fn token_rows() -> Select<revoked_token::Entity> {
    revoked_token::Entity::find()
        .select_only()
        .columns([revoked_token::Column::Id, revoked_token::Column::UserId])
}

/// The lowest `token_version` still valid for a user whose row says
/// (`token_version`, `is_active`): none (`i32::MAX`) for a deactivated or
/// deleted account.
fn valid_version(row: Option<(i32, bool)>) -> i32 {
    match row {
        Some((version, true)) => version,
        Some((_, false)) | None => i32::MAX,
    }
}

/// `revoked_tokens` rows (`id`, `user_id`) as the tokens they sign out.
fn signed_out(rows: Vec<(String, i64)>) -> Vec<(UserId, TokenId)> {
    rows.into_iter()
        .filter_map(|(id, user)| Some((UserId(user), TokenId::parse(&id)?)))
        .collect()
}
