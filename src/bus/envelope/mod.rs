//! The envelope: what one instance publishes for the others, encoded and
//! decoded here and nowhere else.
//!
//! Versions, for rolling upgrades. Every envelope from version 2 on starts
//! with its version (`2 C origin …`); version 1, the format of releases
//! before the field existed, has none. An instance reads every version up
//! to `ENVELOPE_VERSION` and ignores newer ones (an older instance ignores
//! what it cannot decode), and it writes the newest version that every
//! live instance reads: each one states that version as the value of its
//! liveness key (an instance of version 1 writes `1` there), and the
//! registry scan at connection and at every heartbeat (5 s) takes the
//! lowest. So during a rolling upgrade the new instances write what the
//! old ones read, and switch once the last old one is gone. An older
//! instance that starts beside newer ones (a rollback) may miss what they
//! write until their next heartbeat: events for its sessions are then
//! caught up as after any missed event (B7: the client sees the gap in
//! `seq` and asks `sync`).

use std::io::Write;

use bytes::Bytes;

use crate::auth::TokenId;
use crate::chat::membership::MembershipChange;
use crate::chat::protocol::{ChatId, UserId};

/// The newest envelope version this build reads and writes.
pub(super) const ENVELOPE_VERSION: u8 = 3;
/// The first version with `M` (a conversation's read marks in one
/// envelope): while an instance before it lives, marks go one `C` or `U`
/// envelope each.
pub(super) const READS_VERSION: u8 = 3;

/// What travels on the channels, after the version field (above). A header of space-separated ASCII fields,
/// then (for frames) raw bytes:
/// - `C origin chat user|- own_len|- own others`: frames for a conversation's
///   members (`user` gets `own`, or nothing when there is no `own_len`);
/// - `S origin chat seq user|- own_len|- own others`: the same for an event
///   with its place in the conversation's order (B7). A kind of its own, so
///   an instance of an earlier version ignores it (as an undecodable
///   envelope) instead of delivering it out of order;
/// - `G origin id chat presence(1|0) added removed push_len|- removed_len|- push removed_push`:
///   a membership change, numbered by its origin (`id`), published on the
///   control channel and on the conversation's (see `publish_membership`);
/// - `P origin user 1|0 chats` (the origin's record of the user changed) and
///   `N origin user 1|0 chats` (news only): tell `chats` of the user's state;
/// - `R origin user version`, `D origin dead-instance`, `Y origin` (it came
///   back: re-read its users and reload memberships);
/// - `U origin user frame`: a frame for one user's sessions (an invitation);
/// - `K origin chat 1|0`: messages in a direct conversation became blocked
///   (1) or were unblocked (0);
/// - `B origin a b 1|0`: two people have a block between them (1) or no
///   longer (0): presence between them is hidden in every conversation;
/// - `R origin user version token`: as `R` above, for one signed-out token;
/// - `M origin chat user:up_to,…`: read marks stored together, each
///   `user`'s mark in `chat` moved to `up_to` (B4 `read`); the receiver
///   makes the frames. On the conversation's channel, or, in a group too
///   large for presence (the marks reach only the readers' own sessions,
///   C7), on the control channel. Written only from version 3
///   (`READS_VERSION`) on.
///
/// `U`, `K` and `B` are kinds of their own, which an earlier version
/// ignores; so does it the five-field `R`. `M` waits for version 3
/// instead: read marks reach every member, and an instance of version 2
/// would drop them.
///
/// Lists are comma-separated, `-` when empty.
#[derive(Debug, PartialEq)]
pub(super) enum Envelope<'a> {
    Conversation {
        origin: &'a str,
        chat: ChatId,
        seq: Option<i64>,
        user: Option<UserId>,
        own: Option<&'a [u8]>,
        others: &'a [u8],
    },
    Membership {
        origin: &'a str,
        id: u64,
        change: MembershipChange,
    },
    Presence {
        origin: &'a str,
        user: UserId,
        online: bool,
        notify: Vec<ChatId>,
        registry: bool,
    },
    Revoke {
        origin: &'a str,
        user: UserId,
        current_version: i32,
        /// Sent only when set, so an instance before it (which reads four
        /// fields) still reads every version-based revocation.
        token: Option<TokenId>,
    },
    ToUser {
        origin: &'a str,
        user: UserId,
        frame: &'a [u8],
    },
    Reads {
        origin: &'a str,
        chat: ChatId,
        reads: Vec<(UserId, i64)>,
    },
    Blocked {
        origin: &'a str,
        chat: ChatId,
        blocked: bool,
    },
    /// Two people have a block between them now, or no longer (`B origin
    /// a b 0|1`): presence between them is hidden everywhere (C10). Sent
    /// beside `K` (which instances before it read) for their direct
    /// conversation.
    BlockedPair {
        origin: &'a str,
        pair: (UserId, UserId),
        blocked: bool,
    },
    InstanceDown {
        origin: &'a str,
        dead: &'a str,
    },
    /// The origin (re)connected and registered its users anew.
    Resync {
        origin: &'a str,
    },
}

