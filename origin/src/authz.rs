//! Authorization: one decision, [`decide`], of (principal, action, app) against the policy
//! table [`POLICY`], under the mode `STREAMHUB_AUTHZ_ENFORCE` sets:
//!
//! - `off`: today's behaviour: every signed-in principal may do everything its API key scope
//!   allows (no roles are consulted);
//! - `log`: decides, logs every would-be denial (principal, action, app, rule) and allows it;
//! - `on` (the default): enforces; a denial is a 403 and nothing changes.
//!
//! Roles are ordered (`viewer < operator < admin < owner`); an action names the least role it
//! needs and whether it touches one app or the whole node. A binding in app `*` covers every app
//! and the node-wide actions. The bootstrap administrator may do everything; an API key made
//! before roles (no `role`) keeps what keys could always do within their scope.

use std::fmt;

use serde::{Deserialize, Serialize};
use streamhub_cluster::state::{Role, RoleBinding};
use streamhub_shared::AppName;

/// What a caller wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Read an app, its rooms, ingresses, keys list, quotas and usage.
    Read,
    /// Ingresses and device keys: create, delete.
    ManageIngress,
    /// Rooms: create, delete, go-live, stop-live.
    ManageRooms,
    /// Recordings: start, stop, delete.
    ManageRecordings,
    /// Mint viewer, publisher and play tokens.
    MintTokens,
    /// App settings: rename, playback mode, backstage default.
    ManageSettings,
    /// API keys of the app, and rotating its signing keys.
    ManageKeys,
    /// Webhook endpoints, their secrets and delivery log.
    ManageWebhooks,
    /// Users with roles in the app.
    ManageUsers,
    /// Create and delete apps (node-wide).
    ManageApps,
    /// Set quotas (node-wide: global admins).
    SetQuotas,
    /// The cluster: join tokens, node removal, the session key (node-wide).
    ManageCluster,
    /// Read the cluster and the node registry (node-wide).
    ReadCluster,
}

/// Whether an action touches one app or the whole node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    App,
    Node,
}

/// The policy table: each action, the least role that may do it, and its scope.
pub const POLICY: &[(Action, Role, Scope)] = &[
    (Action::Read, Role::Viewer, Scope::App),
    (Action::ManageIngress, Role::Operator, Scope::App),
    (Action::ManageRooms, Role::Operator, Scope::App),
    (Action::ManageRecordings, Role::Operator, Scope::App),
    (Action::MintTokens, Role::Operator, Scope::App),
    (Action::ManageSettings, Role::Admin, Scope::App),
    (Action::ManageKeys, Role::Admin, Scope::App),
    (Action::ManageWebhooks, Role::Admin, Scope::App),
    (Action::ManageUsers, Role::Owner, Scope::App),
    (Action::ManageApps, Role::Admin, Scope::Node),
    (Action::SetQuotas, Role::Admin, Scope::Node),
    (Action::ManageCluster, Role::Admin, Scope::Node),
    (Action::ReadCluster, Role::Viewer, Scope::Node),
];

impl Action {
    /// The least role and the scope of this action.
    pub fn rule(self) -> (Role, Scope) {
        POLICY
            .iter()
            .find(|(a, _, _)| *a == self)
            .map(|(_, r, s)| (*r, *s))
            .expect("every action is in the policy table")
    }

    /// The action's name in logs and refusals.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::ManageIngress => "manage ingresses",
            Action::ManageRooms => "manage rooms",
            Action::ManageRecordings => "manage recordings",
            Action::MintTokens => "mint tokens",
            Action::ManageSettings => "change app settings",
            Action::ManageKeys => "manage keys",
            Action::ManageWebhooks => "manage webhooks",
            Action::ManageUsers => "manage users",
            Action::ManageApps => "create or delete apps",
            Action::SetQuotas => "set quotas",
            Action::ManageCluster => "manage the cluster",
            Action::ReadCluster => "read the cluster",
        }
    }
}

