//! Room placement: which origin holds each live room, under a lease its heartbeats renew, with
//! an epoch that grows each time the room changes hands (the fencing token of a publish).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use streamhub_shared::{AppName, RoomName};

use super::{not_found, CommandResponse};

/// Which origin holds a live room, under a lease renewed by that origin's heartbeats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    pub app: AppName,
    pub room: RoomName,
    /// Name of the origin holding the room.
    pub node: String,
    /// Grows each time the room changes hands; a node holding an older epoch has lost the room.
    pub epoch: u64,
    pub lease_ms: u64,
    pub lease_until_ms: u64,
    pub since_ms: u64,
}

/// A holder whose lease has not been renewed for this long is declared dead by the Raft leader
/// ([`Command::ExpireHolder`](super::Command::ExpireHolder)): its rooms go free at once instead of
/// at the end of the full lease. Renewals come with every committed heartbeat batch (about every
/// [`HEARTBEAT_EVERY`](crate::registry::HEARTBEAT_EVERY)).
pub const DEAD_AFTER_MS: u64 = 2_500;

/// A holder stops sending its room's media once its lease has not been renewed (as its own
/// replica shows) for this long: before the leader may declare it dead ([`DEAD_AFTER_MS`]), so
/// a frozen or cut-off holder is silent before anyone else can take its rooms. The difference
/// bounds the clock skew the cluster tolerates between origins.
pub const SELF_FENCE_MS: u64 = 2_000;

// A holder must fall silent before it may be declared dead.
const _: () = assert!(SELF_FENCE_MS < DEAD_AFTER_MS);

impl Placement {
    /// Whether the holder's lease still runs at `now_ms` (a lease is over from exactly
    /// `lease_until_ms` on).
    pub fn is_live(&self, now_ms: u64) -> bool {
        self.lease_until_ms > now_ms
    }

    /// When the lease was last claimed or renewed (leader's clock).
    pub fn renewed_ms(&self) -> u64 {
        self.lease_until_ms.saturating_sub(self.lease_ms)
    }

    /// Whether the holder may be declared dead at `now_ms`: no renewal for [`DEAD_AFTER_MS`].
    pub fn holder_silent(&self, now_ms: u64) -> bool {
        self.renewed_ms() + DEAD_AFTER_MS <= now_ms
    }

    /// Until when (ms) the holder may send the room's media: [`SELF_FENCE_MS`] past its last
    /// renewal.
    pub fn self_fence_at_ms(&self) -> u64 {
        self.renewed_ms() + SELF_FENCE_MS
    }
}

/// Key of a room in the placement table.
pub fn room_key(app: &AppName, room: &RoomName) -> String {
    format!("{app}/{room}")
}

/// The placement part of the replicated state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Placements {
    /// Room placement, by [`room_key`].
    #[serde(default, rename = "placements")]
    pub rooms: BTreeMap<String, Placement>,
    /// Highest placement epoch ever granted: epochs never repeat, so fencing by epoch is safe.
    #[serde(default)]
    pub last_epoch: u64,
}

impl Placements {
    /// The placement of a room, if any (live or not).
    pub fn get(&self, app: &AppName, room: &RoomName) -> Option<&Placement> {
        self.rooms.get(&room_key(app, room))
    }

    /// The holder of `app/room` while its lease runs at `now_ms`.
    pub fn live(&self, app: &AppName, room: &RoomName, now_ms: u64) -> Option<&Placement> {
        self.get(app, room).filter(|p| p.is_live(now_ms))
    }

    /// `node` claims `app/room` at `at_ms`: granted if free, already its own, or the holder's
    /// lease has expired (then with a higher epoch).
    pub(super) fn claim(
        &mut self,
        app: &AppName,
        room: &RoomName,
        node: &str,
        at_ms: u64,
        lease_ms: u64,
    ) -> CommandResponse {
        let key = room_key(app, room);
        let (epoch, since_ms) = match self.rooms.get(&key) {
            Some(p) if p.node == node => (p.epoch, p.since_ms),
            Some(p) if p.is_live(at_ms) => {
                return CommandResponse::Busy {
                    node: p.node.clone(),
                    epoch: p.epoch,
                }
            }
            _ => {
                self.last_epoch += 1;
                (self.last_epoch, at_ms)
            }
        };
        self.rooms.insert(
            key,
            Placement {
                app: app.clone(),
                room: room.clone(),
                node: node.to_string(),
                epoch,
                lease_ms,
                lease_until_ms: at_ms + lease_ms,
                since_ms,
            },
        );
        CommandResponse::Claimed { epoch }
    }

