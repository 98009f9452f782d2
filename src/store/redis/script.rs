//! The Lua scripts the store runs, and how their answers become [`Decision`]s.
//!
//! Every number a script reads or returns is an integer below 2⁵³ (microseconds), which Lua's
//! doubles and Redis's integer replies keep exact. Values are written by passing the number to
//! `redis.call`, which Redis converts with 17 significant digits (`%.17g`, or the shortest
//! exact form since Redis 7): exact for these integers, where Lua's own `tostring` (14 digits)
//! would round them. `keys_hold_one_microsecond_tat_and_expire_when_full` checks the value
//! stored to the microsecond.

use std::sync::Arc;

use crate::gcra::{Gcra, Step};
use crate::quota::{Carried, MAX_QUOTAS};
use crate::store::Decision;
use crate::Quotas;

/// The decision script: any number of decisions in one call (a batch), each charging every
/// quota of its key together or not at all.
///
/// Lean on purpose, since on a busy node its cost is the store's throughput: one `TIME` and
/// one `MGET` per call however many decisions it carries, each argument converted once,
/// integer arithmetic, one number per quota in the answer, and nothing written on a denial
/// or a peek.
pub(super) const DECIDE: &str = concat!(
    rule_lua!(),
    r#"
-- ARGV: the number of decisions, then for each: its number of quotas n, cost, max_wait_us,
-- its number of earlier quotas p, then interval_us and window_us of each quota, then the
-- quota index (1..n) and window_us of each earlier quota. KEYS: the n TAT keys of each
-- decision, then its p earlier keys, in order. Last, the time (see below).
-- Returns now_us, then one number per quota of each decision: the new TAT_us if the quota
-- allows, -(TAT_us + 1) if it does not (the caller knows the rest: wait = TAT - window - now).
-- The last argument: 0 for Redis's own time; a test's clock, in microseconds, otherwise (TTLs
-- are then a million times longer, since the test's time does not follow the wall clock that
-- expires keys, and a TTL of 0 stays 0 as with Redis's time).
local now, scale = tonumber(ARGV[#ARGV]), 1000000
if now == 0 then
  local time = redis.call('TIME')
  now, scale = tonumber(time[1]) * 1000000 + tonumber(time[2]), 1
end
-- Every TAT of the call in one read; a key that comes again in the same call (two requests
-- of one client in one batch) reads what the earlier decision wrote.
local tats = redis.call('MGET', unpack(KEYS))
local written = {}
local out = { now }
local a, k = 2, 0
for _ = 1, tonumber(ARGV[1]) do
  local n, cost, max_wait = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local p = tonumber(ARGV[a + 3])
  a = a + 4
  local first, all = #out, true
  local seeds = {}
  -- Where each quota was read, for `in_windows`: only a decision that may wait needs them.
  local ats, windows
  if max_wait > 0 then
    ats, windows = {}, {}
  end
  if p > 0 then
    -- Each quota takes on the key's debt under the earlier quotas of its name, rescaled to
    -- the same fraction of its window (added: a charge that reached an earlier key after the
    -- change moves too); the earlier keys of a quota that took debt are dropped (full, so
    -- that moving back carries it back). A debt that rounds to nothing moves nothing.
    for j = 1, p do
      local at = a + 2 * n + 2 * (j - 1)
      local i, from = tonumber(ARGV[at]), tonumber(ARGV[at + 1])
      local old = written[KEYS[k + n + j]] or tonumber(tats[k + n + j]) or 0
      local at, _, window = rule(tonumber(ARGV[a + 2 * i - 2]), tonumber(ARGV[a + 2 * i - 1]), now, 0)
      if old > at then
        local debt = moved((old - at) * window / from, at ~= now)
        if debt > 0 then
          local own = seeds[i] or written[KEYS[k + i]] or tonumber(tats[k + i]) or 0
          seeds[i] = (own > at and own or at) + debt
        end
      end
    end
    if cost > 0 then
      for j = 1, p do
        if seeds[tonumber(ARGV[a + 2 * n + 2 * (j - 1)])] then
          local key = KEYS[k + n + j]
          written[key] = 0
          redis.call('DEL', key)
        end
      end
      for i, seed in pairs(seeds) do
        written[KEYS[k + i]] = seed
        redis.call('SET', KEYS[k + i], seed, 'PX', scale * math.floor((seed - now + 999) / 1000))
      end
    end
  end
  for i = 1, n do
    local interval, window = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
    local at, wait = now, max_wait
    if interval == 0 then
      at, interval, window, wait = rule(interval, window, now, max_wait)
    end
    a = a + 2
    if ats then
      ats[i], windows[i] = at, window
    end
    local tat = seeds[i] or written[KEYS[k + i]] or tonumber(tats[k + i]) or 0
    local new = (tat > at and tat or at) + interval * cost
    if cost == 0 or new - window - at <= wait then
      out[first + i] = new
    else
      all = false
      out[first + i] = -tat - 1
    end
  end
  if all and cost > 0 and ats then
    all = in_windows(out, first, n, ats, windows, now, cost)
  end
  if all and cost > 0 then
    for i = 1, n do
      local new = out[first + i]
      written[KEYS[k + i]] = new
      redis.call('SET', KEYS[k + i], new, 'PX', scale * math.floor((new - now + 999) / 1000))
    end
  end
  a = a + 2 * p
  k = k + n + p
end
return out
"#
);

/// The decision script for batches on a Redis Cluster node: the decisions of many subjects,
/// whose keys live in different slots of one node. Redis refuses keys of several slots in
/// `KEYS` (`CROSSSLOT`), even with the `allow-cross-slot-keys` flag, so `KEYS` holds only the
/// first key (it routes the call to its node) and every key comes in `ARGV`; the flag lets the
/// script reach the keys of other slots the node serves (Redis 7 or later). Every key is read
/// before anything is written, so that a key the node does not serve (a stale slot map)
/// fails the call before it changes anything, and the caller can send its decisions again one
/// at a time.
pub(super) const DECIDE_ACROSS_SLOTS: &str = concat!(
    "#!lua flags=allow-cross-slot-keys\n",
    rule_lua!(),
    r#"
-- KEYS[1]: the first key (for routing). ARGV: the number of decisions, then for each: its
-- number of quotas n, cost, max_wait_us, its number of earlier quotas p, then key,
-- interval_us and window_us of each quota, then key, quota index (1..n) and window_us of
-- each earlier quota; last, the time (see below). Returns what DECIDE returns.
-- The last argument: 0 for Redis's own time; a test's clock, in microseconds, otherwise (TTLs
-- are then a million times longer, since the test's time does not follow the wall clock that
-- expires keys, and a TTL of 0 stays 0 as with Redis's time).
local now, scale = tonumber(ARGV[#ARGV]), 1000000
if now == 0 then
  local time = redis.call('TIME')
  now, scale = tonumber(time[1]) * 1000000 + tonumber(time[2]), 1
end
local count = tonumber(ARGV[1])
local tats = {}
local a = 2
for _ = 1, count do
  local n, p = tonumber(ARGV[a]), tonumber(ARGV[a + 3])
  for i = 1, n + p do
    local key = ARGV[a + 1 + 3 * i]
    if tats[key] == nil then
      tats[key] = tonumber(redis.call('GET', key)) or 0
    end
  end
  a = a + 4 + 3 * (n + p)
end
local out = { now }
a = 2
for _ = 1, count do
  local n, cost, max_wait = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local p = tonumber(ARGV[a + 3])
  local first, all = #out, true
  local seeds = {}
  -- Where each quota was read, for `in_windows`: only a decision that may wait needs them.
  local ats, windows
  if max_wait > 0 then
    ats, windows = {}, {}
  end
  for j = 1, p do
    local at = a + 1 + 3 * (n + j)
    local key, i, from = ARGV[at], tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2])
    local old = tats[key]
    local at, _, window = rule(tonumber(ARGV[a + 2 + 3 * i]), tonumber(ARGV[a + 3 + 3 * i]), now, 0)
    if old > at then
      local debt = moved((old - at) * window / from, at ~= now)
      if debt > 0 then
        local own = seeds[i] or tats[ARGV[a + 1 + 3 * i]]
        seeds[i] = (own > at and own or at) + debt
      end
    end
  end
  if cost > 0 then
    for j = 1, p do
      local at = a + 1 + 3 * (n + j)
      if seeds[tonumber(ARGV[at + 1])] then
        tats[ARGV[at]] = 0
        redis.call('DEL', ARGV[at])
      end
    end
    for i, seed in pairs(seeds) do
      local key = ARGV[a + 1 + 3 * i]
      tats[key] = seed
      redis.call('SET', key, seed, 'PX', scale * math.floor((seed - now + 999) / 1000))
    end
  end
  for i = 1, n do
    local at = a + 1 + 3 * i
    local tat = seeds[i] or tats[ARGV[at]]
    local interval, window = tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2])
    local read, wait = now, max_wait
    if interval == 0 then
      read, interval, window, wait = rule(interval, window, now, max_wait)
    end
    if ats then
      ats[i], windows[i] = read, window
    end
    local new = (tat > read and tat or read) + interval * cost
    if cost == 0 or new - window - read <= wait then
      out[first + i] = new
    else
      all = false
      out[first + i] = -tat - 1
    end
  end
  if all and cost > 0 and ats then
    all = in_windows(out, first, n, ats, windows, now, cost)
  end
  if all and cost > 0 then
    for i = 1, n do
      local key, new = ARGV[a + 1 + 3 * i], out[first + i]
      tats[key] = new
      redis.call('SET', key, new, 'PX', scale * math.floor((new - now + 999) / 1000))
    end
  end
  a = a + 4 + 3 * (n + p)
end
return out
"#
);

/// The refund script: gives back `charge_us` on each quota of one key; a calendar quota only
/// within the window that counted the charge.
pub(super) const REFUND: &str = concat!(
    rule_lua!(),
    r#"
-- ARGV: per key, charge_us, then its calendar's code and the end (µs) of the window that
-- counted the charge (0 and 0 for a GCRA quota, or a charge whose time is not known).
-- The last argument: 0 for Redis's own time; a test's clock, in microseconds, otherwise (TTLs
-- are then a million times longer, since the test's time does not follow the wall clock that
-- expires keys, and a TTL of 0 stays 0 as with Redis's time).
local now, scale = tonumber(ARGV[#ARGV]), 1000000
if now == 0 then
  local time = redis.call('TIME')
  now, scale = tonumber(time[1]) * 1000000 + tonumber(time[2]), 1
end
for i = 1, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i]))
  local code, ended = tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i])
  if tat and (ended == 0 or window_end(now, code) == ended) then
    local new = tat - tonumber(ARGV[3 * i - 2])
    if new <= now then
      redis.call('DEL', KEYS[i])
    else
      redis.call('SET', KEYS[i], new, 'PX', scale * math.floor((new - now + 999) / 1000))
    end
  end
end
return 1
"#
);

