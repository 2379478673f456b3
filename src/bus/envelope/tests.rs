//! Every kind round-trips; version 1 frames read and written as before;
//! newer versions and garbage are ignored.

use super::*;

fn round_trip(envelope: Envelope<'_>) {
    for version in 1..=ENVELOPE_VERSION {
        let encoded = envelope.encode(version);
        assert_eq!(
            Envelope::decode(&encoded).as_ref(),
            Some(&envelope),
            "version {version}"
        );
    }
}

/// Envelopes exactly as the releases before the version field wrote
/// them (version 1), with what they mean: this build reads them, and
/// writes them byte for byte while an instance of those releases lives.
fn version_1() -> Vec<(&'static [u8], Envelope<'static>)> {
    let chat = ChatId(uuid::Uuid::from_u128(0x0123456789abcdef0123456789abcdef));
    vec![
        (
            b"S i1 0123456789abcdef0123456789abcdef 7 3 2 {}{\"x\":1}",
            Envelope::Conversation {
                origin: "i1",
                chat,
                seq: Some(7),
                user: Some(UserId(3)),
                own: Some(b"{}"),
                others: b"{\"x\":1}",
            },
        ),
        (
            b"C i1 0123456789abcdef0123456789abcdef - - {}",
            Envelope::Conversation {
                origin: "i1",
                chat,
                seq: None,
                user: None,
                own: None,
                others: b"{}",
            },
        ),
        (
            b"R i1 5 2",
            Envelope::Revoke {
                origin: "i1",
                user: UserId(5),
                current_version: 2,
                token: None,
            },
        ),
        (b"Y i1", Envelope::Resync { origin: "i1" }),
    ]
}

#[test]
fn version_1_envelopes_are_read_and_written_as_before() {
    for (bytes, envelope) in version_1() {
        let text = String::from_utf8_lossy(bytes);
        assert_eq!(Envelope::decode(bytes).as_ref(), Some(&envelope), "{text}");
        assert_eq!(envelope.encode(1), bytes, "{text}");
    }
}

#[test]
fn version_2_is_version_1_after_its_version_field() {
    for (bytes, envelope) in version_1() {
        let mut expected = b"2 ".to_vec();
        expected.extend_from_slice(bytes);
        assert_eq!(envelope.encode(2), expected);
    }
}

#[test]
fn a_newer_version_is_ignored() {
    assert_eq!(Envelope::decode(b"4 Y i1"), None);
    assert_eq!(Envelope::decode(b"0 Y i1"), None);
    assert_eq!(
        Envelope::decode(b"3 Y i1"),
        Some(Envelope::Resync { origin: "i1" })
    );
    assert_eq!(
        Envelope::decode(b"2 Y i1"),
        Some(Envelope::Resync { origin: "i1" })
    );
}

#[test]
fn envelopes_round_trip() {
    let chat = ChatId(uuid::Uuid::new_v4());
    let frame = br#"{"type":"message","data":{"content":"a b c"}}"#;
    round_trip(Envelope::Conversation {
        origin: "i1",
        chat,
        seq: None,
        user: Some(UserId(3)),
        own: Some(b"own frame with spaces"),
        others: frame,
    });
    round_trip(Envelope::Conversation {
        origin: "i1",
        chat,
        seq: Some(42),
        user: None,
        own: None,
        others: frame,
    });
    round_trip(Envelope::Conversation {
        origin: "i1",
        chat,
        seq: Some(1),
        user: Some(UserId(3)),
        own: Some(b"own"),
        others: frame,
    });
    round_trip(Envelope::Membership {
        origin: "i2",
        id: 7,
        change: MembershipChange {
            chat,
            added: vec![UserId(1), UserId(2)],
            removed: vec![],
            presence: true,
            push: Some(Bytes::from_static(b"{\"a\": 1}")),
            removed_push: Some(Bytes::from_static(b"{\"removed\": true}")),
        },
    });
    round_trip(Envelope::Membership {
        origin: "i2",
        id: u64::MAX,
        change: MembershipChange {
            chat,
            added: vec![],
            removed: vec![UserId(9)],
            presence: false,
            push: None,
            removed_push: None,
        },
    });
    round_trip(Envelope::Presence {
        origin: "i3",
        user: UserId(7),
        online: true,
        notify: vec![chat, ChatId(uuid::Uuid::new_v4())],
        registry: true,
    });
    round_trip(Envelope::Presence {
        origin: "i3",
        user: UserId(7),
        online: false,
        notify: vec![],
        registry: false,
    });
    round_trip(Envelope::Revoke {
        origin: "i4",
        user: UserId(5),
        current_version: 2,
        token: None,
    });
    round_trip(Envelope::Revoke {
        origin: "i4",
        user: UserId(5),
        current_version: i32::MIN,
        token: Some(TokenId::new(u128::MAX - 7)),
    });
    round_trip(Envelope::ToUser {
        origin: "i4",
        user: UserId(5),
        frame: br#"{"type": "invitation", "data": {"name": "a b"}}"#,
    });
    round_trip(Envelope::Blocked {
        origin: "i4",
        chat,
        blocked: true,
    });
    round_trip(Envelope::BlockedPair {
        origin: "i4",
        pair: (UserId(3), UserId(9)),
        blocked: false,
    });
    round_trip(Envelope::InstanceDown {
        origin: "i4",
        dead: "i5",
    });
    round_trip(Envelope::Resync { origin: "i6" });
    round_trip(Envelope::Reads {
        origin: "i7",
        chat,
        reads: vec![(UserId(3), 41), (UserId(12), 7)],
    });
}

#[test]
fn read_marks_travel_as_readers_and_ids() {
    let chat = ChatId(uuid::Uuid::from_u128(0x0123456789abcdef0123456789abcdef));
    let envelope = Envelope::Reads {
        origin: "i1",
        chat,
        reads: vec![(UserId(3), 41), (UserId(12), 7)],
    };
    assert_eq!(
        envelope.encode(3),
        b"3 M i1 0123456789abcdef0123456789abcdef 3:41,12:7"
    );
}

#[test]
fn malformed_envelopes_are_refused() {
    for junk in [
        &b"X junk"[..],
        b"",
        b"C i1 notauuid - - {}",
        b"C i1 0123456789abcdef0123456789abcdef 1 999 short",
        b"G i1 1 0123456789abcdef0123456789abcdef 1 - - 5 - abc",
        b"G i1 x 0123456789abcdef0123456789abcdef 1 - - - - ",
        b"P i1 x 1",
        b"R i1 5",
        b"M i1 notauuid 3:41",
        b"M i1 0123456789abcdef0123456789abcdef 3:x",
        b"M i1 0123456789abcdef0123456789abcdef 341",
        b"M i1 0123456789abcdef0123456789abcdef 3:41 extra",
    ] {
        assert_eq!(
            Envelope::decode(junk),
            None,
            "{:?}",
            String::from_utf8_lossy(junk)
        );
    }
}
