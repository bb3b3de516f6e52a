//! Freeze windows: what people create (one-off or weekly, in a time zone), list and delete,
//! and the preview of what a window would block before it is created. The rule itself, applied
//! to every start, and the announcements of windows' edges live in [`crate::policy`].

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use shipgate_domain::freeze::Schedule;

use crate::events::{self, Actor, Scope};
use crate::policy::{Initiator, Start};
use crate::StoreError;

/// A freeze window: while it is on, the rollouts it blocks do not start in its environments
/// (enforced for every way in by [`crate::policy`]).
#[derive(Clone, Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct FreezeWindow {
    /// Id.
    pub id: Uuid,
    /// The environment it freezes (`None`: every environment of the app).
    pub environment: Option<String>,
    /// What it is (`holiday`, `launch day`).
    pub name: String,
    /// `one_off` or `weekly`.
    pub kind: String,
    /// Start (one-off windows).
    pub starts_at: Option<DateTime<Utc>>,
    /// End (one-off windows).
    pub ends_at: Option<DateTime<Utc>>,
    /// Days and local times (weekly windows).
    pub weekly: Option<Value>,
    /// Time zone of weekly windows.
    pub time_zone: String,
    /// Whether people's rollouts are blocked.
    pub blocks_manual: bool,
    /// Whether automatic (webhook) rollouts are blocked.
    pub blocks_automation: bool,
    /// Whether rollbacks may still run.
    pub allows_rollback: bool,
    /// Why.
    pub reason: Option<String>,
    /// Who made it.
    pub created_by: String,
}

impl FreezeWindow {
    /// Whether the window is on at `now`, one-off or weekly (an unreadable window counts as on;
    /// see [`FreezeWindow::on_until`]).
    pub fn is_on(&self, now: DateTime<Utc>) -> bool {
        !matches!(self.on_until(now), Ok(None))
    }
}

/// The columns of a [`FreezeWindow`] and the tables they come from (`f`: the window, `e`: its
/// environment), for a query to finish with its `where`.
pub(crate) const SELECT: &str =
    "f.id, e.name as environment, f.name, f.kind, f.starts_at, f.ends_at, f.weekly, f.time_zone,
     f.blocks_manual, f.blocks_automation, f.allows_rollback, f.reason, f.created_by
     from freeze_windows f left join environments e on e.id = f.environment_id";

/// An app's freeze windows, current and future first.
pub async fn list(pool: &PgPool, app_id: Uuid) -> Result<Vec<FreezeWindow>, StoreError> {
    Ok(sqlx::query_as::<_, FreezeWindow>(&format!(
        "select {SELECT} where f.app_id = $1
          order by (f.ends_at is not null and f.ends_at < now()), f.starts_at nulls last, f.name"
    ))
    .bind(app_id)
    .fetch_all(pool)
    .await?)
}

/// When a new window is on.
#[derive(Clone, Debug)]
pub enum FreezeTimes {
    /// From `starts_at` to `ends_at`.
    OneOff {
        /// Start.
        starts_at: DateTime<Utc>,
        /// End (exclusive).
        ends_at: DateTime<Utc>,
    },
    /// The same parts of every week (`"Fri 18:00-Mon 08:00"`, a list of such spans, or
    /// `{"days": [...], "start": "HH:MM", "end": "HH:MM"}`), read in an IANA time zone.
    Weekly {
        /// The parts of the week.
        weekly: Value,
        /// The zone, e.g. `Europe/Berlin`.
        time_zone: String,
    },
}

/// A freeze window to create (or preview).
#[derive(Clone, Debug)]
pub struct NewFreeze<'a> {
    /// The app.
    pub app_id: Uuid,
    /// One environment (id and name), or the whole app.
    pub environment: Option<(Uuid, String)>,
    /// Name.
    pub name: &'a str,
    /// When it is on.
    pub times: FreezeTimes,
    /// Why.
    pub reason: Option<&'a str>,
    /// Whether rollouts people start are blocked.
    pub blocks_manual: bool,
    /// Whether automatic rollouts (pushes, auto-promotion) are blocked.
    pub blocks_automation: bool,
    /// Whether rollbacks may still run.
    pub allows_rollback: bool,
}

