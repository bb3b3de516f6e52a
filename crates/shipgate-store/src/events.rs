//! The append-only audit log.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgExecutor;
use uuid::Uuid;

use shipgate_domain::notification::NotificationEvent;

use crate::{notifications, StoreError};

/// Who did something.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Actor {
    /// `user`, `token`, `webhook`, `engine` or `system`.
    pub kind: &'static str,
    /// The user name, token name, delivery id or replica id.
    pub name: String,
}

impl Actor {
    /// The engine replica `name`.
    pub fn engine(name: &str) -> Self {
        Actor {
            kind: "engine",
            name: name.to_owned(),
        }
    }

    /// A dashboard user.
    pub fn user(name: &str) -> Self {
        Actor {
            kind: "user",
            name: name.to_owned(),
        }
    }

    /// A bearer token.
    pub fn token(name: &str) -> Self {
        Actor {
            kind: "token",
            name: name.to_owned(),
        }
    }

    /// Shipgate itself (the demo, start-up).
    pub fn system(name: &str) -> Self {
        Actor {
            kind: "system",
            name: name.to_owned(),
        }
    }

    /// How the actor is written in `created_by` columns.
    pub fn label(&self) -> String {
        format!("{}:{}", self.kind, self.name)
    }
}

/// Where an event belongs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Scope {
    /// App.
    pub app_id: Option<Uuid>,
    /// Environment.
    pub environment_id: Option<Uuid>,
    /// Rollout.
    pub rollout_id: Option<Uuid>,
}

/// Appends an event. One that announces a notification (a rollout started, paused, succeeded
/// or failed, an approval requested, a rollback started or finished) also queues it for the
/// app's channels that route it, in the same statement, so the caller's transaction commits
/// both or neither.
pub async fn record(
    executor: impl PgExecutor<'_>,
    scope: Scope,
    actor: &Actor,
    action: &str,
    details: Value,
) -> Result<(), StoreError> {
    if scope.app_id.is_some() {
        if let Some(event) = NotificationEvent::from_action(action, &details) {
            return notifications::record_announced(executor, scope, actor, action, details, event)
                .await;
        }
    }
    sqlx::query(
        "insert into events (app_id, environment_id, rollout_id, actor_kind, actor, action, details)
         values ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(scope.app_id)
    .bind(scope.environment_id)
    .bind(scope.rollout_id)
    .bind(actor.kind)
    .bind(&actor.name)
    .bind(action)
    .bind(details)
    .execute(executor)
    .await?;
    Ok(())
}

/// Appends events that announce nothing, in one statement, in the order given.
pub async fn record_plain(
    executor: impl PgExecutor<'_>,
    scope: Scope,
    actor: &Actor,
    actions: &[String],
    details: &[Value],
) -> Result<(), StoreError> {
    sqlx::query(
        "insert into events (app_id, environment_id, rollout_id, actor_kind, actor, action, details)
         select $1, $2, $3, $4, $5, e.action, e.details
           from unnest($6::text[], $7::jsonb[]) with ordinality as e(action, details, n)
          order by e.n",
    )
    .bind(scope.app_id)
    .bind(scope.environment_id)
    .bind(scope.rollout_id)
    .bind(actor.kind)
    .bind(&actor.name)
    .bind(actions)
    .bind(details)
    .execute(executor)
    .await?;
    Ok(())
}

/// One audit record.
#[derive(Clone, Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Event {
    /// Sequence number (also the pagination cursor).
    pub id: i64,
    /// When.
    pub at: DateTime<Utc>,
    /// App name.
    pub app: Option<String>,
    /// Environment name.
    pub environment: Option<String>,
    /// Rollout.
    pub rollout_id: Option<Uuid>,
    /// Actor kind.
    pub actor_kind: String,
    /// Actor name.
    pub actor: String,
    /// What happened.
    pub action: String,
    /// Details.
    pub details: Value,
}

/// Filters for [`list`].
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    /// Only this app.
    pub app: Option<String>,
    /// Only this rollout.
    pub rollout_id: Option<Uuid>,
    /// Only events older than this id (cursor).
    pub before: Option<i64>,
    /// Only events newer than this id (for following a rollout).
    pub after: Option<i64>,
    /// At most this many.
    pub limit: i64,
}

/// Events, newest first (or oldest first when following with `after`).
pub async fn list(
    executor: impl PgExecutor<'_>,
    filter: &EventFilter,
) -> Result<Vec<Event>, StoreError> {
    let order = if filter.after.is_some() {
        "asc"
    } else {
        "desc"
    };
    let sql = format!(
        "select e.id, e.at, a.name as app, en.name as environment, e.rollout_id, e.actor_kind,
                e.actor, e.action, e.details
           from events e
           left join apps a on a.id = e.app_id
           left join environments en on en.id = e.environment_id
          where ($1::text is null or a.name = $1)
            and ($2::uuid is null or e.rollout_id = $2)
            and ($3::bigint is null or e.id < $3)
            and ($4::bigint is null or e.id > $4)
          order by e.id {order}
          limit $5"
    );
    Ok(sqlx::query_as::<_, Event>(&sql)
        .bind(&filter.app)
        .bind(filter.rollout_id)
        .bind(filter.before)
        .bind(filter.after)
        .bind(filter.limit)
        .fetch_all(executor)
        .await?)
}
