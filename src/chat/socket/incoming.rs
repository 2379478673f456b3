//! Frames from the client: the upgraded connection's request payload
//! decoded into whole messages ([`frames`]), with the heartbeat's pongs
//! taken where the connection reads them.
//!
//! A pong only tells when the client was last heard from. Each of 19,000
//! idle sessions answers a ping every 10 s, and waking the session's actor
//! to note the time was about an eighth of an idle server's samples
//! (BENCHMARKS.md, "Idle CPU on the fifth machine"; what taking the pongs
//! here saves: "A twenty-fifth machine"). So while the reader waits between
//! frames, with nothing buffered, a chunk that is exactly one pong is taken
//! before the payload queues it ([`actix_http::h1::Payload::set_filter`],
//! a patch of ours, vendor/README.md): `heard` is stamped and nobody is
//! woken. Any other chunk, and a pong that comes with or inside other
//! bytes, goes to the decoder as before.

use std::cell::Cell;
use std::rc::Rc;

use actix_codec::Decoder;
use actix_http::ws::{CloseReason, Codec, Frame, Item, ProtocolError};
use actix_web::web::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};

use super::Outbox;

/// A frame from the client, with continuations already put together.
#[derive(Debug)]
pub enum Incoming {
    /// A whole text message (not yet checked for UTF-8).
    Text(Bytes),
    /// A whole binary message (this protocol has no use for them).
    Binary,
    /// A message larger than the protocol allows but small enough to read and
    /// discard, so the client can be told why.
    Oversize(usize),
    Ping(Bytes),
    Pong,
    Close(Option<CloseReason>),
}

/// Why the incoming stream broke off.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("websocket protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("message of more than {0} bytes")]
    Overflow(usize),
    #[error("reading the request payload: {0}")]
    Payload(String),
}

/// A message between `limit` and `limit * READABLE_OVERSIZE_FACTOR` bytes is
/// read and answered with an error frame; a larger one closes the connection
/// with 1009, since reading it would let a client make us buffer anything.
const READABLE_OVERSIZE_FACTOR: usize = 4;

struct Reader<S> {
    payload: S,
    buf: BytesMut,
    codec: Codec,
    limit: usize,
    /// A fragmented message being put together: (is text, bytes so far).
    partial: Option<(bool, BytesMut)>,
    done: bool,
    waiting: Waiting,
}

/// Set while the reader waits for the payload's next chunk holding no part
/// of a frame: a chunk that arrives then starts at a frame's first byte.
#[derive(Clone, Default)]
struct Waiting(Rc<Cell<bool>>);

/// The session's frames from the connection's request payload (see the
/// module's documentation for the pongs).
pub fn frames(
    payload: actix_web::dev::Payload,
    limit: usize,
    outbox: &Outbox,
) -> impl Stream<Item = Result<Incoming, TransportError>> {
    let waiting = Waiting::default();
    if let actix_web::dev::Payload::H1 { payload } = &payload {
        let hearing = outbox.hearing();
        let waiting = waiting.clone();
        payload.set_filter(is_pong, move || {
            let taken = waiting.0.get();
            if taken {
                hearing.heard();
            }
            taken
        });
    }
    incoming(payload, limit, waiting)
}

/// Whether `chunk` is exactly one whole pong from a client: final, no
/// extension bits, masked as a client's frames must be (an unmasked one is
/// left to the decoder, which refuses it), at most 125 bytes of payload.
fn is_pong(chunk: &[u8]) -> bool {
    match chunk {
        [0x8A, second, ..] if second & 0x80 != 0 => {
            let len = usize::from(second & 0x7F);
            len <= 125 && chunk.len() == 2 + 4 + len
        }
        _ => false,
    }
}

/// Decodes the upgraded connection's request payload into whole messages.
fn incoming<S, E>(
    payload: S,
    limit: usize,
    waiting: Waiting,
) -> impl Stream<Item = Result<Incoming, TransportError>>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let hard_limit = limit.saturating_mul(READABLE_OVERSIZE_FACTOR);
    let reader = Reader {
        payload,
        buf: BytesMut::new(),
        codec: Codec::new().max_size(hard_limit),
        limit,
        partial: None,
        done: false,
        waiting,
    };
    futures_util::stream::unfold(reader, |mut r| async move {
        if r.done {
            return None;
        }
        loop {
            match r.codec.decode(&mut r.buf) {
                Ok(Some(frame)) => match r.assemble(frame) {
                    Ok(Some(msg)) => return Some((Ok(msg), r)),
                    Ok(None) => continue,
                    Err(e) => {
                        r.done = true;
                        return Some((Err(e), r));
                    }
                },
                Ok(None) => {}
                Err(ProtocolError::Overflow) => {
                    r.done = true;
                    return Some((Err(TransportError::Overflow(r.limit)), r));
                }
                Err(e) => {
                    r.done = true;
                    return Some((Err(e.into()), r));
                }
            }
            if r.buf.is_empty() {
                // Between messages hold no buffer: a 60 KiB message must not
                // leave 60 KiB behind for the connection's life.
                r.buf = BytesMut::new();
            }
            r.waiting.0.set(r.buf.is_empty());
            let chunk = r.payload.next().await;
            r.waiting.0.set(false);
            match chunk {
                // An empty buffer takes the chunk's allocation when it is
                // the only owner (no copy), else a copy.
                Some(Ok(chunk)) if r.buf.is_empty() => r.buf = BytesMut::from(chunk),
                Some(Ok(chunk)) => r.buf.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    r.done = true;
                    return Some((Err(TransportError::Payload(e.to_string())), r));
                }
                None => return None,
            }
        }
    })
}

