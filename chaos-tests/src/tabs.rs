//! Browser tabs that keep playing while a test changes something under them: a driver of
//! `chaos-tests/browser/restart.mjs` (headless Chromium through playwright-core, installed by
//! `.ci/run`), which opens one tab per player URL, waits until every tab decodes, then samples
//! each twice a second; see that script for the sample's fields.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

/// How long the browser may take to answer (the first answer: every tab decoding).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// Tabs playing in one headless Chromium.
pub struct Tabs {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Tabs {
    /// Opens one tab per URL and waits until each decodes video and audio; returns the tabs
    /// and the browser's `{"ready": [sample per tab]}`.
    pub async fn open(urls: &[String]) -> (Tabs, Value) {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/browser");
        let mut child = tokio::process::Command::new("node")
            .arg(format!("{dir}/restart.mjs"))
            .args(urls)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node (and chromium + playwright-core, installed by .ci/run)");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut tabs = Tabs {
            child,
            stdin,
            lines,
        };
        let ready = tabs.answer().await;
        println!("playing: {ready}");
        (tabs, ready)
    }

    /// The browser's next answer (one JSON line).
    async fn answer(&mut self) -> Value {
        let line = tokio::time::timeout(ANSWER_TIMEOUT, self.lines.next_line())
            .await
            .expect("the browser answers in time")
            .expect("reading the browser's answer")
            .expect("a line from the browser (see its stderr above)");
        serde_json::from_str(line.trim()).expect("JSON from the browser")
    }

    async fn send(&mut self, command: &str) {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .expect("the browser takes commands");
        self.stdin
            .flush()
            .await
            .expect("the browser takes commands");
    }

    /// Samples from now on carry `label`; each tab's longest gap between frames starts again.
    pub async fn mark(&mut self, label: &str) {
        self.send(&format!("mark {label}")).await;
    }

    /// Every request of every tab to `from` (a base URL) goes to `to` from now on, as a load
    /// balancer would send it once a node died; returns once the browser has it in place.
    pub async fn reroute(&mut self, from: &str, to: &str) {
        self.send(&format!("reroute {from} {to}")).await;
        let answer = self.answer().await;
        assert_eq!(answer["rerouted"], to, "the browser's answer: {answer}");
    }

    /// Stops sampling and closes the browser (which must exit cleanly); returns every sample
    /// (`{t, mark, pages: [per tab]}`).
    pub async fn stop(mut self) -> Vec<Value> {
        self.send("stop").await;
        let samples = self.answer().await;
        let exit = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
        assert!(
            exit.as_ref()
                .is_ok_and(|s| s.as_ref().is_ok_and(|s| s.success())),
            "the browser script ends: {exit:?}"
        );
        samples.as_array().cloned().expect("the samples")
    }
}
