//! The timers of all the sessions of one worker thread, from one task:
//! heartbeats (PROTOCOL.md B5) and token expiry.
//!
//! A timer per session made 19,000 idle sessions cost 12–18 % of a core on
//! two vCPUs (BENCHMARKS.md, "Per-connection memory"): every ping was its
//! own timer in tokio's wheel, its own wake-up of the worker out of
//! `epoll_wait`, and its own wake-up of the session's actor, whose context
//! also polled its token's timer on every wake-up. Here each worker thread
//! keeps its sessions in `SLOTS` slots and one task visits a slot every
//! `Timing::interval / SLOTS`: it queues a ping straight into each
//! session's outbox (the actor is not woken) and tells a session's actor only
//! when its client has been silent too long or stopped reading. A worker's
//! pings go out in `SLOTS` small bursts a period, so their writes, and the
//! pongs that come back, share wake-ups without delaying live messages. The
//! same task closes sessions whose token expired, within one step.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix::WeakRecipient;

use super::messages::SessionId;
use super::socket::{Outbox, Queued};

/// Slots a period is split into: each session is pinged once a period, at
/// its slot's turn, so a worker's pings go out in this many bursts. Fewer
/// and larger bursts would share more wake-ups, but a message arriving
/// during one waits for it (a burst of 1,000 pings is about 15 ms here).
const SLOTS: usize = 100;

/// How often clients are pinged, and how long a silent one is kept (B5:
/// 10 s and 30 s; `HEARTBEAT_SECONDS`, `CLIENT_TIMEOUT_SECONDS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub interval: Duration,
    pub client_timeout: Duration,
}

impl Timing {
    /// How often the task runs: one slot's turn, and the expiries due.
    fn step(self) -> Duration {
        self.interval / SLOTS as u32
    }
}

/// Why a session's heartbeat gave up on its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Nothing heard for longer than `Timing::client_timeout`.
    Silent,
    /// The ping did not fit: the client stopped reading (the outbox has
    /// already queued the close).
    Overflow,
}

/// Tells a session that its heartbeat failed; it closes the connection.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct HeartbeatFailed(pub Failure);

/// Tells a session that the token it authorized with has expired.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct TokenExpired;

struct Entry {
    id: SessionId,
    outbox: Outbox,
    /// Weak, so a registered session still stops when its connection ends.
    session: WeakRecipient<HeartbeatFailed>,
}

/// One worker thread's sessions: by heartbeat slot, and by token expiry.
struct Wheel {
    slots: [Vec<Entry>; SLOTS],
    /// The slot visited next.
    cursor: usize,
    expiries: BTreeMap<(Instant, SessionId), WeakRecipient<TokenExpired>>,
}

impl Default for Wheel {
    fn default() -> Self {
        Wheel {
            slots: std::array::from_fn(|_| Vec::new()),
            cursor: 0,
            expiries: BTreeMap::new(),
        }
    }
}

impl Wheel {
    /// Adds a session to the slot just visited, whose next turn is a whole
    /// period away; returns the slot.
    fn add(
        &mut self,
        id: SessionId,
        outbox: Outbox,
        session: WeakRecipient<HeartbeatFailed>,
    ) -> usize {
        let slot = (self.cursor + SLOTS - 1) % SLOTS;
        self.slots[slot].push(Entry {
            id,
            outbox,
            session,
        });
        slot
    }

    /// Forgets a session that ended (its entry holds the outbox's channel).
    fn remove(&mut self, slot: usize, id: SessionId) {
        let slot = &mut self.slots[slot];
        if let Some(at) = slot.iter().position(|entry| entry.id == id) {
            slot.swap_remove(at);
        }
    }

    /// Pings the sessions of the slot whose turn it is, unless their client
    /// has been silent for longer than `client_timeout`; drops the entries
    /// of connections that ended, and of sessions told they failed.
    fn turn(&mut self, client_timeout: Duration) {
        let slot = &mut self.slots[self.cursor];
        self.cursor = (self.cursor + 1) % SLOTS;
        slot.retain(|entry| {
            if entry.outbox.is_closing() {
                return false;
            }
            let failure = if entry.outbox.silent_for() > client_timeout {
                Failure::Silent
            } else {
                match entry.outbox.send_ping() {
                    Queued::Yes => return true,
                    Queued::Closed => return false,
                    Queued::Overflow => Failure::Overflow,
                }
            };
            if let Some(session) = entry.session.upgrade() {
                session.do_send(HeartbeatFailed(failure));
            }
            false
        });
    }

