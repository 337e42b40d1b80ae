//! One origin on its own, as the integration tests of a crate use it: a [`Node`] in a temp dir
//! of its own, with the conveniences of a single node.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use crate::api::Api;
use crate::node::{Node, NodeConfig, Role};
use crate::timeline::Timeline;

/// A running `streamhub-origin` with its own data dir; killed (and its dir removed) on drop.
pub struct Origin {
    node: Node,
    _dir: tempfile::TempDir,
}

impl Origin {
    /// Starts an origin on fresh loopback ports and waits until it is healthy.
    pub async fn start() -> Origin {
        Origin::start_with(|_| {}).await
    }

    /// Like [`Origin::start`], with the config changed by `edit` first (extra flags,
    /// environment).
    pub async fn start_with(edit: impl FnOnce(&mut NodeConfig)) -> Origin {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = NodeConfig::new("origin-test-1", dir.path());
        cfg.role = Role::Origin;
        edit(&mut cfg);
        let node = Node::start(cfg, Arc::new(Timeline::quiet()))
            .await
            .unwrap_or_else(|e| panic!("origin did not start: {e:#}"));
        Origin { node, _dir: dir }
    }

    /// An API client logged in as the admin.
    pub async fn admin(&self) -> Api {
        self.node
            .admin()
            .await
            .unwrap_or_else(|e| panic!("admin login: {e:#}\n{}", self.log_text()))
    }

    /// Everything the node logged (all runs).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.node.config().log).unwrap_or_default()
    }
}

impl Deref for Origin {
    type Target = Node;

    fn deref(&self) -> &Node {
        &self.node
    }
}

impl DerefMut for Origin {
    fn deref_mut(&mut self) -> &mut Node {
        &mut self.node
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- origin log ({}) ----\n{}",
                self.node.url(""),
                self.log_text()
            );
        }
    }
}
