//! What the server sends: answers, pushes and their items.

use super::*;

/// The answers to `authorization` (and the timeout notice), exactly as A2.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum AuthorizationReply {
    /// `{"status": "success"}`
    Success { status: &'static str },
    /// `{"status": "error", "message": "Invalid token provided"}`
    Refused {
        status: &'static str,
        message: String,
    },
    /// B3 errors (malformed request, too many sessions).
    Error(ErrorReply),
    /// `{"accepted": false, "message": "Authorization failed, connection timeout."}`
    Timeout {
        accepted: bool,
        message: &'static str,
    },
}

impl AuthorizationReply {
    pub fn success() -> Self {
        AuthorizationReply::Success { status: "success" }
    }

    pub fn refused(message: &str) -> Self {
        AuthorizationReply::Refused {
            status: "error",
            message: message.to_string(),
        }
    }

    pub fn timeout() -> Self {
        AuthorizationReply::Timeout {
            accepted: false,
            message: "Authorization failed, connection timeout.",
        }
    }
}

/// The last message of a conversation, in a contact.
#[derive(Debug, Clone, Serialize, Apiv2Schema)]
pub struct LastMessage {
    pub id: i64,
    pub sender: Option<i64>,
    pub content: String,
    pub time: String,
}

/// Whether a conversation is between two people or a group (B6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Apiv2Schema)]
#[serde(rename_all = "snake_case")]
pub enum ConversationKind {
    Direct,
    Group,
}

/// A member's role in a conversation (B6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Apiv2Schema)]
#[serde(rename_all = "snake_case")]
pub enum MemberRole {
    Owner,
    Member,
}

/// One entry of the contact list: a conversation the user belongs to.
#[derive(Debug, Clone, Serialize, Apiv2Schema)]
pub struct Contact {
    pub pk: ChatId,
    /// The other member's "First Last" (a group's title).
    pub name: String,
    /// Whether the other member (in a group: any other member) has a live
    /// session anywhere.
    pub online: bool,
    /// The other member's id and username (null in a group).
    pub user_id: Option<i64>,
    pub username: Option<String>,
    pub last_message: Option<LastMessage>,
    pub unread: u64,
    pub kind: ConversationKind,
    /// How many members the conversation has.
    pub members: u64,
    /// The `seq` of the conversation's latest event (B7; 0: none yet).
    pub seq: i64,
    /// Present (true) when this user muted the conversation (C17).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub muted: Option<bool>,
}

/// One member of a conversation.
#[derive(Debug, Clone, Serialize, Apiv2Schema)]
pub struct MemberItem {
    pub user_id: i64,
    pub username: String,
    /// "First Last".
    pub name: String,
    pub role: MemberRole,
    pub online: bool,
}

/// A conversation with its members: `get_contact`, the answers to the
/// group requests, and `conversation` pushes (B6).
#[derive(Debug, Clone, Serialize, Apiv2Schema)]
pub struct Conversation {
    pub pk: ChatId,
    /// The other member's "First Last" (a group's title).
    pub name: String,
    /// Whether another member has a live session anywhere.
    pub online: bool,
    /// The other member's id and username (null in a group).
    pub user_id: Option<i64>,
    pub username: Option<String>,
    pub last_message: Option<LastMessage>,
    /// Messages from others this user has not read; absent from
    /// `conversation` pushes, which every member gets alike.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unread: Option<u64>,
    pub kind: ConversationKind,
    /// The members, longest-standing first.
    pub members: Vec<MemberItem>,
    /// Present (true) only on what a removed member gets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removed: Option<bool>,
    /// The `seq` of the conversation's latest event (B7; 0: none yet).
    pub seq: i64,
    /// In the answer to `create_group` and `add_members`: who was invited
    /// instead of added (C9).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invited: Option<Vec<i64>>,
    /// Present (true) when the viewer muted the conversation (C17); never
    /// on a `conversation` push, which does not change it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub muted: Option<bool>,
    /// The highest message id another member has read (C19), so a client
    /// shows "Read" after a reload too; absent when nobody else has read
    /// anything, and from `conversation` pushes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_up_to: Option<i64>,
    /// A group's latest changes, oldest first (C20), in `get_contact`'s
    /// answer and the group requests' answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changes: Option<Vec<GroupChangeItem>>,
}

