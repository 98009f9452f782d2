//! The two mistakes newcomers made building a client stack fail to compile with a message
//! that names the fix, not "the method `oneshot` exists … but its trait bounds were not
//! satisfied" (E0599): a rate limit on a hyper client without `.errors()`, and a client built
//! for the request body it is given rather than the `ReplayBody` that `RetryLayer` sends.
//!
//! Each is a small crate written from the README's client recipe, with the one mistake,
//! checked by cargo (`cargo check --offline`, its own target directory, the workspace's
//! lock file) as a user's build would be.

use std::path::{Path, PathBuf};
use std::process::Command;

const MANIFEST: &str = r#"
[package]
name = "mistake"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
tollgate = { path = "TOLLGATE", features = ["hyper"] }
tower = { version = "0.5", features = ["util", "timeout"] }
hyper-util = { version = "0.1", features = ["client-legacy", "http1", "tokio"] }
http-body-util = "0.1"
bytes = "1"
http = "1"
tokio = { version = "1", features = ["rt", "macros"] }

[workspace]
"#;

/// The README's client stack, with `RATE_LIMIT` and `CLIENT` in place of its rate limit and
/// its client.
const STACK: &str = r#"
use std::time::Duration;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
#[allow(unused_imports)]
use tollgate::retry::{ReplayBody, RetryLayer};
use tollgate::key::Destination;
use tollgate::{Quota, RateLimitLayer};
use tower::BoxError;
#[allow(unused_imports)]
use tower::{ServiceBuilder, ServiceExt};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let per_host = RATE_LIMIT;
    let client = ServiceBuilder::new()
        .layer(RetryLayer::new())
        .timeout(Duration::from_secs(10))
        .layer(per_host)
        .service(CLIENT);
    let request = http::Request::get("http://127.0.0.1:1/").body(Full::new(Bytes::new()))?;
    let _ = client.oneshot(request).await;
    Ok(())
}
"#;

const RATE_LIMIT: &str =
    "RateLimitLayer::new(Quota::per_second(5)?).key(Destination).wait(Duration::from_secs(60))";
const CLIENT: &str =
    "Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>()";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Checks a crate whose `main.rs` is `source`; the compiler's messages if it fails, `None` if
/// it builds.
fn check(name: &str, source: &str) -> Option<String> {
    let dir = workspace().join("target").join("mistakes").join(name);
    std::fs::create_dir_all(dir.join("src")).unwrap();
    let tollgate = workspace().display().to_string();
    std::fs::write(
        dir.join("Cargo.toml"),
        MANIFEST.replace("TOLLGATE", &tollgate),
    )
    .unwrap();
    std::fs::copy(workspace().join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    std::fs::write(dir.join("src/main.rs"), source).unwrap();
    let mut cargo = Command::new(env!("CARGO"));
    // Without the variables cargo sets for this test (they would describe tests-integration).
    for (var, _) in std::env::vars_os() {
        let var = var.to_string_lossy().into_owned();
        if var.starts_with("CARGO_") && var != "CARGO_HOME" {
            cargo.env_remove(var);
        }
    }
    let out = cargo
        .current_dir(&dir)
        .args(["check", "--offline", "--quiet", "--color", "never"])
        .arg("--target-dir")
        .arg(workspace().join("target").join("mistakes").join("target"))
        .output()
        .expect("cargo runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (!out.status.success()).then_some(stderr)
}

#[test]
fn client_stack_mistakes_fail_to_compile_naming_their_fix() {
    // The recipe as written builds: the mistakes below are the only change.
    let right = STACK
        .replace("RATE_LIMIT", &format!("{RATE_LIMIT}.errors()"))
        .replace("CLIENT", CLIENT);
    if let Some(errors) = check("right", &right) {
        panic!("the README's client stack does not build:\n{errors}");
    }

    // A rate limit on a client without `.errors()`: it cannot build a 429 of hyper's body.
    let no_errors = STACK
        .replace("RATE_LIMIT", RATE_LIMIT)
        .replace("CLIENT", CLIENT);
    let errors = check("no_errors", &no_errors).expect("a client's layer without .errors()");
    assert!(errors.contains("error[E0277]"), "{errors}");
    assert!(!errors.contains("E0599"), "{errors}");
    assert!(
        errors.contains(
            "the layer cannot answer `http::Response<hyper::body::incoming::Incoming>` itself"
        ),
        "{errors}"
    );
    assert!(errors.contains("call `.errors()` on the layer"), "{errors}");

    // A client built for the body it is given, not the `ReplayBody` RetryLayer sends.
    let plain_body = STACK
        .replace("RATE_LIMIT", &format!("{RATE_LIMIT}.errors()"))
        .replace(
            "CLIENT",
            "Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>()",
        );
    let errors = check("plain_body", &plain_body).expect("a client not built for ReplayBody");
    assert!(errors.contains("error[E0277]"), "{errors}");
    assert!(!errors.contains("E0599"), "{errors}");
    assert!(
        errors.contains(
            "is not implemented for `Client<HttpConnector, http_body_util::Full<bytes::Bytes>>`"
        ) && errors.contains("Service<http::Request<ReplayBody<_>>>"),
        "{errors}"
    );
}
