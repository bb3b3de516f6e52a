//! The notification delivery worker: claims due outbox rows (a lease, `FOR UPDATE SKIP
//! LOCKED`), POSTs each to its channel (Slack as Block Kit, generic webhooks as JSON signed
//! with HMAC-SHA256) and records the outcome. A 2xx delivers; 429 waits as long as
//! `Retry-After` asks; 408, 5xx, timeouts and connection errors retry with exponential backoff
//! and jitter up to `max_attempts`; any other status fails at once. NOTIFY wakes it as soon as
//! a notification is queued; a poll is the fallback.
//!
//! A channel's URL is a credential (a Slack webhook URL is all it takes to post): it is opened
//! only to make the request, and never logged or recorded; errors are described without it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use rand::Rng;
use serde_json::{json, Value};
use sha2::Sha256;
use sqlx::PgPool;
use tokio::sync::Notify;
use tracing::{debug, warn};

use shipgate_domain::notification::ChannelKind;
use shipgate_store::crypto::SecretBox;
use shipgate_store::notifications::{self, Claimed, OpenChannel, NOTIFICATIONS_CHANNEL};
use shipgate_store::StoreError;

/// Delivery settings.
#[derive(Clone, Debug)]
pub struct NotifierConfig {
    /// The dashboard's public base URL, for links to the rollout page (none: no links).
    pub public_url: Option<String>,
    /// How often to look for due notifications when no NOTIFY arrives.
    pub poll_interval: Duration,
    /// Attempts before a notification is given up as `failed`.
    pub max_attempts: i32,
    /// The first retry's delay; each further retry doubles it (with jitter), up to `max_backoff`.
    pub base_backoff: Duration,
    /// The longest wait between attempts.
    pub max_backoff: Duration,
    /// How long one request may take.
    pub request_timeout: Duration,
    /// Notifications claimed at once.
    pub batch: i64,
}

impl Default for NotifierConfig {
    fn default() -> Self {
        NotifierConfig {
            public_url: None,
            poll_interval: Duration::from_secs(3),
            max_attempts: 8,
            base_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10 * 60),
            request_timeout: Duration::from_secs(10),
            batch: 16,
        }
    }
}

/// What became of one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Delivered,
    /// Worth another attempt; `after` is what the endpoint asked for (`Retry-After`).
    Retry {
        error: String,
        after: Option<Duration>,
    },
    Failed(String),
}

/// Delivers the outbox.
pub struct Notifier {
    pool: PgPool,
    secrets: SecretBox,
    http: reqwest::Client,
    config: NotifierConfig,
    wake: Arc<Notify>,
}

impl Notifier {
    /// A notifier over `pool`, opening channel URLs with `secrets`.
    pub fn new(pool: PgPool, secrets: SecretBox, config: NotifierConfig) -> Arc<Self> {
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .user_agent(concat!("Shipgate/", env!("CARGO_PKG_VERSION")))
            // A redirect would carry the body somewhere the config never named.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("the HTTP client's settings are valid");
        Arc::new(Notifier {
            pool,
            secrets,
            http,
            config,
            wake: Arc::new(Notify::new()),
        })
    }

