//! Blocking (PROTOCOL.md C10). A block between two people, either way,
//! stops direct messages between them, hides presence in their direct
//! conversation, and the blocked person can no longer put the blocker in a
//! group (not even by invitation). The state that the hot path needs (which
//! direct conversations are blocked) lives in `Membership`, kept in step on
//! every instance by the ChatServer (`SetBlocked`).

use std::collections::HashSet;

use chrono::Utc;
use entity::{block, chat, user};
use sea_orm::sea_query::OnConflict;
use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder, Set};

use actix::Addr;

use super::messages::SetBlocked;
use super::protocol::{ChatId, Person, UserId};
use super::server::ChatServer;
use super::store::{person, profiles};

/// Why a block request was refused.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// B3 `invalid`: oneself, or no such active user.
    #[error("{0}")]
    Invalid(String),
    #[error("database")]
    Database(#[from] DbErr),
    /// The ChatServer did not take the change (the instance is stopping).
    #[error("chat server")]
    Server(#[source] actix::MailboxError),
}

/// Blocks (`block`) or unblocks `other` for `user`, and records the direct
/// conversation's new state on every instance before returning, so the
/// caller's next message already meets it. The same for WebSocket and REST.
pub async fn change(
    db: &sea_orm::DatabaseConnection,
    server: &Addr<ChatServer>,
    user: UserId,
    other: i64,
    block: bool,
) -> Result<(), BlockError> {
    let state = if block {
        self::block(db, user, other).await?
    } else {
        unblock(db, user, other).await?
    };
    server
        .send(SetBlocked {
            pair: Some((user, UserId(other))),
            chat: state.chat,
            blocked: state.blocked,
            broadcast: true,
        })
        .await
        .map_err(BlockError::Server)?;
    Ok(())
}

/// What a block or an unblock changed: the direct conversation of the two,
/// if they have one, and whether messages in it are blocked now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectState {
    pub chat: Option<ChatId>,
    pub blocked: bool,
}

async fn direct_of<C: ConnectionTrait>(db: &C, a: i64, b: i64) -> Result<Option<ChatId>, DbErr> {
    Ok(chat::Entity::find()
        .filter(chat::Column::DirectKey.eq(chat::direct_key(a, b)))
        .one(db)
        .await?
        .map(|c| ChatId(c.id)))
}

/// `user` blocks `other` (blocking again changes nothing).
pub async fn block<C: ConnectionTrait>(
    db: &C,
    user: UserId,
    other: i64,
) -> Result<DirectState, BlockError> {
    if other == user.0 {
        return Err(BlockError::Invalid("you cannot block yourself".into()));
    }
    let exists = user::Entity::find_by_id(other)
        .filter(user::Column::IsActive.eq(true))
        .one(db)
        .await?
        .is_some();
    if !exists {
        return Err(BlockError::Invalid(format!(
            "no active user with id {other}"
        )));
    }
    block::Entity::insert(block::ActiveModel {
        user_id: Set(user.0),
        blocked_id: Set(other),
        created_at: Set(Utc::now()),
    })
    .on_conflict(
        // MySQL has no DO NOTHING: `do_nothing_on` writes it as an update
        // of a key column to itself.
        OnConflict::columns([block::Column::UserId, block::Column::BlockedId])
            .do_nothing_on([block::Column::UserId])
            .to_owned(),
    )
    .exec_without_returning(db)
    .await?;
    Ok(DirectState {
        chat: direct_of(db, user.0, other).await?,
        blocked: true,
    })
}

/// `user` lifts their block of `other`; the two stay blocked if `other`
/// blocked `user` too.
pub async fn unblock<C: ConnectionTrait>(
    db: &C,
    user: UserId,
    other: i64,
) -> Result<DirectState, BlockError> {
    block::Entity::delete_by_id((user.0, other))
        .exec(db)
        .await?;
    let still = block::Entity::find_by_id((other, user.0))
        .one(db)
        .await?
        .is_some();
    Ok(DirectState {
        chat: direct_of(db, user.0, other).await?,
        blocked: still,
    })
}

/// The people `user` blocked, most recent first.
pub async fn blocked_by<C: ConnectionTrait>(db: &C, user: UserId) -> Result<Vec<Person>, DbErr> {
    let rows = block::Entity::find()
        .filter(block::Column::UserId.eq(user.0))
        .order_by_desc(block::Column::CreatedAt)
        .all(db)
        .await?;
    let people = profiles(db, rows.iter().map(|b| b.blocked_id)).await?;
    Ok(rows
        .iter()
        .filter_map(|b| people.get(&b.blocked_id).map(person))
        .collect())
}

/// Among `candidates`, those who blocked `adder`: they are neither added
/// to `adder`'s groups nor invited.
pub async fn blockers_of<C: ConnectionTrait>(
    db: &C,
    adder: UserId,
    candidates: &[i64],
) -> Result<HashSet<i64>, DbErr> {
    if candidates.is_empty() {
        return Ok(HashSet::new());
    }
    Ok(block::Entity::find()
        .filter(block::Column::BlockedId.eq(adder.0))
        .filter(block::Column::UserId.is_in(candidates.to_vec()))
        .all(db)
        .await?
        .into_iter()
        .map(|b| b.user_id)
        .collect())
}
