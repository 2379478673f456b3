//! The group changes themselves (B6, C7): create, add, remove, rename, and
//! accepting or declining an invitation (C9), each in one transaction with
//! its rules; `announce` (in mod.rs) then tells every instance.

use super::*;

/// Users among `ids` that do not exist or are inactive.
pub(super) async fn missing_users<C: ConnectionTrait>(
    db: &C,
    ids: &[i64],
) -> Result<Vec<i64>, DbErr> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let found: BTreeSet<i64> = user::Entity::find()
        .select_only()
        .column(user::Column::Id)
        .filter(user::Column::Id.is_in(ids.to_vec()))
        .filter(user::Column::IsActive.eq(true))
        .into_tuple::<i64>()
        .all(db)
        .await?
        .into_iter()
        .collect();
    Ok(ids.iter().copied().filter(|i| !found.contains(i)).collect())
}

pub(super) async fn require_users<C: ConnectionTrait>(
    db: &C,
    ids: &[i64],
) -> Result<(), GroupError> {
    let missing = missing_users(db, ids).await?;
    if missing.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = missing.iter().map(i64::to_string).collect();
    Err(GroupError::invalid(
        "members",
        format!("no active user with id {}", list.join(", ")),
    ))
}

/// The group `chat` and `caller`'s membership of it, which there must be:
/// two indexed lookups, however large the group.
pub(super) async fn group_of<C: ConnectionTrait>(
    db: &C,
    chat: ChatId,
    caller: UserId,
) -> Result<(chat::Model, chat_member::Model), GroupError> {
    let membership = chat_member::Entity::find_by_id((chat.0, caller.0))
        .one(db)
        .await?
        .ok_or(GroupError::NotFound)?;
    let found = chat::Entity::find_by_id(chat.0)
        .one(db)
        .await?
        .ok_or(GroupError::NotFound)?;
    if found.kind != chat::ChatKind::Group {
        return Err(GroupError::invalid(
            "id",
            "a direct conversation has no members to change or title to set",
        ));
    }
    Ok((found, membership))
}

/// Locks the group's row; `caller` must be a member. Returns the caller's
/// membership, and reads nothing of the other members: on SQLite the lock
/// is the database's write lock, which every message's commit waits for,
/// and a large group's members with their accounts are a thousand rows
/// (read once, by `commit`, for the answer; checks go by key or count).
pub(super) async fn lock_group<C: ConnectionTrait>(
    txn: &C,
    chat: ChatId,
    caller: UserId,
) -> Result<chat_member::Model, GroupError> {
    lock_row(txn, chat).await?;
    let (_, membership) = group_of(txn, chat, caller).await?;
    Ok(membership)
}

/// How many members the conversation has.
pub(super) async fn member_count<C: ConnectionTrait>(db: &C, chat: ChatId) -> Result<u64, DbErr> {
    chat_member::Entity::find()
        .filter(chat_member::Column::ChatId.eq(chat.0))
        .count(db)
        .await
}

/// Those of `users` who are members of the conversation, with their roles.
pub(super) async fn members_among<C: ConnectionTrait>(
    db: &C,
    chat: ChatId,
    users: &[i64],
) -> Result<BTreeMap<i64, chat_member::Role>, DbErr> {
    if users.is_empty() {
        return Ok(BTreeMap::new());
    }
    Ok(chat_member::Entity::find()
        .filter(chat_member::Column::ChatId.eq(chat.0))
        .filter(chat_member::Column::UserId.is_in(users.to_vec()))
        .all(db)
        .await?
        .into_iter()
        .map(|m| (m.user_id, m.role))
        .collect())
}

/// Makes `users` members of the conversation.
async fn insert_members<C: ConnectionTrait>(
    txn: &C,
    chat: ChatId,
    users: &[i64],
) -> Result<(), DbErr> {
    for some in users.chunks(crate::db::ROWS_PER_INSERT) {
        chat_member::Entity::insert_many(
            some.iter()
                .map(|m| member(chat, *m, chat_member::Role::Member)),
        )
        .exec_without_returning(txn)
        .await?;
    }
    Ok(())
}

