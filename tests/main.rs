//! The integration tests, as one test binary: each module below is one
//! file of tests/ (tests/common holds what they share). One binary means
//! one link and one build of tests/common instead of one per file, which
//! is most of what the test build spent on them (README, "Test").
//!
//! Every test starts its own server on a free port with its own database
//! (and its own Redis key prefix), so tests of different files run side by
//! side as safely as tests of one file did.

#[macro_use]
mod common;

mod attachments;
mod bad_input;
mod bench;
mod blocks;
mod chat_features;
mod chat_flow;
mod cli;
mod cluster;
mod conversation_log;
mod deploy;
mod edges;
mod faults;
mod groups;
mod harness;
mod invitations;
mod login;
mod message_changes;
mod nginx;
mod notifications;
mod reliability;
mod rest_api;
mod rolling_upgrade;
mod scaling;
mod search;
mod security;
mod structure;
mod web_client;
