//! Who is in what, in `chat-bench mix`: users with one or two sessions,
//! about ten direct conversations and three groups each, group sizes drawn
//! from a long-tailed law between 3 and 1,000 members. `mix-fill` prints
//! the SQL that loads it into a freshly migrated database; `mix` rebuilds
//! the same population from the same seed, so it knows every membership
//! without asking the server.

use std::collections::HashSet;
use std::io::Write;

use crate::search::{at, hex, rows, uuid_text, Dialect, Rng, FIRST_USER_ID};

/// Direct conversations per user, on average.
const DIRECTS_PER_USER: usize = 10;
/// Groups per user, on average.
const GROUPS_PER_USER: usize = 3;
/// The share of users with a second session (a phone and a laptop).
const TWO_SESSIONS: f64 = 0.3;
/// The smallest and the largest group.
const SMALLEST_GROUP: f64 = 3.0;
const LARGEST_GROUP: usize = 1_000;
/// The Pareto law's shape: P(size > s) = (3 / s)^ALPHA. With 1.1, one
/// group in fifty has more than 100 members and one in six hundred reaches
/// 1,000; the mean is about 16.
const ALPHA: f64 = 1.1;

/// Every bench user's password hash: argon2id of `BENCH_PASSWORD` at the
/// smallest cost (8 KiB, one pass), so that ten thousand logins take
/// seconds, not minutes. The server verifies a hash with the parameters it
/// carries; login cost is not what `mix` measures.
const CHEAP_HASH: &str =
    "$argon2id$v=19$m=8,t=1,p=1$YmVuY2hzYWx0YmVuY2gxNg$r/w+Uzrnh2FFugLMgtaJNFfayeMVQzDJq9syf3DbLQI";

/// A conversation of the population.
pub(crate) struct Conversation {
    pub id: [u8; 16],
    /// Indexes of the users (0-based); a group's first is its owner.
    pub members: Vec<u32>,
    pub group: bool,
}

impl Conversation {
    /// The latency bucket this conversation's messages are reported in.
    pub fn bucket(&self) -> usize {
        match (self.group, self.members.len()) {
            (false, _) => 0,
            (true, ..=9) => 1,
            (true, ..=99) => 2,
            (true, _) => 3,
        }
    }
}

/// The report's names of [`Conversation::bucket`]'s values.
pub(crate) const BUCKETS: [&str; 4] = ["direct", "group 3-9", "group 10-99", "group 100-1000"];

pub(crate) struct Population {
    pub conversations: Vec<Conversation>,
    /// Each user's conversations (indexes into `conversations`).
    pub of_user: Vec<Vec<u32>>,
    /// Each user's sessions: 1 or 2.
    pub sessions: Vec<u8>,
}

impl Population {
    /// The population of `users` users drawn from `seed`: the same
    /// arguments, the same population.
    pub fn new(users: usize, seed: u64) -> Self {
        let mut rng = Rng(seed);
        let sessions = (0..users)
            .map(|_| if rng.unit() < TWO_SESSIONS { 2 } else { 1 })
            .collect();
        let mut conversations = Vec::new();
        // Direct conversations: random pairs, each pair once.
        let wanted = users * DIRECTS_PER_USER / 2;
        let possible = users * users.saturating_sub(1) / 2;
        let mut pairs = HashSet::new();
        while pairs.len() < wanted.min(possible) {
            let (a, b) = (rng.below(users) as u32, rng.below(users) as u32);
            if a != b && pairs.insert((a.min(b), a.max(b))) {
                conversations.push(Conversation {
                    id: rng.uuid(),
                    members: vec![a, b],
                    group: false,
                });
            }
        }
        // Groups, until their memberships reach GROUPS_PER_USER per user.
        let mut memberships = 0;
        while users >= 3 && memberships < users * GROUPS_PER_USER {
            let tail = SMALLEST_GROUP * (1.0 - rng.unit()).powf(-1.0 / ALPHA);
            let size = (tail as usize).clamp(3, LARGEST_GROUP.min(users));
            let mut members = Vec::with_capacity(size);
            let mut chosen = HashSet::with_capacity(size);
            while members.len() < size {
                let u = rng.below(users) as u32;
                if chosen.insert(u) {
                    members.push(u);
                }
            }
            memberships += size;
            conversations.push(Conversation {
                id: rng.uuid(),
                members,
                group: true,
            });
        }
        let mut of_user = vec![Vec::new(); users];
        for (i, c) in conversations.iter().enumerate() {
            for &u in &c.members {
                of_user[u as usize].push(i as u32);
            }
        }
        Population {
            conversations,
            of_user,
            sessions,
        }
    }

