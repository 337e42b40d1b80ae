//! The tenant state machine: apps, API keys, ingresses and the admin account.
//!
//! Plain, deterministic code: every input (ids, secrets, hashes, timestamps) is decided by the
//! node that proposes a [`Command`], so every replica applies the same log to the same state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use streamhub_shared::{AppName, RoomName};

/// The dashboard administrator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminUser {
    pub username: String,
    /// PHC string (argon2id).
    pub password_hash: String,
}

/// A tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct App {
    pub name: AppName,
    pub display_name: Option<String>,
    /// Key id that goes into the `iss` claim of this app's tokens.
    pub key_id: String,
    /// HS256 secret of this app's tokens (hex).
    pub secret: String,
    pub created_at_ms: u64,
}

/// An API key; only its SHA-256 is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    /// When set, the key may only touch this app.
    pub app: Option<AppName>,
    /// Client addresses or CIDR ranges allowed to use the key; empty = any.
    pub allow_ips: Vec<String>,
    /// SHA-256 of the secret (hex).
    pub hash: String,
    /// First characters of the secret, to recognise it in lists.
    pub prefix: String,
    pub created_at_ms: u64,
}

/// The kind of an ingress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IngressKind {
    Rtmp,
}

/// A way into a room: for RTMP, a stream key (only its SHA-256 is stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ingress {
    pub id: String,
    pub app: AppName,
    pub room: RoomName,
    pub name: Option<String>,
    pub kind: IngressKind,
    /// SHA-256 of the stream key (hex).
    pub key_hash: String,
    pub created_at_ms: u64,
}

/// A change to the tenant state: the payload of a Raft log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Sets the admin if none exists yet (first start); a second bootstrap is a no-op.
    BootstrapAdmin(AdminUser),
    CreateApp(App),
    UpdateApp {
        name: AppName,
        display_name: Option<String>,
    },
    /// Deletes the app with its ingresses and its app-scoped API keys.
    DeleteApp {
        name: AppName,
    },
    CreateApiKey(ApiKey),
    DeleteApiKey {
        id: String,
    },
    CreateIngress(Ingress),
    DeleteIngress {
        app: AppName,
        id: String,
    },
}

/// The result of applying one command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum CommandResponse {
    Ok,
    /// Nothing changed because the thing already exists.
    Exists {
        what: String,
    },
    /// Nothing changed because the thing does not exist.
    NotFound {
        what: String,
    },
}

/// Everything the control plane knows about tenants.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantState {
    pub admin: Option<AdminUser>,
    pub apps: BTreeMap<AppName, App>,
    pub api_keys: BTreeMap<String, ApiKey>,
    pub ingresses: BTreeMap<String, Ingress>,
}

impl TenantState {
    /// Applies one command. Deterministic: the same commands in the same order give the same state.
    pub fn apply(&mut self, cmd: &Command) -> CommandResponse {
        match cmd {
            Command::BootstrapAdmin(admin) => {
                if self.admin.is_some() {
                    return exists("admin");
                }
                self.admin = Some(admin.clone());
                CommandResponse::Ok
            }
            Command::CreateApp(app) => {
                if self.apps.contains_key(&app.name) {
                    return exists(format!("app {}", app.name));
                }
                self.apps.insert(app.name.clone(), app.clone());
                CommandResponse::Ok
            }
            Command::UpdateApp { name, display_name } => match self.apps.get_mut(name) {
                Some(app) => {
                    app.display_name = display_name.clone();
                    CommandResponse::Ok
                }
                None => not_found(format!("app {name}")),
            },
            Command::DeleteApp { name } => self.delete_app(name),
            Command::CreateApiKey(key) => {
                if let Some(app) = &key.app {
                    if !self.apps.contains_key(app) {
                        return not_found(format!("app {app}"));
                    }
                }
                if self.api_keys.contains_key(&key.id) {
                    return exists(format!("api key {}", key.id));
                }
                self.api_keys.insert(key.id.clone(), key.clone());
                CommandResponse::Ok
            }
            Command::DeleteApiKey { id } => match self.api_keys.remove(id) {
                Some(_) => CommandResponse::Ok,
                None => not_found(format!("api key {id}")),
            },
            Command::CreateIngress(ing) => {
                if !self.apps.contains_key(&ing.app) {
                    return not_found(format!("app {}", ing.app));
                }
                if self.ingresses.contains_key(&ing.id) {
                    return exists(format!("ingress {}", ing.id));
                }
                self.ingresses.insert(ing.id.clone(), ing.clone());
                CommandResponse::Ok
            }
            Command::DeleteIngress { app, id } => match self.ingresses.get(id) {
                Some(ing) if &ing.app == app => {
                    self.ingresses.remove(id);
                    CommandResponse::Ok
                }
                _ => not_found(format!("ingress {id}")),
            },
        }
    }

    fn delete_app(&mut self, name: &AppName) -> CommandResponse {
        if self.apps.remove(name).is_none() {
            return not_found(format!("app {name}"));
        }
        self.ingresses.retain(|_, i| &i.app != name);
        self.api_keys.retain(|_, k| k.app.as_ref() != Some(name));
        CommandResponse::Ok
    }

