//! One error type for every handler and its one mapping to an HTTP status and a JSON body:
//! `{"error": {"kind": "...", "message": "..."}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

/// An API error: its status, a stable machine-readable kind and a message for people.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// Stable kind: `bad_request`, `unauthorized`, `not_found`, `too_large`, `invalid`, `busy`,
    /// `unavailable`, `timeout`, `internal`.
    pub kind: &'static str,
    /// What went wrong, naming the argument or file.
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self { status, kind, message: message.into() }
    }

    /// 400: the request is malformed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 401: the API key is missing or wrong.
    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", "an API key is required (Authorization: Bearer KEY)")
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 413: a body or image over its limit.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
    }

    /// 422: well-formed but unusable (an image that does not decode, a point off the image).
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
    }

    /// 429: the server is full; the client should retry (`Retry-After`).
    pub fn busy(message: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "busy", message)
    }

    /// 503: the capability is not loaded (or the server is shutting down).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// 504: the work did not finish within the request timeout.
    pub fn timeout(seconds: f64) -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, "timeout", format!("not done within the {seconds} s request timeout"))
    }

    /// 500.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl From<vista::Error> for ApiError {
    fn from(e: vista::Error) -> Self {
        use vista::Error as E;
        match &e {
            E::ImageTooLarge { .. } => Self::too_large(e.to_string()),
            E::ImageDecode { .. } | E::InvalidArgument { .. } | E::Tokenizer(_) => Self::invalid(e.to_string()),
            E::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => Self::not_found(e.to_string()),
            _ => Self::internal(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": { "kind": self.kind, "message": self.message } });
        let mut r = (self.status, Json(body)).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS || self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

/// A handler's result.
pub type ApiResult<T> = std::result::Result<T, ApiError>;
