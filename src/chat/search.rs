//! Search (PROTOCOL.md B10): the messages of the caller's conversations
//! that hold every word of a query, the last word as a prefix, ignoring
//! case and accents; newest first, paged with `before`.
//!
//! Each database answers with its own full-text index (DESIGN.md,
//! "Search", says why): SQLite's FTS5 table `message_search` in a file of
//! its own ([`super::search_index`]), PostgreSQL's `tsvector` column with a
//! GIN index, MySQL's `FULLTEXT` index (the migration
//! `m20261203_000001_search` builds the last two). PostgreSQL's and MySQL's
//! are written in the transaction that writes the message, its edit or its
//! deletion; SQLite's behind the writer, with what it does not hold yet
//! matched beside it in memory. So a message is
//! found once acknowledged, a deleted one never, and an edited one by its
//! new text only. Membership is checked in the query itself: a
//! conversation the caller has left is not searched.

use sea_orm::{
    ConnectionTrait, DatabaseBackend, DatabaseConnection, DbErr, FromQueryResult, RuntimeErr,
    Statement, Value,
};

use super::protocol::{format_time, ChatId, SearchPage, SearchResult, UserId};
use super::search_index::SearchIndex;
use super::unspaced;
use super::writer::commit_gate::{self, Point};

/// Longest query, in characters.
pub const MAX_QUERY_CHARS: usize = 200;
/// Most words in one query.
pub const MAX_WORDS: usize = 10;
/// The page size when a request names none.
pub const DEFAULT_PAGE: u64 = 20;
/// Largest page one request may ask for.
pub const MAX_PAGE: u64 = 50;
/// MySQL's full-text index leaves out words shorter than this
/// (`innodb_ft_min_token_size`, 3 unless the server was set otherwise):
/// such words are matched as a substring instead.
const MYSQL_MIN_WORD_CHARS: usize = 3;

/// A checked search request.
#[derive(Debug, Clone)]
pub struct Search {
    /// The words, lowercased, in the query's order; the last is a prefix.
    words: Vec<String>,
    /// One conversation, or all of the caller's.
    scope: Option<ChatId>,
    before: Option<i64>,
    limit: u64,
}

/// Why a search request is refused: the field at fault (REST's key for
/// it: `q`, `limit` or `before`) and the `invalid` answer's text.
#[derive(Debug)]
pub struct BadSearch {
    pub field: &'static str,
    pub message: String,
}

impl BadSearch {
    fn new(field: &'static str, message: impl Into<String>) -> Self {
        BadSearch {
            field,
            message: message.into(),
        }
    }
}

impl Search {
    /// Checks a request: the words are the query's runs of letters and
    /// digits (as the indexes split text); anything else separates them.
    pub fn new(
        query: &str,
        scope: Option<ChatId>,
        before: Option<i64>,
        limit: Option<u64>,
    ) -> Result<Self, BadSearch> {
        if query.chars().count() > MAX_QUERY_CHARS {
            let text = format!("query is longer than {MAX_QUERY_CHARS} characters");
            return Err(BadSearch::new("q", text));
        }
        let words: Vec<String> = query
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect();
        if words.is_empty() {
            return Err(BadSearch::new("q", "query has no words to search for"));
        }
        // Unspaced text inside a word splits it for the index ("a日b" asks
        // for `a` and `b`): those parts count as words too.
        let parts = words.iter().flat_map(|w| unspaced::runs(w));
        if words.len() > MAX_WORDS || parts.filter(|&(_, unspaced)| !unspaced).count() > MAX_WORDS {
            let text = format!("query has more than {MAX_WORDS} words");
            return Err(BadSearch::new("q", text));
        }
        let limit = limit.unwrap_or(DEFAULT_PAGE);
        if limit == 0 || limit > MAX_PAGE {
            let text = format!("limit must be between 1 and {MAX_PAGE}");
            return Err(BadSearch::new("limit", text));
        }
        if before.is_some_and(|b| b <= 0) {
            return Err(BadSearch::new("before", "before must be a message id"));
        }
        Ok(Search {
            words,
            scope,
            before,
            limit,
        })
    }
}

#[derive(Debug, FromQueryResult)]
struct Found {
    id: i64,
    chat_id: uuid::Uuid,
    sender_id: Option<i64>,
    content: String,
    created_at: chrono::DateTime<chrono::Utc>,
}