    /// Tells the sessions whose token expired by `now`, and forgets them.
    fn expire(&mut self, now: Instant) {
        while let Some(entry) = self.expiries.first_entry() {
            if entry.key().0 > now {
                break;
            }
            if let Some(session) = entry.remove().upgrade() {
                session.do_send(TokenExpired);
            }
        }
    }
}

thread_local! {
    /// This worker thread's wheel, while its task runs. Weak because the
    /// task owns it: a runtime that ends (a test's) takes both along.
    static WHEEL: RefCell<Weak<RefCell<Wheel>>> = const { RefCell::new(Weak::new()) };
}

/// The current worker thread's wheel; starts its task the first time, with
/// `timing` (a worker thread serves one server, so every session of a
/// thread has the same).
fn wheel(timing: Timing) -> Rc<RefCell<Wheel>> {
    WHEEL.with(|current| {
        let mut current = current.borrow_mut();
        current.upgrade().unwrap_or_else(|| {
            let wheel = Rc::new(RefCell::new(Wheel::default()));
            *current = Rc::downgrade(&wheel);
            actix::spawn(run(wheel.clone(), timing));
            wheel
        })
    })
}

/// A session's place under its worker thread's heartbeat, held by the
/// session: dropping it (the session ends) forgets the session at once.
#[derive(Debug)]
pub struct Heartbeat {
    slot: usize,
    id: SessionId,
}

/// Puts a session under the current worker thread's heartbeat: its client
/// is pinged every `timing.interval` (the first time one period from now),
/// and `session` gets `HeartbeatFailed` once the client has been silent for
/// `timing.client_timeout` or stops reading. Call from within an actix
/// arbiter, on the session's thread (a session's `started`).
pub fn register(
    id: SessionId,
    outbox: Outbox,
    session: WeakRecipient<HeartbeatFailed>,
    timing: Timing,
) -> Heartbeat {
    let slot = wheel(timing).borrow_mut().add(id, outbox, session);
    Heartbeat { slot, id }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        with_wheel(|wheel| wheel.remove(self.slot, self.id));
    }
}

/// Runs `f` on this thread's wheel, if there is one and it is not in the
/// middle of its own turn (which drops no session, so no handle); an entry
/// left behind then is dropped at its next turn (its outbox is closed).
fn with_wheel(f: impl FnOnce(&mut Wheel)) {
    let _ = WHEEL.try_with(|current| {
        if let Some(wheel) = current.borrow().upgrade() {
            if let Ok(mut wheel) = wheel.try_borrow_mut() {
                f(&mut wheel);
            }
        }
    });
}

/// A session's token expiry, pending while this is held: dropping it (the
/// session ends, or authorizes again) cancels it.
#[derive(Debug)]
pub struct Expiry {
    key: (Instant, SessionId),
}

/// Sends `session` a `TokenExpired` at `at` (at most one step late). Call
/// from within an actix arbiter, on the session's thread.
pub fn expire_at(
    at: Instant,
    id: SessionId,
    session: WeakRecipient<TokenExpired>,
    timing: Timing,
) -> Expiry {
    let key = (at, id);
    wheel(timing).borrow_mut().expiries.insert(key, session);
    Expiry { key }
}

impl Drop for Expiry {
    fn drop(&mut self) {
        with_wheel(|wheel| {
            wheel.expiries.remove(&self.key);
        });
    }
}