/// `STREAMHUB_AUTHZ_ENFORCE`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Off,
    Log,
    #[default]
    On,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Off => "off",
            Mode::Log => "log",
            Mode::On => "on",
        })
    }
}

/// What a principal holds, for [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder<'a> {
    /// The bootstrap administrator.
    Superuser,
    /// An API key made before roles: everything within its scope.
    Unroled,
    /// Role bindings (a user's, or an API key's one).
    Bindings(&'a [RoleBinding]),
}

/// A decision and the rule that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub rule: String,
}

/// Decides whether `holder` may do `action` in `app` (`None` for node-wide actions).
pub fn decide(holder: &Holder<'_>, action: Action, app: Option<&AppName>) -> Decision {
    let (least, scope) = action.rule();
    let bindings = match holder {
        Holder::Superuser => {
            return Decision {
                allowed: true,
                rule: "superuser".into(),
            }
        }
        Holder::Unroled => {
            return Decision {
                allowed: true,
                rule: "key without a role: its scope only".into(),
            }
        }
        Holder::Bindings(b) => b,
    };
    let target = match scope {
        Scope::App => app,
        Scope::Node => None,
    };
    let best = bindings
        .iter()
        .filter(|b| b.covers(target))
        .map(|b| b.role)
        .max();
    let place = match target {
        Some(a) => format!("app {a}"),
        None => "every app (*)".to_string(),
    };
    match best {
        Some(role) if role >= least => Decision {
            allowed: true,
            rule: format!("{} in {place} >= {}", role.as_str(), least.as_str()),
        },
        Some(role) => Decision {
            allowed: false,
            rule: format!("{} in {place} < {}", role.as_str(), least.as_str()),
        },
        None => Decision {
            allowed: false,
            rule: format!("no role in {place} (needs {})", least.as_str()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(app: &str, role: Role) -> RoleBinding {
        RoleBinding {
            app: app.into(),
            role,
        }
    }

    #[test]
    fn the_table_covers_every_action_once() {
        for (a, _, _) in POLICY {
            assert_eq!(POLICY.iter().filter(|(b, _, _)| b == a).count(), 1, "{a:?}");
        }
    }

    #[test]
    fn roles_in_an_app_allow_what_the_table_says_there_only() {
        let shop = AppName::new("shop").unwrap();
        let other = AppName::new("other").unwrap();
        let expect = [
            (Role::Viewer, [true, false, false, false, false]),
            (Role::Operator, [true, true, true, false, false]),
            (Role::Admin, [true, true, true, true, false]),
            (Role::Owner, [true, true, true, true, true]),
        ];
        let actions = [
            Action::Read,
            Action::ManageIngress,
            Action::ManageRooms,
            Action::ManageKeys,
            Action::ManageUsers,
        ];
        for (role, allowed) in expect {
            let b = [bind("shop", role)];
            for (action, want) in actions.iter().zip(allowed) {
                let d = decide(&Holder::Bindings(&b), *action, Some(&shop));
                assert_eq!(d.allowed, want, "{role:?} {action:?}: {}", d.rule);
                assert!(!decide(&Holder::Bindings(&b), *action, Some(&other)).allowed);
            }
            // No app role reaches a node-wide action.
            assert!(!decide(&Holder::Bindings(&b), Action::ManageApps, None).allowed);
        }
    }

    #[test]
    fn a_star_binding_covers_every_app_and_the_node() {
        let b = [bind("*", Role::Admin), bind("shop", Role::Viewer)];
        let shop = AppName::new("shop").unwrap();
        assert!(decide(&Holder::Bindings(&b), Action::ManageKeys, Some(&shop)).allowed);
        assert!(decide(&Holder::Bindings(&b), Action::SetQuotas, None).allowed);
        assert!(!decide(&Holder::Bindings(&b), Action::ManageUsers, Some(&shop)).allowed);
        assert!(decide(&Holder::Superuser, Action::ManageUsers, None).allowed);
        assert!(decide(&Holder::Unroled, Action::ManageCluster, None).allowed);
    }
}
