//! One sequence of requests that every store must answer alike: single and multi-quota sets,
//! costs above one, a peek, and waits.

use std::time::Duration;

use tollgate::store::Ask;
use tollgate::{Decision, Quota, Quotas, Store};

/// What conformance compares of a decision; waits to the second, since the two stores run
/// moments apart on different clocks.
#[derive(Debug, PartialEq)]
pub struct Seen {
    pub allowed: bool,
    quota: usize,
    pub remaining: u32,
    limit: u32,
    pub retry_after_s: u64,
    wait_s: u64,
}

fn seen(decision: &Decision) -> Seen {
    let round = |d: Duration| (d.as_secs_f64() + 0.5) as u64;
    Seen {
        allowed: decision.is_allowed(),
        quota: decision.quota_index(),
        remaining: decision.remaining(),
        limit: decision.limit(),
        retry_after_s: round(decision.retry_after()),
        wait_s: round(decision.wait()),
    }
}

/// The same sequence of requests, through any store.
pub async fn scenario<S: Store<String>>(store: &S) -> Vec<Seen> {
    let single = Quotas::from(Quota::per_hour(5).unwrap().named("hourly").unwrap());
    let both = Quotas::new([
        Quota::per_minute(60)
            .unwrap()
            .with_burst(3)
            .unwrap()
            .named("burst")
            .unwrap(),
        Quota::per_day(5).unwrap().named("daily").unwrap(),
    ])
    .unwrap();
    let mut out = Vec::new();
    let decide = |key: &str, quotas: &Quotas, cost: u32, max_wait: Duration| {
        let key = key.to_owned();
        let ask = Ask::new(&key, quotas)
            .with_cost(cost)
            .with_max_wait(max_wait);
        let future = store.decide(&ask);
        async move { future.await.unwrap() }
    };
    let across = |parts: &[(String, Quotas)], cost: u32| {
        let future = store.decide(&Ask::across(parts).with_cost(cost));
        async move { future.await.unwrap() }
    };
    for _ in 0..7 {
        out.push(seen(&decide("alice", &single, 1, Duration::ZERO).await));
    }
    out.push(seen(&decide("bob", &single, 3, Duration::ZERO).await));
    out.push(seen(&decide("bob", &single, 3, Duration::ZERO).await));
    out.push(seen(&decide("bob", &single, 0, Duration::ZERO).await));
    for _ in 0..6 {
        out.push(seen(&decide("carol", &both, 1, Duration::ZERO).await));
    }
    // Wait mode: reserve slots up to 25 minutes ahead.
    for _ in 0..4 {
        out.push(seen(
            &decide("dave", &single, 1, Duration::from_secs(1500)).await,
        ));
    }
    out.push(seen(
        &decide("dave", &single, 1, Duration::from_secs(1500)).await,
    ));
    // A quota change carries the spent fraction over: 4 of 10 spent is 40 of 100.
    let before = Quotas::from(Quota::per_hour(10).unwrap().named("tier").unwrap());
    let after =
        Quotas::from(Quota::per_hour(100).unwrap().named("tier").unwrap()).carry_over_from(&before);
    let back = before.clone().carry_over_from(&after);
    for _ in 0..4 {
        out.push(seen(&decide("erin", &before, 1, Duration::ZERO).await));
    }
    out.push(seen(&decide("erin", &after, 0, Duration::ZERO).await));
    for _ in 0..4 {
        out.push(seen(&decide("erin", &after, 20, Duration::ZERO).await));
    }
    out.push(seen(&decide("erin", &back, 0, Duration::ZERO).await));
    out.push(seen(&decide("erin", &back, 1, Duration::ZERO).await));
    // Across keys, all or nothing: the global part refuses the third, and frank's own quota
    // is not spent by it.
    let user = Quotas::from(Quota::per_hour(5).unwrap().named("user").unwrap());
    let global = Quotas::from(Quota::per_hour(2).unwrap().named("global").unwrap());
    let parts = [
        ("frank".to_owned(), user.clone()),
        ("all".to_owned(), global),
    ];
    for _ in 0..3 {
        let decision = across(&parts, 1).await;
        out.push(seen(&decision));
        out.push(Seen::part(decision.part()));
    }
    out.push(seen(&decide("frank", &user, 0, Duration::ZERO).await));
    out
}

impl Seen {
    /// A part's index, as a `Seen` of its own for the comparison.
    fn part(part: usize) -> Self {
        Seen {
            allowed: true,
            quota: part,
            remaining: 0,
            limit: 0,
            retry_after_s: 0,
            wait_s: 0,
        }
    }
}
