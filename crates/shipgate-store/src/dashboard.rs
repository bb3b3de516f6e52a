//! What the dashboard reads and the few things only people do there: approvals of a rollout,
//! an app's rollback history with its incident notes and post-rollback checklists, where
//! releases are live, quarantining a release by hand, freeze windows, the audit log with
//! filters, and the samples behind the delivery metrics. Every list is bounded and served by
//! an index (see `migrations/20261201000300_dashboard.sql`), so a page costs the same with
//! a hundred releases or a hundred thousand.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use crate::events::{self, Actor, Event, Scope};
use crate::releases::{self, Release};
use crate::rollouts::{RollbackRecord, RolloutSummary};
use crate::StoreError;

/// A person's decision on a rollout.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct ApprovalRecord {
    /// Who (`user:ana`).
    pub actor: String,
    /// `approve` or `reject`.
    pub decision: String,
    /// Their words.
    pub comment: Option<String>,
    /// The phase whose gate it answered (`None`: the approval before start).
    pub phase: Option<String>,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// The approvals and rejections of a rollout, oldest first.
pub async fn approvals(pool: &PgPool, rollout_id: Uuid) -> Result<Vec<ApprovalRecord>, StoreError> {
    Ok(sqlx::query_as::<_, ApprovalRecord>(
        "select a.actor, a.decision, a.comment, p.name as phase, a.created_at
           from approvals a left join phases p on p.id = a.phase_id
          where a.rollout_id = $1 order by a.created_at, a.id",
    )
    .bind(rollout_id)
    .fetch_all(pool)
    .await?)
}

/// A rollback in an app's history, with what people wrote about it.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct RollbackEntry {
    /// Environment name.
    pub environment: String,
    /// The record as the API shows it.
    #[sqlx(flatten)]
    #[serde(flatten)]
    pub record: RollbackRecord,
    /// The incident note.
    pub incident_note: Option<String>,
    /// Done items of the post-rollback checklist: `{"item": {"by", "at"}}`.
    pub checklist: Value,
}

const ROLLBACK_ENTRY: &str =
    "select en.name as environment, b.rollout_id, b.rollback_of, f.version as from_release,
            t.version as to_release, b.trigger, b.reason, b.actor, b.detected_at, b.requested_at,
            b.restored_at, b.outcome, r.state::text as state, b.incident_note, b.checklist
       from rollbacks b
       join environments en on en.id = b.environment_id
       join rollouts r on r.id = b.rollout_id
       join releases t on t.id = b.to_release_id
       left join releases f on f.id = b.from_release_id";

/// An app's rollbacks, newest first.
pub async fn rollback_history(
    pool: &PgPool,
    app_id: Uuid,
    limit: i64,
) -> Result<Vec<RollbackEntry>, StoreError> {
    Ok(sqlx::query_as::<_, RollbackEntry>(&format!(
        "{ROLLBACK_ENTRY} where b.app_id = $1 order by b.requested_at desc limit $2"
    ))
    .bind(app_id)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// One rollback by its rollout id.
pub async fn rollback_entry(pool: &PgPool, rollout_id: Uuid) -> Result<RollbackEntry, StoreError> {
    sqlx::query_as::<_, RollbackEntry>(&format!("{ROLLBACK_ENTRY} where b.rollout_id = $1"))
        .bind(rollout_id)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("rollback {rollout_id}")))
}

/// The ids a rollback row belongs to, for events.
async fn rollback_scope(
    executor: impl PgExecutor<'_>,
    rollout_id: Uuid,
) -> Result<Scope, StoreError> {
    let (app_id, environment_id): (Uuid, Uuid) =
        sqlx::query_as("select app_id, environment_id from rollbacks where rollout_id = $1")
            .bind(rollout_id)
            .fetch_optional(executor)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("rollback {rollout_id}")))?;
    Ok(Scope {
        app_id: Some(app_id),
        environment_id: Some(environment_id),
        rollout_id: Some(rollout_id),
    })
}

