//! `cargo test` at the root runs every test: the crate's own unit and doc tests once more with
//! every feature on (the Redis store's, the tonic integration's: `cargo test` builds the crate
//! with the examples' features only), then the integration tests of `tests-integration/`, which
//! live apart with their heavy dependencies (tonic, reqwest, criterion, the peers of the
//! benches) so that `cargo run --example server` builds only what the example needs. Each runs
//! with the arguments this was given (a filter, `--nocapture`); this fails when one fails.

use std::process::{exit, Command};

fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    if !root.join("tests-integration").is_dir() {
        // The published crate (`cargo package`) holds the crate alone.
        println!("tests-integration/ is not here (a packaged crate): the crate's own tests ran");
        return;
    }
    let forwarded: Vec<String> = std::env::args().skip(1).collect();
    let runs: [&[&str]; 3] = [
        &["test", "-p", "tollgate", "--all-features", "--lib"],
        &["test", "-p", "tollgate", "--all-features", "--doc"],
        &["test", "-p", "tests-integration"],
    ];
    for run in runs {
        let status = cargo()
            .args(run)
            .arg("--")
            .args(&forwarded)
            .status()
            .expect("cargo runs");
        if !status.success() {
            exit(status.code().unwrap_or(1));
        }
    }
}

/// `cargo` in the workspace, without the variables cargo sets for this test: build scripts
/// that watch them would rebuild on every other call.
fn cargo() -> Command {
    let mut cargo = Command::new(env!("CARGO"));
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        let set_for_this_test = [
            "CARGO_MANIFEST_",
            "CARGO_PKG_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
        ]
        .iter()
        .any(|prefix| name.starts_with(prefix))
            || name == "CARGO_PRIMARY_PACKAGE"
            || name == "CARGO_TARGET_TMPDIR"
            || name == "CARGO_RUSTC_CURRENT_DIR";
        if set_for_this_test {
            cargo.env_remove(name);
        }
    }
    cargo.current_dir(env!("CARGO_MANIFEST_DIR"));
    cargo
}
