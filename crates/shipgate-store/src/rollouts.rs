//! Rollouts as people and CI see them: starting one, rolling back, the actions a person takes
//! (pause, resume, cancel, approve, reject, retry, skip a gate), and reading them back with
//! their phases, steps and gate checks.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::{PgConnection, PgExecutor, PgPool, Row};
use uuid::Uuid;

use shipgate_domain::config::Concurrency;
use shipgate_domain::plan::{rollback_plan, Plan, RollbackScope, StepSpec};
use shipgate_domain::state::{RolloutKind, RolloutState};

use crate::apps::{self, Environment};
use crate::events::{self, Actor, Scope};
use crate::line;
use crate::policy::{self, FreezeOverride, Initiator};
use crate::releases::{self, Release};
use crate::{StoreError, UPDATES_CHANNEL, WAKE_CHANNEL};

/// Sends the wake-up and live-update notifications for a rollout (delivered on commit).
pub async fn notify(executor: &mut PgConnection, rollout_id: Uuid) -> Result<(), StoreError> {
    sqlx::query("select pg_notify($1, $3), pg_notify($2, $3)")
        .bind(WAKE_CHANNEL)
        .bind(UPDATES_CHANNEL)
        .bind(rollout_id.to_string())
        .execute(executor)
        .await?;
    Ok(())
}

/// Says that something an environment's status shows changed other than a rollout (its
/// settings, its auto-deploy pause, what a platform was seen serving): every replica's API
/// drops the environment statuses it cached. Rollout changes say so through [`notify`].
pub async fn notify_environments(executor: &mut PgConnection) -> Result<(), StoreError> {
    sqlx::query("select pg_notify($1, 'environments')")
        .bind(UPDATES_CHANNEL)
        .execute(executor)
        .await?;
    Ok(())
}

/// What starting a rollout needs.
#[derive(Clone, Debug)]
pub struct NewRollout<'a> {
    /// The environment.
    pub environment: &'a Environment,
    /// The release to roll out.
    pub release: &'a Release,
    /// `deploy`, `promote` or `config`.
    pub kind: RolloutKind,
    /// Who asked.
    pub actor: &'a Actor,
    /// `api`, `manual`, `webhook`, `demo`: freeze windows tell people from automation by it
    /// (see [`Initiator::of_trigger`]).
    pub trigger: &'a str,
    /// An admin's override of the freeze windows that would refuse it (the caller checks the
    /// admin's authority); audited with the rollout.
    pub override_freeze: Option<FreezeOverride<'a>>,
}

/// The release the environment `environment` (a query parameter such as `$1`) runs, as a
/// scalar sub-select for queries that read it along with other things: the one its latest
/// succeeded rollout brought.
pub(crate) fn current_release(environment: &str) -> String {
    format!(
        "(select release_id from rollouts where environment_id = {environment}
           and state = 'succeeded' order by finished_at desc, id desc limit 1)"
    )
}

/// The release the environment runs: the one its latest succeeded rollout brought.
pub async fn current_release_id(
    executor: impl PgExecutor<'_>,
    environment_id: Uuid,
) -> Result<Option<Uuid>, StoreError> {
    Ok(
        sqlx::query_scalar(&format!("select {}", current_release("$1")))
            .bind(environment_id)
            .fetch_one(executor)
            .await?,
    )
}

