//! What was learned of each host and of each limit it named, which limits each route is
//! under, and the admission of requests against them.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::uri::Authority;
use http::{HeaderMap, Method, StatusCode, Uri};
use tokio::time::Instant;

use super::events::{emit, LearnEvent, LearnEventKind};
use super::layer::Settings;
use crate::clock::TokioClock;
use crate::headers::said::Limits;
use crate::headers::server;
use crate::metrics::LearnMetrics;
use crate::{MemoryStore, RateLimiter};

/// The most destinations remembered; past it, hosts whose state has lapsed are forgotten, and
/// if none has, one other (with nothing in flight if there is one).
pub(crate) const MAX_HOSTS: usize = 4096;

/// The most limits one host may name; a name past it takes the slot of a named limit that has
/// lapsed, or, if none has, is read as the host's unnamed limit.
pub(crate) const MAX_NAMES: usize = 32;

/// The most routes remembered per host; past it, the least recently used is forgotten.
pub(crate) const MAX_ROUTES: usize = 256;

/// The longest name of a limit kept apart; longer names, and names that are not visible
/// ASCII, are read as the host's unnamed limit.
pub(crate) const MAX_NAME_LEN: usize = 64;

/// How often a request waiting for news of its host (spent, next reset unknown) looks again.
pub(crate) const NEWS_POLL: Duration = Duration::from_millis(100);

/// A set of one host's limits: bit 0 is its unnamed limit, bit `i + 1` the named limit in
/// slot `i` (so at most 63 names: `MAX_NAMES` is below).
type LimitSet = u64;

/// The host's unnamed limit, alone.
const UNNAMED: LimitSet = 1;

const _: () = assert!(MAX_NAMES < 64);

/// The limits of `set`, one bit at a time.
fn each(set: LimitSet) -> impl Iterator<Item = LimitSet> {
    let mut rest = set;
    std::iter::from_fn(move || {
        let bit = rest & rest.wrapping_neg();
        rest &= rest.wrapping_sub(1);
        (bit != 0).then_some(bit)
    })
}

pub(crate) struct Shared {
    pub(crate) hosts: Mutex<HashMap<Authority, Host>>,
    pub(crate) settings: Settings,
    /// Hosts that said nothing, under the default quota: the crate's one admission path.
    pub(crate) default_limiter: Option<RateLimiter<Authority, MemoryStore<TokioClock>>>,
    pub(crate) metrics: LearnMetrics,
    /// Hashes routes into the keys remembered.
    pub(crate) hasher: RandomState,
}

/// What was learned of one host.
#[derive(Debug, Clone, Default)]
pub(crate) struct Host {
    /// Limits stated without a name (or with a name over the bounds), which every request to
    /// a route not known to be under named limits is admitted against.
    unnamed: Limit,
    /// Limits the server named, in slots that never move while a request holds them.
    named: Vec<Named>,
    /// No request to any route before this: a throttled answer that no named limit explains.
    cooled_until: Option<Instant>,
    /// Which limits the last answer on each route stated, by the route's hash.
    routes: HashMap<u64, Route>,
    /// Counts admissions and answers, to find the least recently used route.
    tick: u64,
    /// Requests sent and not yet answered.
    in_flight: u64,
    /// The server has sent limits.
    pub(crate) told: bool,
    /// Adaptive mode: the rate, and the time of the next free slot.
    pub(crate) rate: f64,
    next_slot: Option<Instant>,
}

#[derive(Debug, Clone)]
struct Named {
    name: Box<str>,
    limit: Limit,
}

#[derive(Debug, Clone, Copy)]
struct Route {
    limits: LimitSet,
    used: u64,
}

/// What was learned of one limit.
#[derive(Debug, Clone, Default)]
struct Limit {
    /// Requests the server still allows before `reset_at`, minus those sent since.
    remaining: Option<u64>,
    /// When the server's allowance comes back.
    reset_at: Option<Instant>,
    /// What it comes back to, when the server said.
    limit: Option<u64>,
    /// No request under this limit before this (a throttled answer that it explains).
    cooled_until: Option<Instant>,
    /// Requests admitted against it, sent and not yet answered.
    in_flight: u64,
}

