//! Applying a batch of changes in the writer's transaction: what is known of
//! the messages they name, the rules checked against it, the rows written,
//! and each change's `seq`.

use super::*;

/// What the batch's changes need to know, read in a few queries for the
/// whole batch, then kept up to date in memory as each change is decided.
pub(super) struct Known {
    chats: HashMap<uuid::Uuid, chat::Model>,
    messages: HashMap<i64, message::Model>,
    roles: HashMap<(uuid::Uuid, i64), chat_member::Role>,
    blocked: HashSet<uuid::Uuid>,
    /// How many people set each (message, emoji).
    counts: HashMap<(i64, String), i64>,
    /// The batch's people's own reactions on the batch's messages.
    own: HashSet<(i64, i64, String)>,
}

impl Known {
    /// What the rules need to judge `batch`, read inside its transaction.
    async fn read<C: ConnectionTrait>(
        txn: &C,
        batch: &[ChangeRequest],
        chat_of: &HashMap<i64, uuid::Uuid>,
    ) -> Result<Self, DbErr> {
        let chat_ids: BTreeSet<uuid::Uuid> = chat_of.values().copied().collect();
        let chats: HashMap<uuid::Uuid, chat::Model> = chat::Entity::find()
            .filter(chat::Column::Id.is_in(chat_ids.clone()))
            .all(txn)
            .await?
            .into_iter()
            .map(|c| (c.id, c))
            .collect();
        let ids: BTreeSet<i64> = batch.iter().map(|r| r.change.message_id()).collect();
        let messages = message::Entity::find()
            .filter(message::Column::Id.is_in(ids))
            .all(txn)
            .await?
            .into_iter()
            .map(|m| (m.id, m))
            .collect();
        let users: BTreeSet<i64> = batch.iter().map(|r| r.user.0).collect();
        let roles = chat_member::Entity::find()
            .filter(chat_member::Column::ChatId.is_in(chat_ids))
            .filter(chat_member::Column::UserId.is_in(users.clone()))
            .all(txn)
            .await?
            .into_iter()
            .map(|m| ((m.chat_id, m.user_id), m.role))
            .collect();
        let blocked = blocked_chats(txn, &chats).await?;
        let (counts, own) = reactions_on(txn, batch, users).await?;
        Ok(Known {
            chats,
            messages,
            roles,
            blocked,
            counts,
            own,
        })
    }

    /// The distinct emoji on message `id` now.
    fn emoji_on(&self, id: i64) -> impl Iterator<Item = &str> {
        self.counts
            .iter()
            .filter(move |((m, _), n)| *m == id && **n > 0)
            .map(|((_, emoji), _)| emoji.as_str())
    }

    fn next_seq(&mut self, chat: uuid::Uuid) -> i64 {
        let chat = self
            .chats
            .get_mut(&chat)
            .expect("a change's conversation is read with the batch");
        chat.seq += 1;
        chat.seq
    }
}

/// Which of `chats` are direct conversations whose two people have a block.
pub(super) async fn blocked_chats<C: ConnectionTrait>(
    txn: &C,
    chats: &HashMap<uuid::Uuid, chat::Model>,
) -> Result<HashSet<uuid::Uuid>, DbErr> {
    let direct: Vec<(uuid::Uuid, (i64, i64))> = chats
        .values()
        .filter_map(|c| {
            let pair = c.direct_key.as_deref().and_then(store::direct_pair)?;
            Some((c.id, pair))
        })
        .collect();
    let pairs: Vec<(i64, i64)> = direct.iter().map(|(_, pair)| *pair).collect();
    let blocked_pairs = store::blocked_pairs(txn, &pairs).await?;
    Ok(direct
        .iter()
        .filter(|(_, (a, b))| blocked_pairs.contains(&(*a.min(b), *a.max(b))))
        .map(|(chat, _)| *chat)
        .collect())
}

