//! The HTTP side every adapter shares: a timeout on every call, retries with exponential backoff
//! and jitter for 5xx answers, timeouts and connection errors, `Retry-After` / `RateLimit-Reset`
//! honoured on 429, and each platform's error body turned into one clear message. Requests and
//! their headers are never logged, so credentials never reach a log.

use std::time::Duration;

use rand::Rng;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::ProviderError;

/// How calls are retried.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Attempts in all (the first call included).
    pub attempts: u32,
    /// First backoff; doubles each retry.
    pub base_delay: Duration,
    /// Longest backoff.
    pub max_delay: Duration,
    /// Timeout of one call.
    pub call_timeout: Duration,
    /// A rate-limit wait up to this long is slept through; a longer one is handed back to the
    /// engine as [`ProviderError::RateLimited`] so the worker is not held.
    pub max_inline_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(5),
            call_timeout: Duration::from_secs(30),
            max_inline_wait: Duration::from_secs(10),
        }
    }
}

/// A platform's answer.
#[derive(Clone, Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// JSON body (`Null` when empty or not JSON).
    pub body: Value,
}

/// Pulls the human message out of a platform's error body.
pub type ErrorMessage = fn(&Value) -> Option<String>;

/// An HTTP client for one platform.
#[derive(Clone)]
pub struct ApiClient {
    client: reqwest::Client,
    platform: &'static str,
    policy: RetryPolicy,
    error_message: ErrorMessage,
}

/// One request: method, URL, optional JSON body, extra headers, bearer token.
#[derive(Clone, Debug)]
pub struct Call<'a> {
    /// Method.
    pub method: Method,
    /// Full URL.
    pub url: String,
    /// JSON body.
    pub body: Option<&'a Value>,
    /// Extra headers (name, value).
    pub headers: Vec<(String, String)>,
    /// Bearer token.
    pub bearer: Option<&'a str>,
    /// The call creates something and the platform cannot deduplicate it: after a timeout or a
    /// 5xx the request may have been carried out, so it is not sent again (the engine reconciles
    /// by natural key before resubmitting). Connection failures and 429s are still retried:
    /// those requests were never processed.
    pub once: bool,
}

impl<'a> Call<'a> {
    /// A call with no body.
    pub fn new(method: Method, url: impl Into<String>) -> Self {
        Call {
            method,
            url: url.into(),
            body: None,
            headers: Vec::new(),
            bearer: None,
            once: false,
        }
    }

    /// Marks the call as not safe to repeat (see [`Call::once`]).
    pub fn once(mut self) -> Self {
        self.once = true;
        self
    }

    /// With a JSON body.
    pub fn json(mut self, body: &'a Value) -> Self {
        self.body = Some(body);
        self
    }

    /// With a header.
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    /// With a bearer token.
    pub fn bearer(mut self, token: Option<&'a str>) -> Self {
        self.bearer = token;
        self
    }
}

/// How long a 429 asks us to wait: `Retry-After` (seconds or an HTTP date), else
/// `RateLimit-Reset` / `X-RateLimit-Reset` (seconds from now, or a unix time).
pub fn rate_limit_wait(headers: &HeaderMap) -> Option<Duration> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(value) = header("retry-after") {
        if let Ok(seconds) = value.parse::<f64>() {
            return Some(Duration::from_secs_f64(seconds.max(0.0)));
        }
        if let Ok(date) = chrono::DateTime::parse_from_rfc2822(value) {
            let wait = date.with_timezone(&chrono::Utc) - chrono::Utc::now();
            return Some(wait.to_std().unwrap_or_default());
        }
    }
    for name in ["ratelimit-reset", "x-ratelimit-reset"] {
        if let Some(value) = header(name).and_then(|v| v.parse::<f64>().ok()) {
            let now = chrono::Utc::now().timestamp() as f64;
            // Large values are unix times; small ones are seconds from now.
            let seconds = if value > 1_000_000_000.0 {
                value - now
            } else {
                value
            };
            return Some(Duration::from_secs_f64(seconds.max(0.0)));
        }
    }
    None
}

