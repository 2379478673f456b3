//! Redis key and channel names of one deployment and instance.

use crate::chat::protocol::ChatId;

/// Redis key and channel names, under one prefix (several deployments may
/// share a Redis). On a cluster the registry keys and the control channel
/// carry the hash tag `{prefix}`, so one transaction can write the registry
/// and a presence change (registry + control) is one pipeline; conversation
/// channels are untagged and spread over the slots.
#[derive(Clone)]
pub(super) struct Names {
    pub(super) prefix: String,
    pub(super) instance: String,
    pub(super) cluster: bool,
}

impl Names {
    /// The prefix of the keys that must share a slot.
    pub(super) fn shared(&self) -> String {
        if self.cluster {
            format!("{{{}}}", self.prefix)
        } else {
            self.prefix.clone()
        }
    }
    pub(super) fn conversation(&self, chat: ChatId) -> String {
        format!("{}:conv:{}", self.prefix, chat.0.simple())
    }
    /// The conversation whose channel this is, if it is one of ours.
    pub(super) fn chat_of(&self, channel: &str) -> Option<ChatId> {
        let id = channel
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":conv:")?;
        uuid::Uuid::try_parse(id).ok().map(ChatId)
    }
    pub(super) fn control(&self) -> String {
        format!("{}:control", self.shared())
    }
    pub(super) fn instances(&self) -> String {
        format!("{}:instances", self.shared())
    }
    pub(super) fn alive(&self, instance: &str) -> String {
        format!("{}:instance:{instance}:alive", self.shared())
    }
    pub(super) fn users_of(&self, instance: &str) -> String {
        format!("{}:instance:{instance}:users", self.shared())
    }
    /// `PUBLISH`, or on a cluster the sharded `SPUBLISH`.
    pub(super) fn publish(&self, channel: String, payload: Vec<u8>) -> redis::Cmd {
        if self.cluster {
            redis::Cmd::spublish(channel, payload)
        } else {
            redis::Cmd::publish(channel, payload)
        }
    }
}
