//! `ApiError`: the one error type of the REST layer, rendered as the JSON
//! bodies the old Django REST Framework backend answered with.

use std::collections::BTreeMap;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use paperclip::actix::{api_v2_errors, Apiv2Schema};
use serde::Serialize;

/// `{"detail": "..."}`, DRF's body for most errors.
#[derive(Debug, Serialize, Apiv2Schema)]
pub struct ErrorBody {
    /// What went wrong, for a person.
    pub detail: String,
}

/// `{"field": ["problem", ...]}`, DRF's body for invalid input;
/// `non_field_errors` holds problems not tied to one field.
#[derive(Debug, Serialize, Apiv2Schema)]
pub struct FieldErrors {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub non_field_errors: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<Vec<String>>,
}

/// Everything a REST handler can fail with.
#[api_v2_errors(
    code = 400,
    description = "Invalid input: field-keyed lists of problems, or `non_field_errors`",
    schema = "FieldErrors",
    code = 401,
    description = "Missing, invalid, expired or revoked token",
    schema = "ErrorBody",
    code = 404,
    description = "No such resource (or not yours)",
    schema = "ErrorBody",
    code = 413,
    description = "Request body too large",
    schema = "ErrorBody",
    code = 415,
    description = "Unsupported content type",
    schema = "ErrorBody",
    code = 429,
    description = "Too many attempts; see Retry-After",
    schema = "ErrorBody",
    code = 503,
    description = "The database is too busy to take the request now; try again after Retry-After",
    schema = "ErrorBody",
    code = 500,
    description = "Internal error",
    schema = "ErrorBody"
)]
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Field-keyed validation problems (`{"username": ["This field is required."]}`).
    #[error("invalid input: {0:?}")]
    Fields(BTreeMap<String, Vec<String>>),
    /// A 400 with a `detail` message (malformed body and the like).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// Missing or unusable credentials on an authenticated endpoint.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The authenticated user may not do this.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// Missing, or not the caller's to see (the two look the same).
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("request body too large")]
    PayloadTooLarge,
    /// The body announced did not arrive within `BODY_READ_TIMEOUT_SECONDS`.
    #[error("request body not received in time")]
    BodyTimeout,
    #[error("unsupported media type {0}")]
    UnsupportedMediaType(String),
    /// Rate limited; retry after this many seconds.
    #[error("too many requests, retry after {0}s")]
    TooManyRequests(u64),
    /// A quota is used up: 429 with what to do about it.
    #[error("quota: {0}")]
    Throttled(String),
    /// The database could not take the request in time (`db::busy_in`), or
    /// too many password hashes wait for a core: a 503 with `Retry-After`,
    /// the cause logged with an id as for `Internal`.
    #[error("busy: {0}")]
    Busy(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A failure of ours; what we were doing and why are logged (the
    /// whole chain of sources), never shown.
    #[error("internal error: {context}")]
    Internal {
        context: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl ApiError {
    /// A 400 for one field.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        let mut map = BTreeMap::new();
        map.insert(field.to_string(), vec![message.into()]);
        ApiError::Fields(map)
    }

    /// A 400 with `non_field_errors` (what the web client shows on a failed login).
    pub fn non_field(message: impl Into<String>) -> Self {
        Self::field("non_field_errors", message)
    }

    /// Wraps an internal failure with what we were doing; one whose cause
    /// was a busy database (`db::busy_in`) is `Busy` instead, as over the
    /// WebSocket.
    pub fn internal(
        context: &'static str,
        error: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        let source = error.into();
        if crate::db::busy_in(source.as_ref()) {
            return ApiError::Busy(source);
        }
        ApiError::Internal { context, source }
    }
}

/// An error and its sources, outermost first, as one line for the log:
/// `storing a message: database error: connection refused`.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut next = error.source();
    while let Some(source) = next {
        line.push_str(": ");
        line.push_str(&source.to_string());
        next = source.source();
    }
    line
}

/// A short random id that ties the generic error a client sees to the
/// detailed line in the log (`error_id` in both).
pub fn new_error_id() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    id[..12].to_string()
}