/// Serializes changes to an environment's rollouts until the transaction ends. `for no key
/// update`: it excludes other lockers of the environment but not the key-share locks that
/// inserts referencing it take (a live component recorded by the engine); `for update` queued
/// those behind a waiting push and deadlocked pushes against the engine under load. A start
/// takes [`lock_for_start`] instead; a rollback, which holds the rollouts it undoes first, this.
async fn lock_environment(tx: &mut PgConnection, environment_id: Uuid) -> Result<(), StoreError> {
    sqlx::query("select id from environments where id = $1 for no key update")
        .bind(environment_id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// The locks a start decides under, in the lock order of `line`: the app's row ([`line::hold`],
/// so the line cannot stop meanwhile), then the environment ([`lock_environment`]). Taking the
/// environment first deadlocked with an apply, which writes the app's row and then the
/// environments'. Again in the same transaction (a push deploying to several environments),
/// the app's row is already held and only the environment is new.
pub(crate) async fn lock_for_start(
    tx: &mut PgConnection,
    environment: &Environment,
) -> Result<(), StoreError> {
    line::hold(&mut *tx, environment.app_id).await?;
    lock_environment(tx, environment.id).await
}

/// Starts a rollout of a release into an environment: it begins at once, waits for approvals,
/// or queues behind the rollout that holds the environment. Refused (`StoreError::Refused`,
/// saying why) for a quarantined release, a release the promotion rule does not let in yet,
/// while a freeze window blocks it, or while the app's line is stopped.
pub async fn start(pool: &PgPool, new: NewRollout<'_>) -> Result<Uuid, StoreError> {
    let mut tx = pool.begin().await?;
    lock_for_start(&mut tx, new.environment).await?;
    let id = start_in(&mut tx, new).await?;
    tx.commit().await?;
    Ok(id)
}

/// [`start`] inside the caller's transaction, which holds [`lock_for_start`] (an automatic
/// promotion, which reads what is due under those locks). On an error the caller must roll
/// back (to a savepoint at least): earlier statements may have run. A webhook delivery, which
/// records itself, its release and its rollouts in one transaction, calls `admit` and
/// `insert_admitted` itself.
pub(crate) async fn start_in(
    tx: &mut PgConnection,
    new: NewRollout<'_>,
) -> Result<Uuid, StoreError> {
    let admitted = admit(&mut *tx, &new).await?;
    let id = insert_admitted(&mut *tx, &new, admitted).await?;
    notify(&mut *tx, id).await?;
    Ok(id)
}

/// What [`admit`] decided, for [`insert_admitted`].
pub(crate) struct Admitted {
    overridden: Vec<String>,
    targets: Value,
    previous: Option<Uuid>,
    active: bool,
}

/// Whether the start may go ahead, under the caller's [`lock_for_start`]: refused
/// (`StoreError::Refused`, saying why) for a stopped line, a quarantined release, a release the promotion rule does not let in yet, a freeze window, or
/// an artifact the plan needs and the release lacks. Writes nothing, so a refusal needs no
/// savepoint.
pub(crate) async fn admit(
    tx: &mut PgConnection,
    new: &NewRollout<'_>,
) -> Result<Admitted, StoreError> {
    let environment = new.environment;
    let release = new.release;
    // One round trip for what the decision reads under the lock. `freezes` is whether
    // `policy::check_freezes` would find any window to weigh.
    let context = sqlx::query(&format!(
        "select {stopped} as stopped, {previous} as previous,
                exists(select 1 from rollouts where environment_id = $1
                        and state in ('pending_approval', 'in_progress', 'paused', 'rolling_back'))
                  as active,
                exists(select 1 from freeze_windows where app_id = $2
                        and (environment_id is null or environment_id = $1)) as freezes,
                now() as now",
        stopped = line::stopped_reason("$2"),
        previous = current_release("$1"),
    ))
    .bind(environment.id)
    .bind(environment.app_id)
    .fetch_one(&mut *tx)
    .await?;
    if let Some(reason) = context.get::<Option<String>, _>("stopped") {
        return Err(line::refusal(&environment.app, &reason));
    }
    if let Some(reason) = &release.quarantine_reason {
        return Err(StoreError::Refused(format!(
            "release {} is quarantined ({reason}); clear the quarantine before deploying it",
            release.version
        )));
    }
    // Every way in (API, CLI, webhooks, dashboard) passes here, under the environment's lock.
    policy::check_promotion(&mut *tx, environment, release).await?;
    let overridden = if context.get("freezes") {
        policy::check_freezes_at(
            &mut *tx,
            environment,
            policy::Start {
                environment: &environment.name,
                initiator: Initiator::of_trigger(new.trigger),
                rollback: false,
            },
            new.override_freeze,
            context.get("now"),
        )
        .await?
    } else {
        Vec::new()
    };
    for component in environment.plan.deployed_components() {
        if release.artifact(&component).is_none() {
            return Err(StoreError::Refused(format!(
                "release {} has no artifact for component `{component}`, which the {} plan deploys",
                release.version, environment.name
            )));
        }
    }
    let targets = apps::targets(&mut *tx, environment.id).await?;
    Ok(Admitted {
        overridden,
        targets: serde_json::to_value(&targets)?,
        previous: context.get("previous"),
        active: context.get("active"),
    })
}

/// Inserts an admitted rollout (see [`admit`]): it begins at once, waits for approvals, or
/// queues behind the rollout that holds the environment. The rollouts it supersedes are
/// notified here; the caller sends [`notify`] for the new one.
pub(crate) async fn insert_admitted(
    tx: &mut PgConnection,
    new: &NewRollout<'_>,
    admitted: Admitted,
) -> Result<Uuid, StoreError> {
    let environment = new.environment;
    let release = new.release;
    let mut superseded = Vec::new();
    if environment.policy.concurrency == Concurrency::Supersede {
        superseded = sqlx::query_scalar(
            "update rollouts set state = 'superseded', state_reason = 'a newer rollout replaced it',
                    finished_at = now(), updated_at = now(), version = version + 1
              where environment_id = $1 and state = 'queued' returning id",
        )
        .bind(environment.id)
        .fetch_all(&mut *tx)
        .await?;
    }
    let state = if admitted.active {
        RolloutState::Queued
    } else if environment.policy.approvals.is_some() {
        RolloutState::PendingApproval
    } else {
        RolloutState::InProgress
    };
    let row = |state| Insert {
        environment,
        release_id: release.id,
        previous_release_id: admitted.previous,
        kind: new.kind,
        state,
        plan: &environment.plan,
        targets: admitted.targets.clone(),
        rollback_of: None,
        actor: new.actor,
        trigger: new.trigger,
    };
    let (id, state) = if state == RolloutState::Queued {
        // A queued rollout takes no place in the environment: no other rollout can have taken
        // it first, so there is nothing to fall back to.
        (insert(&mut *tx, row(state)).await?, state)
    } else {
        sqlx::query("savepoint start_rollout")
            .execute(&mut *tx)
            .await?;
        match insert(&mut *tx, row(state)).await {
            Ok(id) => (id, state),
            // A queued rollout took the environment between our read and our insert: queue
            // behind it.
            Err(StoreError::Conflict(_)) => {
                sqlx::query("rollback to savepoint start_rollout")
                    .execute(&mut *tx)
                    .await?;
                (
                    insert(&mut *tx, row(RolloutState::Queued)).await?,
                    RolloutState::Queued,
                )
            }
            Err(other) => return Err(other),
        }
    };
    let scope = Scope {
        app_id: Some(environment.app_id),
        environment_id: Some(environment.id),
        rollout_id: Some(id),
    };
    events::record(
        &mut *tx,
        scope,
        new.actor,
        "rollout.created",
        json!({ "release": release.version, "kind": new.kind, "state": state, "trigger": new.trigger }),
    )
    .await?;
    if let (false, Some(override_freeze)) = (admitted.overridden.is_empty(), new.override_freeze) {
        policy::record_override(
            &mut *tx,
            scope,
            new.actor,
            &admitted.overridden,
            override_freeze,
        )
        .await?;
        policy::keep_override(&mut *tx, id, override_freeze).await?;
    }
    for old in superseded {
        events::record(
            &mut *tx,
            Scope {
                rollout_id: Some(old),
                ..scope
            },
            new.actor,
            "rollout.superseded",
            json!({ "by": id }),
        )
        .await?;
        notify(&mut *tx, old).await?;
    }
    Ok(id)
}

struct Insert<'a> {
    environment: &'a Environment,
    release_id: Uuid,
    previous_release_id: Option<Uuid>,
    kind: RolloutKind,
    state: RolloutState,
    plan: &'a Plan,
    targets: Value,
    rollback_of: Option<Uuid>,
    actor: &'a Actor,
    trigger: &'a str,
}

async fn insert(tx: &mut PgConnection, rollout: Insert<'_>) -> Result<Uuid, StoreError> {
    let id = Uuid::now_v7();
    let phase_ids: Vec<Uuid> = rollout.plan.phases.iter().map(|_| Uuid::now_v7()).collect();
    let phase_names: Vec<&str> = rollout
        .plan
        .phases
        .iter()
        .map(|phase| phase.name.as_str())
        .collect();
    // The rollout and its phases in one statement (the phases' foreign key is checked at its
    // end, when the rollout row exists).
    sqlx::query(
        "with rollout as (
             insert into rollouts (id, app_id, environment_id, release_id, previous_release_id, kind,
                                   state, plan, targets, rollback_of, created_by, trigger, started_at,
                                   activated_at)
             values ($1, $2, $3, $4, $5, $6::rollout_kind, $7::rollout_state, $8, $9, $10, $11, $12,
                     case when $7 = 'in_progress' then now() end,
                     case when $7 <> 'queued' then now() end)
             returning id)
         insert into phases (id, rollout_id, position, name)
         select p.id, rollout.id, (p.n - 1)::int, p.name
           from rollout, unnest($13::uuid[], $14::text[]) with ordinality as p(id, name, n)",
    )
    .bind(id)
    .bind(rollout.environment.app_id)
    .bind(rollout.environment.id)
    .bind(rollout.release_id)
    .bind(rollout.previous_release_id)
    .bind(rollout.kind.as_str())
    .bind(rollout.state.as_str())
    .bind(serde_json::to_value(rollout.plan)?)
    .bind(rollout.targets)
    .bind(rollout.rollback_of)
    .bind(rollout.actor.label())
    .bind(rollout.trigger)
    .bind(&phase_ids)
    .bind(&phase_names)
    .execute(&mut *tx)
    .await
    .map_err(|error| {
        if StoreError::is_unique_violation(&error, "rollouts_one_active_per_environment") {
            StoreError::Conflict("another rollout holds this environment".into())
        } else {
            error.into()
        }
    })?;
    Ok(id)
}

