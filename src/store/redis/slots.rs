//! Which node of a Redis Cluster serves which hash slot, as far as this client knows: the map
//! batching on a cluster groups decisions by, so that one call carries the decisions of one
//! node.
//!
//! The map is read with `CLUSTER SLOTS` and read again when a batch finds it wrong (a slot
//! moved). It only groups: routing is redis-rs's, which follows `MOVED` and `ASK` whatever the
//! map says, so a stale map costs a batch sent again one decision at a time, never a wrong
//! answer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use redis::Value;

/// Redis Cluster's hash slots.
pub(crate) const SLOTS: usize = 16384;

/// The hash slot of a key: CRC16 of its hash tag (what its first `{…}` holds, if not empty),
/// or of the whole key.
pub(crate) fn slot_of(key: &[u8]) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(tag_of(key)) % SLOTS as u16
}

/// The hash tag of a key: what its first `{…}` holds, or the whole key when that is empty or
/// missing (Redis's rule).
pub(crate) fn tag_of(key: &[u8]) -> &[u8] {
    let Some(open) = key.iter().position(|&b| b == b'{') else {
        return key;
    };
    match key[open + 1..].iter().position(|&b| b == b'}') {
        Some(0) | None => key,
        Some(close) => &key[open + 1..open + 1 + close],
    }
}

/// The slot → node map.
pub(super) struct SlotMap {
    /// The node index of every slot, and how many nodes; `None` until first read.
    owners: RwLock<Option<Arc<Owners>>>,
    refreshing: AtomicBool,
}

pub(crate) struct Owners {
    node_of_slot: Box<[u16]>,
}

impl Owners {
    /// The node serving `key`'s slot.
    pub(crate) fn node_of(&self, key: &[u8]) -> u16 {
        self.node_of_slot(slot_of(key))
    }

    /// The node serving `slot`.
    pub(crate) fn node_of_slot(&self, slot: u16) -> u16 {
        self.node_of_slot[usize::from(slot)]
    }
}

impl SlotMap {
    pub(super) fn new() -> Self {
        Self {
            owners: RwLock::new(None),
            refreshing: AtomicBool::new(false),
        }
    }

    /// The map as last read; `None` before the first read.
    pub(super) fn owners(&self) -> Option<Arc<Owners>> {
        self.owners
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the map again with `CLUSTER SLOTS` (one refresh at a time; others return).
    pub(super) async fn refresh(&self, connection: &mut impl redis::aio::ConnectionLike) {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let answer: redis::RedisResult<Value> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(connection)
            .await;
        if let Some(owners) = answer.ok().as_ref().and_then(parse) {
            *self.owners.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(owners));
        }
        self.refreshing.store(false, Ordering::Release);
    }
}

/// `CLUSTER SLOTS`: `[[start, end, [host, port, id, …], replicas…], …]`.
pub(crate) fn parse(value: &Value) -> Option<Owners> {
    let Value::Array(ranges) = value else {
        return None;
    };
    let mut node_of_slot = vec![0u16; SLOTS].into_boxed_slice();
    let mut nodes: HashMap<String, u16> = HashMap::new();
    for range in ranges {
        let Value::Array(fields) = range else {
            return None;
        };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(primary))) =
            (fields.first(), fields.get(1), fields.get(2))
        else {
            return None;
        };
        let host = match primary.first()? {
            Value::BulkString(host) => String::from_utf8_lossy(host).into_owned(),
            Value::SimpleString(host) => host.clone(),
            _ => return None,
        };
        let Some(Value::Int(port)) = primary.get(1) else {
            return None;
        };
        let next = u16::try_from(nodes.len()).ok()?;
        let node = *nodes.entry(format!("{host}:{port}")).or_insert(next);
        let (start, end) = (usize::try_from(*start).ok()?, usize::try_from(*end).ok()?);
        node_of_slot.get_mut(start..=end)?.fill(node);
    }
    Some(Owners { node_of_slot })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_hash_tag_as_redis_computes_them() {
        // CLUSTER KEYSLOT: foo 12182, bar 5061, {user1000}.following = user1000's 3443.
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"bar"), 5061);
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
        assert_eq!(
            slot_of(b"{}.x"),
            slot_of(b"{}.x"),
            "an empty tag hashes the whole key"
        );
        assert_eq!(tag_of(b"{}.x"), b"{}.x");
        assert_eq!(tag_of(b"a{b}c{d}"), b"b");
    }

    #[test]
    fn cluster_slots_become_a_map() {
        let node = |port: i64| {
            Value::Array(vec![
                Value::BulkString(b"127.0.0.1".to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let value = Value::Array(vec![
            Value::Array(vec![Value::Int(0), Value::Int(8191), node(7000)]),
            Value::Array(vec![
                Value::Int(8192),
                Value::Int(16383),
                node(7001),
                node(7002),
            ]),
        ]);
        let owners = parse(&value).unwrap();
        assert_eq!(owners.node_of(b"bar"), 0);
        assert_eq!(owners.node_of(b"foo"), 1);
        assert!(parse(&Value::Int(1)).is_none());
    }
}