/// One change of a group (C20): who did what to whom, when.
#[derive(Debug, Clone, Serialize, Apiv2Schema)]
pub struct GroupChangeItem {
    /// `created`, `members_added`, `member_removed` or `renamed`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Who made it; null once their account is gone.
    pub by: Option<Person>,
    /// Who joined, or who left or was removed.
    pub users: Vec<Person>,
    /// The title given (created, renamed).
    pub title: Option<String>,
    pub time: String,
}

/// A person, as an invitation names its inviter and the blocked list its
/// entries.
#[derive(Debug, Clone, Serialize, Apiv2Schema)]
pub struct Person {
    pub user_id: i64,
    pub username: String,
    /// "First Last".
    pub name: String,
}

/// An invitation to a group (C9): the `invitation` push, and one item of
/// `get_invitations`.
#[derive(Debug, Clone, Serialize, Apiv2Schema)]
pub struct Invitation {
    /// The group.
    pub pk: ChatId,
    /// Its title.
    pub name: String,
    /// How many members it has.
    pub members: u64,
    /// Null once the inviter's account is gone.
    pub invited_by: Option<Person>,
    /// When the invitation was made.
    pub time: String,
}

/// The answer to `block_user` and `unblock_user` (C10).
#[derive(Debug, Serialize, Apiv2Schema)]
pub struct BlockAck {
    pub status: &'static str,
    pub user_id: i64,
}

/// A conversation's mute (C17): the `muted` push to the user's sessions,
/// and with `status` the answer to `mute`.
#[derive(Debug, Clone, Copy, Serialize, Apiv2Schema)]
pub struct MuteState {
    pub pk: ChatId,
    pub muted: bool,
}

/// `mute`'s answer.
#[derive(Debug, Serialize, Apiv2Schema)]
pub struct MuteAck {
    pub status: &'static str,
    #[serde(flatten)]
    pub state: MuteState,
}

/// `decline_invitation`'s answer.
#[derive(Debug, Serialize, Apiv2Schema)]
pub struct Declined {
    pub status: &'static str,
    pub pk: ChatId,
}

/// What a `conversation` push says changed (C7). It is small whatever the
/// group's size: a push goes to every member, so it never carries the
/// member list (that is `get_contact`'s answer, asked for by whoever shows it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ConversationChange {
    /// The conversation is new to its members.
    Created,
    /// People joined: added by `by`, or `by` accepted an invitation.
    MembersAdded { user_ids: Vec<i64>, by: i64 },
    /// Someone left (`by` is `user_id`) or was removed by `by`; `owner_id`
    /// is the group's owner after it (null once nobody is left).
    MemberRemoved {
        user_id: i64,
        owner_id: Option<i64>,
        by: i64,
    },
    /// `by` changed the title: it is the push's `name`.
    Renamed { by: i64 },
}

/// A `conversation` push (B6, C7): the same frame for every member — the
/// conversation as a contact item shows it (the member count, no
/// `unread`), and what changed.
#[derive(Debug, Serialize)]
pub struct ConversationPush<'a> {
    pub pk: ChatId,
    pub name: &'a str,
    pub online: bool,
    pub user_id: Option<i64>,
    pub username: Option<&'a str>,
    pub last_message: Option<&'a LastMessage>,
    pub kind: ConversationKind,
    /// How many members the conversation has now.
    pub members: usize,
    pub seq: i64,
    /// Present (true) only on what a removed member gets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removed: Option<bool>,
    pub change: &'a ConversationChange,
}

