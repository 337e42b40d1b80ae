//! Viewer steering: which node of the registry a viewer should play from.
//!
//! Plain code with no sockets and no clock: the caller passes the registry's nodes, the client's
//! region and `now_ms`, and gets back a node and the [`Reason`] it was chosen.
//!
//! # Rules, in order
//!
//! 1. Only healthy nodes count: a node is healthy while `now_ms - last_heartbeat_ms` is below
//!    [`SteeringPolicy::node_ttl_ms`]. A heartbeat exactly `node_ttl_ms` old has expired, as a
//!    placement lease does in [`crate::state`]. A heartbeat stamped after `now_ms` (another
//!    origin's clock runs ahead) counts as fresh. Nor does a node whose last heartbeat is
//!    [`SteeringPolicy::behind_ms`] or more older than the newest heartbeat of any node: a dead
//!    edge stops being chosen within a few seconds (five missed beats), while a slow Raft commit,
//!    which delays every node's beat alike, leaves out no one. Nor does a draining node
//!    ([`NodeRecord::draining_since_ms`]): it keeps its viewers and gets no new one.
//! 2. With [`SteeringPolicy::prefer_edges`], healthy edges are the only candidates while there is
//!    one; healthy origins serve viewers only as the last resort.
//! 3. Within the candidates, the client's region first; then the least loaded.
//!
//! # Least loaded, without flapping
//!
//! Viewers steered in the same second see the same (slightly stale) heartbeat loads, so a strict
//! "lowest number wins" would send whole bursts back and forth between two equal edges as their
//! counts cross by one. Instead each load dimension is compared with a band around the best value,
//! one dimension after the other:
//!
//! - viewers: every candidate within `max(2, 5%)` of the fewest viewers stays in;
//! - egress: of those, every candidate within `max(1 Mbit/s, 5%)` of the lowest egress stays in;
//! - CPU: of those, every candidate within 5 percentage points of the lowest CPU stays in;
//! - the lowest name (then id) among the remaining ones wins.
//!
//! So two edges whose loads differ by noise always resolve to the same one (the lower name), and
//! the choice moves only when the load difference leaves the band. Each step keeps a set that
//! depends only on the input set, never on its order, so the result is deterministic. (A pairwise
//! "equal within tolerance" comparator would not be a total order and could not be sorted on.)

use crate::state::{NodeRecord, NodeRole};

/// Viewer counts within this many viewers of the fewest are treated as equal (at least).
const VIEWER_BAND_MIN: u64 = 2;
/// Viewer counts within this percentage of the fewest are treated as equal (at least).
const VIEWER_BAND_PERCENT: u64 = 5;
/// Egress within this many bit/s of the lowest is treated as equal (at least): below one viewer's
/// worth of video, so it only absorbs noise.
const EGRESS_BAND_MIN_BPS: u64 = 1_000_000;
/// Egress within this percentage of the lowest is treated as equal (at least).
const EGRESS_BAND_PERCENT: u64 = 5;
/// CPU use within this many percentage points (of one core) of the lowest is treated as equal.
const CPU_BAND_POINTS: f32 = 5.0;

/// How far behind the newest heartbeat a node's may be and still be steered to: five missed
/// beats of [`super::HEARTBEAT_EVERY`].
pub const STEER_BEHIND_MS: u64 = 2_500;

/// Longest accepted region name.
const REGION_MAX_LEN: usize = 32;

/// How viewers are steered to nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SteeringPolicy {
    /// A node whose last heartbeat is this old (or older) is not steered to.
    pub node_ttl_ms: u64,
    /// A node whose last heartbeat is this much (or more) older than the newest of any node
    /// is not steered to.
    pub behind_ms: u64,
    /// Send viewers to edges while any edge is healthy, keeping origins as the last resort; when
    /// off, origins and edges compete on region and load alike.
    pub prefer_edges: bool,
}

impl Default for SteeringPolicy {
    fn default() -> Self {
        Self {
            node_ttl_ms: super::NODE_TTL_MS,
            behind_ms: STEER_BEHIND_MS,
            prefer_edges: true,
        }
    }
}

