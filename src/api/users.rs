//! Finding people to talk to.

use entity::user;
use paperclip::actix::{api_v2_operation, web, Apiv2Schema};
use sea_orm::sea_query::LikeExpr;
use sea_orm::{
    ColumnTrait, Condition, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
};
use serde::{Deserialize, Serialize};

use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::state::AppState;

/// Largest page of users.
pub const MAX_PAGE_SIZE: u64 = 100;
/// Highest page number accepted: the database walks every row before the
/// page (`OFFSET`), so pages go 10,000 users deep at most; past that a
/// search narrows the list instead.
pub const MAX_PAGE: u64 = 100;

/// Search and paging.
#[derive(Debug, Deserialize, Apiv2Schema)]
pub struct UserQuery {
    /// Matches the start of username, first or last name, literally.
    pub search: Option<String>,
    /// 1-based page number (at most 100).
    pub page: Option<u64>,
    /// Users per page (at most 100).
    pub page_size: Option<u64>,
}

/// What anyone may see of a user.
#[derive(Debug, Serialize, Apiv2Schema)]
pub struct PublicUser {
    pub id: i64,
    pub username: String,
    pub first_name: String,
    pub last_name: String,
}

/// One page of users.
#[derive(Debug, Serialize, Apiv2Schema)]
pub struct UserPage {
    pub count: u64,
    pub page: u64,
    pub page_size: u64,
    pub results: Vec<PublicUser>,
}

/// Search active users: a prefix of username, first or last name, taken
/// literally (`%` and `_` are characters, not patterns). A search like
/// a search of messages (`SEARCHES_AT_ONCE`, `SEARCHES_PER_MINUTE`): each
/// listing counts the matching users, a walk of the users table (40 ms
/// with 500,000 users on SQLite, 230 ms with a search).
#[api_v2_operation(tags(Users))]
pub async fn list_users(
    state: web::Data<AppState>,
    user: AuthUser,
    query: web::Query<UserQuery>,
) -> Result<web::Json<UserPage>, ApiError> {
    let page = query.page.unwrap_or(1);
    let page_size = query.page_size.unwrap_or(20);
    if page == 0 || page > MAX_PAGE || page_size == 0 || page_size > MAX_PAGE_SIZE {
        return Err(ApiError::BadRequest(format!(
            "page must be between 1 and {MAX_PAGE}, page_size between 1 and {MAX_PAGE_SIZE}"
        )));
    }
    // A search of people: its user's line, the allowance, a slot.
    let me = crate::chat::protocol::UserId(user.0.id);
    let _running = state.start_search(me).await?;
    let mut find = user::Entity::find().filter(user::Column::IsActive.eq(true));
    if let Some(search) = query
        .search
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let starts = |column: user::Column| column.like(literal_prefix(search));
        find = find.filter(
            Condition::any()
                .add(starts(user::Column::Username))
                .add(starts(user::Column::FirstName))
                .add(starts(user::Column::LastName)),
        );
    }
    let paginator = find
        .select_only()
        .columns(user::Profile::COLUMNS)
        .order_by_asc(user::Column::Username)
        .into_model::<user::Profile>()
        .paginate(&state.db, page_size);
    let count = paginator.num_items().await?;
    let results = paginator
        .fetch_page(page - 1)
        .await?
        .into_iter()
        .map(|u| PublicUser {
            id: u.id,
            username: u.username,
            first_name: u.first_name,
            last_name: u.last_name,
        })
        .collect();
    Ok(web::Json(UserPage {
        count,
        page,
        page_size,
        results,
    }))
}

/// The `LIKE` pattern of the strings that start with `prefix`: its `%`,
/// `_` and the escape character itself escaped, so they match only
/// themselves (a `%` first would otherwise make every search a scan for
/// a substring).
fn literal_prefix(prefix: &str) -> LikeExpr {
    const ESCAPE: char = '!';
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '%' | '_' | ESCAPE) {
            pattern.push(ESCAPE);
        }
        pattern.push(c);
    }
    pattern.push('%');
    LikeExpr::new(pattern).escape(ESCAPE)
}
