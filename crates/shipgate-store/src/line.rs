//! "Stop the line": pausing every rollout in flight in an app (or in all apps) at once, and
//! holding back anything new until someone resumes the line. While an app's line is stopped,
//! `rollouts::admit` (every start passes it) refuses new rollouts (naming the reason) and the
//! engine neither activates queued rollouts nor starts approved ones; rollbacks are exempt, so
//! a bad deploy can still be undone. Resuming the line resumes exactly the rollouts the stop
//! paused.
//!
//! Whoever starts a rollout (a request or the engine) locks the app's row `for share`, stopped
//! or not, so a start and a stop never interleave: the start either commits before the stop
//! marks the app (the stop's update waits for it), or waits for the stop to commit and then sees
//! the line stopped.
//!
//! Lock order of starts, stops, resumes and applies: the app's row, then its environments'
//! rows, then its rollouts'. A start through an environment takes the app's row before the
//! environment's ([`hold`]), as applying a config does, so neither holds one while waiting for
//! the other. Two paths differ, and cannot close a cycle with these: the engine holds the one
//! rollout it drives (its fence) before the app's row, and only activates or starts a queued or
//! approved rollout there, which a stop does not lock and a resume skips while locked; a
//! rollback (exempt from the line) locks the environment's active rollouts, then the
//! environment, and takes only the key-share lock foreign keys take on the app's row.

use serde::Serialize;
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use tracing::warn;
use uuid::Uuid;

use crate::events::{self, Actor, Scope};
use crate::rollouts::notify;
use crate::StoreError;

/// A rollout a line stop paused, or a line resume resumed.
#[derive(Clone, Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct LineRollout {
    /// Id.
    pub id: Uuid,
    /// App.
    pub app: String,
    /// Environment.
    pub environment: String,
    /// Release version.
    pub release: String,
    /// State after the stop or resume.
    pub state: String,
}

/// What a stop or resume of the line did.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct LineOutcome {
    /// Why the line is stopped (`None` after a resume).
    pub reason: Option<String>,
    /// The rollouts paused (by a stop) or resumed (by a resume), oldest first.
    pub rollouts: Vec<LineRollout>,
}

/// Why the line of the app `app` (a query parameter such as `$1`) is stopped, `null` if it
/// is not, as a scalar sub-select for queries that read it along with other things. Holds the
/// app's row `for share` until the transaction ends, stopped or not, so the line cannot stop
/// between this check and the start it guards; and a stop that has marked the app but not yet
/// committed (its row update conflicts with the share lock) is waited for and then seen. The
/// lock must not depend on the row's state: under the reader's snapshot an uncommitted stop
/// leaves the line running, and a lock taken only "where stopped" would take nothing.
pub(crate) fn stopped_reason(app: &str) -> String {
    format!(
        "(select case when line_stopped_at is not null
                      then coalesce(line_stopped_reason, 'no reason recorded') end
            from apps where id = {app} for share)"
    )
}

