//! Where a message id falls in a conversation's `seq` order.
//!
//! Clients name places in a conversation by message id (a page's
//! `before` and `after`; read marks are placed in `contacts.rs`), and the
//! id need not be one of the conversation's messages: 0, a made-up number,
//! a message of another conversation. Within a conversation `id` and `seq` grow together (both
//! are taken in commit order), so the messages with an id up to `X` are
//! exactly those up to some `seq`. The conversation's messages are read by
//! `(chat_id, seq)` only, the one index keyed by conversation that SQLite
//! keeps (migration `m20261208_000001`): an id that is not one of them is
//! placed by a binary search over `seq`, an index seek per step, so the
//! work stays logarithmic in the conversation's length whatever the id.

use super::*;

/// The messages of a conversation on either side of an id `X`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Around {
    /// The `seq` of the last message with an id up to `X`.
    pub up_to: Option<i64>,
    /// The `seq` of the first message with an id above `X`.
    pub after: Option<i64>,
}

/// A message's `seq` and id.
type Point = (i64, i64);

/// The first message of `chat` at or after `from_seq` (any `seq` when
/// None), or with `forward` false the last one.
async fn point<C: ConnectionTrait>(
    db: &C,
    chat: ChatId,
    from_seq: Option<i64>,
    forward: bool,
) -> Result<Option<Point>, DbErr> {
    let mut query = message::Entity::find()
        .select_only()
        .column(message::Column::Seq)
        .column(message::Column::Id)
        .filter(message::Column::ChatId.eq(chat.0));
    if let Some(seq) = from_seq {
        query = query.filter(message::Column::Seq.gte(seq));
    }
    query = if forward {
        query.order_by_asc(message::Column::Seq)
    } else {
        query.order_by_desc(message::Column::Seq)
    };
    query.limit(1).into_tuple::<Point>().one(db).await
}

/// The messages of `chat` on either side of id `x`.
pub(super) async fn around<C: ConnectionTrait>(
    db: &C,
    chat: ChatId,
    x: i64,
) -> Result<Around, DbErr> {
    if x <= 0 {
        let oldest = point(db, chat, None, true).await?;
        return Ok(Around {
            up_to: None,
            after: oldest.map(|(seq, _)| seq),
        });
    }
    let Some(newest) = point(db, chat, None, false).await? else {
        return Ok(Around {
            up_to: None,
            after: None,
        });
    };
    if newest.1 <= x {
        return Ok(Around {
            up_to: Some(newest.0),
            after: None,
        });
    }
    // Rows are never removed but by an operator; one who removes them now
    // gets an answer as of before.
    let Some(oldest) = point(db, chat, None, true).await? else {
        return Ok(Around {
            up_to: None,
            after: Some(newest.0),
        });
    };
    if oldest.1 > x {
        return Ok(Around {
            up_to: None,
            after: Some(oldest.0),
        });
    }
    // The first message at or after `lo` has an id up to `x` (it is the
    // message at `lo`); the first at or after `hi` has a larger one, and
    // sits at `after`.
    let (mut lo, mut hi, mut after) = (oldest.0, newest.0, newest.0);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        let Some((seq, id)) = point(db, chat, Some(mid), true).await? else {
            break;
        };
        if id <= x {
            lo = seq;
        } else {
            (hi, after) = (mid, seq);
        }
    }
    Ok(Around {
        up_to: Some(lo),
        after: Some(after),
    })
}
