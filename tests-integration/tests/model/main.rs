//! Model-based tests: random programs of decisions, waits, refunds, resets, peeks and quota
//! changes, with time passing by random steps, played against a reference model
//! ([`reference`]) and against each way the crate decides. Every answer must agree: allowed or
//! not, remaining, retry-after and reset to the nanosecond (to the microsecond on Redis, which counts in them), the binding quota and part. A
//! failure shrinks to a short program, printed as Rust to paste into a regression test.
//!
//! `MODEL_CASES` sets how many programs each subject runs (CI: the default, 5,000; the longer
//! run in TESTING.md: 50,000).

#[path = "../common/mod.rs"]
mod common;
mod layer;
mod limiter;
mod memory;
mod outside;
mod program;
mod redis;
mod reference;
mod stress;

use proptest::test_runner::Config;

/// Programs per subject.
fn cases() -> u32 {
    std::env::var("MODEL_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(5_000)
}

fn config() -> Config {
    Config {
        cases: cases(),
        // Failures are printed as programs; no files left behind.
        failure_persistence: None,
        ..Config::default()
    }
}

/// Runs one program under a watchdog: a program that gets no answer for 30 s (a livelock, a
/// hang) is printed and the process aborts, since a spinning thread cannot be stopped.
fn watched<T>(program: &program::Program, run: impl FnOnce() -> T) -> T {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    use std::time::{Duration, Instant};

    type Running = Mutex<HashMap<std::thread::ThreadId, (Instant, program::Program)>>;
    static RUNNING: OnceLock<Running> = OnceLock::new();
    let running = RUNNING.get_or_init(|| {
        std::thread::spawn(|| loop {
            std::thread::sleep(Duration::from_secs(1));
            let running = RUNNING.get().unwrap().lock().unwrap();
            if let Some((_, program)) = running
                .values()
                .find(|(start, _)| start.elapsed() > Duration::from_secs(30))
            {
                // Straight to stderr: libtest's capture would swallow `eprintln!` here.
                let report =
                    format!("a program got no answer in 30 s (a livelock?):\n{program:?}\n");
                let _ = std::io::Write::write_all(&mut std::io::stderr(), report.as_bytes());
                std::process::abort();
            }
        });
        Mutex::default()
    });
    let me = std::thread::current().id();
    running
        .lock()
        .unwrap()
        .insert(me, (Instant::now(), program.clone()));
    let result = run();
    running.lock().unwrap().remove(&me);
    result
}
