//! The notification outbox: each app's channels (URL and secret sealed), the rows that the
//! event they announce inserts in its own transaction (so a notification exists if and only if
//! its event committed), the delivery workers' claim, and the delivery history.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor, PgPool, Row};
use uuid::Uuid;

use shipgate_domain::config::{AppliedDocument, Secret};
use shipgate_domain::notification::{ChannelKind, NotificationEvent};

use crate::apps::ApplyOutcome;
use crate::crypto::SecretBox;
use crate::events::{Actor, Scope};
use crate::StoreError;

/// The NOTIFY channel that wakes delivery workers when notifications are queued.
pub const NOTIFICATIONS_CHANNEL: &str = "shipgate_notifications";

/// Replaces an app's channels with the document's, sealing each URL and secret. Reports a
/// channel as changed only when its routing, URL or secret changed.
pub(crate) async fn sync_channels(
    tx: &mut PgConnection,
    app_id: Uuid,
    document: &AppliedDocument,
    secrets: &SecretBox,
    outcome: &mut ApplyOutcome,
) -> Result<(), StoreError> {
    let rows = sqlx::query(
        "select name, key_id, url_ciphertext, secret_ciphertext from notification_channels
          where app_id = $1",
    )
    .bind(app_id)
    .fetch_all(&mut *tx)
    .await?;
    let mut stored: BTreeMap<String, (Option<String>, Option<String>)> = BTreeMap::new();
    for row in rows {
        let key_id: String = row.get("key_id");
        let url = secrets
            .open(&key_id, &row.get::<Vec<u8>, _>("url_ciphertext"))
            .ok();
        let secret = row
            .get::<Option<Vec<u8>>, _>("secret_ciphertext")
            .and_then(|sealed| secrets.open(&key_id, &sealed).ok());
        stored.insert(row.get("name"), (url, secret));
    }
    sqlx::query("delete from notification_channels where app_id = $1")
        .bind(app_id)
        .execute(&mut *tx)
        .await?;
    for channel in &document.spec.notifications {
        let Some(parts) = document.channel_secrets.get(&channel.name) else {
            continue;
        };
        let secret = parts.secret.as_ref().map(Secret::expose);
        let same = stored.remove(&channel.name).is_some_and(|(url, old)| {
            url.as_deref() == Some(parts.url.expose()) && old.as_deref() == secret
        });
        if !same {
            outcome
                .changes
                .push(format!("notification channel {} set", channel.name));
        }
        let events: Vec<&str> = channel.events.iter().map(|event| event.as_str()).collect();
        sqlx::query(
            "insert into notification_channels
                    (app_id, name, kind, environments, events, min_severity, url_ciphertext,
                     secret_ciphertext, key_id)
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(app_id)
        .bind(&channel.name)
        .bind(channel.kind.as_str())
        .bind(&channel.environments)
        .bind(&events)
        .bind(channel.severity.rank())
        .bind(secrets.seal(parts.url.expose())?)
        .bind(secret.map(|secret| secrets.seal(secret)).transpose()?)
        .bind(secrets.key_id())
        .execute(&mut *tx)
        .await?;
    }
    for name in stored.keys() {
        outcome
            .changes
            .push(format!("notification channel {name} removed"));
    }
    Ok(())
}

/// Appends an audit event that announces `event`, and in the same statement queues one outbox
/// row per channel of the app that routes it (by environment, event and least severity), with
/// a snapshot of what the message says. Wakes the delivery workers when anything was queued.
/// A rollback's own rollout starting and ending is not announced again: `rollback.started` and
/// `rollback.finished` say it. An app without channels costs nothing more than the event's insert.
pub(crate) async fn record_announced(
    executor: impl PgExecutor<'_>,
    scope: Scope,
    actor: &Actor,
    action: &str,
    details: Value,
    event: NotificationEvent,
) -> Result<(), StoreError> {
    // The last `where` calls pg_notify once per queued row (Postgres folds repeats of one
    // payload within a transaction, and delivers at commit).
    sqlx::query(
        "with recorded as (
             insert into events (app_id, environment_id, rollout_id, actor_kind, actor, action, details)
             values ($1, $2, $3, $4, $5, $6, $7)
             returning id, at
         ), queued as (
             insert into outbox (topic, payload, app_id, channel, event, severity)
             select 'notification',
                    jsonb_build_object(
                        'event', $8::text, 'severity', $9::text, 'event_id', recorded.id,
                        'at', recorded.at, 'app', a.name, 'environment', en.name,
                        'rollout_id', r.id, 'kind', r.kind, 'release', rel.version,
                        'state', r.state, 'reason', coalesce($7->>'reason', r.state_reason),
                        'actor', $4 || ':' || $5, 'window', $7->>'window'),
                    c.app_id, c.name, $8, $9
               from recorded
               join notification_channels c on c.app_id = $1
               join apps a on a.id = c.app_id
               left join environments en on en.id = $2
               left join rollouts r on r.id = $3
               left join releases rel on rel.id = r.release_id
              where c.min_severity <= $10
                and (cardinality(c.events) = 0 or $8 = any(c.events))
                and (cardinality(c.environments) = 0 or en.name = any(c.environments)
                     or ($2::uuid is null and $8 in ('freeze.began', 'freeze.ended')))
                and not (r.kind is not distinct from 'rollback'
                         and $8 in ('rollout.started', 'rollout.succeeded', 'rollout.failed'))
             returning 1
         )
         select count(*) from queued where pg_notify($11, '') is not null",
    )
    .bind(scope.app_id)
    .bind(scope.environment_id)
    .bind(scope.rollout_id)
    .bind(actor.kind)
    .bind(&actor.name)
    .bind(action)
    .bind(details)
    .bind(event.as_str())
    .bind(event.severity().as_str())
    .bind(event.severity().rank())
    .bind(NOTIFICATIONS_CHANNEL)
    .execute(executor)
    .await?;
    Ok(())
}

