//! Reading files back: who may (the uploader, and the current members of
//! the conversation a file was sent in), byte ranges, and thumbnails made
//! once, from a bounded number of pixels, and kept beside the file.

use std::io::Cursor;
use std::ops::Range;

use bytes::Bytes;
use entity::{attachment, chat_member};
use object_store::{GetOptions, GetRange, GetResult, ObjectStore, ObjectStoreExt, PutPayload};
use sea_orm::{ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QuerySelect};

use super::upload::image_format;
use super::Attachments;
use crate::chat::protocol::UserId;

/// Files remembered per instance as failing to decode.
const UNDECODABLE_KEPT: usize = 10_000;

/// Longest side of a thumbnail, in pixels.
pub const THUMBNAIL_SIDE: u32 = 320;

/// A `Range: bytes=…` request (RFC 9110 §14.1.2), one range only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `first-` or `first-last` (inclusive).
    From { first: u64, last: Option<u64> },
    /// `-n`: the last `n` bytes.
    Suffix(u64),
}

impl ByteRange {
    /// Parses a `Range` header; `None` for anything but one byte range
    /// (several ranges, other units: the whole file is served, as RFC 9110
    /// allows).
    pub fn parse(header: &str) -> Option<ByteRange> {
        let spec = header.trim().strip_prefix("bytes=")?.trim();
        if spec.contains(',') {
            return None;
        }
        let (first, last) = spec.split_once('-')?;
        let number = |s: &str| s.trim().parse::<u64>().ok();
        match (first.trim().is_empty(), last.trim().is_empty()) {
            (true, false) => Some(ByteRange::Suffix(number(last)?)),
            (false, true) => Some(ByteRange::From {
                first: number(first)?,
                last: None,
            }),
            (false, false) => {
                let (first, last) = (number(first)?, number(last)?);
                (first <= last).then_some(ByteRange::From {
                    first,
                    last: Some(last),
                })
            }
            (true, true) => None,
        }
    }

    /// The bytes it names of a file of `size` bytes; `None` when it names
    /// none of them (416).
    pub fn resolve(self, size: u64) -> Option<Range<u64>> {
        match self {
            ByteRange::From { first, .. } if first >= size => None,
            ByteRange::From { first, last } => {
                Some(first..last.map_or(size, |l| l.saturating_add(1).min(size)))
            }
            ByteRange::Suffix(0) => None,
            ByteRange::Suffix(n) => Some(size.saturating_sub(n)..size),
        }
    }
}

/// A file opened for reading: its bytes (or the range asked for).
pub struct Opened {
    pub result: GetResult,
}

/// A thumbnail: its bytes and type.
pub struct Thumbnail {
    pub bytes: Bytes,
    pub content_type: &'static str,
}