/// The page of results `user` may see; None when the search names a
/// conversation `user` is not a member of (answered `not_found`). On
/// SQLite, `index` is the search index's file (an error without one).
pub async fn run(
    db: &DatabaseConnection,
    index: Option<&SearchIndex>,
    user: UserId,
    search: &Search,
) -> Result<Option<SearchPage>, DbErr> {
    if let Some(chat) = search.scope {
        commit_gate::pass_at(Point::Search, std::iter::once(chat.0)).await;
    }
    let backend = db.get_database_backend();
    let chats = conversations(db, user, search.scope).await?;
    if search.scope.is_some() && chats.is_empty() {
        return Ok(None);
    }
    if chats.is_empty() {
        return Ok(Some(SearchPage {
            results: Vec::new(),
            has_more: false,
        }));
    }
    let mut found = match backend {
        DatabaseBackend::Postgres => postgres(db, search, user, &chats).await?,
        DatabaseBackend::Sqlite => {
            let index =
                index.ok_or_else(|| DbErr::Custom("SQLite's search index is not open".into()))?;
            let chats: Vec<uuid::Uuid> = chats.iter().map(|(id, _)| *id).collect();
            index.with_tail(sqlite(search, user, &chats)).await?
        }
        _ => {
            Found::find_by_statement(mysql(search, user))
                .all(db)
                .await?
        }
    };
    let has_more = found.len() as u64 > search.limit;
    found.truncate(search.limit as usize);
    let results = found
        .into_iter()
        .map(|f| SearchResult {
            pk: ChatId(f.chat_id),
            id: f.id,
            sender: f.sender_id,
            content: f.content,
            time: format_time(&f.created_at),
        })
        .collect();
    Ok(Some(SearchPage { results, has_more }))
}

/// The conversations searched, each with its `seq` (how many messages
/// and changes it has had): `scope` if `user` is a member of it, or every
/// conversation `user` is a member of.
async fn conversations<C: ConnectionTrait>(
    db: &C,
    user: UserId,
    scope: Option<ChatId>,
) -> Result<Vec<(uuid::Uuid, i64)>, DbErr> {
    use entity::{chat, chat_member};
    use sea_orm::{ColumnTrait, EntityTrait, JoinType, QueryFilter, QuerySelect, RelationTrait};
    let mut query = chat_member::Entity::find()
        .select_only()
        .column(chat_member::Column::ChatId)
        .column(chat::Column::Seq)
        .join(JoinType::InnerJoin, chat_member::Relation::Chat.def())
        .filter(chat_member::Column::UserId.eq(user.0));
    if let Some(chat) = scope {
        query = query.filter(chat_member::Column::ChatId.eq(chat.0));
    }
    query.into_tuple().all(db).await
}

/// The columns every backend's query returns, from `messages m`.
const COLUMNS: &str = "m.id, m.chat_id, m.sender_id, m.content, m.created_at";

/// The page's bound: one row more than asked, to tell `has_more`.
fn fetch(search: &Search) -> i64 {
    search.limit as i64 + 1
}

fn before(search: &Search) -> i64 {
    search.before.unwrap_or(i64::MAX)
}

