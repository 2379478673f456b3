//! A group's own history (PROTOCOL.md C20): who created it, added, removed,
//! left or renamed it, and when, newest last, with the people named as they
//! are now. `groups` writes it in the transaction of each change.

use super::*;
use entity::group_change;

/// How many of a group's latest changes `get_contact` carries.
pub const GROUP_CHANGES_SHOWN: u64 = 50;

/// The latest changes of `chat`, oldest first.
pub async fn group_changes<C: ConnectionTrait>(
    db: &C,
    chat: ChatId,
) -> Result<Vec<GroupChangeItem>, DbErr> {
    let mut rows = group_change::Entity::find()
        .filter(group_change::Column::ChatId.eq(chat.0))
        .order_by_desc(group_change::Column::Id)
        .limit(GROUP_CHANGES_SHOWN)
        .all(db)
        .await?;
    rows.reverse();
    let ids_of = |row: &group_change::Model| -> Vec<i64> {
        row.user_ids
            .split(',')
            .filter_map(|id| id.parse().ok())
            .collect()
    };
    let mut wanted: HashSet<i64> = rows.iter().filter_map(|r| r.by_id).collect();
    wanted.extend(rows.iter().flat_map(ids_of));
    let people: HashMap<i64, Person> = profiles(db, wanted)
        .await?
        .values()
        .map(|u| (u.id, person(u)))
        .collect();
    Ok(rows
        .iter()
        .map(|row| GroupChangeItem {
            kind: row.kind.clone(),
            by: row.by_id.and_then(|id| people.get(&id).cloned()),
            users: ids_of(row)
                .iter()
                .filter_map(|id| people.get(id).cloned())
                .collect(),
            title: row.title.clone(),
            time: format_time(&row.created_at),
        })
        .collect())
}