/// How many people set each (message, emoji) on the messages `batch`
/// reacts to, and which of those reactions are `users`' own.
pub(super) async fn reactions_on<C: ConnectionTrait>(
    txn: &C,
    batch: &[ChangeRequest],
    users: BTreeSet<i64>,
) -> Result<(HashMap<(i64, String), i64>, HashSet<(i64, i64, String)>), DbErr> {
    let reacted: BTreeSet<i64> = batch
        .iter()
        .filter(|r| matches!(r.change, Change::React { .. }))
        .map(|r| r.change.message_id())
        .collect();
    let mut counts = HashMap::new();
    let mut own = HashSet::new();
    if !reacted.is_empty() {
        let on_messages =
            reaction::Entity::find().filter(reaction::Column::MessageId.is_in(reacted));
        for (message_id, emoji, n) in on_messages
            .clone()
            .select_only()
            .column(reaction::Column::MessageId)
            .column(reaction::Column::Emoji)
            .column_as(reaction::Column::UserId.count(), "n")
            .group_by(reaction::Column::MessageId)
            .group_by(reaction::Column::Emoji)
            .into_tuple::<(i64, String, i64)>()
            .all(txn)
            .await?
        {
            counts.insert((message_id, emoji), n);
        }
        own = on_messages
            .filter(reaction::Column::UserId.is_in(users))
            .all(txn)
            .await?
            .into_iter()
            .map(|r| (r.message_id, r.user_id, r.emoji))
            .collect();
    }
    Ok((counts, own))
}

/// The reaction rows a batch adds and removes: its net effect, written at
/// the end in a statement or two.
#[derive(Default)]
pub(super) struct ReactionWrites {
    add: HashSet<(i64, i64, String)>,
    remove: HashSet<(i64, i64, String)>,
}

impl ReactionWrites {
    fn set(&mut self, key: (i64, i64, String), on: bool) {
        let (to, from) = if on {
            (&mut self.add, &mut self.remove)
        } else {
            (&mut self.remove, &mut self.add)
        };
        if !from.remove(&key) {
            to.insert(key);
        }
    }

    /// A deleted message: its rows are deleted outright, nothing to write.
    fn forget(&mut self, id: i64) {
        self.add.retain(|(m, _, _)| *m != id);
        self.remove.retain(|(m, _, _)| *m != id);
    }

    async fn write<C: ConnectionTrait>(self, txn: &C, now: DateTime<Utc>) -> Result<(), DbErr> {
        if !self.add.is_empty() {
            let rows =
                self.add
                    .into_iter()
                    .map(|(message_id, user_id, emoji)| reaction::ActiveModel {
                        message_id: Set(message_id),
                        user_id: Set(user_id),
                        emoji: Set(emoji),
                        created_at: Set(now),
                    });
            reaction::Entity::insert_many(rows).exec(txn).await?;
        }
        let removed: Vec<_> = self.remove.into_iter().collect();
        // A bounded expression per statement (SQLite limits its depth).
        for chunk in removed.chunks(100) {
            let mut rows = sea_orm::Condition::any();
            for (message_id, user_id, emoji) in chunk {
                rows = rows.add(
                    sea_orm::Condition::all()
                        .add(reaction::Column::MessageId.eq(*message_id))
                        .add(reaction::Column::UserId.eq(*user_id))
                        .add(reaction::Column::Emoji.eq(emoji.as_str())),
                );
            }
            reaction::Entity::delete_many()
                .filter(rows)
                .exec(txn)
                .await?;
        }
        Ok(())
    }
}