/// Why a node was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A healthy edge in the client's region.
    SameRegionEdge,
    /// A healthy edge elsewhere: the client's region has none, or the client's region is unknown.
    OtherRegionEdge,
    /// An origin, because no edge is healthy.
    OriginFallback,
    /// An origin that outranked the healthy edges on region and load (only with `prefer_edges`
    /// off).
    OriginByLoad,
}

impl Reason {
    /// A stable name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::SameRegionEdge => "same_region_edge",
            Reason::OtherRegionEdge => "other_region_edge",
            Reason::OriginFallback => "origin_fallback",
            Reason::OriginByLoad => "origin_by_load",
        }
    }
}

/// The node a viewer should play from, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice<'a> {
    /// The chosen node.
    pub node: &'a NodeRecord,
    /// Why it was chosen.
    pub reason: Reason,
}

impl SteeringPolicy {
    /// Chooses the node a viewer in `client_region` should play from at `now_ms`, or `None` when
    /// no node is healthy. The order of `nodes` does not matter.
    pub fn choose<'a>(
        &self,
        nodes: impl IntoIterator<Item = &'a NodeRecord>,
        client_region: Option<&str>,
        now_ms: u64,
    ) -> Option<Choice<'a>> {
        let nodes: Vec<&NodeRecord> = nodes.into_iter().collect();
        let newest = nodes.iter().map(|n| n.last_heartbeat_ms).max().unwrap_or(0);
        let healthy: Vec<&NodeRecord> = nodes
            .into_iter()
            .filter(|n| self.is_healthy(n, now_ms))
            .filter(|n| newest.saturating_sub(n.last_heartbeat_ms) < self.behind_ms)
            // A draining node serves the viewers it has and gets no new one.
            .filter(|n| n.draining_since_ms.is_none())
            .collect();
        let any_edge = healthy.iter().any(|n| n.role == NodeRole::Edge);
        let pool: Vec<&NodeRecord> = if self.prefer_edges && any_edge {
            healthy
                .into_iter()
                .filter(|n| n.role == NodeRole::Edge)
                .collect()
        } else {
            healthy
        };
        let in_region = |n: &&NodeRecord| client_region == Some(n.region.as_str());
        let local: Vec<&NodeRecord> = pool.iter().copied().filter(in_region).collect();
        let same_region = !local.is_empty();
        let node = least_loaded(if same_region { local } else { pool })?;
        let reason = match node.role {
            NodeRole::Edge if same_region => Reason::SameRegionEdge,
            NodeRole::Edge => Reason::OtherRegionEdge,
            NodeRole::Origin if any_edge => Reason::OriginByLoad,
            NodeRole::Origin => Reason::OriginFallback,
        };
        Some(Choice { node, reason })
    }

    /// Whether `node` has sent a heartbeat within the last `node_ttl_ms` before `now_ms`.
    pub fn is_healthy(&self, node: &NodeRecord, now_ms: u64) -> bool {
        super::is_up_within(node, now_ms, self.node_ttl_ms)
    }
}

/// The least loaded of `cands`, with the hysteresis bands described in the module docs.
fn least_loaded(mut cands: Vec<&NodeRecord>) -> Option<&NodeRecord> {
    let viewers = cands.iter().map(|n| n.load.viewers).min()?;
    let band = (u64::from(viewers) * VIEWER_BAND_PERCENT / 100).max(VIEWER_BAND_MIN);
    cands.retain(|n| u64::from(n.load.viewers) <= u64::from(viewers) + band);

    let egress = cands.iter().map(|n| n.load.egress_bps).min()?;
    let band = (egress / 100 * EGRESS_BAND_PERCENT).max(EGRESS_BAND_MIN_BPS);
    cands.retain(|n| n.load.egress_bps <= egress.saturating_add(band));

    let cpu = cands.iter().map(|n| cpu_load(n)).min_by(f32::total_cmp)?;
    cands.retain(|n| cpu_load(n) <= cpu + CPU_BAND_POINTS);

    cands
        .into_iter()
        .min_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)))
}

/// The node's CPU use, with an unknown (NaN) value ranked as the busiest.
fn cpu_load(node: &NodeRecord) -> f32 {
    let cpu = node.load.cpu;
    if cpu.is_nan() {
        f32::INFINITY
    } else {
        cpu.max(0.0)
    }
}