/// Writes (or, with an empty text, clears) the incident note of a rollback.
pub async fn set_incident_note(
    pool: &PgPool,
    rollout_id: Uuid,
    note: &str,
    actor: &Actor,
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    let scope = rollback_scope(&mut *tx, rollout_id).await?;
    let note = note.trim();
    sqlx::query("update rollbacks set incident_note = nullif($2, '') where rollout_id = $1")
        .bind(rollout_id)
        .bind(note)
        .execute(&mut *tx)
        .await?;
    events::record(
        &mut *tx,
        scope,
        actor,
        "rollback.incident_note",
        json!({ "length": note.len() }),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Marks an item of a rollback's post-rollback checklist done (or not done again).
pub async fn set_checklist_item(
    pool: &PgPool,
    rollout_id: Uuid,
    item: &str,
    done: bool,
    actor: &Actor,
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    let scope = rollback_scope(&mut *tx, rollout_id).await?;
    sqlx::query(
        "update rollbacks set checklist = case
                when $3 then checklist || jsonb_build_object($2::text, jsonb_build_object('by', $4::text, 'at', now()))
                else checklist - $2::text end
          where rollout_id = $1",
    )
    .bind(rollout_id)
    .bind(item)
    .bind(done)
    .bind(actor.label())
    .execute(&mut *tx)
    .await?;
    events::record(
        &mut *tx,
        scope,
        actor,
        if done {
            "rollback.checklist_done"
        } else {
            "rollback.checklist_undone"
        },
        json!({ "item": item }),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Where a release runs: `(release id, environment, component)`, for a page of releases.
pub async fn where_live(
    pool: &PgPool,
    release_ids: &[Uuid],
) -> Result<Vec<(Uuid, String, String)>, StoreError> {
    Ok(sqlx::query_as(
        "select l.release_id, e.name, c.name
           from live_components l
           join environments e on e.id = l.environment_id
           join components c on c.id = l.component_id
          where l.release_id = any($1) and e.retired_at is null
          order by e.position, c.position",
    )
    .bind(release_ids)
    .fetch_all(pool)
    .await?)
}

/// When each of these releases last succeeded in each environment: `(release id,
/// environment id, finished at)`.
pub async fn succeeded_in(
    pool: &PgPool,
    release_ids: &[Uuid],
) -> Result<Vec<(Uuid, Uuid, DateTime<Utc>)>, StoreError> {
    Ok(sqlx::query_as(
        "select release_id, environment_id, max(finished_at)
           from rollouts
          where release_id = any($1) and state = 'succeeded' and finished_at is not null
          group by release_id, environment_id",
    )
    .bind(release_ids)
    .fetch_all(pool)
    .await?)
}

/// Quarantines a release by hand (`reason`), or clears its quarantine (`None`), and audits it.
pub async fn quarantine(
    pool: &PgPool,
    app_id: Uuid,
    version: &str,
    reason: Option<&str>,
    actor: &Actor,
) -> Result<Release, StoreError> {
    let mut tx = pool.begin().await?;
    let release = releases::by_version(&mut *tx, app_id, version).await?;
    releases::set_quarantine(&mut *tx, release.id, reason).await?;
    events::record(
        &mut *tx,
        Scope {
            app_id: Some(app_id),
            ..Scope::default()
        },
        actor,
        if reason.is_some() {
            "release.quarantined"
        } else {
            "release.quarantine_cleared"
        },
        json!({ "version": version, "reason": reason }),
    )
    .await?;
    let release = releases::by_id(&mut *tx, release.id).await?;
    tx.commit().await?;
    Ok(release)
}

/// The quarantined releases of an app, most recently quarantined first.
pub async fn quarantined(
    pool: &PgPool,
    app_id: Uuid,
    limit: i64,
) -> Result<Vec<(String, String)>, StoreError> {
    Ok(sqlx::query_as(
        "select version, coalesce(quarantine_reason, '') from releases
          where app_id = $1 and quarantined_at is not null
          order by quarantined_at desc limit $2",
    )
    .bind(app_id)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// The phases of some rollouts: `(rollout id, name, state)` in order.
pub async fn phases_of(
    pool: &PgPool,
    rollout_ids: &[Uuid],
) -> Result<Vec<(Uuid, String, String)>, StoreError> {
    Ok(sqlx::query_as(
        "select rollout_id, name, state::text from phases
          where rollout_id = any($1) order by rollout_id, position",
    )
    .bind(rollout_ids)
    .fetch_all(pool)
    .await?)
}

/// The latest health measurement in an environment: `(verdict, when)` of the newest health
/// check of its newest rollout that has one.
pub async fn latest_health(
    pool: &PgPool,
    environment_id: Uuid,
) -> Result<Option<(String, DateTime<Utc>)>, StoreError> {
    Ok(sqlx::query_as(
        "select g.verdict, g.checked_at
           from (select id from rollouts where environment_id = $1
                  order by created_at desc limit 5) r
           cross join lateral (select verdict, checked_at, id from gate_checks
                                where rollout_id = r.id and gate_kind = 'health'
                                order by id desc limit 1) g
          order by g.id desc limit 1",
    )
    .bind(environment_id)
    .fetch_optional(pool)
    .await?)
}

/// Filters of the audit log; every one optional.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// App name.
    pub app: Option<String>,
    /// Environment name (of `app`, or of any app).
    pub environment: Option<String>,
    /// Actor name (`ana`) or label (`user:ana`).
    pub actor: Option<String>,
    /// Actions starting with this (`rollout.`, `release.quarantined`).
    pub action: Option<String>,
    /// One rollout.
    pub rollout_id: Option<Uuid>,
    /// Older than this event id (the next page).
    pub before: Option<i64>,
    /// At most this many.
    pub limit: i64,
}

/// The audit log, newest first, filtered. Names are resolved to ids first, so each filter
/// is served by an index (`events_app_idx`, `events_environment_idx`, `events_actor_idx`).
pub async fn audit(pool: &PgPool, filter: &AuditFilter) -> Result<Vec<Event>, StoreError> {
    // `user:ana` names the kind too; `ana` any actor of that name.
    let (actor_kind, actor) = match filter.actor.as_deref().map(|a| a.split_once(':')) {
        Some(Some((kind, name))) => (Some(kind.to_owned()), Some(name.to_owned())),
        Some(None) => (None, filter.actor.clone()),
        None => (None, None),
    };
    Ok(sqlx::query_as::<_, Event>(
        "with wanted_app as (select id from apps where name = $1),
              wanted_environments as (
                select id from environments
                 where name = $2 and ($1::text is null or app_id = (select id from wanted_app)))
         select e.id, e.at, a.name as app, en.name as environment, e.rollout_id, e.actor_kind,
                e.actor, e.action, e.details
           from events e
           left join apps a on a.id = e.app_id
           left join environments en on en.id = e.environment_id
          where ($1::text is null or e.app_id = (select id from wanted_app))
            and ($2::text is null or e.environment_id = any(array(select id from wanted_environments)))
            and ($3::text is null or e.actor = $3)
            and ($4::text is null or e.actor_kind = $4)
            and ($5::text is null or starts_with(e.action, $5))
            and ($6::uuid is null or e.rollout_id = $6)
            and ($7::bigint is null or e.id < $7)
          order by e.id desc
          limit $8",
    )
    .bind(&filter.app)
    .bind(&filter.environment)
    .bind(actor)
    .bind(actor_kind)
    .bind(&filter.action)
    .bind(filter.rollout_id)
    .bind(filter.before)
    .bind(filter.limit)
    .fetch_all(pool)
    .await?)
}

/// The deploys and promotions that ended in one bucket of time (`bucket: None`: the whole
/// window), for the delivery metrics.
#[derive(Clone, Debug, Default, Serialize, sqlx::FromRow)]
pub struct DeployBucket {
    /// Index of the bucket from the window's start; `None` for the whole window.
    pub bucket: Option<i32>,
    /// Succeeded.
    pub succeeded: i64,
    /// Failed or rolled back.
    pub failed: i64,
    /// Finished in all.
    pub finished: i64,
    /// Median seconds from the commit (or, without one, the release) to the end of the
    /// succeeded ones.
    pub lead_seconds: Option<f64>,
}

/// The rollbacks that restored service in one bucket of time (`bucket: None`: the whole
/// window).
#[derive(Clone, Debug, Default, Serialize, sqlx::FromRow)]
pub struct RestoreBucket {
    /// Index of the bucket from the window's start; `None` for the whole window.
    pub bucket: Option<i32>,
    /// How many.
    pub restored: i64,
    /// Median seconds from detection (or the request) to restoration.
    pub restore_seconds: Option<f64>,
}

/// An environment's finished deploys and restoring rollbacks since `since`, aggregated in
/// buckets of `bucket_seconds` (and over the whole window) by the database, so the page costs
/// the same however often the team ships.
pub async fn delivery_buckets(
    pool: &PgPool,
    environment_id: Uuid,
    since: DateTime<Utc>,
    bucket_seconds: i64,
) -> Result<(Vec<DeployBucket>, Vec<RestoreBucket>), StoreError> {
    let deploys = sqlx::query_as::<_, DeployBucket>(
        "with finished as (
            select floor(extract(epoch from r.finished_at - $2)::float8 / $3)::int as bucket,
                   r.state = 'succeeded' as succeeded,
                   extract(epoch from r.finished_at - r.release_committed_at)::float8 as lead
              from rollouts r
             where r.environment_id = $1 and r.finished_at >= $2
               and r.kind in ('deploy', 'promote')
               and r.state in ('succeeded', 'failed', 'rolled_back', 'rollback_failed'))
         select bucket,
                count(*) filter (where succeeded) as succeeded,
                count(*) filter (where not succeeded) as failed,
                count(*) as finished,
                percentile_cont(0.5) within group (order by lead) filter (where succeeded) as lead_seconds
           from finished group by rollup (bucket)",
    )
    .bind(environment_id)
    .bind(since)
    .bind(bucket_seconds as f64)
    .fetch_all(pool)
    .await?;
    let restores = sqlx::query_as::<_, RestoreBucket>(
        "select floor(extract(epoch from requested_at - $2)::float8 / $3)::int as bucket,
                count(*) as restored,
                percentile_cont(0.5) within group (
                    order by extract(epoch from restored_at - coalesce(detected_at, requested_at))::float8
                ) as restore_seconds
           from rollbacks
          where environment_id = $1 and requested_at >= $2 and restored_at is not null
          group by rollup (1)",
    )
    .bind(environment_id)
    .bind(since)
    .bind(bucket_seconds as f64)
    .fetch_all(pool)
    .await?;
    Ok((deploys, restores))
}

/// The rollouts in flight (waiting for approval, running, paused, rolling back) in these
/// environments, oldest first.
pub async fn in_flight(
    pool: &PgPool,
    environment_ids: &[Uuid],
) -> Result<Vec<(Uuid, RolloutSummary)>, StoreError> {
    let rows = sqlx::query_as::<_, InFlightRow>(
        "select r.environment_id, r.id, a.name as app, e.name as environment, rel.version as release,
                r.kind::text as kind, r.state::text as state, r.state_reason, r.created_by,
                (select count(*) from phases p where p.rollout_id = r.id and p.state in ('succeeded', 'skipped')) as phases_done,
                (select count(*) from phases p where p.rollout_id = r.id) as phases_total,
                (select p.name from phases p where p.rollout_id = r.id and p.state in ('running', 'verifying')
                  order by p.position limit 1) as current_phase,
                r.created_at, r.finished_at
           from rollouts r
           join apps a on a.id = r.app_id
           join environments e on e.id = r.environment_id
           join releases rel on rel.id = r.release_id
          where r.environment_id = any($1)
            and r.state in ('queued', 'pending_approval', 'in_progress', 'paused', 'rolling_back')
          order by r.created_at, r.id",
    )
    .bind(environment_ids)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.environment_id, row.summary))
        .collect())
}

#[derive(sqlx::FromRow)]
struct InFlightRow {
    environment_id: Uuid,
    #[sqlx(flatten)]
    summary: RolloutSummary,
}

/// The release each of these environments runs (the latest succeeded rollout's), by id.
pub async fn current_releases(
    pool: &PgPool,
    environment_ids: &[Uuid],
) -> Result<Vec<(Uuid, String)>, StoreError> {
    Ok(sqlx::query_as(
        "select e.id, rel.version
           from unnest($1::uuid[]) as e(id)
           cross join lateral (select release_id from rollouts
                                where environment_id = e.id and state = 'succeeded'
                                order by finished_at desc, id desc limit 1) r
           join releases rel on rel.id = r.release_id",
    )
    .bind(environment_ids)
    .fetch_all(pool)
    .await?)
}
