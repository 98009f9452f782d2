//! Natural batching: decisions queued on a connection go to Redis together, in one script call.
//!
//! Nothing waits to fill a batch. A decision that finds a call slot free goes at once, alone;
//! those that arrive while [`IN_FLIGHT`] calls are out queue, and all of them (up to
//! [`MAX_BATCH`]) leave in the next call as soon as one returns. Under light load every
//! decision has its own call, as without batching; under heavy load Redis runs one `EVALSHA`
//! and one `TIME` for many decisions, which is where its CPU went.
//!
//! On a Redis Cluster a call goes to one node, so queued decisions are grouped by the node
//! that serves their slot ([`SlotMap`]), and each group goes in one call of the
//! [cross-slot script](super::script::DECIDE_ACROSS_SLOTS). Should the map be stale, the call
//! fails before writing anything; its decisions are then sent again one at a time (redis-rs
//! routes each to the right node) and the map is read again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, oneshot};

use super::connection::Connection;
use super::script::{evalsha, run, Answer, ScriptTime};
use super::slots::SlotMap;
use crate::store::StoreError;

/// Calls out at once on a connection (per node on a cluster); decisions that arrive while
/// they are out wait for the next batch.
const IN_FLIGHT: usize = 2;
/// The most decisions in one call. With [`IN_FLIGHT`], 1,024 decisions per round trip: at a
/// 40 ms round trip (a remote region), 25,600 a second before decisions queue. (More calls
/// in flight make smaller batches on a cluster, and cost Redis more per decision.)
const MAX_BATCH: usize = 512;
/// Calls out at once per node of a cluster: one, so that each node's batches are as large as
/// its share of the decisions allows (two halved them, and Redis's efficiency with them).
const IN_FLIGHT_PER_NODE: usize = 1;

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

/// Where a batch goes.
pub(super) enum Route {
    /// One Redis: any decisions together, with the decision script.
    Single { script: redis::Script },
    /// A cluster: the decisions of one node together, with the cross-slot script; one at a
    /// time with the decision script when the map is not known or wrong.
    Cluster {
        across_slots: redis::Script,
        one: redis::Script,
        map: Arc<SlotMap>,
    },
}