/// SQLite: an FTS5 query matching the words in `body` and the caller's
/// conversations in `chat`, so the index never hands back a message of
/// someone else's conversation to be filtered out; it walks the matches
/// newest first (`ORDER BY rowid DESC`) and stops at the page's end. Run
/// on the index's file, with the messages' attached as `store`, once on
/// the index and once on the tail of what it does not hold yet
/// ([`SearchIndex::with_tail`]), whose messages the index's matches leave
/// out; the newest page of both.
fn sqlite(search: &Search, user: UserId, chats: &[uuid::Uuid]) -> Statement {
    let terms = unspaced::terms(&search.words);
    let last = terms.words.len() - 1;
    let words = terms.words.iter().enumerate().map(|(i, word)| {
        let prefix = if i == last && terms.prefix { "*" } else { "" };
        format!("body:\"{word}\"{prefix}")
    });
    // Each run of unspaced text, as it is, in the text (`?5` on).
    let runs: String = (0..terms.runs.len())
        .map(|i| format!(" AND instr(m.content, ?{}) > 0", i + 5))
        .collect();
    let chats = chats
        .iter()
        .map(|c| format!("chat:c{}", c.simple()))
        .collect::<Vec<_>>()
        .join(" OR ");
    let matched = format!("{} AND ({chats})", words.collect::<Vec<_>>().join(" AND "));
    // `table` is `schema.name`; FTS5 matches on the column named as it is.
    let branch = |table: &str, alias: &str, also: &str| {
        let column = table.rsplit('.').next().unwrap_or(table);
        format!(
            "SELECT * FROM (SELECT {COLUMNS} FROM {table} {alias} \
             JOIN store.messages m ON m.id = {alias}.rowid \
             WHERE {alias}.{column} MATCH ?1 AND {alias}.rowid < ?2 AND NOT m.deleted{runs}{also} \
             AND EXISTS (SELECT 1 FROM store.chat_members cm \
                 WHERE cm.chat_id = m.chat_id AND cm.user_id = ?3) \
             ORDER BY {alias}.rowid DESC LIMIT ?4)"
        )
    };
    let mut values: Vec<Value> = vec![
        matched.into(),
        before(search).into(),
        user.0.into(),
        fetch(search).into(),
    ];
    values.extend(terms.runs.into_iter().map(Value::from));
    Statement::from_sql_and_values(
        DatabaseBackend::Sqlite,
        format!(
            "{} UNION ALL {} ORDER BY id DESC LIMIT ?4",
            branch(
                "main.message_search",
                "s",
                " AND s.rowid NOT IN (SELECT rowid FROM temp.search_tail)"
            ),
            branch("temp.search_tail", "t", ""),
        ),
        values,
    )
}

/// A conversation whose `seq` (its messages and changes) is above this
/// is searched by a branch of its own on PostgreSQL, planned with its id;
/// smaller ones are walked together (see [`postgres`]).
const POSTGRES_LARGE_CONVERSATION: i64 = 500;

/// One conversation's newest matches on PostgreSQL: `$1` the `tsquery`
/// text, `$2` the caller, `$3` `before`, `$4` the page's bound, `$5` the
/// patterns of the query's unspaced runs (`%東京%`, maybe none); `chat` the
/// conversation (a parameter, or the outer `cm.chat_id`). The text is
/// matched with the `@@` operator when `indexed` (the GIN index can answer
/// it), or else with `ts_match_vq`, the same test as a function call,
/// which the index cannot answer: the planner then walks.
fn postgres_matches(chat: &str, indexed: bool) -> String {
    let matched = if indexed {
        "m.search @@ to_tsquery('simple', chat_search_unaccent($1))"
    } else {
        "ts_match_vq(m.search, to_tsquery('simple', chat_search_unaccent($1)))"
    };
    format!(
        "SELECT m.id, m.chat_id, m.sender_id, m.content, m.created_at FROM messages m \
         WHERE m.chat_id = {chat} AND m.id < $3 AND NOT m.deleted AND {matched} \
         AND m.content LIKE ALL ($5) \
         ORDER BY m.id DESC LIMIT $4"
    )
}

