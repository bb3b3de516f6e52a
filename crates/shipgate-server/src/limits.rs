//! Request rate limits: token buckets per client address and per presented credential, kept in
//! memory by each replica (a client spread over N replicas gets up to N times the rate; the
//! limits exist to stop floods and password guessing, not to meter). Over the limit: 429 with
//! `Retry-After`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::AppState;

/// Requests per minute allowed; 0 turns a limit off.
#[derive(Clone, Copy, Debug)]
pub struct RateLimits {
    /// Per client address, all requests.
    pub per_client: u32,
    /// Per bearer token.
    pub per_token: u32,
    /// Sign-in attempts per client address.
    pub sign_in: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            per_client: 3000,
            per_token: 1200,
            sign_in: 10,
        }
    }
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Token buckets keyed by a string; the capacity is a quarter of a minute's allowance (at least
/// 5), refilled continuously.
pub struct Limiter {
    per_minute: u32,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Limiter {
    /// A limiter allowing `per_minute` requests per key (0: unlimited).
    pub fn new(per_minute: u32) -> Self {
        Limiter {
            per_minute,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn capacity(&self) -> f64 {
        (f64::from(self.per_minute) / 4.0).max(5.0)
    }

    /// Takes one request from `key`'s bucket, or says how long until one is available.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let rate = f64::from(self.per_minute) / 60.0;
        let capacity = self.capacity();
        let now = Instant::now();
        let mut buckets = self
            .buckets
            .lock()
            .expect("the limiter lock is never poisoned");
        if buckets.len() > 50_000 {
            // Forget buckets that have refilled: they hold no information.
            buckets.retain(|_, bucket| {
                bucket.tokens + now.duration_since(bucket.updated).as_secs_f64() * rate < capacity
            });
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: capacity,
            updated: now,
        });
        let elapsed = now.duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(capacity);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }
}

/// The limiters of one replica.
pub struct Limiters {
    client: Limiter,
    token: Limiter,
    sign_in: Limiter,
}

impl Limiters {
    /// Limiters for `limits`.
    pub fn new(limits: RateLimits) -> Self {
        Limiters {
            client: Limiter::new(limits.per_client),
            token: Limiter::new(limits.per_token),
            sign_in: Limiter::new(limits.sign_in),
        }
    }
}

fn too_many(what: &str, wait: Duration) -> Response {
    ApiError::TooManyRequests {
        detail: format!("too many requests {what}; slow down"),
        retry_after: wait.as_secs_f64().ceil() as u64,
    }
    .into_response()
}

/// Middleware: applies the limits (health, readiness and the stylesheet are exempt, so probes
/// and pages never starve).
pub async fn limit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if matches!(path, "/healthz" | "/readyz") || path.starts_with("/static/") {
        return next.run(request).await;
    }
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip().to_string())
        .unwrap_or_else(|| "unknown".into());
    if let Err(wait) = state.limiters.client.check(&client) {
        return too_many("from this address", wait);
    }
    if path == "/login" && request.method() == Method::POST {
        if let Err(wait) = state.limiters.sign_in.check(&client) {
            return too_many("signing in from this address", wait);
        }
    }
    if let Some(credential) = request.headers().get(header::AUTHORIZATION) {
        let digest = Sha256::digest(credential.as_bytes());
        let key: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
        if let Err(wait) = state.limiters.token.check(&key) {
            return too_many("with this token", wait);
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_refuses_with_a_wait() {
        let limiter = Limiter::new(60);
        for _ in 0..15 {
            assert!(limiter.check("a").is_ok());
        }
        let wait = limiter.check("a").unwrap_err();
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        // Another key has its own bucket.
        assert!(limiter.check("b").is_ok());
        // Off means off.
        let off = Limiter::new(0);
        assert!((0..10_000).all(|_| off.check("a").is_ok()));
    }
}