impl ApiClient {
    /// A client for `platform` that reads error messages with `error_message`.
    pub fn new(platform: &'static str, policy: RetryPolicy, error_message: ErrorMessage) -> Self {
        let client = reqwest::Client::builder()
            .user_agent(concat!("shipgate/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .expect("the HTTP client builds with static settings");
        ApiClient {
            client,
            platform,
            policy,
            error_message,
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let exponential = self.policy.base_delay.saturating_mul(1 << attempt.min(16));
        let capped = exponential.min(self.policy.max_delay);
        // Jitter spreads retries of many workers apart: between half and all of the delay.
        capped.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
    }

    /// Sends a call, retrying what is worth retrying. 2xx answers come back as `Ok`.
    pub async fn send(&self, call: &Call<'_>) -> Result<Answer, ProviderError> {
        let platform = self.platform;
        let mut attempt = 0;
        loop {
            let mut request = self
                .client
                .request(call.method.clone(), &call.url)
                .timeout(self.policy.call_timeout);
            if let Some(token) = call.bearer {
                request = request.bearer_auth(token);
            }
            for (name, value) in &call.headers {
                request = request.header(name, value);
            }
            if let Some(body) = call.body {
                request = request.json(body);
            }
            let last = attempt + 1 >= self.policy.attempts;
            let response = match request.send().await {
                Ok(response) => response,
                Err(error) => {
                    let what = if error.is_timeout() {
                        format!(
                            "{platform} did not answer within {:?}",
                            self.policy.call_timeout
                        )
                    } else {
                        format!("{platform} is unreachable")
                    };
                    if last || (call.once && !error.is_connect()) {
                        return Err(ProviderError::Transient(what));
                    }
                    tracing::debug!(platform, attempt, "{what}; retrying");
                    tokio::time::sleep(self.backoff(attempt)).await;
                    attempt += 1;
                    continue;
                }
            };
            let status = response.status();
            let headers = response.headers().clone();
            let text = response.text().await.unwrap_or_default();
            let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            if status.is_success() {
                return Ok(Answer {
                    status,
                    headers,
                    body,
                });
            }
            let message = (self.error_message)(&body)
                .or_else(|| (!text.trim().is_empty()).then(|| text.chars().take(300).collect()))
                .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
            if status == StatusCode::TOO_MANY_REQUESTS {
                let wait = rate_limit_wait(&headers).unwrap_or_else(|| self.backoff(attempt));
                if last || wait > self.policy.max_inline_wait {
                    return Err(ProviderError::RateLimited(wait));
                }
                tracing::debug!(platform, ?wait, "rate limited; waiting");
                tokio::time::sleep(wait).await;
                attempt += 1;
                continue;
            }
            if status.is_server_error() {
                if last || call.once {
                    return Err(ProviderError::Transient(format!(
                        "{platform} answered HTTP {}: {message}",
                        status.as_u16()
                    )));
                }
                tokio::time::sleep(self.backoff(attempt)).await;
                attempt += 1;
                continue;
            }
            return Err(ProviderError::Permanent(format!(
                "{platform} refused the request (HTTP {}): {message}",
                status.as_u16()
            )));
        }
    }
}

/// The setting `key` of a target, or the platform's default.
pub fn api_url(settings: &serde_json::Map<String, Value>, default: &str) -> String {
    settings
        .get("api_url")
        .and_then(Value::as_str)
        .unwrap_or(default)
        .trim_end_matches('/')
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn rate_limit_waits_read_every_header_form() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", HeaderValue::from_static("3"));
        assert_eq!(rate_limit_wait(&headers), Some(Duration::from_secs(3)));
        let mut headers = HeaderMap::new();
        headers.insert("ratelimit-reset", HeaderValue::from_static("7"));
        assert_eq!(rate_limit_wait(&headers), Some(Duration::from_secs(7)));
        let mut headers = HeaderMap::new();
        let soon = (chrono::Utc::now().timestamp() + 20).to_string();
        headers.insert("x-ratelimit-reset", HeaderValue::from_str(&soon).unwrap());
        let wait = rate_limit_wait(&headers).unwrap();
        assert!(
            wait <= Duration::from_secs(20) && wait >= Duration::from_secs(18),
            "{wait:?}"
        );
        assert_eq!(rate_limit_wait(&HeaderMap::new()), None);
    }
}