impl<'a> ConversationPush<'a> {
    /// The push for `item` after `change`.
    pub fn new(item: &'a Conversation, change: &'a ConversationChange) -> Self {
        ConversationPush {
            pk: item.pk,
            name: &item.name,
            online: item.online,
            user_id: item.user_id,
            username: item.username.as_deref(),
            last_message: item.last_message.as_ref(),
            kind: item.kind,
            members: item.members.len(),
            seq: item.seq,
            removed: item.removed,
            change,
        }
    }

    /// The frame's JSON text.
    pub fn to_json(&self) -> bytes::Bytes {
        ServerEvent::Conversation(self).to_json()
    }
}

/// `send` on the sender's sessions, `received` on everyone else's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Apiv2Schema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Send,
    Received,
}

/// The inner `data` of a `message` push, and one item of history.
#[derive(Debug, Clone, Serialize)]
pub struct MessageBody {
    pub direction: Direction,
    pub content: String,
    pub time: String,
    pub id: i64,
    pub sender: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Only on a reply (B8), so other `message` frames keep their bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quote: Option<Quote>,
    /// Only with files (B9), for the same reason.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<AttachmentInfo>,
}

/// What a reply shows of the message it answers (B8): its sender and the
/// start of its text (empty once that message is deleted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Apiv2Schema)]
pub struct Quote {
    pub sender: Option<i64>,
    pub content: String,
}

/// One emoji's reactions on a message, as one viewer sees them (B8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Apiv2Schema)]
pub struct ReactionCount {
    pub emoji: String,
    pub count: u64,
    /// Whether the viewer is one of them.
    pub mine: bool,
}

/// `message_edited` (B8), and `edit_message_response` on success (with `status`).
#[derive(Debug, Clone, Serialize, Apiv2Schema)]
pub struct MessageEdited {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<&'static str>,
    pub pk: ChatId,
    /// Null in an answer that changed nothing (the same text again).
    pub seq: Option<i64>,
    pub id: i64,
    pub content: String,
    pub edited_at: Option<String>,
}

/// `message_deleted` (B8), and `delete_message_response` on success (with `status`).
#[derive(Debug, Clone, Serialize, Apiv2Schema)]
pub struct MessageDeleted {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<&'static str>,
    pub pk: ChatId,
    pub seq: i64,
    pub id: i64,
}

/// `reaction` (B8), and `react_response` on success (with `status`).
#[derive(Debug, Clone, Serialize, Apiv2Schema)]
pub struct ReactionEvent {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<&'static str>,
    pub pk: ChatId,
    /// Null in an answer that changed nothing (set what was set already).
    pub seq: Option<i64>,
    pub id: i64,
    pub user_id: Option<i64>,
    pub emoji: String,
    pub on: bool,
}

/// A `message` push: `{"pk": ..., "seq": ..., "data": {...}}`; `seq` is
/// the message's place in its conversation (B7).
#[derive(Debug, Serialize)]
pub struct MessagePush<'a> {
    pub pk: ChatId,
    pub seq: i64,
    pub data: &'a MessageBody,
}

/// `message_response` on success: the message is durably stored.
#[derive(Debug, Serialize)]
pub struct MessageAck {
    pub status: &'static str,
    pub id: i64,
    pub pk: ChatId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    pub time: String,
}

/// `get_messages_response`: one page of history.
#[derive(Debug, Serialize, Apiv2Schema)]
pub struct HistoryPage {
    pub pk: ChatId,
    pub messages: Vec<HistoryItem>,
    pub has_more: bool,
    /// The conversation's latest `seq` when the page was read: the page
    /// shows every event up to it and none after (C13).
    pub seq: i64,
}

/// One message of history (`client_id` always present, null when absent).
#[derive(Debug, Clone, Serialize, Apiv2Schema)]
pub struct HistoryItem {
    pub id: i64,
    pub sender: Option<i64>,
    pub direction: Direction,
    pub content: String,
    pub time: String,
    pub client_id: Option<String>,
    /// The message this one answers, and what it shows of it (B8).
    pub reply_to: Option<i64>,
    pub quote: Option<Quote>,
    pub edited_at: Option<String>,
    pub deleted: bool,
    pub reactions: Vec<ReactionCount>,
    /// Its files (B9); none once deleted.
    pub attachments: Vec<AttachmentInfo>,
}

