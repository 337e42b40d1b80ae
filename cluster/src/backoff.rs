//! Capped exponential backoff with jitter: the one retry rule of every reconnect in the
//! workspace (cluster dials, edge pulls, RTSP cameras).
//!
//! Sans-IO: the caller passes `now` and the jitter (a random number in `[0, 1)`), so the rule is
//! tested without a clock. The delay after the `n`th failure in a row is
//! `min(base * 2^(n-1), cap)`, scaled by the jitter into `[50%, 100%)` of it so that peers that
//! failed together do not retry together.

use std::time::Duration;

use tokio::time::Instant;

/// The retry state of one thing that can fail repeatedly.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
    retry_at: Option<Instant>,
}

impl Backoff {
    /// A backoff starting at `base` (at most) and never waiting more than `cap`.
    pub const fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            failures: 0,
            retry_at: None,
        }
    }

    /// A backoff that has seen `failures` failures in a row already (a retry schedule kept
    /// elsewhere, such as in the replicated state, and resumed here).
    pub const fn after(base: Duration, cap: Duration, failures: u32) -> Self {
        Self {
            base,
            cap,
            failures,
            retry_at: None,
        }
    }

    /// Records a failure at `now`; `jitter` in `[0, 1)` scales the delay into `[50%, 100%)` of
    /// the exponential step. Returns the delay before the next attempt.
    pub fn failed(&mut self, now: Instant, jitter: f64) -> Duration {
        let delay = self.next_delay(jitter);
        self.retry_at = Some(now + delay);
        delay
    }

    /// The delay before the next attempt after one more failure (for callers that sleep it
    /// themselves rather than ask [`Backoff::wait`]).
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.failures.min(16));
        self.failures = self.failures.saturating_add(1);
        exp.min(self.cap)
            .mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }

    /// [`Backoff::next_delay`] with a random jitter.
    pub fn next_random_delay(&mut self) -> Duration {
        self.next_delay(rand::random::<f64>())
    }

    /// Forgets past failures after a success.
    pub fn succeeded(&mut self) {
        self.failures = 0;
        self.retry_at = None;
    }

    /// Failures in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// If another attempt is not allowed yet at `now`, how long until it is.
    pub fn wait(&self, now: Instant) -> Option<Duration> {
        self.retry_at
            .filter(|at| *at > now)
            .map(|at| at.duration_since(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_millis(50);
    const CAP: Duration = Duration::from_secs(2);

    #[test]
    fn doubles_with_jitter_up_to_the_cap_and_resets() {
        let now = Instant::now();
        let mut b = Backoff::new(BASE, CAP);
        assert_eq!(b.wait(now), None);
        let first = b.failed(now, 0.999);
        assert!(first > Duration::from_millis(49) && first < BASE);
        assert_eq!(b.failed(now, 0.0), Duration::from_millis(50));
        assert_eq!(b.failed(now, 0.0), Duration::from_millis(100));
        for _ in 0..40 {
            b.failed(now, 0.0);
        }
        assert_eq!(b.failed(now, 0.0), CAP / 2);
        assert!(b.failed(now, 0.999) <= CAP);
        assert!(b.wait(now).is_some());
        assert_eq!(b.wait(now + CAP), None);
        b.succeeded();
        assert_eq!(b.failures(), 0);
        assert_eq!(b.wait(now), None);
        assert_eq!(b.failed(now, 0.0), BASE / 2);
    }

    #[test]
    fn random_delays_stay_within_half_and_whole_of_each_step() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let first = b.next_random_delay();
        assert!(first >= Duration::from_millis(50) && first < Duration::from_millis(100));
        for _ in 0..20 {
            assert!(b.next_random_delay() < Duration::from_secs(1));
        }
        assert!(b.next_random_delay() >= Duration::from_millis(500));
    }
}
