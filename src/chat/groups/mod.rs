//! Group conversations (PROTOCOL.md B6): creating them and changing their
//! members and title, with the same rules for the WebSocket requests and
//! the REST endpoints (the changes: `changes.rs`). Each change of members
//! is one transaction that first locks the conversation's row, so
//! concurrent changes to one group apply one after the other and the member
//! limit holds; a rename is one statement that checks membership as it
//! writes. Once committed, the change is
//! announced to the ChatServer, which applies it here and on every other
//! instance and pushes `conversation` to everyone it concerns.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use actix::Addr;
use chrono::Utc;
use entity::{chat, chat_member, invitation, user};
use sea_orm::sea_query::{Expr, Query};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr,
    EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Set,
};

use super::blocks;
use super::invitations;
use super::membership::{group_presence, MembershipChange};
use super::messages::{ApplyMembership, DeliverToUser};
use super::presence::{Presence, PresenceView};
use super::protocol::{
    format_time, ChatId, Conversation, ConversationChange, ConversationPush, ErrorCode, Invitation,
    ServerEvent, UserId,
};
use super::server::ChatServer;
use super::store::{self, ConversationRow};
use crate::rate_limit::{ChatRateLimit, UserRateLimit};

mod changes;

/// Longest group title, in characters after trimming (B6).
pub const MAX_TITLE_CHARS: usize = 100;

