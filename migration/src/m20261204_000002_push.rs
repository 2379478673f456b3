//! Web Push (PROTOCOL.md B11): the browsers' subscriptions, the durable
//! outbox of pushes to send, when each subscription was last told about
//! each conversation (at most one push per 30 s), and the one row that says
//! which instance sends and how far through the messages it has decided.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::ConnectionTrait;

use crate::m20261125_000001_create_schema::{id_column, timestamp};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum PushSubscriptions {
    Table,
    Id,
    UserId,
    Endpoint,
    P256dh,
    Auth,
    CreatedAt,
}

#[derive(DeriveIden)]
enum PushOutbox {
    Table,
    Id,
    SubscriptionId,
    MessageId,
    NotBefore,
    Attempts,
}

#[derive(DeriveIden)]
enum PushThrottle {
    Table,
    SubscriptionId,
    ChatId,
    LastAt,
}

#[derive(DeriveIden)]
enum PushDispatch {
    Table,
    Name,
    DecidedUpTo,
    Holder,
    LeaseUntil,
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Messages {
    Table,
    Id,
}

fn to_subscription(from: impl IntoIden, name: &str) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .name(name)
        .from(from, PushOutbox::SubscriptionId)
        .to(PushSubscriptions::Table, PushSubscriptions::Id)
        .on_delete(ForeignKeyAction::Cascade)
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        manager
            .create_table(
                Table::create()
                    .table(PushSubscriptions::Table)
                    .if_not_exists()
                    .col(id_column(backend, PushSubscriptions::Id))
                    .col(
                        ColumnDef::new(PushSubscriptions::UserId)
                            .big_integer()
                            .not_null(),
                    )
                    // A push service's URL: ASCII, at most 512 (an index on
                    // MySQL holds 768 characters).
                    .col(
                        ColumnDef::new(PushSubscriptions::Endpoint)
                            .string_len(512)
                            .not_null()
                            .unique_key(),
                    )
                    .col(
                        ColumnDef::new(PushSubscriptions::P256dh)
                            .string_len(100)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(PushSubscriptions::Auth)
                            .string_len(32)
                            .not_null(),
                    )
                    .col(timestamp(backend, PushSubscriptions::CreatedAt).not_null())
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_push_subscriptions_user")
                            .from(PushSubscriptions::Table, PushSubscriptions::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_push_subscriptions_user")
                    .table(PushSubscriptions::Table)
                    .col(PushSubscriptions::UserId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(PushOutbox::Table)
                    .if_not_exists()
                    .col(id_column(backend, PushOutbox::Id))
                    .col(
                        ColumnDef::new(PushOutbox::SubscriptionId)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(PushOutbox::MessageId)
                            .big_integer()
                            .not_null(),
                    )
                    .col(timestamp(backend, PushOutbox::NotBefore).not_null())
                    .col(
                        ColumnDef::new(PushOutbox::Attempts)
                            .integer()
                            .not_null()
                            .default(0),
                    )
                    .foreign_key(&mut to_subscription(
                        PushOutbox::Table,
                        "fk_push_outbox_subscription",
                    ))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_push_outbox_message")
                            .from(PushOutbox::Table, PushOutbox::MessageId)
                            .to(Messages::Table, Messages::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(PushThrottle::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(PushThrottle::SubscriptionId)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(PushThrottle::ChatId).uuid().not_null())
                    .col(timestamp(backend, PushThrottle::LastAt).not_null())
                    .primary_key(
                        Index::create()
                            .col(PushThrottle::SubscriptionId)
                            .col(PushThrottle::ChatId),
                    )
                    .foreign_key(&mut to_subscription(
                        PushThrottle::Table,
                        "fk_push_throttle_subscription",
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(PushDispatch::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(PushDispatch::Name)
                            .string_len(32)
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(PushDispatch::DecidedUpTo)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(PushDispatch::Holder).string_len(64).null())
                    .col(timestamp(backend, PushDispatch::LeaseUntil).null())
                    .to_owned(),
            )
            .await?;
        // Messages stored before this migration are never pushed.
        let db = manager.get_connection();
        db.execute_unprepared(
            "INSERT INTO push_dispatch (name, decided_up_to) \
             SELECT 'web_push', COALESCE(MAX(id), 0) FROM messages",
        )
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            PushDispatch::Table.into_iden(),
            PushThrottle::Table.into_iden(),
            PushOutbox::Table.into_iden(),
            PushSubscriptions::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}