/// The conversation as it is, read inside the change's transaction.
async fn current<C: ConnectionTrait>(db: &C, chat: ChatId) -> Result<ConversationRow, GroupError> {
    store::conversation(db, chat)
        .await?
        .ok_or(GroupError::NotFound)
}

/// Nothing to change: the conversation as it is.
pub(super) fn unchanged(row: ConversationRow) -> Result<Changed, GroupError> {
    Ok(Changed {
        row,
        added: Vec::new(),
        removed: Vec::new(),
        change: None,
        invited: None,
        newly_invited: Default::default(),
    })
}

/// Where the people asked for in a create or an add go (C9, C10).
pub(super) struct Sorted {
    /// They join at once.
    join: Vec<i64>,
    /// Everyone else: what the answer's `invited` says.
    invited: Vec<i64>,
    /// Those of `invited` who get an invitation: not those who blocked the
    /// adder (the adder is not told).
    to_invite: Vec<i64>,
}

/// Who among `candidates` (active users, none a member yet) joins at once
/// and who is invited: joining needs consent (they have written to
/// `adder`), room (they are in fewer than `max_groups` groups) and no block
/// of the adder; someone who blocked the adder is neither added nor invited.
pub(super) async fn join_or_invite<C: ConnectionTrait>(
    db: &C,
    adder: UserId,
    candidates: Vec<i64>,
    max_groups: usize,
) -> Result<Sorted, DbErr> {
    let blockers = blocks::blockers_of(db, adder, &candidates).await?;
    let consenting = invitations::consenting(db, adder, &candidates).await?;
    let willing: Vec<i64> = consenting.iter().copied().collect();
    let counts = invitations::group_counts(db, &willing).await?;
    let (join, invited): (Vec<i64>, Vec<i64>) = candidates.into_iter().partition(|c| {
        !blockers.contains(c)
            && consenting.contains(c)
            && counts.get(c).copied().unwrap_or(0) < max_groups as u64
    });
    let to_invite = invited
        .iter()
        .copied()
        .filter(|c| !blockers.contains(c))
        .collect();
    Ok(Sorted {
        join,
        invited,
        to_invite,
    })
}

impl Groups {
    /// Creates a group owned by `creator`, with `members` (duplicates and
    /// the creator ignored).
    pub async fn create(
        &self,
        creator: UserId,
        title: &str,
        members: &[i64],
    ) -> Result<Changed, GroupError> {
        let title = clean_title(title)?;
        let others: Vec<i64> = members
            .iter()
            .copied()
            .filter(|m| *m != creator.0)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if others.len() + 1 > self.max_members {
            return Err(too_many(self.max_members));
        }
        self.budget.charge_user(creator)?;
        let txn = self.begin().await?;
        require_users(&txn, &others).await?;
        let counts = invitations::group_counts(&txn, &[creator.0]).await?;
        if counts.get(&creator.0).copied().unwrap_or(0) >= self.max_groups_per_user as u64 {
            return Err(GroupError::invalid(
                "title",
                format!(
                    "you are in {} groups already; leave one first",
                    self.max_groups_per_user
                ),
            ));
        }
        let Sorted {
            join: others,
            invited,
            to_invite,
        } = join_or_invite(&txn, creator, others, self.max_groups_per_user).await?;
        let chat = ChatId(uuid::Uuid::new_v4());
        chat::ActiveModel {
            id: Set(chat.0),
            kind: Set(chat::ChatKind::Group),
            title: Set(Some(title)),
            direct_key: Set(None),
            created_at: Set(Utc::now()),
            seq: Set(0),
        }
        .insert(&txn)
        .await?;
        member(chat, creator.0, chat_member::Role::Owner)
            .insert(&txn)
            .await?;
        insert_members(&txn, chat, &others).await?;
        let newly_invited = invitations::invite(
            &txn,
            chat,
            creator,
            &to_invite,
            self.max_pending_invitations,
        )
        .await?;
        let mut added = vec![creator];
        added.extend(others.into_iter().map(UserId));
        let changed = commit(txn, chat, creator, added, Vec::new(), |_| {
            ConversationChange::Created
        })
        .await?;
        Ok(Changed {
            invited: Some(invited),
            newly_invited,
            ..changed
        })
    }

