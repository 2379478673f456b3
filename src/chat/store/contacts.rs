//! The contact list and one conversation with its members, as a viewer sees
//! them: one query per kind of data, however many conversations.

use super::*;

/// A conversation as one user sees it: the other member (direct) or the
/// members (group), the last message, how many messages they have not read.
#[derive(Debug, Clone)]
pub struct ContactRow {
    pub chat: chat::Model,
    pub other: Option<user::Model>,
    /// Every member's id (groups only; a direct conversation has `other`).
    pub member_ids: Vec<UserId>,
    pub last_message: Option<message::Model>,
    pub unread: u64,
    /// A direct conversation whose two people have a block (C10): the
    /// other is never shown online.
    pub blocked: bool,
    /// The viewer muted it (C17).
    pub muted: bool,
}

impl ContactRow {
    /// The contact as `viewer` sees it; `online` comes from live presence.
    pub fn into_contact(self, viewer: UserId, presence: &PresenceView) -> Contact {
        let other = self.other.as_ref();
        let (name, online, members) = match self.chat.kind {
            chat::ChatKind::Group => (
                self.chat.title.clone().unwrap_or_default(),
                self.member_ids
                    .iter()
                    .any(|m| *m != viewer && presence.is_online(*m)),
                self.member_ids.len() as u64,
            ),
            chat::ChatKind::Direct => (
                other.map(|u| u.display_name()).unwrap_or_default(),
                !self.blocked && other.is_some_and(|u| presence.is_online(UserId(u.id))),
                1 + u64::from(other.is_some()),
            ),
        };
        Contact {
            pk: ChatId(self.chat.id),
            name,
            online,
            user_id: other.map(|u| u.id),
            username: other.map(|u| u.username.clone()),
            last_message: self.last_message.map(last_message_item),
            unread: self.unread,
            kind: kind_of(&self.chat),
            members,
            seq: self.chat.seq,
            muted: self.muted.then_some(true),
        }
    }
}

#[derive(Debug, FromQueryResult)]
pub(super) struct UnreadCount {
    chat_id: uuid::Uuid,
    n: i64,
}

/// How many contact lists are assembled at once. A list takes several
/// queries, and each holds what the earlier ones read while it waits for a
/// pooled connection for the next: a burst of thousands of `get_contacts`
/// (every client of a restarted instance coming back) held thousands of
/// half-built lists in memory at once, and the allocator kept that peak
/// for the life of the process (BENCHMARKS.md "A realistic mix"). Lists
/// beyond the bound wait before they read anything.
#[derive(Clone)]
pub struct ContactLoads(Arc<tokio::sync::Semaphore>);

impl ContactLoads {
    /// At most `at_once` lists at a time (the pool's size: no more could
    /// be reading anyway).
    pub fn new(at_once: usize) -> Self {
        ContactLoads(Arc::new(tokio::sync::Semaphore::new(at_once.max(1))))
    }
}

/// Every conversation `user` belongs to, most recently active first (as
/// [`contact_rows`] assembles them), one of `loads` at a time.
pub async fn contacts_of(
    db: &DatabaseConnection,
    loads: &ContactLoads,
    user: UserId,
) -> Result<Vec<ContactRow>, DbErr> {
    let _turn = loads
        .0
        .acquire()
        .await
        .map_err(|_| DbErr::Custom("contact loads closed".into()))?;
    let memberships = chat_member::Entity::find()
        .filter(chat_member::Column::UserId.eq(user.0))
        .all(db)
        .await?;
    contact_rows(db, user, memberships).await
}

/// One conversation as `user` sees it, if they are a member.
pub async fn contact_of(
    db: &DatabaseConnection,
    user: UserId,
    chat: ChatId,
) -> Result<Option<ContactRow>, DbErr> {
    let membership = chat_member::Entity::find_by_id((chat.0, user.0))
        .one(db)
        .await?;
    let rows = contact_rows(db, user, membership.into_iter().collect()).await?;
    Ok(rows.into_iter().next())
}

