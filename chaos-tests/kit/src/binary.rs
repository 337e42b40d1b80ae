//! Finding (and if needed building) the `streamhub-origin` and `streamhub-edge` binaries the
//! tests run.
//!
//! A binary is expected next to the test executable's `deps/` directory
//! (`target/debug/streamhub-origin`). If it is missing, or older than the sources of the crates it
//! is built from, it is built once per test process with `cargo build -p <crate> --bin <name>`.
//! `STREAMHUB_ORIGIN_BIN` / `STREAMHUB_EDGE_BIN` name a binary to use as is; `CHAOS_NO_BUILD=1`
//! never builds.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::SystemTime;

/// A binary the tests run.
struct Binary {
    name: &'static str,
    package: &'static str,
    env: &'static str,
    /// Crates whose sources go into it, relative to the workspace root.
    sources: &'static [&'static str],
}

const ORIGIN: Binary = Binary {
    name: "streamhub-origin",
    package: "streamhub-origin",
    env: "STREAMHUB_ORIGIN_BIN",
    sources: &[
        "shared",
        "cluster",
        "edge/media",
        "origin",
        "origin/opus",
        "origin/vendor/srt-tokio",
        "edge/vendor/rtc",
    ],
};

const EDGE: Binary = Binary {
    name: "streamhub-edge",
    package: "streamhub-edge",
    env: "STREAMHUB_EDGE_BIN",
    sources: &["shared", "cluster", "edge/media", "edge", "edge/vendor/rtc"],
};

/// Path of the origin binary, built at most once per process.
pub fn origin_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| locate_or_build(&ORIGIN)).clone()
}

/// Path of the edge binary, built at most once per process.
pub fn edge_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| locate_or_build(&EDGE)).clone()
}

fn locate_or_build(b: &Binary) -> PathBuf {
    if let Ok(p) = std::env::var(b.env) {
        return PathBuf::from(p);
    }
    let bin = expected_dir().join(b.name);
    let no_build = std::env::var("CHAOS_NO_BUILD").is_ok_and(|v| v == "1");
    let fresh = bin.exists() && !is_stale(&bin, b.sources);
    if fresh || (no_build && bin.exists()) {
        return bin;
    }
    assert!(
        !no_build,
        "{} is missing and CHAOS_NO_BUILD=1",
        bin.display()
    );
    build(b);
    assert!(
        bin.exists(),
        "cargo build did not produce {}",
        bin.display()
    );
    bin
}

/// `<target>/<profile>`, from the test executable `<target>/<profile>/deps/x`.
fn expected_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test executable");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in <target>/<profile>/deps");
    profile_dir.to_path_buf()
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("the test kit lives in chaos-tests/kit of the workspace")
        .to_path_buf()
}

/// True if a source file or manifest of the binary's crates is newer than the binary.
fn is_stale(bin: &Path, sources: &[&str]) -> bool {
    let Ok(built) = bin.metadata().and_then(|m| m.modified()) else {
        return true;
    };
    let root = workspace_root();
    let mut newest = SystemTime::UNIX_EPOCH;
    newest_mtime(&root.join("Cargo.toml"), &mut newest);
    newest_mtime(&root.join("Cargo.lock"), &mut newest);
    for dir in sources {
        newest_mtime(&root.join(dir).join("Cargo.toml"), &mut newest);
        newest_mtime(&root.join(dir).join("src"), &mut newest);
    }
    newest > built
}

fn newest_mtime(path: &Path, newest: &mut SystemTime) {
    let Ok(meta) = path.metadata() else { return };
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
            newest_mtime(&entry.path(), newest);
        }
    } else if let Ok(m) = meta.modified() {
        *newest = (*newest).max(m);
    }
}

fn build(b: &Binary) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!(
        "chaos-tests: building {} (missing or older than its sources)",
        b.name
    );
    let status = Command::new(cargo)
        .args(["build", "-p", b.package, "--bin", b.name])
        .current_dir(workspace_root())
        .status()
        .expect("run cargo build");
    assert!(
        status.success(),
        "cargo build -p {} failed ({status})",
        b.package
    );
}
