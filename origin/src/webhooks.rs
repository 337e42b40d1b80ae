//! Webhook delivery: each app's events (the replicated log, see
//! `streamhub_cluster::state::events`) POSTed, signed, to the app's endpoints.
//!
//! - **One deliverer per app.** Every origin computes the same one from the replicated registry:
//!   of the origins that are up (a heartbeat within the registry's TTL), the highest
//!   rendezvous hash of (app, node). A deliverer that dies stops heartbeating, and within the
//!   TTL the next origin in hash order takes its apps: the registry's heartbeat is the lease.
//! - **At least once, in order per endpoint.** An endpoint's task sends its next event (after
//!   its cursor, or a redelivery asked through the API), and reports the attempt through Raft
//!   before it goes on; a 2xx moves the cursor. A failed attempt is retried with the
//!   workspace's backoff ([`Backoff`], [`RETRY_BASE`] to [`RETRY_CAP`], resumed from the attempts
//!   the state counts, so a new deliverer keeps the schedule) until the event is [`MAX_AGE`] old,
//!   then marked failed. Each endpoint has its own task: one that fails never holds another up.
//!   A deliverer that dies between the receiver's 2xx and its report makes the next deliverer
//!   send that event again (the receiver deduplicates on `X-StreamHub-Delivery`).
//! - **No way into the cluster.** Requests have timeouts, follow no redirect, and reach no
//!   loopback, private, link-local or cluster-node address unless the operator allows it
//!   (`--webhook-allow-private`): literal addresses are checked, and names are resolved by
//!   [`Guard`] itself, which drops such addresses, so a name that changes its answer after
//!   the check (DNS rebinding) cannot slip through.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use streamhub_cluster::backoff::Backoff;
use streamhub_cluster::registry;
use streamhub_cluster::state::{Attempt, ClusterState, Command, DeliveryStatus, Event, NodeRole};
use streamhub_shared::AppName;
use tokio_util::sync::CancellationToken;

use crate::credentials::unix_now_ms;
use crate::tenants::Tenants;

/// Past this age an event that could not be delivered is marked failed.
pub const MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// The first retry comes this long after a failed attempt; each next one twice as late.
pub const RETRY_BASE: Duration = Duration::from_secs(1);
/// Retries come at least this often.
pub const RETRY_CAP: Duration = Duration::from_secs(60);
/// A delivery's whole request (connect, send, answer's head).
pub const TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest webhook URL.
pub const MAX_URL_LEN: usize = 2048;

/// The `X-StreamHub-Signature` value of `body` sent at `t` (Unix seconds): `t=<t>` and one
/// `v1=<hex HMAC-SHA256(secret, "<t>.<body>")>` per secret.
pub fn signature(secrets: &[String], t: u64, body: &[u8]) -> String {
    let mut out = format!("t={t}");
    for secret in secrets {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
        mac.update(t.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        out.push_str(",v1=");
        out.push_str(&hex::encode(mac.finalize().into_bytes()));
    }
    out
}

/// Whether `ip` is an address on the public internet (not loopback, private, link-local,
/// shared, reserved, documentation, multicast or unspecified).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_unspecified()
                || v4.is_multicast()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            // Global unicast only (2000::/3), without the ranges that tunnel to IPv4 or are
            // documentation: Teredo 2001::/32, 6to4 2002::/16, 2001:db8::/32. Everything else
            // (NAT64 64:ff9b::/96, site-local, unique local, link-local, mapped forms) is not.
            let s = v6.segments();
            (s[0] & 0xe000) == 0x2000
                && !(s[0] == 0x2001 && s[1] == 0)
                && s[0] != 0x2002
                && !(s[0] == 0x2001 && s[1] == 0x0db8)
        }
    }
}

/// Decides where webhooks may go.
pub struct Guard {
    allow_private: bool,
    tenants: Tenants,
}

impl Guard {
    pub fn new(tenants: Tenants, allow_private: bool) -> Arc<Self> {
        Arc::new(Self {
            allow_private,
            tenants,
        })
    }

