//! Rows written straight to a database, for what a test needs in bulk or
//! from before a migration.

use sea_orm::DatabaseConnection;

use super::*;

/// `n` active accounts named `{prefix}{i}`, inserted a thousand to a
/// statement (a statement's values are limited; no password hashing: they
/// never log in); returns their ids in order.
pub async fn insert_users(db: &DatabaseConnection, prefix: &str, n: usize) -> Vec<i64> {
    const PART: usize = 1_000;
    let mut ids = Vec::with_capacity(n);
    for start in (0..n).step_by(PART) {
        let names: Vec<String> = (start..n.min(start + PART))
            .map(|i| format!("{prefix}{i}"))
            .collect();
        ids.extend(insert_named_users(db, names).await);
    }
    ids
}

async fn insert_named_users(db: &DatabaseConnection, names: Vec<String>) -> Vec<i64> {
    use entity::user;
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set};
    let rows = names.iter().map(|name| user::ActiveModel {
        username: Set(name.clone()),
        username_key: Set(user::username_key(name)),
        email: Set(String::new()),
        first_name: Set(name.clone()),
        last_name: Set("Doe".into()),
        password_hash: Set("!".into()),
        is_active: Set(true),
        is_staff: Set(false),
        is_superuser: Set(false),
        token_version: Set(0),
        created_at: Set(chrono::Utc::now()),
        last_login: Set(None),
        ..Default::default()
    });
    user::Entity::insert_many(rows)
        .exec(db)
        .await
        .expect("insert users");
    user::Entity::find()
        .select_only()
        .column(user::Column::Id)
        .filter(user::Column::Username.is_in(names))
        .order_by_asc(user::Column::Id)
        .into_tuple::<i64>()
        .all(db)
        .await
        .expect("read users back")
}

/// How many migrations come before the one named `name`: what
/// `Migrator::up(db, Some(n))` applies to stand a database just before it.
/// A database migrated up to (not including) the migration `name`, and one
/// account in it, "old0": (the database, a connection to it, its user id).
pub async fn database_before(
    backend: &Backend,
    name: &str,
) -> (TestDatabase, sea_orm::DatabaseConnection, i64) {
    use migration::MigratorTrait;
    let database = TestDatabase::create(backend).await;
    let db = sea_orm::Database::connect(database.url.as_str())
        .await
        .expect("the test database");
    migration::Migrator::up(&db, Some(migrations_before(name)))
        .await
        .expect("the migrations before");
    // Inserted with the columns every schema has (not `create_user`,
    // which reads back today's).
    let user = insert_users(&db, "old", 1).await[0];
    (database, db, user)
}

pub fn migrations_before(name: &str) -> u32 {
    use migration::MigratorTrait;
    migration::Migrator::migrations()
        .iter()
        .position(|m| m.name() == name)
        .unwrap_or_else(|| panic!("no migration named {name}")) as u32
}

/// How many migrations `Migrator::down` undoes to undo `name`: it and every
/// later one.
pub fn migrations_from(name: &str) -> u32 {
    use migration::MigratorTrait;
    migration::Migrator::migrations().len() as u32 - migrations_before(name)
}

/// Makes each of `writers` have written to `to` in their direct
/// conversation (one stored message each, written straight to the
/// database): what lets `to` add them to groups without an invitation
/// (PROTOCOL.md C9). Conversations they do not have yet are made, in a few
/// statements however many writers there are.
pub async fn have_written(db: &DatabaseConnection, writers: &[i64], to: i64) {
    use entity::{chat, chat_member, message};
    // A statement's values are limited (SQLite: 32,766): many writers go
    // in parts.
    const PART: usize = 1_000;
    if writers.len() > PART {
        for part in writers.chunks(PART) {
            Box::pin(have_written(db, part, to)).await;
        }
        return;
    }
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, Set};
    let now = chrono::Utc::now();
    let keys: Vec<String> = writers.iter().map(|w| chat::direct_key(*w, to)).collect();
    let existing = chat::Entity::find()
        .filter(chat::Column::DirectKey.is_in(keys))
        .all(db)
        .await
        .expect("read direct conversations");
    let mut chats = Vec::new();
    for writer in writers {
        let key = chat::direct_key(*writer, to);
        match existing
            .iter()
            .find(|c| c.direct_key.as_deref() == Some(&key))
        {
            Some(found) => {
                chat::Entity::update(chat::ActiveModel {
                    id: Set(found.id),
                    seq: Set(found.seq + 1),
                    ..Default::default()
                })
                .exec(db)
                .await
                .expect("bump the conversation's seq");
                chats.push((*writer, found.id, found.seq + 1));
            }
            None => chats.push((*writer, uuid::Uuid::new_v4(), 1)),
        }
    }
    let new: Vec<&(i64, uuid::Uuid, i64)> = chats.iter().filter(|(_, _, seq)| *seq == 1).collect();
    if !new.is_empty() {
        chat::Entity::insert_many(new.iter().map(|(w, id, _)| chat::ActiveModel {
            id: Set(*id),
            kind: Set(chat::ChatKind::Direct),
            title: Set(None),
            direct_key: Set(Some(chat::direct_key(*w, to))),
            created_at: Set(now),
            seq: Set(1),
        }))
        .exec(db)
        .await
        .expect("direct conversations");
        let members = new.iter().flat_map(|(w, id, _)| {
            [*w, to].map(|user| chat_member::ActiveModel {
                chat_id: Set(*id),
                user_id: Set(user),
                joined_at: Set(now),
                last_read_message_id: Set(None),
                role: Set(chat_member::Role::Member),
                muted: Set(false),
            })
        });
        chat_member::Entity::insert_many(members)
            .exec(db)
            .await
            .expect("their members");
    }
    message::Entity::insert_many(chats.iter().map(|(w, id, seq)| message::ActiveModel {
        chat_id: Set(*id),
        sender_id: Set(Some(*w)),
        content: Set("hello".into()),
        client_id: Set(None),
        created_at: Set(now),
        seq: Set(*seq),
        ..Default::default()
    }))
    .exec(db)
    .await
    .expect("a message from each writer");
}
