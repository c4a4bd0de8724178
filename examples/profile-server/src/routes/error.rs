//! Errors as the API answers them: `{"error": "..."}` with a status.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

/// An error answered as `{"error": "..."}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl From<presign::Error> for ApiError {
    fn from(e: presign::Error) -> Self {
        match e {
            presign::Error::InvalidUserId { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, e.to_string())
            }
            presign::Error::NoPicture { .. } => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
            // The message names the failing tier or store, never a credential.
            other => ApiError::new(StatusCode::BAD_GATEWAY, other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        if self.status == StatusCode::REQUEST_TIMEOUT
            || self.status == StatusCode::PAYLOAD_TOO_LARGE
        {
            // The rest of the body is not read: the connection cannot be reused.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}