    /// The ingress whose stream key hashes to `key_hash`.
    pub fn ingress_by_key_hash(&self, key_hash: &str) -> Option<&Ingress> {
        self.ingresses.values().find(|i| i.key_hash == key_hash)
    }

    /// The API key whose secret hashes to `hash`.
    pub fn api_key_by_hash(&self, hash: &str) -> Option<&ApiKey> {
        self.api_keys.values().find(|k| k.hash == hash)
    }
}

fn exists(what: impl Into<String>) -> CommandResponse {
    CommandResponse::Exists { what: what.into() }
}

fn not_found(what: impl Into<String>) -> CommandResponse {
    CommandResponse::NotFound { what: what.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(name: &str) -> App {
        App {
            name: AppName::new(name).unwrap(),
            display_name: None,
            key_id: format!("ak_{name}"),
            secret: "00".into(),
            created_at_ms: 1,
        }
    }

    fn ingress(id: &str, app: &str) -> Ingress {
        Ingress {
            id: id.into(),
            app: AppName::new(app).unwrap(),
            room: RoomName::new("r").unwrap(),
            name: None,
            kind: IngressKind::Rtmp,
            key_hash: format!("h-{id}"),
            created_at_ms: 1,
        }
    }

    fn key(id: &str, app: Option<&str>) -> ApiKey {
        ApiKey {
            id: id.into(),
            name: id.into(),
            app: app.map(|a| AppName::new(a).unwrap()),
            allow_ips: vec![],
            hash: format!("h-{id}"),
            prefix: "sk_x".into(),
            created_at_ms: 1,
        }
    }

    #[test]
    fn create_app_twice_is_exists() {
        let mut s = TenantState::default();
        assert_eq!(s.apply(&Command::CreateApp(app("a"))), CommandResponse::Ok);
        assert!(matches!(
            s.apply(&Command::CreateApp(app("a"))),
            CommandResponse::Exists { .. }
        ));
        assert_eq!(s.apps.len(), 1);
    }

    #[test]
    fn ingress_needs_its_app_and_delete_checks_app() {
        let mut s = TenantState::default();
        assert!(matches!(
            s.apply(&Command::CreateIngress(ingress("i1", "a"))),
            CommandResponse::NotFound { .. }
        ));
        s.apply(&Command::CreateApp(app("a")));
        s.apply(&Command::CreateApp(app("b")));
        assert_eq!(
            s.apply(&Command::CreateIngress(ingress("i1", "a"))),
            CommandResponse::Ok
        );
        assert_eq!(s.ingress_by_key_hash("h-i1").unwrap().id, "i1");
        let foreign = Command::DeleteIngress {
            app: AppName::new("b").unwrap(),
            id: "i1".into(),
        };
        assert!(matches!(
            s.apply(&foreign),
            CommandResponse::NotFound { .. }
        ));
        assert!(s.ingresses.contains_key("i1"));
    }

    #[test]
    fn delete_app_cascades() {
        let mut s = TenantState::default();
        s.apply(&Command::CreateApp(app("a")));
        s.apply(&Command::CreateApp(app("b")));
        s.apply(&Command::CreateIngress(ingress("i1", "a")));
        s.apply(&Command::CreateIngress(ingress("i2", "b")));
        s.apply(&Command::CreateApiKey(key("k1", Some("a"))));
        s.apply(&Command::CreateApiKey(key("k2", None)));
        let name = AppName::new("a").unwrap();
        assert_eq!(s.apply(&Command::DeleteApp { name }), CommandResponse::Ok);
        assert_eq!(s.ingresses.keys().collect::<Vec<_>>(), vec!["i2"]);
        assert_eq!(s.api_keys.keys().collect::<Vec<_>>(), vec!["k2"]);
    }

    #[test]
    fn bootstrap_admin_only_once() {
        let mut s = TenantState::default();
        let a = AdminUser {
            username: "admin".into(),
            password_hash: "h1".into(),
        };
        let b = AdminUser {
            username: "other".into(),
            password_hash: "h2".into(),
        };
        assert_eq!(
            s.apply(&Command::BootstrapAdmin(a.clone())),
            CommandResponse::Ok
        );
        assert!(matches!(
            s.apply(&Command::BootstrapAdmin(b)),
            CommandResponse::Exists { .. }
        ));
        assert_eq!(s.admin, Some(a));
    }

    #[test]
    fn replay_is_deterministic() {
        let cmds = vec![
            Command::CreateApp(app("a")),
            Command::CreateApiKey(key("k1", Some("a"))),
            Command::CreateIngress(ingress("i1", "a")),
            Command::DeleteApiKey { id: "k1".into() },
        ];
        let (mut s1, mut s2) = (TenantState::default(), TenantState::default());
        for c in &cmds {
            s1.apply(c);
        }
        let json = serde_json::to_string(&cmds).unwrap();
        let back: Vec<Command> = serde_json::from_str(&json).unwrap();
        for c in &back {
            s2.apply(c);
        }
        assert_eq!(s1, s2);
    }
}
