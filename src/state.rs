//! `AppState`: what every REST handler and every WebSocket session of an
//! instance shares. Built once in `lib.rs`; handlers take it as
//! `web::Data<AppState>`, sessions hold the same `Arc`.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use sea_orm::DatabaseConnection;

use crate::api::throttle::AttemptThrottle;
use crate::auth::TokenKeys;
use crate::bus::Bus;
use crate::chat::address_cap::AddressCap;
use crate::chat::groups::{ChangeBudget, Groups};
use crate::chat::membership::{Audience, Membership};
use crate::chat::presence::Presence;
use crate::chat::protocol::{ChatId, UserId};
use crate::chat::read_marks::ReadMarks;
use crate::chat::search_slots::{SearchSlot, SearchSlots};
use crate::chat::server::ChatServer;
use crate::chat::store;
use crate::chat::writer::MessageWriter;
use crate::client_address::TrustedProxies;
use crate::config::Settings;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::rate_limit::{AddressRateLimit, ChatRateLimit, TypistRateLimit, UserRateLimit};

/// Typing notices relayed per conversation and second (per instance): in a
/// group, however many people type, a member gets at most this many.
pub const TYPING_RELAYS_PER_SECOND: u32 = 2;

pub struct AppState {
    pub settings: Arc<Settings>,
    pub db: DatabaseConnection,
    pub keys: TokenKeys,
    /// The ChatServer: who is connected here, and the routing of events.
    pub server: Addr<ChatServer>,
    pub presence: Arc<Presence>,
    /// Each connected user's conversations, checked without the database.
    pub membership: Arc<Membership>,
    /// The bridge to the other instances (for its subscription barrier).
    pub bus: Bus,
    /// Commits messages and changes to them, for sessions and REST alike.
    pub writer: MessageWriter,
    /// Commits read marks in batches.
    pub read_marks: ReadMarks,
    /// What contact lists share: the groups' rosters, and how many are
    /// assembled at once (`DB_POOL_SIZE`).
    pub contact_lists: store::ContactLists,
    /// Group requests, with their change budgets.
    pub groups: Groups,
    pub metrics: Metrics,
    /// The bounds a session enforces.
    pub limits: Limits,
    /// Whose `X-Forwarded-For` is believed.
    pub proxies: TrustedProxies,
    /// Set once the instance is shutting down: `/readyz` answers 503 and
    /// new sockets are refused.
    pub draining: Arc<AtomicBool>,
    /// Set when Redis is configured: checked by `/readyz`.
    pub redis: Option<crate::bus::target::RedisTarget>,
    /// Web Push (B11), when a VAPID key is configured.
    pub push: Option<Arc<crate::push::WebPush>>,
    /// Where attachments are kept (B9), and their limits.
    pub attachments: Arc<crate::attachments::Attachments>,
    /// SQLite's search index (None on the other databases).
    pub search_index: Option<Arc<crate::chat::search_index::SearchIndex>>,

    // What one client may make the server do (docs/SECURITY.md).
    /// Failed logins, per (username, client address).
    pub login_throttle: AttemptThrottle,
    /// Wrong `old_password`s of `POST /api/password/`, per (user, client address).
    pub password_throttle: AttemptThrottle,
    /// Registrations per client address.
    pub registration_limit: AddressRateLimit,
    /// Authenticated REST requests per user (all of them, whatever the
    /// endpoint), at the WebSocket's request rate; counted before the
    /// token's database checks.
    pub rest_limit: UserRateLimit,
    /// WebSocket requests per user over all their sockets: one socket's
    /// rate (`RATE_LIMIT_PER_SECOND`), in bursts of two sockets' worth
    /// (`RATE_LIMIT_BURST`), so opening more sockets (up to
    /// `MAX_SESSIONS_PER_USER`) does not multiply what one person may ask
    /// of the server.
    pub socket_requests: UserRateLimit,
    /// New contacts, blocks and unblocks per user, over REST and every
    /// socket together, at the WebSocket's request rate: opening sockets
    /// gains nothing.
    pub change_limit: UserRateLimit,
    /// Searches per user (`SEARCHES_PER_MINUTE`, in bursts of a third of
    /// that), over REST and every socket. A search reads the full-text
    /// index, a few milliseconds of the database's work (far more for a
    /// common word on MySQL), so searching in a loop at the request rate
    /// kept the server busy for everyone else; a person typing into the
    /// search box sends a few a second, for a moment.
    pub search_limit: UserRateLimit,
    /// Searches running at once, one per user (`SEARCHES_AT_ONCE`).
    pub search_slots: Arc<SearchSlots>,
    /// `typing` relays per conversation (`TYPING_RELAYS_PER_SECOND`).
    pub typing_relays: ChatRateLimit,
    /// `typing` relays per person and conversation (one a second), so one
    /// member typing without pause cannot take the conversation's relays.
    pub typists: TypistRateLimit,
    /// Deliveries each user's messages and changes may cause
    /// (`FANOUT_PER_SECOND`), over REST and every socket together.
    pub fanout: UserRateLimit,
    /// Sockets not yet authorized, per client address.
    pub unauthenticated: Arc<AddressCap>,
    /// All sockets, per client address (`MAX_SOCKETS_PER_ADDRESS`).
    pub sockets: Arc<AddressCap>,
}