    pub fn username(user: u32) -> String {
        format!("m{}", FIRST_USER_ID + i64::from(user))
    }
}

/// Prints the SQL that loads `users` users of seed `seed` into a freshly
/// migrated database (no accounts yet): the accounts, the conversations
/// (empty, `seq` 0) and the memberships, in one transaction.
pub fn fill_population(
    users: usize,
    seed: u64,
    dialect: Dialect,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let population = Population::new(users, seed);
    let time = at(dialect);
    let uuid = |id: &[u8; 16]| match dialect {
        Dialect::Sqlite | Dialect::Mysql => format!("X'{}'", hex(id)),
        Dialect::Postgres => format!("'{}'", uuid_text(id)),
    };
    writeln!(out, "BEGIN;")?;
    rows(
        &mut *out,
        "INSERT INTO users (id, username, username_key, email, first_name, last_name, \
         password_hash, is_active, is_staff, is_superuser, token_version, created_at) VALUES",
        &mut (0..users as u32).map(|u| {
            let name = Population::username(u);
            format!(
                "({}, '{name}', '{name}', '', 'Mix', '{u}', '{CHEAP_HASH}', true, false, false, 0, {time})",
                FIRST_USER_ID + i64::from(u)
            )
        }),
    )?;
    rows(
        &mut *out,
        "INSERT INTO chats (id, kind, title, direct_key, created_at, seq) VALUES",
        &mut population.conversations.iter().enumerate().map(|(i, c)| {
            let (kind, title, key) = if c.group {
                ("group", format!("'group {i}'"), "NULL".to_string())
            } else {
                let id = |u: u32| FIRST_USER_ID + i64::from(u);
                let (a, b) = (
                    c.members[0].min(c.members[1]),
                    c.members[0].max(c.members[1]),
                );
                (
                    "direct",
                    "NULL".to_string(),
                    format!("'{}:{}'", id(a), id(b)),
                )
            };
            format!("({}, '{kind}', {title}, {key}, {time}, 0)", uuid(&c.id))
        }),
    )?;
    rows(
        &mut *out,
        "INSERT INTO chat_members (chat_id, user_id, joined_at, role) VALUES",
        &mut population.conversations.iter().flat_map(|c| {
            c.members.iter().enumerate().map(move |(i, &u)| {
                let role = if c.group && i == 0 { "owner" } else { "member" };
                format!(
                    "({}, {}, {time}, '{role}')",
                    uuid(&c.id),
                    FIRST_USER_ID + i64::from(u)
                )
            })
        }),
    )?;
    if let Dialect::Postgres = dialect {
        writeln!(
            out,
            "SELECT setval(pg_get_serial_sequence('users', 'id'), (SELECT max(id) FROM users));"
        )?;
    }
    writeln!(out, "COMMIT;")?;
    if let Dialect::Postgres = dialect {
        writeln!(out, "VACUUM ANALYZE;")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_population_has_the_shape_the_model_says() {
        let p = Population::new(10_000, 1);
        let directs = p.conversations.iter().filter(|c| !c.group).count();
        assert_eq!(directs, 50_000);
        let groups: Vec<usize> = p
            .conversations
            .iter()
            .filter(|c| c.group)
            .map(|c| c.members.len())
            .collect();
        let memberships: usize = groups.iter().sum();
        assert!((30_000..31_000).contains(&memberships), "{memberships}");
        assert!(groups.iter().all(|&s| (3..=1_000).contains(&s)));
        assert!(groups.iter().filter(|&&s| s >= 100).count() >= 10);
        let two = p.sessions.iter().filter(|&&s| s == 2).count();
        assert!((2_700..3_300).contains(&two), "{two}");
        // The same seed, the same population.
        let again = Population::new(10_000, 1);
        assert_eq!(again.conversations.len(), p.conversations.len());
        assert_eq!(again.conversations[7].id, p.conversations[7].id);
    }
}
