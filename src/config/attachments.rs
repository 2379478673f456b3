//! The attachments group (PROTOCOL.md B9): where files are kept (a
//! directory, S3, Google Cloud Storage), how large they may be, and how
//! much one user may keep unsent.

use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

use super::{non_empty, parse_flag, ConfigError};

/// Where attachments are stored and how much of them one user may hold.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct AttachmentSettings {
    /// The directory files are kept in when no bucket is set. Default: an
    /// `attachments` directory next to the SQLite database (or in the
    /// working directory with PostgreSQL or MySQL).
    #[serde(deserialize_with = "non_empty")]
    pub attachments_dir: Option<String>,
    /// Declares `ATTACHMENTS_DIR` one directory that every instance sees
    /// (a network file system): without it, several instances (Redis set)
    /// refuse to start on a local directory, where each would see only
    /// the files uploaded to itself.
    #[serde(deserialize_with = "shared_flag")]
    pub attachments_shared: bool,
    /// S3 (or an S3-compatible store): the bucket; credentials come from
    /// the standard `AWS_*` variables.
    #[serde(deserialize_with = "non_empty")]
    pub s3_bucket: Option<String>,
    /// An S3-compatible store's URL (MinIO, Ceph, R2 …); unset for AWS.
    #[serde(deserialize_with = "non_empty")]
    pub s3_endpoint: Option<String>,
    #[serde(deserialize_with = "non_empty")]
    pub s3_region: Option<String>,
    /// Google Cloud Storage (the old backend's variable): the bucket;
    /// credentials from `GOOGLE_APPLICATION_CREDENTIALS` or the instance's
    /// service account.
    #[serde(deserialize_with = "non_empty")]
    pub gs_bucket_name: Option<String>,
    /// Where uploads to a bucket are spooled before they are sent (default:
    /// the system's temporary directory): a slow client then holds disk,
    /// not the server's memory.
    #[serde(deserialize_with = "non_empty")]
    pub attachments_spool_dir: Option<String>,
    /// Largest file, in bytes.
    pub max_attachment_bytes: u64,
    /// Most files one user may have uploaded and not sent yet.
    pub attachment_quota_files: u64,
    /// Most bytes one user may have uploaded and not sent yet.
    pub attachment_quota_bytes: u64,
    /// Uploads one user may start per minute.
    pub attachment_uploads_per_minute: u32,
    /// Largest image (width × height) a thumbnail is made from: decoding
    /// takes 3–4 bytes per pixel, so this bounds what one request can make
    /// the server allocate. Larger images are files without a preview.
    pub max_preview_pixels: u64,
    /// How long an upload may stay unsent before the sweep removes it.
    pub attachment_unsent_seconds: u64,
    /// How often each instance sweeps removed and expired uploads.
    pub attachment_sweep_seconds: u64,
}

impl Default for AttachmentSettings {
    fn default() -> Self {
        AttachmentSettings {
            attachments_dir: None,
            attachments_shared: false,
            s3_bucket: None,
            s3_endpoint: None,
            s3_region: None,
            gs_bucket_name: None,
            attachments_spool_dir: None,
            max_attachment_bytes: 25 * 1024 * 1024,
            attachment_quota_files: 20,
            attachment_quota_bytes: 100 * 1024 * 1024,
            attachment_uploads_per_minute: 60,
            max_preview_pixels: 25_000_000,
            attachment_unsent_seconds: 24 * 3600,
            attachment_sweep_seconds: 60,
        }
    }
}

fn shared_flag<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    parse_flag("ATTACHMENTS_SHARED", &String::deserialize(d)?)
}

/// Longest `ATTACHMENT_UNSENT_SECONDS` accepted: 100 years.
const MAX_UNSENT_SECONDS: u64 = 100 * 365 * 24 * 3600;

/// Where the files go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttachmentStore {
    Directory(PathBuf),
    S3 {
        bucket: String,
        endpoint: Option<String>,
        region: Option<String>,
    },
    Gcs {
        bucket: String,
    },
}

impl AttachmentSettings {
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        let invalid = |what: &str| Err(ConfigError::Invalid(what.to_string()));
        if self.max_attachment_bytes == 0 {
            return invalid("MAX_ATTACHMENT_BYTES must be at least 1");
        }
        if self.attachment_quota_files == 0 || self.attachment_quota_bytes == 0 {
            return invalid("ATTACHMENT_QUOTA_FILES and ATTACHMENT_QUOTA_BYTES must be at least 1");
        }
        if self.attachment_uploads_per_minute == 0 {
            return invalid("ATTACHMENT_UPLOADS_PER_MINUTE must be at least 1");
        }
        if self.attachment_sweep_seconds == 0 || self.attachment_sweep_seconds > 24 * 3600 {
            return invalid("ATTACHMENT_SWEEP_SECONDS must be between 1 and 86400");
        }
        // Beyond this a time span no longer fits the clock's arithmetic
        // (the sweep subtracts it from now).
        if self.attachment_unsent_seconds == 0
            || self.attachment_unsent_seconds > MAX_UNSENT_SECONDS
        {
            return invalid(
                "ATTACHMENT_UNSENT_SECONDS must be between 1 and 3153600000 (100 years)",
            );
        }
        if self.s3_bucket.is_some() && self.gs_bucket_name.is_some() {
            return invalid("set S3_BUCKET or GS_BUCKET_NAME, not both");
        }
        if let Some(endpoint) = &self.s3_endpoint {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return invalid("S3_ENDPOINT must be an http:// or https:// URL");
            }
        }
        Ok(())
    }

    /// The store to use: a bucket when one is named, else the directory
    /// (`sqlite_file`: the database, when it is SQLite).
    pub fn store(&self, sqlite_file: Option<PathBuf>) -> AttachmentStore {
        if let Some(bucket) = &self.s3_bucket {
            return AttachmentStore::S3 {
                bucket: bucket.clone(),
                endpoint: self.s3_endpoint.clone(),
                region: self.s3_region.clone(),
            };
        }
        if let Some(bucket) = &self.gs_bucket_name {
            return AttachmentStore::Gcs {
                bucket: bucket.clone(),
            };
        }
        let directory = match (&self.attachments_dir, sqlite_file) {
            (Some(dir), _) => PathBuf::from(dir),
            (None, Some(db)) => db
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("attachments"), |d| d.join("attachments")),
            (None, None) => PathBuf::from("attachments"),
        };
        AttachmentStore::Directory(directory)
    }

    /// Several instances need one store they all see: a bucket, or a
    /// directory declared shared.
    pub fn check_for_instances(&self, store: &AttachmentStore) -> Result<(), ConfigError> {
        match store {
            AttachmentStore::Directory(dir) if !self.attachments_shared => {
                Err(ConfigError::Invalid(format!(
                    "attachments are kept in the local directory {} but REDIS_URL makes this one \
                     of several instances, which would each see only their own uploads: set \
                     S3_BUCKET or GS_BUCKET_NAME, or ATTACHMENTS_SHARED=1 if every instance \
                     mounts that same directory",
                    dir.display()
                )))
            }
            _ => Ok(()),
        }
    }
}
