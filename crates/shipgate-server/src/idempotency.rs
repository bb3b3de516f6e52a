//! `Idempotency-Key` on every `POST` of the API: the first request with a key runs and its
//! answer is kept for a day; the same key with the same request (method, path, body) gets that
//! answer again (marked `Idempotent-Replayed: true`) without running anything; the same key with
//! another request is refused with 422; a retry while the first is still running gets 409.
//! Keys belong to the credential that sent them, so two clients never see each other's answers.
//! Answers that did not run to completion (5xx, refused credentials, rate limits) are not kept,
//! so a retry runs again.

use axum::body::{to_bytes, Body};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use shipgate_store::auth::{self, Claimed};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::{AppState, BODY_LIMIT};

/// The request header.
pub const HEADER: &str = "idempotency-key";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Middleware for the API router.
pub async fn idempotent(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let Some(key) = request.headers().get(HEADER) else {
        return next.run(request).await;
    };
    let key = match key.to_str() {
        Ok(key) if !key.is_empty() && key.len() <= 255 => key.to_owned(),
        _ => {
            return ApiError::BadRequest(
                "Idempotency-Key must be 1 to 255 visible ASCII characters".into(),
            )
            .into_response()
        }
    };
    let principal = hex(&Sha256::digest(
        request
            .headers()
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes)
            .unwrap_or(b"anonymous"),
    ));
    let (mut parts, body) = request.into_parts();
    // Only a proven caller may hold a key: an unauthenticated request is refused here, before
    // anything is written (the handler then finds the caller already resolved).
    if let Err(refused) = Caller::from_request_parts(&mut parts, &state).await {
        return refused.into_response();
    }
    let body = match to_bytes(body, BODY_LIMIT).await {
        Ok(body) => body,
        Err(_) => {
            return (StatusCode::PAYLOAD_TOO_LARGE, "the body is too large").into_response();
        }
    };
    let mut digest = Sha256::new();
    digest.update(parts.method.as_str());
    digest.update(b"\n");
    digest.update(parts.uri.path().as_bytes());
    digest.update(b"\n");
    digest.update(parts.uri.query().unwrap_or("").as_bytes());
    digest.update(b"\n");
    digest.update(&body);
    let request_hash = hex(&digest.finalize());

    match auth::claim_idempotency_key(&state.pool, &principal, &key, &request_hash).await {
        Err(error) => return ApiError::from(error).into_response(),
        Ok(Claimed::Mismatch) => {
            return ApiError::field(
                "Idempotency-Key",
                "this key was already used for a different request; use a new key for new requests",
            )
            .into_response()
        }
        Ok(Claimed::InProgress) => {
            let mut response = ApiError::Conflict(
                "a request with this Idempotency-Key is still running; retry shortly".into(),
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return response;
        }
        Ok(Claimed::Replay { status, response }) => return replay(status, &response),
        Ok(Claimed::Fresh) => {}
    }

    let response = next.run(Request::from_parts(parts, Body::from(body))).await;
    let status = response.status();
    let keep = !(status.is_server_error()
        || matches!(
            status,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS
        ));
    if !keep {
        if let Err(error) = auth::release_idempotency_key(&state.pool, &principal, &key).await {
            tracing::warn!(%error, "could not release an idempotency key");
        }
        return response;
    }
    let (parts, body) = response.into_parts();
    let bytes = to_bytes(body, usize::MAX).await.unwrap_or_default();
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let stored_body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    let stored = json!({ "content_type": content_type, "body": stored_body });
    if let Err(error) =
        auth::finish_idempotent(&state.pool, &principal, &key, status.as_u16(), &stored).await
    {
        tracing::warn!(%error, "could not store an idempotent answer");
    }
    Response::from_parts(parts, Body::from(bytes))
}

fn replay(status: u16, stored: &Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let content_type = stored["content_type"]
        .as_str()
        .unwrap_or("application/json");
    let body = match &stored["body"] {
        Value::Null => Vec::new(),
        Value::String(text) if !content_type.contains("json") => text.clone().into_bytes(),
        other => serde_json::to_vec(other).unwrap_or_default(),
    };
    let mut response = (status, body).into_response();
    if let Ok(value) = HeaderValue::from_str(content_type) {
        if !content_type.is_empty() {
            response.headers_mut().insert(header::CONTENT_TYPE, value);
        }
    }
    response
        .headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    response
}