/// The conversations of `memberships` as `user` sees them, newest activity
/// first: a fixed number of queries however many there are (each list is
/// read in chunks of `IN_CHUNK`).
pub(super) async fn contact_rows(
    db: &DatabaseConnection,
    user: UserId,
    memberships: Vec<chat_member::Model>,
) -> Result<Vec<ContactRow>, DbErr> {
    if memberships.is_empty() {
        return Ok(Vec::new());
    }
    let chat_ids: Vec<uuid::Uuid> = memberships.iter().map(|m| m.chat_id).collect();
    let (chats, last_ids) = chats_and_last_ids(db, &chat_ids).await?;
    let (direct, groups): (Vec<uuid::Uuid>, Vec<uuid::Uuid>) = chat_ids.iter().partition(|id| {
        chats
            .get(id)
            .is_some_and(|c| c.kind == chat::ChatKind::Direct)
    });
    let others = other_people(db, user, &direct).await?;
    let pairs: Vec<(i64, i64)> = others.values().map(|u| (user.0, u.id)).collect();
    let blocked = blocked_pairs(db, &pairs).await?;
    let is_blocked =
        |other: &user::Model| blocked.contains(&(user.0.min(other.id), user.0.max(other.id)));
    let mut group_members = member_ids(db, &groups).await?;
    let last_messages = messages_by_chat(db, &last_ids).await?;
    let unread = unread_counts(db, user, &memberships).await?;

    let mut rows: Vec<ContactRow> = memberships
        .into_iter()
        .filter_map(|m| {
            let chat = chats.get(&m.chat_id)?.clone();
            let other = others.get(&m.chat_id).cloned();
            Some(ContactRow {
                blocked: other.as_ref().is_some_and(is_blocked),
                other,
                member_ids: group_members.remove(&m.chat_id).unwrap_or_default(),
                last_message: last_messages.get(&m.chat_id).cloned(),
                unread: unread.get(&m.chat_id).copied().unwrap_or(0),
                muted: m.muted,
                chat,
            })
        })
        .collect();
    rows.sort_by(|a, b| {
        let key = |r: &ContactRow| (r.last_message.as_ref().map(|m| m.id), r.chat.created_at);
        key(b).cmp(&key(a))
    });
    Ok(rows)
}

/// The conversations `chat_ids`, and the id of each one's newest message
/// that is not deleted.
pub(super) async fn chats_and_last_ids(
    db: &DatabaseConnection,
    chat_ids: &[uuid::Uuid],
) -> Result<(HashMap<uuid::Uuid, chat::Model>, Vec<i64>), DbErr> {
    let mut chats: HashMap<uuid::Uuid, chat::Model> = HashMap::new();
    let mut last_ids = Vec::new();
    for chunk in chat_ids.chunks(IN_CHUNK) {
        chats.extend(
            chat::Entity::find()
                .filter(chat::Column::Id.is_in(chunk.to_vec()))
                .all(db)
                .await?
                .into_iter()
                .map(|c| (c.id, c)),
        );
        last_ids.extend(
            chat::Entity::find()
                .select_only()
                .expr(newest_kept_message())
                .filter(chat::Column::Id.is_in(chunk.to_vec()))
                .into_tuple::<Option<i64>>()
                .all(db)
                .await?
                .into_iter()
                .flatten(),
        );
    }
    Ok((chats, last_ids))
}

/// The id of the conversation's (the outer `chats` row's) newest message
/// that is not deleted.
fn newest_kept_message() -> Expr {
    use sea_orm::sea_query::ExprTrait;
    newest_message(message::Column::Id, (chat::Entity, chat::Column::Id), |m| {
        Expr::col((m, message::Column::Deleted)).eq(false)
    })
}

/// `column` of the newest message of conversation `chat` (a column of the
/// outer query's row) that meets `condition` (given the messages' alias):
/// the conversation's messages walked down from the newest by `seq`, a
/// walk that stops at the first one that meets it.
fn newest_message(
    column: message::Column,
    chat: (impl sea_orm::Iden + 'static, impl sea_orm::Iden + 'static),
    condition: impl FnOnce(Alias) -> Expr,
) -> Expr {
    use sea_orm::sea_query::ExprTrait;
    let m = Alias::new("m");
    let newest = Query::select()
        .column((m.clone(), column))
        .from_as(message::Entity, m.clone())
        .and_where(Expr::col((m.clone(), message::Column::ChatId)).equals(chat))
        .and_where(condition(m.clone()))
        .order_by((m, message::Column::Seq), Order::Desc)
        .limit(1)
        .to_owned();
    Expr::SubQuery(None, Box::new(newest.into()))
}

/// The other person of each direct conversation in `direct`.
pub(super) async fn other_people(
    db: &DatabaseConnection,
    user: UserId,
    direct: &[uuid::Uuid],
) -> Result<HashMap<uuid::Uuid, user::Model>, DbErr> {
    let mut others: HashMap<uuid::Uuid, user::Model> = HashMap::new();
    for chunk in direct.chunks(IN_CHUNK) {
        others.extend(
            chat_member::Entity::find()
                .filter(chat_member::Column::ChatId.is_in(chunk.to_vec()))
                .filter(chat_member::Column::UserId.ne(user.0))
                .find_also_related(user::Entity)
                .all(db)
                .await?
                .into_iter()
                .filter_map(|(m, u)| u.map(|u| (m.chat_id, u))),
        );
    }
    Ok(others)
}

