//! Search in text written without spaces between its words: Chinese and
//! Japanese (PROTOCOL.md C16). The full-text engines split text into words
//! at spaces and punctuation, so "日本語のテキスト" was one word, found only
//! by a query starting as it starts. Here each of its characters is a word
//! of its own in every index (SQLite's through [`spaced`], registered on
//! the index's connections as `chat_search_text`; PostgreSQL's through the
//! same ranges in `chat_search_vector`, migration
//! `m20261213_000001_search_unspaced`); a query's run of such characters
//! asks for each of them from the index, and for the run itself, as it is,
//! in the message's text. MySQL's index is left as it is: its searches
//! match such runs as substrings, as they match short words.

use std::borrow::Cow;
use std::ffi::{c_char, c_int};

use libsqlite3_sys as ffi;

/// The characters of scripts written without spaces between words: Han
/// (Chinese, Japanese kanji), hiragana, katakana (full and half width), and
/// the ideographic iteration and closing marks (々, 〆, 〇). Korean is
/// written with spaces and is not among them. The same ranges are in
/// migration `m20261213_000001_search_unspaced` and the web client's
/// `search.js` (a test below compares them).
pub const RANGES: [(char, char); 8] = [
    ('\u{3005}', '\u{3007}'),
    ('\u{3040}', '\u{30FF}'),
    ('\u{31F0}', '\u{31FF}'),
    ('\u{3400}', '\u{4DBF}'),
    ('\u{4E00}', '\u{9FFF}'),
    ('\u{F900}', '\u{FAFF}'),
    ('\u{FF66}', '\u{FF9F}'),
    ('\u{20000}', '\u{3FFFF}'),
];

/// Whether `c` is written without spaces around its words.
pub fn is_unspaced(c: char) -> bool {
    // Every range is above ASCII: most text is decided by one comparison.
    c >= '\u{3005}' && RANGES.iter().any(|&(low, high)| (low..=high).contains(&c))
}

/// Whether `text` (UTF-8) may hold an unspaced character: each takes three
/// or four bytes, the first 0xE3 or above. Most text has no such byte,
/// which a scan of its bytes tells without decoding a character.
fn may_hold_unspaced(text: &[u8]) -> bool {
    text.iter().any(|&b| b >= 0xE3)
}

