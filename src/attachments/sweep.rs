//! The sweep: every instance, every `ATTACHMENT_SWEEP_SECONDS`, marks
//! uploads never sent within `ATTACHMENT_UNSENT_SECONDS` removed, then
//! deletes the objects of removed files (deleted messages' too) and their
//! rows. Safe with several instances: marking is one UPDATE, deleting an
//! object already gone is no error, and a row goes only after its object.

use std::sync::Arc;
use std::time::Duration;

use entity::attachment;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QuerySelect};

use super::Attachments;

/// Removed files deleted per round trip.
const PAGE: u64 = 100;

/// Why a sweep stopped early (it is tried again next time).
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("database: {0}")]
    Database(#[from] DbErr),
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
}

/// Sweeps until `stop` says so.
pub async fn run(
    db: DatabaseConnection,
    attachments: Arc<Attachments>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let every = Duration::from_secs(attachments.settings.attachment_sweep_seconds);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        match sweep(&db, &attachments).await {
            Ok(0) => {}
            Ok(files) => tracing::info!(files, "attachments swept"),
            Err(error) => tracing::warn!(%error, "attachment sweep failed; trying again later"),
        }
    }
}

/// One sweep; answers how many files it deleted.
pub async fn sweep(
    db: &DatabaseConnection,
    attachments: &Attachments,
) -> Result<usize, SweepError> {
    // Bounded by the configuration's check (at most 100 years).
    let unsent = chrono::Duration::seconds(
        i64::try_from(attachments.settings.attachment_unsent_seconds).unwrap_or(i64::MAX / 1000),
    );
    let cutoff = chrono::Utc::now() - unsent;
    attachment::Entity::update_many()
        .col_expr(attachment::Column::State, Expr::value(attachment::REMOVED))
        .filter(attachment::Column::MessageId.is_null())
        .filter(attachment::Column::State.ne(attachment::REMOVED))
        .filter(attachment::Column::CreatedAt.lt(cutoff))
        .exec(db)
        .await?;
    let mut deleted = 0;
    loop {
        let ids: Vec<uuid::Uuid> = attachment::Entity::find()
            .select_only()
            .column(attachment::Column::Id)
            .filter(attachment::Column::State.eq(attachment::REMOVED))
            .limit(PAGE)
            .into_tuple()
            .all(db)
            .await?;
        if ids.is_empty() {
            return Ok(deleted);
        }
        for id in &ids {
            attachments.delete_objects(*id).await?;
        }
        attachment::Entity::delete_many()
            .filter(attachment::Column::Id.is_in(ids.iter().copied()))
            .filter(attachment::Column::State.eq(attachment::REMOVED))
            .exec(db)
            .await?;
        deleted += ids.len();
    }
}