/// Applies `batch` in order inside `txn`, whose conversations' rows are
/// locked (`lock_chats`), each change taking the `seq` after whatever the
/// transaction numbered before it. A few reads for the whole batch, the
/// decisions in memory, then the writes: edits and deletions as they come
/// (rare), reaction rows and events in a statement or two at the end.
pub async fn apply_all<C: ConnectionTrait>(
    txn: &C,
    batch: &[ChangeRequest],
    chat_of: &HashMap<i64, uuid::Uuid>,
    edit_window: chrono::Duration,
) -> Result<Vec<Result<ChangeOutcome, StoreError>>, DbErr> {
    let now = Utc::now();
    let mut batch_state = Batch {
        known: Known::read(txn, batch, chat_of).await?,
        reactions: ReactionWrites::default(),
        events: Vec::new(),
        edit_window,
        now,
    };
    let before: HashMap<uuid::Uuid, i64> = batch_state
        .known
        .chats
        .iter()
        .map(|(id, c)| (*id, c.seq))
        .collect();
    let mut results = Vec::with_capacity(batch.len());
    for request in batch {
        results.push(batch_state.apply(txn, request).await?);
    }
    let Batch {
        known,
        reactions,
        events,
        ..
    } = batch_state;
    reactions.write(txn, now).await?;
    if !events.is_empty() {
        message_event::Entity::insert_many(events).exec(txn).await?;
    }
    let moved: Vec<(uuid::Uuid, i64)> = known
        .chats
        .iter()
        .filter(|(id, chat)| before.get(*id) != Some(&chat.seq))
        .map(|(id, chat)| (*id, chat.seq))
        .collect();
    set_seqs(txn, &moved).await?;
    Ok(results)
}

/// One batch of changes being decided: what it knows, what it will write.
pub(super) struct Batch {
    known: Known,
    reactions: ReactionWrites,
    events: Vec<message_event::ActiveModel>,
    edit_window: chrono::Duration,
    now: DateTime<Utc>,
}

impl Batch {
    /// Decides one change and records it: edits and deletions are written
    /// at once, reaction rows and events kept for the end. Moves the
    /// conversation's `seq` when it makes an event.
    async fn apply<C: ConnectionTrait>(
        &mut self,
        txn: &C,
        request: &ChangeRequest,
    ) -> Result<Result<ChangeOutcome, StoreError>, DbErr> {
        let user = request.user;
        let id = request.change.message_id();
        let Some(m) = self.known.messages.get(&id) else {
            return Ok(Err(not_found()));
        };
        let chat_id = m.chat_id;
        let (Some(role), Some(chat)) = (
            self.known.roles.get(&(chat_id, user.0)).copied(),
            self.known.chats.get(&chat_id),
        ) else {
            return Ok(Err(not_found()));
        };
        let own = m.sender_id == Some(user.0);
        let owner = chat.kind == chat::ChatKind::Group && role == chat_member::Role::Owner;
        let blocked = self.known.blocked.contains(&chat_id);
        let (deleted, created_at) = (m.deleted, m.created_at);
        match &request.change {
            Change::Edit { content, .. } => {
                if !own {
                    return Ok(Err(not_found()));
                }
                if deleted {
                    return Ok(Err(refused(ErrorCode::Invalid, DELETED)));
                }
                if self.now - created_at > self.edit_window {
                    let text = format!(
                        "a message can be edited for {} s after it was sent",
                        self.edit_window.num_seconds()
                    );
                    return Ok(Err(refused(ErrorCode::Invalid, text)));
                }
                if blocked {
                    return Ok(Err(refused(ErrorCode::Invalid, BLOCKED)));
                }
                self.edit(txn, user, id, content).await.map(Ok)
            }
            Change::Delete { .. } => {
                if !own && !owner {
                    return Ok(Err(not_found()));
                }
                self.delete(txn, user, id).await.map(Ok)
            }
            Change::React { emoji, on, .. } => {
                if deleted {
                    return Ok(Err(refused(ErrorCode::Invalid, DELETED)));
                }
                if blocked {
                    return Ok(Err(refused(ErrorCode::Invalid, BLOCKED)));
                }
                Ok(self.react(user, id, chat_id, emoji, *on))
            }
        }
    }