impl NewFreeze<'_> {
    /// The window as it would be stored; refuses what cannot be read, saying why.
    fn window(&self, created_by: &str) -> Result<FreezeWindow, StoreError> {
        let (kind, starts_at, ends_at, weekly, time_zone) = match &self.times {
            FreezeTimes::OneOff { starts_at, ends_at } => {
                if ends_at <= starts_at {
                    return Err(StoreError::Refused(
                        "a freeze window must end after it starts".into(),
                    ));
                }
                (
                    "one_off",
                    Some(*starts_at),
                    Some(*ends_at),
                    None,
                    "UTC".to_owned(),
                )
            }
            FreezeTimes::Weekly { weekly, time_zone } => (
                "weekly",
                None,
                None,
                Some(weekly.clone()),
                time_zone.clone(),
            ),
        };
        if !self.blocks_manual && !self.blocks_automation {
            return Err(StoreError::Refused(
                "a freeze window must block rollouts people start, automatic ones, or both".into(),
            ));
        }
        let window = FreezeWindow {
            id: Uuid::now_v7(),
            environment: self.environment.as_ref().map(|(_, name)| name.clone()),
            name: self.name.to_owned(),
            kind: kind.to_owned(),
            starts_at,
            ends_at,
            weekly,
            time_zone,
            blocks_manual: self.blocks_manual,
            blocks_automation: self.blocks_automation,
            allows_rollback: self.allows_rollback,
            reason: self.reason.map(str::to_owned),
            created_by: created_by.to_owned(),
        };
        window.schedule().map_err(StoreError::Refused)?;
        Ok(window)
    }
}

impl FreezeWindow {
    /// The window's schedule, or why it cannot be read.
    pub fn schedule(&self) -> Result<Schedule, String> {
        Schedule::from_stored(
            &self.kind,
            self.starts_at,
            self.ends_at,
            self.weekly.as_ref(),
            &self.time_zone,
        )
        .map_err(|error| error.to_string())
    }
}

/// Creates a freeze window and audits it.
pub async fn create(
    pool: &PgPool,
    new: &NewFreeze<'_>,
    actor: &Actor,
) -> Result<FreezeWindow, StoreError> {
    let window = new.window(&actor.label())?;
    let mut tx = pool.begin().await?;
    sqlx::query(
        "insert into freeze_windows (id, app_id, environment_id, name, kind, starts_at, ends_at,
                                     weekly, time_zone, blocks_manual, blocks_automation,
                                     allows_rollback, reason, created_by)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(window.id)
    .bind(new.app_id)
    .bind(new.environment.as_ref().map(|(id, _)| *id))
    .bind(&window.name)
    .bind(&window.kind)
    .bind(window.starts_at)
    .bind(window.ends_at)
    .bind(&window.weekly)
    .bind(&window.time_zone)
    .bind(window.blocks_manual)
    .bind(window.blocks_automation)
    .bind(window.allows_rollback)
    .bind(&window.reason)
    .bind(&window.created_by)
    .execute(&mut *tx)
    .await?;
    events::record(
        &mut *tx,
        Scope {
            app_id: Some(new.app_id),
            environment_id: new.environment.as_ref().map(|(id, _)| *id),
            rollout_id: None,
        },
        actor,
        "freeze.created",
        json!({
            "id": window.id, "name": window.name, "kind": window.kind,
            "starts_at": window.starts_at, "ends_at": window.ends_at,
            "weekly": window.weekly, "time_zone": window.time_zone,
        }),
    )
    .await?;
    tx.commit().await?;
    Ok(window)
}

/// One occurrence of a window.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Occurrence {
    /// Start.
    pub starts_at: DateTime<Utc>,
    /// End (exclusive).
    pub ends_at: DateTime<Utc>,
}

/// A rollout a window would block or hold.
#[derive(Clone, Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Affected {
    /// The rollout.
    pub id: Uuid,
    /// Its environment.
    pub environment: String,
    /// The release it deploys.
    pub release: String,
    /// Its state.
    pub state: String,
    /// How it was started (`api`, `webhook`, `auto-promotion`, ...).
    pub trigger: String,
    /// Whether it is a rollback.
    pub kind: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// What a window would do, before it is created.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct FreezePreview {
    /// The schedule as people read it.
    pub schedule: String,
    /// Whether it would be on now.
    pub on_now: bool,
    /// Its next occurrences (the current one first), up to five.
    pub next: Vec<Occurrence>,
    /// What it blocks: `rollouts started by people`, `automatic rollouts`, `rollbacks`.
    pub blocks: Vec<String>,
    /// Rollouts in flight now that it would hold before their next phase (it is on now) or
    /// that its next occurrence would hold if they are still running then.
    pub in_flight: Vec<Affected>,
    /// Rollouts of the last 30 days it would have refused when they started.
    pub last_30_days_blocked: i64,
    /// Rollouts of the last 30 days in the environments it covers.
    pub last_30_days_total: i64,
    /// Up to 20 of those it would have refused, newest first.
    pub last_30_days_examples: Vec<Affected>,
}

