//! The integration tests of what people do with the chat, as one test
//! binary; tests/operations.rs holds those of running it. Each module below
//! is one file of tests/ (tests/common holds what the two share).
//!
//! Two binaries, not one per file: a binary is one link and one build of
//! tests/common, which was most of what the test build spent on them when
//! each file was its own. Not one for all either: the two compile side by
//! side on CI's two cores, where the one took 27 s alone at the end of the
//! build (docs/CI.md).
//!
//! Every test starts its own server on a free port with its own database
//! (and its own Redis key prefix), so tests of different files run side by
//! side as safely as tests of one file did.

// Tests begin transactions directly: they hold locks and stand in for
// other clients, and no test's caller is dropped while its BEGIN is on its
// way (the server begins each in `db::begin`, clippy.toml).
#![allow(clippy::disallowed_methods)]

#[macro_use]
mod common;

mod attachments;
mod chat_features;
mod chat_flow;
mod conversation_log;
mod deliveries_budget;
mod edges;
mod groups;
mod invitations;
mod message_changes;
mod notifications;
mod rosters;
mod search;
