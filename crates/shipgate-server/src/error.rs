//! Every error the HTTP surface returns, as RFC 9457 `application/problem+json`. Database and
//! internal errors are logged and answered with a generic 500: driver text never reaches a body.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;

use shipgate_domain::config::{ConfigError, FieldError};
use shipgate_store::StoreError;

/// An error answered to a client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 401: no or bad credentials (the message says which).
    #[error("{0}")]
    Unauthorized(String),
    /// 403: authenticated, but not allowed to do this here.
    #[error("{0}")]
    Forbidden(String),
    /// 429: too many requests; try again after `retry_after` seconds.
    #[error("{detail}")]
    TooManyRequests {
        /// What was limited.
        detail: String,
        /// Seconds until a request will be accepted.
        retry_after: u64,
    },
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 409: conflicts with stored state.
    #[error("{0}")]
    Conflict(String),
    /// 422: the request is refused in the current state, or a field is invalid.
    #[error("{detail}")]
    Unprocessable {
        /// What is wrong.
        detail: String,
        /// The fields at fault.
        errors: Vec<FieldError>,
    },
    /// 400: malformed request (bad JSON, bad query).
    #[error("{0}")]
    BadRequest(String),
    /// 415.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 503: a dependency is down.
    #[error("{0}")]
    Unavailable(String),
    /// 500: logged, never shown.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// A 422 naming one field.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        let message = message.into();
        let field = field.into();
        ApiError::Unprocessable {
            detail: format!("{field}: {message}"),
            errors: vec![FieldError { field, message }],
        }
    }
}

/// An error as answered: RFC 9457 problem details (`application/problem+json`).
#[derive(Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// Always `about:blank`: the status code and `title` say what kind of error it is.
    #[serde(rename = "type")]
    pub kind: String,
    /// The status code's reason phrase, such as `Not Found`.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong, in words a person can act on (never driver or internal text).
    pub detail: String,
    /// The fields at fault, for invalid input (422); absent otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, title) = match &self {
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "Unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "Forbidden"),
            ApiError::TooManyRequests { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "Too Many Requests")
            }
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "Not Found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "Conflict"),
            ApiError::Unprocessable { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "Unprocessable Content")
            }
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "Bad Request"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "Unsupported Media Type")
            }
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error"),
        };
        let detail = match &self {
            ApiError::Internal(message) => {
                tracing::error!(error = %message, "internal error");
                "something went wrong on our side; it has been logged".to_owned()
            }
            other => other.to_string(),
        };
        let retry_after = match &self {
            ApiError::TooManyRequests { retry_after, .. } => Some(*retry_after),
            _ => None,
        };
        let errors = match self {
            ApiError::Unprocessable { errors, .. } => errors,
            _ => Vec::new(),
        };
        let body = Problem {
            kind: "about:blank".to_owned(),
            title: title.to_owned(),
            status: status.as_u16(),
            detail,
            errors,
        };
        let mut response = (status, axum::Json(json!(body))).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"shipgate\""),
            );
        }
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        response
    }
}

/// SQLSTATE `character_not_in_repertoire`: text with a NUL byte.
const UNSTORABLE_TEXT: &str = "22021";
/// SQLSTATE `untranslatable_character`: `\u0000` inside a `jsonb` string.
const UNSTORABLE_JSON_TEXT: &str = "22P05";

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound(what) => ApiError::NotFound(format!("{what} not found")),
            StoreError::Conflict(message) => ApiError::Conflict(message),
            StoreError::Refused(message) => ApiError::Unprocessable {
                detail: message,
                errors: Vec::new(),
            },
            StoreError::Fenced => {
                ApiError::Conflict("the rollout changed meanwhile; try again".into())
            }
            StoreError::Database(sqlx::Error::PoolTimedOut) => {
                ApiError::Unavailable("the database is not answering".into())
            }
            // Text Postgres cannot store (a NUL character, in a name or inside JSON) is the
            // request's fault wherever it was sent: a path segment, a query or a body.
            StoreError::Database(sqlx::Error::Database(error))
                if matches!(
                    error.code().as_deref(),
                    Some(UNSTORABLE_TEXT | UNSTORABLE_JSON_TEXT)
                ) =>
            {
                ApiError::BadRequest("text may not contain NUL (\\u0000) characters".into())
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<ConfigError> for ApiError {
    fn from(error: ConfigError) -> Self {
        ApiError::Unprocessable {
            detail: error.to_string(),
            errors: error.errors,
        }
    }
}

/// Turns the framework's own plain-text rejections (bad query strings, bad path parameters,
/// unknown routes, wrong methods, oversized bodies) into problem+json, so every error a client
/// of `/api/v1` sees has the same shape.
pub async fn problem_for_plain_errors(response: Response) -> Response {
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/problem+json"));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_owned();
    let detail = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text
    };
    let title = status.canonical_reason().unwrap_or("Error");
    let mut rebuilt = (
        status,
        axum::Json(json!({ "type": "about:blank", "title": title, "status": status.as_u16(), "detail": detail })),
    )
        .into_response();
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            rebuilt.headers_mut().insert(name.clone(), value.clone());
        }
    }
    rebuilt.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    rebuilt
}
