//! Memory per tracked key at 1,000,000 IPv4 keys: tollgate's MemoryStore beside governor's
//! keyed limiter (DashMap), in one run, counted by a global allocator that tracks live bytes.
//!
//! ```text
//! cargo bench --bench memory
//! ```

#![allow(unsafe_code)] // a counting allocator

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicIsize, Ordering};

use tollgate::store::Ask;
use tollgate::Store;
use tollgate::{MemoryStore, Quota, Quotas};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator unchanged, only counting the bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

mod common;

/// Keys tracked (100,000 in the short mode of `cargo test --benches`).
fn keys() -> u32 {
    if common::quick() {
        100_000
    } else {
        1_000_000
    }
}

fn ip(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(i.wrapping_mul(2_654_435_761) ^ 0x0a00_0000))
}

/// Live bytes that `build` leaves behind, per key.
fn bytes_per_key<T>(build: impl FnOnce() -> T) -> (f64, T) {
    let before = LIVE.load(Ordering::SeqCst);
    let kept = build();
    let after = LIVE.load(Ordering::SeqCst);
    ((after - before) as f64 / f64::from(keys()), kept)
}

fn main() {
    // Every key is tracked for the whole run: one request per hour each.
    let (tollgate, store) = bytes_per_key(|| {
        let store = MemoryStore::builder().max_keys(2 * keys() as usize).build();
        let quotas = Quotas::from(Quota::per_hour(10).unwrap());
        for i in 0..keys() {
            let key = ip(i);
            assert!(store
                .decide(&Ask::new(&key, &quotas))
                .into_inner()
                .unwrap()
                .is_allowed());
        }
        store
    });
    assert_eq!(store.len(), keys() as usize);

    let (governor, limiter) = bytes_per_key(|| {
        let limiter =
            governor::RateLimiter::keyed(governor::Quota::per_hour(NonZeroU32::new(10).unwrap()));
        for i in 0..keys() {
            assert!(limiter.check_key(&ip(i)).is_ok());
        }
        limiter
    });
    assert_eq!(limiter.len(), keys() as usize);
    black_box((&store, &limiter));

    println!(
        "memory per tracked key, {} IPv4 keys (live heap bytes / keys)",
        keys()
    );
    println!("  tollgate MemoryStore           {tollgate:6.1} bytes");
    println!("  governor keyed (DashMap)       {governor:6.1} bytes");
    println!(
        "  ratio tollgate / governor      {:6.2}",
        tollgate / governor
    );
}
