//! Attachments (PROTOCOL.md B9): the files people send with messages.
//!
//! The bytes go to an object store, through `object_store`'s one interface
//! for all of them: a local directory by default, S3 or an S3-compatible
//! store (`S3_BUCKET`), or Google Cloud Storage (`GS_BUCKET_NAME`). The
//! `attachments` table says whose each file is and where it was sent
//! (`chat::store::attachments`). Here: the store (`mod.rs`), receiving an
//! upload without holding it in memory (`upload.rs`), reading a file back
//! and its thumbnail (`serve.rs`), and the sweep that deletes what was
//! removed or never sent (`sweep.rs`).

use std::path::PathBuf;
use std::sync::Arc;

use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;
use tokio::sync::Semaphore;

use crate::config::{AttachmentSettings, AttachmentStore, Settings};
use crate::rate_limit::UserRateLimit;

mod serve;
mod spool;
pub mod sweep;
mod upload;

pub use serve::{ByteRange, Opened, Thumbnail, ThumbnailError};
pub use upload::{Upload, UploadError};

/// Why the store could not be opened (at start-up).
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("attachments directory {path}: {source}")]
    Directory {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("attachment store: {0}")]
    Store(#[from] object_store::Error),
}

/// Thumbnails made at once per instance: each decodes up to
/// `MAX_PREVIEW_PIXELS` pixels.
const THUMBNAILS_AT_ONCE: usize = 2;

/// How an upload's bytes reach the store.
enum Writing {
    /// A directory: straight from the body, in parts of `DIRECTORY_PART_BYTES`
    /// (one filling while the other is written: what an upload holds).
    Direct,
    /// A bucket takes parts of 5 MiB: the body is spooled to a local file
    /// first (a slow client holds disk, not memory), then sent part by part,
    /// at most `BUCKET_PARTS_AT_ONCE` parts in memory on the instance.
    Spooled { dir: PathBuf, parts: Semaphore },
}

/// Bucket parts held in memory at once per instance, all uploads together.
const BUCKET_PARTS_AT_ONCE: usize = 2;

/// The attachment store and its limits, shared by every request.
pub struct Attachments {
    store: Arc<dyn ObjectStore>,
    writing: Writing,
    pub settings: AttachmentSettings,
    /// Uploads per user (`ATTACHMENT_UPLOADS_PER_MINUTE`).
    pub uploads: UserRateLimit,
    thumbnails: Semaphore,
    /// Images whose thumbnail failed to decode (`serve.rs`).
    undecodable: std::sync::Mutex<std::collections::HashSet<uuid::Uuid>>,
    /// Where the files are, for the log.
    pub location: String,
}

impl Attachments {
    /// Opens the store the settings name; with Redis (several instances),
    /// only one every instance sees.
    pub fn open(settings: &Settings) -> Result<Self, crate::StartError> {
        let config = &settings.attachments;
        let sqlite = (settings.database.engine() == crate::config::DbEngine::Sqlite)
            .then(|| settings.database.sqlite_path());
        let kind = config.store(sqlite);
        if settings.redis.url().is_some() || !settings.redis.cluster_nodes().is_empty() {
            config.check_for_instances(&kind)?;
        }
        let (store, location) = open_store(&kind).map_err(crate::StartError::from)?;
        let writing = match kind {
            AttachmentStore::Directory(_) => Writing::Direct,
            _ => {
                let dir = config
                    .attachments_spool_dir
                    .as_ref()
                    .map_or_else(std::env::temp_dir, PathBuf::from);
                std::fs::create_dir_all(&dir).map_err(|source| OpenError::Directory {
                    path: dir.display().to_string(),
                    source,
                })?;
                Writing::Spooled {
                    dir,
                    parts: Semaphore::new(BUCKET_PARTS_AT_ONCE),
                }
            }
        };
        let per_minute = config.attachment_uploads_per_minute;
        Ok(Attachments {
            store,
            writing,
            settings: config.clone(),
            uploads: UserRateLimit::new(per_minute.min(20), per_minute),
            thumbnails: Semaphore::new(THUMBNAILS_AT_ONCE),
            undecodable: Default::default(),
            location,
        })
    }

    /// The object holding a file's bytes.
    fn object(id: uuid::Uuid) -> ObjectPath {
        ObjectPath::from(format!("files/{id}"))
    }

    /// The object holding a file's thumbnail, once made.
    fn thumbnail_object(id: uuid::Uuid) -> ObjectPath {
        ObjectPath::from(format!("thumbnails/{id}"))
    }

    /// Deletes a file's bytes and its thumbnail; what is already gone is
    /// no error (another instance's sweep may have been first).
    pub async fn delete_objects(&self, id: uuid::Uuid) -> Result<(), object_store::Error> {
        use object_store::ObjectStoreExt;
        for path in [Self::object(id), Self::thumbnail_object(id)] {
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Whether a file of this (stored) type is shown inline: only the images
/// whose own bytes said so.
pub fn is_inline(content_type: &str) -> bool {
    upload::image_format(content_type).is_some()
}

/// S3 and GCS take multipart uploads in parts of 5 MiB at least (but the
/// last); a local file takes any.
const BUCKET_PART_BYTES: usize = 5 * 1024 * 1024;
const DIRECTORY_PART_BYTES: usize = 64 * 1024;

fn open_store(kind: &AttachmentStore) -> Result<(Arc<dyn ObjectStore>, String), OpenError> {
    // The buckets' HTTPS client (reqwest on rustls) takes the process's
    // crypto provider: ring, which rustls brings here already. Installing
    // it twice (a second server in one process) changes nothing.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(match kind {
        AttachmentStore::Directory(dir) => {
            std::fs::create_dir_all(dir).map_err(|source| OpenError::Directory {
                path: dir.display().to_string(),
                source,
            })?;
            let store = object_store::local::LocalFileSystem::new_with_prefix(dir)?
                .with_automatic_cleanup(true);
            (Arc::new(store), format!("directory {}", dir.display()))
        }
        AttachmentStore::S3 {
            bucket,
            endpoint,
            region,
        } => {
            // AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN …
            let mut builder =
                object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
            if let Some(endpoint) = endpoint {
                builder = builder
                    .with_endpoint(endpoint)
                    .with_allow_http(endpoint.starts_with("http://"));
            }
            if let Some(region) = region {
                builder = builder.with_region(region);
            }
            let location = match endpoint {
                Some(endpoint) => format!("S3 bucket {bucket} at {endpoint}"),
                None => format!("S3 bucket {bucket}"),
            };
            (Arc::new(builder.build()?), location)
        }
        AttachmentStore::Gcs { bucket } => {
            // GOOGLE_APPLICATION_CREDENTIALS, or the instance's account.
            let builder =
                object_store::gcp::GoogleCloudStorageBuilder::from_env().with_bucket_name(bucket);
            (
                Arc::new(builder.build()?),
                format!("Google Cloud Storage bucket {bucket}"),
            )
        }
    })
}
