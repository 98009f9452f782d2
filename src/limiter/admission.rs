//! The one admission path: cost, decision, allow / wait / refuse, reports, slots.

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use super::events::{emit, Hook, LimitEvent, LimitEventKind};
use super::refusal::{RateLimited, Refusal};
use super::watch::Watch;
use crate::key::{LogKeys, LoggedKey};
use crate::metrics::LimiterMetrics;
use crate::store::{Ask, StoreError};
use crate::{Decision, Quotas, Store};

/// What every decision of one limiter (or one layer) shares: the store, and how denials and
/// waits are reported.
pub(crate) struct Admission<S> {
    pub(crate) store: S,
    pub(crate) name: Arc<str>,
    pub(crate) hook: Option<Hook>,
    pub(crate) log_keys: LogKeys,
    pub(crate) metrics: LimiterMetrics,
    /// Shadow mode and near-limit events; nothing by default.
    pub(crate) watch: Watch,
}

/// What an admitted request holds until it goes ahead, named.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Hold {
    /// Hold the slot with a guard that gives it back if dropped unused, even when there is
    /// nothing to wait for (a reservation made before its request exists). A request that
    /// must wait always holds its slot.
    pub(crate) slot: bool,
    /// The request's estimated cost, to settle from its response ([`Settle`]).
    pub(crate) settle: Option<u32>,
}

/// An admitted request: the store's decision, and what it holds until it goes ahead. Most
/// requests hold nothing, and carry no more than their decision.
pub(crate) struct Admitted {
    pub(crate) decision: Decision,
    held: Option<Box<Held>>,
}

/// What an admitted request holds, when it holds anything.
#[derive(Default)]
struct Held {
    /// Gives the slot back unless [`Slot::used`] is called (waits, reservations).
    slot: Option<Slot>,
    /// Settles the cost from the response, when the layer reads it from there.
    settle: Option<Settle>,
    /// Decided across several keys: the binding part's quotas, which the headers describe.
    binding: Option<Quotas>,
}

/// What an allowed decision leaves to do.
enum Verdict {
    /// Nothing more: refused, or admitted with nothing to give back or settle.
    Done(Result<Admitted, Refusal>),
    /// Admitted: hold a slot (`slot`) or settle the cost, through the key's account.
    Held { decision: Decision, slot: bool },
}

/// The admission decided now, or a future deciding it (a network store).
pub(crate) enum Admit {
    Now(Result<Admitted, Refusal>),
    Later(Pin<Box<dyn Future<Output = Result<Admitted, Refusal>> + Send>>),
}

impl<S> Admission<S> {
    pub(crate) fn new(store: S, name: Arc<str>, hook: Option<Hook>, log_keys: LogKeys) -> Self {
        let metrics = LimiterMetrics::new(&name, false, false, false);
        Self {
            store,
            name,
            hook,
            log_keys,
            metrics,
            watch: Watch::default(),
        }
    }

    /// The same admission over `store`: name, hook, key display, shadow mode and statistics
    /// kept (near-limit reports and blocks, which hold tables of their own, start afresh).
    pub(crate) fn with_store<S2>(&self, store: S2) -> Admission<S2> {
        Admission::new(
            store,
            Arc::clone(&self.name),
            self.hook.clone(),
            self.log_keys,
        )
        .watching(Watch {
            shadow: self.watch.shadow,
            stats: self.watch.stats.clone(),
            ..Watch::default()
        })
    }

    /// Watches decisions as `watch` says (shadow mode, near-limit events).
    pub(crate) fn watching(mut self, watch: Watch) -> Self {
        self.metrics = LimiterMetrics::new(
            &self.name,
            watch.shadow,
            watch.near_limit.is_some(),
            watch.block.is_some(),
        );
        self.watch = watch;
        self
    }

