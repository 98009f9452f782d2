//! Natural batching: decisions queued on a connection go to Redis together, in one script call.
//!
//! Nothing waits to fill a batch. A decision that finds a call slot free goes at once, alone;
//! those that arrive while [`IN_FLIGHT`] calls are out queue, and all of them (up to
//! [`MAX_BATCH`]) leave in the next call as soon as one returns. Under light load every
//! decision has its own call, as without batching; under heavy load Redis runs one `EVALSHA`
//! and one `TIME` for many decisions, which is where its CPU went.
//!
//! Only for a single Redis: on a cluster, the keys of different subjects live in different
//! slots, and one script may only touch one slot.

use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, oneshot};

use super::connection::Connection;
use super::script::{evalsha, run, Answer};
use crate::store::StoreError;

/// Calls out at once on a connection; decisions that arrive while they are out wait for the
/// next batch.
const IN_FLIGHT: usize = 2;
/// The most decisions in one call.
const MAX_BATCH: usize = 128;

/// A decision waiting for its batch: its keys and arguments, and where its answer goes.
pub(super) struct Pending {
    pub(super) keys: Vec<Vec<u8>>,
    pub(super) args: Vec<u64>,
    pub(super) answer: oneshot::Sender<Result<Answer, StoreError>>,
}

/// The queue of a connection's batches; its driver ends when the queue is dropped.
pub(super) struct Batcher {
    queue: mpsc::UnboundedSender<Pending>,
}

impl Batcher {
    /// A batcher sending on `connection`, each call bounded by `timeout`. Must be called in a
    /// tokio runtime.
    pub(super) fn start(connection: Connection, script: redis::Script, timeout: Duration) -> Self {
        let (queue, arrivals) = mpsc::unbounded_channel();
        tokio::spawn(drive(arrivals, connection, script, timeout));
        Self { queue }
    }

    /// Queues a decision; its answer comes on the receiver (closed if the driver is gone).
    pub(super) fn submit(
        &self,
        keys: Vec<Vec<u8>>,
        args: Vec<u64>,
    ) -> oneshot::Receiver<Result<Answer, StoreError>> {
        let (answer, receiver) = oneshot::channel();
        let _ = self.queue.send(Pending { keys, args, answer });
        receiver
    }
}

async fn drive(
    mut arrivals: mpsc::UnboundedReceiver<Pending>,
    connection: Connection,
    script: redis::Script,
    timeout: Duration,
) {
    let mut queued: Vec<Pending> = Vec::new();
    let mut calls = FuturesUnordered::new();
    let mut open = true;
    loop {
        while calls.len() < IN_FLIGHT && !queued.is_empty() {
            let take = queued.len().min(MAX_BATCH);
            let batch: Vec<Pending> = queued.drain(..take).collect();
            calls.push(send(batch, connection.clone(), &script, timeout));
        }
        if !open && calls.is_empty() && queued.is_empty() {
            return;
        }
        tokio::select! {
            biased;
            Some(()) = calls.next(), if !calls.is_empty() => {}
            arrival = arrivals.recv(), if open => match arrival {
                Some(pending) => {
                    queued.push(pending);
                    while let Ok(pending) = arrivals.try_recv() {
                        queued.push(pending);
                    }
                }
                None => open = false,
            },
        }
    }
}

/// One call for a batch; each decision gets its share of the answer, or the error.
async fn send(
    batch: Vec<Pending>,
    mut connection: Connection,
    script: &redis::Script,
    timeout: Duration,
) {
    let mut quota_counts = Vec::with_capacity(batch.len());
    let keys = batch.iter().flat_map(|p| p.keys.iter().map(Vec::as_slice));
    let key_count = batch.iter().map(|p| p.keys.len()).sum();
    let args = std::iter::once(batch.len() as u64)
        .chain(batch.iter().flat_map(|p| p.args.iter().copied()));
    let cmd = evalsha(script, Counted(keys, key_count), args);
    for pending in &batch {
        quota_counts.push(pending.keys.len());
    }
    let raw: Result<Vec<i64>, StoreError> =
        match tokio::time::timeout(timeout, run(script, &cmd, &mut connection)).await {
            Ok(Ok(raw)) => Ok(raw),
            Ok(Err(error)) => Err(StoreError::Backend(Box::new(error))),
            Err(_) => Err(StoreError::Timeout(timeout)),
        };
    match raw.map(|raw| Answer::split(&raw, &quota_counts)) {
        Ok(Some(answers)) => {
            for (pending, answer) in batch.into_iter().zip(answers) {
                let _ = pending.answer.send(Ok(answer));
            }
        }
        Ok(None) => {
            for pending in batch {
                let _ = pending.answer.send(Err(StoreError::Backend(
                    "the decision script answered in an unexpected shape".into(),
                )));
            }
        }
        Err(error) => {
            let text = error.to_string();
            for pending in batch {
                let error = match &error {
                    StoreError::Timeout(after) => StoreError::Timeout(*after),
                    _ => StoreError::Backend(text.clone().into()),
                };
                let _ = pending.answer.send(Err(error));
            }
        }
    }
}

/// An iterator whose length is known beforehand.
struct Counted<I>(I, usize);

impl<I: Iterator> Iterator for Counted<I> {
    type Item = I::Item;

    fn next(&mut self) -> Option<I::Item> {
        let item = self.0.next()?;
        self.1 -= 1;
        Some(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.1, Some(self.1))
    }
}

impl<I: Iterator> ExactSizeIterator for Counted<I> {}