impl From<sea_orm::DbErr> for ApiError {
    fn from(e: sea_orm::DbErr) -> Self {
        // A busy database becomes `Busy` there.
        ApiError::internal("database", e)
    }
}

/// Seconds a client is asked to wait after a 503 for a busy database.
const BUSY_RETRY_AFTER_SECONDS: u32 = 1;

impl From<crate::auth::AuthError> for ApiError {
    fn from(e: crate::auth::AuthError) -> Self {
        use crate::auth::AuthError;
        match e {
            AuthError::InvalidToken => ApiError::Unauthorized("Invalid token.".into()),
            AuthError::InactiveUser => ApiError::Unauthorized("User inactive or deleted.".into()),
            AuthError::Database(e) => e.into(),
            e @ AuthError::Server(_) => ApiError::internal("authentication", e),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Fields(_) | ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooManyRequests(_) | ApiError::Throttled(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let detail = |d: &str| serde_json::json!({ "detail": d });
        let body = match self {
            ApiError::Fields(map) => serde_json::json!(map),
            ApiError::BadRequest(d)
            | ApiError::Unauthorized(d)
            | ApiError::Forbidden(d)
            | ApiError::Throttled(d) => detail(d),
            ApiError::NotFound => detail("Not found."),
            ApiError::MethodNotAllowed => detail("Method not allowed."),
            ApiError::PayloadTooLarge => detail("Request body too large."),
            ApiError::BodyTimeout => detail("Request body not received in time."),
            ApiError::UnsupportedMediaType(t) => {
                detail(&format!("Unsupported media type \"{t}\" in request."))
            }
            ApiError::TooManyRequests(secs) => detail(&format!(
                "Request was throttled. Expected available in {secs} seconds."
            )),
            ApiError::Busy(source) => {
                let error_id = new_error_id();
                let error = chain(source.as_ref());
                tracing::warn!(%error_id, %error, "busy; asked the client to retry");
                detail(&format!(
                    "The server is busy; try again in a moment (error id {error_id})."
                ))
            }
            ApiError::Internal { context, source } => {
                let error_id = new_error_id();
                let error = chain(source.as_ref());
                tracing::error!(%error_id, %context, %error, "request failed");
                detail(&format!("Internal server error (error id {error_id})."))
            }
        };
        let mut response = HttpResponse::build(self.status_code()).json(body);
        match self {
            ApiError::TooManyRequests(secs) => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*secs));
            }
            ApiError::Busy(_) => {
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(BUSY_RETRY_AFTER_SECONDS),
                );
            }
            ApiError::Unauthorized(_) => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod chain_tests {
    use std::sync::Arc;

    use crate::chat::store::StoreError;

    #[test]
    fn a_failure_caused_by_a_busy_database_asks_the_client_to_retry() {
        use actix_web::ResponseError;
        let queued = crate::chat::groups::GroupError::Busy(crate::db::Busy("a group change"));
        let api = super::ApiError::internal("group change", queued);
        assert_eq!(
            api.status_code(),
            actix_web::http::StatusCode::SERVICE_UNAVAILABLE
        );
        let response = api.error_response();
        assert_eq!(
            response.headers().get("retry-after").map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
        let failed = super::ApiError::internal("group change", "the server stopped");
        assert_eq!(
            failed.status_code(),
            actix_web::http::StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn the_log_line_names_every_source() {
        let e = StoreError::Database(Arc::new(sea_orm::DbErr::Custom("disk full".into())));
        assert_eq!(super::chain(&e), "database: Custom Error: disk full");
        let api = super::ApiError::internal("storing a message", e);
        assert_eq!(
            super::chain(&api),
            "internal error: storing a message: database: Custom Error: disk full"
        );
    }
}
