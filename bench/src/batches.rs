//! How much the servers' group-commit writers put in a batch, read from
//! their `/metrics` (`chat_store_batch_size`, docs/METRICS.md). A write's
//! cost depends on it more than on anything else: at full speed a batch
//! holds hundreds of messages, at 10,000 msg/s a dozen to a few dozen, at
//! 1,000 msg/s one, and the server's CPU a message grows with each step
//! down (BENCHMARKS.md, "A forty-first machine").

/// The sum and the count of every server's `chat_store_batch_size`: the
/// writes (messages, edits, deletions, reactions) committed, and the
/// batches they were committed in.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Batches {
    writes: f64,
    batches: f64,
}

/// The most of a server's `/metrics` text read: a few kilobytes today.
const METRICS_LIMIT: usize = 1 << 20;

impl Batches {
    /// The servers at `urls` added up; `None` when one's `/metrics` cannot
    /// be read (it is behind `METRICS_TOKEN`, say) or lacks the histogram.
    pub(crate) async fn read(client: &awc::Client, urls: &[String]) -> Option<Batches> {
        let mut total = Batches::default();
        for url in urls {
            let url = format!("{}/metrics", url.trim_end_matches('/'));
            let mut response = client.get(url).send().await.ok()?;
            if !response.status().is_success() {
                return None;
            }
            let body = response.body().limit(METRICS_LIMIT).await.ok()?;
            let one = Batches::parse(std::str::from_utf8(&body).ok()?)?;
            total.writes += one.writes;
            total.batches += one.batches;
        }
        Some(total)
    }

    /// From the Prometheus text: the histogram's `_sum` and `_count` lines,
    /// which carry no labels.
    fn parse(text: &str) -> Option<Batches> {
        let value = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        };
        Some(Batches {
            writes: value("chat_store_batch_size_sum")?,
            batches: value("chat_store_batch_size_count")?,
        })
    }

    /// Writes a batch between `start` and `end` (`None` when either was
    /// not read, or no batch was committed in between).
    pub(crate) fn per_batch(start: Option<Batches>, end: Option<Batches>) -> Option<f64> {
        let (start, end) = start.zip(end)?;
        let batches = end.batches - start.batches;
        (batches > 0.0).then(|| (end.writes - start.writes) / batches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_batch_are_the_sums_growth_over_the_counts() {
        let text = |sum: u32, count: u32| {
            format!(
                "# HELP chat_store_batch_size Writes per committed batch.\n\
                 chat_store_batch_size_sum_total 7\n\
                 chat_store_batch_size_sum {sum}.0\n\
                 chat_store_batch_size_count {count}\n\
                 chat_store_batch_size_bucket{{le=\"1.0\"}} 3\n# EOF\n"
            )
        };
        let start = Batches::parse(&text(10, 4));
        assert_eq!(
            start,
            Some(Batches {
                writes: 10.0,
                batches: 4.0
            })
        );
        let end = Batches::parse(&text(110, 14));
        assert_eq!(Batches::per_batch(start, end), Some(10.0));
        assert_eq!(
            Batches::per_batch(start, start),
            None,
            "no batch in between"
        );
        assert_eq!(Batches::per_batch(None, end), None);
        assert_eq!(Batches::parse("chat_messages_stored_total 5\n"), None);
    }
}
