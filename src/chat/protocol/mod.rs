//! The wire protocol (PROTOCOL.md), typed: one serde enum for what clients
//! send (`requests.rs`), one for what the server sends (`events.rs`). Every
//! frame is a text frame holding `{"type": string, "data": any}`. Here: the
//! ids, times and error answers both sides use.

mod events;
mod requests;

pub use events::*;
pub use requests::*;

use std::fmt;

use chrono::{DateTime, Utc};
use paperclip::actix::Apiv2Schema;
use paperclip::v2::models::{DataType, DataTypeFormat, DefaultSchemaRaw};
use serde::de::{self, Deserializer, IgnoredAny};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A frame's JSON text, written into one buffer per thread and copied out
/// at its size: a vector of its own per frame began at 128 bytes and was
/// reallocated once or twice for every message (BENCHMARKS.md, "Frames
/// written at their size").
fn json_bytes<T: Serialize>(frame: &T) -> bytes::Bytes {
    const EXPECT: &str = "server events hold only strings, numbers and maps with string keys";
    /// A buffer that grew past this (a page of history) is given back.
    const KEEP_BYTES: usize = 64 * 1024;
    thread_local! {
        static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUFFER.with(|cell| {
        // (Borrowed already only if serializing a frame serialized another.)
        let Ok(mut buffer) = cell.try_borrow_mut() else {
            return serde_json::to_vec(frame).expect(EXPECT).into();
        };
        buffer.clear();
        serde_json::to_writer(&mut *buffer, frame).expect(EXPECT);
        let json = bytes::Bytes::copy_from_slice(&buffer);
        if buffer.capacity() > KEEP_BYTES {
            *buffer = Vec::new();
        }
        json
    })
}

/// A conversation id (`pk` on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ChatId(pub Uuid);

/// A file sent with a message (B9), as pushes, history and uploads show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Apiv2Schema)]
pub struct AttachmentInfo {
    pub id: Uuid,
    pub name: String,
    /// Bytes.
    pub size: i64,
    pub content_type: String,
    /// Pixels: only for images the server previews (`/thumbnail/`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<i32>,
}

impl AttachmentInfo {
    /// What the old web client shows of files sent without text: their names.
    pub fn names(files: &[AttachmentInfo]) -> String {
        files
            .iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

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

/// RFC 3339 UTC with microseconds, as the old backend wrote times:
/// `2026-11-24T10:15:30.123456+00:00`. chrono's RFC 3339 writer, not a
/// `format` string: that one is parsed again on every call, and every
/// message frame has a time (6 % of the server's CPU at full speed).
pub fn format_time(time: &DateTime<Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Micros, false)
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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

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
    fn frames_share_a_buffer_without_sharing_bytes() {
        let large = "x".repeat(100_000);
        let frame = |text: &str| ServerEvent::BadRequest(Notice::new(text.to_string())).to_json();
        assert_eq!(
            frame(&large),
            format!(r#"{{"type":"bad_request","data":{{"message":"{large}"}}}}"#).as_bytes()
        );
        // After a frame larger than the buffer keeps, and after a shorter one.
        for text in ["a somewhat longer message", "short", ""] {
            assert_eq!(
                frame(text),
                format!(r#"{{"type":"bad_request","data":{{"message":"{text}"}}}}"#).as_bytes()
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
        // Truncated, not rounded; zeros kept; as the format string wrote them.
        for (nanos, micros) in [(999_999_999, "999999"), (0, "000000"), (1_000, "000001")] {
            let t = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()
                + chrono::Duration::nanoseconds(nanos);
            assert_eq!(
                format_time(&t),
                format!("2026-01-02T03:04:05.{micros}+00:00")
            );
            assert_eq!(
                format_time(&t),
                t.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string()
            );
        }
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
    /// fuzzing is `cargo fuzz`, docs/RELIABILITY.md, "Fuzzing").
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
