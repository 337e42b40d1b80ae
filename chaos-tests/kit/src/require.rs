//! What a test needs from the machine (root, network namespaces, Chromium, a tool), and what
//! happens when it is missing: under CI (`CI` set, as `.ci/run` does) the test fails, so a
//! feature that did not run never counts as passing; on a developer machine that asks for it
//! with `STREAMHUB_ALLOW_SKIP=1` the test is skipped, loudly; otherwise it fails too.

/// Whether the test may go on: true when `available`; when not, panics (CI, or no permission to
/// skip) or prints a loud skip notice and returns false.
pub fn require(what: &str, available: bool) -> bool {
    if available {
        return true;
    }
    let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "0");
    let allowed = std::env::var("STREAMHUB_ALLOW_SKIP").is_ok_and(|v| v == "1");
    if ci || !allowed {
        panic!(
            "this test needs {what}, which is missing here{}; install it (see .ci/run), or on a \
             developer machine set STREAMHUB_ALLOW_SKIP=1 to skip",
            if ci { " and CI is set" } else { "" }
        );
    }
    eprintln!("\n!!!! SKIPPED (STREAMHUB_ALLOW_SKIP=1): this test needs {what} !!!!\n");
    false
}

/// Whether `cmd --version` (or `-version`) runs here.
pub fn has_command(cmd: &str) -> bool {
    ["--version", "-version"].iter().any(|flag| {
        std::process::Command::new(cmd)
            .arg(flag)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// The browser tests' tools: Debian's Chromium, Node.js, and `playwright-core` installed in
/// `chaos-tests/browser` (`npm ci`, done by `.ci/run`).
pub const BROWSER: &str =
    "Debian's chromium, node and playwright-core (npm ci in chaos-tests/browser)";

/// Whether the browser tests can run here (see [`BROWSER`]).
pub fn browser_available() -> bool {
    let playwright = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../browser/node_modules/playwright-core");
    std::path::Path::new("/usr/bin/chromium").exists() && has_command("node") && playwright.exists()
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_available_feature_always_runs() {
        assert!(super::require("nothing", true));
    }

    #[test]
    #[should_panic(expected = "this test needs")]
    fn a_missing_feature_fails_unless_skipping_is_asked_for() {
        // The test process never sets STREAMHUB_ALLOW_SKIP for itself.
        if std::env::var("STREAMHUB_ALLOW_SKIP").is_ok() {
            panic!("this test needs STREAMHUB_ALLOW_SKIP unset");
        }
        super::require("a feature that is not here", false);
    }
}
