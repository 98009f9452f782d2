//! The slots of the keys with requests in flight, and the guard that holds one.

use std::collections::HashMap;
use std::hash::RandomState;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::ConcurrencyMetrics;

/// The semaphores of the keys with requests in flight or waiting, by key hash.
pub(crate) struct Slots {
    pub(crate) busy: Mutex<HashMap<u64, Arc<Semaphore>>>,
    pub(crate) hasher: RandomState,
}

impl Slots {
    pub(crate) fn new() -> Self {
        Self {
            busy: Mutex::new(HashMap::new()),
            hasher: RandomState::new(),
        }
    }

    /// The semaphore of the key whose hash is `key`, made on first use.
    pub(crate) fn semaphore(&self, key: u64, limit: usize) -> Arc<Semaphore> {
        let mut busy = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(
            busy.entry(key)
                .or_insert_with(|| Arc::new(Semaphore::new(limit))),
        )
    }
}

/// A slot held for one request (or the claim on a key of one waiting); dropping it frees the
/// slot, and forgets the key when nothing else is in flight or waiting for it.
pub(crate) struct Held {
    pub(crate) permit: Option<OwnedSemaphorePermit>,
    pub(crate) key: u64,
    pub(crate) slots: Arc<Slots>,
    pub(crate) metrics: ConcurrencyMetrics,
}

impl Held {
    /// A slot taken: counted in flight until dropped.
    pub(crate) fn new(
        permit: Option<OwnedSemaphorePermit>,
        key: u64,
        slots: Arc<Slots>,
        metrics: &ConcurrencyMetrics,
    ) -> Self {
        if permit.is_some() {
            metrics.entered();
        }
        Self {
            permit,
            key,
            slots,
            metrics: metrics.clone(),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.permit.take().is_some() {
            self.metrics.left();
        }
        let mut busy = self
            .slots
            .busy
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Only the map holds the semaphore: no permit out, nobody waiting.
        if busy
            .get(&self.key)
            .is_some_and(|semaphore| Arc::strong_count(semaphore) == 1)
        {
            busy.remove(&self.key);
        }
    }
}
