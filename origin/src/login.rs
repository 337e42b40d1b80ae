//! What keeps password guessing slow and cheap for the node: login attempts are throttled per
//! client address and per username (HTTP 429 with `Retry-After`), password hashes run a few at
//! a time on their own permits (argon2 takes ~19 MiB and tens of milliseconds each), and an
//! unknown user costs the same hash as a known one, so timing does not tell which users exist.
//!
//! Buckets: each address and each username holds a few attempts and earns one back at a fixed
//! rate; an attempt takes one from both, a successful one gives them back. An attacker on one
//! address is stopped by its own bucket long before the username's is empty, so the real
//! administrator still signs in from elsewhere; guesses spread over many addresses are slowed
//! to the username's rate.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::api::ApiError;
use crate::credentials::{hash_password, verify_password};

/// Limits of login attempts and password hashing.
#[derive(Debug, Clone, Copy)]
pub struct LoginLimits {
    /// Attempts one address may make at once before it has to wait.
    pub address_burst: u32,
    /// Attempts one address earns back per minute.
    pub address_per_minute: u32,
    /// Attempts on one username, from anywhere, before they have to wait.
    pub user_burst: u32,
    /// Attempts one username earns back per minute.
    pub user_per_minute: u32,
    /// Password hashes computed at once on this node (logins and password changes).
    pub concurrent_hashes: usize,
    /// How long an attempt waits for a hashing permit before it gets 503.
    pub hash_wait: Duration,
}

impl Default for LoginLimits {
    fn default() -> Self {
        Self {
            address_burst: 10,
            address_per_minute: 10,
            user_burst: 30,
            user_per_minute: 30,
            concurrent_hashes: 2,
            hash_wait: Duration::from_secs(5),
        }
    }
}

/// Addresses and usernames remembered at most (least recently used ones are forgotten first).
const REMEMBERED: u64 = 100_000;
/// A bucket untouched this long is full again anyway: forget it.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A set of token buckets, one per key.
struct Buckets<K> {
    map: moka::sync::Cache<K, Arc<Mutex<Bucket>>>,
    burst: f64,
    per_sec: f64,
}

impl<K> Buckets<K>
where
    K: std::hash::Hash + Eq + Send + Sync + Clone + 'static,
{
    fn new(burst: u32, per_minute: u32) -> Self {
        Self {
            map: moka::sync::Cache::builder()
                .max_capacity(REMEMBERED)
                .time_to_idle(FORGET_AFTER)
                .build(),
            burst: f64::from(burst.max(1)),
            per_sec: f64::from(per_minute.max(1)) / 60.0,
        }
    }

    /// Takes one attempt from `key`'s bucket, or says how long until one is earned.
    fn take(&self, key: &K, now: Instant) -> Result<(), Duration> {
        let bucket = self.map.get_with(key.clone(), || {
            Arc::new(Mutex::new(Bucket {
                tokens: self.burst,
                at: now,
            }))
        });
        let mut b = bucket.lock().unwrap_or_else(PoisonError::into_inner);
        let earned = now.saturating_duration_since(b.at).as_secs_f64() * self.per_sec;
        b.tokens = (b.tokens + earned).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.per_sec))
        }
    }

    /// Gives an attempt back (it succeeded).
    fn give_back(&self, key: &K) {
        if let Some(bucket) = self.map.get(key) {
            let mut b = bucket.lock().unwrap_or_else(PoisonError::into_inner);
            b.tokens = (b.tokens + 1.0).min(self.burst);
        }
    }
}

/// The login throttle and the node's password-hashing permits (shared by every handler that
/// hashes or verifies a password).
#[derive(Clone)]
pub struct LoginGuard(Arc<Inner>);

struct Inner {
    limits: LoginLimits,
    addresses: Buckets<IpAddr>,
    users: Buckets<String>,
    hashes: Semaphore,
    /// A hash of a random password: what an unknown user's attempt is verified against.
    decoy: OnceLock<String>,
}

/// An attempt let through: give it back with [`Attempt::succeeded`].
pub struct Attempt {
    guard: LoginGuard,
    ip: IpAddr,
    user: String,
}

impl Attempt {
    /// The attempt succeeded: it does not count against its address or username.
    pub fn succeeded(self) {
        self.guard.0.addresses.give_back(&self.ip);
        self.guard.0.users.give_back(&self.user);
    }
}

impl Default for LoginGuard {
    fn default() -> Self {
        Self::new(LoginLimits::default())
    }
}

impl LoginGuard {
    pub fn new(limits: LoginLimits) -> Self {
        Self(Arc::new(Inner {
            addresses: Buckets::new(limits.address_burst, limits.address_per_minute),
            users: Buckets::new(limits.user_burst, limits.user_per_minute),
            hashes: Semaphore::new(limits.concurrent_hashes.max(1)),
            decoy: OnceLock::new(),
            limits,
        }))
    }

