//! The API's error type and its one mapping to HTTP: every error is
//! `{"error": "<message>"}` with `content-type: application/json`. The message is the
//! error's `Display` (thiserror), so the text clients see is written once, here.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::read::ReadError;
use crate::write::WriteError;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("Cookie not found")]
    NotFound,
    #[error("Not Found")]
    RouteNotFound,
    #[error("Method Not Allowed")]
    MethodNotAllowed,
    #[error("Cookie already exists")]
    Conflict,
    #[error("Precondition Failed")]
    PreconditionFailed,
    /// An `Idempotency-Key` used before with a different request.
    #[error("Idempotency key reused with a different request")]
    KeyReused,
    #[error("Payload too large")]
    PayloadTooLarge,
    /// No client token, or an unknown one (api.md section 12).
    #[error("Unauthorized")]
    Unauthorized,
    /// A token whose role does not cover the request.
    #[error("Forbidden")]
    Forbidden,
    /// The request body did not arrive within the server's body timeout.
    #[error("Request timeout")]
    BodyTimeout,
    /// Too many requests of an expensive kind at once; retry later.
    #[error("Too many concurrent requests: {0}; retry later")]
    Busy(&'static str),
    /// No leader within the timeout: nothing happened, retry later.
    #[error("No leader available")]
    NoLeader,
    /// This node is behind the read index and did not catch up in time.
    #[error("Node has not applied the read index {0} yet")]
    Lagging(u64),
    /// A write that was not applied and will not be: the node is overloaded, or the write
    /// timed out before it could be proposed. Retry later.
    #[error("Write not applied: {0}; retry later")]
    NotApplied(String),
    /// A create or an update refused because the leader's disk is short of its reserve;
    /// nothing was applied (deletes still go through).
    #[error("Insufficient storage: {0}")]
    InsufficientStorage(String),
    /// A write whose outcome is unknown: it may or may not have been applied.
    #[error("Write outcome unknown: it may or may not have been applied ({0})")]
    OutcomeUnknown(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn bad_request(msg: impl Into<String>) -> Self {
        ApiError::BadRequest(msg.into())
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        ApiError::Internal(e.to_string())
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound | ApiError::RouteNotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict => StatusCode::CONFLICT,
            ApiError::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            ApiError::KeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::NoLeader
            | ApiError::Lagging(_)
            | ApiError::NotApplied(_)
            | ApiError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::OutcomeUnknown(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::NoLeader => ApiError::NoLeader,
            WriteError::Unknown(why) => ApiError::OutcomeUnknown(why),
            WriteError::NotApplied(why) => ApiError::NotApplied(why),
            WriteError::NoRoom(why) => ApiError::InsufficientStorage(why),
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

impl From<cookie_raft::Invalid> for ApiError {
    fn from(e: cookie_raft::Invalid) -> Self {
        ApiError::BadRequest(e.to_string())
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
        let body = serde_json::json!({ "error": self.to_string() }).to_string();
        let mut resp = json_bytes(self.status(), body);
        if matches!(
            self,
            ApiError::NoLeader | ApiError::Lagging(_) | ApiError::NotApplied(_) | ApiError::Busy(_)
        ) {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if matches!(self, ApiError::Unauthorized) {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_error_is_json_with_its_status_and_message() {
        for (err, status, message) in [
            (ApiError::NotFound, 404, "Cookie not found"),
            (ApiError::Conflict, 409, "Cookie already exists"),
            (ApiError::NoLeader, 503, "No leader available"),
            (
                ApiError::Lagging(7),
                503,
                "Node has not applied the read index 7 yet",
            ),
            (
                ApiError::OutcomeUnknown("timeout".into()),
                504,
                "Write outcome unknown: it may or may not have been applied (timeout)",
            ),
        ] {
            let resp = err.into_response();
            assert_eq!(resp.status().as_u16(), status);
            assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
            let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
                .await
                .unwrap();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["error"], message);
        }
    }
}