    /// `node` gives up `app/room` if it still holds it at `epoch`.
    pub(super) fn release(
        &mut self,
        app: &AppName,
        room: &RoomName,
        node: &str,
        epoch: u64,
    ) -> CommandResponse {
        let key = room_key(app, room);
        match self.rooms.get(&key) {
            Some(p) if p.node == node && p.epoch == epoch => {
                self.rooms.remove(&key);
                CommandResponse::Ok
            }
            _ => not_found(format!("placement of {key} by {node}@{epoch}")),
        }
    }

    /// Renews every lease `node` holds from `at_ms` (its heartbeat was committed).
    pub(super) fn renew(&mut self, node: &str, at_ms: u64) {
        for p in self.rooms.values_mut().filter(|p| p.node == node) {
            p.lease_until_ms = p.lease_until_ms.max(at_ms + p.lease_ms);
        }
    }

    /// Removes and returns the placements whose lease is over at `at_ms`: their holder stopped
    /// renewing (dead, frozen or cut off), so the room has ended. A holder that comes back finds
    /// its placement gone and drops its publisher; a new claim starts a new epoch.
    pub(super) fn expire(&mut self, at_ms: u64) -> Vec<Placement> {
        let mut gone = Vec::new();
        self.rooms.retain(|_, p| {
            let live = p.is_live(at_ms);
            if !live {
                gone.push(p.clone());
            }
            live
        });
        gone
    }

    /// The placements [`expire`](Self::expire) would remove at `at_ms` after `renewed` nodes
    /// renewed theirs.
    pub(super) fn expiring(&self, at_ms: u64, renewed: &[&str]) -> Vec<Placement> {
        self.rooms
            .values()
            .filter(|p| !p.is_live(at_ms) && !renewed.contains(&p.node.as_str()))
            .cloned()
            .collect()
    }

    /// The placements of `node` whose holder has been silent for [`DEAD_AFTER_MS`] at `at_ms`.
    pub fn silent(&self, node: &str, at_ms: u64) -> Vec<Placement> {
        self.rooms
            .values()
            .filter(|p| p.node == node && p.holder_silent(at_ms))
            .cloned()
            .collect()
    }

    /// Nodes holding a room whose lease they have not renewed for [`DEAD_AFTER_MS`] at `at_ms`.
    pub fn silent_holders(&self, at_ms: u64) -> Vec<String> {
        let mut nodes: Vec<String> = self
            .rooms
            .values()
            .filter(|p| p.holder_silent(at_ms))
            .map(|p| p.node.clone())
            .collect();
        nodes.sort();
        nodes.dedup();
        nodes
    }

    /// Removes and returns [`silent`](Self::silent) placements of `node`: it was declared dead,
    /// its rooms are free for another origin (at a new epoch).
    pub(super) fn expire_silent(&mut self, node: &str, at_ms: u64) -> Vec<Placement> {
        let gone = self.silent(node, at_ms);
        for p in &gone {
            self.rooms.remove(&room_key(&p.app, &p.room));
        }
        gone
    }

    /// Releases every room `node` holds (it left the cluster).
    pub(super) fn release_all(&mut self, node: &str) {
        self.rooms.retain(|_, p| p.node != node);
    }
}

#[cfg(test)]
mod tests {
    use super::super::registry::tests::node;
    use super::super::{ClusterState, Command, Heartbeat, NodeLoad};
    use super::*;

    fn claim(node: &str, at_ms: u64) -> Command {
        Command::ClaimRoom {
            app: AppName::new("a").unwrap(),
            room: RoomName::new("r").unwrap(),
            node: node.into(),
            at_ms,
            lease_ms: 10_000,
            protocol: None,
            publisher: None,
        }
    }

    fn release(node: &str, epoch: u64) -> Command {
        Command::ReleaseRoom {
            app: AppName::new("a").unwrap(),
            room: RoomName::new("r").unwrap(),
            node: node.into(),
            epoch,
            reason: None,
        }
    }

