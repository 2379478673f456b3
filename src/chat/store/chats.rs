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

/// A membership row as the ChatServer routes by it: the conversation, the
/// member, and the conversation's kind, latest `seq` and direct key.
#[derive(Debug, FromQueryResult)]
struct RouteRow {
    chat_id: uuid::Uuid,
    user_id: i64,
    kind: chat::ChatKind,
    seq: i64,
    direct_key: Option<String>,
}

/// The memberships of `users`, each with its conversation's routing
/// columns: one statement per `IN_CHUNK` users.
async fn memberships_of(db: &DatabaseConnection, users: &[UserId]) -> Result<Vec<RouteRow>, DbErr> {
    let mut rows = Vec::new();
    for chunk in users.chunks(IN_CHUNK) {
        rows.extend(
            chat_member::Entity::find()
                .select_only()
                .column(chat_member::Column::ChatId)
                .column(chat_member::Column::UserId)
                .column(chat::Column::Kind)
                .column(chat::Column::Seq)
                .column(chat::Column::DirectKey)
                .inner_join(chat::Entity)
                .filter(chat_member::Column::UserId.is_in(chunk.iter().map(|u| u.0)))
                .into_model::<RouteRow>()
                .all(db)
                .await?,
        );
    }
    Ok(rows)
}

/// Each of `users`' conversations as the ChatServer routes them, given
/// the memberships and which direct pairs (as `direct_pair` reads them)
/// have a block: the groups' sizes are read once each.
async fn entries(
    db: &DatabaseConnection,
    users: &[UserId],
    memberships: Vec<RouteRow>,
    blocked: impl Fn((i64, i64)) -> bool,
) -> Result<HashMap<UserId, Vec<ChatEntry>>, DbErr> {
    let mut groups: Vec<uuid::Uuid> = memberships
        .iter()
        .filter(|m| m.kind == chat::ChatKind::Group)
        .map(|m| m.chat_id)
        .collect();
    groups.sort_unstable();
    groups.dedup();
    let mut sizes = HashMap::new();
    for chunk in groups.chunks(IN_CHUNK) {
        sizes.extend(member_counts(db, chunk.to_vec()).await?);
    }
    let mut chats: HashMap<UserId, Vec<ChatEntry>> =
        users.iter().map(|u| (*u, Vec::new())).collect();
    for RouteRow {
        chat_id: chat,
        user_id: user,
        kind,
        seq,
        direct_key: key,
    } in memberships
    {
        let entry = match kind {
            chat::ChatKind::Direct => {
                let blocked = key.as_deref().and_then(direct_pair).is_some_and(&blocked);
                ChatEntry {
                    chat: ChatId(chat),
                    presence: !blocked,
                    seq,
                    blocked,
                    audience: Audience::Direct,
                }
            }
            chat::ChatKind::Group => {
                let size = sizes.get(&chat).copied().unwrap_or(0).max(0) as u64;
                ChatEntry {
                    chat: ChatId(chat),
                    presence: group_presence(size),
                    seq,
                    blocked: false,
                    audience: Audience::Group(size),
                }
            }
        };
        chats.entry(UserId(user)).or_default().push(entry);
    }
    Ok(chats)
}

/// The conversations of each of `users`, with whether presence is pushed
/// in them: what the ChatServer routes by.
pub async fn chats_of_users(
    db: &DatabaseConnection,
    users: &[UserId],
) -> Result<HashMap<UserId, Vec<ChatEntry>>, DbErr> {
    let memberships = memberships_of(db, users).await?;
    let pairs: Vec<(i64, i64)> = memberships
        .iter()
        .filter_map(|m| m.direct_key.as_deref().and_then(direct_pair))
        .collect();
    let mut blocked = HashSet::new();
    for chunk in pairs.chunks(IN_CHUNK) {
        blocked.extend(blocked_pairs(db, chunk).await?);
    }
    entries(db, users, memberships, |pair| blocked.contains(&pair)).await
}

/// The conversations of `user` (see `chats_of_users`), and the people
/// they have a block with (`blocked_peers`), which also tell which of
/// their direct conversations have one: what registering a session
/// needs, in three statements.
pub async fn chats_of(
    db: &DatabaseConnection,
    user: UserId,
) -> Result<(Vec<ChatEntry>, Vec<UserId>), DbErr> {
    let peers = blocked_peers(db, user).await?;
    let memberships = memberships_of(db, &[user]).await?;
    let other = |(a, b): (i64, i64)| UserId(if a == user.0 { b } else { a });
    let mut chats = entries(db, &[user], memberships, |pair| {
        peers.contains(&other(pair))
    })
    .await?;
    Ok((chats.remove(&user).unwrap_or_default(), peers))
}

/// The conversations of `user` in which their presence is pushed.
pub async fn presence_chats(db: &DatabaseConnection, user: UserId) -> Result<Vec<ChatId>, DbErr> {
    Ok(chats_of(db, user)
        .await?
        .0
        .into_iter()
        .filter(|c| c.presence)
        .map(|c| c.chat)
        .collect())
}
