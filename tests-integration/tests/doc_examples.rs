//! tollgate's docs show a few examples that need tonic or reqwest, which the crate's own doc
//! tests go without (so that `cargo run --example server` builds only what it needs): they are
//! marked `ignore` there and compiled here, as doc tests of this package's `src/lib.rs`. This
//! checks that every such example in tollgate's docs is one of those, line for line.

use std::path::Path;

/// The code blocks after `fence` in the doc comments of `text`, without the comment markers.
fn blocks(text: &str, fence: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in text.lines() {
        let Some(doc) = line
            .trim_start()
            .strip_prefix("//!")
            .or_else(|| line.trim_start().strip_prefix("///"))
        else {
            continue;
        };
        let doc = doc.strip_prefix(' ').unwrap_or(doc);
        match &mut current {
            None if doc.trim() == fence => current = Some(Vec::new()),
            Some(_) if doc.trim() == "```" => found.push(current.take().unwrap()),
            Some(block) => block.push(doc.to_owned()),
            None => {}
        }
    }
    found
}

fn sources(dir: &Path, into: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            into.push((path.display().to_string(), text));
        }
    }
}

#[test]
fn every_example_tollgate_does_not_compile_is_compiled_here() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let here = std::fs::read_to_string(root.join("src/lib.rs")).unwrap();
    let compiled = blocks(&here, "```no_run");
    let mut files = Vec::new();
    sources(&root.join("../src"), &mut files);
    let mut seen = 0;
    for (path, text) in &files {
        for block in blocks(text, "```rust,ignore") {
            seen += 1;
            assert!(
                compiled.contains(&block),
                "{path}: an example marked `ignore` that tests-integration/src/lib.rs does not \
                 compile:\n{}",
                block.join("\n")
            );
        }
    }
    assert_eq!(
        seen, 3,
        "the examples tollgate's docs leave to this package"
    );
    assert_eq!(
        compiled.len(),
        seen,
        "an example compiled here that tollgate no longer shows"
    );
}
