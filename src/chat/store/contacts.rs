//! The contact list and one conversation with its members, as a viewer sees
//! them: a fixed number of statements, however many conversations.

use super::*;
use entity::group_change;
use sea_orm::Iterable;

/// A conversation as one user sees it: the other member (direct) or the
/// members (group), the last message, how many messages they have not read.
#[derive(Debug, Clone)]
pub struct ContactRow {
    pub chat: chat::Model,
    pub other: Option<user::Profile>,
    /// Every member's id (groups only; a direct conversation has `other`).
    pub member_ids: Arc<[UserId]>,
    pub last_message: Option<message::Model>,
    pub unread: u64,
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
                other.is_some_and(|u| presence.is_online(UserId(u.id))),
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

/// What an instance's contact lists share: the groups' rosters
/// ([`Rosters`]), and a bound on how many lists are assembled at once. A
/// list takes several queries, and each holds what the earlier ones read
/// while it waits for a pooled connection for the next: a burst of
/// thousands of `get_contacts` (every client of a restarted instance coming
/// back) held thousands of half-built lists in memory at once, and the
/// allocator kept that peak for the life of the process (BENCHMARKS.md "A
/// realistic mix"). Lists beyond the bound wait before they read anything.
#[derive(Clone)]
pub struct ContactLists {
    at_once: Arc<tokio::sync::Semaphore>,
    rosters: Arc<Rosters>,
}

impl ContactLists {
    /// At most `at_once` lists at a time (the pool's size: no more could
    /// be reading anyway).
    pub fn new(at_once: usize) -> Self {
        ContactLists {
            at_once: Arc::new(tokio::sync::Semaphore::new(at_once.max(1))),
            rosters: Arc::default(),
        }
    }