/// Every member of each group in `groups`.
pub(super) async fn member_ids(
    db: &DatabaseConnection,
    groups: &[uuid::Uuid],
) -> Result<HashMap<uuid::Uuid, Vec<UserId>>, DbErr> {
    let mut group_members: HashMap<uuid::Uuid, Vec<UserId>> = HashMap::new();
    for chunk in groups.chunks(IN_CHUNK) {
        for (chat_id, member) in chat_member::Entity::find()
            .select_only()
            .column(chat_member::Column::ChatId)
            .column(chat_member::Column::UserId)
            .filter(chat_member::Column::ChatId.is_in(chunk.to_vec()))
            .into_tuple::<(uuid::Uuid, i64)>()
            .all(db)
            .await?
        {
            group_members
                .entry(chat_id)
                .or_default()
                .push(UserId(member));
        }
    }
    Ok(group_members)
}

/// The messages `ids`, by their conversation (one each).
pub(super) async fn messages_by_chat(
    db: &DatabaseConnection,
    ids: &[i64],
) -> Result<HashMap<uuid::Uuid, message::Model>, DbErr> {
    let mut last_messages: HashMap<uuid::Uuid, message::Model> = HashMap::new();
    for chunk in ids.chunks(IN_CHUNK) {
        last_messages.extend(
            message::Entity::find()
                .filter(message::Column::Id.is_in(chunk.to_vec()))
                .all(db)
                .await?
                .into_iter()
                .map(|m| (m.chat_id, m)),
        );
    }
    Ok(last_messages)
}

/// Where each of `user`'s read marks in `chats` (a message id, which a
/// client may have made up) falls in its conversation, as a `seq`: the
/// newest message up to the mark, found walking down from the newest, past
/// the messages after the mark, as many as the count that follows reads.
async fn read_seqs(
    db: &DatabaseConnection,
    user: UserId,
    chats: Vec<uuid::Uuid>,
) -> Result<HashMap<uuid::Uuid, i64>, DbErr> {
    use sea_orm::sea_query::ExprTrait;
    let marked = (chat_member::Entity, chat_member::Column::ChatId);
    let read = newest_message(message::Column::Seq, marked, |m| {
        Expr::col((m, message::Column::Id)).lte(Expr::col((
            chat_member::Entity,
            chat_member::Column::LastReadMessageId,
        )))
    });
    Ok(chat_member::Entity::find()
        .select_only()
        .column(chat_member::Column::ChatId)
        .expr(read)
        .filter(chat_member::Column::UserId.eq(user.0))
        .filter(chat_member::Column::ChatId.is_in(chats))
        .filter(chat_member::Column::LastReadMessageId.gt(0))
        .into_tuple::<(uuid::Uuid, Option<i64>)>()
        .all(db)
        .await?
        .into_iter()
        .filter_map(|(chat, seq)| Some((chat, seq?)))
        .collect())
}

/// How many messages of others each membership has not read.
pub(super) async fn unread_counts(
    db: &DatabaseConnection,
    user: UserId,
    memberships: &[chat_member::Model],
) -> Result<HashMap<uuid::Uuid, u64>, DbErr> {
    let mut unread: HashMap<uuid::Uuid, u64> = HashMap::new();
    for chunk in memberships.chunks(IN_CHUNK) {
        let read = read_seqs(db, user, chunk.iter().map(|m| m.chat_id).collect()).await?;
        let mut unread_filter = Condition::any();
        for m in chunk {
            unread_filter = unread_filter.add(
                Condition::all()
                    .add(message::Column::ChatId.eq(m.chat_id))
                    .add(message::Column::Seq.gt(read.get(&m.chat_id).copied().unwrap_or(0))),
            );
        }
        unread.extend(
            message::Entity::find()
                .select_only()
                .column(message::Column::ChatId)
                .column_as(message::Column::Id.count(), "n")
                .filter(unread_filter)
                .filter(message::Column::Deleted.eq(false))
                .filter(
                    Condition::any()
                        .add(message::Column::SenderId.is_null())
                        .add(message::Column::SenderId.ne(user.0)),
                )
                .group_by(message::Column::ChatId)
                .into_model::<UnreadCount>()
                .all(db)
                .await?
                .into_iter()
                .map(|c| (c.chat_id, c.n.max(0) as u64)),
        );
    }
    Ok(unread)
}