fn write_list<T: std::fmt::Display>(out: &mut Vec<u8>, items: impl IntoIterator<Item = T>) {
    let mut empty = true;
    for (i, item) in items.into_iter().enumerate() {
        let _ = write!(out, "{}{item}", if i == 0 { "" } else { "," });
        empty = false;
    }
    if empty {
        out.push(b'-');
    }
}

fn parse_list<T>(field: &str, parse: impl Fn(&str) -> Option<T>) -> Option<Vec<T>> {
    if field == "-" {
        return Some(Vec::new());
    }
    field.split(',').map(parse).collect()
}

fn parse_user(field: &str) -> Option<UserId> {
    field.parse().ok().map(UserId)
}

fn parse_chat(field: &str) -> Option<ChatId> {
    uuid::Uuid::parse_str(field).ok().map(ChatId)
}

fn parse_flag(field: &str) -> Option<bool> {
    match field {
        "1" => Some(true),
        "0" => Some(false),
        _ => None,
    }
}

fn parse_len(field: &str) -> Option<Option<usize>> {
    if field == "-" {
        Some(None)
    } else {
        field.parse().ok().map(Some)
    }
}

/// Splits `n` space-terminated ASCII fields off the front of `bytes`; the
/// rest is returned whole (it may hold spaces and any byte).
fn split_fields(bytes: &[u8], n: usize) -> Option<(Vec<&str>, &[u8])> {
    let mut fields = Vec::with_capacity(n);
    let mut rest = bytes;
    for _ in 0..n {
        let end = rest.iter().position(|b| *b == b' ')?;
        fields.push(std::str::from_utf8(&rest[..end]).ok()?);
        rest = &rest[end + 1..];
    }
    Some((fields, rest))
}