/// What a rollback needs.
#[derive(Clone, Debug)]
pub struct RollbackRequest<'a> {
    /// A chosen release version; the last known-good one when `None`.
    pub to_release: Option<&'a str>,
    /// Why, in the words of whoever asked.
    pub reason: &'a str,
    /// `manual`, `api`, `gate` or `deadline`.
    pub trigger: &'a str,
    /// When the failure was first measured (gate-triggered rollbacks).
    pub detected_at: Option<DateTime<Utc>>,
    /// Who asked.
    pub actor: &'a Actor,
    /// An admin's override of the freeze windows that do not allow rollbacks (the caller checks
    /// the admin's authority); audited with the rollback.
    pub override_freeze: Option<FreezeOverride<'a>>,
    /// The person saw that the release being undone is `forward_only` (its changes, such as
    /// database migrations, are not undone by running the older release) and rolls back anyway.
    pub confirm_forward_only: bool,
}

/// Rolls an environment back, in its own transaction. See [`rollback_in`].
pub async fn rollback(
    pool: &PgPool,
    environment: &Environment,
    request: RollbackRequest<'_>,
) -> Result<Uuid, StoreError> {
    let mut tx = pool.begin().await?;
    let id = rollback_in(&mut tx, environment, None, request).await?;
    tx.commit().await?;
    Ok(id)
}

/// Starts a rollback rollout inside the caller's transaction: the rollout in flight (or, with
/// none, the latest succeeded one) moves to `rolling_back`, its release is quarantined, the
/// environment's auto-deploy is paused with the reason, and a `rollback` rollout to the last
/// known-good release (or the chosen one) starts at once, ahead of any queue.
///
/// `undo` names the rollout being undone when the engine already knows it (a failed gate).
pub async fn rollback_in(
    tx: &mut PgConnection,
    environment: &Environment,
    undo: Option<Uuid>,
    request: RollbackRequest<'_>,
) -> Result<Uuid, StoreError> {
    // Lock order everywhere: the rollout rows first, then the environment (the engine's fenced
    // transaction already holds the rollout it rolls back).
    let in_flight = match undo {
        Some(id) => Some(id),
        None => {
            let active: Vec<(Uuid, String, String)> = sqlx::query_as(
                "select id, state::text, kind::text from rollouts
                  where environment_id = $1 and state in ('pending_approval', 'in_progress', 'paused')
                  for no key update",
            )
            .bind(environment.id)
            .fetch_all(&mut *tx)
            .await?;
            if active.iter().any(|(_, _, kind)| kind == "rollback") {
                return Err(StoreError::Conflict(
                    "a rollback of this environment is already running; wait for it or cancel it"
                        .into(),
                ));
            }
            let mut in_flight = None;
            for (id, state, _) in active {
                if state == "pending_approval" {
                    // A rollout only waiting for approvals has deployed nothing: cancel it.
                    sqlx::query(
                        "update rollouts set state = 'cancelled', state_reason = 'cancelled by a rollback',
                                finished_at = now(), updated_at = now(), version = version + 1
                          where id = $1",
                    )
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                    finish_phases(tx, id).await?;
                    notify(tx, id).await?;
                } else {
                    in_flight = Some(id);
                }
            }
            in_flight
        }
    };
    lock_environment(tx, environment.id).await?;
    // A rollback the engine starts (`undo`) finishes a rollout already under way: a freeze
    // never strands a failing deploy. One a person asks for obeys the windows that forbid it.
    let overridden = if undo.is_none() {
        policy::check_freezes(
            &mut *tx,
            environment,
            policy::Start {
                environment: &environment.name,
                initiator: Initiator::of_trigger(request.trigger),
                rollback: true,
            },
            request.override_freeze,
        )
        .await?
    } else {
        Vec::new()
    };
    if in_flight.is_none() {
        let rolling: Option<Uuid> = sqlx::query_scalar(
            "select id from rollouts where environment_id = $1 and state = 'rolling_back'
                and kind <> 'rollback' limit 1",
        )
        .bind(environment.id)
        .fetch_optional(&mut *tx)
        .await?;
        if rolling.is_some() {
            return Err(StoreError::Conflict(
                "a rollback of this environment is already running".into(),
            ));
        }
    }

    // The rollout being undone, and the release the environment returns to.
    let (undone, target): (Option<Uuid>, Uuid) = match (in_flight, request.to_release) {
        (Some(id), None) => {
            let previous: Option<Uuid> =
                sqlx::query_scalar("select previous_release_id from rollouts where id = $1")
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
            let previous = previous.ok_or_else(|| {
                StoreError::Refused(
                    "there is no known-good release to roll back to: this environment never had a successful rollout".into(),
                )
            })?;
            (Some(id), previous)
        }
        (in_flight, Some(version)) => {
            let release = releases::by_version(&mut *tx, environment.app_id, version).await?;
            if let Some(reason) = &release.quarantine_reason {
                return Err(StoreError::Refused(format!(
                    "release {version} is quarantined ({reason}); pick another release or clear the quarantine"
                )));
            }
            let undone = match in_flight {
                Some(id) => Some(id),
                None => latest_succeeded(&mut *tx, environment.id)
                    .await?
                    .map(|(id, _)| id),
            };
            (undone, release.id)
        }
        (None, None) => {
            let (latest, current) = latest_succeeded(&mut *tx, environment.id)
                .await?
                .ok_or_else(|| {
                    StoreError::Refused(
                        "there is nothing to roll back: this environment has no successful rollout"
                            .into(),
                    )
                })?;
            let target: Option<Uuid> = sqlx::query_scalar(
                "select r.release_id from rollouts r join releases rel on rel.id = r.release_id
                  where r.environment_id = $1 and r.state = 'succeeded' and r.release_id <> $2
                    and rel.quarantined_at is null
                  order by r.finished_at desc, r.id desc limit 1",
            )
            .bind(environment.id)
            .bind(current)
            .fetch_optional(&mut *tx)
            .await?;
            let target = target.ok_or_else(|| {
                StoreError::Refused("there is no earlier known-good release to roll back to".into())
            })?;
            (Some(latest), target)
        }
    };

    let current = current_release_id(&mut *tx, environment.id).await?;
    // A person undoing a forward-only release is told what stays behind first; the engine's own
    // rollbacks go ahead (the release is failing), and the rollback's event says so.
    let undone_release = match undone {
        Some(id) => Some(
            sqlx::query_scalar::<_, Uuid>("select release_id from rollouts where id = $1")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?,
        ),
        None => current,
    };
    let forward_only = match undone_release {
        Some(id) => {
            let release = releases::by_id(&mut *tx, id).await?;
            release.forward_only.then_some(release.version)
        }
        None => None,
    };
    if let Some(version) = &forward_only {
        if undo.is_none() && !request.confirm_forward_only {
            return Err(StoreError::Refused(format!(
                "release {version} is forward_only: its changes (database migrations, data \
                 backfills) stay when the older release runs again. Check that the older release \
                 works with them, then confirm the rollback (confirm_forward_only: true, \
                 `shipgate rollback --confirm-forward-only`)"
            )));
        }
    }
    let (source_plan, from_release) = match undone {
        Some(id) => {
            let row = sqlx::query("select plan, release_id from rollouts where id = $1")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
            (
                serde_json::from_value::<Plan>(row.get("plan"))?,
                Some(row.get::<Uuid, _>("release_id")),
            )
        }
        None => (environment.plan.clone(), current),
    };
    let target_release = releases::by_id(&mut *tx, target).await?;
    let scope = rollback_scope(tx, environment.id, undone, &target_release).await?;
    if scope.components.is_empty() && scope.config.is_empty() {
        return Err(StoreError::Refused(format!(
            "nothing to roll back: every component already runs release {}",
            target_release.version
        )));
    }
    let plan = rollback_plan(&source_plan, &scope);
    let targets = apps::targets(&mut *tx, environment.id).await?;

    if let Some(undone) = undone {
        let moved = sqlx::query(
            "update rollouts set state = 'rolling_back', state_reason = $2, updated_at = now(),
                    version = version + 1
              where id = $1 and state in ('in_progress', 'paused')",
        )
        .bind(undone)
        .bind(request.reason)
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() == 1 {
            sqlx::query(
                "update phases set state = case when state = 'pending' then 'skipped'::phase_state
                                                else 'aborted'::phase_state end,
                                   finished_at = now()
                  where rollout_id = $1 and state in ('pending', 'running', 'verifying')",
            )
            .bind(undone)
            .execute(&mut *tx)
            .await?;
        }
    }
    let rollout_id = insert(
        tx,
        Insert {
            environment,
            release_id: target,
            previous_release_id: current,
            kind: RolloutKind::Rollback,
            state: RolloutState::InProgress,
            plan: &plan,
            targets: serde_json::to_value(&targets)?,
            rollback_of: undone,
            actor: request.actor,
            trigger: request.trigger,
        },
    )
    .await?;
    if let Some(undone) = undone {
        sqlx::query("update rollouts set rolled_back_by = $2 where id = $1")
            .bind(undone)
            .bind(rollout_id)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(
        "insert into rollbacks (id, app_id, environment_id, rollout_id, rollback_of, from_release_id,
                                to_release_id, trigger, reason, actor, detected_at, requested_at)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, now())",
    )
    .bind(Uuid::now_v7())
    .bind(environment.app_id)
    .bind(environment.id)
    .bind(rollout_id)
    .bind(undone)
    .bind(from_release)
    .bind(target)
    .bind(request.trigger)
    .bind(request.reason)
    .bind(request.actor.label())
    .bind(request.detected_at)
    .execute(&mut *tx)
    .await?;
    if let Some(bad) = from_release.filter(|bad| *bad != target) {
        releases::set_quarantine(
            &mut *tx,
            bad,
            Some(&format!("rolled back: {}", request.reason)),
        )
        .await?;
    }
    sqlx::query(
        "update environments set auto_deploy_paused_at = now(), auto_deploy_paused_reason = $2 where id = $1",
    )
    .bind(environment.id)
    .bind(format!(
        "auto-deploy paused after a rollback to {}: {}",
        target_release.version, request.reason
    ))
    .execute(&mut *tx)
    .await?;
    notify_environments(&mut *tx).await?;
    let scope_event = Scope {
        app_id: Some(environment.app_id),
        environment_id: Some(environment.id),
        rollout_id: Some(rollout_id),
    };
    events::record(
        &mut *tx,
        scope_event,
        request.actor,
        "rollback.started",
        json!({
            "to_release": target_release.version, "rollback_of": undone,
            "trigger": request.trigger, "reason": request.reason,
            "components": scope.components,
            "forward_only_release": forward_only,
        }),
    )
    .await?;
    if let (false, Some(override_freeze)) = (overridden.is_empty(), request.override_freeze) {
        policy::record_override(
            &mut *tx,
            scope_event,
            request.actor,
            &overridden,
            override_freeze,
        )
        .await?;
        policy::keep_override(&mut *tx, rollout_id, override_freeze).await?;
    }
    if let Some(undone) = undone {
        events::record(
            &mut *tx,
            Scope {
                rollout_id: Some(undone),
                ..scope_event
            },
            request.actor,
            "rollout.rolling_back",
            json!({ "rollback": rollout_id, "reason": request.reason }),
        )
        .await?;
        notify(tx, undone).await?;
    }
    notify(tx, rollout_id).await?;
    Ok(rollout_id)
}