/// `text` with each unspaced character made a word of its own (a space on
/// each side), as the index is given it; borrowed when it has none.
pub fn spaced(text: &str) -> Cow<'_, str> {
    if !may_hold_unspaced(text.as_bytes()) || !text.chars().any(is_unspaced) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() * 2);
    for c in text.chars() {
        if is_unspaced(c) {
            out.push(' ');
            out.push(c);
            out.push(' ');
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A word of a query split into its runs: `(run, unspaced)`, in order.
pub fn runs(word: &str) -> impl Iterator<Item = (&str, bool)> {
    let mut rest = word;
    std::iter::from_fn(move || {
        let first = rest.chars().next()?;
        let unspaced = is_unspaced(first);
        let end = rest
            .char_indices()
            .find(|&(_, c)| is_unspaced(c) != unspaced)
            .map_or(rest.len(), |(i, _)| i);
        let (run, after) = rest.split_at(end);
        rest = after;
        Some((run, unspaced))
    })
}

/// Most characters of unspaced text one query asks the index for; the runs
/// they come from are matched whole all the same.
pub const MAX_CHARACTERS: usize = 16;

/// A query as SQLite's and PostgreSQL's indexes are asked it, which hold
/// each unspaced character as a word of its own.
pub struct Terms {
    /// The index's words, in the query's order.
    pub words: Vec<String>,
    /// Whether the last is matched as a prefix: unless it is an unspaced
    /// character.
    pub prefix: bool,
    /// The query's runs of unspaced text, which a message must hold as
    /// they are: the index finds their characters in any order.
    pub runs: Vec<String>,
}

/// The index's terms for a query of `words` (lowercased): each unspaced
/// character once (at most [`MAX_CHARACTERS`]), and every other run as it is.
pub fn terms(words: &[String]) -> Terms {
    let (mut terms, mut runs, mut prefix) = (Vec::new(), Vec::new(), true);
    let mut characters = 0;
    for (run, is_unspaced) in words.iter().flat_map(|w| self::runs(w)) {
        prefix = !is_unspaced;
        if !is_unspaced {
            terms.push(run.to_string());
            continue;
        }
        runs.push(run.to_string());
        for c in run.chars() {
            let word = c.to_string();
            if characters < MAX_CHARACTERS && !terms.contains(&word) {
                terms.push(word);
                characters += 1;
            }
        }
    }
    Terms {
        words: terms,
        prefix,
        runs,
    }
}

/// The name SQL calls [`spaced`] by on the search index's connections.
pub const SQL_FUNCTION: &str = "chat_search_text";

/// Why `chat_search_text` could not be added to a connection.
#[derive(Debug, thiserror::Error)]
#[error("cannot add the SQL function {SQL_FUNCTION}: SQLite error {0}")]
pub struct RegisterError(c_int);

/// Adds `chat_search_text(text)` ([`spaced`]) to the SQLite connection
/// `db`.
///
/// # Safety
/// `db` must be an open connection, used by no other thread during the call.
pub unsafe fn register(db: *mut ffi::sqlite3) -> Result<(), RegisterError> {
    let flags = ffi::SQLITE_UTF8 | ffi::SQLITE_DETERMINISTIC | ffi::SQLITE_INNOCUOUS;
    // SAFETY: the caller vouches for `db`; the name is a C string that
    // SQLite copies; the function takes no user data and needs no
    // destructor.
    let done = unsafe {
        ffi::sqlite3_create_function_v2(
            db,
            c"chat_search_text".as_ptr(),
            1,
            flags,
            std::ptr::null_mut(),
            Some(sql_spaced),
            None,
            None,
            None,
        )
    };
    if done == ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(RegisterError(done))
    }
}

/// `chat_search_text(text)`: [`spaced`] of its argument; NULL for NULL,
/// and a text that is not UTF-8 as it is.
unsafe extern "C" fn sql_spaced(
    context: *mut ffi::sqlite3_context,
    count: c_int,
    values: *mut *mut ffi::sqlite3_value,
) {
    if count != 1 {
        // SAFETY: `context` is the call's, as SQLite passes it.
        unsafe { ffi::sqlite3_result_null(context) };
        return;
    }
    // SAFETY: SQLite passes `count` (here 1) values; `sqlite3_value_text`
    // then `sqlite3_value_bytes`, in that order, give the text's bytes,
    // valid until the value is next converted, which nothing here does.
    unsafe {
        let value = *values;
        let text = ffi::sqlite3_value_text(value);
        if text.is_null() {
            ffi::sqlite3_result_null(context);
            return;
        }
        let length = usize::try_from(ffi::sqlite3_value_bytes(value)).unwrap_or(0);
        let bytes = std::slice::from_raw_parts(text, length);
        if !may_hold_unspaced(bytes) {
            // Nearly every message: nothing to decode.
            ffi::sqlite3_result_value(context, value);
            return;
        }
        match std::str::from_utf8(bytes).map(spaced) {
            Ok(Cow::Owned(spaced)) => ffi::sqlite3_result_text64(
                context,
                spaced.as_ptr().cast::<c_char>(),
                spaced.len() as u64,
                ffi::SQLITE_TRANSIENT(),
                ffi::SQLITE_UTF8 as u8,
            ),
            // Nothing to space out (or not UTF-8): the value itself.
            _ => ffi::sqlite3_result_value(context, value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspaced_characters_become_words_of_their_own() {
        assert!(matches!(spaced("plain text, café"), Cow::Borrowed(_)));
        assert_eq!(spaced("iPhone発売"), "iPhone 発  売 ");
        assert_eq!(spaced("東京々"), " 東  京  々 ");
        // Korean is written with spaces: left as it is.
        assert!(matches!(spaced("한국어 문장"), Cow::Borrowed(_)));
        assert!(is_unspaced('テ') && is_unspaced('ｶ') && is_unspaced('\u{20B9F}'));
        assert!(!is_unspaced('a') && !is_unspaced('한') && !is_unspaced('。'));
        // The first of each range's characters' bytes is 0xE3 or above.
        for (low, _) in RANGES {
            assert!(may_hold_unspaced(low.to_string().as_bytes()), "{low}");
        }
        assert!(!may_hold_unspaced("café, naïve, Ωmega".as_bytes()));
    }

    /// The code points written as `\uXXXX`, `\UXXXXXXXX` or `\u{X…}` on the
    /// line of `text` that defines `UNSPACED`.
    fn escapes_of_unspaced(text: &str) -> Vec<u32> {
        let line = text
            .lines()
            .find(|line| line.starts_with("const UNSPACED"))
            .expect("a line defining UNSPACED");
        line.split('\\')
            .skip(1)
            .filter_map(|escape| {
                let hex = escape.strip_prefix(['u', 'U'])?;
                let hex = hex.strip_prefix('{').unwrap_or(hex);
                let end = hex
                    .find(|c: char| !c.is_ascii_hexdigit())
                    .unwrap_or(hex.len());
                u32::from_str_radix(&hex[..end], 16).ok()
            })
            .collect()
    }

    #[test]
    fn the_migration_and_the_web_client_have_the_same_ranges() {
        let ranges: Vec<u32> = RANGES
            .iter()
            .flat_map(|&(low, high)| [low as u32, high as u32])
            .collect();
        let migration = include_str!("../../migration/src/m20261213_000001_search_unspaced.rs");
        let client = include_str!("../../static/app/search.js");
        assert_eq!(
            escapes_of_unspaced(migration),
            ranges,
            "the migration's UNSPACED"
        );
        assert_eq!(escapes_of_unspaced(client), ranges, "search.js's UNSPACED");
    }

    #[test]
    fn a_word_splits_into_its_runs() {
        let split: Vec<(&str, bool)> = runs("iPhone発売日2026年").collect();
        assert_eq!(
            split,
            [
                ("iPhone", false),
                ("発売日", true),
                ("2026", false),
                ("年", true)
            ]
        );
        assert_eq!(runs("").count(), 0);
    }

    #[test]
    fn a_query_asks_each_character_once_and_each_run_whole() {
        let words =
            |query: &str| -> Vec<String> { query.split(' ').map(str::to_lowercase).collect() };
        let asked = terms(&words("iPhone発売日 日本"));
        assert_eq!(asked.words, ["iphone", "発", "売", "日", "本"]);
        assert_eq!(asked.runs, ["発売日", "日本"]);
        assert!(!asked.prefix, "the last word is a character, whole");
        assert!(terms(&words("日本 iph")).prefix);
        let asked = terms(&words(&"漢字".repeat(20)));
        assert_eq!(asked.words, ["漢", "字"], "each character once");
        let many: String = ('\u{4E00}'..='\u{4E13}').collect();
        let asked = terms(&words(&many));
        assert_eq!(asked.words.len(), MAX_CHARACTERS);
        assert_eq!(asked.runs, [many]);
    }

    #[test]
    fn sql_calls_it_on_a_connection_it_was_added_to() {
        use sea_orm::sqlx::{Connection, SqliteConnection};
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime for the test");
        runtime.block_on(async {
            let mut conn = SqliteConnection::connect("sqlite::memory:").await.unwrap();
            let mut handle = conn.lock_handle().await.unwrap();
            // SAFETY: the handle is locked: no other thread uses it.
            unsafe { register(handle.as_raw_handle().as_ptr()) }.unwrap();
            drop(handle);
            let row: (Option<String>, Option<String>, Option<String>) = sea_orm::sqlx::query_as(
                "SELECT chat_search_text('テスト ok'), chat_search_text('ok'), chat_search_text(NULL)",
            )
            .fetch_one(&mut conn)
            .await
            .unwrap();
            assert_eq!(row, (Some(" テ  ス  ト  ok".into()), Some("ok".into()), None));
        });
    }
}