/// A claimed notification, to deliver now.
#[derive(Clone, Debug)]
pub struct Claimed {
    /// The outbox row (also the `X-Shipgate-Delivery` header).
    pub id: i64,
    /// The app.
    pub app_id: Uuid,
    /// The channel's name.
    pub channel: String,
    /// What the message says (see [`record_announced`]).
    pub payload: Value,
    /// Attempts so far, this one included.
    pub attempts: i32,
}

/// Claims up to `limit` due notifications, leasing each for `lease` (its next attempt is pushed
/// past the lease, so a worker that dies mid-delivery leaves it to be claimed again) and
/// counting the attempt. Concurrent claimers never get the same row.
pub async fn claim(
    pool: &PgPool,
    limit: i64,
    lease: std::time::Duration,
) -> Result<Vec<Claimed>, StoreError> {
    let rows = sqlx::query(
        "update outbox o
            set attempts = o.attempts + 1,
                next_attempt_at = now() + make_interval(secs => $2),
                updated_at = now()
          where o.id in (select id from outbox
                          where state = 'pending' and next_attempt_at <= now()
                            and app_id is not null
                          order by next_attempt_at
                          limit $1
                          for update skip locked)
         returning o.id, o.app_id, o.channel, o.payload, o.attempts",
    )
    .bind(limit)
    .bind(lease.as_secs_f64())
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| Claimed {
            id: row.get("id"),
            app_id: row.get("app_id"),
            channel: row.get("channel"),
            payload: row.get("payload"),
            attempts: row.get("attempts"),
        })
        .collect())
}

/// A channel with its URL and secret opened, for the delivery worker only.
pub struct OpenChannel {
    /// Slack or generic.
    pub kind: ChannelKind,
    /// Where to POST.
    pub url: Secret,
    /// The signing key of a generic webhook.
    pub secret: Option<Secret>,
}