/// The running pieces `AppState` is built around (lib.rs starts them).
pub struct Shared {
    pub db: DatabaseConnection,
    /// The group changes' writes (`db::connect_request_writes`).
    pub request_writes: DatabaseConnection,
    pub server: Addr<ChatServer>,
    pub presence: Arc<Presence>,
    pub membership: Arc<Membership>,
    pub bus: Bus,
    pub writer: MessageWriter,
    pub read_marks: ReadMarks,
    pub metrics: Metrics,
    pub draining: Arc<AtomicBool>,
    pub redis: Option<crate::bus::target::RedisTarget>,
    pub push: Option<Arc<crate::push::WebPush>>,
    pub attachments: Arc<crate::attachments::Attachments>,
    /// SQLite's search index (None on the other databases).
    pub search_index: Option<Arc<crate::chat::search_index::SearchIndex>>,
}

impl AppState {
    /// The state around `shared`, with every limit and budget `settings`
    /// sets.
    pub fn new(settings: &Settings, keys: TokenKeys, shared: Shared) -> Self {
        let limits = &settings.limits;
        let auth = &settings.auth;
        let login_window = Duration::from_secs(auth.login_window_seconds);
        AppState {
            settings: Arc::new(settings.clone()),
            keys,
            groups: Groups {
                db: shared.db.clone(),
                writes: shared.request_writes,
                budget: Arc::new(ChangeBudget::new(
                    limits.group_changes_per_minute,
                    limits.group_changes_per_minute_per_group,
                )),
                max_members: limits.max_group_members,
                max_groups_per_user: limits.max_groups_per_user,
                max_pending_invitations: limits.max_pending_invitations,
            },
            db: shared.db,
            server: shared.server,
            presence: shared.presence,
            membership: shared.membership,
            bus: shared.bus,
            writer: shared.writer,
            read_marks: shared.read_marks,
            contact_lists: store::ContactLists::new(settings.database.db_pool_size as usize),
            metrics: shared.metrics,
            limits: Limits::from_settings(settings),
            proxies: settings.server.trusted_proxies(),
            draining: shared.draining,
            redis: shared.redis,
            push: shared.push,
            attachments: shared.attachments,
            search_index: shared.search_index,
            login_throttle: AttemptThrottle::new(auth.login_max_attempts, login_window),
            password_throttle: AttemptThrottle::new(auth.login_max_attempts, login_window),
            registration_limit: AddressRateLimit::new(
                auth.registration_burst,
                auth.registration_per_minute,
            ),
            rest_limit: UserRateLimit::new(
                limits.rate_limit_burst,
                limits.rate_limit_per_second.saturating_mul(60),
            ),
            socket_requests: UserRateLimit::new(
                limits.rate_limit_burst.saturating_mul(2),
                limits.rate_limit_per_second.saturating_mul(60),
            ),
            change_limit: UserRateLimit::new(
                limits.rate_limit_burst,
                limits.rate_limit_per_second.saturating_mul(60),
            ),
            typing_relays: ChatRateLimit::new(
                TYPING_RELAYS_PER_SECOND,
                TYPING_RELAYS_PER_SECOND * 60,
            ),
            typists: TypistRateLimit::new(1, 60),
            search_slots: SearchSlots::new(limits.searches_at_once),
            search_limit: UserRateLimit::new(
                (limits.searches_per_minute / 3).max(1),
                limits.searches_per_minute,
            ),
            fanout: UserRateLimit::new(
                limits.fanout_per_second.saturating_mul(2),
                limits.fanout_per_second.saturating_mul(60),
            ),
            unauthenticated: AddressCap::new(limits.max_unauthenticated_per_address),
            sockets: AddressCap::new(limits.max_sockets_per_address),
        }
    }

    /// Counts a new contact, block or unblock against the caller's allowance.
    pub fn allow_change(&self, user: UserId) -> Result<(), ApiError> {
        self.change_limit
            .take(user)
            .map_err(ApiError::TooManyRequests)
    }

