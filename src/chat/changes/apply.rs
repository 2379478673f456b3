//! Applying a batch of changes in the writer's transaction: what is known of
//! the messages they name, the rules checked against it, the rows written,
//! and, last, each change's `seq`.

use super::*;
use sea_orm::sea_query::LockType;

use crate::chat::writer::commit_gate;

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
        // Locked, in id order: changes of one message wait for each other
        // (on every instance), and nothing else locks these rows. Only
        // messages that exist (`chats_of`): MySQL would lock the gap where
        // a missing one would be, and with it the inserts of new messages.
        // PostgreSQL's NO KEY lock leaves the rows free for foreign-key
        // checks of rows that point at them (push notifications).
        let ids: BTreeSet<i64> = chat_of.keys().copied().collect();
        let lock = match txn.get_database_backend() {
            DatabaseBackend::Postgres => LockType::NoKeyUpdate,
            _ => LockType::Update,
        };
        let messages = message::Entity::find()
            .filter(message::Column::Id.is_in(ids))
            .order_by_asc(message::Column::Id)
            .lock(lock)
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

/// Applies `batch` in order inside `txn`. A few reads for the whole batch
/// (the messages' rows locked), the decisions in memory, then the writes:
/// edits and deletions as they come (rare), reaction rows in a statement or
/// two at the end. The events are numbered last (`store::take_seqs`, in the
/// batch's order, after whatever the transaction numbered before), so a
/// conversation's row is locked only for the events' insert and the commit:
/// new messages of the same conversation wait for that, not for the batch.
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
    let mut results = Vec::with_capacity(batch.len());
    let mut event_of = Vec::with_capacity(batch.len());
    for request in batch {
        match batch_state.apply(txn, request).await? {
            Ok((outcome, event)) => {
                results.push(Ok(outcome));
                event_of.push(event);
            }
            Err(refusal) => {
                results.push(Err(refusal));
                event_of.push(None);
            }
        }
    }
    let Batch {
        reactions, events, ..
    } = batch_state;
    reactions.write(txn, now).await?;
    if events.is_empty() {
        return Ok(results);
    }
    let chats: Vec<uuid::Uuid> = events.iter().map(|(chat, _)| *chat).collect();
    commit_gate::pass_at(commit_gate::Point::Numbering, chats.iter().copied()).await;
    let seqs = store::take_seqs(txn, &chats).await?;
    let rows = events.into_iter().zip(&seqs).map(|((_, mut row), seq)| {
        row.seq = Set(*seq);
        row
    });
    message_event::Entity::insert_many(rows).exec(txn).await?;
    for (result, event) in results.iter_mut().zip(event_of) {
        if let (Ok(outcome), Some(k)) = (result, event) {
            outcome.applied.numbered(seqs[k]);
        }
    }
    Ok(results)
}

/// What a change came to: its outcome, and which of the batch's events
/// (not numbered yet) carries its `seq`, if one does.
type Decided = Result<(ChangeOutcome, Option<usize>), StoreError>;

/// One batch of changes being decided: what it knows, what it will write.
pub(super) struct Batch {
    known: Known,
    reactions: ReactionWrites,
    /// The events to store, each with its conversation; numbered last.
    events: Vec<(uuid::Uuid, message_event::ActiveModel)>,
    edit_window: chrono::Duration,
    now: DateTime<Utc>,
}