/// `search_response`: messages that hold every word asked for, newest
/// first (B10).
#[derive(Debug, Serialize, Apiv2Schema)]
pub struct SearchPage {
    pub results: Vec<SearchResult>,
    pub has_more: bool,
}

/// One message found: its conversation (`pk`) and enough to show it and
/// open the conversation at it.
#[derive(Debug, Serialize, Apiv2Schema)]
pub struct SearchResult {
    pub pk: ChatId,
    pub id: i64,
    pub sender: Option<i64>,
    pub content: String,
    pub time: String,
}

/// `sync_response`: a conversation's events after the `seq` asked for,
/// oldest first, each exactly as a live session received it (B7).
#[derive(Debug, Serialize)]
pub struct SyncPage {
    pub pk: ChatId,
    /// Each event's frame, exactly as a live session got it.
    pub events: Vec<Box<serde_json::value::RawValue>>,
    /// The conversation's latest `seq`.
    pub seq: i64,
    pub has_more: bool,
}

/// `read_response` on success.
#[derive(Debug, Serialize)]
pub struct ReadAck {
    pub status: &'static str,
    pub pk: ChatId,
    pub up_to: i64,
}

/// `read` relayed to the other members.
#[derive(Debug, Serialize)]
pub struct ReadEvent {
    pub pk: ChatId,
    pub user_id: i64,
    pub up_to: i64,
}

/// `typing` relayed to the other members.
#[derive(Debug, Serialize)]
pub struct TypingEvent {
    pub pk: ChatId,
    pub user_id: i64,
}

/// `presence`: a contact came online or went offline.
#[derive(Debug, Serialize)]
pub struct PresenceEvent {
    pub pk: ChatId,
    pub user_id: i64,
    pub online: bool,
}

/// `{}`
#[derive(Debug, Serialize)]
pub struct Empty {}

