//! The REST API under `/api/v1`. Each handler takes the services it uses; who may call it is
//! decided by its [`Principal`] checks; every body follows the one body rule ([`Json`]); every
//! call that may change state is in the audit log ([`crate::audit`]).

mod apps;
mod auth;
mod cluster;
mod ingress;
mod keys;
mod recordings;
mod rooms;
mod tokens;
mod users;
mod webhooks;
mod ws_ingest;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

pub use auth::{Authz, Caller, Principal};
pub use streamhub_media::http::{data, data_with, ApiError, Json, JSON_BODY_LIMIT};

use crate::services::Services;

/// The `/api/v1` routes.
pub fn router(services: Services) -> Router {
    let v1 = Router::new()
        .route("/auth/login", post(auth::login))
        .route("/auth/logout", post(auth::logout))
        .route("/auth/password", post(auth::change_password))
        .route("/auth/rotate-session-key", post(auth::rotate_session_key))
        .route("/api-keys", post(keys::create).get(keys::list))
        .route("/api-keys/{id}", axum::routing::delete(keys::delete))
        .route("/apps", post(apps::create).get(apps::list))
        .route(
            "/apps/{app}",
            get(apps::get).patch(apps::update).delete(apps::delete),
        )
        .route("/apps/{app}/tokens", post(tokens::mint))
        .route("/apps/{app}/play-tokens", post(tokens::mint_play))
        .route(
            "/apps/{app}/quotas",
            get(apps::get_quotas).put(apps::put_quotas),
        )
        .route("/users", post(users::create).get(users::list))
        .route(
            "/users/{username}",
            axum::routing::patch(users::update).delete(users::delete),
        )
        .route("/apps/{app}/rotate-keys", post(apps::rotate_keys))
        .route(
            "/apps/{app}/ingress",
            post(ingress::create).get(ingress::list),
        )
        .route(
            "/apps/{app}/ingress/{id}",
            get(ingress::get).delete(ingress::delete),
        )
        .route("/apps/{app}/rooms", get(rooms::list).post(rooms::create))
        .route(
            "/apps/{app}/rooms/{room}",
            get(rooms::get).delete(rooms::delete),
        )
        .route("/apps/{app}/rooms/{room}/go-live", post(rooms::go_live))
        .route("/apps/{app}/rooms/{room}/stop-live", post(rooms::stop_live))
        .route(
            "/apps/{app}/rooms/{room}/recording",
            post(recordings::start).delete(recordings::stop),
        )
        .route(
            "/apps/{app}/storage",
            get(recordings::get_storage)
                .put(recordings::put_storage)
                .delete(recordings::delete_storage),
        )
        .route("/apps/{app}/storage/test", post(recordings::test_storage))
        .route("/apps/{app}/recordings", get(recordings::list))
        .route(
            "/apps/{app}/recordings/{id}",
            get(recordings::get).delete(recordings::delete),
        )
        .route(
            "/apps/{app}/ws-ingest",
            post(ws_ingest::create).get(ws_ingest::list),
        )
        .route(
            "/apps/{app}/ws-ingest/{id}",
            axum::routing::delete(ws_ingest::delete),
        )
        .route(
            "/apps/{app}/webhooks",
            post(webhooks::create).get(webhooks::list),
        )
        .route(
            "/apps/{app}/webhooks/{id}",
            get(webhooks::get)
                .patch(webhooks::update)
                .delete(webhooks::delete),
        )
        .route(
            "/apps/{app}/webhooks/{id}/rotate-secret",
            post(webhooks::rotate_secret),
        )
        .route(
            "/apps/{app}/webhooks/{id}/deliveries",
            get(webhooks::deliveries),
        )
        .route(
            "/apps/{app}/webhooks/{id}/deliveries/{delivery}/redeliver",
            post(webhooks::redeliver),
        )
        .route("/apps/{app}/events", get(webhooks::events))
        .route("/cluster", get(cluster::status))
        .route("/cluster/join", post(cluster::join))
        .route(
            "/cluster/join-tokens",
            post(cluster::create_join_token).get(cluster::list_join_tokens),
        )
        .route(
            "/cluster/join-tokens/{id}",
            axum::routing::delete(cluster::delete_join_token),
        )
        .route("/cluster/nodes/{name}/remove", post(cluster::remove))
        .route(
            "/cluster/nodes/{name}/drain",
            post(cluster::drain).delete(cluster::drain),
        )
        .route("/nodes", get(cluster::nodes))
        .fallback(not_found)
        .layer(axum::middleware::from_fn(crate::audit::layer))
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT))
        .with_state(services.clone());
    // A recording's VOD playlist: public, the URL carries its own signature and expiry.
    let vod = Router::new()
        .route("/vod/{app}/{id}/{file}", get(recordings::playlist))
        .with_state(services);
    Router::new().nest("/api/v1", v1).merge(vod)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("route".into())
}
