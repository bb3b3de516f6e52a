//! Fakes of the hosting platforms: local axum servers that speak each platform's documented
//! paths, status enums, asynchronous states, error bodies and rate limits (see
//! `shared/providers.md`), with failure injection shared by all of them through [`Chaos`].

pub mod cloudrun;
pub mod generic;
pub mod heroku;
pub mod railway;
pub mod render;
pub mod vercel;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::Value;

/// Failure injection for a fake: the next N requests are rate limited or fail, every request
/// may be slowed down.
#[derive(Default)]
pub struct Chaos {
    /// Requests answered 429 next.
    pub rate_limited: AtomicU32,
    /// Seconds sent in `Retry-After` with those 429s.
    pub retry_after_seconds: AtomicU32,
    /// Requests answered 500 next.
    pub server_errors: AtomicU32,
    /// Delay added to every request, in milliseconds.
    pub delay_ms: AtomicU64,
    /// Requests seen in all (including refused ones).
    pub requests: AtomicU32,
}

impl Chaos {
    /// Rate-limits the next `count` requests with `Retry-After: seconds`.
    pub fn rate_limit(&self, count: u32, seconds: u32) {
        self.retry_after_seconds.store(seconds, Ordering::SeqCst);
        self.rate_limited.store(count, Ordering::SeqCst);
    }

    /// Fails the next `count` requests with 500.
    pub fn fail(&self, count: u32) {
        self.server_errors.store(count, Ordering::SeqCst);
    }

    /// Slows every request down.
    pub fn delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    fn take(counter: &AtomicU32) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// A platform's error body for a status and message.
pub type ErrorBody = fn(u16, &str) -> Value;

#[derive(Clone)]
struct ChaosState {
    chaos: Arc<Chaos>,
    error_body: ErrorBody,
}

async fn chaos_layer(State(state): State<ChaosState>, request: Request, next: Next) -> Response {
    let chaos = &state.chaos;
    chaos.requests.fetch_add(1, Ordering::SeqCst);
    let delay = chaos.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if Chaos::take(&chaos.rate_limited) {
        let seconds = chaos.retry_after_seconds.load(Ordering::SeqCst);
        let mut response = (
            StatusCode::TOO_MANY_REQUESTS,
            Json((state.error_body)(429, "rate limited")),
        )
            .into_response();
        response.headers_mut().insert(
            "retry-after",
            HeaderValue::from_str(&seconds.to_string()).expect("digits"),
        );
        return response;
    }
    if Chaos::take(&chaos.server_errors) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json((state.error_body)(500, "internal error")),
        )
            .into_response();
    }
    next.run(request).await
}

/// Wraps a fake's router with failure injection.
pub fn with_chaos(router: Router, chaos: Arc<Chaos>, error_body: ErrorBody) -> Router {
    router.layer(axum::middleware::from_fn_with_state(
        ChaosState { chaos, error_body },
        chaos_layer,
    ))
}

/// Serves a router on a free loopback port; returns its base URL.
pub async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port is free");
    let address = listener.local_addr().expect("bound");
    tokio::spawn(async move {
        axum::serve(listener, router)
            .await
            .expect("the fake serves");
    });
    format!("http://{address}")
}

/// Every call a fake received, for asserting which platform calls were made.
#[derive(Clone, Default)]
pub struct CallLog(Arc<Mutex<Vec<(String, String, Value)>>>);

impl CallLog {
    /// Records a call.
    pub fn record(&self, method: &str, path: &str, body: Value) {
        self.0
            .lock()
            .expect("lock")
            .push((method.to_owned(), path.to_owned(), body));
    }

    /// Calls whose method and path start with the given ones.
    pub fn matching(&self, method: &str, path_prefix: &str) -> Vec<(String, String, Value)> {
        self.0
            .lock()
            .expect("lock")
            .iter()
            .filter(|(m, p, _)| m == method && p.starts_with(path_prefix))
            .cloned()
            .collect()
    }

    /// Every call.
    pub fn all(&self) -> Vec<(String, String, Value)> {
        self.0.lock().expect("lock").clone()
    }
}