impl<'a> Envelope<'a> {
    /// The envelope in format `version` (1 up to `ENVELOPE_VERSION`: the
    /// newest every live instance reads). (Long on purpose: one arm per
    /// kind, the format of each beside the others, as the doc above lists.)
    pub(super) fn encode(&self, version: u8) -> Vec<u8> {
        let mut out = Vec::new();
        if version >= 2 {
            let _ = write!(out, "{version} ");
        }
        match self {
            Envelope::Conversation {
                origin,
                chat,
                seq,
                user,
                own,
                others,
            } => {
                match seq {
                    Some(seq) => write!(out, "S {origin} {} {seq} ", chat.0.simple()),
                    None => write!(out, "C {origin} {} ", chat.0.simple()),
                }
                .expect("writing to a Vec cannot fail");
                match user {
                    Some(u) => {
                        let _ = write!(out, "{u} ");
                    }
                    None => out.extend_from_slice(b"- "),
                }
                match own {
                    Some(own) => {
                        let _ = write!(out, "{} ", own.len());
                        out.extend_from_slice(own);
                    }
                    None => out.extend_from_slice(b"- "),
                }
                out.extend_from_slice(others);
            }
            Envelope::Membership { origin, id, change } => {
                let _ = write!(
                    out,
                    "G {origin} {id} {} {} ",
                    change.chat.0.simple(),
                    u8::from(change.presence)
                );
                write_list(&mut out, &change.added);
                out.push(b' ');
                write_list(&mut out, &change.removed);
                for push in [&change.push, &change.removed_push] {
                    match push {
                        Some(p) => {
                            let _ = write!(out, " {}", p.len());
                        }
                        None => out.extend_from_slice(b" -"),
                    }
                }
                out.push(b' ');
                for push in [&change.push, &change.removed_push].into_iter().flatten() {
                    out.extend_from_slice(push);
                }
            }
            Envelope::Presence {
                origin,
                user,
                online,
                notify,
                registry,
            } => {
                let kind = if *registry { "P" } else { "N" };
                let _ = write!(out, "{kind} {origin} {user} {} ", u8::from(*online));
                write_list(&mut out, notify.iter().map(|c| c.0.simple()));
            }
            Envelope::Revoke {
                origin,
                user,
                current_version,
                token,
            } => {
                let _ = write!(out, "R {origin} {user} {current_version}");
                if let Some(token) = token {
                    let _ = write!(out, " {token}");
                }
            }
            Envelope::ToUser {
                origin,
                user,
                frame,
            } => {
                let _ = write!(out, "U {origin} {user} ");
                out.extend_from_slice(frame);
            }
            Envelope::Reads {
                origin,
                chat,
                reads,
            } => {
                let _ = write!(out, "M {origin} {} ", chat.0.simple());
                write_list(
                    &mut out,
                    reads.iter().map(|(u, up_to)| format!("{u}:{up_to}")),
                );
            }
            Envelope::Blocked {
                origin,
                chat,
                blocked,
            } => {
                let _ = write!(out, "K {origin} {} {}", chat.0.simple(), u8::from(*blocked));
            }
            Envelope::BlockedPair {
                origin,
                pair: (a, b),
                blocked,
            } => {
                let _ = write!(out, "B {origin} {a} {b} {}", u8::from(*blocked));
            }
            Envelope::InstanceDown { origin, dead } => {
                let _ = write!(out, "D {origin} {dead}");
            }
            Envelope::Resync { origin } => {
                let _ = write!(out, "Y {origin}");
            }
        }
        out
    }

    /// An envelope of any version this build reads; `None` for a newer
    /// version and for anything malformed.
    pub(super) fn decode(bytes: &'a [u8]) -> Option<Self> {
        let (head, body) = split_fields(bytes, 1)?;
        if head[0].starts_with(|c: char| c.is_ascii_digit()) {
            let version: u8 = head[0].parse().ok()?;
            if !(2..=ENVELOPE_VERSION).contains(&version) {
                return None;
            }
            return Self::decode_body(body);
        }
        Self::decode_body(bytes)
    }

