//! What was learned of each host, and the admission of requests against it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::uri::Authority;
use http::{HeaderMap, StatusCode};
use tokio::time::Instant;

use super::events::{emit, LearnEvent, LearnEventKind};
use super::layer::Settings;
use crate::clock::TokioClock;
use crate::headers::said::Limits;
use crate::headers::server;
use crate::metrics::LearnMetrics;
use crate::{MemoryStore, RateLimiter};

/// The most destinations remembered; past it, hosts whose state has lapsed are forgotten.
pub(crate) const MAX_HOSTS: usize = 4096;

/// How often a request waiting for news of its host (spent, next reset unknown) looks again.
pub(crate) const NEWS_POLL: Duration = Duration::from_millis(100);

pub(crate) struct Shared {
    pub(crate) hosts: Mutex<HashMap<Authority, Host>>,
    pub(crate) settings: Settings,
    /// Hosts that said nothing, under the default quota: the crate's one admission path.
    pub(crate) default_limiter: Option<RateLimiter<Authority, MemoryStore<TokioClock>>>,
    pub(crate) metrics: LearnMetrics,
}

/// What was learned of one host.
#[derive(Debug, Clone, Default)]
pub(crate) struct Host {
    /// Requests the server still allows before `reset_at`, minus those sent since.
    pub(crate) remaining: Option<u64>,
    /// When the server's allowance comes back.
    pub(crate) reset_at: Option<Instant>,
    /// What it comes back to, when the server said.
    pub(crate) limit: Option<u64>,
    /// No request before this (a `Retry-After`).
    pub(crate) cooled_until: Option<Instant>,
    /// Requests sent and not yet answered.
    pub(crate) in_flight: u64,
    /// The server has sent limits.
    pub(crate) told: bool,
    /// Adaptive mode: the rate, and the time of the next free slot.
    pub(crate) rate: f64,
    pub(crate) next_slot: Option<Instant>,
}

/// What admission decided.
pub(crate) enum Admit {
    /// Go now, holding this place.
    Now(Place),
    /// Go after this wait: the place (an adaptive slot) is booked.
    After(Duration, Place),
    /// Not before this wait; nothing was taken.
    Refuse(Duration),
}

/// A request's place with its host: counted in flight, one of what the server said is left,
/// and, in adaptive mode, the slot booked for it. Dropping it gives back the count, and, if
/// the request was never sent (dropped while it waited, or its service failed before sending
/// it), the one it took of what is left and its booked slot.
pub(crate) struct Place {
    shared: Arc<Shared>,
    host: Authority,
    /// The booked adaptive slot: when, and the interval it took.
    booked: Option<(Instant, Duration)>,
    /// It took one of the requests the server said are left.
    took_remaining: bool,
    sent: bool,
}

impl Place {
    /// The request is sent: what it took is spent, whatever happens next.
    pub(crate) fn sent(&mut self) {
        self.sent = true;
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut hosts = self.shared.lock();
        let Some(state) = hosts.get_mut(&self.host) else {
            return;
        };
        state.in_flight = state.in_flight.saturating_sub(1);
        if self.sent {
            return;
        }
        if self.took_remaining {
            if let Some(remaining) = &mut state.remaining {
                *remaining += 1;
            }
        }
        if let Some((slot, interval)) = self.booked {
            // Only the last slot booked can be given back without moving another's.
            if state.next_slot == Some(slot + interval) {
                state.next_slot = Some(slot);
            }
        }
    }
}