/// Why there is no thumbnail.
#[derive(Debug, thiserror::Error)]
pub enum ThumbnailError {
    /// Not an image the server previews (or too large to decode).
    #[error("no preview for this file")]
    NoPreview,
    #[error("reading or storing: {0}")]
    Store(#[from] object_store::Error),
    #[error("decoding the image: {0}")]
    Image(#[from] image::ImageError),
    #[error("the thumbnail task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl Attachments {
    /// The file `id` if `viewer` may read it: their own upload, or one sent
    /// in a conversation they are a member of now. Anything else, removed
    /// files and files still arriving included, is `None` (a 404, the same
    /// as a file that never existed).
    pub async fn readable(
        &self,
        db: &DatabaseConnection,
        viewer: UserId,
        id: uuid::Uuid,
    ) -> Result<Option<attachment::Model>, DbErr> {
        let Some(row) = attachment::Entity::find_by_id(id)
            .filter(attachment::Column::State.eq(attachment::READY))
            .one(db)
            .await?
        else {
            return Ok(None);
        };
        if row.uploader_id == viewer.0 {
            return Ok(Some(row));
        }
        let Some(chat) = row.chat_id else {
            return Ok(None);
        };
        let member = chat_member::Entity::find()
            .select_only()
            .column(chat_member::Column::UserId)
            .filter(chat_member::Column::ChatId.eq(chat))
            .filter(chat_member::Column::UserId.eq(viewer.0))
            .into_tuple::<i64>()
            .one(db)
            .await?;
        Ok(member.map(|_| row))
    }

    /// Whether decoding this file failed before: it is not decoded again
    /// (a crafted file could make every request decode it up to its bound).
    fn undecodable(&self, id: uuid::Uuid) -> bool {
        self.undecodable.lock().is_ok_and(|ids| ids.contains(&id))
    }

    fn remember_undecodable(&self, id: uuid::Uuid) {
        if let Ok(mut ids) = self.undecodable.lock() {
            // Bounded: past the bound it starts over (a file forgotten is
            // only decoded once more).
            if ids.len() >= UNDECODABLE_KEPT {
                ids.clear();
            }
            ids.insert(id);
        }
    }

    /// Opens a file's bytes, or the `range` of them.
    pub async fn read(
        &self,
        row: &attachment::Model,
        range: Option<Range<u64>>,
    ) -> Result<Opened, object_store::Error> {
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..GetOptions::default()
        };
        let result = self.store.get_opts(&Self::object(row.id), options).await?;
        Ok(Opened { result })
    }

    /// A file's thumbnail: made on first request (at most
    /// `THUMBNAILS_AT_ONCE` at a time per instance) and kept in the store.
    pub async fn thumbnail(&self, row: &attachment::Model) -> Result<Thumbnail, ThumbnailError> {
        let format = image_format(&row.content_type).ok_or(ThumbnailError::NoPreview)?;
        let (Some(width), Some(height)) = (row.width, row.height) else {
            return Err(ThumbnailError::NoPreview);
        };
        let content_type = match format {
            image::ImageFormat::Jpeg => "image/jpeg",
            _ => "image/png",
        };
        let path = Self::thumbnail_object(row.id);
        match self.store.get(&path).await {
            Ok(made) => {
                return Ok(Thumbnail {
                    bytes: made.bytes().await?,
                    content_type,
                })
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        if self.undecodable(row.id) {
            return Err(ThumbnailError::NoPreview);
        }
        let _permit = self
            .thumbnails
            .acquire()
            .await
            .map_err(|_| ThumbnailError::NoPreview)?;
        let source = self.store.get(&Self::object(row.id)).await?.bytes().await?;
        let pixels = u64::from(width.unsigned_abs()) * u64::from(height.unsigned_abs());
        let made =
            tokio::task::spawn_blocking(move || make_thumbnail(&source, format, pixels)).await?;
        if let Err(ThumbnailError::Image(_)) = &made {
            self.remember_undecodable(row.id);
        }
        let bytes = made?;
        self.store
            .put(&path, PutPayload::from_bytes(bytes.clone()))
            .await?;
        Ok(Thumbnail {
            bytes,
            content_type,
        })
    }
}

/// Decodes an image of (at most) `pixels` pixels, turns it upright by its
/// EXIF orientation, scales it to fit `THUMBNAIL_SIDE` and encodes it:
/// JPEG from a JPEG, PNG from the formats that may be transparent. The
/// decoder's limits refuse an image whose header lied about its size.
fn make_thumbnail(
    source: &[u8],
    format: image::ImageFormat,
    pixels: u64,
) -> Result<Bytes, ThumbnailError> {
    use image::ImageDecoder;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(pixels.saturating_mul(4).saturating_add(16 * 1024 * 1024));
    let mut reader = image::ImageReader::with_format(Cursor::new(source), format);
    reader.limits(limits);
    let mut decoder = reader.into_decoder()?;
    let orientation = decoder.orientation()?;
    let (w, h) = decoder.dimensions();
    if u64::from(w) * u64::from(h) > pixels {
        return Err(ThumbnailError::NoPreview);
    }
    let mut picture = image::DynamicImage::from_decoder(decoder)?;
    picture.apply_orientation(orientation);
    if picture.width() > THUMBNAIL_SIDE || picture.height() > THUMBNAIL_SIDE {
        picture = picture.thumbnail(THUMBNAIL_SIDE, THUMBNAIL_SIDE);
    }
    let mut out = Cursor::new(Vec::new());
    match format {
        image::ImageFormat::Jpeg => {
            let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80);
            picture.to_rgb8().write_with_encoder(encoder)?;
        }
        _ => picture.write_to(&mut out, image::ImageFormat::Png)?,
    }
    Ok(Bytes::from(out.into_inner()))
}

#[cfg(test)]
mod tests {
    use super::ByteRange;

    #[test]
    fn ranges() {
        let from = |first, last| ByteRange::From { first, last };
        assert_eq!(ByteRange::parse("bytes=0-99"), Some(from(0, Some(99))));
        assert_eq!(ByteRange::parse("bytes=100-"), Some(from(100, None)));
        assert_eq!(ByteRange::parse("bytes=-5"), Some(ByteRange::Suffix(5)));
        assert_eq!(ByteRange::parse("bytes=5-1"), None);
        assert_eq!(ByteRange::parse("bytes=0-1,4-5"), None);
        assert_eq!(ByteRange::parse("items=0-1"), None);
        assert_eq!(from(0, Some(99)).resolve(50), Some(0..50));
        assert_eq!(from(10, None).resolve(50), Some(10..50));
        assert_eq!(from(50, None).resolve(50), None);
        assert_eq!(ByteRange::Suffix(5).resolve(50), Some(45..50));
        assert_eq!(ByteRange::Suffix(500).resolve(50), Some(0..50));
        assert_eq!(ByteRange::Suffix(0).resolve(50), None);
    }
}
