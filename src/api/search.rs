//! `GET /api/search/` (PROTOCOL.md B10): the WebSocket's `search` over REST.

use paperclip::actix::{api_v2_operation, web, Apiv2Schema};
use serde::Deserialize;

use crate::auth::AuthUser;
use crate::chat::protocol::{ChatId, SearchPage, UserId};
use crate::chat::search::{self, Search};
use crate::error::ApiError;
use crate::state::AppState;

/// What to search for, and where.
#[derive(Debug, Deserialize, Apiv2Schema)]
pub struct SearchParams {
    /// The words; every one must match, the last as a prefix, case and
    /// accents ignored.
    pub q: Option<String>,
    /// Only this conversation (its `pk`); every conversation of the
    /// caller's otherwise.
    pub id: Option<String>,
    /// Messages with ids below this one (the next page).
    pub before: Option<i64>,
    /// Page size, 1 to 50 (default 20).
    pub limit: Option<u64>,
}

/// Messages of the caller's conversations holding every word, newest first.
#[api_v2_operation(tags(Messages))]
pub async fn search(
    state: web::Data<AppState>,
    user: AuthUser,
    params: web::Query<SearchParams>,
) -> Result<web::Json<SearchPage>, ApiError> {
    let params = params.into_inner();
    let scope = match params.id.as_deref() {
        None => None,
        Some(id) => Some(
            uuid::Uuid::parse_str(id.trim())
                .map(ChatId)
                .map_err(|_| ApiError::NotFound)?,
        ),
    };
    let query = params.q.unwrap_or_default();
    let search = Search::new(&query, scope, params.before, params.limit)
        .map_err(|bad| ApiError::field(bad.field, bad.message))?;
    let me = UserId(user.0.id);
    let _running = state.start_search(me).await?;
    search::run(&state.db, state.search_index.as_deref(), me, &search)
        .await?
        .map(web::Json)
        .ok_or(ApiError::NotFound)
}