impl Limit {
    /// Nothing in it that a fresh limit would not say: it may be forgotten.
    fn lapsed(&self, now: Instant) -> bool {
        self.in_flight == 0
            && self.cooled_until.is_none_or(|t| t <= now)
            && self.reset_at.is_none_or(|t| t <= now)
    }

    /// How long a request must wait for it (zero: none), once its window has come back if
    /// its reset is past.
    fn wait(&mut self, now: Instant) -> Duration {
        let mut wait = Duration::ZERO;
        if let Some(until) = self.cooled_until {
            if until > now {
                wait = until - now;
            } else {
                self.cooled_until = None;
            }
        }
        match self.reset_at {
            Some(reset) if reset <= now => {
                // The server's window came back: to its limit if it said one, else unknown.
                self.reset_at = None;
                self.remaining = self.limit;
            }
            Some(reset) if self.remaining == Some(0) => wait = wait.max(reset - now),
            // Spent, and the next reset unknown until an answer in flight says it: look again
            // shortly.
            None if self.remaining == Some(0) && self.in_flight > 0 => wait = wait.max(NEWS_POLL),
            _ => {}
        }
        wait
    }

    /// Counts a request in flight, and takes one of what is left, if the server said.
    fn take(&mut self) -> bool {
        self.in_flight += 1;
        match &mut self.remaining {
            Some(remaining) if *remaining > 0 => {
                *remaining -= 1;
                true
            }
            _ => false,
        }
    }
}

/// A name worth a limit of its own: short, visible ASCII.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_LEN && name.bytes().all(|b| b.is_ascii_graphic())
}

impl Host {
    fn new(rate: f64) -> Self {
        Self {
            rate,
            ..Self::default()
        }
    }

    fn limit_mut(&mut self, bit: LimitSet) -> Option<&mut Limit> {
        match bit.trailing_zeros() {
            0 => Some(&mut self.unnamed),
            slot => self.named.get_mut(slot as usize - 1).map(|n| &mut n.limit),
        }
    }

    fn lapsed(&self, now: Instant) -> bool {
        self.in_flight == 0
            && self.cooled_until.is_none_or(|t| t <= now)
            && self.unnamed.lapsed(now)
            && self.named.iter().all(|n| n.limit.lapsed(now))
    }

    /// The limits a request on `route` is admitted against: those the last answer on it
    /// stated, or, for a route never answered (or none), the unnamed limit alone.
    fn limits_of(&mut self, route: Option<u64>) -> LimitSet {
        self.tick += 1;
        let tick = self.tick;
        match route.and_then(|route| self.routes.get_mut(&route)) {
            Some(route) => {
                route.used = tick;
                route.limits
            }
            None => UNNAMED,
        }
    }

    /// Remembers that an answer on `route` stated `limits`, forgetting the least recently
    /// used route if there are too many.
    fn remember(&mut self, route: u64, limits: LimitSet) {
        self.tick += 1;
        if self.routes.len() >= MAX_ROUTES && !self.routes.contains_key(&route) {
            let oldest = self
                .routes
                .iter()
                .min_by_key(|(_, r)| r.used)
                .map(|(k, _)| *k);
            if let Some(oldest) = oldest {
                self.routes.remove(&oldest);
            }
        }
        let used = self.tick;
        self.routes.insert(route, Route { limits, used });
    }

