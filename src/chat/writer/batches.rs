//! The writer's loop: a lane's queue taken a batch at a time, each batch
//! committed in a task of its own, one after the other, and its jobs
//! answered in the batch's order.

use super::*;

/// The writer's loop: whatever arrived while the previous batch was
/// committing is the next batch, handed to `commit`; then each message's
/// result is `answer`ed, in batch order. The next batch goes to the
/// database before the last one's answers are written, so the database
/// does not wait while this thread builds them and the ChatServer hands
/// them out; batches still commit one at a time, and are answered in the
/// order they committed.
pub(super) async fn run_batches<C, F, A>(
    mut rx: mpsc::Receiver<PendingInsert>,
    metrics: Metrics,
    commit: C,
    mut answer: A,
) where
    C: Fn(Vec<Job>) -> F,
    F: std::future::Future<Output = Results> + Send + 'static,
    A: FnMut(Vec<Waiter>, Results),
{
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut next: Option<Flight> = None;
    loop {
        let flight = match next.take() {
            Some(flight) => flight,
            None if rx.recv_many(&mut batch, MAX_BATCH).await > 0 => {
                Flight::start(&mut batch, &commit)
            }
            None => break,
        };
        let landed = flight.land().await;
        while batch.len() < MAX_BATCH {
            let Ok(pending) = rx.try_recv() else { break };
            batch.push(pending);
        }
        if !batch.is_empty() {
            next = Some(Flight::start(&mut batch, &commit));
            // Its task sends the batch before this one builds the answers.
            tokio::task::yield_now().await;
        }
        landed.answer(&metrics, &mut answer);
    }
}

/// A batch on its way to the database: its commit's task, and who waits.
struct Flight {
    commit: tokio::task::JoinHandle<Results>,
    waiters: Vec<Waiter>,
    started: Instant,
}

impl Flight {
    /// Hands the jobs of `batch` (emptied) to `commit`, in a task of their
    /// own: should a batch ever panic, its senders are told nothing was
    /// stored, and the writer goes on.
    fn start<C, F>(batch: &mut Vec<PendingInsert>, commit: &C) -> Self
    where
        C: Fn(Vec<Job>) -> F,
        F: std::future::Future<Output = Results> + Send + 'static,
    {
        // New messages first: a change may name a message of this batch,
        // and the answers (and so the events) go out in `seq` order.
        batch.sort_by_key(|p| matches!(p.job, Job::Change(_)));
        let (jobs, waiters): (Vec<Job>, Vec<Waiter>) =
            batch.drain(..).map(|p| (p.job, p.waiter)).unzip();
        Flight {
            commit: tokio::spawn(commit(jobs)),
            waiters,
            started: Instant::now(),
        }
    }

    /// Waits for the commit: a result for each waiter, in its order.
    async fn land(self) -> Landed {
        let count = self.waiters.len();
        let results = match self.commit.await {
            Ok(results) if results.len() == count => results,
            Ok(results) => {
                let error = format!("{count} messages but {} results", results.len());
                vec![Err(StoreError::Internal(error)); count]
            }
            Err(e) => {
                tracing::error!(error = %e, size = count, "message batch failed unexpectedly; its senders were told");
                vec![Err(StoreError::Internal("the batch failed".into())); count]
            }
        };
        Landed {
            waiters: self.waiters,
            results,
            took: self.started.elapsed(),
        }
    }
}

/// A batch back from the database, to be answered.
struct Landed {
    waiters: Vec<Waiter>,
    results: Results,
    took: std::time::Duration,
}