/// Share-locks the app's row until the transaction ends, before a start takes its environment's
/// lock: see the lock order above. A start that held its environment while waiting for the
/// app's row would deadlock with an apply, which writes the app's row and then the
/// environments', or with a stop waiting for a rollback that waits for that environment.
pub(crate) async fn hold(tx: &mut PgConnection, app_id: Uuid) -> Result<(), StoreError> {
    sqlx::query("select 1 from apps where id = $1 for share")
        .bind(app_id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Why the app's line is stopped, if it is (see [`stopped_reason`]).
pub async fn stopped(tx: &mut PgConnection, app_id: Uuid) -> Result<Option<String>, StoreError> {
    Ok(
        sqlx::query_scalar(&format!("select {}", stopped_reason("$1")))
            .bind(app_id)
            .fetch_one(&mut *tx)
            .await?,
    )
}

/// The refusal of a start while the line is stopped.
pub fn refusal(app: &str, reason: &str) -> StoreError {
    StoreError::Refused(format!(
        "the line of {app} is stopped ({reason}); nothing new starts until it is resumed \
         (rollbacks still may)"
    ))
}

/// Stops the line of one app (`Some(app_id)`) or of every app (`None`): pauses every rollout in
/// progress there (rollbacks excepted) and holds back anything new. Stopping a stopped line
/// keeps its reason and pauses only what runs again since. Returns the rollouts it paused.
pub async fn stop(
    pool: &PgPool,
    app_id: Option<Uuid>,
    reason: &str,
    actor: &Actor,
) -> Result<LineOutcome, StoreError> {
    let mut tx = pool.begin().await?;
    let apps: Vec<(Uuid, String)> = sqlx::query_as(
        "update apps set line_stopped_at = coalesce(line_stopped_at, now()),
                line_stopped_reason = coalesce(line_stopped_reason, $2),
                line_stopped_by = coalesce(line_stopped_by, $3)
          where ($1::uuid is null or id = $1)
         returning id, line_stopped_reason",
    )
    .bind(app_id)
    .bind(reason)
    .bind(actor.label())
    .fetch_all(&mut *tx)
    .await?;
    if app_id.is_some() && apps.is_empty() {
        return Err(StoreError::NotFound("app".into()));
    }
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "select id from rollouts
          where ($1::uuid is null or app_id = $1) and state = 'in_progress' and kind <> 'rollback'
          order by id for no key update",
    )
    .bind(app_id)
    .fetch_all(&mut *tx)
    .await?;
    let paused: Vec<(Uuid, Uuid, Uuid)> = sqlx::query_as(
        "update rollouts r set state = 'paused',
                state_reason = 'the line was stopped: ' || a.line_stopped_reason,
                line_stopped_at = now(), next_wake_at = now(), updated_at = now(),
                version = r.version + 1
           from apps a
          where a.id = r.app_id and r.id = any($1)
         returning r.id, r.app_id, r.environment_id",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    for (id, app, environment) in &paused {
        let reason = apps
            .iter()
            .find(|(stopped, _)| stopped == app)
            .map_or(reason, |(_, reason)| reason.as_str());
        events::record(
            &mut *tx,
            Scope {
                app_id: Some(*app),
                environment_id: Some(*environment),
                rollout_id: Some(*id),
            },
            actor,
            "rollout.pause",
            json!({ "from": "in_progress", "to": "paused", "line_stopped": true, "reason": reason }),
        )
        .await?;
        notify(&mut tx, *id).await?;
    }
    let reason = match app_id {
        Some(_) => apps.first().map(|(_, reason)| reason.clone()),
        None => Some(reason.to_owned()),
    };
    events::record(
        &mut *tx,
        Scope {
            app_id,
            environment_id: None,
            rollout_id: None,
        },
        actor,
        "line.stopped",
        json!({ "reason": reason, "paused": ids }),
    )
    .await?;
    let rollouts = summaries(&mut tx, &ids).await?;
    tx.commit().await?;
    Ok(LineOutcome { reason, rollouts })
}

/// Resumes the line of one app or of every app: clears the stop, resumes the rollouts the stop
/// paused that are still paused by it (one a person resumed and paused again meanwhile stays
/// paused), and wakes what waited to start. Resuming a running line does nothing.
pub async fn resume(
    pool: &PgPool,
    app_id: Option<Uuid>,
    actor: &Actor,
) -> Result<LineOutcome, StoreError> {
    let mut tx = pool.begin().await?;
    let cleared = sqlx::query(
        "update apps set line_stopped_at = null, line_stopped_reason = null, line_stopped_by = null
          where ($1::uuid is null or id = $1)",
    )
    .bind(app_id)
    .execute(&mut *tx)
    .await?;
    if app_id.is_some() && cleared.rows_affected() == 0 {
        return Err(StoreError::NotFound("app".into()));
    }
    // A rollout the stop paused that has moved on since (cancelled, rolled back) only drops
    // the mark.
    sqlx::query(
        "update rollouts set line_stopped_at = null
          where ($1::uuid is null or app_id = $1) and line_stopped_at is not null
            and state <> 'paused'",
    )
    .bind(app_id)
    .execute(&mut *tx)
    .await?;
    let resumed: Vec<(Uuid, Uuid, Uuid)> = sqlx::query_as(
        "update rollouts set state = 'in_progress', state_reason = null, line_stopped_at = null,
                next_wake_at = now(), updated_at = now(), version = version + 1
          where ($1::uuid is null or app_id = $1) and line_stopped_at is not null
            and state = 'paused'
         returning id, app_id, environment_id",
    )
    .bind(app_id)
    .fetch_all(&mut *tx)
    .await?;
    let mut resumed_ids = Vec::new();
    for (id, app, environment) in resumed {
        resumed_ids.push(id);
        events::record(
            &mut *tx,
            Scope {
                app_id: Some(app),
                environment_id: Some(environment),
                rollout_id: Some(id),
            },
            actor,
            "rollout.resume",
            json!({ "from": "paused", "to": "in_progress", "line_resumed": true }),
        )
        .await?;
        notify(&mut tx, id).await?;
    }
    // Queued and approved rollouts held back by the stop: look at them again now. One locked
    // this instant is skipped (waiting for it here could deadlock): either the engine is
    // activating or starting it, waits for the app's row we hold and then sees the line
    // running, or the engine saw the line stopped and is giving it back (woken after commit).
    let waiting: Vec<Uuid> = sqlx::query_scalar(
        "update rollouts set next_wake_at = now(), version = version + 1
          where id in (select id from rollouts
                        where ($1::uuid is null or app_id = $1)
                          and state in ('queued', 'pending_approval')
                        order by id for update skip locked)
         returning id",
    )
    .bind(app_id)
    .fetch_all(&mut *tx)
    .await?;
    for id in &waiting {
        notify(&mut tx, *id).await?;
    }
    events::record(
        &mut *tx,
        Scope {
            app_id,
            environment_id: None,
            rollout_id: None,
        },
        actor,
        "line.resumed",
        json!({ "resumed": resumed_ids }),
    )
    .await?;
    let rollouts = summaries(&mut tx, &resumed_ids).await?;
    tx.commit().await?;
    // The line runs again whatever happens next: a failure here is logged, not answered.
    if let Err(error) = wake_skipped(pool, app_id, &waiting).await {
        warn!(%error, "waking the rollouts the resume skipped failed; they wake at their fallback");
    }
    Ok(LineOutcome {
        reason: None,
        rollouts,
    })
}

/// After a resume committed: wakes the queued and approved rollouts its wake skipped (`woken`
/// are those it did wake). One skipped was locked by an engine that read the line as stopped
/// before the resume, and that is giving the rollout back until its fallback wake an hour
/// later. With the app's row free, this waits for it and wakes it: the version bump makes the
/// engine's lease release (before or after this) leave it due now.
async fn wake_skipped(
    pool: &PgPool,
    app_id: Option<Uuid>,
    woken: &[Uuid],
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    let late: Vec<Uuid> = sqlx::query_scalar(
        "update rollouts set next_wake_at = now(), version = version + 1
          where ($1::uuid is null or app_id = $1) and state in ('queued', 'pending_approval')
            and not (id = any($2))
         returning id",
    )
    .bind(app_id)
    .bind(woken)
    .fetch_all(&mut *tx)
    .await?;
    for id in late {
        notify(&mut tx, id).await?;
    }
    tx.commit().await?;
    Ok(())
}

async fn summaries(tx: &mut PgConnection, ids: &[Uuid]) -> Result<Vec<LineRollout>, StoreError> {
    Ok(sqlx::query_as::<_, LineRollout>(
        "select r.id, a.name as app, e.name as environment, rel.version as release,
                r.state::text as state
           from rollouts r
           join apps a on a.id = r.app_id
           join environments e on e.id = r.environment_id
           join releases rel on rel.id = r.release_id
          where r.id = any($1)
          order by r.id",
    )
    .bind(ids)
    .fetch_all(&mut *tx)
    .await?)
}
