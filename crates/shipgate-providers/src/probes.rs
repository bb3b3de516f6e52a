//! Gate probes: HTTP health checks, Prometheus instant queries and confirm webhooks.

use std::time::{Duration, Instant};

use serde_json::Value;

use shipgate_domain::config::HealthCheck;
use shipgate_domain::state::Verdict;

/// The outcome of one probe.
#[derive(Clone, Debug, PartialEq)]
pub struct Probe {
    /// Verdict.
    pub verdict: Verdict,
    /// Measured value (status code, metric value).
    pub value: Option<f64>,
    /// One line for the timeline.
    pub summary: String,
    /// How long it took.
    pub elapsed_ms: u64,
}

/// A shared HTTP client for probes (no redirects followed across hosts, bounded timeouts).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .user_agent(concat!("shipgate/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(4)
        .build()
        .expect("the HTTP client builds with static settings")
}

/// Follows a dotted path (`checks.db.status`) into a JSON value.
pub fn json_path<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .filter(|part| !part.is_empty())
        .try_fold(value, |current, part| match current {
            Value::Object(map) => map.get(part),
            Value::Array(items) => part.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        })
}

/// GETs a health URL: healthy when the status matches and the optional JSON field equals the
/// expected value. Connection errors and timeouts are unhealthy.
pub async fn http_health(
    client: &reqwest::Client,
    check: &HealthCheck,
    timeout: Duration,
) -> Probe {
    let started = Instant::now();
    let elapsed = |started: Instant| started.elapsed().as_millis() as u64;
    let response = client.get(&check.url).timeout(timeout).send().await;
    let response = match response {
        Ok(response) => response,
        Err(error) => {
            let summary = if error.is_timeout() {
                format!("no answer within {}ms", timeout.as_millis())
            } else if error.is_connect() {
                "connection refused or unreachable".to_owned()
            } else {
                "request failed".to_owned()
            };
            return Probe {
                verdict: Verdict::Fail,
                value: None,
                summary,
                elapsed_ms: elapsed(started),
            };
        }
    };
    let status = response.status().as_u16();
    if status != check.expect_status {
        return Probe {
            verdict: Verdict::Fail,
            value: Some(f64::from(status)),
            summary: format!("HTTP {status}, expected {}", check.expect_status),
            elapsed_ms: elapsed(started),
        };
    }
    let Some(json_check) = &check.json else {
        return Probe {
            verdict: Verdict::Pass,
            value: Some(f64::from(status)),
            summary: format!("HTTP {status}"),
            elapsed_ms: elapsed(started),
        };
    };
    let body: Result<Value, _> = response.json().await;
    let (verdict, summary) = match body {
        Err(_) => (
            Verdict::Fail,
            format!("HTTP {status} but the body is not JSON"),
        ),
        Ok(body) => match json_path(&body, &json_check.path) {
            Some(found) if *found == json_check.equals => (
                Verdict::Pass,
                format!("HTTP {status}, {} = {found}", json_check.path),
            ),
            Some(found) => (
                Verdict::Fail,
                format!(
                    "HTTP {status}, {} = {found}, expected {}",
                    json_check.path, json_check.equals
                ),
            ),
            None => (
                Verdict::Fail,
                format!("HTTP {status}, no `{}` in the body", json_check.path),
            ),
        },
    };
    Probe {
        verdict,
        value: Some(f64::from(status)),
        summary,
        elapsed_ms: elapsed(started),
    }
}

/// Runs a Prometheus instant query and returns the first sample's value; `Ok(None)` for an
/// empty result or NaN (no data).
pub async fn prometheus_value(
    client: &reqwest::Client,
    base_url: &str,
    query: &str,
    timeout: Duration,
) -> Result<Option<f64>, String> {
    let url = format!("{}/api/v1/query", base_url.trim_end_matches('/'));
    let response = client
        .post(&url)
        .form(&[("query", query)])
        .timeout(timeout)
        .send()
        .await
        .map_err(|error| {
            if error.is_timeout() {
                "Prometheus did not answer in time".to_owned()
            } else {
                "Prometheus is unreachable".to_owned()
            }
        })?;
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .map_err(|_| format!("Prometheus answered HTTP {status} without JSON"))?;
    if body.get("status").and_then(Value::as_str) != Some("success") {
        let error = body
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("unknown error");
        return Err(format!("Prometheus refused the query: {error}"));
    }
    let data = &body["data"];
    let sample = match data.get("resultType").and_then(Value::as_str) {
        Some("vector") => data["result"].get(0).map(|series| &series["value"]),
        Some("scalar") => Some(&data["result"]),
        other => return Err(format!("unsupported result type {other:?}")),
    };
    let Some(sample) = sample else {
        return Ok(None);
    };
    let value = sample
        .get(1)
        .and_then(Value::as_str)
        .and_then(|text| text.parse::<f64>().ok());
    Ok(value.filter(|v| !v.is_nan()))
}

/// POSTs the rollout's details to a confirm webhook: 2xx passes, anything else fails.
pub async fn confirm_webhook(
    client: &reqwest::Client,
    url: &str,
    payload: &Value,
    timeout: Duration,
) -> Probe {
    let started = Instant::now();
    let result = client.post(url).json(payload).timeout(timeout).send().await;
    let elapsed_ms = started.elapsed().as_millis() as u64;
    match result {
        Ok(response) if response.status().is_success() => Probe {
            verdict: Verdict::Pass,
            value: Some(f64::from(response.status().as_u16())),
            summary: format!("confirmed with HTTP {}", response.status().as_u16()),
            elapsed_ms,
        },
        Ok(response) => Probe {
            verdict: Verdict::Fail,
            value: Some(f64::from(response.status().as_u16())),
            summary: format!("not confirmed: HTTP {}", response.status().as_u16()),
            elapsed_ms,
        },
        Err(_) => Probe {
            verdict: Verdict::Fail,
            value: None,
            summary: "confirm webhook unreachable".into(),
            elapsed_ms,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_paths_walk_objects_and_arrays() {
        let body = json!({"status": "healthy", "checks": {"db": [{"ok": true}]}});
        assert_eq!(json_path(&body, "status"), Some(&json!("healthy")));
        assert_eq!(json_path(&body, "checks.db.0.ok"), Some(&json!(true)));
        assert_eq!(json_path(&body, "checks.cache"), None);
    }
}
