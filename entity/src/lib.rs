//! sea-orm entities of the chat server, one module per table (DESIGN.md "Data").

pub mod attachment;
pub mod block;
pub mod chat;
pub mod chat_member;
pub mod group_change;
pub mod invitation;
pub mod message;
pub mod message_event;
pub mod push_dispatch;
pub mod push_outbox;
pub mod push_subscription;
pub mod push_throttle;
pub mod reaction;
pub mod revoked_token;
pub mod user;

pub mod prelude {
    //! The entities under short names: `Attachment`, `User`, `Block`, `Chat`, `ChatMember`, `GroupChange`, `Invitation`, `Message`,
    //! `MessageEvent`, `PushDispatch`, `PushOutbox`, `PushSubscription`, `PushThrottle`,
    //! `Reaction`, `RevokedToken`.
    pub use super::attachment::Entity as Attachment;
    pub use super::block::Entity as Block;
    pub use super::chat::Entity as Chat;
    pub use super::chat_member::Entity as ChatMember;
    pub use super::group_change::Entity as GroupChange;
    pub use super::invitation::Entity as Invitation;
    pub use super::message::Entity as Message;
    pub use super::message_event::Entity as MessageEvent;
    pub use super::push_dispatch::Entity as PushDispatch;
    pub use super::push_outbox::Entity as PushOutbox;
    pub use super::push_subscription::Entity as PushSubscription;
    pub use super::push_throttle::Entity as PushThrottle;
    pub use super::reaction::Entity as Reaction;
    pub use super::revoked_token::Entity as RevokedToken;
    pub use super::user::Entity as User;
}
