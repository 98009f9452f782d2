//! Says which real servers the tests can start here, so that a test that cannot run shows as
//! ignored, with its reason, in the summary line (`cargo test` cannot decide that while a test
//! runs). With `TOLLGATE_REQUIRE_REDIS=1` or `TOLLGATE_REQUIRE_NGINX=1` (as `.ci/run` sets
//! them), nothing is ignored: a missing server fails its tests instead.

use std::path::Path;

/// The directories searched: `PATH`, and the `sbin` ones where Debian puts nginx.
fn dirs() -> Vec<std::path::PathBuf> {
    let extra = ["/usr/sbin", "/usr/local/sbin", "/sbin"];
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(extra.iter().map(Into::into))
        .filter(|dir| dir.is_dir())
        .collect()
}

fn on_path(program: &str) -> bool {
    dirs()
        .iter()
        .any(|dir| Path::new(dir).join(program).is_file())
}

fn main() {
    println!("cargo::rerun-if-env-changed=PATH");
    // Installing or removing a server changes its directory.
    for dir in dirs() {
        println!("cargo::rerun-if-changed={}", dir.display());
    }
    println!("cargo::rerun-if-env-changed=TOLLGATE_REQUIRE_REDIS");
    println!("cargo::rerun-if-env-changed=TOLLGATE_REQUIRE_NGINX");
    println!("cargo::rustc-check-cfg=cfg(no_redis, no_nginx, no_openssl)");
    let required = |name: &str| std::env::var(name).is_ok_and(|v| v == "1");
    let redis = on_path("redis-server") && on_path("redis-cli");
    if !redis && !required("TOLLGATE_REQUIRE_REDIS") {
        println!("cargo::rustc-cfg=no_redis");
    }
    if !on_path("nginx") && !required("TOLLGATE_REQUIRE_NGINX") {
        println!("cargo::rustc-cfg=no_nginx");
    }
    if !on_path("openssl") && !required("TOLLGATE_REQUIRE_REDIS") {
        println!("cargo::rustc-cfg=no_openssl");
    }
}
