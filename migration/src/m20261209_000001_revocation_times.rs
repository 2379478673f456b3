//! When each revocation was written, so the revocation sweep reads what
//! changed since its last round instead of every online token and user.
//!
//! `revoked_tokens.revoked_at` (a single sign-out) and
//! `users.tokens_changed_at` (a password change or a deactivation, which
//! move `token_version` or clear `is_active`) hold seconds since the epoch
//! by the clock of the process that wrote them, each with an index for the
//! sweep's range scan. Rows written before this migration hold 0: the
//! sweep's full round, at start and every `REVOCATION_FULL_SWEEP_SECONDS`,
//! still finds them.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum RevokedTokens {
    Table,
    RevokedAt,
}

#[derive(DeriveIden)]
enum Users {
    Table,
    TokensChangedAt,
}

/// (table, column, index) for each stamp.
fn stamps() -> [(DynIden, DynIden, &'static str); 2] {
    [
        (
            RevokedTokens::Table.into_iden(),
            RevokedTokens::RevokedAt.into_iden(),
            "idx_revoked_tokens_revoked_at",
        ),
        (
            Users::Table.into_iden(),
            Users::TokensChangedAt.into_iden(),
            "idx_users_tokens_changed_at",
        ),
    ]
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (table, column, index) in stamps() {
            if !manager
                .has_column(&table.to_string(), &column.to_string())
                .await?
            {
                manager
                    .alter_table(
                        Table::alter()
                            .table(table.clone())
                            .add_column(
                                ColumnDef::new(column.clone())
                                    .big_integer()
                                    .not_null()
                                    .default(0),
                            )
                            .to_owned(),
                    )
                    .await?;
            }
            manager
                .create_index(
                    Index::create()
                        .if_not_exists()
                        .name(index)
                        .table(table)
                        .col(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (table, column, index) in stamps() {
            manager
                .drop_index(Index::drop().name(index).table(table.clone()).to_owned())
                .await?;
            manager
                .alter_table(Table::alter().table(table).drop_column(column).to_owned())
                .await?;
        }
        Ok(())
    }
}