/// The lease script: takes as many tokens as every quota of one key has left, up to a
/// number, charging each quota for them (a hot key's lease, spent by the instance: see
/// `lease.rs`).
pub(super) const LEASE: &str = r#"
-- KEYS: the TAT key of each quota. ARGV: the tokens wanted, then interval_us and window_us of
-- each quota; last, the time (0 for Redis's own; a test's clock in microseconds otherwise,
-- TTLs then a million times longer, as in the decision script).
-- Returns now_us, the tokens taken (0 when a quota has none left), then each quota's TAT
-- after (never below now).
local now, scale = tonumber(ARGV[#ARGV]), 1000000
if now == 0 then
  local time = redis.call('TIME')
  now, scale = tonumber(time[1]) * 1000000 + tonumber(time[2]), 1
end
local tats = redis.call('MGET', unpack(KEYS))
local take = tonumber(ARGV[1])
for i = 1, #KEYS do
  local interval, window = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local tat = tonumber(tats[i]) or 0
  if tat < now then
    tat = now
  end
  tats[i] = tat
  local left = math.floor((now + window - tat) / interval)
  if left < take then
    take = left
  end
end
if take < 0 then
  take = 0
end
local out = { now, take }
for i = 1, #KEYS do
  local new = tats[i] + take * tonumber(ARGV[2 * i])
  if take > 0 then
    redis.call('SET', KEYS[i], new, 'PX', scale * math.floor((new - now + 999) / 1000))
  end
  out[2 + i] = new
end
return out
"#;

/// The write-back script: after an outage, each quota of one key owes at least `debt_us` from
/// now (what the local decisions spent): a max-merge, so that a TAT Redis already has beyond
/// it (the other instances' write-backs, say) is kept.
pub(super) const WRITE_BACK: &str = concat!(
    rule_lua!(),
    r#"
-- ARGV: per key, its debt_us and its calendar's code (0 for none: see `rule`).
-- The last argument: 0 for Redis's own time; a test's clock, in microseconds, otherwise (TTLs
-- are then a million times longer, since the test's time does not follow the wall clock that
-- expires keys, and a TTL of 0 stays 0 as with Redis's time).
local now, scale = tonumber(ARGV[#ARGV]), 1000000
if now == 0 then
  local time = redis.call('TIME')
  now, scale = tonumber(time[1]) * 1000000 + tonumber(time[2]), 1
end
for i = 1, #KEYS do
  local debt, code = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  local new = (code > 0 and window_end(now, code) or now) + debt
  local tat = tonumber(redis.call('GET', KEYS[i])) or 0
  if debt > 0 and new > tat then
    redis.call('SET', KEYS[i], new, 'PX', scale * math.floor((new - now + 999) / 1000))
  end
end
return 1
"#
);

/// A calendar quota's numbers for the scripts (interval 0, then the count plus the calendar's
/// code times this), apart from a GCRA quota's (an interval of at least 1 µs).
const CALENDAR_CODE: u64 = 1 << 33;

/// The Lua of [`crate::calendar`] and the `rule` the decision scripts read each quota by: a
/// GCRA quota's state at `now`, a calendar quota's (interval 0) at its window's end, counting
/// in microseconds and never waiting into the next window.
macro_rules! rule_lua {
    () => {
        concat!(
            crate::calendar::window_end_lua!(),
            r#"
local function rule(interval, window, now, max_wait)
  if interval > 0 then
    return now, interval, window, max_wait
  end
  local code = math.floor(window / 8589934592)
  return window_end(now, code), 1, window - code * 8589934592, 0
end
-- A request that waits (for a GCRA quota's slot) goes out then: a calendar quota (read at its
-- window's end, not now) whose window ends before that refuses it, as `keep_in_windows` in
-- gcra.rs does. Returns whether the decision still stands.
local function in_windows(out, first, n, ats, windows, now, cost)
  local latest = 0
  for i = 1, n do
    local w = out[first + i] - windows[i] - ats[i]
    if w > latest then
      latest = w
    end
  end
  local all = true
  for i = 1, n do
    if ats[i] ~= now and ats[i] <= now + latest then
      all = false
      out[first + i] = -(out[first + i] - cost) - 1
    end
  end
  return all
end
-- A debt carried over, in whole microseconds: a GCRA's rounded down (never stricter than the
-- memory store's nanoseconds), a calendar count's rounded up (a fraction of a request spent
-- is a request the memory store would not admit either).
local function moved(debt, counted)
  if counted then
    return math.ceil(debt)
  end
  return math.floor(debt)
end
"#
        )
    };
}
use rule_lua;

/// The time the scripts decide at, their last argument: Redis's own (`TIME`, sent as 0), or
/// a test's clock ([`RedisStoreBuilder::clock`](super::RedisStoreBuilder::clock), the
/// `test-util` feature).
#[derive(Clone, Default)]
pub(super) struct ScriptTime(Option<Arc<dyn Fn() -> u64 + Send + Sync>>);

impl ScriptTime {
    /// On `clock`: its nanoseconds, as the scripts' microseconds.
    #[cfg_attr(not(feature = "test-util"), allow(dead_code))]
    pub(super) fn of(clock: impl crate::clock::Clock) -> Self {
        Self(Some(Arc::new(move || clock.now())))
    }

    /// The scripts' last argument: 0 for Redis's own time, else microseconds (never 0).
    pub(super) fn arg(&self) -> u64 {
        self.0.as_ref().map_or(0, |now| (now() / 1_000).max(1))
    }

    /// The test's clock, in nanoseconds, if there is one: what the store's own remembered
    /// denials are then timed by too.
    pub(super) fn local(&self) -> Option<u64> {
        self.0.as_ref().map(|now| now())
    }
}

/// A decision's arguments for [`DECIDE`]: `n`, cost, max wait, `p`, then interval and window
/// per quota (microseconds), then the quota index (from 1) and window of each earlier quota
/// the set carries states over from.
pub(super) fn decision_args(quotas: &Quotas, cost: u32, max_wait_us: u64) -> Vec<u64> {
    decision_args_of(
        quotas.as_slice().iter(),
        quotas.carried(),
        cost,
        max_wait_us,
    )
}

/// [`decision_args`] for any list of quotas (those of several keys decided together, say),
/// carrying states over from `carried`.
pub(super) fn decision_args_of<'q>(
    quotas: impl ExactSizeIterator<Item = &'q crate::Quota>,
    carried: &[Carried],
    cost: u32,
    max_wait_us: u64,
) -> Vec<u64> {
    let mut args = Vec::with_capacity(4 + 2 * quotas.len() + 2 * carried.len());
    args.extend([
        quotas.len() as u64,
        u64::from(cost),
        max_wait_us,
        carried.len() as u64,
    ]);
    for quota in quotas {
        match quota.calendar() {
            Some(calendar) => args.extend([0, window_us(quota) + calendar.code() * CALENDAR_CODE]),
            None => args.extend([interval_us(&Gcra::new(quota)), window_us(quota)]),
        }
    }
    for earlier in carried {
        args.extend([earlier.index as u64 + 1, window_us(&earlier.quota)]);
    }
    args
}

/// The window Redis works with: the microsecond interval times the burst.
pub(super) fn window_us(quota: &crate::Quota) -> u64 {
    interval_us(&Gcra::new(quota)).saturating_mul(u64::from(quota.burst()))
}

/// The microsecond interval Redis works with: at least 1.
pub(super) fn interval_us(gcra: &Gcra) -> u64 {
    (gcra.interval_nanos() / 1000).max(1)
}

/// An `EVALSHA` of `script` with `keys` and `args`, packed once into one buffer.
pub(super) fn evalsha<'a>(
    script: &redis::Script,
    keys: impl ExactSizeIterator<Item = &'a [u8]>,
    args: impl IntoIterator<Item = u64>,
) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(keys.len());
    for key in keys {
        cmd.arg(key);
    }
    for arg in args {
        cmd.arg(arg);
    }
    cmd
}

/// Sends an `EVALSHA` of `script`; on `NOSCRIPT` (a restarted or flushed Redis) loads the
/// script and sends it again.
pub(super) async fn run<T: redis::FromRedisValue>(
    script: &redis::Script,
    cmd: &redis::Cmd,
    connection: &mut impl redis::aio::ConnectionLike,
) -> redis::RedisResult<T> {
    match cmd.query_async(connection).await {
        Err(error)
            if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
        {
            script.load_async(connection).await?;
            cmd.query_async(connection).await
        }
        answer => answer,
    }
}

/// One decision's share of a script's answer: Redis's time, and per quota the new TAT if it
/// allows, `-(TAT + 1)` if it does not, all in microseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    pub(super) now_us: u64,
    tats: [i64; MAX_QUOTAS],
    len: usize,
}

impl Answer {
    /// Splits a batch's answer, `[now, the first decision's quotas…, the next one's…]`, into
    /// one answer per decision; `None` if its shape does not match.
    pub(crate) fn split(raw: &[i64], quota_counts: &[usize]) -> Option<Vec<Answer>> {
        let (&now_us, mut rest) = raw.split_first()?;
        let now_us = u64::try_from(now_us).ok()?;
        let mut answers = Vec::with_capacity(quota_counts.len());
        for &n in quota_counts {
            if rest.len() < n || n > MAX_QUOTAS {
                return None;
            }
            let (tats, tail) = rest.split_at(n);
            let mut answer = Answer {
                now_us,
                tats: [0; MAX_QUOTAS],
                len: n,
            };
            answer.tats[..n].copy_from_slice(tats);
            answers.push(answer);
            rest = tail;
        }
        rest.is_empty().then_some(answers)
    }

    /// Splits the answer of one decision across several keys into each part's share
    /// (`lens`: each part's number of quotas).
    pub(crate) fn parts(&self, lens: &[usize]) -> Option<Vec<Answer>> {
        let mut raw = Vec::with_capacity(1 + self.len);
        raw.push(i64::try_from(self.now_us).ok()?);
        raw.extend_from_slice(&self.tats[..self.len]);
        Answer::split(&raw, lens)
    }

    fn allowed(&self, i: usize) -> bool {
        self.tats[i] >= 0
    }

    /// The TAT Redis holds for quota `i` after this decision, in microseconds.
    pub(crate) fn tat_us(&self, i: usize) -> u64 {
        let tat = self.tats[i];
        if tat >= 0 {
            tat.unsigned_abs()
        } else {
            (tat + 1).unsigned_abs()
        }
    }

    /// The decision of a request of `cost`, in the memory store's terms: the script's
    /// arithmetic, with the numbers it was given.
    pub(crate) fn decision(&self, quotas: &Quotas, cost: u32) -> Option<Decision> {
        if self.len != quotas.len() {
            return None;
        }
        let nanos = |us: u64| us.saturating_mul(1000);
        let mut steps = [FULL; MAX_QUOTAS];
        for (i, (step, quota)) in steps.iter_mut().zip(quotas).enumerate() {
            let tat = self.tat_us(i);
            if let Some(calendar) = quota.calendar() {
                // Denied: until the window's end (see `rule`).
                let end = calendar.end(nanos(self.now_us));
                *step = Step {
                    allowed: self.allowed(i),
                    tat: nanos(tat),
                    wait: match (self.allowed(i), cost) {
                        (true, _) | (_, 0) => 0,
                        _ => end.saturating_sub(nanos(self.now_us)),
                    },
                };
                continue;
            }
            let (interval, window) = (interval_us(&Gcra::new(quota)), window_us(quota));
            // For a denial, the TAT the request would have had.
            let new = if self.allowed(i) {
                tat
            } else {
                tat.max(self.now_us)
                    .saturating_add(interval.saturating_mul(u64::from(cost)))
            };
            // A peek passes at once (see `Gcra::step`).
            let wait = match cost {
                0 => 0,
                _ => new.saturating_sub(window).saturating_sub(self.now_us),
            };
            *step = Step {
                allowed: self.allowed(i),
                tat: nanos(tat),
                wait: nanos(wait),
            };
        }
        Some(Decision::from_steps(
            quotas,
            &steps[..quotas.len()],
            nanos(self.now_us),
        ))
    }
}

/// The step of a full bucket.
pub(super) const FULL: Step = Step {
    allowed: true,
    tat: 0,
    wait: 0,
};

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::Quota;

    #[test]
    fn answers_become_the_memory_stores_decisions() {
        // 2/s: interval 500 ms, window 1 s. Allowed with TAT 1.5 s at 1 s; denied with TAT 2 s.
        let quotas = Quotas::from(Quota::per_second(2).unwrap());
        let answers = Answer::split(&[1_000_000, 1_500_000, -2_000_001], &[1, 1]).unwrap();
        let allowed = answers[0].decision(&quotas, 1).unwrap();
        assert!(allowed.is_allowed());
        assert_eq!(allowed.remaining(), 1);
        let denied = answers[1].decision(&quotas, 1).unwrap();
        assert!(!denied.is_allowed());
        assert_eq!(denied.retry_after(), Duration::from_millis(500));
        assert_eq!(answers[1].tat_us(0), 2_000_000);
        for bad in [&[][..], &[-1, 1], &[1], &[1, 1, 1]] {
            assert!(Answer::split(bad, &[1]).is_none(), "{bad:?}");
        }
    }
}