impl<S> Reader<S> {
    fn assemble(&mut self, frame: Frame) -> Result<Option<Incoming>, TransportError> {
        let hard_limit = self.limit.saturating_mul(READABLE_OVERSIZE_FACTOR);
        let whole = |is_text: bool, bytes: Bytes, limit: usize| {
            if bytes.len() > limit {
                Incoming::Oversize(bytes.len())
            } else if is_text {
                Incoming::Text(bytes)
            } else {
                Incoming::Binary
            }
        };
        Ok(match frame {
            Frame::Text(b) => Some(whole(true, b, self.limit)),
            Frame::Binary(b) => Some(whole(false, b, self.limit)),
            Frame::Ping(p) => Some(Incoming::Ping(p)),
            Frame::Pong(_) => Some(Incoming::Pong),
            Frame::Close(reason) => Some(Incoming::Close(reason)),
            Frame::Continuation(item) => {
                let (is_first_text, chunk, last) = match item {
                    Item::FirstText(b) => (Some(true), b, false),
                    Item::FirstBinary(b) => (Some(false), b, false),
                    Item::Continue(b) => (None, b, false),
                    Item::Last(b) => (None, b, true),
                };
                let (is_text, mut acc) = match (is_first_text, self.partial.take()) {
                    (Some(_), Some(_)) => return Err(ProtocolError::ContinuationStarted.into()),
                    (None, None) => return Err(ProtocolError::ContinuationNotStarted.into()),
                    (Some(is_text), None) => (is_text, BytesMut::new()),
                    (None, Some(partial)) => partial,
                };
                // The aggregated size is bounded like a single frame's.
                if acc.len() + chunk.len() > hard_limit {
                    return Err(TransportError::Overflow(self.limit));
                }
                acc.extend_from_slice(&chunk);
                if last {
                    Some(whole(is_text, acc.freeze(), self.limit))
                } else {
                    self.partial = Some((is_text, acc));
                    None
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::pin::pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use actix_http::h1;
    use futures_util::task::{waker, ArcWake};

    use super::*;

    /// A pong as a client sends it: masked, with `payload`.
    fn pong(payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![0x8A, 0x80 | payload.len() as u8, 1, 2, 3, 4];
        frame.extend(
            payload
                .iter()
                .zip([1, 2, 3, 4].iter().cycle())
                .map(|(b, m)| b ^ m),
        );
        frame
    }

    #[test]
    fn only_one_whole_masked_pong_is_a_pong() {
        assert!(is_pong(&pong(b"")));
        assert!(is_pong(&pong(&[7; 125])));
        let mut two = pong(b"");
        two.extend(pong(b""));
        for other in [
            two,                            // a pong and more
            pong(b"abc")[..8].to_vec(),     // part of one
            vec![0x8A, 0x00],               // unmasked
            vec![0x89, 0x80, 1, 2, 3, 4],   // a ping
            vec![0x0A, 0x80, 1, 2, 3, 4],   // not final
            vec![0xCA, 0x80, 1, 2, 3, 4],   // an extension bit
            vec![0x8A, 0xFE, 0, 126, 1, 2], // a length that needs more bytes
            Vec::new(),
        ] {
            assert!(!is_pong(&other), "{other:?}");
        }
    }

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl ArcWake for Wakes {
        fn wake_by_ref(this: &Arc<Self>) {
            this.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_pong_between_frames_is_heard_without_waking_the_reader() {
        let (outbox, _body) = super::super::outbox(4, None);
        let (mut sender, payload) = h1::Payload::create(false);
        // The dispatcher's part (vendor/actix-http, `h1/dispatcher.rs`): a
        // chunk the filter does not take is queued.
        let mut read = |chunk: &[u8]| {
            if !sender.filter_takes(chunk) {
                sender.feed_data(Bytes::copy_from_slice(chunk));
            }
        };
        let mut stream = pin!(frames(
            actix_web::dev::Payload::H1 { payload },
            1024,
            &outbox
        ));
        let wakes = Arc::new(Wakes::default());
        let waker = waker(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(stream.as_mut().poll_next(&mut cx).is_pending());

        // (No time stamped is this one.)
        outbox.shared.heard.store(u64::MAX, Ordering::Relaxed);
        read(&pong(b"hb"));
        assert_ne!(outbox.shared.heard.load(Ordering::Relaxed), u64::MAX);
        assert_eq!(wakes.0.load(Ordering::Relaxed), 0);
        assert!(stream.as_mut().poll_next(&mut cx).is_pending());

        // A binary frame (mask 0) whose last six bytes read as a pong,
        // arriving in two chunks: the second is inside a frame, not a pong.
        let mut frame = vec![0x82, 0x80 | 11, 0, 0, 0, 0];
        frame.extend(b"hello");
        let tail = pong(b"");
        frame.extend(&tail);
        read(&frame[..frame.len() - tail.len()]);
        assert_eq!(wakes.0.load(Ordering::Relaxed), 1);
        assert!(stream.as_mut().poll_next(&mut cx).is_pending());
        read(&tail);
        assert!(matches!(
            stream.as_mut().poll_next(&mut cx),
            Poll::Ready(Some(Ok(Incoming::Binary)))
        ));

        // A pong behind a chunk not read yet is the decoder's.
        read(&frame[..6]);
        read(&frame[6..]);
        read(&pong(b""));
        assert!(matches!(
            stream.as_mut().poll_next(&mut cx),
            Poll::Ready(Some(Ok(Incoming::Binary)))
        ));
        assert!(matches!(
            stream.as_mut().poll_next(&mut cx),
            Poll::Ready(Some(Ok(Incoming::Pong)))
        ));
    }
}