    /// The slot of the limit named `name` (the unnamed limit for no name, an invalid one, or
    /// one past the bound), made if there is room; `fresh` are the slots made for the same
    /// answer, which are not taken again.
    fn slot_of(&mut self, name: Option<&str>, now: Instant, fresh: LimitSet) -> LimitSet {
        let Some(name) = name.filter(|name| valid_name(name)) else {
            return UNNAMED;
        };
        if let Some(slot) = self.named.iter().position(|n| &*n.name == name) {
            return 1 << (slot + 1);
        }
        let named = Named {
            name: name.into(),
            limit: Limit::default(),
        };
        if self.named.len() < MAX_NAMES {
            self.named.push(named);
            return 1 << self.named.len();
        }
        // Full: the slot of a limit that has lapsed, forgetting the routes that led to it.
        let lapsed = (0..self.named.len())
            .find(|&slot| fresh & (1 << (slot + 1)) == 0 && self.named[slot].limit.lapsed(now));
        let Some(slot) = lapsed else {
            return UNNAMED;
        };
        let bit = 1 << (slot + 1);
        self.named[slot] = named;
        self.routes.retain(|_, route| {
            route.limits &= !bit;
            route.limits != 0
        });
        bit
    }
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

/// A request's place with its host: counted in flight against the limits it was admitted
/// against, one of what the server said is left of each, and, in adaptive mode, the slot
/// booked for it. Dropping it gives back the count, and, if the request was never sent
/// (dropped while it waited, or its service failed before sending it), what it took of what
/// is left and its booked slot.
pub(crate) struct Place {
    shared: Arc<Shared>,
    pub(crate) host: Authority,
    /// The route's key, if it has one.
    route: Option<u64>,
    /// The limits it was admitted against, each counting it in flight.
    limits: LimitSet,
    /// Those it took one of the requests left of.
    took: LimitSet,
    /// The booked adaptive slot: when, and the interval it took.
    booked: Option<(Instant, Duration)>,
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
        for bit in each(self.limits) {
            if let Some(limit) = state.limit_mut(bit) {
                limit.in_flight = limit.in_flight.saturating_sub(1);
                if !self.sent && self.took & bit != 0 {
                    if let Some(remaining) = &mut limit.remaining {
                        *remaining += 1;
                    }
                }
            }
        }
        if self.sent {
            return;
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

    /// The key of a request's route: what [`LearnLayer::route`](super::LearnLayer::route)
    /// says, or by default its method and path.
    pub(crate) fn route(&self, method: &Method, uri: &Uri) -> Option<u64> {
        match &self.settings.route {
            Some(route) => route(method, uri, &self.hasher),
            None => Some(self.hasher.hash_one((method.as_str(), uri.path()))),
        }
    }

    /// Takes a place for one request on `route` to `host`, or says how long until there is
    /// one (taking nothing then).
    /// `budget` is what is left of the request's maximum wait.
    pub(crate) fn admit(
        self: &Arc<Self>,
        host: &Authority,
        route: Option<u64>,
        now: Instant,
        budget: Duration,
    ) -> Admit {
        let mut hosts = self.lock();
        if hosts.len() >= MAX_HOSTS && !hosts.contains_key(host) {
            hosts.retain(|_, h| !h.lapsed(now));
            // Still full of hosts that said something not yet lapsed (a client calling hosts
            // its users choose): one is forgotten, one with nothing in flight if there is
            // one. Its next request goes without what it said, as a new host's would.
            if hosts.len() >= MAX_HOSTS {
                let idle = hosts
                    .iter()
                    .find(|(_, h)| h.in_flight == 0)
                    .map(|(k, _)| k.clone());
                if let Some(victim) = idle.or_else(|| hosts.keys().next().cloned()) {
                    hosts.remove(&victim);
                }
            }
        }
        let state = hosts
            .entry(host.clone())
            .or_insert_with(|| Host::new(self.settings.aimd.map_or(0.0, |a| a.start)));
        let mut wait = Duration::ZERO;
        if let Some(until) = state.cooled_until {
            if until > now {
                wait = until - now;
            } else {
                state.cooled_until = None;
            }
        }
        let limits = state.limits_of(route);
        for bit in each(limits) {
            if let Some(limit) = state.limit_mut(bit) {
                wait = wait.max(limit.wait(now));
            }
        }
        if !wait.is_zero() {
            return Admit::Refuse(wait);
        }
        let mut booked = None;
        let mut after = Duration::ZERO;
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
                booked = Some((slot, interval));
                after = wait;
            }
        }
        state.in_flight += 1;
        let mut took = 0;
        for bit in each(limits) {
            if let Some(limit) = state.limit_mut(bit) {
                // A request that waits for its adaptive slot takes nothing of what is left:
                // its host has stated no limits.
                if after.is_zero() {
                    if limit.take() {
                        took |= bit;
                    }
                } else {
                    limit.in_flight += 1;
                }
            }
        }
        let place = Place {
            shared: Arc::clone(self),
            host: host.clone(),
            route,
            limits,
            took,
            booked,
            sent: false,
        };
        match after.is_zero() {
            true => Admit::Now(place),
            false => Admit::After(after, place),
        }
    }

