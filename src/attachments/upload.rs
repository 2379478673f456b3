//! Receiving an upload: the body goes to the store part by part as it
//! arrives (never whole in memory), bounded by `MAX_ATTACHMENT_BYTES` and
//! the uploader's quota; what the file is comes from its first bytes.

use std::io::Cursor;
use std::time::Duration;

use bytes::Bytes;
use entity::attachment;
use futures_util::{Stream, StreamExt};
use object_store::{ObjectStoreExt, WriteMultipart};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseConnection, DbErr, EntityTrait,
    QueryFilter, QuerySelect,
};

use super::spool::{Spool, SpoolError};
use super::{Attachments, Writing, DIRECTORY_PART_BYTES};
use crate::chat::protocol::UserId;

/// How much of the start of a file is kept to tell what it is and, for
/// an image, its size (a JPEG's EXIF block can push its size this far).
const HEAD_BYTES: usize = 128 * 1024;

/// The raster formats browsers show, which are served inline and previewed;
/// only ever when the file's own bytes say so.
const IMAGES: &[(&str, image::ImageFormat)] = &[
    ("image/png", image::ImageFormat::Png),
    ("image/jpeg", image::ImageFormat::Jpeg),
    ("image/gif", image::ImageFormat::Gif),
    ("image/webp", image::ImageFormat::WebP),
];

/// An upload as the request announces it.
pub struct Upload {
    /// The name the client gave (`?name=`).
    pub name: String,
    /// The `Content-Type` the client gave; kept only where the bytes do not
    /// say otherwise, and never for what is shown inline.
    pub declared_type: Option<String>,
    /// `Content-Length`, when given.
    pub length: Option<u64>,
}

