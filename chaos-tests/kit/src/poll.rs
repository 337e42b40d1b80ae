//! Waiting for a condition with a deadline (tests never wait with a bare sleep).

use std::future::Future;
use std::time::{Duration, Instant};

/// How often [`poll`] re-checks its condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Calls `check` until it returns `Ok`, or fails after `timeout` with the last `Err` it gave
/// (a description of what was observed instead), so a timeout says what the cluster looked like.
pub async fn poll<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        match check().await {
            Ok(v) => return Ok(v),
            Err(last) if start.elapsed() >= timeout => {
                anyhow::bail!("timed out after {timeout:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
}
