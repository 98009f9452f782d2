//! The first Redis failure is logged at once (it used to wait for the store's first second to
//! pass). Alone in its file: it listens to `tracing` with a subscriber of its own.

mod common;

use common::DecideOne;
use std::time::Duration;

use tollgate::store::{OnFailure, RedisStore};
use tollgate::{Quota, Quotas};

#[tokio::test]
async fn the_first_failure_is_logged_at_once() {
    let (logs, _guard) = common::logs::capture(tracing::Level::INFO);
    // Nothing listens on port 1: the call fails at once, within the store's first second.
    let store = RedisStore::builder("redis://127.0.0.1:1/")
        .timeout(Duration::from_millis(50))
        .on_failure(OnFailure::Allow)
        .build()
        .unwrap();
    let quotas = Quotas::from(Quota::per_second(1).unwrap());
    let decision = store
        .decide_one(&"k".to_owned(), &quotas, 1, Duration::ZERO)
        .await
        .unwrap();
    assert!(decision.is_allowed(), "fail open");
    let logged = logs.text();
    assert!(
        logged.contains("Redis did not decide"),
        "nothing logged: {logged:?}"
    );
}
