//! The API error envelope: `{"error":{"code","message"}}` with a real HTTP status.

use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Every way an API call can fail; each maps to one status and one stable `code`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    Conflict(String),
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("the cluster is not available: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// HTTP status and stable machine-readable code.
    pub fn status_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::PayloadTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_code();
        if status.is_server_error() {
            tracing::error!(error = %self, "api error");
        }
        let body = json!({ "error": { "code": code, "message": self.to_string() } });
        (status, axum::Json(body)).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::MissingJsonContentType(_) => {
                ApiError::UnsupportedMediaType("expected Content-Type: application/json".into())
            }
            JsonRejection::BytesRejection(b) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::PayloadTooLarge {
                    limit: super::BODY_LIMIT,
                }
            }
            other => ApiError::BadRequest(other.body_text()),
        }
    }
}

/// A refused publisher (WebSocket device, WHIP): 401 for a bad key, 409 for a room live
/// elsewhere or from another publisher, 503 when the cluster cannot place it.
impl From<crate::rooms::PublishError> for ApiError {
    fn from(e: crate::rooms::PublishError) -> Self {
        use crate::rooms::PublishError;
        match e {
            PublishError::UnknownKey => ApiError::Unauthorized(e.to_string()),
            PublishError::RoomBusy { .. } | PublishError::LiveElsewhere { .. } => {
                ApiError::Conflict(e.to_string())
            }
            PublishError::Unavailable(m) => ApiError::Unavailable(m),
        }
    }
}

impl From<streamhub_shared::NameError> for ApiError {
    fn from(e: streamhub_shared::NameError) -> Self {
        ApiError::BadRequest(e.to_string())
    }
}

/// A JSON body whose rejections use the error envelope.
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

/// The success envelope: `{"data": ...}`.
pub fn data<T: serde::Serialize>(value: T) -> axum::Json<serde_json::Value> {
    axum::Json(json!({ "data": value }))
}

/// `data` with a status other than 200.
pub fn data_with(status: StatusCode, value: impl serde::Serialize) -> Response {
    (status, data(value)).into_response()
}
