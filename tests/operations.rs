//! The integration tests of running the chat: sign-in, the REST API, abuse
//! and blocks, bad input, several instances, Redis and its cluster, faults,
//! restarts, nginx, the connection pool, the command line, the benchmarks
//! and the code's structure. One test binary, beside tests/features.rs
//! (which says why two).

// Tests begin transactions directly: they hold locks and stand in for
// other clients, and no test's caller is dropped while its BEGIN is on its
// way (the server begins each in `db::begin`, clippy.toml).
#![allow(clippy::disallowed_methods)]

#[macro_use]
mod common;

mod bad_input;
mod bench;
mod blocks;
mod cli;
mod cluster;
mod deploy;
mod faults;
mod harness;
mod login;
mod nginx;
mod pool;
mod reliability;
mod rest_api;
mod rolling_upgrade;
mod scaling;
mod security;
mod structure;
mod web_client;