    /// The hosts the cluster's nodes are reached at (their HTTP, RTMP and cluster addresses).
    fn node_hosts(&self) -> Vec<String> {
        self.tenants.read(|s| {
            let mut out = Vec::new();
            for n in s.registry.nodes.values() {
                let urls = [Some(n.http_url.as_str()), n.rtmp_url.as_deref()];
                for u in urls.into_iter().flatten() {
                    if let Some(h) = url::Url::parse(u)
                        .ok()
                        .and_then(|u| u.host_str().map(str::to_string))
                    {
                        out.push(h.trim_matches(['[', ']']).to_ascii_lowercase());
                    }
                }
                if let Some((h, _)) = n.cluster_addr.rsplit_once(':') {
                    out.push(h.trim_matches(['[', ']']).to_ascii_lowercase());
                }
            }
            out
        })
    }

    /// Whether a webhook may connect to `ip`.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), String> {
        if self.allow_private {
            return Ok(());
        }
        if !is_public(ip) {
            return Err(format!(
                "{ip} is a loopback, private or reserved address (allowed only with \
                 --webhook-allow-private)"
            ));
        }
        let ip = ip.to_canonical();
        if self
            .node_hosts()
            .iter()
            .any(|h| h.parse::<IpAddr>().is_ok_and(|h| h.to_canonical() == ip))
        {
            return Err(format!("{ip} is a node of this cluster"));
        }
        Ok(())
    }

    /// Checks a webhook URL: http(s), no credentials, a host that is not loopback, private or
    /// a cluster node (unless allowed). Names are checked again, resolved, at each delivery.
    pub fn check_url(&self, raw: &str) -> Result<url::Url, String> {
        if raw.len() > MAX_URL_LEN {
            return Err(format!("url is longer than {MAX_URL_LEN} bytes"));
        }
        let url = url::Url::parse(raw).map_err(|e| format!("url: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("url must be http:// or https://".into());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("url must not carry credentials (the signature authenticates us)".into());
        }
        match url.host() {
            None => return Err("url needs a host".into()),
            Some(url::Host::Ipv4(ip)) => self.check_ip(IpAddr::V4(ip))?,
            Some(url::Host::Ipv6(ip)) => self.check_ip(IpAddr::V6(ip))?,
            Some(url::Host::Domain(name)) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                if !self.allow_private {
                    if name == "localhost" || name.ends_with(".localhost") {
                        return Err(format!(
                            "{name} is this machine (allowed only with --webhook-allow-private)"
                        ));
                    }
                    if self.node_hosts().contains(&name) {
                        return Err(format!("{name} is a node of this cluster"));
                    }
                }
            }
        }
        Ok(url)
    }
}

/// Resolves names for the webhook client, keeping only addresses [`Guard::check_ip`] allows.
struct GuardResolver(Arc<Guard>);