impl Shared {
    /// Reports an event (the hook, `tracing`).
    pub(crate) fn event(
        &self,
        kind: LearnEventKind,
        host: &Authority,
        delay: Duration,
        limits: Option<&Limits>,
    ) {
        emit(
            self.settings.hook.as_ref(),
            &LearnEvent::new(kind, &self.settings.name, host, delay, limits),
        );
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Authority, Host>> {
        self.hosts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a place for one request to `host`, or says how long until there is one (taking
    /// nothing then).
    /// `budget` is what is left of the request's maximum wait.
    pub(crate) fn admit(
        self: &Arc<Self>,
        host: &Authority,
        now: Instant,
        budget: Duration,
    ) -> Admit {
        let mut hosts = self.lock();
        if hosts.len() >= MAX_HOSTS && !hosts.contains_key(host) {
            hosts.retain(|_, h| {
                h.in_flight > 0
                    || h.cooled_until.is_some_and(|t| t > now)
                    || h.reset_at.is_some_and(|t| t > now)
            });
        }
        let state = hosts.entry(host.clone()).or_insert_with(|| Host {
            rate: self.settings.aimd.map_or(0.0, |a| a.start),
            ..Host::default()
        });
        let mut wait = Duration::ZERO;
        if let Some(until) = state.cooled_until {
            if until > now {
                wait = until - now;
            } else {
                state.cooled_until = None;
            }
        }
        match state.reset_at {
            Some(reset) if reset <= now => {
                // The server's window came back: to its limit if it said one, else unknown.
                state.reset_at = None;
                state.remaining = state.limit;
            }
            Some(reset) if state.remaining == Some(0) => wait = wait.max(reset - now),
            // Spent, and the next reset unknown until an answer in flight says it: look again
            // shortly.
            None if state.remaining == Some(0) && state.in_flight > 0 => wait = wait.max(NEWS_POLL),
            _ => {}
        }
        if !wait.is_zero() {
            return Admit::Refuse(wait);
        }
        let place = |booked, took_remaining| Place {
            shared: Arc::clone(self),
            host: host.clone(),
            booked,
            took_remaining,
            sent: false,
        };
        let mut booked = None;
        if !state.told {
            if let Some(aimd) = self.settings.aimd {
                let slot = state.next_slot.map_or(now, |s| s.max(now));
                let rate = state
                    .rate
                    .clamp(aimd.floor.max(1e-3), aimd.ceiling.max(aimd.floor.max(1e-3)));
                let interval = Duration::from_secs_f64(1.0 / rate);
                let wait = slot - now;
                let may_wait = self.settings.wait && wait <= budget;
                if !(wait.is_zero() || may_wait) {
                    return Admit::Refuse(wait);
                }
                // The slot is taken: this request goes at `slot`.
                state.next_slot = Some(slot + interval);
                state.in_flight += 1;
                booked = Some((slot, interval));
                if !wait.is_zero() {
                    return Admit::After(wait, place(booked, false));
                }
            }
        }
        let took_remaining = match &mut state.remaining {
            Some(remaining) if *remaining > 0 => {
                *remaining -= 1;
                true
            }
            _ => false,
        };
        if booked.is_none() {
            state.in_flight += 1;
        }
        Admit::Now(place(booked, took_remaining))
    }

    /// Records what a response says of its host.
    pub(crate) fn learn(
        &self,
        host: &Authority,
        status: StatusCode,
        headers: &HeaderMap,
        now: Instant,
    ) {
        let mut hosts = self.lock();
        let Some(state) = hosts.get_mut(host) else {
            return;
        };
        let cap = |d: Duration| d.min(self.settings.max_wait);
        let said = server::read(headers);
        // The retry layer's rule too: a 403 with a delay is a rate limit (GitHub's).
        let throttled = status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::SERVICE_UNAVAILABLE
            || (status == StatusCode::FORBIDDEN && server::forbidden_by_rate_limit(&said));
        if let Some(limits) = &said.limits {
            state.told = true;
            // Other requests still in flight will spend from what is left.
            let others = state.in_flight.saturating_sub(1);
            state.remaining = Some(limits.remaining.saturating_sub(others));
            state.reset_at = limits.reset.map(|r| now + cap(r));
            if limits.limit.is_some() {
                state.limit = limits.limit;
            }
        }
        if throttled {
            // The same delay the retry layer reads: the later of every field.
            if let Some(delay) = said.delay {
                let until = now + cap(delay);
                state.cooled_until = Some(state.cooled_until.map_or(until, |t| t.max(until)));
            }
            if let Some(aimd) = self.settings.aimd {
                state.rate = (state.rate * aimd.decrease).max(aimd.floor);
            }
        } else if status.is_success() {
            if let Some(aimd) = self.settings.aimd {
                state.rate = (state.rate + aimd.step).min(aimd.ceiling);
            }
        }
        if said.limits.is_some() || (throttled && said.delay.is_some()) {
            self.metrics.learned();
            self.event(
                LearnEventKind::Learned,
                host,
                said.delay.unwrap_or_default(),
                said.limits.as_ref(),
            );
        }
    }
}