    /// The one admission path: `ask`, holding what `hold` names. Blocks are checked first
    /// (without the store); then the store decides, at once or later, and the decision is
    /// reported once: allowed, waiting (its slot held), or refused.
    #[inline(always)]
    pub(crate) fn admit<K>(self: &Arc<Self>, ask: Ask<'_, K>, hold: Hold) -> Admit
    where
        S: Store<K>,
        K: Hash + fmt::Debug + Clone + Send + Sync + 'static,
    {
        if self.watch.block.is_some() && !ask.is_empty() {
            let (key, quotas) = ask.part(0);
            if let Some(refused) = self.blocked(key, quotas) {
                return Admit::Now(Err(refused));
            }
        }
        let mut deciding = self.store.decide(&ask);
        let mut at_once = Context::from_waker(Waker::noop());
        match Pin::new(&mut deciding).poll(&mut at_once) {
            Poll::Ready(decided) => Admit::Now(self.conclude(ask, hold, decided)),
            Poll::Pending => {
                // A network store: what the conclusion needs is kept with the future.
                let (this, owned) = (Arc::clone(self), Owned::of(&ask));
                Admit::Later(Box::pin(async move {
                    let decided = deciding.await;
                    this.conclude(owned.ask(), hold, decided)
                }))
            }
        }
    }

    /// What the store's answer means for the request, reported once.
    #[inline(always)]
    fn conclude<K>(
        &self,
        ask: Ask<'_, K>,
        hold: Hold,
        decided: Result<Decision, StoreError>,
    ) -> Result<Admitted, Refusal>
    where
        S: Store<K>,
        K: Hash + fmt::Debug + Clone + Send + Sync + 'static,
    {
        // One key (the common case): its own part binds, and blocks count it.
        let (key, quotas, first, across) = match ask.single() {
            Some((key, quotas)) => (key, quotas, key, false),
            None => {
                let part = decided
                    .as_ref()
                    .map_or(0, Decision::part)
                    .min(ask.len().saturating_sub(1));
                let (key, quotas) = ask.part(part);
                // Blocks count and check the first part's key: the client's own (see
                // `Scopes`).
                (key, quotas, ask.part(0).0, true)
            }
        };
        let mut admitted = match self.verdict(key, first, quotas, hold, decided) {
            Verdict::Done(done) if !across => return done,
            Verdict::Done(done) => done?,
            Verdict::Held { decision, slot } => {
                let account = Arc::new(Account {
                    store: self.store.clone(),
                    ask: Owned::of(&ask).charged_at(decision.decided_at()),
                });
                Admitted::held(decision, account, ask.cost(), slot, hold.settle)
            }
        };
        if across {
            admitted.held.get_or_insert_with(Box::default).binding = Some(quotas.clone());
        }
        Ok(admitted)
    }

    /// The decision's meaning, reported: done (refused, or admitted with nothing to give back
    /// later), or admitted with a slot or cost to hold.
    #[inline(always)]
    fn verdict<K: Hash + fmt::Debug>(
        &self,
        key: &K,
        block_key: &K,
        quotas: &Quotas,
        hold: Hold,
        decided: Result<Decision, StoreError>,
    ) -> Verdict {
        let decision = match decided {
            Ok(decision) => decision,
            Err(StoreError::Quota(error)) => return Verdict::Done(Err(Refusal::TooCostly(error))),
            Err(error) => return Verdict::Done(Err(Refusal::StoreFailed(error))),
        };
        if decision.is_alone() {
            self.metrics.decided_alone();
            if let Some(stats) = &self.watch.stats {
                stats.decided_alone();
            }
        }
        if !decision.is_allowed() {
            self.event(LimitEventKind::Denied, key, quotas, &decision);
            if let Some(block) = &self.watch.block {
                if block.refused(block_key) {
                    self.event(LimitEventKind::Blocked, block_key, quotas, &decision);
                }
            }
            if self.watch.shadow {
                // Let through, uncharged: the store is as enforcement would have left it.
                return Verdict::Done(Ok(Admitted::now(decision.at_once())));
            }
            return Verdict::Done(Err(Refusal::Limited(RateLimited::new(
                decision,
                quotas.clone(),
            ))));
        }
        self.metrics.allowed();
        if let Some(stats) = &self.watch.stats {
            stats.allowed();
        }
        let waits = !decision.wait().is_zero();
        if waits {
            self.event(LimitEventKind::Waiting, key, quotas, &decision);
        }
        if let Some(near_limit) = &self.watch.near_limit {
            let quota = &quotas.as_slice()[decision.quota_index()];
            if near_limit.report(key, quota, &decision) {
                self.event(LimitEventKind::NearLimit, key, quotas, &decision);
            }
        }
        if self.watch.shadow && waits {
            // Goes at once, its slot charged where it would have waited.
            return Verdict::Done(Ok(Admitted::now(decision.at_once())));
        }
        if !(waits || hold.slot || hold.settle.is_some()) {
            return Verdict::Done(Ok(Admitted::now(decision)));
        }
        Verdict::Held {
            decision,
            slot: waits || hold.slot,
        }
    }

    /// The refusal of a blocked key, decided without the store (none in shadow mode).
    #[inline]
    fn blocked<K: Hash + fmt::Debug>(&self, key: &K, quotas: &Quotas) -> Option<Refusal> {
        let block = self.watch.block.as_ref()?;
        let wait = block.blocked(key)?;
        if self.watch.shadow {
            return None;
        }
        let gcra = crate::gcra::Gcra::new(&quotas.as_slice()[0]);
        let decision = Decision::denied(0, wait, wait.saturating_add(gcra.window_nanos()), gcra, 0);
        self.event(LimitEventKind::Denied, key, quotas, &decision);
        Some(Refusal::Limited(RateLimited::new(decision, quotas.clone())))
    }

    fn event<K: Hash + fmt::Debug>(
        &self,
        kind: LimitEventKind,
        key: &K,
        quotas: &Quotas,
        decision: &Decision,
    ) {
        if let Some(stats) = &self.watch.stats {
            match kind {
                LimitEventKind::Denied => stats.refused(key, self.log_keys),
                LimitEventKind::Waiting => stats.waited(),
                LimitEventKind::NearLimit => stats.near_limit(),
                LimitEventKind::Blocked => stats.blocked(),
            }
        }
        let delay = match kind {
            LimitEventKind::Denied => {
                self.metrics.limited();
                decision.retry_after()
            }
            LimitEventKind::Waiting => {
                self.metrics.waited(decision.wait());
                decision.wait()
            }
            LimitEventKind::NearLimit => {
                self.metrics.near_limit();
                Duration::ZERO
            }
            LimitEventKind::Blocked => {
                self.metrics.blocked();
                self.watch
                    .block
                    .as_ref()
                    .and_then(|block| block.blocked(key))
                    .map_or(Duration::ZERO, Duration::from_nanos)
            }
        };
        emit(
            self.hook.as_ref(),
            &LimitEvent {
                kind,
                layer: &self.name,
                key: LoggedKey::new(key, self.log_keys),
                delay,
                quota: &quotas.as_slice()[decision.quota_index()],
                decision,
                shadow: self.watch.shadow,
            },
        );
    }
}

impl Admitted {
    /// Admitted, with nothing held.
    #[inline]
    fn now(decision: Decision) -> Self {
        Self {
            decision,
            held: None,
        }
    }

