//! The HTTP conventions of every node, each in one place: the error envelope (`{"error":
//! {"code", "message"}}` with a real status) and the success envelope (`{"data": …}`), the
//! strict JSON body rule (fields this version does not know are refused, by name), the bearer
//! credential of a request, the names in a path, and serving a router until shutdown.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::json;
use streamhub_shared::{AppName, RoomName};

/// Largest JSON body a write endpoint accepts.
pub const JSON_BODY_LIMIT: usize = 64 * 1024;

/// Every way an HTTP call can fail; each maps to one status, and each status to one stable
/// `code` ([`code`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    NotAcceptable(String),
    #[error("{0} already exists")]
    Conflict(String),
    /// A conflict that may clear by itself (a room live on an origin that may be declared dead).
    #[error("{message}")]
    ConflictRetry {
        message: String,
        /// What `Retry-After` says.
        retry_after_secs: u64,
    },
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{message}")]
    TooManyRequests {
        message: String,
        /// What `Retry-After` says.
        retry_after_secs: u64,
    },
    #[error("the cluster is not available: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            ApiError::Conflict(_) | ApiError::ConflictRetry { .. } => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// HTTP status and stable machine-readable code.
    pub fn status_code(&self) -> (StatusCode, &'static str) {
        let status = self.status();
        (status, code(status))
    }
}

/// The stable `code` of an error status.
pub fn code(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::NOT_ACCEPTABLE => "not_acceptable",
        StatusCode::CONFLICT => "conflict",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::TOO_MANY_REQUESTS => "too_many_requests",
        StatusCode::TOO_EARLY => "not_live_yet",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    }
}

/// The error envelope with `status`: JSON, never cached, and `Retry-After: 1` on a 503.
pub fn envelope(status: StatusCode, message: &str) -> Response {
    if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
        tracing::error!(%status, error = %message, "server error");
    }
    let body = json!({ "error": { "code": code(status), "message": message } });
    let mut resp = (status, axum::Json(body)).into_response();
    let headers = resp.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

/// An error answer of a playback route (HLS, MJPEG, WHEP, steering): the envelope, readable by
/// a player on any origin.
pub fn error(status: StatusCode, message: &str) -> Response {
    let mut resp = envelope(status, message);
    resp.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    resp
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = envelope(self.status(), &self.to_string());
        if let ApiError::TooManyRequests {
            retry_after_secs, ..
        }
        | ApiError::ConflictRetry {
            retry_after_secs, ..
        } = self
        {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        resp
    }
}

impl From<streamhub_shared::NameError> for ApiError {
    fn from(e: streamhub_shared::NameError) -> Self {
        ApiError::BadRequest(e.to_string())
    }
}

/// The success envelope: `{"data": ...}`.
pub fn data<T: serde::Serialize>(value: T) -> axum::Json<serde_json::Value> {
    axum::Json(json!({ "data": value }))
}

/// `data` with a status other than 200.
pub fn data_with(status: StatusCode, value: impl serde::Serialize) -> Response {
    (status, data(value)).into_response()
}

/// A JSON request body under the one body rule of every write endpoint: `Content-Type:
/// application/json`, at most the router's body limit, and no field this version does not know
/// (a 400 that names each one, so an operator never believes an unknown setting applied).
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(ApiError::UnsupportedMediaType(
                "expected Content-Type: application/json".into(),
            ));
        }
        let body = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge {
                    limit: JSON_BODY_LIMIT,
                }
            } else {
                ApiError::BadRequest(e.body_text())
            }
        })?;
        parse_body(&body).map(Json)
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| {
            let m = m.trim();
            m.eq_ignore_ascii_case("application/json")
                || (m.len() > 5 && m[m.len() - 5..].eq_ignore_ascii_case("+json"))
        })
}

/// Parses a JSON body under the body rule (for endpoints whose body is optional and read as
/// bytes): invalid JSON and unknown fields are a 400 that says what is wrong.
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut unknown = Vec::new();
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_ignored::deserialize(&mut de, |path| unknown.push(path.to_string()))
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?;
    de.end()
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?;
    if !unknown.is_empty() {
        let list = unknown
            .iter()
            .map(|p| format!("{p:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(ApiError::BadRequest(format!(
            "unknown field{} {list}: not a setting of this version, nothing was changed",
            if unknown.len() == 1 { "" } else { "s" }
        )));
    }
    Ok(value)
}

/// The bearer credential of a request (`Authorization: Bearer <credential>`, the scheme in any
/// case), if it has a non-empty one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credential) = value.trim().split_once(' ')?;
    let credential = credential.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !credential.is_empty()).then_some(credential)
}

/// The client's address (`0.0.0.0:0` when the server was started without connect info, as some
/// tests are): the one place per-address limits read it from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        let addr = parts
            .extensions
            .get::<axum::extract::ConnectInfo<SocketAddr>>()
            .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |c| c.0);
        Ok(ClientAddr(addr))
    }
}

/// The app and room of a path, checked; the error says what is wrong.
pub fn room_names(app: &str, room: &str) -> Result<(AppName, RoomName), String> {
    let app = AppName::new(app).map_err(|e| e.to_string())?;
    let room = RoomName::new(room).map_err(|e| e.to_string())?;
    Ok((app, room))
}

/// Compares two secrets in time that depends only on their lengths (not on where they differ).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "camelCase")]
    struct Patch {
        display_name: Option<String>,
        #[serde(default)]
        tags: Vec<String>,
    }

    #[test]
    fn unknown_fields_are_refused_by_name() {
        let ok: Patch = parse_body(br#"{"displayName":"x","tags":["a"]}"#).unwrap();
        assert_eq!(ok.display_name.as_deref(), Some("x"));
        let err = parse_body::<Patch>(br#"{"playback":"token","bogus":1}"#).unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        assert!(
            msg.contains("\"playback\"") && msg.contains("\"bogus\""),
            "{msg}"
        );
        assert!(parse_body::<Patch>(b"{} trailing").is_err());
        assert!(parse_body::<Patch>(b"not json").is_err());
    }

    #[test]
    fn bearer_takes_the_scheme_in_any_case_and_refuses_empty_ones() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::AUTHORIZATION, v.parse().unwrap());
            m
        };
        assert_eq!(bearer(&h("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&h("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(&h("Bearer ")), None);
        assert_eq!(bearer(&h("Basic abc")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }

    #[test]
    fn one_code_per_status() {
        assert_eq!(code(StatusCode::INTERNAL_SERVER_ERROR), "internal");
        assert_eq!(code(StatusCode::SERVICE_UNAVAILABLE), "unavailable");
        assert_eq!(
            ApiError::Internal("x".into()).status_code(),
            (StatusCode::INTERNAL_SERVER_ERROR, "internal")
        );
        let resp = error(StatusCode::SERVICE_UNAVAILABLE, "starting");
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
        assert_eq!(resp.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    }
}