/// Why an upload was not stored.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("the file is larger than {0} bytes")]
    TooLarge(u64),
    #[error("the file is empty")]
    Empty,
    #[error("{0}")]
    Quota(String),
    #[error("the upload stalled")]
    Timeout,
    #[error("the upload was interrupted: {0}")]
    Body(String),
    #[error("the upload was removed before it was complete")]
    Removed,
    #[error("storing the upload: {0}")]
    Store(#[from] object_store::Error),
    #[error("recording the upload: {0}")]
    Database(#[from] DbErr),
    #[error("spooling the upload: {0}")]
    Spool(#[from] SpoolError),
}

/// Where an upload's chunks go as they arrive.
trait Sink {
    async fn take(&mut self, chunk: Bytes) -> Result<(), UploadError>;
}

impl Sink for WriteMultipart {
    /// At most one part being written while the next fills. The chunk is
    /// copied (in 8 KiB blocks): kept as it came, it would hold on to the
    /// whole read buffer it was cut from.
    async fn take(&mut self, chunk: Bytes) -> Result<(), UploadError> {
        self.wait_for_capacity(1).await?;
        self.write(&chunk);
        Ok(())
    }
}

impl Sink for Spool {
    async fn take(&mut self, chunk: Bytes) -> Result<(), UploadError> {
        self.append(&chunk).await.map_err(SpoolError::from)?;
        Ok(())
    }
}

/// What the body's stream gave: its size and first bytes.
struct Received {
    size: u64,
    head: Vec<u8>,
}

impl Attachments {
    /// Stores `body` as a new upload of `uploader`'s: its row is written
    /// first (`uploading`, so it counts against the quota while it
    /// streams), the bytes go to the store in parts, and the row becomes
    /// `ready` with what the bytes say the file is. On any failure the row
    /// and whatever was written are removed.
    pub async fn receive<S, E>(
        &self,
        db: &DatabaseConnection,
        uploader: UserId,
        upload: Upload,
        body: S,
        stall: Duration,
    ) -> Result<attachment::Model, UploadError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let max = self.settings.max_attachment_bytes;
        if upload.length.is_some_and(|n| n > max) {
            return Err(UploadError::TooLarge(max));
        }
        if upload.length == Some(0) {
            return Err(UploadError::Empty);
        }
        self.check_quota(db, uploader, upload.length.unwrap_or(0))
            .await?;
        let row = attachment::ActiveModel {
            id: Set(uuid::Uuid::new_v4()),
            uploader_id: Set(uploader.0),
            name: Set(file_name(&upload.name)),
            content_type: Set("application/octet-stream".into()),
            size: Set(upload.length.unwrap_or(0) as i64),
            width: Set(None),
            height: Set(None),
            state: Set(attachment::UPLOADING.into()),
            message_id: Set(None),
            chat_id: Set(None),
            position: Set(0),
            created_at: Set(chrono::Utc::now()),
        }
        .insert(db)
        .await?;
        let id = row.id;
        let stored = match self.write(id, body, stall).await {
            Ok(received) => self.complete(db, row, upload, received).await,
            Err(e) => Err(e),
        };
        if stored.is_err() {
            let _ = self.delete_objects(id).await;
            let _ = attachment::Entity::delete_by_id(id).exec(db).await;
        }
        stored
    }

    /// Refuses an upload of `adding` more bytes once the uploader's unsent
    /// files reach `ATTACHMENT_QUOTA_FILES` or would pass
    /// `ATTACHMENT_QUOTA_BYTES`.
    async fn check_quota(
        &self,
        db: &DatabaseConnection,
        uploader: UserId,
        adding: u64,
    ) -> Result<(), UploadError> {
        let (files, bytes) = (
            self.settings.attachment_quota_files,
            self.settings.attachment_quota_bytes,
        );
        let sizes: Vec<i64> = attachment::Entity::find()
            .select_only()
            .column(attachment::Column::Size)
            .filter(attachment::Column::UploaderId.eq(uploader.0))
            .filter(attachment::Column::MessageId.is_null())
            .filter(attachment::Column::State.ne(attachment::REMOVED))
            .limit(files + 1)
            .into_tuple()
            .all(db)
            .await?;
        let held: u64 = sizes.iter().map(|s| *s as u64).sum();
        if sizes.len() as u64 >= files {
            return Err(UploadError::Quota(format!(
                "you have {files} files uploaded and not sent: send them, or wait a day for them \
                 to expire"
            )));
        }
        if held + adding > bytes {
            return Err(UploadError::Quota(format!(
                "your uploads not sent yet would pass {bytes} bytes: send them, or wait a day \
                 for them to expire"
            )));
        }
        Ok(())
    }

    /// Streams the body to the store: straight in small parts to a
    /// directory, through a spool file to a bucket (`spool.rs`).
    async fn write<S, E>(
        &self,
        id: uuid::Uuid,
        mut body: S,
        stall: Duration,
    ) -> Result<Received, UploadError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let object = Self::object(id);
        match &self.writing {
            Writing::Direct => {
                let upload = self.store.put_multipart(&object).await?;
                let mut writer = WriteMultipart::new_with_chunk_size(upload, DIRECTORY_PART_BYTES);
                match self.pump(&mut body, stall, &mut writer).await {
                    Ok(received) => {
                        writer.finish().await?;
                        Ok(received)
                    }
                    Err(e) => {
                        let _ = writer.abort().await;
                        Err(e)
                    }
                }
            }
            Writing::Spooled { dir, parts } => {
                let mut spool = Spool::create(dir).await?;
                let received = self.pump(&mut body, stall, &mut spool).await?;
                spool.send(self.store.as_ref(), &object, parts).await?;
                Ok(received)
            }
        }
    }

    /// Reads the body into `sink` chunk by chunk, within the size limit and
    /// the stall timeout, keeping its first bytes; an empty body is refused.
    async fn pump<S, E>(
        &self,
        body: &mut S,
        stall: Duration,
        sink: &mut impl Sink,
    ) -> Result<Received, UploadError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let max = self.settings.max_attachment_bytes;
        let mut received = Received {
            size: 0,
            head: Vec::new(),
        };
        loop {
            let chunk = match tokio::time::timeout(stall, body.next()).await {
                Err(_) => return Err(UploadError::Timeout),
                Ok(None) if received.size == 0 => return Err(UploadError::Empty),
                Ok(None) => return Ok(received),
                Ok(Some(Err(e))) => return Err(UploadError::Body(e.to_string())),
                Ok(Some(Ok(chunk))) => chunk,
            };
            received.size += chunk.len() as u64;
            if received.size > max {
                return Err(UploadError::TooLarge(max));
            }
            if received.head.capacity() == 0 {
                received.head.reserve_exact(HEAD_BYTES);
            }
            let room = HEAD_BYTES.saturating_sub(received.head.len());
            received
                .head
                .extend_from_slice(&chunk[..room.min(chunk.len())]);
            sink.take(chunk).await?;
        }
    }

    /// Marks the upload `ready`, with its size and what its first bytes
    /// say it is; `Removed` if the sweep took it meanwhile.
    async fn complete(
        &self,
        db: &DatabaseConnection,
        row: attachment::Model,
        upload: Upload,
        received: Received,
    ) -> Result<attachment::Model, UploadError> {
        let content_type = content_type(&received.head, upload.declared_type.as_deref());
        let size = image_size(&received.head, &content_type)
            .filter(|(w, h)| u64::from(*w) * u64::from(*h) <= self.settings.max_preview_pixels);
        let (width, height) = match size {
            Some((w, h)) => (i32::try_from(w).ok(), i32::try_from(h).ok()),
            None => (None, None),
        };
        let done = attachment::Entity::update_many()
            .col_expr(attachment::Column::State, Expr::value(attachment::READY))
            .col_expr(attachment::Column::Size, Expr::value(received.size as i64))
            .col_expr(
                attachment::Column::ContentType,
                Expr::value(content_type.clone()),
            )
            .col_expr(attachment::Column::Width, Expr::value(width))
            .col_expr(attachment::Column::Height, Expr::value(height))
            .filter(attachment::Column::Id.eq(row.id))
            .filter(attachment::Column::State.eq(attachment::UPLOADING))
            .exec(db)
            .await?;
        if done.rows_affected != 1 {
            return Err(UploadError::Removed);
        }
        Ok(attachment::Model {
            state: attachment::READY.into(),
            size: received.size as i64,
            content_type,
            width,
            height,
            ..row
        })
    }
}