async fn latest_succeeded(
    executor: impl PgExecutor<'_>,
    environment_id: Uuid,
) -> Result<Option<(Uuid, Uuid)>, StoreError> {
    let row = sqlx::query(
        "select id, release_id from rollouts where environment_id = $1 and state = 'succeeded'
          order by finished_at desc, id desc limit 1",
    )
    .bind(environment_id)
    .fetch_optional(executor)
    .await?;
    Ok(row.map(|row| (row.get("id"), row.get("release_id"))))
}

/// What a rollback restores: components whose live release differs from the target (or that
/// the undone rollout touched), limited to those the target release has an artifact for; and
/// the config vars the undone rollout changed, back to their previous values.
async fn rollback_scope(
    tx: &mut PgConnection,
    environment_id: Uuid,
    undone: Option<Uuid>,
    target: &Release,
) -> Result<RollbackScope, StoreError> {
    let mut components: Vec<String> = sqlx::query_scalar(
        "select c.name from live_components l join components c on c.id = l.component_id
          where l.environment_id = $1 and l.release_id <> $2
         union
         select s.component from step_runs s
          where s.rollout_id = $3 and s.kind = 'deploy' and s.component is not null
         order by 1",
    )
    .bind(environment_id)
    .bind(target.id)
    .bind(undone)
    .fetch_all(&mut *tx)
    .await?;
    components.retain(|component| target.artifact(component).is_some());
    let mut config: BTreeMap<String, BTreeMap<String, Option<String>>> = BTreeMap::new();
    if let Some(undone) = undone {
        let rows = sqlx::query(
            "select component, result from step_runs
              where rollout_id = $1 and kind = 'config' and state = 'succeeded' order by created_at desc",
        )
        .bind(undone)
        .fetch_all(&mut *tx)
        .await?;
        for row in rows {
            let component: String = row.get("component");
            let result: Option<Value> = row.get("result");
            let previous = result
                .as_ref()
                .and_then(|r| r.get("previous"))
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let entry = config.entry(component).or_default();
            for (key, value) in previous {
                entry.insert(key, value.as_str().map(str::to_owned));
            }
        }
    }
    let jobs = match undone {
        Some(undone) => down_jobs(tx, undone).await?,
        None => Vec::new(),
    };
    Ok(RollbackScope {
        components,
        config,
        jobs,
    })
}

/// The down commands of the jobs an undone rollout ran (succeeded), last first.
async fn down_jobs(
    tx: &mut PgConnection,
    undone: Uuid,
) -> Result<Vec<(String, String)>, StoreError> {
    let plan: Value = sqlx::query_scalar("select plan from rollouts where id = $1")
        .bind(undone)
        .fetch_one(&mut *tx)
        .await?;
    let plan: Plan = serde_json::from_value(plan)
        .map_err(|error| StoreError::Corrupt(format!("stored plan: {error}")))?;
    let ran: Vec<(i32, i32)> = sqlx::query_as(
        "select p.position, s.step_index from step_runs s join phases p on p.id = s.phase_id
          where s.rollout_id = $1 and s.kind = 'job' and s.state = 'succeeded'
          order by s.created_at desc",
    )
    .bind(undone)
    .fetch_all(&mut *tx)
    .await?;
    Ok(ran
        .into_iter()
        .filter_map(|(phase, step)| {
            match plan.phases.get(phase as usize)?.steps.get(step as usize)? {
                StepSpec::Job {
                    component,
                    down: Some(down),
                    ..
                } => Some((component.clone(), down.clone())),
                _ => None,
            }
        })
        .collect())
}

