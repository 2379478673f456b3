//! Every frame a client can send goes through `parse_request`: arbitrary
//! bytes must never panic, and every refusal must render as a valid JSON
//! error frame of the protocol. The check itself is
//! `chat_server::chat::protocol::check_any_frame`, which the normal test
//! suite also runs over the regression inputs and their mutations.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| chat_server::chat::protocol::check_any_frame(data));
