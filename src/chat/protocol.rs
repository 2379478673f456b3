//! The wire protocol (PROTOCOL.md), typed: one serde enum for what clients
//! send, one for what the server sends. Every frame is a text frame holding
//! `{"type": string, "data": any}`.

use std::fmt;

use chrono::{DateTime, Utc};
use paperclip::actix::Apiv2Schema;
use paperclip::v2::models::{DataType, DataTypeFormat, DefaultSchemaRaw};
use serde::de::{self, Deserializer, IgnoredAny};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A conversation id (`pk` on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ChatId(pub Uuid);

/// A user id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(pub i64);

impl paperclip::v2::schema::Apiv2Schema for ChatId {
    fn raw_schema() -> DefaultSchemaRaw {
        DefaultSchemaRaw {
            data_type: Some(DataType::String),
            format: Some(DataTypeFormat::Uuid),
            ..Default::default()
        }
    }
}

impl fmt::Display for ChatId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// `data` of a request that carries nothing we read; present and not null.
#[derive(Debug)]
pub struct AnyData;

impl<'de> Deserialize<'de> for AnyData {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Option::<IgnoredAny>::deserialize(d)?;
        match value {
            Some(_) => Ok(AnyData),
            None => Err(de::Error::custom("data not provided")),
        }
    }
}

/// A conversation named by the client. Any string is accepted here: one that
/// is not a UUID names no conversation, which is answered `not_found`.
#[derive(Debug, Clone, Deserialize)]
#[serde(transparent)]
pub struct ConversationRef(pub String);

impl ConversationRef {
    /// The conversation id, if the string is a UUID at all.
    pub fn chat_id(&self) -> Option<ChatId> {
        Uuid::parse_str(self.0.trim()).ok().map(ChatId)
    }
}

