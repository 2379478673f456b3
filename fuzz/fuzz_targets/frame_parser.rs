//! Every frame a client can send goes through `parse_request`: arbitrary
//! bytes must never panic, and every refusal must render as a valid JSON
//! error frame of the protocol.

#![no_main]

use chat_server::chat::protocol::{parse_request, ServerEvent};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
});
