//! Who is in which conversation: members, audiences, and each connected
//! user's conversations with the flags the ChatServer needs.

use super::*;

/// The members of a conversation (empty if it does not exist).
pub async fn members_of(db: &DatabaseConnection, chat: ChatId) -> Result<Vec<UserId>, DbErr> {
    Ok(chat_member::Entity::find()
        .select_only()
        .column(chat_member::Column::UserId)
        .filter(chat_member::Column::ChatId.eq(chat.0))
        .into_tuple::<i64>()
        .all(db)
        .await?
        .into_iter()
        .map(UserId)
        .collect())
}

/// A conversation's kind and members, if it exists.
pub async fn membership_of(
    db: &DatabaseConnection,
    chat: ChatId,
) -> Result<Option<(chat::ChatKind, Vec<UserId>)>, DbErr> {
    let kind = chat::Entity::find_by_id(chat.0)
        .select_only()
        .column(chat::Column::Kind)
        .into_tuple::<chat::ChatKind>()
        .one(db)
        .await?;
    match kind {
        Some(kind) => Ok(Some((kind, members_of(db, chat).await?))),
        None => Ok(None),
    }
}

/// How many members each of `chats` has (those with none are absent).
pub async fn member_counts<C: ConnectionTrait>(
    db: &C,
    chats: Vec<uuid::Uuid>,
) -> Result<HashMap<uuid::Uuid, i64>, DbErr> {
    if chats.is_empty() {
        return Ok(HashMap::new());
    }
    Ok(chat_member::Entity::find()
        .select_only()
        .column(chat_member::Column::ChatId)
        .column_as(chat_member::Column::UserId.count(), "n")
        .filter(chat_member::Column::ChatId.is_in(chats))
        .group_by(chat_member::Column::ChatId)
        .into_tuple::<(uuid::Uuid, i64)>()
        .all(db)
        .await?
        .into_iter()
        .collect())
}

/// Who a message to `chat` reaches (`None`: no such conversation).
pub async fn audience_of(db: &DatabaseConnection, chat: ChatId) -> Result<Option<Audience>, DbErr> {
    let Some(kind) = chat::Entity::find_by_id(chat.0)
        .select_only()
        .column(chat::Column::Kind)
        .into_tuple::<chat::ChatKind>()
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    Ok(Some(match kind {
        chat::ChatKind::Direct => Audience::Direct,
        chat::ChatKind::Group => {
            let n = member_counts(db, vec![chat.0]).await?;
            Audience::Group(n.get(&chat.0).copied().unwrap_or(0).max(0) as u64)
        }
    }))
}

/// What the ChatServer routes a conversation by.
#[derive(Debug, Clone, Copy)]
pub(super) struct ChatFlags {
    /// Presence is pushed in it: direct and not blocked, or a group of at
    /// most `PRESENCE_MAX_MEMBERS`.
    presence: bool,
    /// Its latest `seq`.
    seq: i64,
    /// A direct conversation whose two people have a block (C10).
    blocked: bool,
    /// Who a message to it reaches.
    audience: Audience,
}

/// The routing flags of each of `chats`.
pub(super) async fn chat_flags(
    db: &DatabaseConnection,
    chats: &[uuid::Uuid],
) -> Result<HashMap<uuid::Uuid, ChatFlags>, DbErr> {
    let mut flags = HashMap::new();
    for chunk in chats.chunks(IN_CHUNK) {
        let rows = chat::Entity::find()
            .select_only()
            .column(chat::Column::Id)
            .column(chat::Column::Kind)
            .column(chat::Column::Seq)
            .column(chat::Column::DirectKey)
            .filter(chat::Column::Id.is_in(chunk.to_vec()))
            .into_tuple::<(uuid::Uuid, chat::ChatKind, i64, Option<String>)>()
            .all(db)
            .await?;
        let groups: Vec<uuid::Uuid> = rows
            .iter()
            .filter(|(_, k, _, _)| *k == chat::ChatKind::Group)
            .map(|(id, _, _, _)| *id)
            .collect();
        let sizes = member_counts(db, groups).await?;
        let pairs: Vec<(i64, i64)> = rows
            .iter()
            .filter_map(|(_, _, _, key)| key.as_deref().and_then(direct_pair))
            .collect();
        let blocked = blocked_pairs(db, &pairs).await?;
        for (id, kind, seq, key) in rows {
            let flag = match kind {
                chat::ChatKind::Direct => {
                    let blocked = key
                        .as_deref()
                        .and_then(direct_pair)
                        .is_some_and(|pair| blocked.contains(&pair));
                    ChatFlags {
                        presence: !blocked,
                        seq,
                        blocked,
                        audience: Audience::Direct,
                    }
                }
                chat::ChatKind::Group => {
                    let size = sizes.get(&id).copied().unwrap_or(0).max(0);
                    ChatFlags {
                        presence: group_presence(size as u64),
                        seq,
                        blocked: false,
                        audience: Audience::Group(size as u64),
                    }
                }
            };
            flags.insert(id, flag);
        }
    }
    Ok(flags)
}

/// The conversations of each of `users`, with whether presence is pushed
/// in them: what the ChatServer routes by.
pub async fn chats_of_users(
    db: &DatabaseConnection,
    users: &[UserId],
) -> Result<HashMap<UserId, Vec<ChatEntry>>, DbErr> {
    let mut pairs = Vec::new();
    for chunk in users.chunks(IN_CHUNK) {
        pairs.extend(
            chat_member::Entity::find()
                .select_only()
                .column(chat_member::Column::ChatId)
                .column(chat_member::Column::UserId)
                .filter(chat_member::Column::UserId.is_in(chunk.iter().map(|u| u.0)))
                .into_tuple::<(uuid::Uuid, i64)>()
                .all(db)
                .await?,
        );
    }
    let mut chat_ids: Vec<uuid::Uuid> = pairs.iter().map(|(c, _)| *c).collect();
    chat_ids.sort_unstable();
    chat_ids.dedup();
    let flags = chat_flags(db, &chat_ids).await?;
    let mut chats: HashMap<UserId, Vec<ChatEntry>> =
        users.iter().map(|u| (*u, Vec::new())).collect();
    for (chat, user) in pairs {
        let flag = flags.get(&chat).copied().unwrap_or(ChatFlags {
            presence: true,
            seq: 0,
            blocked: false,
            audience: Audience::Direct,
        });
        chats.entry(UserId(user)).or_default().push(ChatEntry {
            chat: ChatId(chat),
            presence: flag.presence,
            seq: flag.seq,
            blocked: flag.blocked,
            audience: flag.audience,
        });
    }
    Ok(chats)
}

/// The conversations of `user` (see `chats_of_users`).
pub async fn chats_of(db: &DatabaseConnection, user: UserId) -> Result<Vec<ChatEntry>, DbErr> {
    Ok(chats_of_users(db, &[user])
        .await?
        .remove(&user)
        .unwrap_or_default())
}

/// The conversations of `user` in which their presence is pushed.
pub async fn presence_chats(db: &DatabaseConnection, user: UserId) -> Result<Vec<ChatId>, DbErr> {
    Ok(chats_of(db, user)
        .await?
        .into_iter()
        .filter(|c| c.presence)
        .map(|c| c.chat)
        .collect())
}