    /// A REST search (of messages or people) starting: a place in the
    /// caller's line (429 with `Retry-After: 1` when it is full,
    /// uncharged), the caller's allowance (`SEARCHES_PER_MINUTE`; 429 past
    /// it), then the wait for the caller's earlier searches and a slot
    /// (`SEARCHES_AT_ONCE`). The slot is given back when dropped, once the
    /// search is answered.
    pub async fn start_search(&self, user: UserId) -> Result<SearchSlot, ApiError> {
        let in_line = self
            .search_slots
            .enter(user)
            .ok_or(ApiError::TooManyRequests(1))?;
        self.search_limit
            .take(user)
            .map_err(ApiError::TooManyRequests)?;
        Ok(in_line.turn().await)
    }

    /// Charges `user`'s fan-out budget (`FANOUT_PER_SECOND`, shared with
    /// every socket) for an event in `chat`: one unit per other member.
    pub async fn charge_fanout(&self, user: UserId, chat: ChatId) -> Result<(), ApiError> {
        let audience = self
            .audience(chat)
            .await
            .map_err(|e| ApiError::internal("fan-out budget", e))?;
        self.take_fanout(user, audience.deliveries())
    }

    /// Charges `user`'s fan-out budget for `chat`'s member list as for a
    /// message to it. Someone not in it (or a conversation that does not
    /// exist) is 404 first, uncharged; what the database says is not
    /// remembered, so asking for others' conversations leaves nothing.
    pub async fn charge_member_list(&self, user: UserId, chat: ChatId) -> Result<(), ApiError> {
        let failed = |e| ApiError::internal("member list", e);
        let known = self.membership.is_current() && self.membership.is_member(user, chat);
        if !known
            && !store::is_member(&self.db, user, chat)
                .await
                .map_err(failed)?
        {
            return Err(ApiError::NotFound);
        }
        let audience = match self.membership.audience(chat) {
            Some(audience) => audience,
            None => store::audience_of(&self.db, chat)
                .await
                .map_err(failed)?
                .ok_or(ApiError::NotFound)?,
        };
        self.take_fanout(user, audience.deliveries())
    }

    /// Charges `user`'s fan-out budget for a list of their conversations:
    /// one unit per conversation (each costs the server about what a
    /// delivery does), counted before the list is read. 429 past it.
    pub async fn charge_contact_list(&self, user: UserId) -> Result<(), ApiError> {
        let cost = match self.membership.contact_list_cost(user) {
            Some(cost) => cost,
            None => store::conversation_count(&self.db, user)
                .await
                .map_err(|e| ApiError::internal("contact list", e))?,
        };
        self.take_fanout(user, cost)
    }

    /// `cost` from `user`'s fan-out budget; 429 past it.
    fn take_fanout(&self, user: UserId, cost: u32) -> Result<(), ApiError> {
        self.fanout
            .take_many(user, cost)
            .map_err(ApiError::TooManyRequests)
    }

    /// Who an event in `chat` reaches: what the membership record knows,
    /// else the database (remembered for next time).
    pub async fn audience(&self, chat: ChatId) -> Result<Audience, sea_orm::DbErr> {
        if let Some(audience) = self.membership.audience(chat) {
            return Ok(audience);
        }
        let audience = store::audience_of(&self.db, chat)
            .await?
            .unwrap_or(Audience::Direct);
        self.membership.set_audience(chat, Some(audience));
        Ok(audience)
    }
}

/// The bounds a session enforces, from `Settings`.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_frame_bytes: usize,
    pub max_message_chars: usize,
    pub rate_per_second: u32,
    pub rate_burst: u32,
    pub outbox_capacity: usize,
    pub max_unauthenticated_per_address: usize,
    /// How long a new connection has to authorize (A2.2).
    pub authorization_timeout: Duration,
    /// Pings and the silence limit (B5).
    pub heartbeat: crate::chat::timers::Timing,
}

impl Limits {
    pub fn from_settings(settings: &Settings) -> Self {
        Limits {
            max_frame_bytes: settings.limits.max_frame_bytes,
            max_message_chars: settings.limits.max_message_chars,
            rate_per_second: settings.limits.rate_limit_per_second,
            rate_burst: settings.limits.rate_limit_burst,
            outbox_capacity: settings.limits.outbox_capacity,
            max_unauthenticated_per_address: settings.limits.max_unauthenticated_per_address,
            authorization_timeout: Duration::from_secs(
                settings.server.authorization_timeout_seconds,
            ),
            heartbeat: crate::chat::timers::Timing {
                interval: Duration::from_secs(settings.server.heartbeat_seconds),
                client_timeout: Duration::from_secs(settings.server.client_timeout_seconds),
            },
        }
    }
}
