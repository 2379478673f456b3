//! `attachments`: a file uploaded for a message (PROTOCOL.md B9). The bytes
//! live in the object store under the id; this row says whose they are,
//! what they are, and where they were sent.

use sea_orm::entity::prelude::*;

/// Being received: not yet usable, and counted in its uploader's quota.
pub const UPLOADING: &str = "uploading";
/// Stored whole: can be sent (no `message_id` yet) or was sent.
pub const READY: &str = "ready";
/// Reserved for a message inside the writer's transaction, which sets it
/// back to `READY` with the message: never seen outside that transaction.
pub const SENDING: &str = "sending";
/// Its message was deleted, or it was never sent in time: the sweep
/// deletes the object and then the row; nobody can read it meanwhile.
pub const REMOVED: &str = "removed";

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "attachments")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub uploader_id: i64,
    /// The file's name as the uploader gave it (no path), at most 255 characters.
    pub name: String,
    /// What the first bytes say it is (or the uploader's type, for formats
    /// the server does not recognise and never shows inline).
    pub content_type: String,
    pub size: i64,
    /// Pixels, for images the server can preview.
    pub width: Option<i32>,
    pub height: Option<i32>,
    /// `UPLOADING`, `READY` or `REMOVED` (`SENDING` inside a transaction).
    pub state: String,
    /// The message it was sent in; null until sent.
    pub message_id: Option<i64>,
    /// That message's conversation: its current members may read the file.
    pub chat_id: Option<Uuid>,
    /// Its place among its message's attachments, from 0.
    pub position: i32,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
