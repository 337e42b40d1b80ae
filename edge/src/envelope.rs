//! The JSON error envelope of every HTTP answer of the playback side (`{"error": {"code",
//! "message"}}` with a real status), and the strict parsing of the app and room in a path.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use streamhub_shared::{AppName, RoomName};

/// The stable `code` of a status.
pub fn code(status: StatusCode) -> &'static str {
    match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::NOT_ACCEPTABLE => "not_acceptable",
        StatusCode::CONFLICT => "conflict",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        _ => "bad_request",
    }
}

/// An error answer with the envelope; 503s carry `Retry-After: 1`.
pub fn error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": { "code": code(status), "message": message } });
    let mut resp = (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            ),
        ],
        body.to_string(),
    )
        .into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

/// The app and room of a path, checked; the error says what is wrong.
pub fn room_names(app: &str, room: &str) -> Result<(AppName, RoomName), String> {
    let app = AppName::new(app).map_err(|e| e.to_string())?;
    let room = RoomName::new(room).map_err(|e| e.to_string())?;
    Ok((app, room))
}