    fn event(
        &self,
        kind: EventKind,
        chat: uuid::Uuid,
        seq: i64,
        id: i64,
        user: UserId,
    ) -> message_event::ActiveModel {
        message_event::ActiveModel {
            id: NotSet,
            chat_id: Set(chat),
            seq: Set(seq),
            message_id: Set(id),
            kind: Set(kind),
            user_id: Set(Some(user.0)),
            content: Set(None),
            emoji: Set(None),
            added: Set(None),
            created_at: Set(self.now),
        }
    }

    async fn edit<C: ConnectionTrait>(
        &mut self,
        txn: &C,
        user: UserId,
        id: i64,
        content: &str,
    ) -> Result<ChangeOutcome, DbErr> {
        let m = self.known.messages.get(&id).expect("checked by apply");
        let (chat_id, pk) = (m.chat_id, ChatId(m.chat_id));
        if m.content == content {
            let applied = Applied::Edited(MessageEdited {
                status: None,
                pk,
                seq: None,
                id,
                content: m.content.clone(),
                edited_at: m.edited_at.as_ref().map(format_time),
            });
            return Ok(ChangeOutcome {
                applied,
                changed: false,
            });
        }
        let first = m
            .original_content
            .clone()
            .unwrap_or_else(|| m.content.clone());
        message::Entity::update_many()
            .col_expr(message::Column::Content, Expr::value(content))
            .col_expr(message::Column::EditedAt, Expr::value(self.now))
            .col_expr(message::Column::OriginalContent, Expr::value(first.clone()))
            .filter(message::Column::Id.eq(id))
            .exec(txn)
            .await?;
        let now = self.now;
        let m = self.known.messages.get_mut(&id).expect("checked by apply");
        m.content = content.to_owned();
        m.edited_at = Some(now);
        m.original_content = Some(first);
        let seq = self.known.next_seq(chat_id);
        let mut edited = self.event(EventKind::Edited, chat_id, seq, id, user);
        edited.content = Set(Some(content.to_owned()));
        self.events.push(edited);
        Ok(ChangeOutcome {
            applied: Applied::Edited(MessageEdited {
                status: None,
                pk,
                seq: Some(seq),
                id,
                content: content.to_owned(),
                edited_at: Some(format_time(&now)),
            }),
            changed: true,
        })
    }

    async fn delete<C: ConnectionTrait>(
        &mut self,
        txn: &C,
        user: UserId,
        id: i64,
    ) -> Result<ChangeOutcome, DbErr> {
        let m = self.known.messages.get(&id).expect("checked by apply");
        let (chat_id, pk, seq_of_message) = (m.chat_id, ChatId(m.chat_id), m.seq);
        if m.deleted {
            // Asked again (a resend): the deletion that was made.
            let seq = self.deletion_seq(txn, id, seq_of_message).await?;
            return Ok(ChangeOutcome {
                applied: Applied::Deleted(MessageDeleted {
                    status: None,
                    pk,
                    seq,
                    id,
                }),
                changed: false,
            });
        }
        self.erase(txn, id).await?;
        let seq = self.known.next_seq(chat_id);
        self.events
            .push(self.event(EventKind::Deleted, chat_id, seq, id, user));
        Ok(ChangeOutcome {
            applied: Applied::Deleted(MessageDeleted {
                status: None,
                pk,
                seq,
                id,
            }),
            changed: true,
        })
    }

    /// The `seq` of message `id`'s deletion, made in this batch or before it.
    async fn deletion_seq<C: ConnectionTrait>(
        &self,
        txn: &C,
        id: i64,
        fallback: i64,
    ) -> Result<i64, DbErr> {
        let pending = self
            .events
            .iter()
            .find_map(|e| match (&e.message_id, &e.kind, &e.seq) {
                (Set(m), Set(EventKind::Deleted), Set(seq)) if *m == id => Some(*seq),
                _ => None,
            });
        if let Some(seq) = pending {
            return Ok(seq);
        }
        Ok(message_event::Entity::find()
            .select_only()
            .column(message_event::Column::Seq)
            .filter(message_event::Column::MessageId.eq(id))
            .filter(message_event::Column::Kind.eq(EventKind::Deleted))
            .into_tuple::<i64>()
            .one(txn)
            .await?
            .unwrap_or(fallback))
    }