    #[test]
    fn placement_lease_fences_and_expires() {
        let mut s = ClusterState::default();
        s.apply(&Command::RegisterNode(node("x", 1)));
        s.apply(&Command::RegisterNode(node("y", 2)));
        assert_eq!(
            s.apply(&claim("x", 1_000)),
            CommandResponse::Claimed { epoch: 1 }
        );
        // Re-claim by the holder keeps the epoch.
        assert_eq!(
            s.apply(&claim("x", 2_000)),
            CommandResponse::Claimed { epoch: 1 }
        );
        // Another node is refused while the lease is live...
        assert_eq!(
            s.apply(&claim("y", 5_000)),
            CommandResponse::Busy {
                node: "x".into(),
                epoch: 1
            }
        );
        // ...heartbeats renew it...
        s.apply(&Command::Heartbeats {
            at_ms: 9_000,
            beats: vec![Heartbeat {
                node: "x".into(),
                load: NodeLoad::default(),
                cert_fingerprint: None,
                draining: false,
                boot: 0,
            }],
        });
        assert!(matches!(
            s.apply(&claim("y", 15_000)),
            CommandResponse::Busy { .. }
        ));
        assert_eq!(s.registry.nodes["x"].last_heartbeat_ms, 9_000);
        // ...and once it expires, y takes the room with a higher epoch.
        assert_eq!(
            s.apply(&claim("y", 19_001)),
            CommandResponse::Claimed { epoch: 2 }
        );
        // x's stale release does nothing.
        assert!(matches!(
            s.apply(&release("x", 1)),
            CommandResponse::NotFound { .. }
        ));
        assert_eq!(s.placements.rooms["a/r"].node, "y");
        // Epochs never repeat, even after a release.
        assert_eq!(s.apply(&release("y", 2)), CommandResponse::Ok);
        assert_eq!(
            s.apply(&claim("x", 30_000)),
            CommandResponse::Claimed { epoch: 3 }
        );
    }

    #[test]
    fn removing_a_node_releases_its_rooms() {
        let mut s = ClusterState::default();
        s.apply(&Command::RegisterNode(node("x", 1)));
        s.apply(&claim("x", 1_000));
        let rm = Command::RemoveNode {
            name: "x".into(),
            at_ms: 0,
        };
        assert_eq!(s.apply(&rm), CommandResponse::Ok);
        assert!(s.placements.rooms.is_empty());
        assert!(s.registry.nodes.is_empty());
    }

    #[test]
    fn a_lease_is_over_at_exactly_its_end() {
        let mut s = ClusterState::default();
        s.apply(&claim("x", 1_000));
        let (a, r) = (AppName::new("a").unwrap(), RoomName::new("r").unwrap());
        assert!(s.placements.live(&a, &r, 10_999).is_some());
        assert!(s.placements.live(&a, &r, 11_000).is_none());
        assert!(s.placements.get(&a, &r).is_some());
    }

    #[test]
    fn a_silent_holder_is_declared_dead_before_its_lease_ends() {
        let mut s = ClusterState::default();
        s.apply(&Command::RegisterNode(node("x", 1)));
        s.apply(&Command::RegisterNode(node("y", 2)));
        assert_eq!(
            s.apply(&claim("x", 1_000)),
            CommandResponse::Claimed { epoch: 1 }
        );
        let beat = |at_ms| Command::Heartbeats {
            at_ms,
            beats: vec![Heartbeat {
                node: "x".into(),
                load: NodeLoad::default(),
                cert_fingerprint: None,
                draining: false,
                boot: 0,
            }],
        };
        s.apply(&beat(2_000));
        let p = s.placements.rooms["a/r"].clone();
        assert_eq!(p.renewed_ms(), 2_000);
        assert_eq!(p.self_fence_at_ms(), 2_000 + SELF_FENCE_MS);
        let expire = |at_ms| Command::ExpireHolder {
            node: "x".into(),
            at_ms,
        };
        // Renewed recently: the command is decided again here and changes nothing.
        assert!(s
            .placements
            .silent_holders(2_000 + DEAD_AFTER_MS - 1)
            .is_empty());
        assert!(matches!(
            s.apply(&expire(2_000 + DEAD_AFTER_MS - 1)),
            CommandResponse::NotFound { .. }
        ));
        assert_eq!(s.placements.rooms["a/r"].node, "x");
        // Silent for DEAD_AFTER_MS: declared dead, long before its 10 s lease ends.
        let dead_at = 2_000 + DEAD_AFTER_MS;
        assert_eq!(s.placements.silent_holders(dead_at), ["x"]);
        assert_eq!(s.apply(&expire(dead_at)), CommandResponse::Ok);
        assert!(s.placements.rooms.is_empty());
        assert_eq!(
            s.apply(&claim("y", dead_at + 100)),
            CommandResponse::Claimed { epoch: 2 }
        );
        // The dead holder's stale claim on return is refused, and its release does nothing.
        assert!(matches!(
            s.apply(&claim("x", dead_at + 200)),
            CommandResponse::Busy { .. }
        ));
        assert!(matches!(
            s.apply(&release("x", 1)),
            CommandResponse::NotFound { .. }
        ));
        // Only the node itself may forward it (the leader writes it locally).
        assert_eq!(expire(0).nodes_named(), ["x"]);
    }
}