/// Declares the requests once: `ClientRequest` (what a frame parses into)
/// and `RequestKind` (which names the `X_response` of its answer) come from
/// the same list, so a new request is one line and a misspelt kind does not
/// compile.
macro_rules! requests {
    ($($(#[$doc:meta])* $variant:ident($data:ty) = $wire:literal,)*) => {
        /// Everything a client may send.
        #[derive(Debug, Deserialize)]
        #[serde(tag = "type", content = "data")]
        pub enum ClientRequest {
            $($(#[$doc])* #[serde(rename = $wire)] $variant($data),)*
        }

        /// The type of a request; its failures are answered `X_response`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum RequestKind {
            $($(#[$doc])* $variant,)*
        }

        impl RequestKind {
            /// The request's `type`, as on the wire.
            pub fn wire_name(self) -> &'static str {
                match self {
                    $(RequestKind::$variant => $wire,)*
                }
            }

            /// The kind a wire `type` names, if any.
            pub fn from_wire(name: &str) -> Option<Self> {
                match name {
                    $($wire => Some(RequestKind::$variant),)*
                    _ => None,
                }
            }
        }

        impl ClientRequest {
            /// Which request this is.
            pub fn kind(&self) -> RequestKind {
                match self {
                    $(ClientRequest::$variant(_) => RequestKind::$variant,)*
                }
            }
        }
    };
}

requests! {
    /// Log the socket in (A2.3).
    Authorization(Authorization) = "authorization",
    /// The contact list (A2.4).
    GetContacts(AnyData) = "get_contacts",
    /// One conversation (A2.5).
    GetContact(ConversationQuery) = "get_contact",
    /// Send a message (A2.6, B2).
    Message(SendMessage) = "message",
    /// A page of history (B4).
    GetMessages(HistoryQuery) = "get_messages",
    /// Mark messages read (B4).
    Read(MarkRead) = "read",
    /// Tell the others one is typing (B4).
    Typing(ConversationQuery) = "typing",
    /// Application-level ping (B5).
    Ping(AnyData) = "ping",
    /// Start a group (B6).
    CreateGroup(CreateGroup) = "create_group",
    /// Add people to a group (B6).
    AddMembers(AddMembers) = "add_members",
    /// Remove a member, or leave (B6).
    RemoveMember(RemoveMember) = "remove_member",
    /// Change a group's title (B6).
    RenameGroup(RenameGroup) = "rename_group",
    /// A conversation's events after a `seq` (B7).
    Sync(SyncQuery) = "sync",
    /// The caller's pending invitations to groups (C9).
    GetInvitations(AnyData) = "get_invitations",
    /// Join a group one was invited to (C9).
    AcceptInvitation(ConversationQuery) = "accept_invitation",
    /// Turn an invitation down for good (C9).
    DeclineInvitation(ConversationQuery) = "decline_invitation",
    /// Block someone (C10).
    BlockUser(UserRef) = "block_user",
    /// Lift one's block of someone (C10).
    UnblockUser(UserRef) = "unblock_user",
    /// The people one blocked (C10).
    GetBlocked(AnyData) = "get_blocked",
    /// Change one's message (B8).
    EditMessage(EditMessage) = "edit_message",
    /// Take a message back (B8).
    DeleteMessage(MessageRef) = "delete_message",
    /// Set or take back a reaction (B8).
    React(React) = "react",
}

impl fmt::Display for RequestKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.wire_name())
    }
}

/// `authorization`: the token from `POST /api/login/`.
#[derive(Debug, Deserialize)]
pub struct Authorization {
    pub token: String,
}

/// `get_contact`, `typing`, `accept_invitation`, `decline_invitation`: one conversation.
#[derive(Debug, Deserialize)]
pub struct ConversationQuery {
    pub id: ConversationRef,
}

/// `message`: text for a conversation, optionally with a client-chosen id
/// that makes a resend idempotent.
#[derive(Debug, Deserialize)]
pub struct SendMessage {
    pub to: ConversationRef,
    pub content: String,
    #[serde(default)]
    pub client_id: Option<String>,
    /// The message this one answers (B8).
    #[serde(default)]
    pub reply_to: Option<i64>,
}

/// `edit_message`: a message's new text (B8).
#[derive(Debug, Deserialize)]
pub struct EditMessage {
    pub id: i64,
    pub content: String,
}

/// `delete_message`: the message to take back (B8).
#[derive(Debug, Deserialize)]
pub struct MessageRef {
    pub id: i64,
}

/// `react`: one emoji on a message, set (`on`) or taken back (B8).
#[derive(Debug, Deserialize)]
pub struct React {
    pub id: i64,
    pub emoji: String,
    pub on: bool,
}

/// `get_messages`: one page of history.
#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    pub id: ConversationRef,
    #[serde(default)]
    pub before: Option<i64>,
    #[serde(default)]
    pub after: Option<i64>,
    #[serde(default)]
    pub limit: Option<u64>,
}

/// `sync`: the events of a conversation after `after_seq`, oldest first.
#[derive(Debug, Deserialize)]
pub struct SyncQuery {
    pub id: ConversationRef,
    pub after_seq: i64,
    #[serde(default)]
    pub limit: Option<u64>,
}

/// `read`: everything up to this message id has been seen.
#[derive(Debug, Deserialize)]
pub struct MarkRead {
    pub id: ConversationRef,
    pub up_to: i64,
}

/// `block_user`, `unblock_user`: the other person.
#[derive(Debug, Deserialize)]
pub struct UserRef {
    pub user_id: i64,
}

/// `create_group`: a title and the people to add besides the creator.
#[derive(Debug, Deserialize)]
pub struct CreateGroup {
    pub title: String,
    #[serde(default)]
    pub members: Vec<i64>,
}

/// `add_members`: people to add to a group.
#[derive(Debug, Deserialize)]
pub struct AddMembers {
    pub id: ConversationRef,
    pub members: Vec<i64>,
}

/// `remove_member`: a member to remove (oneself: leaving).
#[derive(Debug, Deserialize)]
pub struct RemoveMember {
    pub id: ConversationRef,
    pub user_id: i64,
}

/// `rename_group`: a new title.
#[derive(Debug, Deserialize)]
pub struct RenameGroup {
    pub id: ConversationRef,
    pub title: String,
}

