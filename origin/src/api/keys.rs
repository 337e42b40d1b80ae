//! API keys: the secret is shown once at creation; only its SHA-256 is stored.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use streamhub_cluster::state::{ApiKey, Command, Role};
use streamhub_shared::AppName;

use super::{data, data_with, ApiError, Json, Principal};
use crate::authz::Action;
use crate::credentials::{random_hex, random_token, sha256_hex, unix_now_ms};
use crate::tenants::Tenants;

/// Body of `POST /api-keys`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateKey {
    name: String,
    app: Option<String>,
    #[serde(default)]
    allow_ips: Vec<String>,
    /// The key's role in its app (or every app); absent: everything within its scope, as keys
    /// before roles.
    role: Option<Role>,
}

/// A key as lists show it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyView {
    id: String,
    name: String,
    app: Option<AppName>,
    allow_ips: Vec<String>,
    prefix: String,
    created_at_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<Role>,
}

impl From<&ApiKey> for KeyView {
    fn from(k: &ApiKey) -> Self {
        Self {
            id: k.id.clone(),
            name: k.name.clone(),
            app: k.app.clone(),
            allow_ips: k.allow_ips.clone(),
            prefix: k.prefix.clone(),
            created_at_ms: k.created_at_ms,
            role: k.role,
        }
    }
}

fn validate_allow_ips(list: &[String]) -> Result<(), ApiError> {
    if list.len() > 64 {
        return Err(ApiError::BadRequest(
            "allowIps holds at most 64 entries".into(),
        ));
    }
    for e in list {
        let ok = e.parse::<ipnet::IpNet>().is_ok() || e.parse::<std::net::IpAddr>().is_ok();
        if !ok {
            return Err(ApiError::BadRequest(format!(
                "allowIps entry {e:?} is not an IP address or CIDR range"
            )));
        }
    }
    Ok(())
}

/// `POST /api-keys` (admin or global key) -> the `sk_…` secret, once.
pub async fn create(
    State(tenants): State<Tenants>,
    who: Principal,
    Json(req): Json<CreateKey>,
) -> Result<Response, ApiError> {
    who.check_global()?;
    if req.name.is_empty() || req.name.chars().count() > 128 {
        return Err(ApiError::BadRequest(
            "name must be 1 to 128 characters".into(),
        ));
    }
    validate_allow_ips(&req.allow_ips)?;
    let app = req.app.map(AppName::new).transpose()?;
    who.may(Action::ManageKeys, app.as_ref())?;
    who.may_grant(req.role, app.as_ref())?;
    let secret = random_token("sk_", 40);
    let key = ApiKey {
        id: format!("key_{}", random_hex(8)),
        name: req.name,
        app,
        allow_ips: req.allow_ips,
        hash: sha256_hex(&secret),
        prefix: secret[..7].to_string(),
        created_at_ms: unix_now_ms(),
        role: req.role,
    };
    tenants.write(Command::CreateApiKey(key.clone())).await?;
    let mut view =
        serde_json::to_value(KeyView::from(&key)).map_err(|e| ApiError::Internal(e.to_string()))?;
    view["secret"] = serde_json::Value::String(secret);
    Ok(data_with(StatusCode::CREATED, view))
}

/// `GET /api-keys` (admin or global key).
pub async fn list(
    State(tenants): State<Tenants>,
    who: Principal,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    who.check_global()?;
    who.may(Action::ManageKeys, None)?;
    let keys: Vec<KeyView> =
        tenants.read(|s| s.tenants.api_keys.values().map(KeyView::from).collect());
    Ok(data(keys))
}

/// `DELETE /api-keys/:id` (admin or global key).
pub async fn delete(
    State(tenants): State<Tenants>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    who.check_global()?;
    let app = tenants.read(|s| s.tenants.api_keys.get(&id).and_then(|k| k.app.clone()));
    who.may(Action::ManageKeys, app.as_ref())?;
    tenants.write(Command::DeleteApiKey { id }).await?;
    Ok(StatusCode::NO_CONTENT)
}
