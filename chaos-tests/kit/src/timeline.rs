//! The fault timeline of a test: what the harness and the test did, and when.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Events with their time since the test started; printed when a test fails.
#[derive(Debug)]
pub struct Timeline {
    start: Instant,
    events: Mutex<Vec<(Duration, String)>>,
    /// Print each event as it is recorded.
    echo: bool,
}

impl Default for Timeline {
    fn default() -> Self {
        Timeline::new()
    }
}

impl Timeline {
    /// A timeline starting now.
    pub fn new() -> Timeline {
        Timeline {
            start: Instant::now(),
            events: Mutex::new(Vec::new()),
            echo: true,
        }
    }

    /// A timeline that records without printing (single-node tests).
    pub fn quiet() -> Timeline {
        Timeline {
            echo: false,
            ..Timeline::new()
        }
    }

    /// Records `event` (and prints it, so `--nocapture` shows progress live).
    pub fn record(&self, event: impl Into<String>) {
        let at = self.start.elapsed();
        let event = event.into();
        if self.echo {
            println!("[chaos +{:>8.3}s] {event}", at.as_secs_f64());
        }
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((at, event));
    }

    /// Time since the test started.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// The whole timeline, one event a line.
    pub fn render(&self) -> String {
        let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        for (at, event) in events.iter() {
            let _ = writeln!(out, "  +{:>8.3}s  {event}", at.as_secs_f64());
        }
        out
    }
}