impl reqwest::dns::Resolve for GuardResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.0.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let any = !found.is_empty();
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| guard.check_ip(a.ip()).is_ok())
                .collect();
            if allowed.is_empty() {
                // Which internal address a name has is not the tenant's to learn.
                let why = if any {
                    "resolves only to addresses webhooks may not reach (loopback, private, \
                     reserved or a cluster node)"
                } else {
                    "has no address"
                };
                return Err(format!("{host} {why}").into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Delivery attempts this origin made, per app and outcome, for `/metrics` (apps this origin
/// delivered for since it started: bounded by the apps).
#[derive(Debug, Default)]
pub struct Stats {
    by_app: std::sync::Mutex<BTreeMap<AppName, [u64; 3]>>,
}

impl Stats {
    /// The outcomes, in the order of [`Stats::by_app`]'s arrays.
    pub const OUTCOMES: [&'static str; 3] = ["delivered", "retrying", "failed"];

    fn count(&self, app: &AppName, status: DeliveryStatus) {
        let i = match status {
            DeliveryStatus::Delivered => 0,
            DeliveryStatus::Retrying => 1,
            DeliveryStatus::Failed => 2,
        };
        let mut by_app = self.by_app.lock().unwrap_or_else(|e| e.into_inner());
        match by_app.get_mut(app) {
            Some(counts) => counts[i] += 1,
            None => {
                let mut counts = [0; 3];
                counts[i] = 1;
                by_app.insert(app.clone(), counts);
            }
        }
    }

    /// Attempts per app: delivered, retrying, failed.
    pub fn by_app(&self) -> Vec<(AppName, [u64; 3])> {
        let by_app = self.by_app.lock().unwrap_or_else(|e| e.into_inner());
        by_app.iter().map(|(a, c)| (a.clone(), *c)).collect()
    }
}

/// The webhook deliverer of this origin.
#[derive(Clone)]
pub struct Webhooks(Arc<Inner>);

struct Inner {
    tenants: Tenants,
    me: String,
    client: reqwest::Client,
    guard: Arc<Guard>,
    running: Mutex<HashMap<(AppName, String), CancellationToken>>,
    stats: Arc<Stats>,
}

/// The origin that delivers `app`'s webhooks at `now_ms`.
pub fn deliverer_of(s: &ClusterState, app: &AppName, now_ms: u64) -> Option<String> {
    s.registry
        .nodes
        .values()
        .filter(|n| n.role == NodeRole::Origin && registry::is_up(n, now_ms))
        .max_by_key(|n| {
            let h = Sha256::new()
                .chain_update(app.as_str())
                .chain_update([0])
                .chain_update(&n.name)
                .finalize();
            u64::from_be_bytes(h[..8].try_into().expect("8 bytes"))
        })
        .map(|n| n.name.clone())
}

/// What an endpoint's task does next.
enum Next {
    Gone,
    Idle,
    Wait(u64),
    Send {
        event: Box<Event>,
        redelivery: bool,
        url: String,
        secrets: Result<Vec<String>, String>,
        attempts: u32,
    },
}

impl Webhooks {
    pub fn new(tenants: Tenants, me: String, allow_private: bool) -> anyhow::Result<Self> {
        let guard = Guard::new(tenants.clone(), allow_private);
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would resolve the target itself, past the guard's resolver.
            .no_proxy()
            .dns_resolver(Arc::new(GuardResolver(guard.clone())))
            .user_agent(concat!("streamhub-webhooks/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(4)
            .build()?;
        Ok(Self(Arc::new(Inner {
            tenants,
            me,
            client,
            guard,
            running: Mutex::new(HashMap::new()),
            stats: Arc::default(),
        })))
    }

    pub fn guard(&self) -> &Guard {
        &self.0.guard
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.0.stats.clone()
    }

    /// Starts and stops endpoint tasks as this origin becomes or stops being the deliverer of
    /// apps, and as endpoints come and go.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Each app's overflow count as last seen, to log it as it grows.
        let mut dropped_seen: HashMap<AppName, u64> = HashMap::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let now = unix_now_ms();
            let me = &self.0.me;
            let mine: Vec<(AppName, String)> = self.0.tenants.read(|s| {
                s.events
                    .apps
                    .iter()
                    .filter(|(app, a)| {
                        a.webhooks.values().any(|w| w.enabled)
                            && deliverer_of(s, app, now).as_deref() == Some(me.as_str())
                    })
                    .flat_map(|(app, a)| {
                        a.webhooks
                            .values()
                            .filter(|w| w.enabled)
                            .map(|w| (app.clone(), w.id.clone()))
                    })
                    .collect()
            });
            // The overflow of the apps this origin delivers, said once per origin (the counter
            // is in `/metrics` on every origin).
            let dropped: Vec<(AppName, u64)> = self.0.tenants.read(|s| {
                s.events
                    .apps
                    .iter()
                    .filter(|(app, a)| {
                        a.dropped > 0 && deliverer_of(s, app, now).as_deref() == Some(me.as_str())
                    })
                    .map(|(app, a)| (app.clone(), a.dropped))
                    .collect()
            });
            for (app, n) in dropped {
                let seen = dropped_seen.entry(app.clone()).or_insert(0);
                if n > *seen {
                    tracing::warn!(%app, dropped = n, new = n - *seen,
                        "webhook events dropped: the app's event log overflowed before its endpoints took them");
                    *seen = n;
                }
            }
            let mut running = self.0.running.lock().unwrap_or_else(|e| e.into_inner());
            running.retain(|k, stop| {
                let keep = mine.contains(k) && !stop.is_cancelled();
                if !keep {
                    stop.cancel();
                }
                keep
            });
            for key in mine {
                if running.contains_key(&key) {
                    continue;
                }
                tracing::info!(app = %key.0, webhook = %key.1, "delivering webhook events");
                let stop = shutdown.child_token();
                running.insert(key.clone(), stop.clone());
                tokio::spawn(self.clone().endpoint(key.0, key.1, stop));
            }
        }
        let running = self.0.running.lock().unwrap_or_else(|e| e.into_inner());
        for stop in running.values() {
            stop.cancel();
        }
    }

    fn next(&self, app: &AppName, id: &str, now_ms: u64) -> Next {
        let tenants = &self.0.tenants;
        let found = tenants.read(|s| {
            let a = s.events.app(app)?;
            let w = a.webhooks.get(id).filter(|w| w.enabled)?;
            let redelivery = w
                .redeliver
                .first()
                .and_then(|n| a.log.iter().find(|e| e.n == *n));
            let (event, redelivery) = match redelivery {
                Some(e) => (Some(e.clone()), true),
                None => (
                    a.log
                        .iter()
                        .find(|e| e.n > w.cursor && w.wants(&e.kind))
                        .cloned(),
                    false,
                ),
            };
            let last = event
                .as_ref()
                .and_then(|e| w.deliveries.iter().rev().find(|d| d.n == e.n));
            let (attempts, wait) = match last {
                // A retry not due yet (perhaps planned by the previous deliverer).
                Some(d) if d.status == DeliveryStatus::Retrying => {
                    (d.attempts, d.next_attempt_at_ms.filter(|t| *t > now_ms))
                }
                // A redelivery of an event delivered (or failed) before: attempts go on.
                Some(d) => (d.attempts, None),
                None => (0, None),
            };
            Some((event, redelivery, w.clone(), attempts, wait))
        });
        let Some((event, redelivery, w, attempts, wait)) = found else {
            return Next::Gone;
        };
        let Some(event) = event else {
            return Next::Idle;
        };
        if let Some(at) = wait {
            return Next::Wait(at);
        }
        Next::Send {
            event: Box::new(event),
            redelivery,
            url: w.url.clone(),
            secrets: tenants
                .webhook_secrets(&w, now_ms)
                .map_err(|e| format!("cannot open the signing secret: {e}")),
            attempts,
        }
    }

    async fn endpoint(self, app: AppName, id: String, stop: CancellationToken) {
        let mut changes = self.0.tenants.raft().raft().metrics();
        while !stop.is_cancelled() {
            let now = unix_now_ms();
            match self.next(&app, &id, now) {
                Next::Gone => break,
                Next::Idle => {
                    // The next applied entry may hold an event.
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        changed = changes.changed() => {
                            if changed.is_err() {
                                // Raft is shutting down.
                                break;
                            }
                        }
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
                Next::Wait(at) => {
                    let d = Duration::from_millis(at.saturating_sub(now).min(1_000));
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(d) => {}
                    }
                }
                Next::Send {
                    event,
                    redelivery,
                    url,
                    secrets,
                    attempts,
                } => {
                    let attempt = self
                        .deliver(&event, redelivery, &url, secrets, attempts)
                        .await;
                    let retry_at = attempt.next_attempt_at_ms;
                    self.report(&app, &id, attempt, &stop).await;
                    if let Some(at) = retry_at {
                        let d = Duration::from_millis(at.saturating_sub(unix_now_ms()));
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = tokio::time::sleep(d) => {}
                        }
                    }
                }
            }
        }
        stop.cancel();
    }

    /// Sends one event; the attempt to report.
    async fn deliver(
        &self,
        event: &Event,
        redelivery: bool,
        url: &str,
        secrets: Result<Vec<String>, String>,
        attempts: u32,
    ) -> Attempt {
        let started = Instant::now();
        let result = match secrets {
            Err(e) => Err(e),
            Ok(secrets) => self.post(event, url, &secrets).await,
        };
        let latency_ms = Some(started.elapsed().as_millis() as u64);
        let now = unix_now_ms();
        let (status, http_status, error) = match result {
            Ok(code) if (200..300).contains(&code) => (DeliveryStatus::Delivered, Some(code), None),
            Ok(code) => (
                DeliveryStatus::Retrying,
                Some(code),
                Some(format!("answered {code}")),
            ),
            Err(e) => (DeliveryStatus::Retrying, None, Some(e)),
        };
        let too_old = now.saturating_sub(event.created_at_ms) >= MAX_AGE.as_millis() as u64;
        let status = match status {
            DeliveryStatus::Retrying if too_old => DeliveryStatus::Failed,
            s => s,
        };
        self.0.stats.count(&event.app, status);
        let next_attempt_at_ms = (status == DeliveryStatus::Retrying).then(|| {
            let delay = Backoff::after(RETRY_BASE, RETRY_CAP, attempts).next_random_delay();
            now + delay.as_millis() as u64
        });
        if let Some(e) = &error {
            tracing::debug!(event = %event.id(), url, error = %e, ?status, "webhook delivery failed");
        }
        Attempt {
            n: event.n,
            status,
            http_status,
            latency_ms,
            error,
            next_attempt_at_ms,
            at_ms: now,
            node: self.0.me.clone(),
            redelivery,
        }
    }

    /// POSTs `event` to `url`, signed; the answer's status code.
    async fn post(&self, event: &Event, url: &str, secrets: &[String]) -> Result<u16, String> {
        let url = match url::Url::parse(url) {
            Ok(u) => u,
            Err(e) => return Err(format!("url: {e}")),
        };
        // Literal addresses do not go through the resolver: check them here.
        match url.host() {
            Some(url::Host::Ipv4(ip)) => self.0.guard.check_ip(IpAddr::V4(ip))?,
            Some(url::Host::Ipv6(ip)) => self.0.guard.check_ip(IpAddr::V6(ip))?,
            _ => {}
        }
        let body = serde_json::to_vec(&event.body()).map_err(|e| e.to_string())?;
        let t = unix_now_ms() / 1000;
        let response = self
            .0
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("x-streamhub-signature", signature(secrets, t, &body))
            .header("x-streamhub-event", &event.kind)
            .header("x-streamhub-delivery", event.id())
            .body(body)
            .send()
            .await
            .map_err(|e| error_chain(&e))?;
        Ok(response.status().as_u16())
    }

    /// Reports an attempt through Raft, retrying until it is written or the task stops.
    async fn report(&self, app: &AppName, id: &str, attempt: Attempt, stop: &CancellationToken) {
        let cmd = Command::WebhookAttempt {
            app: app.clone(),
            id: id.to_string(),
            attempt,
        };
        let mut delay = Duration::from_millis(200);
        loop {
            match self.0.tenants.write_answer(cmd.clone()).await {
                Ok(_) => return,
                // The event left the log, or the endpoint was deleted: nothing to record.
                Err(
                    e @ (crate::tenants::WriteError::NotFound(_)
                    | crate::tenants::WriteError::Exists(_)
                    | crate::tenants::WriteError::Refused(_)
                    | crate::tenants::WriteError::Unexpected(_)),
                ) => {
                    tracing::info!(%app, webhook = id, error = %e, "webhook attempt not recorded");
                    return;
                }
                Err(e) => {
                    tracing::warn!(%app, webhook = id, error = %e, "cannot record a webhook attempt; retrying");
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}

/// An error with its causes (reqwest's own message hides why a connection failed).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_t_dot_body_per_secret() {
        // The documented scheme, computed apart from `signature`.
        let sig = signature(&["whsec_a".into()], 1_700_000_000, b"{}");
        let mut mac = Hmac::<Sha256>::new_from_slice(b"whsec_a").unwrap();
        mac.update(b"1700000000.{}");
        let want = hex::encode(mac.finalize().into_bytes());
        assert_eq!(sig, format!("t=1700000000,v1={want}"));
        let two = signature(&["a".into(), "b".into()], 1, b"x");
        assert_eq!(two.matches(",v1=").count(), 2, "{two}");
    }

    #[test]
    fn private_and_reserved_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2002:a00:1::1",
            "2001:0:4136:e378::1",
            "fec0::1",
            "2001:db8::1",
            "::ffff:0:a00:1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["1.1.1.1", "8.8.8.8", "2606:4700:4700::1111"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }
}