/// Whether files of this (stored) type are images shown inline.
pub(super) fn image_format(content_type: &str) -> Option<image::ImageFormat> {
    IMAGES
        .iter()
        .find(|(name, _)| *name == content_type)
        .map(|(_, format)| *format)
}

/// What a file is: what its first bytes say; else the type its uploader
/// gave, unless that is one shown inline (those the bytes must confirm);
/// else `application/octet-stream`.
fn content_type(head: &[u8], declared: Option<&str>) -> String {
    if let Some(kind) = infer::get(head) {
        return kind.mime_type().to_string();
    }
    declared
        .and_then(media_type)
        .filter(|t| image_format(t).is_none())
        .unwrap_or_else(|| "application/octet-stream".into())
}

/// A `Content-Type` reduced to its `type/subtype`, if it is one.
fn media_type(value: &str) -> Option<String> {
    let essence = value.split(';').next()?.trim().to_ascii_lowercase();
    let (kind, sub) = essence.split_once('/')?;
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    (essence.len() <= 127 && token(kind) && token(sub)).then_some(essence)
}

/// An image's width and height, read from its header alone.
fn image_size(head: &[u8], content_type: &str) -> Option<(u32, u32)> {
    let format = image_format(content_type)?;
    image::ImageReader::with_format(Cursor::new(head), format)
        .into_dimensions()
        .ok()
}

/// A file name as stored and shown: the last part of a path, without
/// control characters, at most 255 characters; "file" if nothing is left.
fn file_name(given: &str) -> String {
    let base = given.rsplit(['/', '\\']).next().unwrap_or("");
    let clean: String = base.chars().filter(|c| !c.is_control()).take(255).collect();
    match clean.trim() {
        "" | "." | ".." => "file".into(),
        name => name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_lose_paths_and_control_characters() {
        assert_eq!(file_name("../../etc/passwd"), "passwd");
        assert_eq!(file_name("C:\\Users\\ann\\photo.jpg"), "photo.jpg");
        assert_eq!(file_name("a\u{0}b\nc.txt"), "abc.txt");
        assert_eq!(file_name(""), "file");
        assert_eq!(file_name(".."), "file");
        assert_eq!(file_name(&"x".repeat(300)).chars().count(), 255);
    }

    #[test]
    fn the_bytes_decide_what_a_file_is() {
        let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
        assert_eq!(content_type(png, Some("text/plain")), "image/png");
        // An image type the bytes do not confirm is not believed.
        assert_eq!(
            content_type(b"<html>hi</html>", Some("image/png")),
            "text/html"
        );
        assert_eq!(
            content_type(b"no magic here", Some("image/png")),
            "application/octet-stream"
        );
        assert_eq!(
            content_type(b"plain words", Some("text/plain; charset=utf-8")),
            "text/plain"
        );
        assert_eq!(
            content_type(b"plain", Some("not a type")),
            "application/octet-stream"
        );
        assert_eq!(content_type(b"%PDF-1.7\n", None), "application/pdf");
    }
}