    /// Admitted, holding its slot (with `slot`) and settling its cost (with `settle`, the
    /// estimate) through `account`.
    fn held(
        decision: Decision,
        account: Arc<dyn Ledger>,
        cost: u32,
        slot: bool,
        settle: Option<u32>,
    ) -> Self {
        Self {
            decision,
            held: Some(Box::new(Held {
                slot: slot.then(|| Slot::new(Arc::clone(&account), cost)),
                settle: settle.map(|estimate| Settle {
                    account,
                    charged: cost,
                    estimate,
                }),
                binding: None,
            })),
        }
    }

    /// The cost to settle from the response, taken out (once).
    #[inline]
    pub(crate) fn take_settle(&mut self) -> Option<Settle> {
        self.held.as_mut()?.settle.take()
    }

    /// The quotas the headers describe: the binding part's, for a request asked across
    /// several keys; `quotas` (the layer's) otherwise.
    #[inline]
    pub(crate) fn quotas<'a>(&'a self, quotas: &'a Quotas) -> &'a Quotas {
        match &self.held {
            Some(held) => held.binding.as_ref().unwrap_or(quotas),
            None => quotas,
        }
    }

    /// The slot has come: marks it used.
    #[inline]
    pub(crate) fn use_slot(self) -> Decision {
        if let Some(slot) = self.held.and_then(|held| held.slot) {
            slot.used();
        }
        self.decision
    }