    /// Delivers until `shutdown` resolves.
    pub async fn run(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        let listener = tokio::spawn(crate::wake_on(
            self.pool.clone(),
            NOTIFICATIONS_CHANNEL,
            Arc::clone(&self.wake),
        ));
        tokio::pin!(shutdown);
        loop {
            loop {
                match self.deliver_due().await {
                    Ok(0) => break,
                    Ok(_) => continue,
                    Err(error) => {
                        warn!(%error, "claiming notifications failed");
                        break;
                    }
                }
            }
            tokio::select! {
                () = &mut shutdown => break,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.config.poll_interval) => {}
            }
        }
        listener.abort();
    }

    /// Claims one batch and delivers it; returns how many were claimed.
    async fn deliver_due(&self) -> Result<usize, StoreError> {
        // The lease outlasts a request, so a row is never claimed twice while in flight.
        let lease = self.config.request_timeout + Duration::from_secs(20);
        let claimed = notifications::claim(&self.pool, self.config.batch, lease).await?;
        let count = claimed.len();
        futures::future::join_all(claimed.into_iter().map(|claimed| self.deliver(claimed))).await;
        Ok(count)
    }

    async fn deliver(&self, claimed: Claimed) {
        let outcome = match notifications::open_channel(
            &self.pool,
            &self.secrets,
            claimed.app_id,
            &claimed.channel,
        )
        .await
        {
            Ok(Some(channel)) => self.send(&channel, &claimed).await,
            Ok(None) => Outcome::Failed("the channel was removed from the app's config".into()),
            Err(StoreError::Crypto(message)) => Outcome::Failed(message),
            Err(error) => Outcome::Retry {
                error: format!("reading the channel failed: {error}"),
                after: None,
            },
        };
        let recorded = match &outcome {
            Outcome::Delivered => notifications::mark_delivered(&self.pool, claimed.id).await,
            Outcome::Retry { error, .. } if claimed.attempts >= self.config.max_attempts => {
                let error = format!("{error} (gave up after {} attempts)", claimed.attempts);
                notifications::mark_failed(&self.pool, claimed.id, &error).await
            }
            Outcome::Retry { error, after } => {
                let delay = after.unwrap_or_else(|| {
                    backoff(&self.config, claimed.attempts, rand::thread_rng().gen())
                });
                let at = chrono::Utc::now()
                    + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
                notifications::mark_retry(&self.pool, claimed.id, at, error).await
            }
            Outcome::Failed(error) => {
                notifications::mark_failed(&self.pool, claimed.id, error).await
            }
        };
        debug!(
            notification.id = claimed.id,
            channel = %claimed.channel,
            attempts = claimed.attempts,
            outcome = ?outcome,
            "notification attempted"
        );
        if let Err(error) = recorded {
            // The lease lapses and the row is attempted again.
            warn!(notification.id = claimed.id, %error, "recording a notification's outcome failed");
        }
    }

    async fn send(&self, channel: &OpenChannel, claimed: &Claimed) -> Outcome {
        let link = self.rollout_link(&claimed.payload);
        let body = match channel.kind {
            ChannelKind::Slack => slack_message(&claimed.payload, link.as_deref()),
            ChannelKind::Webhook => generic_message(claimed.id, &claimed.payload, link.as_deref()),
        };
        let body = body.to_string().into_bytes();
        let mut request = self
            .http
            .post(channel.url.expose())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Shipgate-Delivery", claimed.id.to_string());
        if let Some(secret) = &channel.secret {
            request = request.header("X-Shipgate-Signature", signature(secret.expose(), &body));
        }
        match request.body(body).send().await {
            Ok(response) => classify(response).await,
            Err(error) => Outcome::Retry {
                error: describe(&error, self.config.request_timeout),
                after: None,
            },
        }
    }

    /// The page the notification is about: the rollout's, or the app's freeze windows.
    fn rollout_link(&self, payload: &Value) -> Option<String> {
        let base = self.config.public_url.as_deref()?.trim_end_matches('/');
        if let Some(rollout) = payload.get("rollout_id").and_then(Value::as_str) {
            return Some(format!("{base}/rollouts/{rollout}"));
        }
        let app = payload.get("app")?.as_str()?;
        Some(format!("{base}/apps/{app}/freezes"))
    }
}

/// The wait before attempt `attempts + 1`: doubling from `base_backoff`, capped at
/// `max_backoff`, its second half scaled by `random` (0 to 1) so that endpoints recovering from
/// an outage are not hit in step.
fn backoff(config: &NotifierConfig, attempts: i32, random: f64) -> Duration {
    let exponent = attempts.saturating_sub(1).clamp(0, 20) as u32;
    let full = config
        .base_backoff
        .saturating_mul(1 << exponent)
        .min(config.max_backoff);
    let half = full / 2;
    half + half.mul_f64(random.clamp(0.0, 1.0))
}

/// `sha256=<hex HMAC-SHA256 of body>`, as `/hooks/generic` verifies it.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// A transport error in words, without the URL (reqwest's own text names it).
fn describe(error: &reqwest::Error, timeout: Duration) -> String {
    if error.is_timeout() {
        format!("no answer within {} s", timeout.as_secs())
    } else if error.is_connect() {
        "could not connect".to_owned()
    } else {
        "the request failed before an answer".to_owned()
    }
}

async fn classify(response: reqwest::Response) -> Outcome {
    let status = response.status();
    if status.is_success() {
        return Outcome::Delivered;
    }
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok())
        .map(|seconds| Duration::from_secs(seconds.min(3600)));
    let text = response.text().await.unwrap_or_default();
    let excerpt: String = text.chars().take(200).collect();
    let error = if excerpt.trim().is_empty() {
        format!("the endpoint answered {status}")
    } else {
        format!("the endpoint answered {status}: {}", excerpt.trim())
    };
    match status.as_u16() {
        429 => Outcome::Retry {
            error,
            after: retry_after,
        },
        408 | 500..=599 => Outcome::Retry { error, after: None },
        _ => Outcome::Failed(error),
    }
}

/// The payload's text field `name`, or `fallback`.
fn field<'a>(payload: &'a Value, name: &str, fallback: &'a str) -> &'a str {
    payload
        .get(name)
        .and_then(Value::as_str)
        .unwrap_or(fallback)
}

/// A sentence for the event: `rollout failed`, `approval requested`.
fn headline(payload: &Value) -> String {
    let event = field(payload, "event", "event");
    let (subject, verb) = event.split_once('.').unwrap_or((event, ""));
    let app = field(payload, "app", "?");
    let environment = field(payload, "environment", "every environment");
    format!("{app}: {subject} {verb} in {environment}")
}

