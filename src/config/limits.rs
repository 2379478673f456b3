//! The limits group: sizes, rates and budgets that bound what one client
//! can make the server do.

use serde::Deserialize;

use super::ConfigError;

/// How much any one client, session or queue may take.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct LimitSettings {
    /// Largest WebSocket message (continuations aggregated), in bytes.
    pub max_frame_bytes: usize,
    /// Longest message content, in characters after trimming.
    pub max_message_chars: usize,
    /// Requests a session may make per second, sustained (token bucket rate).
    pub rate_limit_per_second: u32,
    /// Requests a session may make in one burst (token bucket size).
    pub rate_limit_burst: u32,
    /// Most members of a group conversation (B6).
    pub max_group_members: usize,
    /// Group changes (create, add, remove others, rename) one user may make
    /// per minute, in bursts of as many: each pushes a frame to every member.
    pub group_changes_per_minute: u32,
    /// Changes one group may take per minute (adding and renaming), from
    /// all its members together.
    pub group_changes_per_minute_per_group: u32,
    /// Deliveries one user's messages (and edits, reactions, typing
    /// notices, read receipts) may cause per second and instance (a
    /// message to a group of N costs N - 1; bursts of twice as many); a
    /// group's member list costs the same, a list of conversations one
    /// per conversation.
    pub fanout_per_second: u32,
    /// Searches (of messages, and of people) one user may make per minute
    /// and instance, in bursts of a third of that: each reads the
    /// full-text index, or counts the users matching.
    pub searches_per_minute: u32,
    /// Searches running at once on an instance, each holding a database
    /// connection (a quarter of the default pool); a user's run one at a
    /// time. The others wait (`chat::search_slots`).
    pub searches_at_once: usize,
    /// Most groups one user may be in, created or joined (C9).
    pub max_groups_per_user: usize,
    /// Most pending invitations one user may hold; more are not recorded.
    pub max_pending_invitations: usize,
    /// Most live WebSocket sessions one user may hold on one instance.
    pub max_sessions_per_user: usize,
    /// Frames queued for a client that is not reading before it is dropped.
    pub outbox_capacity: usize,
    /// Messages waiting for the group-commit writer before senders are told
    /// the server is busy (and resend).
    pub message_queue_capacity: usize,
    /// WebSockets one client address may hold open before authorizing.
    pub max_unauthenticated_per_address: usize,
    /// WebSockets one client address may hold open in all.
    pub max_sockets_per_address: usize,
    /// How long after sending it a message may still be edited (B8), in seconds.
    pub edit_window_seconds: u64,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            max_frame_bytes: 64 * 1024,
            max_message_chars: 4_000,
            rate_limit_per_second: 200,
            rate_limit_burst: 400,
            max_group_members: 1_000,
            group_changes_per_minute: 30,
            group_changes_per_minute_per_group: 12,
            fanout_per_second: 20_000,
            searches_per_minute: 60,
            searches_at_once: 4,
            max_groups_per_user: 500,
            max_pending_invitations: 100,
            max_sessions_per_user: 32,
            outbox_capacity: 1_024,
            message_queue_capacity: 16 * 1024,
            max_unauthenticated_per_address: 100,
            max_sockets_per_address: 1_000,
            edit_window_seconds: 2 * 24 * 3600,
        }
    }
}

/// Longest edit window accepted: beyond it the duration would not fit.
const MAX_EDIT_WINDOW_SECONDS: u64 = 100 * 365 * 24 * 3600;

impl LimitSettings {
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        let invalid = |what: &str| Err(ConfigError::Invalid(what.to_string()));
        if self.max_frame_bytes < 1024 {
            return invalid("MAX_FRAME_BYTES must be at least 1024");
        }
        if self.max_message_chars == 0 {
            return invalid("MAX_MESSAGE_CHARS must be at least 1");
        }
        if self.rate_limit_per_second == 0 || self.rate_limit_burst == 0 {
            return invalid("RATE_LIMIT_PER_SECOND and RATE_LIMIT_BURST must be at least 1");
        }
        if self.outbox_capacity < 8 {
            return invalid("OUTBOX_CAPACITY must be at least 8");
        }
        if self.max_group_members < 2 {
            return invalid("MAX_GROUP_MEMBERS must be at least 2");
        }
        if self.max_sessions_per_user == 0 {
            return invalid("MAX_SESSIONS_PER_USER must be at least 1");
        }
        if self.message_queue_capacity == 0 {
            return invalid("MESSAGE_QUEUE_CAPACITY must be at least 1");
        }
        if self.max_unauthenticated_per_address == 0 {
            return invalid("MAX_UNAUTHENTICATED_PER_ADDRESS must be at least 1");
        }
        if self.fanout_per_second == 0 {
            return invalid("FANOUT_PER_SECOND must be at least 1");
        }
        if self.searches_per_minute == 0 {
            return invalid("SEARCHES_PER_MINUTE must be at least 1");
        }
        if self.searches_at_once == 0 {
            return invalid("SEARCHES_AT_ONCE must be at least 1");
        }
        if self.edit_window_seconds > MAX_EDIT_WINDOW_SECONDS {
            return invalid("EDIT_WINDOW_SECONDS must be at most 3153600000 (100 years)");
        }
        if self.max_sockets_per_address == 0 {
            return invalid("MAX_SOCKETS_PER_ADDRESS must be at least 1");
        }
        Ok(())
    }

    /// `EDIT_WINDOW_SECONDS` as a duration.
    pub fn edit_window(&self) -> chrono::Duration {
        chrono::Duration::seconds(self.edit_window_seconds.min(MAX_EDIT_WINDOW_SECONDS) as i64)
    }
}