    /// The envelope after its version field (all of a version-1 one): the
    /// same in versions 1 and 2. (Long on purpose: one arm per kind, each
    /// the mirror of its arm in `encode`.)
    fn decode_body(bytes: &'a [u8]) -> Option<Self> {
        let (head, _) = split_fields(bytes, 1)?;
        match head[0] {
            kind @ ("C" | "S") => {
                let sequenced = kind == "S";
                let (mut f, rest) = split_fields(bytes, if sequenced { 6 } else { 5 })?;
                let seq = if sequenced {
                    Some(f.remove(3).parse().ok()?)
                } else {
                    None
                };
                let user = if f[3] == "-" {
                    None
                } else {
                    Some(parse_user(f[3])?)
                };
                let (own, others) = match parse_len(f[4])? {
                    Some(len) if len <= rest.len() => (Some(&rest[..len]), &rest[len..]),
                    Some(_) => return None,
                    None => (None, rest),
                };
                Some(Envelope::Conversation {
                    origin: f[1],
                    chat: parse_chat(f[2])?,
                    seq,
                    user,
                    own,
                    others,
                })
            }
            "G" => {
                let (f, rest) = split_fields(bytes, 9)?;
                let lens = [parse_len(f[7])?, parse_len(f[8])?];
                if lens.iter().flatten().sum::<usize>() != rest.len() {
                    return None;
                }
                let push = lens[0].map(|n| Bytes::copy_from_slice(&rest[..n]));
                let start = lens[0].unwrap_or(0);
                let removed_push = lens[1].map(|n| Bytes::copy_from_slice(&rest[start..start + n]));
                Some(Envelope::Membership {
                    origin: f[1],
                    id: f[2].parse().ok()?,
                    change: MembershipChange {
                        chat: parse_chat(f[3])?,
                        presence: f[4] == "1",
                        added: parse_list(f[5], parse_user)?,
                        removed: parse_list(f[6], parse_user)?,
                        push,
                        removed_push,
                    },
                })
            }
            kind @ ("P" | "N") => {
                let text = std::str::from_utf8(bytes).ok()?;
                let f: Vec<&str> = text.split(' ').collect();
                let [_, origin, user, online, rest @ ..] = f.as_slice() else {
                    return None;
                };
                Some(Envelope::Presence {
                    origin,
                    user: parse_user(user)?,
                    online: *online == "1",
                    notify: match rest {
                        [] => Vec::new(),
                        [chats] => parse_list(chats, parse_chat)?,
                        _ => return None,
                    },
                    registry: kind == "P",
                })
            }
            "R" => {
                let text = std::str::from_utf8(bytes).ok()?;
                let f: Vec<&str> = text.split(' ').collect();
                let (origin, user, version, token) = match f.as_slice() {
                    [_, origin, user, version] => (origin, user, version, None),
                    [_, origin, user, version, token] => (origin, user, version, Some(token)),
                    _ => return None,
                };
                let token = match token {
                    Some(t) => Some(TokenId::parse(t)?),
                    None => None,
                };
                Some(Envelope::Revoke {
                    origin,
                    user: parse_user(user)?,
                    current_version: version.parse().ok()?,
                    token,
                })
            }
            "U" => {
                let (f, frame) = split_fields(bytes, 3)?;
                Some(Envelope::ToUser {
                    origin: f[1],
                    user: parse_user(f[2])?,
                    frame,
                })
            }
            "M" => {
                let text = std::str::from_utf8(bytes).ok()?;
                let f: Vec<&str> = text.split(' ').collect();
                let [_, origin, chat, reads] = f.as_slice() else {
                    return None;
                };
                let read = |field: &str| {
                    let (user, up_to) = field.split_once(':')?;
                    Some((parse_user(user)?, up_to.parse().ok()?))
                };
                Some(Envelope::Reads {
                    origin,
                    chat: parse_chat(chat)?,
                    reads: parse_list(reads, read)?,
                })
            }
            "K" => {
                let text = std::str::from_utf8(bytes).ok()?;
                let f: Vec<&str> = text.split(' ').collect();
                let [_, origin, chat, blocked] = f.as_slice() else {
                    return None;
                };
                Some(Envelope::Blocked {
                    origin,
                    chat: parse_chat(chat)?,
                    blocked: parse_flag(blocked)?,
                })
            }
            "B" => {
                let text = std::str::from_utf8(bytes).ok()?;
                let f: Vec<&str> = text.split(' ').collect();
                let [_, origin, a, b, blocked] = f.as_slice() else {
                    return None;
                };
                Some(Envelope::BlockedPair {
                    origin,
                    pair: (parse_user(a)?, parse_user(b)?),
                    blocked: parse_flag(blocked)?,
                })
            }
            "D" => {
                let (f, rest) = split_fields(bytes, 2)?;
                Some(Envelope::InstanceDown {
                    origin: f[1],
                    dead: std::str::from_utf8(rest).ok()?,
                })
            }
            "Y" => Some(Envelope::Resync {
                origin: std::str::from_utf8(&bytes[2..]).ok()?,
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
