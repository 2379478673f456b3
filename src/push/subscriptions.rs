//! The browsers' push subscriptions (PROTOCOL.md B11): checked before they
//! are stored, since the server will POST to whatever endpoint one names.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::Utc;
use entity::push_subscription;
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set,
};
use serde::Deserialize;

use super::WebPush;
use crate::chat::protocol::UserId;

/// Devices one user may have subscribed; a new one beyond replaces the oldest.
pub const MAX_PER_USER: usize = 10;
/// The longest endpoint stored (real ones are under 300 characters).
pub const MAX_ENDPOINT: usize = 512;

/// A browser's `PushSubscription.toJSON()`.
#[derive(Debug, Deserialize, paperclip::actix::Apiv2Schema)]
pub struct SubscriptionJson {
    pub endpoint: Option<String>,
    pub keys: Option<SubscriptionKeys>,
}

/// The subscription's keys (RFC 8291): base64url.
#[derive(Debug, Deserialize, paperclip::actix::Apiv2Schema)]
pub struct SubscriptionKeys {
    pub p256dh: Option<String>,
    pub auth: Option<String>,
}

/// Why a subscription was refused: the field and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Refused {
    pub field: &'static str,
    pub message: String,
}

fn refused(field: &'static str, message: impl Into<String>) -> Refused {
    Refused {
        field,
        message: message.into(),
    }
}

/// A subscription that may be stored: an endpoint at an allowed push
/// service, a P-256 public key and a 16-byte secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub endpoint: String,
    pub p256dh: String,
    pub auth: String,
}

impl WebPush {
    /// Checks a subscription: the endpoint's scheme and host (only the push
    /// services configured), its length, and that the keys are keys.
    pub fn check(&self, json: SubscriptionJson) -> Result<Checked, Refused> {
        let endpoint = json
            .endpoint
            .ok_or_else(|| refused("endpoint", "This field is required."))?;
        self.check_endpoint(&endpoint)?;
        let keys = json
            .keys
            .ok_or_else(|| refused("keys", "This field is required."))?;
        let p256dh = keys.p256dh.unwrap_or_default();
        let point = URL_SAFE_NO_PAD.decode(p256dh.trim_end_matches('=')).ok();
        if point.is_none_or(|p| p.len() != 65 || p256::PublicKey::from_sec1_bytes(&p).is_err()) {
            return Err(refused(
                "keys",
                "p256dh is not a P-256 public key in base64url.",
            ));
        }
        let auth = keys.auth.unwrap_or_default();
        let secret = URL_SAFE_NO_PAD.decode(auth.trim_end_matches('=')).ok();
        if secret.is_none_or(|s| s.len() != 16) {
            return Err(refused("keys", "auth is not 16 bytes in base64url."));
        }
        Ok(Checked {
            endpoint,
            p256dh: p256dh.trim_end_matches('=').to_string(),
            auth: auth.trim_end_matches('=').to_string(),
        })
    }

    fn check_endpoint(&self, endpoint: &str) -> Result<(), Refused> {
        if endpoint.len() > MAX_ENDPOINT {
            return Err(refused(
                "endpoint",
                format!("Ensure this field has no more than {MAX_ENDPOINT} characters."),
            ));
        }
        let uri: awc::http::Uri = endpoint
            .parse()
            .map_err(|_| refused("endpoint", "Enter a valid URL."))?;
        let scheme_ok = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => self.allow_http,
            _ => false,
        };
        if !scheme_ok {
            return Err(refused("endpoint", "The endpoint must be an https URL."));
        }
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
        let host = uri.host().unwrap_or_default().to_ascii_lowercase();
        if authority.contains('@') || !self.host_allowed(&host) {
            return Err(refused(
                "endpoint",
                "This server does not send to that push service.",
            ));
        }
        Ok(())
    }

    fn host_allowed(&self, host: &str) -> bool {
        !host.is_empty()
            && self
                .hosts
                .iter()
                .any(|allowed| match allowed.strip_prefix("*.") {
                    Some(domain) => host
                        .strip_suffix(domain)
                        .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
                    None => host == allowed,
                })
    }
}

/// Stores `user`'s subscription (an endpoint already stored moves to them
/// with its new keys: one device, whoever signed in on it last), and drops
/// their oldest beyond `MAX_PER_USER`.
pub async fn save(db: &DatabaseConnection, user: UserId, checked: Checked) -> Result<(), DbErr> {
    push_subscription::Entity::insert(push_subscription::ActiveModel {
        user_id: Set(user.0),
        endpoint: Set(checked.endpoint),
        p256dh: Set(checked.p256dh),
        auth: Set(checked.auth),
        created_at: Set(Utc::now()),
        ..Default::default()
    })
    .on_conflict(
        OnConflict::column(push_subscription::Column::Endpoint)
            .update_columns([
                push_subscription::Column::UserId,
                push_subscription::Column::P256dh,
                push_subscription::Column::Auth,
                push_subscription::Column::CreatedAt,
            ])
            .to_owned(),
    )
    .exec_without_returning(db)
    .await?;
    let mine: Vec<i64> = push_subscription::Entity::find()
        .select_only()
        .column(push_subscription::Column::Id)
        .filter(push_subscription::Column::UserId.eq(user.0))
        .order_by_desc(push_subscription::Column::CreatedAt)
        .order_by_desc(push_subscription::Column::Id)
        .into_tuple()
        .all(db)
        .await?;
    let beyond: Vec<i64> = mine.into_iter().skip(MAX_PER_USER).collect();
    if !beyond.is_empty() {
        push_subscription::Entity::delete_many()
            .filter(push_subscription::Column::Id.is_in(beyond))
            .exec(db)
            .await?;
    }
    Ok(())
}

/// Removes `user`'s subscription of `endpoint` (another user's stays).
pub async fn remove(db: &DatabaseConnection, user: UserId, endpoint: &str) -> Result<(), DbErr> {
    push_subscription::Entity::delete_many()
        .filter(push_subscription::Column::UserId.eq(user.0))
        .filter(push_subscription::Column::Endpoint.eq(endpoint))
        .exec(db)
        .await?;
    Ok(())
}

/// Removes every subscription of `user` (signing out every device).
pub async fn remove_all<C: sea_orm::ConnectionTrait>(db: &C, user: UserId) -> Result<(), DbErr> {
    push_subscription::Entity::delete_many()
        .filter(push_subscription::Column::UserId.eq(user.0))
        .exec(db)
        .await?;
    Ok(())
}