    /// Nothing of message `id`'s text stays: not the message's, not its
    /// first version's, not an edit event's (stored, or waiting in this
    /// batch). Its reactions go with it, and its files (B9).
    async fn erase<C: ConnectionTrait>(&mut self, txn: &C, id: i64) -> Result<(), DbErr> {
        message::Entity::update_many()
            .col_expr(message::Column::Content, Expr::value(""))
            .col_expr(
                message::Column::OriginalContent,
                Expr::value(Option::<String>::None),
            )
            .col_expr(message::Column::Deleted, Expr::value(true))
            .filter(message::Column::Id.eq(id))
            .exec(txn)
            .await?;
        message_event::Entity::update_many()
            .col_expr(message_event::Column::Content, Expr::value(""))
            .filter(message_event::Column::MessageId.eq(id))
            .filter(message_event::Column::Content.is_not_null())
            .exec(txn)
            .await?;
        for waiting in self.events.iter_mut() {
            let edit_of_it = matches!(&waiting.message_id, Set(m) if *m == id)
                && matches!(&waiting.content, Set(Some(_)));
            if edit_of_it {
                waiting.content = Set(Some(String::new()));
            }
        }
        reaction::Entity::delete_many()
            .filter(reaction::Column::MessageId.eq(id))
            .exec(txn)
            .await?;
        store::remove_of_message(txn, id).await?;
        self.reactions.forget(id);
        self.known.counts.retain(|(m, _), _| *m != id);
        self.known.own.retain(|(m, _, _)| *m != id);
        let m = self.known.messages.get_mut(&id).expect("checked by apply");
        m.deleted = true;
        m.content.clear();
        m.original_content = None;
        Ok(())
    }

    /// Sets or takes back a reaction, in memory: at most 20 emoji on a
    /// message; what is already so changes nothing.
    fn react(
        &mut self,
        user: UserId,
        id: i64,
        chat_id: uuid::Uuid,
        emoji: &str,
        on: bool,
    ) -> Result<ChangeOutcome, StoreError> {
        let key = (id, user.0, emoji.to_owned());
        let set = self.known.own.contains(&key);
        if on && !set && !self.known.emoji_on(id).any(|e| e == emoji) {
            let distinct = self.known.emoji_on(id).count() as u64;
            if distinct >= MAX_EMOJI_PER_MESSAGE {
                let text =
                    format!("a message has at most {MAX_EMOJI_PER_MESSAGE} different reactions");
                return Err(refused(ErrorCode::Invalid, text));
            }
        }
        let changed = on != set;
        let seq = if changed {
            *self.known.counts.entry((id, emoji.to_owned())).or_default() +=
                if on { 1 } else { -1 };
            if on {
                self.known.own.insert(key.clone());
            } else {
                self.known.own.remove(&key);
            }
            self.reactions.set(key, on);
            let seq = self.known.next_seq(chat_id);
            let mut reacted = self.event(EventKind::Reaction, chat_id, seq, id, user);
            reacted.emoji = Set(Some(emoji.to_owned()));
            reacted.added = Set(Some(on));
            self.events.push(reacted);
            Some(seq)
        } else {
            None
        };
        Ok(ChangeOutcome {
            applied: Applied::Reacted(ReactionEvent {
                status: None,
                pk: ChatId(chat_id),
                seq,
                id,
                user_id: Some(user.0),
                emoji: emoji.to_owned(),
                on,
            }),
            changed,
        })
    }
}