impl Batcher {
    /// A batcher sending on `connection`, each call bounded by `timeout`. Must be called in a
    /// tokio runtime.
    pub(super) fn start(
        connection: Connection,
        route: Route,
        timeout: Duration,
        time: ScriptTime,
    ) -> Self {
        let (queue, arrivals) = mpsc::unbounded_channel();
        tokio::spawn(drive(arrivals, connection, route, timeout, time));
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
    route: Route,
    timeout: Duration,
    time: ScriptTime,
) {
    let time = &time;
    let mut queued: Vec<Pending> = Vec::new();
    // Calls out, each answering with its node (0 on a single Redis), and how many per node.
    let mut calls = FuturesUnordered::new();
    let mut out: HashMap<u16, usize> = HashMap::new();
    let mut open = true;
    if let Route::Cluster { map, .. } = &route {
        map.refresh(&mut connection.clone()).await;
    }
    loop {
        match &route {
            Route::Single { script } => {
                while calls.len() < IN_FLIGHT && !queued.is_empty() {
                    let take = queued.len().min(MAX_BATCH);
                    let batch: Vec<Pending> = queued.drain(..take).collect();
                    let call = send(batch, connection.clone(), script, timeout, time);
                    calls.push(call.map(|()| 0).boxed());
                }
            }
            Route::Cluster {
                across_slots,
                one,
                map,
            } => {
                let owners = map.owners();
                if !queued.is_empty() {
                    // One call per node for what is queued, to the nodes with room: a
                    // stalled node's calls must not hold back the others'.
                    let mut groups: HashMap<u16, Vec<Pending>> = HashMap::new();
                    for pending in queued.drain(..) {
                        let node = owners.as_ref().map_or(0, |o| o.node_of(&pending.keys[0]));
                        groups.entry(node).or_default().push(pending);
                    }
                    for (node, mut group) in groups {
                        if out.get(&node).copied().unwrap_or(0) >= IN_FLIGHT_PER_NODE {
                            queued.append(&mut group);
                            continue;
                        }
                        *out.entry(node).or_default() += 1;
                        let rest = group.split_off(group.len().min(MAX_BATCH));
                        queued.extend(rest);
                        let call = if owners.is_some() {
                            send_across_slots(
                                group,
                                connection.clone(),
                                across_slots,
                                one,
                                map,
                                timeout,
                                time,
                            )
                            .boxed()
                        } else {
                            one_at_a_time(group, connection.clone(), one, timeout, time).boxed()
                        };
                        calls.push(call.map(move |()| node).boxed());
                    }
                }
            }
        }
        if !open && calls.is_empty() && queued.is_empty() {
            return;
        }
        tokio::select! {
            biased;
            Some(node) = calls.next(), if !calls.is_empty() => {
                if let Some(count) = out.get_mut(&node) {
                    *count = count.saturating_sub(1);
                }
            }
            arrival = arrivals.recv(), if open => match arrival {
                Some(pending) => {
                    queued.push(pending);
                    while let Ok(pending) = arrivals.try_recv() {
                        queued.push(pending);
                    }
                    // A caller that timed out while its decision queued has gone on without
                    // it: sending it would charge a request that never happened.
                    queued.retain(|pending| !pending.answer.is_closed());
                }
                None => open = false,
            },
        }
    }
}

/// A cluster batch: one call of the cross-slot script to the node of its first key. If the
/// node refuses (a key it does not serve: the map is stale), nothing was written; the
/// decisions go again one at a time, and the map is read again.
async fn send_across_slots(
    batch: Vec<Pending>,
    mut connection: Connection,
    across_slots: &redis::Script,
    one: &redis::Script,
    map: &SlotMap,
    timeout: Duration,
    time: &ScriptTime,
) {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(across_slots.get_hash())
        .arg(1)
        .arg(&batch[0].keys[0])
        .arg(batch.len());
    for pending in &batch {
        let (numbers, rest) = pending.args.split_at(4);
        let n = numbers[0] as usize;
        let (quotas, carried) = rest.split_at(2 * n);
        let (keys, carried_keys) = pending.keys.split_at(n);
        cmd.arg(numbers);
        for (key, quota) in keys.iter().zip(quotas.chunks(2)) {
            cmd.arg(key).arg(quota);
        }
        for (key, earlier) in carried_keys.iter().zip(carried.chunks(2)) {
            cmd.arg(key).arg(earlier);
        }
    }
    cmd.arg(time.arg());
    let answer = tokio::time::timeout(
        timeout,
        run::<Vec<i64>>(across_slots, &cmd, &mut connection),
    )
    .await;
    match answer {
        Ok(Ok(raw)) => deliver(batch, Ok(raw)),
        Ok(Err(error)) if !error.is_io_error() && !error.is_timeout() => {
            map.refresh(&mut connection).await;
            one_at_a_time(batch, connection, one, timeout, time).await;
        }
        Ok(Err(error)) => deliver(batch, Err(StoreError::Backend(Box::new(error)))),
        Err(_) => deliver(batch, Err(StoreError::Timeout(timeout))),
    }
}

/// Each decision in its own call, all at once.
async fn one_at_a_time(
    batch: Vec<Pending>,
    connection: Connection,
    script: &redis::Script,
    timeout: Duration,
    time: &ScriptTime,
) {
    let calls = batch
        .into_iter()
        .map(|pending| send(vec![pending], connection.clone(), script, timeout, time));
    futures_util::future::join_all(calls).await;
}

/// One call for a batch; each decision gets its share of the answer, or the error.
async fn send(
    batch: Vec<Pending>,
    mut connection: Connection,
    script: &redis::Script,
    timeout: Duration,
    time: &ScriptTime,
) {
    let keys = batch.iter().flat_map(|p| p.keys.iter().map(Vec::as_slice));
    let key_count = batch.iter().map(|p| p.keys.len()).sum();
    let args = std::iter::once(batch.len() as u64)
        .chain(batch.iter().flat_map(|p| p.args.iter().copied()))
        .chain([time.arg()]);
    let cmd = evalsha(script, Counted(keys, key_count), args);
    let raw = match tokio::time::timeout(timeout, run(script, &cmd, &mut connection)).await {
        Ok(Ok(raw)) => Ok(raw),
        Ok(Err(error)) => Err(StoreError::Backend(Box::new(error))),
        Err(_) => Err(StoreError::Timeout(timeout)),
    };
    deliver(batch, raw);
}

/// Gives each decision of `batch` its share of a script's answer, or the error.
fn deliver(batch: Vec<Pending>, raw: Result<Vec<i64>, StoreError>) {
    let quota_counts: Vec<usize> = batch.iter().map(|p| p.args[0] as usize).collect();
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
            // The cause's text (each copy is wrapped again by StoreError's Display).
            let text = match &error {
                StoreError::Backend(cause) => cause.to_string(),
                other => other.to_string(),
            };
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