/// PostgreSQL: the words as a `tsquery` (`cafe & uber:*`), each
/// conversation's newest matches, of which the newest page is kept.
///
/// Inside one conversation there are two plans: walking its messages
/// newest first (`(chat_id, id)`) and testing each, which stops at the
/// page's end and suits common words; or asking the GIN index on
/// `(chat_id, search)` for the conversation's matches, which suits rare
/// ones. But the index answers a prefix (`uber:*`) by first collecting
/// every match of it in the whole table, whatever the conversation: for
/// a common prefix, about 10 ms each time. So the conversations up to
/// [`POSTGRES_LARGE_CONVERSATION`] are walked, all in one `LATERAL` join
/// with the index ruled out (a walk there reads at most that many rows);
/// each larger one gets a branch of its own with its id as a parameter,
/// where the planner sees the conversation's size in the statistics and
/// the words' frequencies in the query, and chooses. The statement is
/// sent unnamed (not kept prepared), so it is planned with the values in
/// hand each time, where a cached generic plan would pick one way for
/// all. Every branch checks membership again (DESIGN.md, "Search", has
/// the plans).
async fn postgres(
    db: &DatabaseConnection,
    search: &Search,
    user: UserId,
    chats: &[(uuid::Uuid, i64)],
) -> Result<Vec<Found>, DbErr> {
    let terms = unspaced::terms(&search.words);
    let last = terms.words.len() - 1;
    let query = terms
        .words
        .iter()
        .enumerate()
        .map(|(i, w)| {
            if i == last && terms.prefix {
                format!("{w}:*")
            } else {
                w.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" & ");
    // Unspaced runs hold no `%`, `_` or `\\` (letters only).
    let runs: Vec<String> = terms.runs.iter().map(|run| format!("%{run}%")).collect();
    let (large, small): (Vec<(uuid::Uuid, i64)>, Vec<_>) = chats
        .iter()
        .copied()
        .partition(|&(_, seq)| seq > POSTGRES_LARGE_CONVERSATION);
    let small: Vec<uuid::Uuid> = small.into_iter().map(|(id, _)| id).collect();
    let sql = postgres_statement(!small.is_empty(), large.len());
    type Row = (
        i64,
        uuid::Uuid,
        Option<i64>,
        String,
        chrono::DateTime<chrono::Utc>,
    );
    // Built from the fixed text above and parameter numbers only: every
    // value is bound.
    let sql = sea_orm::sqlx::AssertSqlSafe(sql);
    let mut statement = sea_orm::sqlx::query_as::<_, Row>(sql)
        .persistent(false)
        .bind(query)
        .bind(user.0)
        .bind(before(search))
        .bind(fetch(search))
        .bind(runs);
    if !small.is_empty() {
        statement = statement.bind(small);
    }
    for (chat, _) in large {
        statement = statement.bind(chat);
    }
    let rows = statement
        .fetch_all(db.get_postgres_connection_pool())
        .await
        .map_err(|e| DbErr::Query(RuntimeErr::SqlxError(std::sync::Arc::new(e))))?;
    Ok(rows
        .into_iter()
        .map(|(id, chat_id, sender_id, content, created_at)| Found {
            id,
            chat_id,
            sender_id,
            content,
            created_at,
        })
        .collect())
}

/// The PostgreSQL statement: the small conversations (`$6`, an array) in
/// one `LATERAL` branch when `small`, then one branch per large one (the
/// following parameters), the newest page of them all.
fn postgres_statement(small: bool, large: usize) -> String {
    let mut branches = Vec::with_capacity(large + 1);
    if small {
        branches.push(format!(
            "SELECT r.* FROM chat_members cm CROSS JOIN LATERAL ({}) r \
             WHERE cm.user_id = $2 AND cm.chat_id = ANY($6)",
            postgres_matches("cm.chat_id", false)
        ));
    }
    let first = if small { 7 } else { 6 };
    for n in first..first + large {
        branches.push(format!(
            "SELECT * FROM ({}) r WHERE EXISTS (SELECT 1 FROM chat_members cm \
             WHERE cm.chat_id = ${n} AND cm.user_id = $2)",
            postgres_matches(&format!("${n}"), true)
        ));
    }
    format!(
        "SELECT id, chat_id, sender_id, content, created_at FROM ({}) found \
         ORDER BY id DESC LIMIT $4",
        branches.join(" UNION ALL ")
    )
}

/// MySQL: the words long enough to be indexed as a boolean-mode `MATCH`
/// (`+cafe +uber*`); shorter ones, and those holding unspaced text, as a
/// substring (`LIKE`), which the column's collation also compares without
/// case or accents.
fn mysql(search: &Search, user: UserId) -> Statement {
    let last = search.words.len() - 1;
    let (mut indexed, mut short) = (Vec::new(), Vec::new());
    for (i, word) in search.words.iter().enumerate() {
        // A word with unspaced text in it is one word of the index, all of
        // it, whatever part of it the query names: a substring.
        if word.chars().count() < MYSQL_MIN_WORD_CHARS || word.chars().any(unspaced::is_unspaced) {
            short.push(format!("%{word}%"));
        } else {
            let prefix = if i == last { "*" } else { "" };
            indexed.push(format!("+{word}{prefix}"));
        }
    }
    let mut conditions = Vec::new();
    let mut values: Vec<Value> = Vec::new();
    if !indexed.is_empty() {
        conditions.push("MATCH (m.content) AGAINST (? IN BOOLEAN MODE)");
        values.push(indexed.join(" ").into());
    }
    for pattern in short {
        conditions.push("m.content LIKE ?");
        values.push(pattern.into());
    }
    values.push(user.0.into());
    let scope = match search.scope {
        Some(chat) => {
            values.push(chat.0.into());
            "AND cm.chat_id = ?"
        }
        None => "",
    };
    values.push(before(search).into());
    values.push(fetch(search).into());
    Statement::from_sql_and_values(
        DatabaseBackend::MySql,
        format!(
            "SELECT {COLUMNS} FROM messages m WHERE {} \
             AND m.chat_id IN (SELECT cm.chat_id FROM chat_members cm \
                 WHERE cm.user_id = ? {scope}) \
             AND m.id < ? AND NOT m.deleted \
             ORDER BY m.id DESC LIMIT ?",
            conditions.join(" AND ")
        ),
        values,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_runs_of_letters_and_digits() {
        let s = Search::new("  Café-au_lait, Über2 ", None, None, None).unwrap();
        assert_eq!(s.words, ["café", "au", "lait", "über2"]);
        assert_eq!(s.limit, DEFAULT_PAGE);
    }

    #[test]
    fn unspaced_text_is_asked_a_character_a_word_and_as_a_run() {
        let s = Search::new("日本 park 2026年", None, None, None).unwrap();
        let statement = sqlite(&s, UserId(1), &[uuid::Uuid::nil()]);
        assert!(statement
            .sql
            .contains("AND instr(m.content, ?5) > 0 AND instr(m.content, ?6) > 0"));
        let values = statement.values.unwrap().0;
        assert_eq!(values[0], Value::from(format!(
            "body:\"日\" AND body:\"本\" AND body:\"park\" AND body:\"2026\" AND body:\"年\" AND (chat:c{})",
            uuid::Uuid::nil().simple()
        )));
        assert_eq!(values[4..], [Value::from("日本"), Value::from("年")]);
        let statement = mysql(&s, UserId(1));
        let values = statement.values.unwrap().0;
        assert_eq!(values[0], Value::from("+park"));
        assert_eq!(
            values[1..3],
            [Value::from("%日本%"), Value::from("%2026年%")]
        );
    }

    #[test]
    fn a_query_without_words_or_too_long_is_refused() {
        assert!(Search::new(" .,;!? ", None, None, None).is_err());
        assert!(Search::new("", None, None, None).is_err());
        assert!(Search::new(&"a ".repeat(11), None, None, None).is_err());
        assert!(Search::new(&"a日".repeat(11), None, None, None).is_err());
        assert!(Search::new(&"a日".repeat(10), None, None, None).is_ok());
        assert!(Search::new(&"a".repeat(201), None, None, None).is_err());
        assert!(Search::new("x", None, None, Some(0)).is_err());
        assert!(Search::new("x", None, None, Some(51)).is_err());
        assert!(Search::new("x", None, Some(0), None).is_err());
    }

    #[test]
    fn mysql_matches_short_words_as_substrings() {
        let s = Search::new("to the park", None, Some(9), Some(5)).unwrap();
        let statement = mysql(&s, UserId(7));
        assert!(statement
            .sql
            .contains("AGAINST (? IN BOOLEAN MODE) AND m.content LIKE ?"));
        let values = statement.values.unwrap().0;
        assert_eq!(values[0], Value::from("+the +park*"));
        assert_eq!(values[1], Value::from("%to%"));
    }

    #[test]
    fn postgres_plans_large_conversations_on_their_own() {
        let both = postgres_statement(true, 2);
        assert_eq!(both.matches("UNION ALL").count(), 2);
        assert!(both.contains("cm.chat_id = ANY($6)"));
        assert!(both.contains("m.chat_id = $7 ") && both.contains("m.chat_id = $8 "));
        let large = postgres_statement(false, 1);
        assert!(!large.contains("LATERAL") && large.contains("m.chat_id = $6 "));
        assert!(!postgres_statement(true, 0).contains("UNION"));
        assert!(
            !postgres_statement(true, 0).contains("@@"),
            "small ones are walked"
        );
    }

    #[test]
    fn sqlite_matches_words_and_conversations_in_the_index() {
        let s = Search::new("hello wor", None, None, None).unwrap();
        let chat = uuid::Uuid::nil();
        let statement = sqlite(&s, UserId(1), &[chat]);
        let values = statement.values.unwrap().0;
        assert_eq!(
            values[0],
            Value::from(format!(
                "body:\"hello\" AND body:\"wor\"* AND (chat:c{})",
                chat.simple()
            ))
        );
    }
}