/// The channel `name` of the app, opened; `None` once it was removed from the config.
pub async fn open_channel(
    pool: &PgPool,
    secrets: &SecretBox,
    app_id: Uuid,
    name: &str,
) -> Result<Option<OpenChannel>, StoreError> {
    let Some(row) = sqlx::query(
        "select kind, url_ciphertext, secret_ciphertext, key_id from notification_channels
          where app_id = $1 and name = $2",
    )
    .bind(app_id)
    .bind(name)
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    let key_id: String = row.get("key_id");
    let kind = match row.get::<String, _>("kind").as_str() {
        "slack" => ChannelKind::Slack,
        _ => ChannelKind::Webhook,
    };
    let url = Secret::new(secrets.open(&key_id, &row.get::<Vec<u8>, _>("url_ciphertext"))?);
    let secret = row
        .get::<Option<Vec<u8>>, _>("secret_ciphertext")
        .map(|sealed| secrets.open(&key_id, &sealed).map(Secret::new))
        .transpose()?;
    Ok(Some(OpenChannel { kind, url, secret }))
}

/// The endpoint took the notification.
pub async fn mark_delivered(pool: &PgPool, id: i64) -> Result<(), StoreError> {
    sqlx::query(
        "update outbox set state = 'delivered', delivered_at = now(), last_error = null,
                updated_at = now()
          where id = $1",
    )
    .bind(id)
    .execute(pool)
    .await?;
    Ok(())
}

/// The attempt failed and another is due at `at`.
pub async fn mark_retry(
    pool: &PgPool,
    id: i64,
    at: DateTime<Utc>,
    error: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "update outbox set next_attempt_at = $2, last_error = $3, updated_at = now() where id = $1",
    )
    .bind(id)
    .bind(at)
    .bind(error)
    .execute(pool)
    .await?;
    Ok(())
}

/// The notification will not be delivered.
pub async fn mark_failed(pool: &PgPool, id: i64, error: &str) -> Result<(), StoreError> {
    sqlx::query(
        "update outbox set state = 'failed', failed_at = now(), last_error = $2, updated_at = now()
          where id = $1",
    )
    .bind(id)
    .bind(error)
    .execute(pool)
    .await?;
    Ok(())
}

/// One notification and what became of it.
#[derive(Clone, Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Notification {
    /// Outbox id (the `X-Shipgate-Delivery` header; also the pagination cursor).
    pub id: i64,
    /// The channel's name.
    pub channel: String,
    /// `rollout.started`, `rollout.paused`, `rollout.succeeded`, `rollout.failed`,
    /// `approval.requested`, `rollback.started` or `rollback.finished`.
    pub event: String,
    /// `info`, `warning` or `critical`.
    pub severity: String,
    /// `pending`, `delivered` or `failed`.
    pub state: String,
    /// Attempts made so far.
    pub attempts: i32,
    /// Why the last attempt failed (the status or transport error; never the URL).
    pub last_error: Option<String>,
    /// Environment.
    pub environment: Option<String>,
    /// Rollout.
    pub rollout_id: Option<Uuid>,
    /// Queued at.
    pub created_at: DateTime<Utc>,
    /// When the next attempt is due (pending only).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Delivered at.
    pub delivered_at: Option<DateTime<Utc>>,
    /// Given up at.
    pub failed_at: Option<DateTime<Utc>>,
}

/// An app's notifications, newest first, paged by id.
pub async fn list(
    executor: impl PgExecutor<'_>,
    app_id: Uuid,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<Notification>, StoreError> {
    Ok(sqlx::query_as::<_, Notification>(
        "select id, channel, event, severity, state, attempts, last_error,
                payload->>'environment' as environment,
                (payload->>'rollout_id')::uuid as rollout_id, created_at,
                case when state = 'pending' then next_attempt_at end as next_attempt_at,
                delivered_at, failed_at
           from outbox
          where app_id = $1 and ($2::bigint is null or id < $2)
          order by id desc
          limit $3",
    )
    .bind(app_id)
    .bind(before)
    .bind(limit)
    .fetch_all(executor)
    .await?)
}