/// Everything the server sends.
#[derive(Debug, Serialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum ServerEvent<'a> {
    Info(&'static str),
    AuthorizationResponse(AuthorizationReply),
    GetContactsResponse(Reply<Vec<Contact>>),
    GetContactResponse(Reply<Conversation>),
    Message(MessagePush<'a>),
    MessageResponse(Reply<MessageAck>),
    GetMessagesResponse(Reply<HistoryPage>),
    SyncResponse(Reply<SyncPage>),
    SearchResponse(Reply<SearchPage>),
    ReadResponse(Reply<ReadAck>),
    TypingResponse(ErrorReply),
    PingResponse(ErrorReply),
    Read(ReadEvent),
    Typing(TypingEvent),
    Presence(PresenceEvent),
    CreateGroupResponse(Reply<Conversation>),
    AddMembersResponse(Reply<Conversation>),
    RemoveMemberResponse(Reply<Conversation>),
    RenameGroupResponse(Reply<Conversation>),
    /// A conversation changed (B6): what changed, to every member.
    Conversation(&'a ConversationPush<'a>),
    GetInvitationsResponse(Reply<Vec<Invitation>>),
    AcceptInvitationResponse(Reply<Conversation>),
    DeclineInvitationResponse(Reply<Declined>),
    BlockUserResponse(Reply<BlockAck>),
    UnblockUserResponse(Reply<BlockAck>),
    GetBlockedResponse(Reply<Vec<Person>>),
    /// Someone invited this user to a group (C9).
    Invitation(&'a Invitation),
    EditMessageResponse(Reply<&'a MessageEdited>),
    DeleteMessageResponse(Reply<&'a MessageDeleted>),
    ReactResponse(Reply<&'a ReactionEvent>),
    /// A message's text changed (B8).
    MessageEdited(&'a MessageEdited),
    /// A message was taken back (B8).
    MessageDeleted(&'a MessageDeleted),
    /// A reaction was set or taken back (B8).
    Reaction(&'a ReactionEvent),
    MuteResponse(Reply<MuteAck>),
    /// The user muted or unmuted a conversation, on some device (C17).
    Muted(&'a MuteState),
    Pong(Empty),
    TypeNotProvided(Notice),
    DataNotProvided(Notice),
    TypeNotFound(Notice),
    BadRequest(Notice),
}

impl ServerEvent<'_> {
    /// The frame's JSON text.
    pub fn to_json(&self) -> bytes::Bytes {
        json_bytes(self)
    }

    /// The `X_response` error for a failed request of type `kind`.
    pub fn error(kind: RequestKind, error: ErrorReply) -> ServerEvent<'static> {
        match kind {
            RequestKind::Authorization => {
                ServerEvent::AuthorizationResponse(AuthorizationReply::Error(error))
            }
            RequestKind::GetContacts => ServerEvent::GetContactsResponse(Reply::Err(error)),
            RequestKind::GetContact => ServerEvent::GetContactResponse(Reply::Err(error)),
            RequestKind::Message => ServerEvent::MessageResponse(Reply::Err(error)),
            RequestKind::GetMessages => ServerEvent::GetMessagesResponse(Reply::Err(error)),
            RequestKind::Sync => ServerEvent::SyncResponse(Reply::Err(error)),
            RequestKind::Read => ServerEvent::ReadResponse(Reply::Err(error)),
            RequestKind::Typing => ServerEvent::TypingResponse(error),
            RequestKind::Ping => ServerEvent::PingResponse(error),
            RequestKind::CreateGroup => ServerEvent::CreateGroupResponse(Reply::Err(error)),
            RequestKind::AddMembers => ServerEvent::AddMembersResponse(Reply::Err(error)),
            RequestKind::RemoveMember => ServerEvent::RemoveMemberResponse(Reply::Err(error)),
            RequestKind::RenameGroup => ServerEvent::RenameGroupResponse(Reply::Err(error)),
            RequestKind::GetInvitations => ServerEvent::GetInvitationsResponse(Reply::Err(error)),
            RequestKind::AcceptInvitation => {
                ServerEvent::AcceptInvitationResponse(Reply::Err(error))
            }
            RequestKind::DeclineInvitation => {
                ServerEvent::DeclineInvitationResponse(Reply::Err(error))
            }
            RequestKind::BlockUser => ServerEvent::BlockUserResponse(Reply::Err(error)),
            RequestKind::UnblockUser => ServerEvent::UnblockUserResponse(Reply::Err(error)),
            RequestKind::GetBlocked => ServerEvent::GetBlockedResponse(Reply::Err(error)),
            RequestKind::EditMessage => ServerEvent::EditMessageResponse(Reply::Err(error)),
            RequestKind::DeleteMessage => ServerEvent::DeleteMessageResponse(Reply::Err(error)),
            RequestKind::React => ServerEvent::ReactResponse(Reply::Err(error)),
            RequestKind::Search => ServerEvent::SearchResponse(Reply::Err(error)),
            RequestKind::Mute => ServerEvent::MuteResponse(Reply::Err(error)),
        }
    }

    /// The error frame for a frame that could not be parsed.
    pub fn from_frame_error(error: FrameError) -> ServerEvent<'static> {
        match error {
            FrameError::BadRequest(m) => ServerEvent::BadRequest(Notice::new(m)),
            FrameError::TypeNotProvided => {
                ServerEvent::TypeNotProvided(Notice::new("type route not provided"))
            }
            FrameError::DataNotProvided => {
                ServerEvent::DataNotProvided(Notice::new("data not provided"))
            }
            FrameError::TypeNotFound => {
                ServerEvent::TypeNotFound(Notice::new("type route not found"))
            }
            FrameError::Invalid { kind, message } => {
                ServerEvent::error(kind, ErrorReply::new(ErrorCode::Invalid, message))
            }
        }
    }
}
