//! Webhook endpoints of an app, their delivery log, and the app's event feed. Endpoints and
//! their log need `manage webhooks` (app admins); the feed needs `read`. The signing secret
//! is shown once (at creation and at each rotation) and stored sealed.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Value};
use streamhub_cluster::state::events::{event_id, event_number, MAX_EVENTS_PER_APP};
use streamhub_cluster::state::{Command, CommandResponse, Webhook, WebhookChange, EVENT_TYPES};
use streamhub_shared::AppName;

use super::apps::{authorize_app, load_app};
use super::{data, data_with, ApiError, Json, Principal};
use crate::authz::Action;
use crate::credentials::{random_hex, random_token, unix_now_ms};
use crate::services::Services;

/// Event types one endpoint may list.
const MAX_EVENT_FILTERS: usize = 32;
/// The longest a rotated-out secret keeps signing.
const MAX_OVERLAP_SECS: u64 = 7 * 24 * 3600;
/// How long a rotated-out secret keeps signing unless told.
const DEFAULT_OVERLAP_SECS: u64 = 24 * 3600;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    url: String,
    events: Vec<String>,
    enabled: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhook {
    url: Option<String>,
    events: Option<Vec<String>>,
    enabled: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rotate {
    /// How long the old secret keeps signing too (0 to 7 days; default 1 day).
    overlap_seconds: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    after: Option<String>,
    limit: Option<usize>,
}

fn check_events(events: &[String]) -> Result<(), ApiError> {
    if events.is_empty() || events.len() > MAX_EVENT_FILTERS {
        return Err(ApiError::BadRequest(format!(
            "events must list 1 to {MAX_EVENT_FILTERS} event types, or [\"*\"]"
        )));
    }
    for e in events {
        if e != "*" && !EVENT_TYPES.contains(&e.as_str()) {
            return Err(ApiError::BadRequest(format!(
                "unknown event type {e:?} (one of {}, or \"*\")",
                EVENT_TYPES.join(", ")
            )));
        }
    }
    Ok(())
}

fn view(w: &Webhook) -> Value {
    let pending = w
        .deliveries
        .iter()
        .filter(|d| d.status == streamhub_cluster::state::DeliveryStatus::Retrying)
        .count();
    json!({
        "id": w.id,
        "app": w.app,
        "url": w.url,
        "events": w.events,
        "enabled": w.enabled,
        "createdAtMs": w.created_at_ms,
        "lastEventDone": (w.cursor > 0).then(|| event_id(w.cursor)),
        "retrying": pending,
        "previousSecretValidUntilMs": w.previous_until_ms.filter(|t| *t > unix_now_ms()),
    })
}

fn find(services: &Services, app: &AppName, id: &str) -> Result<Webhook, ApiError> {
    services
        .tenants
        .read(|s| s.events.webhook(app, id).cloned())
        .ok_or_else(|| ApiError::NotFound(format!("webhook {id}")))
}

/// `POST /apps/:app/webhooks` -> the endpoint with its `secret` (shown this once).
pub async fn create(
    State(services): State<Services>,
    who: Principal,
    Path(app): Path<String>,
    Json(req): Json<CreateWebhook>,
) -> Result<Response, ApiError> {
    let app = authorize_app(&who, &app, Action::ManageWebhooks)?;
    load_app(&services.tenants, &app)?;
    let url = services
        .webhooks
        .guard()
        .check_url(&req.url)
        .map_err(ApiError::BadRequest)?;
    check_events(&req.events)?;
    let id = format!("wh_{}", random_hex(8));
    let secret = random_token("whsec_", 32);
    let hook = Webhook {
        secret: services.tenants.seal_webhook_secret(&id, &secret)?,
        id,
        app,
        url: url.to_string(),
        events: req.events,
        enabled: req.enabled.unwrap_or(true),
        previous_secret: None,
        previous_until_ms: None,
        created_at_ms: unix_now_ms(),
        cursor: 0,
        redeliver: Vec::new(),
        deliveries: Default::default(),
    };
    services
        .tenants
        .write(Command::CreateWebhook(hook.clone()))
        .await?;
    let mut body = view(&hook);
    body["secret"] = Value::String(secret);
    Ok(data_with(StatusCode::CREATED, body))
}

/// `GET /apps/:app/webhooks`.
pub async fn list(
    State(services): State<Services>,
    who: Principal,
    Path(app): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let app = authorize_app(&who, &app, Action::ManageWebhooks)?;
    load_app(&services.tenants, &app)?;
    let all: Vec<Value> = services.tenants.read(|s| {
        s.events
            .app(&app)
            .map(|a| a.webhooks.values().map(view).collect())
            .unwrap_or_default()
    });
    Ok(data(all))
}

/// `GET /apps/:app/webhooks/:id`.
pub async fn get(
    State(services): State<Services>,
    who: Principal,
    Path((app, id)): Path<(String, String)>,
) -> Result<axum::Json<Value>, ApiError> {
    let app = authorize_app(&who, &app, Action::ManageWebhooks)?;
    Ok(data(view(&find(&services, &app, &id)?)))
}

/// `PATCH /apps/:app/webhooks/:id` (`url`, `events`, `enabled`).
pub async fn update(
    State(services): State<Services>,
    who: Principal,
    Path((app, id)): Path<(String, String)>,
    Json(req): Json<UpdateWebhook>,
) -> Result<axum::Json<Value>, ApiError> {
    let app = authorize_app(&who, &app, Action::ManageWebhooks)?;
    let url = req
        .url
        .map(|u| services.webhooks.guard().check_url(&u))
        .transpose()
        .map_err(ApiError::BadRequest)?;
    if let Some(events) = &req.events {
        check_events(events)?;
    }
    let change = WebhookChange {
        url: url.map(|u| u.to_string()),
        events: req.events,
        enabled: req.enabled,
        ..Default::default()
    };
    services
        .tenants
        .write(Command::UpdateWebhook {
            app: app.clone(),
            id: id.clone(),
            change,
        })
        .await?;
    Ok(data(view(&find(&services, &app, &id)?)))
}

/// `DELETE /apps/:app/webhooks/:id`.
pub async fn delete(
    State(services): State<Services>,
    who: Principal,
    Path((app, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let app = authorize_app(&who, &app, Action::ManageWebhooks)?;
    services
        .tenants
        .write(Command::DeleteWebhook { app, id })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /apps/:app/webhooks/:id/rotate-secret` `{"overlapSeconds"?}` -> the new `secret`
/// (shown once); the old one signs too until `previousSecretValidUntilMs`.
pub async fn rotate_secret(
    State(services): State<Services>,
    who: Principal,
    Path((app, id)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    let app = authorize_app(&who, &app, Action::ManageWebhooks)?;
    find(&services, &app, &id)?;
    // The body is optional.
    let req: Rotate = if body.iter().all(u8::is_ascii_whitespace) {
        Rotate::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("body: {e}")))?
    };
    let overlap = req.overlap_seconds.unwrap_or(DEFAULT_OVERLAP_SECS);
    if overlap > MAX_OVERLAP_SECS {
        return Err(ApiError::BadRequest(format!(
            "overlapSeconds must be 0 to {MAX_OVERLAP_SECS}"
        )));
    }
    let secret = random_token("whsec_", 32);
    let until = unix_now_ms() + overlap * 1000;
    let change = WebhookChange {
        secret: Some(services.tenants.seal_webhook_secret(&id, &secret)?),
        previous_until_ms: Some(until),
        ..Default::default()
    };
    services
        .tenants
        .write(Command::UpdateWebhook {
            app: app.clone(),
            id: id.clone(),
            change,
        })
        .await?;
    let mut body = view(&find(&services, &app, &id)?);
    body["secret"] = Value::String(secret);
    body["previousSecretValidUntilMs"] = json!(until);
    Ok(data(body))
}

/// `GET /apps/:app/webhooks/:id/deliveries`: the newest attempts first (`id` is the event id,
/// `status` `retrying` | `delivered` | `failed`).
pub async fn deliveries(
    State(services): State<Services>,
    who: Principal,
    Path((app, id)): Path<(String, String)>,
) -> Result<axum::Json<Value>, ApiError> {
    let app = authorize_app(&who, &app, Action::ManageWebhooks)?;
    let w = find(&services, &app, &id)?;
    let out: Vec<Value> = w
        .deliveries
        .iter()
        .rev()
        .map(|d| {
            json!({
                "id": event_id(d.n),
                "type": d.kind,
                "status": d.status,
                "attempts": d.attempts,
                "lastStatus": d.last_status,
                "lastLatencyMs": d.last_latency_ms,
                "lastError": d.last_error,
                "nextAttemptAtMs": d.next_attempt_at_ms,
                "updatedAtMs": d.updated_at_ms,
                "node": d.node,
            })
        })
        .collect();
    Ok(data(out))
}

/// `POST /apps/:app/webhooks/:id/deliveries/:delivery/redeliver`: sends that event again.
pub async fn redeliver(
    State(services): State<Services>,
    who: Principal,
    Path((app, id, delivery)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    let app = authorize_app(&who, &app, Action::ManageWebhooks)?;
    let n = event_number(&delivery)
        .ok_or_else(|| ApiError::BadRequest(format!("{delivery:?} is not an event id")))?;
    match services
        .tenants
        .write_answer(Command::Redeliver { app, id, n })
        .await?
    {
        CommandResponse::Ok => Ok(StatusCode::ACCEPTED),
        CommandResponse::Refused { why } => Err(ApiError::Conflict(why)),
        other => Err(ApiError::Internal(format!("unexpected answer {other:?}"))),
    }
}

/// `GET /apps/:app/events?after=<event id>&limit=` (`read`): the app's events, oldest first,
/// the last [`MAX_EVENTS_PER_APP`] kept; `next` is the `after` of the next page.
pub async fn events(
    State(services): State<Services>,
    who: Principal,
    Path(app): Path<String>,
    Query(q): Query<EventsQuery>,
) -> Result<axum::Json<Value>, ApiError> {
    let app = authorize_app(&who, &app, Action::Read)?;
    load_app(&services.tenants, &app)?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_EVENTS_PER_APP).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be 1 to {MAX_EVENTS_PER_APP}"
        )));
    }
    let after = match q.after.as_deref() {
        None | Some("") => 0,
        Some(a) => event_number(a)
            .ok_or_else(|| ApiError::BadRequest(format!("after: {a:?} is not an event id")))?,
    };
    let (page, more, dropped) = services.tenants.read(|s| {
        let Some(a) = s.events.app(&app) else {
            return (Vec::new(), false, 0);
        };
        let mut it = a.log.iter().filter(|e| e.n > after);
        let page: Vec<Value> = it.by_ref().take(limit).map(|e| e.body()).collect();
        (page, it.next().is_some(), a.dropped)
    });
    let next = page
        .last()
        .and_then(|e| e["id"].as_str())
        .map(str::to_string);
    Ok(axum::Json(json!({
        "data": page,
        "next": next.clone().filter(|_| more),
        "last": next,
        "dropped": dropped,
    })))
}
