//! The HTTP side of WHEP (every node) and the pieces WHIP (origins) shares with it: an offer in
//! (`application/sdp`), `201 Created` with the answer and the session's `Location`, `DELETE` on
//! that resource to end it, `GET` on a WHEP resource to ask whether it still lives (`204`, or
//! `404`: a player whose media stopped tells a publisher pause from a lost node), `405` on `PATCH` (no trickle needed: the node is ICE-lite and learns
//! the client's address from its checks), and CORS so a page on another origin can use them.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use tower_http::cors::{Any, CorsLayer};

use super::sdp::OfferError;
use super::{OpenError, Opened, Role, WebRtc};
use crate::http::{error, room_names};
use crate::mjpeg::MediaLookup;

/// CORS for WHIP/WHEP resources: any origin, the methods and headers the protocols use, and
/// `Location` readable by the page.
pub fn cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::DELETE,
            Method::PATCH,
            Method::OPTIONS,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::IF_MATCH,
        ])
        .expose_headers([header::LOCATION, header::ETAG, header::LINK])
}

/// The offer of a request, or the answer to give: the body must be `application/sdp` text.
pub fn offer_of(headers: &HeaderMap, body: &Bytes) -> Result<String, Box<Response>> {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ctype
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/sdp"))
    {
        return Err(Box::new(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the offer must be sent as Content-Type: application/sdp",
        )));
    }
    String::from_utf8(body.to_vec()).map_err(|_| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            "the offer is not UTF-8 text",
        ))
    })
}