impl Batch {
    /// Decides one change and records it: edits and deletions are written
    /// at once, reaction rows and events kept for the end.
    async fn apply<C: ConnectionTrait>(
        &mut self,
        txn: &C,
        request: &ChangeRequest,
    ) -> Result<Decided, DbErr> {
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

    /// An event of `kind` for the batch to store (its `seq` comes last).
    fn event(
        &self,
        kind: EventKind,
        chat: uuid::Uuid,
        id: i64,
        user: UserId,
    ) -> message_event::ActiveModel {
        message_event::ActiveModel {
            id: NotSet,
            chat_id: Set(chat),
            seq: NotSet,
            message_id: Set(id),
            kind: Set(kind),
            user_id: Set(Some(user.0)),
            content: Set(None),
            emoji: Set(None),
            added: Set(None),
            created_at: Set(self.now),
        }
    }

    /// Keeps `event` for the end; its place among the batch's events.
    fn record(&mut self, chat: uuid::Uuid, event: message_event::ActiveModel) -> usize {
        self.events.push((chat, event));
        self.events.len() - 1
    }

    async fn edit<C: ConnectionTrait>(
        &mut self,
        txn: &C,
        user: UserId,
        id: i64,
        content: &str,
    ) -> Result<(ChangeOutcome, Option<usize>), DbErr> {
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
            let outcome = ChangeOutcome {
                applied,
                changed: false,
            };
            return Ok((outcome, None));
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
        let mut edited = self.event(EventKind::Edited, chat_id, id, user);
        edited.content = Set(Some(content.to_owned()));
        let event = self.record(chat_id, edited);
        let outcome = ChangeOutcome {
            applied: Applied::Edited(MessageEdited {
                status: None,
                pk,
                seq: None,
                id,
                content: content.to_owned(),
                edited_at: Some(format_time(&now)),
            }),
            changed: true,
        };
        Ok((outcome, Some(event)))
    }

    async fn delete<C: ConnectionTrait>(
        &mut self,
        txn: &C,
        user: UserId,
        id: i64,
    ) -> Result<(ChangeOutcome, Option<usize>), DbErr> {
        let m = self.known.messages.get(&id).expect("checked by apply");
        let (chat_id, pk, seq_of_message) = (m.chat_id, ChatId(m.chat_id), m.seq);
        let deleted = |seq, changed| ChangeOutcome {
            applied: Applied::Deleted(MessageDeleted {
                status: None,
                pk,
                seq,
                id,
            }),
            changed,
        };
        if m.deleted {
            // Asked again (a resend): the deletion that was made, stored
            // before or waiting in this batch.
            let pending = self.events.iter().position(|(_, e)| {
                matches!((&e.message_id, &e.kind), (Set(m), Set(EventKind::Deleted)) if *m == id)
            });
            if pending.is_some() {
                return Ok((deleted(0, false), pending));
            }
            let seq = stored_deletion_seq(txn, id)
                .await?
                .unwrap_or(seq_of_message);
            return Ok((deleted(seq, false), None));
        }
        self.erase(txn, id).await?;
        let event = self.event(EventKind::Deleted, chat_id, id, user);
        let event = self.record(chat_id, event);
        Ok((deleted(0, true), Some(event)))
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
        for (_, waiting) in self.events.iter_mut() {
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
    ) -> Decided {
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
        let event = if changed {
            *self.known.counts.entry((id, emoji.to_owned())).or_default() +=
                if on { 1 } else { -1 };
            if on {
                self.known.own.insert(key.clone());
            } else {
                self.known.own.remove(&key);
            }
            self.reactions.set(key, on);
            let mut reacted = self.event(EventKind::Reaction, chat_id, id, user);
            reacted.emoji = Set(Some(emoji.to_owned()));
            reacted.added = Set(Some(on));
            Some(self.record(chat_id, reacted))
        } else {
            None
        };
        let outcome = ChangeOutcome {
            applied: Applied::Reacted(ReactionEvent {
                status: None,
                pk: ChatId(chat_id),
                seq: None,
                id,
                user_id: Some(user.0),
                emoji: emoji.to_owned(),
                on,
            }),
            changed,
        };
        Ok((outcome, event))
    }
}

/// The `seq` of message `id`'s stored deletion event.
async fn stored_deletion_seq<C: ConnectionTrait>(txn: &C, id: i64) -> Result<Option<i64>, DbErr> {
    message_event::Entity::find()
        .select_only()
        .column(message_event::Column::Seq)
        .filter(message_event::Column::MessageId.eq(id))
        .filter(message_event::Column::Kind.eq(EventKind::Deleted))
        .into_tuple::<i64>()
        .one(txn)
        .await
}