    /// Adds `members` to a group `caller` belongs to; those already in it
    /// are ignored.
    pub async fn add_members(
        &self,
        caller: UserId,
        chat: ChatId,
        members: &[i64],
    ) -> Result<Changed, GroupError> {
        let asked: Vec<i64> = members
            .iter()
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        // More people than a group holds cannot all be in it afterwards.
        if asked.len() > self.max_members {
            return Err(too_many(self.max_members));
        }
        self.budget.charge_user(caller)?;
        let txn = self.begin().await?;
        lock_group(&txn, chat, caller).await?;
        self.budget.charge_group(chat)?;
        let already = members_among(&txn, chat, &asked).await?;
        let new: Vec<i64> = asked
            .into_iter()
            .filter(|m| !already.contains_key(m))
            .collect();
        if new.is_empty() {
            return unchanged(current(&txn, chat).await?);
        }
        require_users(&txn, &new).await?;
        let Sorted {
            join: new,
            invited,
            to_invite,
        } = join_or_invite(&txn, caller, new, self.max_groups_per_user).await?;
        if !new.is_empty()
            && member_count(&txn, chat).await? as usize + new.len() > self.max_members
        {
            return Err(too_many(self.max_members));
        }
        let newly_invited =
            invitations::invite(&txn, chat, caller, &to_invite, self.max_pending_invitations)
                .await?;
        let invited = Some(invited);
        if new.is_empty() {
            let row = current(&txn, chat).await?;
            txn.commit().await?;
            return Ok(Changed {
                invited,
                newly_invited,
                ..unchanged(row)?
            });
        }
        insert_members(&txn, chat, &new).await?;
        let added = new.iter().copied().map(UserId).collect();
        let change = ConversationChange::MembersAdded {
            user_ids: new,
            by: caller.0,
        };
        let changed = commit(txn, chat, caller, added, Vec::new(), |_| change).await?;
        Ok(Changed {
            invited,
            newly_invited,
            ..changed
        })
    }

    /// Removes `target` from a group: the owner may remove anyone, a member
    /// only themselves. Leaving costs no budget, and removing costs only
    /// the owner's (not the group's, which a member spamming changes may
    /// have spent), so neither can be refused for someone else's abuse. An
    /// owner who leaves hands the group to the longest-standing member; a
    /// group left empty keeps its history.
    pub async fn remove_member(
        &self,
        caller: UserId,
        chat: ChatId,
        target: UserId,
    ) -> Result<Changed, GroupError> {
        let leaving = caller == target;
        if !leaving {
            self.budget.charge_user(caller)?;
        }
        let txn = self.begin().await?;
        let membership = lock_group(&txn, chat, caller).await?;
        let Some(target_role) = members_among(&txn, chat, &[target.0])
            .await?
            .remove(&target.0)
        else {
            return Err(GroupError::invalid(
                "user_id",
                format!("user {} is not a member of this group", target.0),
            ));
        };
        if !leaving && membership.role != chat_member::Role::Owner {
            return Err(GroupError::Forbidden(
                "only the group's owner can remove other members".into(),
            ));
        }
        chat_member::Entity::delete_by_id((chat.0, target.0))
            .exec(&txn)
            .await?;
        if target_role == chat_member::Role::Owner {
            // The longest-standing member, in the order members are shown.
            let heir = chat_member::Entity::find()
                .filter(chat_member::Column::ChatId.eq(chat.0))
                .order_by_asc(chat_member::Column::JoinedAt)
                .order_by_asc(chat_member::Column::UserId)
                .one(&txn)
                .await?;
            if let Some(heir) = heir {
                chat_member::Entity::update_many()
                    .col_expr(
                        chat_member::Column::Role,
                        Expr::value(chat_member::Role::Owner),
                    )
                    .filter(chat_member::Column::ChatId.eq(chat.0))
                    .filter(chat_member::Column::UserId.eq(heir.user_id))
                    .exec(&txn)
                    .await?;
            }
        }
        commit(txn, chat, caller, Vec::new(), vec![target], |after| {
            ConversationChange::MemberRemoved {
                user_id: target.0,
                by: caller.0,
                owner_id: after
                    .members
                    .iter()
                    .find(|(m, _)| m.role == chat_member::Role::Owner)
                    .map(|(m, _)| m.user_id),
            }
        })
        .await
    }

