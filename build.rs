//! Build script: the commit the binary was built from, for the `cookie_crud_build_info`
//! metric (`src/metrics.rs`), as the compile-time variable `BUILD_COMMIT`. (No
//! `COOKIE_CRUD_*` name: cargo also sets it in the environment of `cargo test` and
//! `cargo run`, and a node refuses an unknown `COOKIE_CRUD_*` variable.)
//!
//! - `SOURCE_COMMIT` in the build's environment wins (the Dockerfile passes it as a build
//!   argument: the image's build context has no `.git`). It is not a `COOKIE_CRUD_*` name on
//!   purpose: the node reads every `COOKIE_CRUD_*` variable as configuration and refuses
//!   unknown keys, and tests start nodes with the build's environment.
//! - Otherwise `git rev-parse --short=12 HEAD` in the package's directory.
//! - Otherwise (no git, no repository, any error) `unknown`. The build never fails here.
//!
//! Cargo reruns this only when `HEAD`, the branch it points to or `packed-refs` change (or
//! `SOURCE_COMMIT` does), not on every build.

use std::path::Path;
use std::process::Command;

const OVERRIDE: &str = "SOURCE_COMMIT";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed={OVERRIDE}");
    let commit = std::env::var(OVERRIDE)
        .ok()
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
        .map(|c| shorten(&c))
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=BUILD_COMMIT={commit}");
}

/// A full hexadecimal commit id shortened to 12 digits, as `git rev-parse --short=12` gives;
/// anything else as it is.
fn shorten(c: &str) -> String {
    if c.len() > 12 && c.chars().all(|ch| ch.is_ascii_hexdigit()) {
        c[..12].to_string()
    } else {
        c.to_string()
    }
}

/// `git` run in the package's directory, its trimmed output when it succeeds.
fn git(args: &[&str]) -> Option<String> {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")?;
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// The short commit of `HEAD`, after telling cargo which files move when it does.
fn git_commit() -> Option<String> {
    // `--git-path` resolves each file where git keeps it (a worktree's HEAD is its own,
    // its branches are the main repository's).
    let mut watch = vec!["HEAD".to_string(), "packed-refs".to_string()];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch.push(branch);
    }
    for file in watch {
        if let Some(path) = git(&["rev-parse", "--git-path", &file]) {
            let path = Path::new(&std::env::var_os("CARGO_MANIFEST_DIR")?).join(path);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    git(&["rev-parse", "--short=12", "HEAD"])
}