    /// The groups' rosters kept.
    pub fn rosters(&self) -> &Rosters {
        &self.rosters
    }
}

/// A user's contact list and the people they have a block with (either
/// way), whose presence it never shows (C10).
pub struct ContactList {
    pub rows: Vec<ContactRow>,
    pub blocked_peers: Vec<UserId>,
}

impl ContactList {
    /// The contacts as `viewer` sees them, with live presence.
    pub fn into_contacts(self, viewer: UserId, presence: &Presence) -> Vec<Contact> {
        let presence = PresenceView::new(presence, self.blocked_peers);
        self.rows
            .into_iter()
            .map(|r| r.into_contact(viewer, &presence))
            .collect()
    }
}

/// Every conversation `user` belongs to, most recently active first (as
/// [`contact_rows`] assembles them), one of `lists`' bound at a time.
pub async fn contacts_of(
    db: &DatabaseConnection,
    lists: &ContactLists,
    user: UserId,
) -> Result<ContactList, DbErr> {
    let _turn = lists
        .at_once
        .acquire()
        .await
        .map_err(|_| DbErr::Custom("contact loads closed".into()))?;
    contact_rows(db, &lists.rosters, user, None).await
}

/// One conversation as `user` sees it: a list of one if they are a
/// member, else of none.
pub async fn contact_of(
    db: &DatabaseConnection,
    lists: &ContactLists,
    user: UserId,
    chat: ChatId,
) -> Result<ContactList, DbErr> {
    contact_rows(db, &lists.rosters, user, Some(chat)).await
}

/// The conversations of `user` (all, or only `only`) as they see them,
/// newest activity first, in at most three statements however many there
/// are: the memberships with everything each shows ([`membership_rows`]),
/// the groups' members that `rosters` does not hold (if any), and the
/// user's blocks.
async fn contact_rows(
    db: &DatabaseConnection,
    rosters: &Rosters,
    user: UserId,
    only: Option<ChatId>,
) -> Result<ContactList, DbErr> {
    let memberships = membership_rows(db, user, only).await?;
    let groups = memberships
        .iter()
        .filter(|m| m.chat.kind == chat::ChatKind::Group)
        .map(|m| (m.chat.id, m.roster_version))
        .collect();
    let mut group_members = group_members(db, rosters, groups).await?;
    let blocked_peers = blocked_peers(db, user).await?;
    let mut rows: Vec<ContactRow> = memberships
        .into_iter()
        .map(|m| ContactRow {
            member_ids: group_members.remove(&m.chat.id).unwrap_or_default(),
            other: m.other,
            last_message: m.last_message,
            unread: m.unread,
            muted: m.muted,
            chat: m.chat,
        })
        .collect();
    rows.sort_by(|a, b| {
        let key = |r: &ContactRow| (r.last_message.as_ref().map(|m| m.id), r.chat.created_at);
        key(b).cmp(&key(a))
    });
    Ok(ContactList {
        rows,
        blocked_peers,
    })
}

/// One membership with what its contact item shows.
struct MembershipRow {
    chat: chat::Model,
    /// A group's version, under which its roster is kept.
    roster_version: RosterVersion,
    muted: bool,
    last_message: Option<message::Model>,
    /// The other person of a direct conversation.
    other: Option<user::Profile>,
    unread: u64,
}

/// `user`'s memberships (all, or only `only`'s), each with its
/// conversation, newest kept message, other person (direct) and count of
/// unread messages, in one statement: each is an index lookup per
/// membership (a statement each cost more in round trips and planning than
/// in reading: BENCHMARKS.md "The contact list in one statement").
async fn membership_rows(
    db: &DatabaseConnection,
    user: UserId,
    only: Option<ChatId>,
) -> Result<Vec<MembershipRow>, DbErr> {
    use sea_orm::sea_query::{ExprTrait, JoinType};
    let (cm, c, lm, u) = (
        Alias::new("cm"),
        Alias::new("c"),
        Alias::new("lm"),
        Alias::new("u"),
    );
    let chat_id = (c.clone(), chat::Column::Id);
    let mut select = Query::select();
    select
        .from_as(chat_member::Entity, cm.clone())
        .join_as(
            JoinType::InnerJoin,
            chat::Entity,
            c.clone(),
            Expr::col(chat_id.clone()).equals((cm.clone(), chat_member::Column::ChatId)),
        )
        .join_as(
            JoinType::LeftJoin,
            message::Entity,
            lm.clone(),
            Expr::col((lm.clone(), message::Column::Id)).eq(newest_kept_message(chat_id.clone())),
        )
        .join_as(
            JoinType::LeftJoin,
            user::Entity,
            u.clone(),
            Expr::col((u.clone(), user::Column::Id)).eq(other_member(chat_id.clone(), user)),
        )
        .expr_as(
            Expr::col((cm.clone(), chat_member::Column::Muted)),
            Alias::new("muted"),
        )
        .expr_as(
            unread_count(cm.clone(), (c.clone(), chat::Column::Seq), user),
            Alias::new("unread"),
        )
        .expr_as(roster_version(chat_id), Alias::new("roster_version"))
        .and_where(Expr::col((cm.clone(), chat_member::Column::UserId)).eq(user.0));
    if let Some(only) = only {
        select.and_where(Expr::col((cm, chat_member::Column::ChatId)).eq(only.0));
    }
    prefixed(&mut select, c, "c_", chat::Column::iter());
    prefixed(&mut select, lm, "m_", message::Column::iter());
    prefixed(&mut select, u, "u_", user::Profile::COLUMNS);
    let rows = db.query_all(&select).await?;
    rows.iter()
        .map(|row| {
            let present = |prefix: &str, id: &str| {
                row.try_get::<Option<i64>>(prefix, id)
                    .map(|id| id.is_some())
            };
            Ok(MembershipRow {
                chat: chat::Model::from_query_result(row, "c_")?,
                roster_version: row.try_get("", "roster_version")?,
                muted: row.try_get("", "muted")?,
                last_message: match present("m_", "id")? {
                    true => Some(message::Model::from_query_result(row, "m_")?),
                    false => None,
                },
                other: match present("u_", "id")? {
                    true => Some(user::Profile::from_query_result(row, "u_")?),
                    false => None,
                },
                unread: u64::try_from(row.try_get::<i64>("", "unread")?).unwrap_or(0),
            })
        })
        .collect()
}

/// `columns` of the table as `table`, each named `prefix` + its name (as
/// `from_query_result(row, prefix)` reads them).
fn prefixed<C: ColumnTrait>(
    select: &mut sea_orm::sea_query::SelectStatement,
    table: Alias,
    prefix: &str,
    columns: impl IntoIterator<Item = C>,
) {
    for column in columns {
        select.expr_as(
            column.select_as(Expr::col((table.clone(), column))),
            Alias::new(format!("{prefix}{}", column.as_str())),
        );
    }
}

/// The id of the conversation's (the outer `chats` row's) newest message
/// that is not deleted.
fn newest_kept_message(chat: (Alias, chat::Column)) -> Expr {
    use sea_orm::sea_query::ExprTrait;
    newest_message(message::Column::Id, chat, |m| {
        Expr::col((m, message::Column::Deleted)).eq(false)
    })
}

/// The other member of the (outer `chats` row's) conversation if it is a
/// direct one: a lookup that a group skips.
fn other_member(chat: (Alias, chat::Column), user: UserId) -> Expr {
    use sea_orm::sea_query::ExprTrait;
    let o = Alias::new("o");
    let other = Query::select()
        .column((o.clone(), chat_member::Column::UserId))
        .from_as(chat_member::Entity, o.clone())
        .and_where(Expr::col((o.clone(), chat_member::Column::ChatId)).equals(chat.clone()))
        .and_where(Expr::col((chat.0, chat::Column::Kind)).eq(chat::ChatKind::Direct))
        .and_where(Expr::col((o, chat_member::Column::UserId)).ne(user.0))
        .limit(1)
        .to_owned();
    Expr::SubQuery(None, Box::new(other.into()))
}

/// The version of the (outer `chats` row's) conversation's roster if it
/// is a group: its latest recorded change's id.
fn roster_version(chat: (Alias, chat::Column)) -> Expr {
    use sea_orm::sea_query::ExprTrait;
    let g = Alias::new("g");
    let latest = Query::select()
        .expr(Expr::col((g.clone(), group_change::Column::Id)).max())
        .from_as(group_change::Entity, g.clone())
        .and_where(Expr::col((g, group_change::Column::ChatId)).equals(chat.clone()))
        .and_where(Expr::col((chat.0, chat::Column::Kind)).eq(chat::ChatKind::Group))
        .to_owned();
    Expr::SubQuery(None, Box::new(latest.into()))
}

/// How far back from a conversation's newest event an unread count looks
/// (PROTOCOL.md C22): a count walks the messages after the reader's mark,
/// and a member months behind in a busy group would make every contact
/// list walk millions of them (0.7 s for 3 million on PostgreSQL;
/// BENCHMARKS.md "Unread counts within the last 10,000 events"). Within
/// it the count is exact.
pub const UNREAD_WINDOW: i64 = 10_000;

/// How many messages of others the outer query's membership (its
/// `chat_members` as `cm`) has not read: those after the `seq` of its read
/// mark (a message id, which a client may have made up: the newest message
/// up to it), and among the conversation's last [`UNREAD_WINDOW`] events
/// (`chat_seq`, the outer query's conversation's newest `seq`), walked
/// from there.
fn unread_count(cm: Alias, chat_seq: (Alias, chat::Column), user: UserId) -> Expr {
    use sea_orm::sea_query::ExprTrait;
    let n = Alias::new("n");
    let window_start = Expr::col(chat_seq).sub(UNREAD_WINDOW);
    // The mark's `seq`, looked for within the window only: a mark before
    // it counts as its start, and the walk down to it stays as short.
    let read = newest_message(
        message::Column::Seq,
        (cm.clone(), chat_member::Column::ChatId),
        |m| {
            Expr::col((m.clone(), message::Column::Id))
                .lte(Expr::col((
                    cm.clone(),
                    chat_member::Column::LastReadMessageId,
                )))
                .and(Expr::col((m, message::Column::Seq)).gt(window_start.clone()))
        },
    );
    let count = Query::select()
        .expr(Expr::col((n.clone(), message::Column::Id)).count())
        .from_as(message::Entity, n.clone())
        .and_where(
            Expr::col((n.clone(), message::Column::ChatId))
                .equals((cm, chat_member::Column::ChatId)),
        )
        .and_where(
            Expr::col((n.clone(), message::Column::Seq)).gt(Func::greatest([
                Func::coalesce([read, Expr::val(0i64)]).into(),
                window_start,
            ])),
        )
        .and_where(Expr::col((n.clone(), message::Column::Deleted)).eq(false))
        .cond_where(
            Condition::any()
                .add(Expr::col((n.clone(), message::Column::SenderId)).is_null())
                .add(Expr::col((n, message::Column::SenderId)).ne(user.0)),
        )
        .to_owned();
    Expr::SubQuery(None, Box::new(count.into()))
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

/// A conversation with every member's profile and role, longest-standing
/// first.
#[derive(Debug, Clone)]
pub struct ConversationRow {
    pub chat: chat::Model,
    pub members: Vec<(Membership, user::Profile)>,
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

/// What a member list shows of a membership; the other columns of
/// `chat_members` (the conversation, when the member joined, muted) are
/// not read for it.
#[derive(Debug, Clone, FromQueryResult)]
pub struct Membership {
    pub user_id: i64,
    pub role: chat_member::Role,
    pub last_read_message_id: Option<i64>,
}

impl Membership {
    const COLUMNS: [chat_member::Column; 3] = [
        chat_member::Column::UserId,
        chat_member::Column::Role,
        chat_member::Column::LastReadMessageId,
    ];
}

/// A conversation with its members, if it exists.
pub async fn conversation<C: ConnectionTrait>(
    db: &C,
    chat: ChatId,
) -> Result<Option<ConversationRow>, DbErr> {
    let Some(model) = chat::Entity::find_by_id(chat.0).one(db).await? else {
        return Ok(None);
    };
    let members = member_profiles(db, chat).await?;
    let last_message = message::Entity::find()
        .filter(message::Column::ChatId.eq(chat.0))
        .filter(message::Column::Deleted.eq(false))
        .order_by_desc(message::Column::Seq)
        .one(db)
        .await?;
    Ok(Some(ConversationRow {
        chat: model,
        members,
        last_message,
    }))
}

/// The members of `chat` with their profiles, longest-standing first.
async fn member_profiles<C: ConnectionTrait>(
    db: &C,
    chat: ChatId,
) -> Result<Vec<(Membership, user::Profile)>, DbErr> {
    use sea_orm::sea_query::{ExprTrait, JoinType};
    let (m, u) = (Alias::new("m"), Alias::new("u"));
    let mut select = Query::select();
    select
        .from_as(chat_member::Entity, m.clone())
        .join_as(
            JoinType::InnerJoin,
            user::Entity,
            u.clone(),
            Expr::col((u.clone(), user::Column::Id))
                .equals((m.clone(), chat_member::Column::UserId)),
        )
        .and_where(Expr::col((m.clone(), chat_member::Column::ChatId)).eq(chat.0))
        .order_by((m.clone(), chat_member::Column::JoinedAt), Order::Asc)
        .order_by((m.clone(), chat_member::Column::UserId), Order::Asc);
    prefixed(&mut select, m, "m_", Membership::COLUMNS);
    prefixed(&mut select, u, "u_", user::Profile::COLUMNS);
    db.query_all(&select)
        .await?
        .iter()
        .map(|row| {
            Ok((
                Membership::from_query_result(row, "m_")?,
                user::Profile::from_query_result(row, "u_")?,
            ))
        })
        .collect()
}

/// A conversation as `user` sees it, with members and unread count, if
/// they are a member.
pub async fn conversation_of(
    db: &DatabaseConnection,
    user: UserId,
    chat: ChatId,
    presence: &Presence,
) -> Result<Option<Conversation>, DbErr> {
    let Some(row) = membership_rows(db, user, Some(chat)).await?.pop() else {
        return Ok(None);
    };
    let full = ConversationRow {
        members: member_profiles(db, chat).await?,
        chat: row.chat,
        last_message: row.last_message,
    };
    let presence = PresenceView::new(presence, blocked_peers(db, user).await?);
    let mut item = full.to_conversation(Some(user), Some(row.unread), &presence);
    item.muted = row.muted.then_some(true);
    if full.chat.kind == chat::ChatKind::Group {
        item.changes = Some(group_changes(db, chat).await?);
    }
    Ok(Some(item))
}