impl Landed {
    /// Answers the batch's waiters (`answer` takes them all, in the
    /// batch's order), and counts the batch.
    fn answer<A: FnMut(Vec<Waiter>, Results)>(self, metrics: &Metrics, answer: &mut A) {
        // What was committed: resends answered with their original, and
        // refusals, are not.
        let count = self.results.len();
        let messages = self
            .results
            .iter()
            .filter(|r| matches!(r, Ok(Stored::New(_))))
            .count();
        let changes = self
            .results
            .iter()
            .filter(|r| matches!(r, Ok(Stored::Changed(_))))
            .count();
        answer(self.waiters, self.results);
        metrics.record_store_batch(count, messages, changes, self.took);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(content: &str) -> PendingInsert {
        let message = NewMessage {
            chat: ChatId(uuid::Uuid::nil()),
            sender: UserId(1),
            content: content.into(),
            client_id: None,
            reply_to: None,
            attachments: Vec::new(),
        };
        let (outbox, _) = crate::chat::socket::outbox(4, None);
        PendingInsert {
            job: Job::Insert(Row {
                message,
                created_at: Utc::now(),
            }),
            waiter: Waiter {
                from: Submitter::Session {
                    outbox,
                    span: tracing::Span::none(),
                },
                arrived: Instant::now(),
                kind: RequestKind::Message,
            },
        }
    }

    #[tokio::test]
    async fn a_crashed_batch_is_answered_not_stored_and_the_writer_goes_on() {
        let (tx, rx) = mpsc::channel(8);
        // The first batch panics; later ones are answered with an error of
        // their own, so the test can tell the writer kept going.
        let commit = |batch: Vec<Job>| async move {
            if batch
                .iter()
                .any(|p| matches!(p, Job::Insert(r) if r.message.content == "crash"))
            {
                panic!("a batch crashed");
            }
            vec![Err(StoreError::Internal("second batch".into())); batch.len()]
        };
        let (answers, mut answered) = mpsc::unbounded_channel();
        let answer = move |_: Vec<Waiter>, results: Results| {
            for result in results {
                let _ = answers.send(result.err().map(|e| e.to_string()));
            }
        };
        let writer = tokio::spawn(run_batches(rx, Metrics::default(), commit, answer));
        tx.send(pending("crash")).await.unwrap();
        assert_eq!(
            answered.recv().await,
            Some(Some("message writer: the batch failed".into())),
            "the sender learns nothing was stored"
        );
        tx.send(pending("next")).await.unwrap();
        assert_eq!(
            answered.recv().await,
            Some(Some("message writer: second batch".into()))
        );
        drop(tx);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn the_next_batch_goes_to_the_database_before_the_last_ones_answers() {
        let (tx, rx) = mpsc::channel(8);
        let (events, mut seen) = mpsc::unbounded_channel::<String>();
        // The first batch's commit waits until the test has queued more.
        let (open, gate) = oneshot::channel::<()>();
        let gate = std::sync::Mutex::new(Some(gate));
        let committing = events.clone();
        let commit = move |batch: Vec<Job>| {
            let names: Vec<String> = batch
                .iter()
                .map(|job| match job {
                    Job::Insert(row) => row.message.content.clone(),
                    Job::Change(_) => "a change".into(),
                })
                .collect();
            let _ = committing.send(format!("commit {}", names.join(" ")));
            let gate = gate.lock().ok().and_then(|mut gate| gate.take());
            let sending = committing.clone();
            async move {
                // Where a real commit sends its statement.
                let _ = sending.send(format!("sent {}", names.join(" ")));
                if let Some(gate) = gate {
                    let _ = gate.await;
                }
                names
                    .into_iter()
                    .map(|name| Err(StoreError::Internal(name)))
                    .collect()
            }
        };
        let answer = move |_: Vec<Waiter>, results: Results| {
            for result in results {
                let _ = events.send(format!(
                    "answer {}",
                    result.err().map(|e| e.to_string()).unwrap_or_default()
                ));
            }
        };
        let writer = tokio::spawn(run_batches(rx, Metrics::default(), commit, answer));
        tx.send(pending("one")).await.unwrap();
        assert_eq!(seen.recv().await.as_deref(), Some("commit one"));
        assert_eq!(seen.recv().await.as_deref(), Some("sent one"));
        tx.send(pending("two")).await.unwrap();
        tx.send(pending("three")).await.unwrap();
        open.send(()).unwrap();
        let mut order = Vec::new();
        for _ in 0..5 {
            order.push(seen.recv().await.unwrap());
        }
        assert_eq!(
            order,
            [
                "commit two three",
                "sent two three",
                "answer message writer: one",
                "answer message writer: two",
                "answer message writer: three",
            ],
            "what arrived meanwhile is sent before the first batch's answers are built"
        );
        drop(tx);
        writer.await.unwrap();
    }
}