/// A person's action on a rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Stop starting new steps and gates.
    Pause,
    /// Continue (retrying what failed and restarting gate counts).
    Resume,
    /// Stop for good.
    Cancel,
    /// Retry the current phase's failed step or gate.
    Retry,
    /// Mark the current phase's failing or waiting gates as passed.
    SkipGate,
}

impl Action {
    /// The action's name in URLs and events.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Cancel => "cancel",
            Action::Retry => "retry",
            Action::SkipGate => "skip-gate",
        }
    }
}

struct Locked {
    state: RolloutState,
    app_id: Uuid,
    environment_id: Uuid,
    current_phase: Option<(Uuid, i32)>,
    created_by: String,
    kind: RolloutKind,
}

async fn lock_rollout(tx: &mut PgConnection, id: Uuid) -> Result<Locked, StoreError> {
    let row = sqlx::query(
        "select state::text as state, kind::text as kind, app_id, environment_id, created_by
           from rollouts where id = $1 for no key update",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| StoreError::NotFound(format!("rollout {id}")))?;
    let phase = sqlx::query(
        "select id, position from phases where rollout_id = $1 and state not in ('succeeded', 'skipped')
          order by position limit 1",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    Ok(Locked {
        state: row
            .get::<String, _>("state")
            .parse()
            .map_err(StoreError::Corrupt)?,
        kind: row
            .get::<String, _>("kind")
            .parse()
            .map_err(StoreError::Corrupt)?,
        app_id: row.get("app_id"),
        environment_id: row.get("environment_id"),
        created_by: row.get("created_by"),
        current_phase: phase.map(|p| (p.get("id"), p.get("position"))),
    })
}

fn refuse(action: &str, state: RolloutState) -> StoreError {
    StoreError::Refused(format!("cannot {action} a rollout that is {state}"))
}