    /// Lets an attempt by `ip` on `user` through, or answers 429 with when to retry.
    pub fn begin(&self, ip: IpAddr, user: &str) -> Result<Attempt, ApiError> {
        let now = Instant::now();
        let user: String = user.to_lowercase().chars().take(64).collect();
        let ip = canonical(ip);
        if let Err(wait) = self.0.addresses.take(&ip, now) {
            tracing::warn!(%ip, "login attempts from this address throttled");
            return Err(too_many("too many login attempts from this address", wait));
        }
        if let Err(wait) = self.0.users.take(&user, now) {
            self.0.addresses.give_back(&ip);
            tracing::warn!(user = %user, "login attempts on this user throttled");
            return Err(too_many("too many login attempts on this user", wait));
        }
        Ok(Attempt {
            guard: self.clone(),
            ip,
            user,
        })
    }

    /// Checks `password` against `phc`, or against a decoy of the same cost when there is no
    /// such user (`phc` is `None`): false then. Runs on a hashing permit, off the async workers.
    pub async fn verify(&self, password: &str, phc: Option<String>) -> Result<bool, ApiError> {
        let password = password.to_string();
        let inner = self.0.clone();
        self.hashing(move || match phc {
            Some(phc) => verify_password(&password, &phc),
            None => {
                let decoy = inner
                    .decoy
                    .get_or_init(|| hash_password(&random_password()));
                // Same work as a real check; the answer is no whatever it says.
                std::hint::black_box(verify_password(&password, decoy));
                false
            }
        })
        .await
    }

    /// Hashes a new password on a hashing permit.
    pub async fn hash(&self, password: &str) -> Result<String, ApiError> {
        let password = password.to_string();
        self.hashing(move || hash_password(&password)).await
    }

    /// Computes the decoy hash now, so the first unknown user is not the slow one.
    pub fn warm_up(&self) {
        let inner = self.0.clone();
        tokio::task::spawn_blocking(move || {
            inner
                .decoy
                .get_or_init(|| hash_password(&random_password()));
        });
    }

    async fn hashing<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let wait = self.0.limits.hash_wait;
        let _permit = tokio::time::timeout(wait, self.0.hashes.acquire())
            .await
            .map_err(|_| ApiError::Unavailable("too many password checks at once".into()))?
            .map_err(|_| ApiError::Internal("hashing permits closed".into()))?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))
    }
}

fn too_many(message: &str, wait: Duration) -> ApiError {
    ApiError::TooManyRequests {
        message: message.into(),
        retry_after_secs: wait.as_secs() + 1,
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn random_password() -> String {
    crate::credentials::random_hex(16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_address_is_stopped_before_its_target_user_is() {
        let g = LoginGuard::new(LoginLimits {
            address_burst: 3,
            user_burst: 5,
            ..LoginLimits::default()
        });
        for _ in 0..3 {
            g.begin(ip("198.51.100.1"), "admin").unwrap();
        }
        let Err(ApiError::TooManyRequests {
            retry_after_secs, ..
        }) = g.begin(ip("198.51.100.1"), "admin")
        else {
            panic!("the fourth attempt from one address is throttled");
        };
        // One attempt is earned back every 6 s at 10 per minute.
        assert!((1..=7).contains(&retry_after_secs), "{retry_after_secs}");
        // The real admin, elsewhere: the user's bucket still has room.
        g.begin(ip("203.0.113.5"), "Admin").unwrap().succeeded();
        // Spread over addresses, the user's own bucket stops the guesses.
        // (5 in its bucket, 3 taken by the first address, the success given back.)
        g.begin(ip("203.0.113.6"), "admin").unwrap();
        g.begin(ip("203.0.113.7"), "admin").unwrap();
        assert!(g.begin(ip("203.0.113.9"), "admin").is_err());
        // A successful attempt gives its tokens back; others' users are not affected.
        g.begin(ip("203.0.113.8"), "someone").unwrap();
    }

    #[test]
    fn buckets_refill_over_time() {
        let b: Buckets<u8> = Buckets::new(1, 60);
        let t0 = Instant::now();
        b.take(&1, t0).unwrap();
        let wait = b.take(&1, t0).unwrap_err();
        assert!(wait <= Duration::from_secs(1));
        b.take(&1, t0 + Duration::from_millis(1001)).unwrap();
    }

    #[tokio::test]
    async fn unknown_users_cost_a_hash_and_never_pass() {
        let g = LoginGuard::default();
        let phc = g.hash("correct horse").await.unwrap();
        assert!(g.verify("correct horse", Some(phc.clone())).await.unwrap());
        assert!(!g.verify("wrong", Some(phc)).await.unwrap());
        assert!(!g.verify("correct horse", None).await.unwrap());
        assert!(
            g.0.decoy.get().is_some(),
            "the decoy was hashed and verified"
        );
    }

    #[tokio::test]
    async fn hashing_waits_for_a_permit_and_gives_up() {
        let g = LoginGuard::new(LoginLimits {
            concurrent_hashes: 1,
            hash_wait: Duration::from_millis(50),
            ..LoginLimits::default()
        });
        let held = g.0.hashes.acquire().await.unwrap();
        assert!(matches!(g.hash("x").await, Err(ApiError::Unavailable(_))));
        drop(held);
        g.hash("x").await.unwrap();
    }
}
