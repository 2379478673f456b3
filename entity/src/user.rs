//! `users`: accounts that log in and chat.

use sea_orm::entity::prelude::*;
use unicode_normalization::UnicodeNormalization;

/// One account. `token_version` is bumped to revoke every token issued before.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "users")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(unique)]
    pub username: String,
    /// `username_key(username)`: unique, so no two accounts differ only in
    /// case, width or look-alike letters.
    #[sea_orm(unique)]
    pub username_key: String,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    /// argon2id PHC string.
    pub password_hash: String,
    pub is_active: bool,
    pub is_staff: bool,
    pub is_superuser: bool,
    pub token_version: i32,
    /// When `token_version` or `is_active` last revoked tokens, in seconds
    /// since the epoch by the writer's clock (0: never, or before this was
    /// recorded); the revocation sweep reads the recent ones.
    pub tokens_changed_at: i64,
    pub created_at: DateTimeUtc,
    pub last_login: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(has_many = "super::chat_member::Entity")]
    ChatMember,
}

impl Related<super::chat_member::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::ChatMember.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}

impl Model {
    /// "First Last", the name the old backend showed for a contact.
    pub fn display_name(&self) -> String {
        full_name(&self.first_name, &self.last_name)
    }
}

/// What others see of an account: its id and names. Reads that show a
/// person to someone else (a contact, a group's members, a blocked list,
/// a notification's sender) select these columns only, so the account's
/// secrets (password hash, email, token version) never leave the
/// database for them.
#[derive(Clone, Debug, PartialEq, Eq, sea_orm::FromQueryResult)]
pub struct Profile {
    pub id: i64,
    pub username: String,
    pub first_name: String,
    pub last_name: String,
}

impl Profile {
    /// The columns a `Profile` is read from, under their own names.
    pub const COLUMNS: [Column; 4] = [
        Column::Id,
        Column::Username,
        Column::FirstName,
        Column::LastName,
    ];

    /// "First Last", as [`Model::display_name`].
    pub fn display_name(&self) -> String {
        full_name(&self.first_name, &self.last_name)
    }
}

fn full_name(first: &str, last: &str) -> String {
    format!("{first} {last}")
}

/// A username as it is stored: NFKC-normalised, so a fullwidth `ｂｏｂ` is `bob`.
pub fn normalize_username(raw: &str) -> String {
    raw.trim().nfkc().collect()
}

/// The key that makes usernames unique: the UTS #39 confusable skeleton of
/// the case-folded NFKC form, folded again (the skeleton maps `0` to `O`),
/// with `i` as `l`: a capital `I` looks like `l`, and case folding has made
/// it an `i` before the skeleton could see it. `Bob`, `ｂｏｂ`, `bоb`
/// (Cyrillic o) and `b0b` all have the key of `bob`; `aIice` and `ALICE`
/// that of `alice`. (So `iris` and `lris` are one name too: a registration
/// refused, never a login that reaches the wrong account.)
pub fn username_key(username: &str) -> String {
    let folded = normalize_username(username).to_lowercase();
    unicode_security::skeleton(&folded)
        .collect::<String>()
        .to_lowercase()
        .replace('i', "l")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confusable_usernames_share_a_key() {
        let bob = username_key("bob");
        for other in [
            "Bob",
            "BOB",
            "\u{ff42}\u{ff4f}\u{ff42}",
            "b\u{043e}b",
            " bob ",
        ] {
            assert_eq!(username_key(other), bob, "{other}");
        }
        assert_ne!(username_key("bobby"), bob);
        assert_eq!(username_key("b0b"), bob);
        assert_eq!(username_key("aIice"), username_key("alice"));
        assert_eq!(username_key("ALICE"), username_key("alice"));
        assert_eq!(username_key("iris"), username_key("lris"));
        assert_eq!(normalize_username("\u{ff42}\u{ff4f}\u{ff42}"), "bob");
    }
}