/// A conversation with every member's account and role, longest-standing
/// first.
#[derive(Debug, Clone)]
pub struct ConversationRow {
    pub chat: chat::Model,
    pub members: Vec<(chat_member::Model, user::Model)>,
    pub last_message: Option<message::Model>,
}

impl ConversationRow {
    /// Whether `user` is a member.
    pub fn has_member(&self, user: UserId) -> bool {
        self.members.iter().any(|(m, _)| m.user_id == user.0)
    }

    /// The conversation as `viewer` sees it (`None`: as every member alike,
    /// for a `conversation` push), with `unread` when known.
    pub fn to_conversation(
        &self,
        viewer: Option<UserId>,
        unread: Option<u64>,
        presence: &PresenceView,
    ) -> Conversation {
        let members: Vec<MemberItem> = self
            .members
            .iter()
            .map(|(m, u)| MemberItem {
                user_id: u.id,
                username: u.username.clone(),
                name: u.display_name(),
                role: match m.role {
                    chat_member::Role::Owner => MemberRole::Owner,
                    chat_member::Role::Member => MemberRole::Member,
                },
                online: presence.is_online(UserId(u.id)),
            })
            .collect();
        let is_viewer = |id: i64| viewer == Some(UserId(id));
        let other = match self.chat.kind {
            chat::ChatKind::Direct => self
                .members
                .iter()
                .map(|(_, u)| u)
                .find(|u| !is_viewer(u.id)),
            chat::ChatKind::Group => None,
        };
        let online = match viewer {
            Some(_) => members.iter().any(|m| m.online && !is_viewer(m.user_id)),
            // Every member who gets a push is online; another one is when
            // at least two are.
            None => members.iter().filter(|m| m.online).count() >= 2,
        };
        Conversation {
            pk: ChatId(self.chat.id),
            name: match other {
                Some(u) => u.display_name(),
                None => self.chat.title.clone().unwrap_or_default(),
            },
            online,
            user_id: other.map(|u| u.id),
            username: other.map(|u| u.username.clone()),
            last_message: self.last_message.clone().map(last_message_item),
            unread,
            kind: kind_of(&self.chat),
            members,
            removed: None,
            seq: self.chat.seq,
            invited: None,
            muted: None,
            changes: None,
            read_up_to: viewer.and_then(|viewer| {
                self.members
                    .iter()
                    .filter(|(m, _)| m.user_id != viewer.0)
                    .filter_map(|(m, _)| m.last_read_message_id)
                    .max()
            }),
        }
    }
}

/// A conversation with its members, if it exists.
pub async fn conversation<C: ConnectionTrait>(
    db: &C,
    chat: ChatId,
) -> Result<Option<ConversationRow>, DbErr> {
    let Some(model) = chat::Entity::find_by_id(chat.0).one(db).await? else {
        return Ok(None);
    };
    let members = chat_member::Entity::find()
        .filter(chat_member::Column::ChatId.eq(chat.0))
        .find_also_related(user::Entity)
        .order_by_asc(chat_member::Column::JoinedAt)
        .order_by_asc(chat_member::Column::UserId)
        .all(db)
        .await?
        .into_iter()
        .filter_map(|(m, u)| Some((m, u?)))
        .collect();
    let last_message = message::Entity::find()
        .filter(message::Column::ChatId.eq(chat.0))
        .order_by_desc(message::Column::Seq)
        .one(db)
        .await?;
    Ok(Some(ConversationRow {
        chat: model,
        members,
        last_message,
    }))
}

/// A conversation as `user` sees it, with members and unread count, if
/// they are a member.
pub async fn conversation_of(
    db: &DatabaseConnection,
    user: UserId,
    chat: ChatId,
    presence: &Presence,
) -> Result<Option<Conversation>, DbErr> {
    let Some(row) = contact_of(db, user, chat).await? else {
        return Ok(None);
    };
    let Some(full) = conversation(db, chat).await? else {
        return Ok(None);
    };
    let presence = presence_view(db, user, presence).await?;
    let mut item = full.to_conversation(Some(user), Some(row.unread), &presence);
    item.muted = row.muted.then_some(true);
    if full.chat.kind == chat::ChatKind::Group {
        item.changes = Some(group_changes(db, chat).await?);
    }
    if row.blocked {
        item.online = false;
        for member in item.members.iter_mut().filter(|m| m.user_id != user.0) {
            member.online = false;
        }
    }
    Ok(Some(item))
}