/// Why a group request was refused.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// A field breaks a rule (B3 `invalid`); `field` names it for REST.
    #[error("{message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// The caller may not do this (B3 `invalid` on the WebSocket, 403 on REST).
    #[error("{0}")]
    Forbidden(String),
    /// No such conversation, or the caller is not in it.
    #[error("conversation not found")]
    NotFound,
    #[error("database")]
    Database(#[from] DbErr),
    /// The ChatServer did not take the change (the instance is stopping).
    #[error("chat server")]
    Server(#[source] actix::MailboxError),
    /// The caller's, or the group's, change budget is spent for now.
    #[error("too many group changes; try again in {retry_after} s")]
    RateLimited { retry_after: u64 },
    /// The change waited its turn to write past the pool's timeout (SQLite:
    /// the changes before it held the database's write lock that long).
    #[error("busy")]
    Busy(#[source] crate::db::Busy),
}

impl GroupError {
    fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        GroupError::Invalid {
            field,
            message: message.into(),
        }
    }

    /// The B3 code a WebSocket client gets (`internal` for ours).
    pub fn code(&self) -> ErrorCode {
        match self {
            GroupError::Invalid { .. } | GroupError::Forbidden(_) => ErrorCode::Invalid,
            GroupError::NotFound => ErrorCode::NotFound,
            GroupError::RateLimited { .. } | GroupError::Busy(_) => ErrorCode::RateLimited,
            GroupError::Database(_) | GroupError::Server(_) => ErrorCode::Internal,
        }
    }
}

/// A title as stored: trimmed, 1 to `MAX_TITLE_CHARS` characters, no
/// control characters.
pub fn clean_title(raw: &str) -> Result<String, GroupError> {
    let title = raw.trim();
    let chars = title.chars().count();
    if chars == 0 {
        return Err(GroupError::invalid("title", "title must not be empty"));
    }
    if chars > MAX_TITLE_CHARS {
        return Err(GroupError::invalid(
            "title",
            format!("title is longer than {MAX_TITLE_CHARS} characters"),
        ));
    }
    if title.chars().any(char::is_control) {
        return Err(GroupError::invalid(
            "title",
            "title must not contain control characters",
        ));
    }
    Ok(title.to_string())
}

/// A committed change: the conversation after it, who joined or left, and
/// what its members are told.
pub struct Changed {
    pub row: ConversationRow,
    pub added: Vec<UserId>,
    pub removed: Vec<UserId>,
    /// `None` when nothing changed (adding members already in it, renaming
    /// to the same title): nothing is pushed then.
    pub change: Option<ConversationChange>,
    /// Creating and adding: who was invited instead of added (C9), and
    /// which of them are newly invited (they get an `invitation` push).
    pub invited: Option<Vec<i64>>,
    pub newly_invited: invitations::Invited,
}

/// How many group changes one user, and one group, may make: every change
/// pushes a frame to every member, so these budgets stand apart from the
/// request rate and count a user's changes over every socket and REST
/// alike. Leaving a group costs nothing and is never refused. Each instance
/// keeps its own counts (docs/SECURITY.md).
pub struct ChangeBudget {
    per_user: UserRateLimit,
    per_group: ChatRateLimit,
}

impl ChangeBudget {
    /// Budgets of `per_user` and `per_group` changes a minute, each also
    /// the largest burst.
    pub fn new(per_user: u32, per_group: u32) -> Self {
        ChangeBudget {
            per_user: UserRateLimit::new(per_user, per_user),
            per_group: ChatRateLimit::new(per_group, per_group),
        }
    }

    fn charge_user(&self, user: UserId) -> Result<(), GroupError> {
        self.per_user
            .take(user)
            .map_err(|retry_after| GroupError::RateLimited { retry_after })
    }

    fn charge_group(&self, chat: ChatId) -> Result<(), GroupError> {
        self.per_group
            .take(chat)
            .map_err(|retry_after| GroupError::RateLimited { retry_after })
    }
}

/// The group requests (B6, C9), the same for the WebSocket and REST: the
/// database, the change budgets, and the limits.
#[derive(Clone)]
pub struct Groups {
    /// What the checks outside a transaction read through.
    pub db: DatabaseConnection,
    /// What the changes write through (`db::connect_request_writes`: on
    /// SQLite, one connection the changes take in turn).
    pub writes: DatabaseConnection,
    pub budget: Arc<ChangeBudget>,
    pub max_members: usize,
    /// Most groups one user may be in (created or joined).
    pub max_groups_per_user: usize,
    /// Most pending invitations one user may hold.
    pub max_pending_invitations: usize,
}

pub(super) fn too_many(max: usize) -> GroupError {
    GroupError::invalid("members", format!("a group has at most {max} members"))
}

impl Groups {
    /// Begins a change's transaction on the writes' pool. On SQLite the
    /// changes take its one connection in turn; one that waited past the
    /// pool's timeout found the database busy (elsewhere a pool's timeout
    /// may be a database that is down: a failure).
    pub(super) async fn begin(&self) -> Result<DatabaseTransaction, GroupError> {
        match crate::db::begin_write(&self.writes).await {
            Err(DbErr::ConnectionAcquire(sea_orm::ConnAcquireErr::Timeout))
                if self.writes.get_database_backend() == sea_orm::DatabaseBackend::Sqlite =>
            {
                Err(GroupError::Busy(crate::db::Busy("a group change")))
            }
            begun => Ok(begun?),
        }
    }
}

/// Locks the conversation's row for the rest of the transaction (SQLite:
/// takes the write lock), so changes to one group apply one at a time.
pub(super) async fn lock_row<C: ConnectionTrait>(txn: &C, chat: ChatId) -> Result<(), DbErr> {
    chat::Entity::update_many()
        .col_expr(chat::Column::Kind, Expr::col(chat::Column::Kind))
        .filter(chat::Column::Id.eq(chat.0))
        .exec(txn)
        .await?;
    Ok(())
}

pub(super) fn member(chat: ChatId, user: i64, role: chat_member::Role) -> chat_member::ActiveModel {
    chat_member::ActiveModel {
        chat_id: Set(chat.0),
        user_id: Set(user),
        joined_at: Set(Utc::now()),
        last_read_message_id: Set(None),
        role: Set(role),
        muted: Set(false),
    }
}

/// Reads the conversation back inside the transaction and commits it.
pub(super) async fn commit(
    txn: DatabaseTransaction,
    chat: ChatId,
    by: UserId,
    added: Vec<UserId>,
    removed: Vec<UserId>,
    change: impl FnOnce(&ConversationRow) -> ConversationChange,
) -> Result<Changed, GroupError> {
    let row = store::conversation(&txn, chat)
        .await?
        .ok_or(GroupError::NotFound)?;
    let change = change(&row);
    record(&txn, chat, by, &change, row.chat.title.as_deref()).await?;
    txn.commit().await?;
    Ok(Changed {
        change: Some(change),
        row,
        added,
        removed,
        invited: None,
        newly_invited: Default::default(),
    })
}

/// Keeps `change`, made by `by`, in the group's history (C20), which
/// `get_contact` shows; `title` is the group's title after it.
pub(super) async fn record<C: ConnectionTrait>(
    db: &C,
    chat: ChatId,
    by: UserId,
    change: &ConversationChange,
    title: Option<&str>,
) -> Result<(), sea_orm::DbErr> {
    let (kind, users, title) = match change {
        ConversationChange::Created => ("created", Vec::new(), title),
        ConversationChange::MembersAdded { user_ids, .. } => {
            ("members_added", user_ids.clone(), None)
        }
        ConversationChange::MemberRemoved { user_id, .. } => {
            ("member_removed", vec![*user_id], None)
        }
        ConversationChange::Renamed { .. } => ("renamed", Vec::new(), title),
    };
    let users: Vec<String> = users.iter().map(i64::to_string).collect();
    entity::group_change::ActiveModel {
        chat_id: Set(chat.0),
        kind: Set(kind.into()),
        by_id: Set(Some(by.0)),
        user_ids: Set(users.join(",")),
        title: Set(title.map(str::to_string)),
        created_at: Set(Utc::now()),
        ..Default::default()
    }
    .insert(db)
    .await?;
    Ok(())
}

/// Announces a committed change to the ChatServer (which applies it on
/// every instance and pushes `conversation`), and waits until it is applied
/// here, so the caller's next request already sees it. Returns the
/// conversation as `caller` now sees it.
pub async fn announce(
    db: &DatabaseConnection,
    server: &Addr<ChatServer>,
    presence: &Presence,
    caller: UserId,
    changed: Changed,
) -> Result<Conversation, GroupError> {
    let item = changed
        .row
        .to_conversation(None, None, &PresenceView::shared(presence));
    if let Some(what) = &changed.change {
        let removed_push = (!changed.removed.is_empty()).then(|| {
            ConversationPush {
                removed: Some(true),
                ..ConversationPush::new(&item, what)
            }
            .to_json()
        });
        let change = MembershipChange {
            chat: item.pk,
            added: changed.added,
            removed: changed.removed,
            presence: changed.row.chat.kind == chat::ChatKind::Direct
                || group_presence(changed.row.members.len() as u64),
            push: Some(ConversationPush::new(&item, what).to_json()),
            removed_push,
        };
        server
            .send(ApplyMembership::everywhere(change))
            .await
            .map_err(GroupError::Server)?;
    }
    if !changed.newly_invited.users.is_empty() {
        let inviter = changed
            .row
            .members
            .iter()
            .find(|(_, u)| u.id == caller.0)
            .map(|(_, u)| store::person(u));
        let invitation = Invitation {
            pk: item.pk,
            name: item.name.clone(),
            members: item.members.len() as u64,
            invited_by: inviter,
            time: format_time(&changed.newly_invited.at),
        };
        let frame = ServerEvent::Invitation(&invitation).to_json();
        for user in changed.newly_invited.users {
            server.do_send(DeliverToUser {
                user: UserId(user),
                frame: frame.clone(),
                skip: None,
                broadcast: true,
            });
        }
    }
    if !changed.row.has_member(caller) {
        return Ok(Conversation {
            removed: Some(true),
            ..item
        });
    }
    let mut answer = store::conversation_of(db, caller, item.pk, presence)
        .await?
        .ok_or(GroupError::NotFound)?;
    answer.invited = changed.invited;
    Ok(answer)
}
