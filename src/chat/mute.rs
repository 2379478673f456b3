//! Muting a conversation (PROTOCOL.md C17): a member's own setting, stored
//! on their membership, so every device of theirs respects it. A muted
//! conversation still counts unread messages; it gets no desktop
//! notification, no sound and no Web Push.

use actix::Addr;
use entity::chat_member;
use sea_orm::{ActiveModelTrait, DatabaseConnection, DbErr, EntityTrait, IntoActiveModel, Set};

use super::messages::DeliverToUser;
use super::protocol::{ChatId, MuteState, ServerEvent, UserId};
use super::server::ChatServer;

/// Sets `user`'s mute of `chat`. `Ok(None)`: they are not a member.
/// Whether it changed comes with the state: setting what is set changes
/// nothing and is told to nobody.
pub async fn set(
    db: &DatabaseConnection,
    user: UserId,
    chat: ChatId,
    muted: bool,
) -> Result<Option<(MuteState, bool)>, DbErr> {
    let Some(member) = chat_member::Entity::find_by_id((chat.0, user.0))
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    let changed = member.muted != muted;
    if changed {
        let mut row = member.into_active_model();
        row.muted = Set(muted);
        row.update(db).await?;
    }
    Ok(Some((MuteState { pk: chat, muted }, changed)))
}

/// Tells every session of `user`, on every instance, the new state (the
/// `muted` push; the caller's session gets it after its answer).
pub fn announce(server: &Addr<ChatServer>, user: UserId, state: &MuteState) {
    server.do_send(DeliverToUser {
        user,
        frame: ServerEvent::Muted(state).to_json(),
        skip: None,
        broadcast: true,
    });
}