/// The task that turns a worker thread's wheel.
async fn run(wheel: Rc<RefCell<Wheel>>, timing: Timing) {
    let step = timing.step();
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + step, step);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let mut wheel = wheel.borrow_mut();
        wheel.turn(timing.client_timeout);
        wheel.expire(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use futures_util::{Stream, StreamExt};

    use super::*;
    use crate::chat::socket;

    /// B5's timing.
    const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
    const TIMING: Timing = Timing {
        interval: Duration::from_secs(10),
        client_timeout: CLIENT_TIMEOUT,
    };

    /// What a session was told.
    #[derive(Debug, PartialEq)]
    enum Told {
        Failed(Failure),
        Expired,
    }

    /// Stands in for a session: records what it is told.
    #[derive(Default)]
    struct Session(Vec<Told>);

    impl Actor for Session {
        type Context = Context<Self>;
    }

    impl Handler<HeartbeatFailed> for Session {
        type Result = ();
        fn handle(&mut self, HeartbeatFailed(failure): HeartbeatFailed, _: &mut Context<Self>) {
            self.0.push(Told::Failed(failure));
        }
    }

    impl Handler<TokenExpired> for Session {
        type Result = ();
        fn handle(&mut self, _: TokenExpired, _: &mut Context<Self>) {
            self.0.push(Told::Expired);
        }
    }

    /// Hands over what the session has been told so far. The mailbox keeps
    /// order, so it is answered after everything the wheel sent before it:
    /// a barrier, where a wait of fixed length would prove nothing.
    #[derive(Message)]
    #[rtype(result = "Vec<Told>")]
    struct Drain;

    impl Handler<Drain> for Session {
        type Result = MessageResult<Drain>;
        fn handle(&mut self, _: Drain, _: &mut Context<Self>) -> Self::Result {
            MessageResult(std::mem::take(&mut self.0))
        }
    }

    /// A running stand-in session.
    fn session() -> Addr<Session> {
        Session::default().start()
    }

    /// What `session` has been told since last asked.
    async fn told(session: &Addr<Session>) -> Vec<Told> {
        session
            .send(Drain)
            .await
            .expect("the stand-in session runs")
    }

    const PING: &[u8] = &[0x89, 0x00];

    /// What the client's side of the connection has been sent so far.
    async fn written<S>(body: &mut S) -> Vec<u8>
    where
        S: Stream<Item = Result<actix_web::web::Bytes, std::convert::Infallible>> + Unpin,
    {
        let mut out = Vec::new();
        while let Ok(Some(Ok(chunk))) =
            tokio::time::timeout(Duration::from_millis(50), body.next()).await
        {
            out.extend_from_slice(&chunk);
        }
        out
    }

    fn turns(wheel: &mut Wheel, n: usize, client_timeout: Duration) {
        for _ in 0..n {
            wheel.turn(client_timeout);
        }
    }

    #[actix_rt::test]
    async fn each_session_is_pinged_once_a_period_a_whole_period_after_it_joined() {
        let mut wheel = Wheel::default();
        let session = session();
        let (outbox, mut body) = socket::outbox(8, None);
        wheel.turn(CLIENT_TIMEOUT);
        wheel.add(1, outbox, session.downgrade().recipient());
        turns(&mut wheel, SLOTS - 1, CLIENT_TIMEOUT);
        let early = written(&mut body).await;
        assert_eq!(early, b"", "pinged before its period was over");
        wheel.turn(CLIENT_TIMEOUT);
        assert_eq!(written(&mut body).await, PING);
        turns(&mut wheel, SLOTS, CLIENT_TIMEOUT);
        assert_eq!(written(&mut body).await, PING);
        assert_eq!(told(&session).await, []);
    }

    #[actix_rt::test]
    async fn a_silent_client_is_reported_once_and_forgotten() {
        let mut wheel = Wheel::default();
        let session = session();
        let (outbox, mut body) = socket::outbox(8, None);
        wheel.add(1, outbox.clone(), session.downgrade().recipient());
        // Silence is counted in milliseconds; any is too long here.
        tokio::time::sleep(Duration::from_millis(5)).await;
        turns(&mut wheel, 2 * SLOTS, Duration::ZERO);
        assert_eq!(told(&session).await, [Told::Failed(Failure::Silent)]);
        let pinged = written(&mut body).await;
        assert_eq!(pinged, b"", "a silent client is not pinged");
        assert!(wheel.slots.iter().all(Vec::is_empty));
    }

    #[actix_rt::test]
    async fn a_client_that_stops_reading_is_reported_when_its_ping_does_not_fit() {
        let mut wheel = Wheel::default();
        let session = session();
        let (outbox, _body) = socket::outbox(1, None);
        assert_eq!(outbox.send_text("{}".into()), Queued::Yes);
        wheel.add(1, outbox.clone(), session.downgrade().recipient());
        turns(&mut wheel, SLOTS, CLIENT_TIMEOUT);
        assert_eq!(told(&session).await, [Told::Failed(Failure::Overflow)]);
        assert!(outbox.is_closing());
        assert!(wheel.slots.iter().all(Vec::is_empty));
    }

    #[actix_rt::test]
    async fn an_ended_connection_is_forgotten_without_a_ping_silent_or_not() {
        for client_timeout in [CLIENT_TIMEOUT, Duration::ZERO] {
            let mut wheel = Wheel::default();
            let session = session();
            let (outbox, body) = socket::outbox(8, None);
            wheel.add(1, outbox, session.downgrade().recipient());
            drop(body);
            tokio::time::sleep(Duration::from_millis(5)).await;
            turns(&mut wheel, SLOTS, client_timeout);
            assert!(wheel.slots.iter().all(Vec::is_empty));
            assert_eq!(told(&session).await, [], "timeout {client_timeout:?}");
        }
    }

    #[actix_rt::test]
    async fn a_closing_connection_is_forgotten_without_a_ping_silent_or_not() {
        for client_timeout in [CLIENT_TIMEOUT, Duration::ZERO] {
            let mut wheel = Wheel::default();
            let session = session();
            let (outbox, mut body) = socket::outbox(8, None);
            wheel.add(1, outbox.clone(), session.downgrade().recipient());
            outbox.close(actix_http::ws::CloseCode::Away, "bye");
            tokio::time::sleep(Duration::from_millis(5)).await;
            turns(&mut wheel, SLOTS, client_timeout);
            assert!(wheel.slots.iter().all(Vec::is_empty));
            assert_eq!(told(&session).await, [], "timeout {client_timeout:?}");
            // The close frame (1001, "bye") and no ping.
            let written = written(&mut body).await;
            assert_eq!(written, [0x88, 0x05, 0x03, 0xE9, b'b', b'y', b'e']);
        }
    }

    #[actix_rt::test]
    async fn a_token_expires_at_its_time_and_a_cancelled_one_never() {
        let mut wheel = Wheel::default();
        let session = session();
        let start = Instant::now();
        for (id, secs) in [(1, 5), (2, 10)] {
            let at = start + Duration::from_secs(secs);
            let recipient = session.downgrade().recipient();
            wheel.expiries.insert((at, id), recipient);
        }
        wheel.expire(start + Duration::from_secs(4));
        assert_eq!(told(&session).await, []);
        wheel.expire(start + Duration::from_secs(5));
        assert_eq!(told(&session).await, [Told::Expired]);
        assert_eq!(wheel.expiries.len(), 1);
        wheel.expiries.clear();
        wheel.expire(start + Duration::from_secs(20));
        assert_eq!(told(&session).await, []);
    }

    #[actix_rt::test]
    async fn dropping_an_expiry_cancels_it() {
        let session = session();
        let soon = Instant::now() + Duration::from_millis(100);
        let kept = expire_at(soon, 1, session.downgrade().recipient(), TIMING);
        let cancelled = expire_at(soon, 2, session.downgrade().recipient(), TIMING);
        drop(cancelled);
        assert_eq!(wheel(TIMING).borrow().expiries.len(), 1);
        // The wheel's task tells the session (within one step of the time);
        // the cancelled one never comes, as the wheel holds only the other.
        let mut heard = Vec::new();
        while heard.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
            heard = told(&session).await;
        }
        assert_eq!(heard, [Told::Expired]);
        assert!(wheel(TIMING).borrow().expiries.is_empty());
        drop(kept);
    }

    #[actix_rt::test]
    async fn a_session_that_ends_is_forgotten_at_once() {
        let session = session();
        let (outbox, _body) = socket::outbox(8, None);
        let kept = register(1, outbox.clone(), session.downgrade().recipient(), TIMING);
        let ended = register(2, outbox, session.downgrade().recipient(), TIMING);
        let registered = || {
            wheel(TIMING)
                .borrow()
                .slots
                .iter()
                .map(Vec::len)
                .sum::<usize>()
        };
        assert_eq!(registered(), 2);
        drop(ended);
        assert_eq!(registered(), 1);
        drop(kept);
        assert_eq!(registered(), 0);
    }
}