/// The local address a client reached, as far as the `Host` header tells (an IP literal).
pub fn reached_ip(headers: &HeaderMap) -> Option<IpAddr> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let host = host
        .rsplit_once(':')
        .filter(|(h, p)| !h.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
        .map_or(host, |(h, _)| h);
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// The answer to an offer, or the error to give.
pub fn answered(
    result: Result<Opened, OpenError>,
    location: impl FnOnce(u64) -> String,
) -> Response {
    match result {
        Ok(opened) => {
            let mut resp = (StatusCode::CREATED, opened.answer).into_response();
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/sdp"),
            );
            if let Ok(v) = HeaderValue::from_str(&location(opened.id)) {
                h.insert(header::LOCATION, v);
            }
            resp
        }
        Err(OpenError::Offer(e @ OfferError::Malformed(_))) => {
            error(StatusCode::BAD_REQUEST, &e.to_string())
        }
        Err(OpenError::Offer(e @ OfferError::NoCodec(_))) => {
            error(StatusCode::NOT_ACCEPTABLE, &e.to_string())
        }
        Err(e @ OpenError::Busy(_)) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        Err(e @ OpenError::TooManyPending(_)) => {
            let mut resp = error(StatusCode::TOO_MANY_REQUESTS, &e.to_string());
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("15"));
            resp
        }
        Err(e @ OpenError::Negotiation(_)) => error(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

/// `DELETE` on a session resource.
pub fn delete(rtc: &WebRtc, id: &str) -> Response {
    match id.parse::<u64>() {
        Ok(id) if rtc.close(id) => StatusCode::OK.into_response(),
        _ => error(StatusCode::NOT_FOUND, "no such session"),
    }
}

/// `GET` on a session resource: `204` while the session lives, else `404`. Whoever holds the
/// resource URL (its id is random) may ask, as they may end it.
pub fn alive(rtc: &WebRtc, id: &str) -> Response {
    match id.parse::<u64>() {
        Ok(id) if rtc.is_open(id) => (
            StatusCode::NO_CONTENT,
            [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        )
            .into_response(),
        _ => error(StatusCode::NOT_FOUND, "no such session"),
    }
}

/// `PATCH` on a session resource: trickle and ICE restarts are not supported (RFC 9725 4.3.1).
pub async fn patch() -> Response {
    let mut resp = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "trickle ICE is not needed: the answer carries the node's only candidate",
    );
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("DELETE"));
    resp
}

#[derive(Clone)]
struct WhepState {
    rtc: Arc<WebRtc>,
    lookup: Arc<dyn MediaLookup>,
    draining: crate::drain::Draining,
}

/// The WHEP routes: `POST /whep/{app}/{room}`, `GET`/`DELETE`/`PATCH /whep/{app}/{room}/{id}`.
/// A draining node refuses new sessions (503, `Retry-After: 1`): the player asks steering again.
pub fn whep_router(
    rtc: Arc<WebRtc>,
    lookup: Arc<dyn MediaLookup>,
    draining: crate::drain::Draining,
) -> Router {
    Router::new()
        .route("/whep/{app}/{room}", post(whep_offer))
        .route(
            "/whep/{app}/{room}/{id}",
            axum::routing::delete(whep_delete)
                .patch(patch)
                .get(whep_alive),
        )
        .with_state(WhepState {
            rtc,
            lookup,
            draining,
        })
        .layer(cors())
}

async fn whep_offer(
    State(st): State<WhepState>,
    Path((app, room)): Path<(String, String)>,
    connect: axum::http::Extensions,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (connect, extensions) = (connect.get::<ConnectInfo<SocketAddr>>().cloned(), connect);
    let (app, room) = match room_names(&app, &room) {
        Ok(x) => x,
        Err(m) => return error(StatusCode::BAD_REQUEST, &m),
    };
    let offer = match offer_of(&headers, &body) {
        Ok(o) => o,
        Err(r) => return *r,
    };
    if st.draining.is_on() {
        let mut resp = error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "this node is draining: play {app}/{room} from another node (GET /play/{app}/{room} or the playback API chooses one)"
            ),
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return resp;
    }
    let client = connect.map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |c| c.0);
    let Some(viewing) = st.lookup.media(&app, &room, client).await else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("room {app}/{room} is not live"),
        );
    };
    let slot = match st.rtc.reserve(client.ip(), false) {
        Ok(slot) => slot,
        Err(e) => return answered(Err(e), |_| String::new()),
    };
    // The viewer admitted by the access check is counted for as long as the session lives.
    let admitted = extensions.get::<crate::access::AdmittedViewer>().cloned();
    let role = Role::Play {
        media: viewing.media,
        hold: Some(Box::new(viewing.hold)),
        viewer: admitted.map(|a| a.0),
        rejoin: Some(super::Rejoin {
            lookup: st.lookup.clone(),
            app: app.clone(),
            room: room.clone(),
            client,
        }),
    };
    let result = st
        .rtc
        .open_blocking(slot, offer, role, reached_ip(&headers))
        .await;
    answered(result, |id| format!("/whep/{app}/{room}/{id}"))
}

async fn whep_alive(
    State(st): State<WhepState>,
    Path((_app, _room, id)): Path<(String, String, String)>,
) -> Response {
    alive(&st.rtc, &id)
}

async fn whep_delete(
    State(st): State<WhepState>,
    Path((_app, _room, id)): Path<(String, String, String)>,
) -> Response {
    delete(&st.rtc, &id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_reached_ip_from_host() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert_eq!(reached_ip(&h), Some("127.0.0.1".parse().unwrap()));
        h.insert(header::HOST, HeaderValue::from_static("[::1]:80"));
        assert_eq!(reached_ip(&h), Some("::1".parse().unwrap()));
        h.insert(header::HOST, HeaderValue::from_static("example.com:80"));
        assert_eq!(reached_ip(&h), None);
    }

    #[test]
    fn offers_must_be_sdp() {
        let mut h = HeaderMap::new();
        let body = Bytes::from_static(b"v=0\r\n");
        assert_eq!(
            offer_of(&h, &body).unwrap_err().status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/sdp"),
        );
        assert_eq!(offer_of(&h, &body).unwrap(), "v=0\r\n");
    }
}