/// Slack's `mrkdwn` treats `&`, `<` and `>` as control characters.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn truncate(text: &str, limit: usize) -> String {
    if text.chars().count() <= limit {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(limit - 1).collect();
        cut.push('…');
        cut
    }
}

/// A Block Kit message: a header, the facts as fields, the reason, and a context line with
/// the severity and a link to the rollout page.
fn slack_message(payload: &Value, link: Option<&str>) -> Value {
    let severity = field(payload, "severity", "info");
    let icon = match severity {
        "critical" => ":rotating_light:",
        "warning" => ":warning:",
        _ => ":white_check_mark:",
    };
    let headline = headline(payload);
    let freeze = field(payload, "event", "").starts_with("freeze.");
    let mut fallback = if freeze {
        format!("{headline} (“{}”)", field(payload, "window", "?"))
    } else {
        format!("{headline} (release {})", field(payload, "release", "?"))
    };
    if let Some(reason) = payload.get("reason").and_then(Value::as_str) {
        fallback.push_str(": ");
        fallback.push_str(reason);
    }
    let mut facts = vec![
        ("App", field(payload, "app", "?")),
        (
            "Environment",
            field(payload, "environment", "every environment"),
        ),
    ];
    if freeze {
        facts.push(("Freeze window", field(payload, "window", "?")));
    } else {
        facts.push(("Release", field(payload, "release", "?")));
        facts.push(("State", field(payload, "state", "?")));
    }
    let mut blocks = vec![
        json!({
            "type": "header",
            "text": { "type": "plain_text", "text": truncate(&format!("{icon} {headline}"), 150), "emoji": true },
        }),
        json!({
            "type": "section",
            "fields": facts.iter().map(|(name, value)| json!({
                "type": "mrkdwn", "text": format!("*{name}*\n{}", escape(value)),
            })).collect::<Vec<_>>(),
        }),
    ];
    if let Some(reason) = payload.get("reason").and_then(Value::as_str) {
        blocks.push(json!({
            "type": "section",
            "text": { "type": "mrkdwn", "text": format!("*Reason*\n{}", escape(&truncate(reason, 2000))) },
        }));
    }
    let mut context = format!("{severity} · {}", field(payload, "event", "?"));
    if let Some(link) = link {
        let what = if freeze {
            "View freeze windows"
        } else {
            "View rollout"
        };
        context.push_str(&format!(" · <{link}|{what}>"));
    }
    blocks.push(json!({
        "type": "context",
        "elements": [ { "type": "mrkdwn", "text": context } ],
    }));
    json!({ "text": escape(&truncate(&fallback, 3000)), "blocks": blocks })
}

/// The generic webhook's JSON: the payload as queued, its delivery id and the rollout link.
fn generic_message(id: i64, payload: &Value, link: Option<&str>) -> Value {
    let mut message = payload.clone();
    if let Some(object) = message.as_object_mut() {
        object.insert("id".into(), json!(id));
        object.insert("url".into(), json!(link));
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slack_message_has_a_header_facts_reason_and_a_link() {
        let payload = json!({
            "event": "rollout.failed", "severity": "critical", "app": "shop",
            "environment": "production", "release": "1.2.0", "state": "failed",
            "reason": "health <gate> failed", "rollout_id": "r1",
        });
        let message = slack_message(&payload, Some("https://ship.example/rollouts/r1"));
        assert_eq!(message["blocks"][0]["type"], "header");
        assert_eq!(
            message["blocks"][0]["text"]["text"],
            ":rotating_light: shop: rollout failed in production"
        );
        assert_eq!(
            message["blocks"][1]["fields"][2]["text"],
            "*Release*\n1.2.0"
        );
        assert_eq!(
            message["blocks"][2]["text"]["text"],
            "*Reason*\nhealth &lt;gate&gt; failed"
        );
        assert!(message["blocks"][3]["elements"][0]["text"]
            .as_str()
            .unwrap()
            .ends_with("<https://ship.example/rollouts/r1|View rollout>"));
        assert!(message["text"].as_str().unwrap().contains("1.2.0"));
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let config = NotifierConfig::default();
        for attempts in 1..=12 {
            let full = Duration::from_secs(1 << (attempts - 1)).min(Duration::from_secs(600));
            assert_eq!(backoff(&config, attempts, 0.0), full / 2);
            assert_eq!(backoff(&config, attempts, 1.0), full);
            let jittered = backoff(&config, attempts, 0.3);
            assert!(
                jittered > full / 2 && jittered < full,
                "{attempts}: {jittered:?}"
            );
        }
    }

    #[test]
    fn the_signature_is_the_hmac_that_generic_receivers_verify() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