/// The region to steer a client from: a valid `?region=` query value, else a valid value of the
/// configured region header, else the region of the node answering.
///
/// `query` is the decoded value of the `region` query parameter; invalid values (see
/// [`is_valid_region`]) are ignored rather than refused, so a bad hint only loses its preference.
pub fn client_region(query: Option<&str>, header: Option<&str>, node_region: &str) -> String {
    [query, header]
        .into_iter()
        .flatten()
        .find(|r| is_valid_region(r))
        .unwrap_or(node_region)
        .to_string()
}

/// Whether `region` is a region name: 1 to 32 characters of `a-z`, `0-9` and `-`.
pub fn is_valid_region(region: &str) -> bool {
    (1..=REGION_MAX_LEN).contains(&region.len())
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::NodeLoad;

    const NOW: u64 = 1_000_000;

    fn node(name: &str, role: NodeRole, region: &str, viewers: u32) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            id: name.bytes().map(u64::from).sum(),
            role,
            region: region.into(),
            http_url: format!("http://{name}"),
            rtmp_url: None,
            cluster_addr: format!("{name}:4433"),
            version: "0".into(),
            load: NodeLoad {
                viewers,
                ..NodeLoad::default()
            },
            registered_at_ms: 0,
            last_heartbeat_ms: NOW,
            cert_fingerprint: None,
            draining_since_ms: None,
            boot: 0,
            draining_boot: 0,
        }
    }

    fn edge(name: &str, region: &str, viewers: u32) -> NodeRecord {
        node(name, NodeRole::Edge, region, viewers)
    }

    fn origin(name: &str, region: &str, viewers: u32) -> NodeRecord {
        node(name, NodeRole::Origin, region, viewers)
    }

    fn aged(mut n: NodeRecord, age_ms: u64) -> NodeRecord {
        n.last_heartbeat_ms = NOW - age_ms;
        n
    }

    /// The chosen node's name and the reason, for compact assertions.
    fn pick(nodes: &[NodeRecord], region: Option<&str>) -> Option<(String, Reason)> {
        pick_with(SteeringPolicy::default(), nodes, region)
    }

    fn pick_with(
        policy: SteeringPolicy,
        nodes: &[NodeRecord],
        region: Option<&str>,
    ) -> Option<(String, Reason)> {
        policy
            .choose(nodes, region, NOW)
            .map(|c| (c.node.name.clone(), c.reason))
    }

    fn picked(name: &str, reason: Reason) -> Option<(String, Reason)> {
        Some((name.into(), reason))
    }

    #[test]
    fn default_policy() {
        let p = SteeringPolicy::default();
        assert_eq!(p.node_ttl_ms, 10_000);
        assert!(p.prefer_edges);
    }

    #[test]
    fn a_node_behind_the_others_beats_is_left_out_within_seconds() {
        // An edge that stopped beating 2.5 s before the others: left out.
        let nodes = [aged(edge("dead", "eu", 0), 2_500), edge("live", "us", 500)];
        assert_eq!(
            pick(&nodes, Some("eu")),
            picked("live", Reason::OtherRegionEdge)
        );
        let nodes = [aged(edge("late", "eu", 0), 2_499), edge("live", "us", 500)];
        assert_eq!(
            pick(&nodes, Some("eu")),
            picked("late", Reason::SameRegionEdge)
        );
        // Everyone's beats late alike (a slow commit): nobody is left out.
        let nodes = [
            aged(edge("a", "eu", 0), 6_000),
            aged(edge("b", "us", 0), 5_800),
        ];
        assert_eq!(
            pick(&nodes, Some("eu")),
            picked("a", Reason::SameRegionEdge)
        );
    }

    #[test]
    fn stale_nodes_are_excluded_at_and_past_the_ttl() {
        let p = SteeringPolicy {
            behind_ms: u64::MAX,
            ..SteeringPolicy::default()
        };
        let fresh = edge("e", "eu", 0);
        assert!(p.is_healthy(&aged(fresh.clone(), 0), NOW));
        assert!(p.is_healthy(&aged(fresh.clone(), 9_999), NOW));
        assert!(!p.is_healthy(&aged(fresh.clone(), 10_000), NOW), "boundary");
        assert!(!p.is_healthy(&aged(fresh, 10_001), NOW));

        // The idle local edge is at the boundary, so the busy remote one is chosen.
        let nodes = [aged(edge("idle", "eu", 0), 10_000), edge("busy", "us", 500)];
        assert_eq!(
            pick_with(p, &nodes, Some("eu")),
            picked("busy", Reason::OtherRegionEdge)
        );
        let nodes = [aged(edge("idle", "eu", 0), 9_999), edge("busy", "us", 500)];
        assert_eq!(
            pick_with(p, &nodes, Some("eu")),
            picked("idle", Reason::SameRegionEdge)
        );
    }

    #[test]
    fn heartbeat_ahead_of_now_counts_as_fresh() {
        let mut n = edge("e", "eu", 0);
        n.last_heartbeat_ms = NOW + 5_000;
        assert!(SteeringPolicy::default().is_healthy(&n, NOW));
    }

    #[test]
    fn ttl_follows_the_policy() {
        let p = SteeringPolicy {
            node_ttl_ms: 3_000,
            behind_ms: u64::MAX,
            prefer_edges: true,
        };
        let nodes = [
            aged(edge("a", "eu", 0), 3_000),
            aged(edge("b", "eu", 9), 2_999),
        ];
        assert_eq!(
            pick_with(p, &nodes, Some("eu")),
            picked("b", Reason::SameRegionEdge)
        );
    }

    #[test]
    fn same_region_beats_a_less_loaded_other_region() {
        let nodes = [edge("us-1", "us", 0), edge("eu-1", "eu", 900)];
        assert_eq!(
            pick(&nodes, Some("eu")),
            picked("eu-1", Reason::SameRegionEdge)
        );
    }

    #[test]
    fn other_region_edge_when_the_region_has_none_or_is_unknown() {
        let nodes = [edge("us-1", "us", 40), edge("ap-1", "ap", 10)];
        assert_eq!(
            pick(&nodes, Some("eu")),
            picked("ap-1", Reason::OtherRegionEdge)
        );
        assert_eq!(pick(&nodes, None), picked("ap-1", Reason::OtherRegionEdge));
    }

    #[test]
    fn least_loaded_within_the_region_by_viewers() {
        let nodes = [
            edge("eu-1", "eu", 300),
            edge("eu-2", "eu", 100),
            edge("eu-3", "eu", 200),
            edge("us-1", "us", 0),
        ];
        assert_eq!(
            pick(&nodes, Some("eu")),
            picked("eu-2", Reason::SameRegionEdge)
        );
    }

    #[test]
    fn equal_viewers_fall_through_to_egress_then_cpu_then_name() {
        let mut a = edge("a", "eu", 100);
        let mut b = edge("b", "eu", 100);
        a.load.egress_bps = 400_000_000;
        b.load.egress_bps = 200_000_000;
        assert_eq!(
            pick(&[a.clone(), b.clone()], Some("eu")),
            picked("b", Reason::SameRegionEdge)
        );

        b.load.egress_bps = a.load.egress_bps;
        a.load.cpu = 80.0;
        b.load.cpu = 20.0;
        assert_eq!(
            pick(&[a.clone(), b.clone()], Some("eu")),
            picked("b", Reason::SameRegionEdge)
        );

        b.load.cpu = a.load.cpu;
        assert_eq!(
            pick(&[b, a], Some("eu")),
            picked("a", Reason::SameRegionEdge)
        );
    }

    #[test]
    fn a_draining_node_gets_no_new_viewer() {
        let mut a = edge("a", "eu", 0);
        a.draining_since_ms = Some(NOW - 1);
        let b = edge("b", "eu", 50);
        let origin = node("o", NodeRole::Origin, "eu", 0);
        assert_eq!(
            pick(&[a.clone(), b, origin.clone()], Some("eu")),
            picked("b", Reason::SameRegionEdge)
        );
        // The last edge drains: the origins serve.
        assert_eq!(
            pick(&[a, origin], Some("eu")),
            picked("o", Reason::OriginFallback)
        );
    }

    #[test]
    fn viewers_outrank_egress_and_cpu() {
        let mut few = edge("z-few", "eu", 10);
        few.load.egress_bps = 900_000_000;
        few.load.cpu = 90.0;
        let many = edge("a-many", "eu", 500);
        assert_eq!(
            pick(&[many, few], Some("eu")),
            picked("z-few", Reason::SameRegionEdge)
        );
    }

    #[test]
    fn unknown_cpu_ranks_as_busiest() {
        let mut a = edge("a", "eu", 0);
        a.load.cpu = f32::NAN;
        let mut b = edge("b", "eu", 0);
        b.load.cpu = 95.0;
        assert_eq!(
            pick(&[a, b], Some("eu")),
            picked("b", Reason::SameRegionEdge)
        );
    }

    #[test]
    fn hysteresis_keeps_the_stable_choice_under_noise() {
        // Small counts: within 2 viewers is equal, so the lower name keeps the viewers.
        for (a, b) in [(10, 10), (11, 10), (12, 10), (10, 12), (9, 11)] {
            let nodes = [edge("a", "eu", a), edge("b", "eu", b)];
            assert_eq!(
                pick(&nodes, Some("eu")),
                picked("a", Reason::SameRegionEdge),
                "a={a} b={b}"
            );
        }
        // Large counts: within 5% is equal.
        for (a, b) in [(1_000, 1_000), (1_050, 1_000), (1_000, 1_050), (63, 60)] {
            let nodes = [edge("a", "eu", a), edge("b", "eu", b)];
            assert_eq!(pick(&nodes, Some("eu")).unwrap().0, "a", "a={a} b={b}");
        }
        // Noise in egress and CPU does not move it either.
        let (mut a, mut b) = (edge("a", "eu", 10), edge("b", "eu", 10));
        a.load.egress_bps = 100_900_000;
        b.load.egress_bps = 96_500_000;
        a.load.cpu = 42.0;
        b.load.cpu = 38.0;
        assert_eq!(pick(&[b, a], Some("eu")).unwrap().0, "a");
    }

    #[test]
    fn hysteresis_lets_go_once_the_difference_is_real() {
        let nodes = [edge("a", "eu", 13), edge("b", "eu", 10)];
        assert_eq!(pick(&nodes, Some("eu")).unwrap().0, "b");
        let nodes = [edge("a", "eu", 1_051), edge("b", "eu", 1_000)];
        assert_eq!(pick(&nodes, Some("eu")).unwrap().0, "b");
        let nodes = [edge("a", "eu", 64), edge("b", "eu", 60)];
        assert_eq!(pick(&nodes, Some("eu")).unwrap().0, "b");

        let (mut a, mut b) = (edge("a", "eu", 10), edge("b", "eu", 10));
        a.load.egress_bps = 106_000_000;
        b.load.egress_bps = 100_000_000;
        assert_eq!(pick(&[a.clone(), b.clone()], Some("eu")).unwrap().0, "b");
        b.load.egress_bps = a.load.egress_bps;
        a.load.cpu = 45.1;
        b.load.cpu = 40.0;
        assert_eq!(pick(&[a, b], Some("eu")).unwrap().0, "b");
    }

    #[test]
    fn origin_only_when_no_edge_is_healthy() {
        let nodes = [
            origin("o-eu", "eu", 0),
            aged(edge("e-eu", "eu", 0), 10_000),
            edge("e-us", "us", 5_000),
        ];
        assert_eq!(
            pick(&nodes, Some("eu")),
            picked("e-us", Reason::OtherRegionEdge),
            "a busy remote edge beats an idle local origin"
        );
        let nodes = [
            origin("o-eu", "eu", 50),
            origin("o-us", "us", 0),
            aged(edge("e-eu", "eu", 0), 10_000),
            aged(edge("e-us", "us", 0), 20_000),
        ];
        assert_eq!(
            pick(&nodes, Some("eu")),
            picked("o-eu", Reason::OriginFallback)
        );
        assert_eq!(
            pick(&nodes, Some("ap")),
            picked("o-us", Reason::OriginFallback),
            "least loaded origin when none is in the region"
        );
    }

    #[test]
    fn without_prefer_edges_origins_compete_on_region_and_load() {
        let p = SteeringPolicy {
            prefer_edges: false,
            ..SteeringPolicy::default()
        };
        let nodes = [origin("o-eu", "eu", 5), edge("e-eu", "eu", 500)];
        assert_eq!(
            pick_with(p, &nodes, Some("eu")),
            picked("o-eu", Reason::OriginByLoad)
        );
        let nodes = [origin("o-us", "us", 5), edge("e-eu", "eu", 500)];
        assert_eq!(
            pick_with(p, &nodes, Some("eu")),
            picked("e-eu", Reason::SameRegionEdge)
        );
        let nodes = [origin("o-us", "us", 5)];
        assert_eq!(
            pick_with(p, &nodes, Some("eu")),
            picked("o-us", Reason::OriginFallback)
        );
    }

    #[test]
    fn none_when_nothing_is_healthy() {
        assert_eq!(pick(&[], Some("eu")), None);
        let nodes = [
            aged(edge("e", "eu", 0), 10_000),
            aged(origin("o", "eu", 0), 60_000),
        ];
        assert_eq!(pick(&nodes, Some("eu")), None);
        assert_eq!(pick(&nodes, None), None);
    }

    fn permutations(items: &[NodeRecord]) -> Vec<Vec<NodeRecord>> {
        if items.len() <= 1 {
            return vec![items.to_vec()];
        }
        let mut out = Vec::new();
        for i in 0..items.len() {
            let mut rest = items.to_vec();
            let first = rest.remove(i);
            for mut tail in permutations(&rest) {
                tail.insert(0, first.clone());
                out.push(tail);
            }
        }
        out
    }

    #[test]
    fn same_nodes_in_any_order_give_the_same_choice() {
        let mut c = edge("c", "eu", 101);
        c.load.egress_bps = 50_000_000;
        let mut d = edge("d", "eu", 99);
        d.load.cpu = 70.0;
        let nodes = [
            edge("a", "eu", 103),
            edge("b", "eu", 100),
            c,
            d,
            edge("e", "eu", 98),
            edge("us", "us", 0),
        ];
        for region in [Some("eu"), Some("us"), Some("ap"), None] {
            let expected = pick(&nodes, region);
            assert!(expected.is_some());
            for order in permutations(&nodes) {
                assert_eq!(pick(&order, region), expected, "{region:?}");
            }
        }
    }

    #[test]
    fn choice_borrows_the_input_node() {
        let nodes = [edge("a", "eu", 0)];
        let choice = SteeringPolicy::default()
            .choose(nodes.iter(), Some("eu"), NOW)
            .unwrap();
        assert!(std::ptr::eq(choice.node, &nodes[0]));
        assert_eq!(choice.reason.as_str(), "same_region_edge");
    }

    #[test]
    fn client_region_precedence() {
        assert_eq!(client_region(Some("eu"), Some("us"), "ap"), "eu");
        assert_eq!(client_region(None, Some("us"), "ap"), "us");
        assert_eq!(client_region(None, None, "ap"), "ap");
    }

    #[test]
    fn client_region_ignores_invalid_values() {
        assert_eq!(client_region(Some("EU"), Some("us"), "ap"), "us");
        assert_eq!(
            client_region(Some(""), Some("us-east-1"), "ap"),
            "us-east-1"
        );
        assert_eq!(client_region(Some("eu west"), Some("us_1"), "ap"), "ap");
        assert_eq!(client_region(Some("é"), Some("../x"), "ap"), "ap");
        let longest = "a".repeat(32);
        assert_eq!(client_region(Some(&longest), None, "ap"), longest);
        assert_eq!(client_region(Some(&"a".repeat(33)), None, "ap"), "ap");
    }

    #[test]
    fn region_names() {
        for ok in ["eu", "us-east-1", "0", "-", "a".repeat(32).as_str()] {
            assert!(is_valid_region(ok), "{ok}");
        }
        for bad in [
            "",
            "EU",
            "eu_1",
            "eu.1",
            " eu",
            "eu\n",
            "ü",
            "a".repeat(33).as_str(),
        ] {
            assert!(!is_valid_region(bad), "{bad:?}");
        }
    }
}