/// Applies a person's action. Returns the new state.
pub async fn act(
    pool: &PgPool,
    id: Uuid,
    action: Action,
    actor: &Actor,
    comment: Option<&str>,
) -> Result<RolloutState, StoreError> {
    let mut tx = pool.begin().await?;
    let locked = lock_rollout(&mut tx, id).await?;
    let state = locked.state;
    let next = match action {
        Action::Pause if state == RolloutState::InProgress => RolloutState::Paused,
        Action::Resume | Action::Retry if state == RolloutState::Paused => RolloutState::InProgress,
        Action::Retry | Action::SkipGate if state == RolloutState::InProgress => state,
        Action::SkipGate if state == RolloutState::Paused => RolloutState::InProgress,
        Action::Cancel if !state.is_terminal() && state != RolloutState::RollingBack => {
            RolloutState::Cancelled
        }
        _ => return Err(refuse(action.as_str(), state)),
    };
    if matches!(action, Action::Resume | Action::Retry) {
        if let Some((phase_id, _)) = locked.current_phase {
            sqlx::query("update phases set retry_requested_at = now() where id = $1")
                .bind(phase_id)
                .execute(&mut *tx)
                .await?;
        }
    }
    if action == Action::SkipGate {
        let (phase_id, position) = locked
            .current_phase
            .ok_or_else(|| StoreError::Refused("the rollout has no current phase".into()))?;
        let phase_state: String =
            sqlx::query_scalar("select state::text from phases where id = $1")
                .bind(phase_id)
                .fetch_one(&mut *tx)
                .await?;
        if phase_state != "verifying" {
            return Err(StoreError::Refused(format!(
                "phase {position} is {phase_state}, not waiting on gates"
            )));
        }
        let plan: Value = sqlx::query_scalar("select plan from rollouts where id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        let plan: Plan = serde_json::from_value(plan)?;
        for (index, gate) in plan.phases[position as usize].gates.iter().enumerate() {
            sqlx::query(
                "insert into gate_checks (rollout_id, phase_id, gate_index, gate_kind, verdict, detail)
                 values ($1, $2, $3, $4, 'pass', $5)",
            )
            .bind(id)
            .bind(phase_id)
            .bind(index as i32)
            .bind(gate.kind())
            .bind(json!({ "override": true, "by": actor.label(), "comment": comment, "summary": "skipped by a person" }))
            .execute(&mut *tx)
            .await?;
        }
    }
    if next != state {
        sqlx::query(
            "update rollouts set state = $2::rollout_state,
                    state_reason = $3, line_stopped_at = null,
                    finished_at = case when $2 = 'cancelled' then now() else finished_at end,
                    next_wake_at = now(), updated_at = now(), version = version + 1
              where id = $1",
        )
        .bind(id)
        .bind(next.as_str())
        .bind(match action {
            Action::Pause => Some(format!("paused by {}", actor.label())),
            Action::Cancel => Some(format!("cancelled by {}", actor.label())),
            _ => None,
        })
        .execute(&mut *tx)
        .await?;
        if next == RolloutState::Cancelled {
            finish_phases(&mut tx, id).await?;
            if locked.kind == RolloutKind::Rollback {
                finish_undone(
                    &mut tx,
                    id,
                    false,
                    &format!("the rollback was cancelled by {}", actor.label()),
                    actor,
                )
                .await?;
            }
            wake_queue(&mut tx, locked.environment_id).await?;
        }
    } else {
        sqlx::query(
            "update rollouts set next_wake_at = now(), version = version + 1 where id = $1",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
    }
    events::record(
        &mut *tx,
        Scope {
            app_id: Some(locked.app_id),
            environment_id: Some(locked.environment_id),
            rollout_id: Some(id),
        },
        actor,
        &format!("rollout.{}", action.as_str()),
        json!({ "from": state, "to": next, "comment": comment }),
    )
    .await?;
    notify(&mut tx, id).await?;
    tx.commit().await?;
    Ok(next)
}

/// A rollback rollout ended: record the outcome in the history and move the rollout it undid
/// to `rolled_back` or `rollback_failed`.
pub async fn finish_undone(
    tx: &mut PgConnection,
    rollback_id: Uuid,
    restored: bool,
    reason: &str,
    actor: &Actor,
) -> Result<(), StoreError> {
    sqlx::query(
        "update rollbacks set outcome = $2, restored_at = case when $2 = 'restored' then now() end
          where rollout_id = $1",
    )
    .bind(rollback_id)
    .bind(if restored { "restored" } else { "failed" })
    .execute(&mut *tx)
    .await?;
    let row = sqlx::query("select rollback_of, app_id, environment_id from rollouts where id = $1")
        .bind(rollback_id)
        .fetch_one(&mut *tx)
        .await?;
    let Some(undone) = row.get::<Option<Uuid>, _>("rollback_of") else {
        return Ok(());
    };
    let state = if restored {
        "rolled_back"
    } else {
        "rollback_failed"
    };
    sqlx::query(
        "update rollouts set state = $2::rollout_state, state_reason = coalesce(state_reason || '; ', '') || $3,
                finished_at = now(), updated_at = now(), version = version + 1
          where id = $1 and state = 'rolling_back'",
    )
    .bind(undone)
    .bind(state)
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    events::record(
        &mut *tx,
        Scope {
            app_id: Some(row.get("app_id")),
            environment_id: Some(row.get("environment_id")),
            rollout_id: Some(undone),
        },
        actor,
        &format!("rollout.{state}"),
        json!({ "rollback": rollback_id, "reason": reason }),
    )
    .await?;
    notify(tx, undone).await
}

/// Ends the phases of a finished rollout: the running one aborted, pending ones skipped.
pub async fn finish_phases(tx: &mut PgConnection, rollout_id: Uuid) -> Result<(), StoreError> {
    sqlx::query(
        "update phases set state = case when state = 'pending' then 'skipped'::phase_state
                                        else 'aborted'::phase_state end,
                           finished_at = now()
          where rollout_id = $1 and state in ('pending', 'running', 'verifying')",
    )
    .bind(rollout_id)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Wakes the oldest queued rollout of an environment (the one that may now take it).
pub async fn wake_queue(tx: &mut PgConnection, environment_id: Uuid) -> Result<(), StoreError> {
    let next: Option<Uuid> = sqlx::query_scalar(
        "update rollouts set next_wake_at = now(), version = version + 1
          where id = (select id from rollouts where environment_id = $1 and state = 'queued'
                       order by created_at, id limit 1 for update skip locked)
         returning id",
    )
    .bind(environment_id)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(next) = next {
        notify(tx, next).await?;
    }
    Ok(())
}

/// Records an approval or rejection of whatever the rollout waits on: the environment's
/// approvals before start, or the current phase's approval gate.
pub async fn decide_approval(
    pool: &PgPool,
    id: Uuid,
    approve: bool,
    actor: &Actor,
    comment: Option<&str>,
    allow_self_override: bool,
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    let locked = lock_rollout(&mut tx, id).await?;
    let (phase_id, gate_index): (Option<Uuid>, Option<i32>) = match locked.state {
        RolloutState::PendingApproval => (None, None),
        RolloutState::InProgress | RolloutState::Paused => {
            let (phase_id, position) = locked
                .current_phase
                .ok_or_else(|| StoreError::Refused("nothing is waiting for approval".into()))?;
            let row = sqlx::query("select r.plan, p.state::text as state from rollouts r join phases p on p.rollout_id = r.id where p.id = $1")
                .bind(phase_id)
                .fetch_one(&mut *tx)
                .await?;
            let plan: Plan = serde_json::from_value(row.get("plan"))?;
            let gate = plan.phases[position as usize]
                .gates
                .iter()
                .position(|gate| matches!(gate, shipgate_domain::plan::GateSpec::Approval { .. }));
            match (gate, row.get::<String, _>("state").as_str()) {
                (Some(gate), "verifying") => (Some(phase_id), Some(gate as i32)),
                _ => return Err(StoreError::Refused(
                    "nothing is waiting for approval: the current phase has no approval gate open"
                        .into(),
                )),
            }
        }
        state => return Err(refuse(if approve { "approve" } else { "reject" }, state)),
    };
    if approve && locked.created_by == actor.label() && !allow_self_override {
        let policy: Value = sqlx::query_scalar("select policy from environments where id = $1")
            .bind(locked.environment_id)
            .fetch_one(&mut *tx)
            .await?;
        let allowed = policy
            .pointer("/approvals/allow_self_approval")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if !allowed {
            return Err(StoreError::Refused(
                "you started this rollout and this environment does not allow self-approval".into(),
            ));
        }
    }
    sqlx::query(
        "insert into approvals (id, rollout_id, phase_id, gate_index, actor, decision, comment)
         values ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(Uuid::now_v7())
    .bind(id)
    .bind(phase_id)
    .bind(gate_index)
    .bind(actor.label())
    .bind(if approve { "approve" } else { "reject" })
    .bind(comment)
    .execute(&mut *tx)
    .await
    .map_err(|error| {
        if StoreError::is_unique_violation(&error, "approvals_once_per_actor") {
            StoreError::Conflict(format!("{} has already decided on this", actor.label()))
        } else {
            error.into()
        }
    })?;
    // Bumping the version makes a worker that holds the rollout right now look again instead of
    // going back to sleep until the approval would have expired.
    sqlx::query("update rollouts set next_wake_at = now(), version = version + 1 where id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    events::record(
        &mut *tx,
        Scope {
            app_id: Some(locked.app_id),
            environment_id: Some(locked.environment_id),
            rollout_id: Some(id),
        },
        actor,
        if approve {
            "rollout.approved"
        } else {
            "rollout.rejected"
        },
        json!({ "comment": comment, "phase": gate_index.map(|_| phase_id), "kind": locked.kind }),
    )
    .await?;
    notify(&mut tx, id).await?;
    tx.commit().await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Reading.

/// A rollout with everything a person or CI wants to see.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct RolloutDetail {
    /// Id.
    pub id: Uuid,
    /// App name.
    pub app: String,
    /// Environment name.
    pub environment: String,
    /// Release version.
    pub release: String,
    /// Previous release version (what a rollback returns to).
    pub previous_release: Option<String>,
    /// `deploy`, `promote`, `rollback` or `config`.
    pub kind: String,
    /// `queued`, `pending_approval`, `in_progress`, `paused`, `rolling_back`, `succeeded`,
    /// `failed`, `cancelled`, `superseded`, `rolled_back` or `rollback_failed`.
    pub state: String,
    /// Why it is in that state (failure, pause reason).
    pub state_reason: Option<String>,
    /// Whether the state is final.
    pub finished: bool,
    /// Who started it.
    pub created_by: String,
    /// What started it.
    pub trigger: String,
    /// The rollout this one rolls back.
    pub rollback_of: Option<Uuid>,
    /// The rollback that undid this one.
    pub rolled_back_by: Option<Uuid>,
    /// Index of the current phase.
    pub current_phase: Option<usize>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Started.
    pub started_at: Option<DateTime<Utc>>,
    /// Ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Bumped on every change (for long-polls).
    pub version: i64,
    /// How it ended, for machines (CI waits on this); `None` while it runs.
    pub verdict: Option<Verdict>,
    /// Phases.
    pub phases: Vec<PhaseDetail>,
}

/// How a rollout ended.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[schema(as = RolloutVerdict)]
pub struct Verdict {
    /// The final state: `succeeded`, `failed`, `cancelled`, `superseded` or `rolled_back`.
    pub outcome: String,
    /// Why, in words (the failing gate, who cancelled, ...).
    pub reason: Option<String>,
    /// The rollback rollout that undid it, if any.
    pub rollback: Option<Uuid>,
}

/// A phase with its steps and gates.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct PhaseDetail {
    /// The phase's name in the plan.
    pub name: String,
    /// `pending`, `running`, `verifying`, `succeeded`, `failed`, `skipped` or `aborted`.
    pub state: String,
    /// Started.
    pub started_at: Option<DateTime<Utc>>,
    /// Gates started counting.
    pub verifying_at: Option<DateTime<Utc>>,
    /// Ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Every step attempt.
    pub steps: Vec<StepDetail>,
    /// Gates with their recent checks.
    pub gates: Vec<GateDetail>,
}

/// One step attempt.
#[derive(Clone, Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct StepDetail {
    /// The phase the attempt belongs to.
    #[serde(skip)]
    pub phase_id: Uuid,
    /// Step index in the phase.
    pub step_index: i32,
    /// Attempt.
    pub attempt: i32,
    /// `deploy`, `rollback`, `traffic`, `config`, `job` or `wait`.
    pub kind: String,
    /// The component it acts on.
    pub component: Option<String>,
    /// The provider that performs it (`heroku`, `vercel`, `simulated`, ...).
    pub provider: Option<String>,
    /// `pending`, `submitted`, `succeeded` or `failed`.
    pub state: String,
    /// The provider's reference (release id, deployment id, operation name).
    pub provider_ref: Option<String>,
    /// Error.
    pub error: Option<String>,
    /// What the provider said.
    pub result: Option<Value>,
    /// Intent recorded.
    pub created_at: DateTime<Utc>,
    /// Accepted by the provider.
    pub submitted_at: Option<DateTime<Utc>>,
    /// Settled.
    pub finished_at: Option<DateTime<Utc>>,
    /// What the step does.
    #[sqlx(skip)]
    pub description: String,
    /// What the platform left behind that a person should know (Render keeps autodeploy on
    /// after a rollback; Heroku does not restore add-ons or the database).
    #[sqlx(skip)]
    pub notice: Option<String>,
}

/// A gate and its recent checks.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct GateDetail {
    /// `health`, `soak`, `approval`, `prometheus` or `webhook`.
    pub kind: String,
    /// What it checks.
    pub description: String,
    /// Recent checks, oldest first.
    pub checks: Vec<CheckDetail>,
}

/// One gate measurement.
#[derive(Clone, Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct CheckDetail {
    /// `pass`, `fail` or `inconclusive`.
    pub verdict: String,
    /// Measured value (status code, metric value).
    pub value: Option<f64>,
    /// Details.
    pub detail: Value,
    /// When.
    pub checked_at: DateTime<Utc>,
}