/// Shows what a window would block, without creating it: its next occurrences, the rollouts in
/// flight it would hold, and the rollouts of the last 30 days it would have refused.
pub async fn preview(pool: &PgPool, new: &NewFreeze<'_>) -> Result<FreezePreview, StoreError> {
    let window = new.window("preview")?;
    let schedule = window.schedule().map_err(StoreError::Refused)?;
    let now: DateTime<Utc> = sqlx::query_scalar("select now()").fetch_one(pool).await?;
    let blocks_now = |rollout: &Affected, at: DateTime<Utc>| {
        window
            .blocks(
                Start {
                    environment: &rollout.environment,
                    initiator: Initiator::of_trigger(&rollout.trigger),
                    rollback: rollout.kind == "rollback",
                },
                at,
            )
            .is_some()
    };
    let rollouts = |since: Option<DateTime<Utc>>, active: bool| {
        sqlx::query_as::<_, Affected>(
            "select r.id, e.name as environment, rel.version as release, r.state::text as state,
                    r.trigger, r.kind::text as kind, r.created_at
               from rollouts r
               join environments e on e.id = r.environment_id
               join releases rel on rel.id = r.release_id
              where r.app_id = $1 and ($2::uuid is null or r.environment_id = $2)
                and ($3::timestamptz is null or r.created_at >= $3)
                and (not $4 or r.state in ('queued', 'pending_approval', 'in_progress', 'paused'))
              order by r.created_at desc
              limit 20000",
        )
        .bind(new.app_id)
        .bind(new.environment.as_ref().map(|(id, _)| *id))
        .bind(since)
        .bind(active)
        .fetch_all(pool)
    };
    let next: Vec<Occurrence> = schedule
        .occurrences(now, 5)
        .into_iter()
        .map(|(starts_at, ends_at)| Occurrence { starts_at, ends_at })
        .collect();
    let on_now = schedule.on_until(now).is_some();
    // In flight: held now if on now, else at the next occurrence's start if still running.
    let at = next.first().map(|occurrence| occurrence.starts_at.max(now));
    let in_flight = match at {
        Some(at) => rollouts(None, true)
            .await?
            .into_iter()
            .filter(|rollout| blocks_now(rollout, at))
            .collect(),
        None => Vec::new(),
    };
    let recent = rollouts(Some(now - Duration::days(30)), false).await?;
    let blocked: Vec<Affected> = recent
        .iter()
        .filter(|rollout| blocks_now(rollout, rollout.created_at))
        .cloned()
        .collect();
    let mut blocks = Vec::new();
    if window.blocks_manual {
        blocks.push("rollouts started by people".to_owned());
    }
    if window.blocks_automation {
        blocks.push("automatic rollouts".to_owned());
    }
    if !window.allows_rollback {
        blocks.push("rollbacks".to_owned());
    }
    Ok(FreezePreview {
        schedule: schedule.to_string(),
        on_now,
        next,
        blocks,
        in_flight,
        last_30_days_blocked: blocked.len() as i64,
        last_30_days_total: recent.len() as i64,
        last_30_days_examples: blocked.into_iter().take(20).collect(),
    })
}

/// Deletes a freeze window of an app and audits it; rollouts it held go on at once.
pub async fn delete(
    pool: &PgPool,
    app_id: Uuid,
    id: Uuid,
    actor: &Actor,
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    let deleted: Option<(String, bool, Option<Uuid>)> = sqlx::query_as(
        "delete from freeze_windows where id = $1 and app_id = $2
         returning name, announced_on, environment_id",
    )
    .bind(id)
    .bind(app_id)
    .fetch_optional(&mut *tx)
    .await?;
    let (name, announced_on, environment_id) =
        deleted.ok_or_else(|| StoreError::NotFound(format!("freeze window {id}")))?;
    if announced_on {
        // Its beginning was announced: so is its end, now.
        events::record(
            &mut *tx,
            Scope {
                app_id: Some(app_id),
                environment_id,
                rollout_id: None,
            },
            actor,
            "freeze.ended",
            json!({
                "window": name, "id": id,
                "reason": format!("freeze window “{name}” was deleted"),
            }),
        )
        .await?;
    }
    events::record(
        &mut *tx,
        Scope {
            app_id: Some(app_id),
            ..Scope::default()
        },
        actor,
        "freeze.deleted",
        json!({ "id": id, "name": name }),
    )
    .await?;
    // The rollouts a window held look again now rather than at their next minute.
    let held: Vec<Uuid> = sqlx::query_scalar(
        "update rollouts set next_wake_at = now(), version = version + 1
          where app_id = $1 and state = 'in_progress' and starts_with(state_reason, $2)
         returning id",
    )
    .bind(app_id)
    .bind(crate::policy::HELD)
    .fetch_all(&mut *tx)
    .await?;
    for rollout in held {
        crate::rollouts::notify(&mut tx, rollout).await?;
    }
    tx.commit().await?;
    Ok(())
}
