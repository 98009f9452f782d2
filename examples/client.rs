//! An HTTP client that is a good citizen: retries what is safe, within a budget, keeps to a
//! rate per host, and learns each host's limits from its responses.
//!
//! ```text
//! cargo run --example client -- [--method METHOD] [--requests N] [--rps R] [--no-learn] URL
//! ```
//!
//! The stack, outermost first: `RetryLayer` → `LearnLayer` (waits, up to 60 s, when a host
//! said it has nothing left; off with `--no-learn`) → `TimeoutLayer` (10 s per attempt) →
//! `RateLimitLayer` per host, in wait mode (R requests per second, default 5) → hyper-util's
//! client. The learned wait sits outside the timeout, so a long reset is not cut short and
//! retried; `LearnLayer`'s own maximum bounds it. It prints a line per attempt (status or error, the wait before the next attempt and
//! why) and a summary per request. Try it against `cargo run --example server`:
//!
//! ```text
//! cargo run --example client -- --requests 12 --rps 20 http://127.0.0.1:3000/api/hello
//! cargo run --example client -- --method POST --requests 5 http://127.0.0.1:3000/api/login
//! ```
//!
//! and against `cargo run --example flaky_server`, which fails on purpose:
//!
//! ```text
//! cargo run --example client -- --requests 3 http://127.0.0.1:3001/flaky      # retries
//! cargo run --example client -- --requests 3 http://127.0.0.1:3001/throttle   # Retry-After
//! cargo run --example client -- --method POST http://127.0.0.1:3001/flaky    # not retried
//! cargo run --example client -- --requests 30 --rps 50 http://127.0.0.1:3001/down  # budget
//! ```
//!
//! `/limited` allows 5 requests per 10-second window and says so in `X-RateLimit-*` headers.
//! The client reads them and waits for the next window instead of being refused:
//!
//! ```text
//! cargo run --example client -- --requests 12 --rps 50 http://127.0.0.1:3001/limited             # no 429
//! cargo run --example client -- --requests 12 --rps 50 --no-learn http://127.0.0.1:3001/limited  # 429s, retried
//! ```

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tollgate::key::Destination;
use tollgate::learn::LearnLayer;
use tollgate::retry::{Attempts, RetryAction, RetryBudget, RetryError, RetryEvent, RetryLayer};
use tollgate::{Quota, RateLimitLayer};
use tower::util::option_layer;
use tower::BoxError;
use tower::ServiceBuilder;

struct Args {
    method: Method,
    requests: u32,
    rps: u32,
    learn: bool,
    url: Uri,
}

const USAGE: &str = "usage: client [--method METHOD] [--requests N] [--rps R] [--no-learn] URL";

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let (mut method, mut requests, mut rps, mut learn, mut url) = (Method::GET, 1, 5, true, None);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--method" => {
                method = value("--method")?
                    .parse()
                    .map_err(|_| "--method: not an HTTP method")?
            }
            "--requests" => {
                requests = value("--requests")?
                    .parse()
                    .map_err(|_| "--requests: not a number")?
            }
            "--rps" => rps = value("--rps")?.parse().map_err(|_| "--rps: not a number")?,
            "--no-learn" => learn = false,
            "-h" | "--help" => return Err(USAGE.into()),
            other if url.is_none() && !other.starts_with("--") => {
                url = Some(other.parse::<Uri>().map_err(|e| format!("{other}: {e}"))?)
            }
            other => return Err(format!("unexpected argument {other:?}\n{USAGE}")),
        }
    }
    let url = url.ok_or(USAGE)?;
    if url.authority().is_none() {
        return Err(format!(
            "{url}: an absolute URL is needed (http://host:port/path)"
        ));
    }
    Ok(Args {
        method,
        requests,
        rps,
        learn,
        url,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), BoxError> {
    // The retry hook reports each failed attempt; the summary reports the last one.
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = Arc::clone(&lines);
    // A small budget, so that its effect shows in a short session: 10 retries over 10 s plus
    // 20% of the requests.
    let retry = RetryLayer::new()
        .budget(RetryBudget::new(Duration::from_secs(10), 0.2, 1))
        .on_event(move |event| log.lock().unwrap().push(describe(event)));
    let per_host = RateLimitLayer::new(Quota::per_second(args.rps.max(1))?.with_burst(1)?)
        .key(Destination)
        .wait(Duration::from_secs(60))
        .errors();
    let learn = args
        .learn
        .then(|| LearnLayer::new().wait(Duration::from_secs(60)));
    let client = Client::builder(TokioExecutor::new()).build_http();
    let service = ServiceBuilder::new()
        .layer(retry)
        .layer(option_layer(learn))
        .map_err(BoxError::from)
        .timeout(Duration::from_secs(10))
        .layer(per_host)
        .service(client);

    let (mut ok, mut failed) = (0, 0);
    let started = Instant::now();
    for n in 1..=args.requests {
        let request = Request::builder()
            .method(args.method.clone())
            .uri(args.url.clone())
            .body(Full::<Bytes>::default())?;
        let sent = Instant::now();
        let result = service.clone().oneshot(request).await;
        // Failed attempts, as the retry hook saw them; whether the last one was reported.
        let reported: Vec<String> = lines.lock().unwrap().drain(..).collect();
        let last_reported = reported
            .last()
            .is_some_and(|line| line.contains("not retried"));
        for line in &reported {
            println!("request {n}: {line}");
        }
        let took = sent.elapsed();
        match result {
            Ok(response) => {
                let attempts = Attempts::of(&response);
                let status = response.status();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let _ = response.into_body().collect().await;
                if !last_reported {
                    println!("request {n}: attempt {attempts}: {status}");
                }
                let extra = retry_after
                    .map(|s| format!(", server says retry after {s} s"))
                    .unwrap_or_default();
                println!("request {n}: {status} after {attempts} attempt(s) in {took:.0?}{extra}");
                if status.is_success() {
                    ok += 1
                } else {
                    failed += 1
                }
            }
            Err(error) => {
                let attempts = error
                    .downcast_ref::<RetryError>()
                    .map_or(1, RetryError::attempts);
                println!("request {n}: failed after {attempts} attempt(s) in {took:.0?}: {error}");
                failed += 1;
            }
        }
    }
    println!(
        "{} requests in {:.1?}: {ok} succeeded, {failed} failed",
        args.requests,
        started.elapsed()
    );
    Ok(())
}

fn describe(event: &RetryEvent<'_>) -> String {
    let outcome = match (event.status, event.error) {
        (Some(status), _) => status.to_string(),
        (None, Some(error)) => format!("error: {error}"),
        (None, None) => "failed".into(),
    };
    let next = match event.action {
        RetryAction::Retry { delay } => format!("retry in {delay:.0?}"),
        RetryAction::GiveUp(reason) => format!("not retried: {reason}"),
        _ => "?".into(),
    };
    format!(
        "attempt {}: {outcome} ({:?}) → {next}",
        event.attempt, event.classification
    )
}