/// Reads a rollout with its phases, step attempts and the last 100 checks of each gate.
pub async fn detail(pool: &PgPool, id: Uuid) -> Result<RolloutDetail, StoreError> {
    let row = sqlx::query(
        "select r.id, a.name as app, e.name as environment, rel.version as release,
                prev.version as previous_release, r.kind::text as kind, r.state::text as state,
                r.state_reason, r.created_by, r.trigger, r.rollback_of, r.rolled_back_by,
                r.created_at, r.started_at, r.finished_at, r.version, r.plan
           from rollouts r
           join apps a on a.id = r.app_id
           join environments e on e.id = r.environment_id
           join releases rel on rel.id = r.release_id
           left join releases prev on prev.id = r.previous_release_id
          where r.id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| StoreError::NotFound(format!("rollout {id}")))?;
    let plan: Plan = serde_json::from_value(row.get("plan"))?;
    let phase_rows = sqlx::query(
        "select id, position, name, state::text as state, started_at, verifying_at, finished_at
           from phases where rollout_id = $1 order by position",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    let steps = sqlx::query_as::<_, StepDetail>(
        "select step_index, attempt, kind, component, provider, state::text as state, provider_ref,
                error, result, created_at, submitted_at, finished_at, phase_id
           from step_runs where rollout_id = $1 order by step_index, attempt",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    let checks = sqlx::query(
        "select * from (
            select phase_id, gate_index, verdict, value, detail, checked_at, id,
                   row_number() over (partition by phase_id, gate_index order by id desc) as n
              from gate_checks where rollout_id = $1) recent
          where n <= 100 order by id",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    let state: String = row.get("state");
    let mut phases = Vec::new();
    let mut current_phase = None;
    for (index, phase_row) in phase_rows.iter().enumerate() {
        let phase_id: Uuid = phase_row.get("id");
        let phase_state: String = phase_row.get("state");
        if current_phase.is_none() && !matches!(phase_state.as_str(), "succeeded" | "skipped") {
            current_phase = Some(index);
        }
        let spec = plan.phases.get(index);
        let mut phase_steps: Vec<StepDetail> = steps
            .iter()
            .filter(|step| step.phase_id == phase_id)
            .cloned()
            .collect();
        for step in &mut phase_steps {
            step.notice = step.result.as_ref().and_then(|result| {
                ["warning", "note"]
                    .iter()
                    .find_map(|key| result.get(*key).and_then(Value::as_str))
                    .map(str::to_owned)
            });
            step.description = spec
                .and_then(|s| s.steps.get(step.step_index as usize))
                .map(StepSpec::describe)
                .unwrap_or_default();
        }
        let gates = spec
            .map(|spec| {
                spec.gates
                    .iter()
                    .enumerate()
                    .map(|(gate_index, gate)| GateDetail {
                        kind: gate.kind().to_owned(),
                        description: gate.describe(),
                        checks: checks
                            .iter()
                            .filter(|c| {
                                c.get::<Uuid, _>("phase_id") == phase_id
                                    && c.get::<i32, _>("gate_index") == gate_index as i32
                            })
                            .map(|c| CheckDetail {
                                verdict: c.get("verdict"),
                                value: c.get("value"),
                                detail: c.get("detail"),
                                checked_at: c.get("checked_at"),
                            })
                            .collect(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        phases.push(PhaseDetail {
            name: phase_row.get("name"),
            state: phase_state,
            started_at: phase_row.get("started_at"),
            verifying_at: phase_row.get("verifying_at"),
            finished_at: phase_row.get("finished_at"),
            steps: phase_steps,
            gates,
        });
    }
    let parsed: RolloutState = state.parse().map_err(StoreError::Corrupt)?;
    Ok(RolloutDetail {
        id: row.get("id"),
        app: row.get("app"),
        environment: row.get("environment"),
        release: row.get("release"),
        previous_release: row.get("previous_release"),
        kind: row.get("kind"),
        finished: parsed.is_terminal(),
        state,
        state_reason: row.get("state_reason"),
        created_by: row.get("created_by"),
        trigger: row.get("trigger"),
        rollback_of: row.get("rollback_of"),
        rolled_back_by: row.get("rolled_back_by"),
        current_phase: if parsed.is_terminal() {
            None
        } else {
            current_phase
        },
        created_at: row.get("created_at"),
        started_at: row.get("started_at"),
        finished_at: row.get("finished_at"),
        version: row.get("version"),
        verdict: parsed.is_terminal().then(|| Verdict {
            outcome: parsed.as_str().to_owned(),
            reason: row.get("state_reason"),
            rollback: row.get("rolled_back_by"),
        }),
        phases,
    })
}

/// The version counter and state of a rollout (cheap, for long-polls).
pub async fn version(pool: &PgPool, id: Uuid) -> Result<(i64, RolloutState), StoreError> {
    let row = sqlx::query("select version, state::text as state from rollouts where id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("rollout {id}")))?;
    Ok((
        row.get("version"),
        row.get::<String, _>("state")
            .parse()
            .map_err(StoreError::Corrupt)?,
    ))
}

/// One line of a rollout list.
#[derive(Clone, Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct RolloutSummary {
    /// Id.
    pub id: Uuid,
    /// App.
    pub app: String,
    /// Environment.
    pub environment: String,
    /// Release version.
    pub release: String,
    /// Kind.
    pub kind: String,
    /// State.
    pub state: String,
    /// Why.
    pub state_reason: Option<String>,
    /// Who.
    pub created_by: String,
    /// Phases succeeded.
    pub phases_done: i64,
    /// Phases in all.
    pub phases_total: i64,
    /// Name of the current phase.
    pub current_phase: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Ended.
    pub finished_at: Option<DateTime<Utc>>,
}

/// Recent rollouts, newest first, optionally of one app and environment.
pub async fn recent(
    pool: &PgPool,
    app: Option<&str>,
    environment: Option<&str>,
    limit: i64,
) -> Result<Vec<RolloutSummary>, StoreError> {
    Ok(sqlx::query_as::<_, RolloutSummary>(
        "select r.id, a.name as app, e.name as environment, rel.version as release, r.kind::text as kind,
                r.state::text as state, r.state_reason, r.created_by,
                (select count(*) from phases p where p.rollout_id = r.id and p.state in ('succeeded', 'skipped')) as phases_done,
                (select count(*) from phases p where p.rollout_id = r.id) as phases_total,
                (select p.name from phases p where p.rollout_id = r.id and p.state in ('running', 'verifying')
                  order by p.position limit 1) as current_phase,
                r.created_at, r.finished_at
           from rollouts r
           join apps a on a.id = r.app_id
           join environments e on e.id = r.environment_id
           join releases rel on rel.id = r.release_id
          where ($1::text is null or a.name = $1) and ($2::text is null or e.name = $2)
          order by r.created_at desc, r.id desc
          limit $3",
    )
    .bind(app)
    .bind(environment)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// One rollback as kept in the history.
#[derive(Clone, Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct RollbackRecord {
    /// The rollback rollout.
    pub rollout_id: Uuid,
    /// The rollout it undid.
    pub rollback_of: Option<Uuid>,
    /// Release it left.
    pub from_release: Option<String>,
    /// Release it returned to.
    pub to_release: String,
    /// `manual`, `api`, `gate`, `deadline`.
    pub trigger: String,
    /// Why.
    pub reason: String,
    /// Who.
    pub actor: String,
    /// When the failure was first measured.
    pub detected_at: Option<DateTime<Utc>>,
    /// When the rollback was asked for.
    pub requested_at: DateTime<Utc>,
    /// When the environment was healthy again.
    pub restored_at: Option<DateTime<Utc>>,
    /// `restored`, `failed`, or null while running.
    pub outcome: Option<String>,
    /// State of the rollback rollout.
    pub state: String,
}

/// Rollback history of an environment, newest first.
pub async fn rollbacks(
    pool: &PgPool,
    environment_id: Uuid,
    limit: i64,
) -> Result<Vec<RollbackRecord>, StoreError> {
    Ok(sqlx::query_as::<_, RollbackRecord>(
        "select b.rollout_id, b.rollback_of, f.version as from_release, t.version as to_release,
                b.trigger, b.reason, b.actor, b.detected_at, b.requested_at, b.restored_at, b.outcome,
                r.state::text as state
           from rollbacks b
           join rollouts r on r.id = b.rollout_id
           join releases t on t.id = b.to_release_id
           left join releases f on f.id = b.from_release_id
          where b.environment_id = $1
          order by b.requested_at desc
          limit $2",
    )
    .bind(environment_id)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// What runs in one component of an environment.
#[derive(Clone, Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct LiveComponent {
    /// Component.
    pub component: String,
    /// Release version.
    pub release: String,
    /// Provider reference of the deploy.
    pub provider_ref: Option<String>,
    /// Since.
    pub since: DateTime<Utc>,
    /// What the platform last said serves (version), if it can tell.
    pub observed_version: Option<String>,
    /// When it said so.
    pub observed_at: Option<DateTime<Utc>>,
    /// The platform serves something other than what Shipgate deployed.
    pub drifted: bool,
}

/// What runs in each component of an environment.
pub async fn live_components(
    pool: &PgPool,
    environment_id: Uuid,
) -> Result<Vec<LiveComponent>, StoreError> {
    Ok(sqlx::query_as::<_, LiveComponent>(
        "select c.name as component, r.version as release, l.provider_ref, l.since,
                l.observed_version, l.observed_at,
                l.drifted
           from live_components l
           join components c on c.id = l.component_id
           join releases r on r.id = l.release_id
          where l.environment_id = $1 order by c.position",
    )
    .bind(environment_id)
    .fetch_all(pool)
    .await?)
}

/// Clears an environment's auto-deploy pause.
pub async fn resume_auto_deploy(
    pool: &PgPool,
    environment: &Environment,
    actor: &Actor,
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "update environments set auto_deploy_paused_at = null, auto_deploy_paused_reason = null where id = $1",
    )
    .bind(environment.id)
    .execute(&mut *tx)
    .await?;
    notify_environments(&mut tx).await?;
    events::record(
        &mut *tx,
        Scope {
            app_id: Some(environment.app_id),
            environment_id: Some(environment.id),
            rollout_id: None,
        },
        actor,
        "environment.auto_deploy_resumed",
        json!({}),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// A config var or flag Shipgate set in an environment.
#[derive(Clone, Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ConfigEntry {
    /// Component.
    pub component: String,
    /// Variable.
    pub key: String,
    /// Value (`None`: unset).
    pub value: Option<String>,
    /// When.
    pub updated_at: DateTime<Utc>,
    /// Who (the engine replica that applied the step).
    pub updated_by: String,
    /// The rollout that set it.
    pub rollout_id: Option<Uuid>,
}

/// One change of a config var, newest first.
#[derive(Clone, Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ConfigChange {
    /// Component.
    pub component: String,
    /// Variable.
    pub key: String,
    /// Value before.
    pub old_value: Option<String>,
    /// Value after.
    pub new_value: Option<String>,
    /// When.
    pub changed_at: DateTime<Utc>,
    /// Who.
    pub changed_by: String,
    /// The rollout that changed it.
    pub rollout_id: Option<Uuid>,
}

/// The config vars and flags of an environment, and their recent history.
pub async fn config(
    pool: &PgPool,
    environment_id: Uuid,
    history_limit: i64,
) -> Result<(Vec<ConfigEntry>, Vec<ConfigChange>), StoreError> {
    let values = sqlx::query_as::<_, ConfigEntry>(
        "select c.name as component, v.key, v.value, v.updated_at, v.updated_by, v.rollout_id
           from config_values v join components c on c.id = v.component_id
          where v.environment_id = $1 order by c.position, v.key",
    )
    .bind(environment_id)
    .fetch_all(pool)
    .await?;
    let history = sqlx::query_as::<_, ConfigChange>(
        "select c.name as component, h.key, h.old_value, h.new_value, h.changed_at, h.changed_by, h.rollout_id
           from config_history h join components c on c.id = h.component_id
          where h.environment_id = $1 order by h.id desc limit $2",
    )
    .bind(environment_id)
    .bind(history_limit)
    .fetch_all(pool)
    .await?;
    Ok((values, history))
}
