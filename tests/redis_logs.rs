//! The first Redis failure is logged at once (it used to wait for the store's first second to
//! pass). Alone in its file: it listens to `tracing` with a subscriber of its own.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tollgate::store::{OnFailure, RedisStore};
use tollgate::{Quota, Quotas, Store};

#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_first_failure_is_logged_at_once() {
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // Nothing listens on port 1: the call fails at once, within the store's first second.
    let store = RedisStore::builder("redis://127.0.0.1:1/")
        .timeout(Duration::from_millis(50))
        .on_failure(OnFailure::Allow)
        .build()
        .unwrap();
    let quotas = Quotas::from(Quota::per_second(1).unwrap());
    let decision = store
        .decide(&"k".to_owned(), &quotas, 1, Duration::ZERO)
        .await
        .unwrap();
    assert!(decision.is_allowed(), "fail open");
    let logged = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    assert!(
        logged.contains("Redis did not decide"),
        "nothing logged: {logged:?}"
    );
}