    /// Gives a group `caller` belongs to a new title.
    pub async fn rename(
        &self,
        caller: UserId,
        chat: ChatId,
        title: &str,
    ) -> Result<Changed, GroupError> {
        let title = clean_title(title)?;
        self.budget.charge_user(caller)?;
        // The checks read, outside any transaction; the change is one
        // statement that checks membership again as it writes, and its
        // record (C20), in one short transaction. No lock is held while a
        // large group's members are loaded (on SQLite, the write lock every
        // message waits for).
        let (group, _) = group_of(&self.db, chat, caller).await?;
        self.budget.charge_group(chat)?;
        if group.title.as_deref() == Some(title.as_str()) {
            return unchanged(current(&self.db, chat).await?);
        }
        let member = Query::select()
            .expr(Expr::val(1))
            .from(chat_member::Entity)
            .and_where(chat_member::Column::ChatId.eq(chat.0))
            .and_where(chat_member::Column::UserId.eq(caller.0))
            .to_owned();
        let txn = self.begin().await?;
        let renamed = chat::Entity::update_many()
            .col_expr(chat::Column::Title, Expr::value(title.clone()))
            .filter(chat::Column::Id.eq(chat.0))
            .filter(Expr::exists(member))
            .exec(&txn)
            .await?;
        if renamed.rows_affected == 0 {
            return Err(GroupError::NotFound);
        }
        let change = ConversationChange::Renamed { by: caller.0 };
        record(&txn, chat, caller, &change, Some(&title)).await?;
        txn.commit().await?;
        Ok(Changed {
            change: Some(change),
            row: current(&self.db, chat).await?,
            added: Vec::new(),
            removed: Vec::new(),
            invited: None,
            newly_invited: Default::default(),
        })
    }
}

impl Groups {
    /// Joins the group `chat` that `user` holds a pending invitation to.
    /// Costs no budget (an invitation is accepted once).
    pub async fn accept(&self, user: UserId, chat: ChatId) -> Result<Changed, GroupError> {
        let txn = self.begin().await?;
        lock_row(&txn, chat).await?;
        let pending = invitation::Entity::find_by_id((chat.0, user.0))
            .filter(invitation::Column::DeclinedAt.is_null())
            .one(&txn)
            .await?
            .ok_or(GroupError::NotFound)?;
        // The room left, as a count (see `lock_group`).
        if member_count(&txn, chat).await? >= self.max_members as u64 {
            return Err(too_many(self.max_members));
        }
        let groups = invitations::group_counts(&txn, &[user.0]).await?;
        if groups.get(&user.0).copied().unwrap_or(0) >= self.max_groups_per_user as u64 {
            return Err(GroupError::Invalid {
                field: "id",
                message: format!(
                    "you are in {} groups already; leave one first",
                    self.max_groups_per_user
                ),
            });
        }
        invitation::Entity::delete_by_id((pending.chat_id, pending.user_id))
            .exec(&txn)
            .await?;
        member(chat, user.0, chat_member::Role::Member)
            .insert(&txn)
            .await?;
        let change = ConversationChange::MembersAdded {
            user_ids: vec![user.0],
            by: user.0,
        };
        commit(txn, chat, user, vec![user], Vec::new(), |_| change).await
    }

    /// Turns down `user`'s pending invitation to `chat`, for good.
    pub async fn decline(&self, user: UserId, chat: ChatId) -> Result<(), GroupError> {
        let declined = invitation::Entity::update_many()
            .col_expr(invitation::Column::DeclinedAt, Expr::value(Utc::now()))
            .filter(invitation::Column::ChatId.eq(chat.0))
            .filter(invitation::Column::UserId.eq(user.0))
            .filter(invitation::Column::DeclinedAt.is_null())
            .exec(&self.writes)
            .await?;
        if declined.rows_affected == 0 {
            return Err(GroupError::NotFound);
        }
        Ok(())
    }
}
