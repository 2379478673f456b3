//! Uploads to a bucket: S3 and GCS take multipart uploads in parts of
//! 5 MiB at least, which would make every upload in progress hold 5 MiB
//! of the server's memory, for as long as a slow client takes to send it.
//! So the body goes to a local file first (`ATTACHMENTS_SPOOL_DIR`), and
//! only then to the bucket, part by part, with at most
//! `BUCKET_PARTS_AT_ONCE` parts in memory on the instance.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use std::io::{Read, Seek, SeekFrom};

use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

use super::BUCKET_PART_BYTES;

/// Why a spooled upload did not reach the bucket.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool file: {0}")]
    File(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] object_store::Error),
}

/// An upload's spool file, removed when dropped.
pub(super) struct Spool {
    file: tokio::fs::File,
    path: PathBuf,
    size: u64,
}

impl Spool {
    pub(super) async fn create(dir: &Path) -> Result<Spool, SpoolError> {
        let path = dir.join(format!("chat-upload-{}", uuid::Uuid::new_v4().simple()));
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await?;
        Ok(Spool {
            file,
            path,
            size: 0,
        })
    }

    /// Sends the spooled bytes to `object`: one request when they fit in a
    /// part, else a multipart upload; each part read from the file only
    /// once one of `parts` is free.
    pub(super) async fn send(
        &mut self,
        store: &dyn ObjectStore,
        object: &ObjectPath,
        parts: &Semaphore,
    ) -> Result<(), SpoolError> {
        self.file.flush().await?;
        // Read with std's file on the blocking pool: tokio's keeps a buffer
        // of its own (up to 2 MiB) for as long as the file is open.
        let mut file = self.file.try_clone().await?.into_std().await;
        file.seek(SeekFrom::Start(0))?;
        let mut reader = Some(file);
        if self.size <= BUCKET_PART_BYTES as u64 {
            let _permit = parts.acquire().await.map_err(std::io::Error::other)?;
            let whole = read_part(&mut reader, self.size as usize).await?;
            store.put(object, PutPayload::from_bytes(whole)).await?;
            return Ok(());
        }
        let mut upload = store.put_multipart(object).await?;
        let sent = async {
            let mut left = self.size;
            while left > 0 {
                let n = left.min(BUCKET_PART_BYTES as u64);
                let _permit = parts.acquire().await.map_err(std::io::Error::other)?;
                let part = read_part(&mut reader, n as usize).await?;
                upload.put_part(PutPayload::from_bytes(part)).await?;
                left -= n;
            }
            upload.complete().await?;
            Ok::<(), SpoolError>(())
        }
        .await;
        if sent.is_err() {
            let _ = upload.abort().await;
        }
        sent
    }
}

/// The next `n` bytes of the spool file, read on the blocking pool (the
/// file travels there and back).
async fn read_part(reader: &mut Option<std::fs::File>, n: usize) -> Result<Bytes, SpoolError> {
    let mut file = reader
        .take()
        .ok_or_else(|| std::io::Error::other("the spool file was lost"))?;
    let (file, part) = tokio::task::spawn_blocking(move || {
        let mut part = vec![0; n];
        let read = file.read_exact(&mut part);
        (file, read.map(|()| part))
    })
    .await
    .map_err(std::io::Error::other)?;
    *reader = Some(file);
    Ok(Bytes::from(part?))
}

impl Spool {
    /// Adds a chunk of the body.
    pub(super) async fn append(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.file.write_all(chunk).await?;
        self.size += chunk.len() as u64;
        Ok(())
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
