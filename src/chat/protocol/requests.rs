//! What clients send: the requests, parsed from one text frame each, and
//! exactly what is wrong with a frame that is not one.

use super::*;

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
    /// Find messages by their words (B10).
    Search(SearchQuery) = "search",
    /// Mute or unmute a conversation for oneself (C17).
    Mute(MuteQuery) = "mute",
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
    /// Upload ids to send (B9); `content` may then be empty.
    #[serde(default)]
    pub attachments: Option<Vec<String>>,
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

/// `mute`: whether the caller wants notifications of a conversation (C17).
#[derive(Debug, Deserialize)]
pub struct MuteQuery {
    pub id: ConversationRef,
    pub muted: bool,
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

/// `search`: words to find, in every conversation of the caller or in one,
/// older than `before`.
#[derive(Debug, Deserialize)]
pub struct SearchQuery {
    pub query: String,
    #[serde(default)]
    pub id: Option<ConversationRef>,
    #[serde(default)]
    pub before: Option<i64>,
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