/// What went wrong with a frame that is not a well-formed request: each maps
/// to the error frame PROTOCOL.md names (A2.7, B3).
#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Not JSON, not an object, not UTF-8, too large, binary.
    BadRequest(String),
    TypeNotProvided,
    DataNotProvided,
    TypeNotFound,
    /// A known type whose `data` has a missing or mistyped field.
    Invalid {
        kind: RequestKind,
        message: String,
    },
}

/// Parses one text frame into a request, or says exactly what is wrong with it.
pub fn parse_request(text: &str) -> Result<ClientRequest, FrameError> {
    // Fast path: a well-formed request parses straight into its variant.
    let request: ClientRequest =
        serde_json::from_str(text).map_err(|typed_error| diagnose(text, typed_error))?;
    if contains_escaped_nul(text.as_bytes()) {
        return Err(FrameError::Invalid {
            kind: request.kind(),
            message: NUL_REFUSED.into(),
        });
    }
    Ok(request)
}

/// Why a request holding a NUL character is refused.
pub const NUL_REFUSED: &str = "text must not contain NUL characters (\\u0000)";

/// Whether a JSON text holds a NUL character (`\u0000`) in a string: no
/// database stores one in text (PostgreSQL refuses it), and no person types
/// one, so requests holding one are refused at the edge. A `\\u0000` (an
/// escaped backslash, then text) is not one.
pub fn contains_escaped_nul(json: &[u8]) -> bool {
    let mut i = 0;
    while i < json.len() {
        if json[i] != b'\\' {
            i += 1;
            continue;
        }
        if json[i + 1..].starts_with(b"u0000") {
            return true;
        }
        // Every backslash in JSON starts an escape: skip what it escapes.
        i += 2;
    }
    false
}

/// The slow path, for frames that failed to parse: find which rule they break,
/// in the old backend's order (type, then data, then route).
fn diagnose(text: &str, typed_error: serde_json::Error) -> FrameError {
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return FrameError::BadRequest(format!("frame is not valid JSON: {e}")),
    };
    let Some(object) = value.as_object() else {
        return FrameError::BadRequest("frame must be a JSON object".into());
    };
    let kind = match object.get("type") {
        None | Some(serde_json::Value::Null) => return FrameError::TypeNotProvided,
        Some(serde_json::Value::String(s)) if s.is_empty() => return FrameError::TypeNotProvided,
        Some(serde_json::Value::String(s)) => Some(s.as_str()),
        Some(_) => None,
    };
    match object.get("data") {
        None | Some(serde_json::Value::Null) => return FrameError::DataNotProvided,
        Some(_) => {}
    }
    match kind.and_then(RequestKind::from_wire) {
        None => FrameError::TypeNotFound,
        Some(kind) => FrameError::Invalid {
            kind,
            message: describe_field_error(&typed_error),
        },
    }
}

/// serde's message without its "at line 1 column 42" tail.
fn describe_field_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.find(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// RFC 3339 UTC with microseconds, as the old backend wrote times:
/// `2026-11-24T10:15:30.123456+00:00`.
pub fn format_time(time: &DateTime<Utc>) -> String {
    time.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string()
}

/// B3 error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    Unauthorized,
    NotFound,
    Invalid,
    RateLimited,
    Internal,
}

impl ErrorCode {
    /// The code as on the wire (and in metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Invalid => "invalid",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Internal => "internal",
        }
    }
}

/// `{"status": "error", "code": ..., "message": ...}`.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorReply {
    pub status: &'static str,
    pub code: ErrorCode,
    pub message: String,
}

impl ErrorReply {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorReply {
            status: "error",
            code,
            message: message.into(),
        }
    }
}

/// The `data` of an `X_response`: the answer, or an error.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Reply<T> {
    Ok(T),
    Err(ErrorReply),
}

/// `{"message": "..."}` of the envelope error frames.
#[derive(Debug, Serialize)]
pub struct Notice {
    pub message: String,
}