    /// Sleeps until the slot, then marks it used.
    pub(crate) async fn wait_for_slot(self) -> Decision {
        let wait = self.decision.wait();
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        self.use_slot()
    }
}

/// A key's place in a store, for what is given back or charged after the decision.
trait Ledger: Send + Sync {
    fn refund(&self, cost: u32);
    fn charge(&self, cost: u32);
}

/// An ask, owned: what a decision made later, and a ledger that gives back or charges after
/// the decision, keep of it.
struct Owned<K> {
    parts: OwnedParts<K>,
    cost: u32,
    max_wait: Duration,
    /// The store's time of the decision that charged it: what a refund is checked against.
    charged_at: u64,
}

enum OwnedParts<K> {
    One(K, Quotas),
    Many(Arc<[(K, Quotas)]>),
}

impl<K: Clone> Owned<K> {
    fn of(ask: &Ask<'_, K>) -> Self {
        let parts = match ask.single() {
            Some((key, quotas)) => OwnedParts::One(key.clone(), quotas.clone()),
            None => OwnedParts::Many(
                ask.parts()
                    .map(|(key, quotas)| (key.clone(), quotas.clone()))
                    .collect(),
            ),
        };
        Self {
            parts,
            cost: ask.cost(),
            max_wait: ask.max_wait(),
            charged_at: 0,
        }
    }

    /// The same, charged by a decision made at `at` (the store's time).
    fn charged_at(self, at: u64) -> Self {
        Self {
            charged_at: at,
            ..self
        }
    }
}

impl<K> Owned<K> {
    /// The ask again.
    fn ask(&self) -> Ask<'_, K> {
        let ask = match &self.parts {
            OwnedParts::One(key, quotas) => Ask::new(key, quotas),
            OwnedParts::Many(parts) => Ask::across(parts),
        };
        ask.with_cost(self.cost)
            .with_max_wait(self.max_wait)
            .charged_at_time(self.charged_at)
    }
}

/// A request's place in a store, for what is given back or charged after the decision.
struct Account<S, K> {
    store: S,
    ask: Owned<K>,
}

impl<S, K> Ledger for Account<S, K>
where
    S: Store<K>,
    K: Send + Sync + 'static,
{
    fn refund(&self, cost: u32) {
        self.store.refund(&self.ask.ask(), cost);
    }

    /// Charges `cost` whatever is left: a decision that may wait for ever always passes and
    /// moves the TAT. Over a burst, in pieces of the largest cost every quota accepts.
    fn charge(&self, cost: u32) {
        let ask = self.ask.ask();
        let most = ask
            .parts()
            .map(|(_, quotas)| quotas.max_cost())
            .min()
            .unwrap_or(0)
            .max(1);
        let mut left = cost;
        while left > 0 {
            let piece = left.min(most);
            left -= piece;
            let mut charging = self.store.decide(&ask.again(piece, Duration::MAX));
            let mut at_once = Context::from_waker(Waker::noop());
            if Pin::new(&mut charging).poll(&mut at_once).is_ready() {
                continue;
            }
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = charging.await;
                });
            }
        }
    }
}

/// A slot reserved in the store, given back when dropped unless it was used.
pub(crate) struct Slot {
    account: Option<Arc<dyn Ledger>>,
    cost: u32,
}

impl Slot {
    fn new(account: Arc<dyn Ledger>, cost: u32) -> Self {
        Self {
            account: Some(account),
            cost,
        }
    }

    /// The slot was used: nothing to give back.
    pub(crate) fn used(mut self) {
        self.account = None;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(account) = self.account.take() {
            account.refund(self.cost);
        }
    }
}

/// The cost of an admitted request as charged up front (an estimate), to be settled once its
/// response says what it really cost.
pub(crate) struct Settle {
    account: Arc<dyn Ledger>,
    /// What was charged up front.
    charged: u32,
    /// What the request costs when its response does not say.
    estimate: u32,
}

impl Settle {
    /// A unit reserved earlier was charged for this request too, and is part of its estimate.
    pub(crate) fn covers_one_more(&mut self) {
        self.charged = self.charged.saturating_add(1);
        self.estimate = self.estimate.saturating_add(1);
    }

    /// The request's estimate is `estimate` after all (a unit reserved before its cost was
    /// known).
    pub(crate) fn estimate(&mut self, estimate: u32) {
        self.estimate = estimate;
    }

    /// Charges what the response says beyond what was charged, or gives back the rest; a
    /// response that says nothing costs the estimate.
    pub(crate) fn finish(self, actual: Option<u32>) {
        let cost = actual.unwrap_or(self.estimate);
        if cost > self.charged {
            self.account.charge(cost - self.charged);
        } else if cost < self.charged {
            self.account.refund(self.charged - cost);
        }
    }
}
