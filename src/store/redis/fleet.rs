//! The fleet counts itself: each instance announces itself in Redis every second, in one
//! sorted set (`<prefix>:{fleet}`, one entry per instance scored by when it last announced),
//! and reads how many did within the last 3 seconds. While Redis is away, each instance then
//! decides with 1/(instances seen lately) of every quota ([`super::fallback`]), unless the
//! builder's `fleet_size` says how many there are.
//!
//! What is read during an outage is the count from before it: the announcements stop with
//! Redis, and the count stays as it was. The count is the largest of the last four readings,
//! so that a Redis restarted empty (the instances counting 1, 2, 3… as they announce again)
//! does not shrink the shares while the instances still decide alone.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use super::Inner;

/// How often an instance announces itself.
pub(super) const EVERY: Duration = Duration::from_secs(1);

/// How long an announcement counts: three missed announcements and the instance is gone.
pub(super) const LASTS: Duration = Duration::from_secs(3);

/// How many of the last announcements' counts the fleet's size is the largest of: a fleet that
/// shrinks is counted smaller about this many seconds later.
const RECENT: usize = 4;

/// The announcement: adds or refreshes this instance, drops those gone quiet, and counts.
const ANNOUNCE: &str = r#"
-- KEYS[1]: the fleet's sorted set. ARGV: this instance's id, how long an entry lasts (ms).
-- Returns how many instances announced themselves within that time, this one included.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local lasts = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - lasts)
redis.call('PEXPIRE', KEYS[1], lasts)
return redis.call('ZCARD', KEYS[1])
"#;

/// Starts announcing the store's instance in the background, if a tokio runtime runs; the
/// task holds the store weakly and ends with it.
pub(super) fn start(inner: &Arc<Inner>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let weak = Arc::downgrade(inner);
    let key = format!("{}:{{fleet}}", inner.prefix);
    let id = instance_id();
    let script = redis::Script::new(ANNOUNCE);
    let lasts = u64::try_from(LASTS.as_millis()).unwrap_or(u64::MAX);
    runtime.spawn(async move {
        // The first announcements come quickly, so that instances starting together count
        // each other within a fraction of a second; then every second.
        let mut pauses = [Duration::from_millis(50), Duration::from_millis(200)].into_iter();
        // The counts of the last few announcements: the fleet is the largest, so that a Redis
        // restarted empty (every entry lost, the instances counting 1, 2, 3… as they announce
        // again) or an announcement that came late does not shrink every share at once.
        let mut recent = [0u32; RECENT];
        let mut next = 0;
        loop {
            let Some(inner) = weak.upgrade() else { return };
            let mut connection = inner.connection.clone();
            let mut invocation = script.prepare_invoke();
            invocation.key(&key).arg(&id).arg(lasts);
            let answer = invocation.invoke_async::<u32>(&mut connection);
            if let Ok(Ok(seen)) = tokio::time::timeout(inner.timeout.max(EVERY), answer).await {
                recent[next % RECENT] = seen;
                next += 1;
                if let Some(local) = &inner.local {
                    local.set_fleet(recent.iter().copied().max().unwrap_or(seen));
                }
            }
            drop(inner);
            tokio::time::sleep(pauses.next().unwrap_or(EVERY)).await;
        }
    });
}

/// A name for this instance that no other is likely to have: 64 random bits.
fn instance_id() -> String {
    let random = std::collections::hash_map::RandomState::new()
        .hash_one((std::process::id(), std::time::SystemTime::now()));
    format!("{random:016x}")
}
