//! Optional futures for `tokio::select!` branches: each resolves never when there is nothing to
//! wait on, so a branch can stay in the select whatever the state.

use tokio::sync::watch;

/// Resolves when `rx` (if any) changes; never if there is none.
pub async fn changed(rx: &mut Option<watch::Receiver<u64>>) -> Result<(), watch::error::RecvError> {
    match rx.as_mut() {
        Some(rx) => rx.changed().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`; never if it is `None`.
pub async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