impl Notice {
    pub fn new(message: impl Into<String>) -> Self {
        Notice {
            message: message.into(),
        }
    }
}

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
    /// People joined.
    MembersAdded { user_ids: Vec<i64> },
    /// Someone left or was removed; `owner_id` is the group's owner after
    /// it (null once nobody is left).
    MemberRemoved { user_id: i64, owner_id: Option<i64> },
    /// The title changed: it is the push's `name`.
    Renamed,
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
    Pong(Empty),
    TypeNotProvided(Notice),
    DataNotProvided(Notice),
    TypeNotFound(Notice),
    BadRequest(Notice),
}

impl ServerEvent<'_> {
    /// The frame's JSON text.
    pub fn to_json(&self) -> bytes::Bytes {
        serde_json::to_vec(self)
            .expect("server events hold only strings, numbers and maps with string keys")
            .into()
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

/// The fuzz target's check (fuzz/fuzz_targets/frame_parser.rs), here so
/// that the normal test suite runs it too: arbitrary bytes never panic the
/// parser, and every refusal renders as a JSON error frame with a `type`.
/// Panics when either fails.
#[doc(hidden)]
pub fn check_any_frame(data: &[u8]) {
    // The transport answers non-UTF-8 text itself; everything else reaches the parser.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_request(text) {
        Ok(request) => {
            let _ = request.kind();
        }
        Err(error) => {
            let frame = ServerEvent::from_frame_error(error).to_json();
            let value: serde_json::Value =
                serde_json::from_slice(&frame).expect("error frames are JSON");
            assert!(value["type"].is_string(), "error frames have a type");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(error: FrameError) -> String {
        String::from_utf8(ServerEvent::from_frame_error(error).to_json().to_vec()).unwrap()
    }

    #[test]
    fn envelope_errors_match_the_old_backend() {
        let cases = [
            (
                r#"{"data": {}}"#,
                r#"{"type":"type_not_provided","data":{"message":"type route not provided"}}"#,
            ),
            (
                r#"{"type": "get_contacts"}"#,
                r#"{"type":"data_not_provided","data":{"message":"data not provided"}}"#,
            ),
            (
                r#"{"type": "nope", "data": {}}"#,
                r#"{"type":"type_not_found","data":{"message":"type route not found"}}"#,
            ),
            (
                r#"{"type": 5, "data": {}}"#,
                r#"{"type":"type_not_found","data":{"message":"type route not found"}}"#,
            ),
            (
                r#"{"type": "get_contacts", "data": null}"#,
                r#"{"type":"data_not_provided","data":{"message":"data not provided"}}"#,
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(
                frame(parse_request(input).unwrap_err()),
                expected,
                "{input}"
            );
        }
    }

    #[test]
    fn invalid_fields_name_the_request() {
        let err = parse_request(r#"{"type": "message", "data": {"to": "x"}}"#).unwrap_err();
        assert_eq!(
            frame(err),
            r#"{"type":"message_response","data":{"status":"error","code":"invalid","message":"missing field `content`"}}"#
        );
    }

    #[test]
    fn a_nul_in_any_string_is_invalid_but_an_escaped_backslash_is_not() {
        let nul = r#"{"type":"message","data":{"to":"x","content":"a\u0000b"}}"#;
        assert_eq!(
            parse_request(nul).unwrap_err(),
            FrameError::Invalid {
                kind: RequestKind::Message,
                message: NUL_REFUSED.into()
            }
        );
        let text = r#"{"type":"message","data":{"to":"x","content":"a\\u0000b"}}"#;
        assert!(
            parse_request(text).is_ok(),
            "a backslash, then the text u0000"
        );
        assert!(contains_escaped_nul(br#""\\\u0000""#));
        assert!(!contains_escaped_nul(br#""\\""#));
    }

    #[test]
    fn not_json_and_not_object_are_bad_requests() {
        assert!(matches!(
            parse_request("hello"),
            Err(FrameError::BadRequest(_))
        ));
        assert!(matches!(
            parse_request("[1,2]"),
            Err(FrameError::BadRequest(_))
        ));
        assert!(matches!(
            parse_request("\"s\""),
            Err(FrameError::BadRequest(_))
        ));
    }

    #[test]
    fn well_formed_requests_parse() {
        let r = parse_request(r#"{"type":"message","data":{"to":"6f1c1a4e-8b0b-4c55-9d2a-0d9d3b2f4e11","content":"hi","client_id":"c1"}}"#).unwrap();
        assert_eq!(r.kind(), RequestKind::Message);
        assert!(matches!(
            parse_request(r#"{"type":"get_contacts","data":{}}"#),
            Ok(ClientRequest::GetContacts(_))
        ));
        assert!(matches!(
            parse_request(r#"{"type":"ping","data":""}"#),
            Ok(ClientRequest::Ping(_))
        ));
    }

    #[test]
    fn time_has_microseconds_and_utc_offset() {
        let t = DateTime::parse_from_rfc3339("2026-11-24T10:15:30.1234567Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(format_time(&t), "2026-11-24T10:15:30.123456+00:00");
    }

    #[test]
    fn random_input_never_panics() {
        let mut seed = 0x2545F4914F6CDD1Du64;
        let alphabet = br#"{}[]":,typedatmsgcon0123456789 \ntruefalsenull"#;
        for len in 0..2000usize {
            let text: String = (0..len % 97)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    alphabet[(seed % alphabet.len() as u64) as usize] as char
                })
                .collect();
            if let Err(e) = parse_request(&text) {
                let frame: serde_json::Value =
                    serde_json::from_slice(&ServerEvent::from_frame_error(e).to_json())
                        .expect("every answer is JSON");
                let kind = frame["type"].as_str().expect("a type");
                let is_error = match kind {
                    "bad_request" | "type_not_provided" | "data_not_provided"
                    | "type_not_found" => frame["data"]["message"].is_string(),
                    _ => {
                        kind.ends_with("_response")
                            && frame["data"]["status"] == "error"
                            && frame["data"]["code"] == "invalid"
                    }
                };
                assert!(is_error, "{text:?} -> {frame}");
            }
        }
    }

    /// The fuzz target's inputs that once found a problem, then thousands
    /// of deterministic mutations of them and of a few well-formed frames:
    /// a smoke run of the fuzz target inside the normal suite (the real
    /// fuzzing is `cargo fuzz`, README "Fuzzing").
    #[test]
    fn the_fuzz_targets_check_holds_for_its_regressions_and_their_mutations() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
        let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .expect("fuzz/regressions")
            .map(|entry| entry.expect("an entry").path())
            .filter(|path| path.extension().is_none_or(|e| e != "md"))
            .map(|path| std::fs::read(path).expect("a regression input"))
            .collect();
        assert!(seeds.len() >= 4, "the regression inputs are there");
        for frame in [
            r#"{"type": "message", "data": {"to": "x", "content": "hi", "reply_to": 1}}"#,
            r#"{"type": "react", "data": {"id": 1, "emoji": "👍", "on": true}}"#,
            r#"{"type": "edit_message", "data": {"id": 1, "content": "é\u0000"}}"#,
            r#"{"type": "sync", "data": {"id": "x", "after_seq": 18446744073709551616}}"#,
        ] {
            seeds.push(frame.as_bytes().to_vec());
        }
        const JSON_BYTES: &[u8] = br#"{}[]\":,0u"#;
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n.max(1) as u64) as usize
        };
        for seed in &seeds {
            check_any_frame(seed);
            for _ in 0..2_000 {
                let mut input = seed.clone();
                for _ in 0..1 + next(4) {
                    let at = next(input.len() + 1);
                    match next(3) {
                        0 if at < input.len() => input[at] = next(256) as u8,
                        1 => input.insert(at, JSON_BYTES[next(JSON_BYTES.len())]),
                        _ if at < input.len() => {
                            input.remove(at);
                        }
                        _ => {}
                    }
                }
                check_any_frame(&input);
            }
        }
    }
}
