//! Groups' member ids, kept between contact lists. A contact list shows
//! each group's member count and whether any other member is online, so it
//! needs every member's id: a 1,000-member group is 1,000 rows for each of
//! its members' lists, and when a restarted instance's clients all ask at
//! once the same groups are read thousands of times (BENCHMARKS.md "Group
//! rosters kept between contact lists").
//!
//! A roster is kept under its group's *version*: the id of the group's
//! latest recorded change (`group_changes`, C20). Every membership change
//! (create, add, accept, remove, leave) records one in its transaction,
//! under the group's row lock, so the version moves with every change and
//! in commit order, on every instance alike; a roster is used only when
//! the version the contact list just read is the one it was read under.
//! Its members were read after that version, so they are never older than
//! it. A roster also expires after [`ROSTER_LIFETIME`], which bounds how
//! long a membership edited outside the server (by hand, in SQL) shows.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::*;

/// How long a roster is used at most.
pub const ROSTER_LIFETIME: Duration = Duration::from_secs(300);

/// At most this many member ids are kept, over all groups (8 bytes each);
/// past it the least recently read rosters go.
pub const ROSTER_IDS_KEPT: usize = 262_144;

/// A group's version: its latest recorded change's id (`None`: none yet).
pub type RosterVersion = Option<i64>;

/// Rosters by group, shared by every contact list of an instance.
pub struct Rosters {
    kept: Mutex<Kept>,
    capacity: usize,
}

#[derive(Default)]
struct Kept {
    rosters: HashMap<uuid::Uuid, Roster>,
    /// Member ids held over all rosters.
    ids: usize,
    /// Counts uses, to tell the least recently used roster.
    clock: u64,
}

struct Roster {
    version: RosterVersion,
    members: Arc<[UserId]>,
    read_at: Instant,
    /// `Kept::clock` when last read or used.
    used: u64,
}

impl Default for Rosters {
    fn default() -> Self {
        Rosters::with_capacity(ROSTER_IDS_KEPT)
    }
}

impl Rosters {
    /// Keeping at most `capacity` member ids.
    pub fn with_capacity(capacity: usize) -> Self {
        Rosters {
            kept: Mutex::default(),
            capacity,
        }
    }

    /// The members of `group` as of `version`, if kept.
    pub fn get(&self, group: uuid::Uuid, version: RosterVersion) -> Option<Arc<[UserId]>> {
        let mut kept = self.kept.lock().ok()?;
        let Kept { rosters, clock, .. } = &mut *kept;
        let roster = rosters.get_mut(&group)?;
        if roster.version != version || roster.read_at.elapsed() > ROSTER_LIFETIME {
            return None;
        }
        *clock += 1;
        roster.used = *clock;
        Some(roster.members.clone())
    }

    /// Keeps `members`, read after `version` was.
    pub fn put(&self, group: uuid::Uuid, version: RosterVersion, members: Arc<[UserId]>) {
        if members.len() > self.capacity {
            return;
        }
        let Ok(mut kept) = self.kept.lock() else {
            return;
        };
        kept.clock += 1;
        let added = members.len();
        let roster = Roster {
            version,
            members,
            read_at: Instant::now(),
            used: kept.clock,
        };
        if let Some(old) = kept.rosters.insert(group, roster) {
            kept.ids -= old.members.len();
        }
        kept.ids += added;
        if kept.ids > self.capacity {
            kept.shrink_to(self.capacity * 3 / 4);
        }
    }

    /// Member ids held (the `chat_contact_roster_ids` metric).
    pub fn ids_kept(&self) -> usize {
        self.kept.lock().map(|k| k.ids).unwrap_or(0)
    }
}

impl Kept {
    /// Drops the least recently used rosters until at most `ids` are held.
    fn shrink_to(&mut self, ids: usize) {
        let mut by_use: Vec<(u64, uuid::Uuid)> = self
            .rosters
            .iter()
            .map(|(group, r)| (r.used, *group))
            .collect();
        by_use.sort_unstable();
        for (_, group) in by_use {
            if self.ids <= ids {
                break;
            }
            if let Some(gone) = self.rosters.remove(&group) {
                self.ids -= gone.members.len();
            }
        }
    }
}

/// The members of each of `groups` (group, its version), kept ones from
/// `rosters` and the others read in one statement (per `IN_CHUNK`) and kept.
pub(super) async fn group_members(
    db: &DatabaseConnection,
    rosters: &Rosters,
    groups: Vec<(uuid::Uuid, RosterVersion)>,
) -> Result<HashMap<uuid::Uuid, Arc<[UserId]>>, DbErr> {
    let mut found = HashMap::with_capacity(groups.len());
    let mut missing = Vec::new();
    for (group, version) in groups {
        match rosters.get(group, version) {
            Some(members) => {
                found.insert(group, members);
            }
            None => missing.push((group, version)),
        }
    }
    if missing.is_empty() {
        return Ok(found);
    }
    let ids: Vec<uuid::Uuid> = missing.iter().map(|(group, _)| *group).collect();
    let mut read = member_ids(db, &ids).await?;
    for (group, version) in missing {
        let members: Arc<[UserId]> = read.remove(&group).unwrap_or_default().into();
        rosters.put(group, version, members.clone());
        found.insert(group, members);
    }
    Ok(found)
}

/// Every member of each group in `groups`.
async fn member_ids(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: i64) -> Arc<[UserId]> {
        (1..=n).map(UserId).collect()
    }

    #[test]
    fn a_roster_is_used_only_at_its_version() {
        let rosters = Rosters::default();
        let group = uuid::Uuid::new_v4();
        assert!(rosters.get(group, Some(1)).is_none());
        rosters.put(group, Some(1), ids(3));
        assert_eq!(rosters.get(group, Some(1)).as_deref(), Some(&ids(3)[..]));
        assert!(rosters.get(group, Some(2)).is_none(), "changed since");
        assert!(rosters.get(group, None).is_none());
        rosters.put(group, Some(2), ids(2));
        assert_eq!(rosters.ids_kept(), 2, "the old roster replaced");
    }

    #[test]
    fn past_capacity_the_least_recently_used_go() {
        let rosters = Rosters::with_capacity(11);
        let (a, b, c) = (
            uuid::Uuid::new_v4(),
            uuid::Uuid::new_v4(),
            uuid::Uuid::new_v4(),
        );
        rosters.put(a, None, ids(4));
        rosters.put(b, None, ids(4));
        assert!(rosters.get(a, None).is_some(), "a used after b");
        rosters.put(c, None, ids(4));
        assert_eq!(rosters.ids_kept(), 4 + 4, "b went");
        assert!(rosters.get(b, None).is_none());
        assert!(rosters.get(a, None).is_some() && rosters.get(c, None).is_some());
        rosters.put(uuid::Uuid::new_v4(), None, ids(12));
        assert_eq!(rosters.ids_kept(), 8, "larger than the whole: not kept");
    }
}
