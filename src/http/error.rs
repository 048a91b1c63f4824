//! The API's error type and its one mapping to HTTP: every error is
//! `{"error": "<message>"}` with `content-type: application/json`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::read::ReadError;
use crate::write::WriteError;

#[derive(Debug, Clone, PartialEq)]
pub enum ApiError {
    BadRequest(String),
    NotFound,
    RouteNotFound,
    MethodNotAllowed,
    Conflict,
    PreconditionFailed,
    PayloadTooLarge,
    Unauthorized,
    /// No leader within the timeout: nothing happened, retry later.
    NoLeader,
    /// This node is behind the read index and did not catch up in time.
    Lagging(u64),
    /// A write whose outcome is unknown: it may or may not have been applied.
    OutcomeUnknown(String),
    Internal(String),
}

impl ApiError {
    pub fn bad_request(msg: impl Into<String>) -> Self {
        ApiError::BadRequest(msg.into())
    }

    fn status_and_message(&self) -> (StatusCode, String) {
        match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m.clone()),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "Cookie not found".into()),
            ApiError::RouteNotFound => (StatusCode::NOT_FOUND, "Not Found".into()),
            ApiError::MethodNotAllowed => {
                (StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed".into())
            }
            ApiError::Conflict => (StatusCode::CONFLICT, "Cookie already exists".into()),
            ApiError::PreconditionFailed => (
                StatusCode::PRECONDITION_FAILED,
                "Precondition Failed".into(),
            ),
            ApiError::PayloadTooLarge => {
                (StatusCode::PAYLOAD_TOO_LARGE, "Payload too large".into())
            }
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "Unauthorized".into()),
            ApiError::NoLeader => (
                StatusCode::SERVICE_UNAVAILABLE,
                "No leader available".into(),
            ),
            ApiError::Lagging(i) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("Node has not applied the read index {i} yet"),
            ),
            ApiError::OutcomeUnknown(why) => (
                StatusCode::GATEWAY_TIMEOUT,
                format!("Write outcome unknown: it may or may not have been applied ({why})"),
            ),
            ApiError::Internal(m) => (StatusCode::INTERNAL_SERVER_ERROR, m.clone()),
        }
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::NoLeader => ApiError::NoLeader,
            WriteError::Unknown(why) => ApiError::OutcomeUnknown(why),
        }
    }
}

impl From<ReadError> for ApiError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::NoLeader => ApiError::NoLeader,
            ReadError::Lagging(i) => ApiError::Lagging(i),
        }
    }
}

/// A JSON reply from pre-serialised bytes.
pub fn json_bytes(status: StatusCode, body: impl Into<axum::body::Body>) -> Response {
    let mut resp = (status, body.into()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = self.status_and_message();
        let body = serde_json::json!({ "error": message }).to_string();
        let mut resp = json_bytes(status, body);
        if matches!(self, ApiError::NoLeader | ApiError::Lagging(_)) {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}
