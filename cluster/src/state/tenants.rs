//! Tenants: the admin account, apps (with their token signing secrets), API keys and ingresses
//! (stream keys, device keys, pulled sources) with the state of pulled ones.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use streamhub_shared::{AppName, RoomName};

use super::controls::{AppSettings, Quotas, Role, RoomObject, User};
use super::{exists, not_found, CommandResponse};

/// The dashboard administrator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminUser {
    pub username: String,
    /// PHC string (argon2id).
    pub password_hash: String,
    /// Sessions issued before this (Unix milliseconds) are refused: set when the password
    /// changes.
    #[serde(default)]
    pub sessions_after_ms: u64,
}

/// A tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct App {
    pub name: AppName,
    pub display_name: Option<String>,
    /// Key id that goes into the `iss` claim of this app's tokens.
    pub key_id: String,
    /// HS256 secret of this app's LiveKit-compatible tokens (hex), sealed with the cluster key.
    pub secret: String,
    pub created_at_ms: u64,
    /// The Ed25519 private key (PKCS#8, base64) of this app's EdDSA tokens, sealed with the
    /// cluster key. Origins sign and verify with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key: Option<String>,
    /// The Ed25519 public key (32 bytes, base64url): all an edge gets, enough to verify a
    /// viewer token and never to mint one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_key: Option<String>,
    /// Playback mode and backstage default.
    #[serde(default)]
    pub settings: AppSettings,
    /// Limits; unlimited by default.
    #[serde(default)]
    pub quotas: Quotas,
    /// The S3 bucket its recordings go to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<super::Storage>,
}

/// An app's secrets as sealed by the leader for a state written before they were sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppSecrets {
    pub secret: String,
    pub signing_key: String,
    pub verify_key: String,
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
    /// The key's role in its app (or every app, for a global key); `None` keeps the behaviour
    /// keys had before roles: everything within its scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
}

/// The kind of an ingress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IngressKind {
    Rtmp,
    /// A WebSocket-MJPEG device key (`wsk_…`).
    Ws,
    /// A source the origin pulls (`rtsp://…`); the key is unused.
    Url,
    /// An SRT stream key (`rk_…`, in the stream id), with a passphrase.
    Srt,
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
    /// For `Url` ingresses: the source to pull.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// For `Url` ingresses: `tcp` (RTP interleaved, the default) or `udp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<String>,
    /// For `Srt` ingresses: the encryption passphrase, sealed with the cluster key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passphrase: Option<String>,
}

/// Where a pulled ingress is, as last reported by the origin pulling it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressStatus {
    /// `connecting`, `live` or `retrying`.
    pub state: String,
    /// The origin pulling it.
    pub node: String,
    pub last_error: Option<String>,
    pub since_ms: u64,
}

/// The tenant part of the replicated state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tenants {
    pub admin: Option<AdminUser>,
    pub apps: BTreeMap<AppName, App>,
    pub api_keys: BTreeMap<String, ApiKey>,
    pub ingresses: BTreeMap<String, Ingress>,
    /// The state of pulled ingresses, by ingress id.
    #[serde(default)]
    pub ingress_status: BTreeMap<String, IngressStatus>,
    /// Dashboard users besides the bootstrap admin, by username.
    #[serde(default)]
    pub users: BTreeMap<String, User>,
    /// Rooms created ahead of time, by `app/room`.
    #[serde(default)]
    pub room_objects: BTreeMap<String, RoomObject>,
}

impl Tenants {
    pub(super) fn bootstrap_admin(&mut self, admin: &AdminUser) -> CommandResponse {
        if self.admin.is_some() {
            return exists("admin");
        }
        self.admin = Some(admin.clone());
        CommandResponse::Ok
    }

    /// Sets the admin's password and ends every session issued before `at_ms`.
    pub(super) fn set_admin_password(&mut self, hash: &str, at_ms: u64) -> CommandResponse {
        match &mut self.admin {
            Some(admin) => {
                admin.password_hash = hash.to_string();
                admin.sessions_after_ms = admin.sessions_after_ms.max(at_ms);
                CommandResponse::Ok
            }
            None => not_found("admin"),
        }
    }