    /// Records what the answer to the request holding `place` says of its host: each limit
    /// stated under its name, which limits its route is under, and what a throttled answer
    /// cools.
    pub(crate) fn learn(
        &self,
        place: &Place,
        status: StatusCode,
        headers: &HeaderMap,
        now: Instant,
    ) {
        let host = &place.host;
        let mut hosts = self.lock();
        let Some(state) = hosts.get_mut(host) else {
            return;
        };
        let cap = |d: Duration| d.min(self.settings.max_wait);
        let (said, found) = server::read_all(headers);
        // The retry layer's rule too: a 403 with a delay is a rate limit (GitHub's).
        let throttled = status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::SERVICE_UNAVAILABLE
            || (status == StatusCode::FORBIDDEN && server::forbidden_by_rate_limit(&said));
        // Each limit stated, in the slot of its name.
        let mut stated: LimitSet = 0;
        let mut slots = Vec::with_capacity(found.len());
        for f in &found {
            let slot = state.slot_of(f.limits.name.as_deref(), now, stated);
            stated |= slot;
            slots.push(slot);
        }
        // Named limits that are spent: a throttled answer is theirs.
        let mut spent: LimitSet = 0;
        for bit in each(stated) {
            let of_slot = found.iter().zip(&slots).filter(|(_, s)| **s == bit);
            let binding = server::binding(of_slot.map(|(f, _)| f));
            // This request is counted in flight under the limits it was admitted against.
            let counted = u64::from(place.limits & bit != 0);
            let Some(limit) = state.limit_mut(bit) else {
                continue;
            };
            match binding {
                Some(said) => {
                    // Other requests still in flight will spend from what is left.
                    let others = limit.in_flight.saturating_sub(counted);
                    limit.remaining = Some(said.remaining.saturating_sub(others));
                    limit.reset_at = said.reset.map(|r| now + cap(r));
                    if said.limit.is_some() {
                        limit.limit = said.limit;
                    }
                    if said.remaining == 0 && bit != UNNAMED {
                        spent |= bit;
                    }
                }
                // A quota in other units with some left: it counts no requests.
                None => {
                    limit.remaining = None;
                    limit.reset_at = None;
                }
            }
        }
        if said.limits.is_some() {
            state.told = true;
        }
        if let (Some(route), true) = (place.route, stated != 0) {
            state.remember(route, stated);
        }
        if throttled {
            // The same delay the retry layer reads: the later of every field. It cools the
            // named limits it explains, or, if none does, the whole host.
            if let Some(delay) = said.delay {
                let until = now + cap(delay);
                let later = |t: Option<Instant>| Some(t.map_or(until, |t| t.max(until)));
                if spent == 0 {
                    state.cooled_until = later(state.cooled_until);
                }
                for bit in each(spent) {
                    if let Some(limit) = state.limit_mut(bit) {
                        limit.cooled_until = later(limit.cooled_until);
                    }
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learn::LearnLayer;

    fn host() -> Authority {
        Authority::from_static("api.example")
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    /// A request on `route`, sent at once and answered with `pairs`.
    fn answer(shared: &Arc<Shared>, route: u64, pairs: &[(&str, &str)]) {
        let now = Instant::now();
        let Admit::Now(mut place) = shared.admit(&host(), Some(route), now, Duration::MAX) else {
            panic!("route {route} was not admitted at once");
        };
        place.sent();
        shared.learn(&place, StatusCode::OK, &headers(pairs), now);
    }

    /// How long a request on `route` would wait (taking nothing).
    fn wait(shared: &Arc<Shared>, route: Option<u64>) -> Duration {
        match shared.admit(&host(), route, Instant::now(), Duration::MAX) {
            Admit::Now(_) => Duration::ZERO,
            Admit::After(wait, _) | Admit::Refuse(wait) => wait,
        }
    }

    fn resource(name: &str, remaining: &str, reset: &str) -> Vec<(&'static str, String)> {
        vec![
            ("x-ratelimit-resource", name.to_owned()),
            ("x-ratelimit-remaining", remaining.to_owned()),
            ("x-ratelimit-reset", reset.to_owned()),
        ]
    }

    fn pairs<'a>(owned: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
        owned.iter().map(|(n, v)| (*n, v.as_str())).collect()
    }

    /// The module docs promise "at most 4096 hosts": hosts whose state has not lapsed (a spent
    /// limit until its reset) must not grow the map past it, or a client sending to many
    /// hosts (webhooks to addresses its users choose, say) keeps a state for every one.
    #[tokio::test(start_paused = true)]
    async fn at_most_max_hosts_are_remembered_even_when_none_has_lapsed() {
        let layer = LearnLayer::new();
        let shared = layer.shared();
        let spent = resource("core", "0", "60");
        for i in 0..MAX_HOSTS + 100 {
            let host = Authority::try_from(format!("h{i}.evil.example")).unwrap();
            let now = Instant::now();
            if let Admit::Now(mut place) = shared.admit(&host, Some(1), now, Duration::MAX) {
                place.sent();
                shared.learn(&place, StatusCode::OK, &headers(&pairs(&spent)), now);
            }
        }
        assert!(
            shared.lock().len() <= MAX_HOSTS,
            "{} hosts remembered, more than {MAX_HOSTS}",
            shared.lock().len()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn names_past_the_bound_are_read_as_the_hosts_unnamed_limit() {
        let layer = LearnLayer::new();
        let shared = layer.shared();
        // As many names as there are slots, each with plenty left until its reset.
        for i in 0..MAX_NAMES as u64 {
            answer(shared, i, &pairs(&resource(&format!("r{i}"), "10", "60")));
        }
        // One more, spent: it has no slot, so it is the host's unnamed limit.
        let over = MAX_NAMES as u64;
        answer(shared, over, &pairs(&resource("one-too-many", "0", "30")));
        assert_eq!(shared.lock()[&host()].named.len(), MAX_NAMES);
        assert_eq!(wait(shared, Some(over)), Duration::from_secs(30));
        assert_eq!(
            wait(shared, Some(999)),
            Duration::from_secs(30),
            "a new route too"
        );
        assert_eq!(wait(shared, None), Duration::from_secs(30), "and no route");
        assert_eq!(
            wait(shared, Some(0)),
            Duration::ZERO,
            "named limits keep their own"
        );

        // Once the named limits have lapsed, a new name takes the slot of one, and the routes
        // that led to the old name are forgotten.
        tokio::time::advance(Duration::from_secs(61)).await;
        answer(shared, 1000, &pairs(&resource("newcomer", "0", "30")));
        let hosts = shared.lock();
        let state = &hosts[&host()];
        assert_eq!(state.named.len(), MAX_NAMES);
        assert_eq!(&*state.named[0].name, "newcomer");
        assert!(!state.routes.contains_key(&0), "its route is forgotten");
        assert_eq!(state.routes[&1000].limits, 1 << 1);
        drop(hosts);
        assert_eq!(wait(shared, Some(1000)), Duration::from_secs(30));
        assert_eq!(wait(shared, Some(1)), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn names_that_are_long_or_not_visible_ascii_are_no_names() {
        let layer = LearnLayer::new();
        let shared = layer.shared();
        let long = format!("\"{}\";r=5;t=9", "n".repeat(MAX_NAME_LEN + 1));
        for (route, name) in [(1, long), (2, "\"a b\";r=0;t=9".to_owned())] {
            answer(shared, route, &[("ratelimit", &name)]);
        }
        {
            let hosts = shared.lock();
            let state = &hosts[&host()];
            assert!(state.named.is_empty());
            assert_eq!(state.routes[&1].limits, UNNAMED);
        }
        assert_eq!(
            wait(shared, Some(3)),
            Duration::from_secs(9),
            "the host's unnamed limit"
        );
        // The longest name kept is kept.
        tokio::time::advance(Duration::from_secs(9)).await;
        let longest = format!("\"{}\";r=5;t=9", "n".repeat(MAX_NAME_LEN));
        answer(shared, 4, &[("ratelimit", &longest)]);
        assert_eq!(shared.lock()[&host()].named.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn routes_are_bounded_and_the_least_recently_used_is_forgotten() {
        let layer = LearnLayer::new();
        let shared = layer.shared();
        let core = resource("core", "100", "60");
        for route in 0..MAX_ROUTES as u64 + 50 {
            answer(shared, route, &pairs(&core));
            // Route 0 is used all along: it stays.
            wait(shared, Some(0));
        }
        let hosts = shared.lock();
        let routes = &hosts[&host()].routes;
        assert_eq!(routes.len(), MAX_ROUTES);
        assert!(routes.contains_key(&0));
        assert!(
            !routes.contains_key(&1),
            "the least recently used went first"
        );
        assert!(routes.contains_key(&(MAX_ROUTES as u64 + 49)));
    }
}