    /// Replaces the secrets of apps that still hold them unsealed (or lack a key pair), and the
    /// unsealed URLs of pulled ingresses. Values already sealed are kept: running it twice, or
    /// after a concurrent change, changes nothing more.
    pub(super) fn seal(
        &mut self,
        apps: &BTreeMap<AppName, AppSecrets>,
        ingress_urls: &BTreeMap<String, String>,
    ) {
        for (name, sealed) in apps {
            if let Some(app) = self.apps.get_mut(name) {
                if !crate::seal::is_sealed(&app.secret) {
                    app.secret.clone_from(&sealed.secret);
                }
                if app.signing_key.is_none() {
                    app.signing_key = Some(sealed.signing_key.clone());
                    app.verify_key = Some(sealed.verify_key.clone());
                }
            }
        }
        for (id, url) in ingress_urls {
            if let Some(ing) = self.ingresses.get_mut(id) {
                if ing
                    .url
                    .as_deref()
                    .is_some_and(|u| !crate::seal::is_sealed(u))
                {
                    ing.url = Some(url.clone());
                }
            }
        }
    }

    /// Replaces `name`'s key id and signing keys.
    pub(super) fn rotate_app_keys(
        &mut self,
        name: &AppName,
        key_id: &str,
        keys: &AppSecrets,
    ) -> CommandResponse {
        match self.apps.get_mut(name) {
            Some(app) => {
                app.key_id = key_id.to_string();
                app.secret.clone_from(&keys.secret);
                app.signing_key = Some(keys.signing_key.clone());
                app.verify_key = Some(keys.verify_key.clone());
                CommandResponse::Ok
            }
            None => not_found(format!("app {name}")),
        }
    }

    pub(super) fn create_app(&mut self, app: &App) -> CommandResponse {
        if self.apps.contains_key(&app.name) {
            return exists(format!("app {}", app.name));
        }
        self.apps.insert(app.name.clone(), app.clone());
        CommandResponse::Ok
    }

    pub(super) fn update_app(
        &mut self,
        name: &AppName,
        display_name: &Option<String>,
    ) -> CommandResponse {
        match self.apps.get_mut(name) {
            Some(app) => {
                app.display_name.clone_from(display_name);
                CommandResponse::Ok
            }
            None => not_found(format!("app {name}")),
        }
    }

    /// Deletes the app with its ingresses (and their states) and its app-scoped API keys.
    pub(super) fn delete_app(&mut self, name: &AppName) -> CommandResponse {
        if self.apps.remove(name).is_none() {
            return not_found(format!("app {name}"));
        }
        self.ingresses.retain(|_, i| &i.app != name);
        let ingresses = &self.ingresses;
        self.ingress_status
            .retain(|id, _| ingresses.contains_key(id));
        self.api_keys.retain(|_, k| k.app.as_ref() != Some(name));
        self.room_objects.retain(|_, r| &r.app != name);
        for user in self.users.values_mut() {
            user.roles.retain(|b| b.app != name.as_str());
        }
        CommandResponse::Ok
    }

    pub(super) fn create_api_key(&mut self, key: &ApiKey) -> CommandResponse {
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

    pub(super) fn delete_api_key(&mut self, id: &str) -> CommandResponse {
        match self.api_keys.remove(id) {
            Some(_) => CommandResponse::Ok,
            None => not_found(format!("api key {id}")),
        }
    }

    pub(super) fn create_ingress(&mut self, ing: &Ingress) -> CommandResponse {
        if !self.apps.contains_key(&ing.app) {
            return not_found(format!("app {}", ing.app));
        }
        if self.ingresses.contains_key(&ing.id) {
            return exists(format!("ingress {}", ing.id));
        }
        if let Some(refused) = self.ingress_quota(&ing.app) {
            return refused;
        }
        self.ingresses.insert(ing.id.clone(), ing.clone());
        CommandResponse::Ok
    }

    pub(super) fn delete_ingress(&mut self, app: &AppName, id: &str) -> CommandResponse {
        match self.ingresses.get(id) {
            Some(ing) if &ing.app == app => {
                self.ingresses.remove(id);
                self.ingress_status.remove(id);
                CommandResponse::Ok
            }
            _ => not_found(format!("ingress {id}")),
        }
    }

    /// Records the state of a pulled ingress, reported by `holder` (the origin placing its room,
    /// checked by the caller).
    pub(super) fn set_ingress_status(
        &mut self,
        id: &str,
        status: &IngressStatus,
        holder: Option<&str>,
    ) -> CommandResponse {
        if !self.ingresses.contains_key(id) {
            return not_found(format!("ingress {id}"));
        }
        // Only the origin holding the room reports on its pull (a stale one may not).
        if holder != Some(status.node.as_str()) {
            return not_found(format!("placement of {id} on {}", status.node));
        }
        self.ingress_status.insert(id.to_string(), status.clone());
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

#[cfg(test)]
pub(crate) mod tests {
    use super::super::{ClusterState, Command};
    use super::*;

    pub(crate) fn app(name: &str) -> App {
        App {
            name: AppName::new(name).unwrap(),
            display_name: None,
            key_id: format!("ak_{name}"),
            secret: "00".into(),
            created_at_ms: 1,
            signing_key: None,
            verify_key: None,
            settings: AppSettings::default(),
            quotas: Quotas::default(),
            storage: None,
        }
    }

    pub(crate) fn ingress(id: &str, app: &str) -> Ingress {
        Ingress {
            id: id.into(),
            app: AppName::new(app).unwrap(),
            room: RoomName::new("r").unwrap(),
            name: None,
            kind: IngressKind::Rtmp,
            key_hash: format!("h-{id}"),
            url: None,
            transport: None,
            passphrase: None,
            created_at_ms: 1,
        }
    }

    pub(crate) fn key(id: &str, app: Option<&str>) -> ApiKey {
        ApiKey {
            id: id.into(),
            name: id.into(),
            app: app.map(|a| AppName::new(a).unwrap()),
            allow_ips: vec![],
            hash: format!("h-{id}"),
            prefix: "sk_x".into(),
            created_at_ms: 1,
            role: None,
        }
    }

    #[test]
    fn create_app_twice_is_exists() {
        let mut s = ClusterState::default();
        assert_eq!(s.apply(&Command::CreateApp(app("a"))), CommandResponse::Ok);
        assert!(matches!(
            s.apply(&Command::CreateApp(app("a"))),
            CommandResponse::Exists { .. }
        ));
        assert_eq!(s.tenants.apps.len(), 1);
    }

    #[test]
    fn ingress_needs_its_app_and_delete_checks_app() {
        let mut s = ClusterState::default();
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
        assert_eq!(s.tenants.ingress_by_key_hash("h-i1").unwrap().id, "i1");
        let foreign = Command::DeleteIngress {
            app: AppName::new("b").unwrap(),
            id: "i1".into(),
        };
        assert!(matches!(
            s.apply(&foreign),
            CommandResponse::NotFound { .. }
        ));
        assert!(s.tenants.ingresses.contains_key("i1"));
    }

    #[test]
    fn delete_app_cascades() {
        let mut s = ClusterState::default();
        s.apply(&Command::CreateApp(app("a")));
        s.apply(&Command::CreateApp(app("b")));
        s.apply(&Command::CreateIngress(ingress("i1", "a")));
        s.apply(&Command::CreateIngress(ingress("i2", "b")));
        s.apply(&Command::CreateApiKey(key("k1", Some("a"))));
        s.apply(&Command::CreateApiKey(key("k2", None)));
        let name = AppName::new("a").unwrap();
        assert_eq!(s.apply(&Command::DeleteApp { name }), CommandResponse::Ok);
        assert_eq!(s.tenants.ingresses.keys().collect::<Vec<_>>(), vec!["i2"]);
        assert_eq!(s.tenants.api_keys.keys().collect::<Vec<_>>(), vec!["k2"]);
    }

    #[test]
    fn bootstrap_admin_only_once() {
        let mut s = ClusterState::default();
        let a = AdminUser {
            username: "admin".into(),
            password_hash: "h1".into(),
            sessions_after_ms: 0,
        };
        let b = AdminUser {
            username: "other".into(),
            password_hash: "h2".into(),
            sessions_after_ms: 0,
        };
        assert_eq!(
            s.apply(&Command::BootstrapAdmin(a.clone())),
            CommandResponse::Ok
        );
        assert!(matches!(
            s.apply(&Command::BootstrapAdmin(b)),
            CommandResponse::Exists { .. }
        ));
        assert_eq!(s.tenants.admin, Some(a));
    }
}
