//! The engine's side of the store: claiming due rollouts with a lease, loading what the domain
//! needs to decide, and recording each decision and outcome.
//!
//! Every write is fenced: it happens only while this worker holds the rollout's lease and the
//! rollout has not changed since the worker read it (`version`). A worker that lost its lease,
//! or raced a person's action, gets [`StoreError::Fenced`] and reloads.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

use sqlx::{PgExecutor, PgPool, Postgres, Row, Transaction};
use uuid::Uuid;

use shipgate_domain::config::TargetSpec;
use shipgate_domain::decide::{
    ApprovalView, CheckView, GateView, PhaseView, RolloutView, StepView,
};
use shipgate_domain::plan::{GateSpec, Plan, Reading};
use shipgate_domain::state::{PhaseState, RolloutKind, RolloutState, StepState, Verdict};

use crate::events::{self, Actor, Scope};
use crate::line;
use crate::policy::{self, Hold};
use crate::releases::Release;
use crate::rollouts::{self, finish_phases, wake_queue};
use crate::{StoreError, UPDATES_CHANNEL, WAKE_CHANNEL};
use shipgate_domain::notification::NotificationEvent;

fn interval(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

/// Claims up to `limit` due rollouts for `owner` with a lease of `lease`. Rollouts whose lease
/// lapsed (a crashed replica) are claimable again.
pub async fn claim_due(
    pool: &PgPool,
    owner: &str,
    lease: Duration,
    limit: i64,
) -> Result<Vec<Uuid>, StoreError> {
    Ok(sqlx::query_scalar(
        "update rollouts set lease_owner = $1, lease_until = now() + make_interval(secs => $2)
          where id in (select id from rollouts
                        where state in ('queued', 'pending_approval', 'in_progress', 'paused')
                          and next_wake_at <= now()
                          and (lease_until is null or lease_until < now())
                        order by next_wake_at
                        limit $3
                        for update skip locked)
         returning id",
    )
    .bind(owner)
    .bind(interval(lease))
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Extends the leases `owner` holds on `ids`; returns the ids still held.
pub async fn renew(
    pool: &PgPool,
    owner: &str,
    ids: &[Uuid],
    lease: Duration,
) -> Result<Vec<Uuid>, StoreError> {
    Ok(sqlx::query_scalar(
        // In id order, skipping rows a drive has locked this instant (it is writing them, and
        // the next heartbeat comes well before the lease ends): locking a batch in arbitrary
        // order while drives lock single rows deadlocked under load.
        "update rollouts set lease_until = now() + make_interval(secs => $3)
          where id in (select id from rollouts where id = any($2) and lease_owner = $1
                        order by id for update skip locked)
         returning id",
    )
    .bind(owner)
    .bind(ids)
    .bind(interval(lease))
    .fetch_all(pool)
    .await?)
}

/// Gives a rollout back, due again at `wake_at`; if anyone changed it since `seen_version`
/// (a person's action, a wake-up), it is due at once so no wake-up is lost.
pub async fn release_lease(
    pool: &PgPool,
    id: Uuid,
    owner: &str,
    seen_version: i64,
    wake_at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "update rollouts set lease_owner = null, lease_until = null,
                next_wake_at = case when version <> $3 then now() else $4 end
          where id = $1 and lease_owner = $2",
    )
    .bind(id)
    .bind(owner)
    .bind(seen_version)
    .bind(wake_at)
    .execute(pool)
    .await?;
    Ok(())
}

/// Whether `owner` still holds the lease on a rollout.
pub async fn holds_lease(pool: &PgPool, id: Uuid, owner: &str) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar(
        "select exists(select 1 from rollouts where id = $1 and lease_owner = $2 and lease_until > now())",
    )
    .bind(id)
    .bind(owner)
    .fetch_one(pool)
    .await?)
}

/// Counts a tick that ended in an error; returns the count so far.
pub async fn count_failed_tick(pool: &PgPool, id: Uuid) -> Result<i32, StoreError> {
    Ok(sqlx::query_scalar(
        "update rollouts set failed_ticks = failed_ticks + 1,
                next_wake_at = now() + make_interval(secs => least(60, power(2, failed_ticks)))
          where id = $1 returning failed_ticks",
    )
    .bind(id)
    .fetch_one(pool)
    .await?)
}

/// The latest attempt of one step, with what the engine needs to call the provider.
#[derive(Clone, Debug, PartialEq)]
pub struct StepRow {
    /// Id.
    pub id: Uuid,
    /// Attempt.
    pub attempt: i32,
    /// The key the provider can be asked about.
    pub natural_key: String,
    /// The provider's reference, once submitted.
    pub provider_ref: Option<String>,
    /// What was asked.
    pub request: Value,
}

/// A rollout loaded for one decision.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// Id.
    pub id: Uuid,
    /// App id.
    pub app_id: Uuid,
    /// App name.
    pub app: String,
    /// Environment id.
    pub environment_id: Uuid,
    /// Environment name.
    pub environment: String,
    /// Version counter seen.
    pub version: i64,
    /// The release being rolled out.
    pub release: Release,
    /// The release the environment ran before.
    pub previous_release_id: Option<Uuid>,
    /// Plan snapshot.
    pub plan: Plan,
    /// Target snapshot by component.
    pub targets: BTreeMap<String, TargetSpec>,
    /// The rollout this one rolls back.
    pub rollback_of: Option<Uuid>,
    /// Phase ids by position.
    pub phase_ids: Vec<Uuid>,
    /// Latest attempt per (phase, step).
    pub steps: BTreeMap<(usize, usize), StepRow>,
    /// What the domain decides on.
    pub view: RolloutView,
}

/// A phase as [`load`] reads it.
#[derive(Deserialize)]
struct PhaseRecord {
    id: Uuid,
    state: String,
    verifying_at: Option<DateTime<Utc>>,
    retry_requested_at: Option<DateTime<Utc>>,
}

/// The latest attempt of a step as [`load`] reads it.
#[derive(Deserialize)]
struct StepRecord {
    id: Uuid,
    phase_id: Uuid,
    step_index: i32,
    attempt: i32,
    state: String,
    natural_key: String,
    provider_ref: Option<String>,
    request: Value,
    error: Option<String>,
    created_at: DateTime<Utc>,
    submitted_at: Option<DateTime<Utc>>,
    last_polled_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
}

/// A gate check of the current phase as [`load`] reads it.
#[derive(Deserialize)]
struct CheckRecord {
    gate_index: i32,
    verdict: String,
    checked_at: DateTime<Utc>,
    detail: Value,
}

/// A person's decision as [`load`] reads it.
#[derive(Deserialize)]
struct ApprovalRecord {
    phase_id: Option<Uuid>,
    gate_index: Option<i32>,
    decision: String,
    comment: Option<String>,
    actor: String,
}

/// A recorded gate check as the domain sees it.
fn check_view(verdict: Verdict, at: DateTime<Utc>, detail: &Value) -> CheckView {
    CheckView {
        verdict,
        at,
        overridden: detail.get("override").and_then(Value::as_bool) == Some(true),
        summary: detail
            .get("summary")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        reading: Reading::parse(detail.get("reading").and_then(Value::as_str)),
    }
}

/// `loaded` as of `version` (the same rollout after a commit, or a rolled-back fence).
pub fn at_version(mut loaded: Arc<Loaded>, version: i64) -> Arc<Loaded> {
    if loaded.version != version {
        Arc::make_mut(&mut loaded).version = version;
    }
    loaded
}

/// How many of a gate's latest checks [`load`] reads (enough for any window a gate decides on).
const MAX_CHECKS: usize = 2000;

/// Loads a rollout for a decision, in one statement: the rollout, its release, phases, the
/// latest attempt of each step, the current phase's checks (the last 2,000 per gate) and the
/// approvals, the lists as JSON (the engine loads a rollout before every action, so each
/// round trip saved counts per transition).
pub async fn load(executor: impl PgExecutor<'_>, id: Uuid) -> Result<Loaded, StoreError> {
    let row = sqlx::query(
        "select r.id, r.app_id, a.name as app, r.environment_id, e.name as environment, r.version,
                r.previous_release_id, r.kind::text as kind, r.state::text as state,
                r.plan, r.targets, r.rollback_of, r.created_at, r.created_by, e.policy,
                coalesce(r.activated_at, r.created_at) as activated_at,
                (select to_jsonb(rel) from (
                    select id, version, git_sha, git_ref, artifacts, config, notes, forward_only,
                           created_by, source, committed_at, quarantined_at, quarantine_reason,
                           created_at
                      from releases where id = r.release_id) rel) as release,
                coalesce((select jsonb_agg(jsonb_build_object(
                              'id', p.id, 'state', p.state, 'verifying_at', p.verifying_at,
                              'retry_requested_at', p.retry_requested_at) order by p.position)
                            from phases p where p.rollout_id = r.id), '[]') as phases,
                coalesce((select jsonb_agg(to_jsonb(s)) from (
                    select distinct on (phase_id, step_index)
                           id, phase_id, step_index, attempt, state, natural_key, provider_ref,
                           request, error, created_at, submitted_at, last_polled_at, finished_at
                      from step_runs where rollout_id = r.id
                     order by phase_id, step_index, attempt desc) s), '[]') as steps,
                coalesce((select jsonb_agg(to_jsonb(c) order by c.id) from (
                    select gate_index, verdict, checked_at, detail, id,
                           row_number() over (partition by gate_index order by id desc) as n
                      from gate_checks
                     where phase_id = (select p.id from phases p
                                        where p.rollout_id = r.id
                                          and p.state not in ('succeeded', 'skipped')
                                        order by p.position limit 1)) c
                   where c.n <= $2), '[]') as checks,
                coalesce((select jsonb_agg(jsonb_build_object(
                              'phase_id', ap.phase_id, 'gate_index', ap.gate_index,
                              'decision', ap.decision, 'comment', ap.comment, 'actor', ap.actor))
                            from approvals ap where ap.rollout_id = r.id), '[]') as approvals
           from rollouts r join apps a on a.id = r.app_id join environments e on e.id = r.environment_id
          where r.id = $1",
    )
    .bind(id)
    .bind(MAX_CHECKS as i64)
    .fetch_optional(executor)
    .await?
    .ok_or_else(|| StoreError::NotFound(format!("rollout {id}")))?;
    let plan: Plan = serde_json::from_value(row.get("plan"))?;
    let targets: BTreeMap<String, TargetSpec> = serde_json::from_value(row.get("targets"))?;
    let state: RolloutState = row
        .get::<String, _>("state")
        .parse()
        .map_err(StoreError::Corrupt)?;
    let kind: RolloutKind = row
        .get::<String, _>("kind")
        .parse()
        .map_err(StoreError::Corrupt)?;
    let release: Release = serde_json::from_value(row.get("release"))?;
    let created_at: DateTime<Utc> = row.get("created_at");
    let phase_rows: Vec<PhaseRecord> = serde_json::from_value(row.get("phases"))?;
    let step_rows: Vec<StepRecord> = serde_json::from_value(row.get("steps"))?;
    let check_rows: Vec<CheckRecord> = serde_json::from_value(row.get("checks"))?;
    let approval_rows: Vec<ApprovalRecord> = serde_json::from_value(row.get("approvals"))?;
    let current_phase_id = phase_rows
        .iter()
        .find(|p| !matches!(p.state.as_str(), "succeeded" | "skipped"))
        .map(|p| p.id);

    let mut phase_ids = Vec::new();
    let mut phases = Vec::new();
    let mut steps = BTreeMap::new();
    for (index, phase_row) in phase_rows.iter().enumerate() {
        let phase_id = phase_row.id;
        phase_ids.push(phase_id);
        let spec = plan
            .phases
            .get(index)
            .ok_or_else(|| StoreError::Corrupt("phase rows do not match the plan".into()))?;
        let mut step_views = vec![None; spec.steps.len()];
        for step_row in step_rows.iter().filter(|s| s.phase_id == phase_id) {
            let step_index = step_row.step_index as usize;
            if step_index >= step_views.len() {
                continue;
            }
            step_views[step_index] = Some(StepView {
                attempt: step_row.attempt as u32,
                state: step_row.state.parse().map_err(StoreError::Corrupt)?,
                created_at: step_row.created_at,
                submitted_at: step_row.submitted_at,
                last_polled_at: step_row.last_polled_at,
                finished_at: step_row.finished_at,
                error: step_row.error.clone(),
            });
            steps.insert(
                (index, step_index),
                StepRow {
                    id: step_row.id,
                    attempt: step_row.attempt,
                    natural_key: step_row.natural_key.clone(),
                    provider_ref: step_row.provider_ref.clone(),
                    request: step_row.request.clone(),
                },
            );
        }
        let mut gates = vec![GateView::default(); spec.gates.len()];
        if Some(phase_id) == current_phase_id {
            for check in &check_rows {
                let Some(gate) = gates.get_mut(check.gate_index as usize) else {
                    continue;
                };
                let verdict = check
                    .verdict
                    .parse::<Verdict>()
                    .map_err(StoreError::Corrupt)?;
                gate.checks
                    .push(check_view(verdict, check.checked_at, &check.detail));
            }
        }
        for approval in approval_rows
            .iter()
            .filter(|a| a.phase_id == Some(phase_id))
        {
            let gate_index = approval.gate_index.unwrap_or(0) as usize;
            let Some(gate) = gates.get_mut(gate_index) else {
                continue;
            };
            if approval.decision == "approve" {
                gate.approvals += 1;
            } else {
                gate.rejection = Some(
                    approval
                        .comment
                        .clone()
                        .unwrap_or_else(|| "no comment".into()),
                );
            }
        }
        phases.push(PhaseView {
            state: phase_row.state.parse().map_err(StoreError::Corrupt)?,
            verifying_at: phase_row.verifying_at,
            retry_requested_at: phase_row.retry_requested_at,
            steps: step_views,
            gates,
        });
    }

    let policy: shipgate_domain::config::Policy = serde_json::from_value(row.get("policy"))?;
    let approval = match (&policy.approvals, kind) {
        (Some(approvals), kind) if kind != RolloutKind::Rollback => {
            let rollout_level: Vec<&ApprovalRecord> = approval_rows
                .iter()
                .filter(|a| a.phase_id.is_none())
                .collect();
            Some(ApprovalView {
                required: approvals.required,
                approvals: rollout_level
                    .iter()
                    .filter(|a| a.decision == "approve")
                    .map(|a| a.actor.as_str())
                    .collect::<std::collections::HashSet<_>>()
                    .len() as u32,
                rejection: rollout_level
                    .iter()
                    .find(|a| a.decision == "reject")
                    .map(|a| a.comment.clone().unwrap_or_else(|| "no comment".into())),
                expires_at: row.get::<DateTime<Utc>, _>("activated_at")
                    + approvals.timeout.to_chrono(),
            })
        }
        _ => None,
    };
    let previous_release_id: Option<Uuid> = row.get("previous_release_id");
    Ok(Loaded {
        id,
        app_id: row.get("app_id"),
        app: row.get("app"),
        environment_id: row.get("environment_id"),
        environment: row.get("environment"),
        version: row.get("version"),
        previous_release_id,
        plan: plan.clone(),
        targets,
        rollback_of: row.get("rollback_of"),
        phase_ids,
        steps,
        view: RolloutView {
            state,
            kind,
            plan,
            phases,
            approval,
            can_roll_back: previous_release_id.is_some(),
            created_at,
        },
        release,
    })
}

/// A fenced transaction on one rollout. The engine records one transition or one outcome in
/// it, or several in a row while none needs the outside world in between (a gate's check, the
/// phase it passes, the next phase's start): every method writes without committing;
/// [`Fenced::commit`] publishes them together, or [`Fenced::finish`] drops them if nothing but
/// the fence was written.
///
/// Between decisions the chain does not read the rollout again: each method applies to its copy
/// of [`Loaded`] what it wrote (the fence holds the rollout's row, so nobody else changes what
/// the engine decides on), and [`Fenced::reload`] hands that copy out. A write whose effect on
/// the copy is not worked out here marks it stale, and the next reload reads the database. In
/// debug builds (every test) each reload also reads the database and checks the copy against it.
pub struct Fenced {
    tx: Transaction<'static, Postgres>,
    loaded: Arc<Loaded>,
    actor: Actor,
    /// The rollout's version once this commits (the fence bumped it; holding the row, nothing
    /// else can).
    version: i64,
    /// Whether anything besides the fence was written.
    dirty: bool,
    /// The transaction's `now()`: what every timestamp it writes holds.
    now: DateTime<Utc>,
    /// Whether `loaded` misses something written since it was read.
    stale: bool,
    /// Events not written yet (see [`Fenced::event`]).
    events: Vec<(String, Value)>,
}

/// The phase whose gate checks [`load`] reads: the first one not passed or skipped.
fn current_phase(view: &RolloutView) -> Option<usize> {
    view.phases
        .iter()
        .position(|p| !matches!(p.state, PhaseState::Succeeded | PhaseState::Skipped))
}

impl Fenced {
    /// Opens a transaction that holds only if `owner` still leases the rollout and nobody changed
    /// it since it was loaded. The fence bumps the rollout's version and, in the same statement,
    /// queues its change notification (delivered at commit, dropped with a rollback).
    pub async fn begin(
        pool: &PgPool,
        loaded: Arc<Loaded>,
        owner: &str,
    ) -> Result<Self, StoreError> {
        let mut tx = pool.begin().await?;
        let bumped: Option<(i64, DateTime<Utc>)> = sqlx::query_as(
            "with bumped as (
                 update rollouts set version = version + 1, updated_at = now(), failed_ticks = 0
                  where id = $1 and version = $2 and lease_owner = $3 and lease_until > now()
                 returning id::text)
             select count(*), now() from bumped, pg_notify($4, bumped.id) as wake,
                                            pg_notify($5, bumped.id) as updates
             having count(*) = 1",
        )
        .bind(loaded.id)
        .bind(loaded.version)
        .bind(owner)
        .bind(WAKE_CHANNEL)
        .bind(UPDATES_CHANNEL)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((_, now)) = bumped else {
            return Err(StoreError::Fenced);
        };
        Ok(Fenced {
            tx,
            version: loaded.version + 1,
            loaded,
            actor: Actor::engine(owner),
            dirty: false,
            now,
            stale: false,
            events: Vec::new(),
        })
    }

    /// The rollout as it stands inside the transaction, with what it wrote so far: the copy
    /// kept up to date by the writes, or read again if a write marked it stale.
    pub async fn reload(&mut self) -> Result<Arc<Loaded>, StoreError> {
        match self.copy() {
            Some(copy) => {
                Self::check_copy(&mut *self.tx, &copy).await?;
                Ok(copy)
            }
            None => {
                self.loaded = Arc::new(load(&mut *self.tx, self.loaded.id).await?);
                self.stale = false;
                Ok(Arc::clone(&self.loaded))
            }
        }
    }

    /// The chain's copy of the rollout as the database holds it once this commits; none if a
    /// write left it stale.
    pub fn copy(&mut self) -> Option<Arc<Loaded>> {
        if self.stale {
            return None;
        }
        self.loaded = at_version(Arc::clone(&self.loaded), self.version);
        Some(Arc::clone(&self.loaded))
    }

    /// Checks a copy against the database (debug builds; every test): unless someone changed
    /// the rollout since (its version moved on), they must be equal.
    pub async fn check_copy(
        executor: impl PgExecutor<'_>,
        kept: &Loaded,
    ) -> Result<(), StoreError> {
        if cfg!(debug_assertions) {
            let read = load(executor, kept.id).await?;
            // The approval view comes from the environment's policy, which applying settings
            // changes without touching the rollout: the chain never writes it.
            let view = RolloutView {
                approval: read.view.approval.clone(),
                ..kept.view.clone()
            };
            let same = read.version != kept.version
                || (read.view == view
                    && read.phase_ids == kept.phase_ids
                    && read.steps == kept.steps);
            assert!(
                same,
                "the chain's copy of rollout {} drifted from the database:\n kept {:#?}\n read {:#?}",
                kept.id,
                (kept.version, &kept.view, &kept.steps),
                (read.version, &read.view, &read.steps)
            );
        }
        Ok(())
    }

    /// The copy of the rollout, to apply a write to.
    fn mirror(&mut self) -> &mut Loaded {
        Arc::make_mut(&mut self.loaded)
    }

    /// Applies a phase's new state to the copy. When another phase becomes the current one,
    /// the one before loses its checks (only the current phase's are read) and, unless the new
    /// one never ran (it has none), the copy is stale.
    fn mirror_phase(&mut self, index: usize, state: PhaseState) {
        let now = self.now;
        let view = &mut self.mirror().view;
        let before = current_phase(view);
        view.phases[index].state = state;
        if state == PhaseState::Verifying {
            view.phases[index].verifying_at = Some(now);
        }
        let after = current_phase(view);
        if before == after {
            return;
        }
        if let Some(before) = before {
            for gate in &mut view.phases[before].gates {
                gate.checks.clear();
            }
        }
        if after.is_some_and(|after| view.phases[after].state != PhaseState::Pending) {
            self.stale = true;
        }
    }

    /// The step with this id in the copy, if the copy has it as its latest attempt.
    fn mirrored_step(&mut self, step_id: Uuid) -> Option<(&mut StepRow, &mut StepView)> {
        let loaded = self.mirror();
        let (&(phase, step), row) = loaded.steps.iter_mut().find(|(_, row)| row.id == step_id)?;
        let view = loaded.view.phases[phase].steps[step].as_mut()?;
        Some((row, view))
    }

    fn scope(&self) -> Scope {
        Scope {
            app_id: Some(self.loaded.app_id),
            environment_id: Some(self.loaded.environment_id),
            rollout_id: Some(self.loaded.id),
        }
    }

    /// Appends an event about the rollout. Plain events wait and go in with the next one that
    /// announces a notification, or at commit, in one statement; the order stays as recorded.
    pub async fn event(&mut self, action: &str, details: Value) -> Result<(), StoreError> {
        self.dirty = true;
        if NotificationEvent::from_action(action, &details).is_none() {
            self.events.push((action.to_owned(), details));
            return Ok(());
        }
        self.flush_events().await?;
        let scope = self.scope();
        events::record(&mut *self.tx, scope, &self.actor, action, details).await
    }

    /// Writes the events waiting in [`Fenced::event`]; before anything else that may record
    /// events in this transaction, and at commit.
    async fn flush_events(&mut self) -> Result<(), StoreError> {
        if self.events.is_empty() {
            return Ok(());
        }
        let (actions, details): (Vec<String>, Vec<Value>) = self.events.drain(..).unzip();
        let scope = self.scope();
        events::record_plain(&mut *self.tx, scope, &self.actor, &actions, &details).await
    }

    /// Commits and publishes the changes; returns the rollout's version.
    pub async fn commit(mut self) -> Result<i64, StoreError> {
        self.flush_events().await?;
        self.tx.commit().await?;
        Ok(self.version)
    }

    /// Commits when something was written, else rolls back (the fence alone changes nothing a
    /// reader could see); returns the rollout's version afterwards.
    pub async fn finish(self) -> Result<i64, StoreError> {
        if self.dirty {
            self.commit().await
        } else {
            self.tx.rollback().await?;
            Ok(self.version - 1)
        }
    }

    async fn set_state(
        &mut self,
        state: RolloutState,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        self.dirty = true;
        let from = self.loaded.view.state;
        if from != state && !from.can_become(state) {
            return Err(StoreError::Corrupt(format!(
                "illegal rollout transition {from} -> {state}"
            )));
        }
        sqlx::query(
            "update rollouts set state = $2::rollout_state, state_reason = $3,
                    started_at = case when $2 = 'in_progress' then coalesce(started_at, now()) else started_at end,
                    finished_at = case when $2 in ('succeeded', 'failed', 'cancelled', 'superseded', 'rolled_back', 'rollback_failed')
                                       then now() else finished_at end
              where id = $1",
        )
        .bind(self.loaded.id)
        .bind(state.as_str())
        .bind(reason)
        .execute(&mut *self.tx)
        .await?;
        self.mirror().view.state = state;
        Ok(())
    }

    /// Moves a phase to `state`; returns how long it ran, once finished.
    async fn set_phase(
        &mut self,
        index: usize,
        state: PhaseState,
        reason: Option<&str>,
    ) -> Result<Option<f64>, StoreError> {
        self.dirty = true;
        let from = self.loaded.view.phases[index].state;
        if !from.can_become(state) {
            return Err(StoreError::Corrupt(format!(
                "illegal phase transition {from} -> {state}"
            )));
        }
        // A phase that starts becomes the rollout's current one in the same statement.
        let seconds = sqlx::query_scalar(
            "with current as (update rollouts set current_phase = $5
                               where id = $4 and $2 = 'running')
             update phases set state = $2::phase_state, state_reason = coalesce($3, state_reason),
                    started_at = case when $2 = 'running' then now() else started_at end,
                    verifying_at = case when $2 = 'verifying' then now() else verifying_at end,
                    finished_at = case when $2 in ('succeeded', 'failed', 'skipped', 'aborted') then now() else finished_at end
              where id = $1
             returning extract(epoch from finished_at - started_at)::float8",
        )
        .bind(self.loaded.phase_ids[index])
        .bind(state.as_str())
        .bind(reason)
        .bind(self.loaded.id)
        .bind(index as i32)
        .fetch_one(&mut *self.tx)
        .await?;
        self.mirror_phase(index, state);
        Ok(seconds)
    }

    /// `queued` → the environment's first state, if the environment is free. Returns false when
    /// another rollout still holds it.
    pub async fn activate(mut self, needs_approval: bool) -> Result<bool, StoreError> {
        if let Some(reason) = self.loaded.release.quarantine_reason.clone() {
            // Quarantined while it waited in line: automation never deploys it.
            finish_phases(&mut self.tx, self.loaded.id).await?;
            self.set_state(
                RolloutState::Cancelled,
                Some(&format!(
                    "release {} was quarantined while queued: {reason}",
                    self.loaded.release.version
                )),
            )
            .await?;
            self.event(
                "rollout.cancelled",
                json!({ "reason": "release quarantined" }),
            )
            .await?;
            wake_queue(&mut self.tx, self.loaded.environment_id).await?;
            self.commit().await?;
            return Ok(true);
        }
        if self.line_stopped().await? {
            return Ok(false);
        }
        // What a rollback returns to is what ran when this rollout began, not when it queued.
        sqlx::query(&format!(
            "update rollouts set activated_at = now(), previous_release_id = {previous}
              where id = $1",
            previous = rollouts::current_release("$2"),
        ))
        .bind(self.loaded.id)
        .bind(self.loaded.environment_id)
        .execute(&mut *self.tx)
        .await?;
        let next = if needs_approval {
            RolloutState::PendingApproval
        } else {
            RolloutState::InProgress
        };
        match self.set_state(next, None).await {
            Ok(()) => {}
            Err(StoreError::Database(error))
                if StoreError::is_unique_violation(
                    &error,
                    "rollouts_one_active_per_environment",
                ) =>
            {
                return Ok(false);
            }
            Err(other) => return Err(other),
        }
        self.event("rollout.activated", json!({ "state": next }))
            .await?;
        self.commit().await?;
        Ok(true)
    }

    /// `pending_approval` → `in_progress`. Returns false, changing nothing, while the app's
    /// line is stopped (resuming the line wakes the rollout).
    pub async fn start(&mut self) -> Result<bool, StoreError> {
        if self.line_stopped().await? {
            return Ok(false);
        }
        self.set_state(RolloutState::InProgress, None).await?;
        self.event("rollout.started", json!({})).await?;
        Ok(true)
    }

    /// Whether the app's line is stopped for this rollout (rollbacks are exempt); holds the
    /// app's row so the line cannot stop before this transaction commits.
    async fn line_stopped(&mut self) -> Result<bool, StoreError> {
        if self.loaded.view.kind == RolloutKind::Rollback {
            return Ok(false);
        }
        Ok(line::stopped(&mut self.tx, self.loaded.app_id)
            .await?
            .is_some())
    }

    /// A phase starts its steps, unless a freeze window that began since the rollout started
    /// holds it ([`policy::hold`]): then only the rollout's reason changes (with an event, the
    /// first time) and the hold is returned. The next start after a hold lifts it.
    pub async fn start_phase(&mut self, index: usize) -> Result<Option<Hold>, StoreError> {
        let name = self.loaded.plan.phases[index].name.clone();
        // One read in the common case (no window covers the environment).
        let (overridden, trigger, reason, now, windows): (
            Option<String>,
            String,
            Option<String>,
            DateTime<Utc>,
            i64,
        ) = sqlx::query_as(
            "select r.freeze_override, r.trigger, r.state_reason, now(),
                    (select count(*) from freeze_windows f
                      where f.app_id = r.app_id
                        and (f.environment_id is null or f.environment_id = r.environment_id))
               from rollouts r where r.id = $1",
        )
        .bind(self.loaded.id)
        .fetch_one(&mut *self.tx)
        .await?;
        // Rollbacks are never held: a rollback the engine starts finishes a failing deploy, and
        // one a person asked for passed the windows when it started (a single phase).
        let rollback = self.loaded.view.kind == RolloutKind::Rollback;
        let held = if windows > 0 && overridden.is_none() && !rollback {
            let start = policy::Start {
                environment: &self.loaded.environment,
                initiator: policy::Initiator::of_trigger(&trigger),
                rollback,
            };
            let scope = (self.loaded.app_id, self.loaded.environment_id);
            policy::hold(&mut self.tx, scope, start, now).await?
        } else {
            None
        };
        if let Some(hold) = held {
            if reason.as_deref() != Some(hold.reason.as_str()) {
                self.dirty = true;
                sqlx::query("update rollouts set state_reason = $2 where id = $1")
                    .bind(self.loaded.id)
                    .bind(&hold.reason)
                    .execute(&mut *self.tx)
                    .await?;
                self.event(
                    "rollout.held",
                    json!({ "phase": name, "reason": hold.reason, "until": hold.until }),
                )
                .await?;
            }
            return Ok(Some(hold));
        }
        if reason.is_some_and(|reason| reason.starts_with(policy::HELD)) {
            sqlx::query("update rollouts set state_reason = null where id = $1")
                .bind(self.loaded.id)
                .execute(&mut *self.tx)
                .await?;
            self.event("rollout.hold_lifted", json!({ "phase": name }))
                .await?;
        }
        self.set_phase(index, PhaseState::Running, None).await?;
        self.event("phase.started", json!({ "phase": name, "index": index }))
            .await?;
        Ok(None)
    }

    /// Records the intent of a step attempt before the provider is called.
    pub async fn record_intent(
        &mut self,
        phase: usize,
        step: usize,
        attempt: u32,
        request: &Value,
    ) -> Result<(Uuid, String), StoreError> {
        let spec = &self.loaded.plan.phases[phase].steps[step];
        let natural_key = format!("{}:{phase}:{step}:{attempt}", self.loaded.id);
        let provider = spec
            .component()
            .and_then(|c| self.loaded.targets.get(c))
            .map(|t| t.provider.as_str());
        let id = Uuid::now_v7();
        sqlx::query(
            "insert into step_runs (id, rollout_id, phase_id, step_index, attempt, kind, component,
                                    provider, natural_key, request)
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(id)
        .bind(self.loaded.id)
        .bind(self.loaded.phase_ids[phase])
        .bind(step as i32)
        .bind(attempt as i32)
        .bind(spec.kind())
        .bind(spec.component())
        .bind(provider)
        .bind(&natural_key)
        .bind(request)
        .execute(&mut *self.tx)
        .await?;
        let describe = spec.describe();
        let now = self.now;
        let loaded = self.mirror();
        loaded.steps.insert(
            (phase, step),
            StepRow {
                id,
                attempt: attempt as i32,
                natural_key: natural_key.clone(),
                provider_ref: None,
                request: request.clone(),
            },
        );
        loaded.view.phases[phase].steps[step] = Some(StepView {
            attempt,
            state: StepState::Pending,
            created_at: now,
            submitted_at: None,
            last_polled_at: None,
            finished_at: None,
            error: None,
        });
        self.event(
            "step.started",
            json!({ "phase": phase, "step": describe, "attempt": attempt }),
        )
        .await?;
        Ok((id, natural_key))
    }

    /// The provider accepted the step: store its reference.
    pub async fn step_submitted(
        &mut self,
        step_id: Uuid,
        provider_ref: &str,
        detail: Option<Value>,
    ) -> Result<(), StoreError> {
        self.dirty = true;
        sqlx::query(
            "update step_runs set state = 'submitted', provider_ref = $2, submitted_at = now(),
                    result = coalesce($3, result)
              where id = $1 and state = 'pending'",
        )
        .bind(step_id)
        .bind(provider_ref)
        .bind(detail)
        .execute(&mut *self.tx)
        .await?;
        let now = self.now;
        match self.mirrored_step(step_id) {
            Some((row, view)) => {
                if view.state == StepState::Pending {
                    row.provider_ref = Some(provider_ref.to_owned());
                    view.state = StepState::Submitted;
                    view.submitted_at = Some(now);
                }
            }
            None => self.stale = true,
        }
        Ok(())
    }

    /// A poll found the operation still running.
    pub async fn step_polled(&mut self, step_id: Uuid) -> Result<(), StoreError> {
        self.dirty = true;
        sqlx::query("update step_runs set last_polled_at = now() where id = $1")
            .bind(step_id)
            .execute(&mut *self.tx)
            .await?;
        let now = self.now;
        match self.mirrored_step(step_id) {
            Some((_, view)) => view.last_polled_at = Some(now),
            None => self.stale = true,
        }
        Ok(())
    }

    /// The step settled. A succeeded deploy or rollback updates what runs in the environment.
    pub async fn step_finished(
        &mut self,
        phase: usize,
        step: usize,
        step_id: Uuid,
        outcome: Result<Value, String>,
    ) -> Result<(), StoreError> {
        self.dirty = true;
        let spec = self.loaded.plan.phases[phase].steps[step].clone();
        let (state, result, error) = match &outcome {
            Ok(result) => (StepState::Succeeded, Some(result.clone()), None),
            Err(error) => (StepState::Failed, None, Some(error.clone())),
        };
        sqlx::query(
            "update step_runs set state = $2::step_state, result = coalesce($3, result), error = $4,
                    finished_at = now(), submitted_at = coalesce(submitted_at, now())
              where id = $1 and state in ('pending', 'submitted')",
        )
        .bind(step_id)
        .bind(state.as_str())
        .bind(&result)
        .bind(&error)
        .execute(&mut *self.tx)
        .await?;
        let now = self.now;
        match self.mirrored_step(step_id) {
            Some((_, view)) => {
                if matches!(view.state, StepState::Pending | StepState::Submitted) {
                    view.state = state;
                    view.error = error.clone();
                    view.finished_at = Some(now);
                    view.submitted_at = view.submitted_at.or(Some(now));
                }
            }
            None => self.stale = true,
        }
        if state == StepState::Succeeded {
            if let Some(component) = spec.component() {
                let kind = spec.kind();
                if kind == "deploy" || kind == "rollback" {
                    sqlx::query(
                        "insert into live_components (environment_id, component_id, release_id, rollout_id, provider_ref, since)
                         select $1, c.id, $3, $4, (select provider_ref from step_runs where id = $5), now()
                           from components c where c.app_id = $2 and c.name = $6
                         on conflict (environment_id, component_id) do update
                            set release_id = excluded.release_id, rollout_id = excluded.rollout_id,
                                provider_ref = excluded.provider_ref, since = excluded.since,
                                observed_ref = null, observed_version = null, observed_at = null,
                                drifted = false",
                    )
                    .bind(self.loaded.environment_id)
                    .bind(self.loaded.app_id)
                    .bind(self.loaded.release.id)
                    .bind(self.loaded.id)
                    .bind(step_id)
                    .bind(component)
                    .execute(&mut *self.tx)
                    .await?;
                }
                if let shipgate_domain::plan::StepSpec::Config { vars, .. } = &spec {
                    self.record_config(component, vars).await?;
                }
            }
        }
        self.event(
            if state == StepState::Succeeded {
                "step.succeeded"
            } else {
                "step.failed"
            },
            json!({ "phase": phase, "step": spec.describe(), "error": error }),
        )
        .await?;
        Ok(())
    }

    async fn record_config(
        &mut self,
        component: &str,
        vars: &BTreeMap<String, Option<String>>,
    ) -> Result<(), StoreError> {
        let actor = self.actor.label();
        for (key, value) in vars {
            sqlx::query(
                "with c as (select id from components where app_id = $2 and name = $3),
                      old as (select value from config_values, c
                               where environment_id = $1 and component_id = c.id and key = $4),
                      history as (insert into config_history (environment_id, component_id, key, old_value, new_value, changed_by, rollout_id)
                                  select $1, c.id, $4, (select value from old), $5, $6, $7 from c)
                 insert into config_values (environment_id, component_id, key, value, updated_by, rollout_id)
                 select $1, c.id, $4, $5, $6, $7 from c
                 on conflict (environment_id, component_id, key) do update
                    set value = excluded.value, updated_at = now(), updated_by = excluded.updated_by,
                        rollout_id = excluded.rollout_id",
            )
            .bind(self.loaded.environment_id)
            .bind(self.loaded.app_id)
            .bind(component)
            .bind(key)
            .bind(value)
            .bind(&actor)
            .bind(self.loaded.id)
            .execute(&mut *self.tx)
            .await?;
        }
        Ok(())
    }

    /// A submitted step did not settle in time.
    pub async fn step_timed_out(
        &mut self,
        phase: usize,
        step: usize,
        step_id: Uuid,
        timeout: shipgate_domain::Span,
    ) -> Result<(), StoreError> {
        self.step_finished(
            phase,
            step,
            step_id,
            Err(format!("the provider did not finish within {timeout}")),
        )
        .await
    }

    /// A phase's steps are done: its gates start counting.
    pub async fn verify(&mut self, index: usize) -> Result<(), StoreError> {
        self.set_phase(index, PhaseState::Verifying, None).await?;
        self.event("phase.verifying", json!({ "index": index }))
            .await?;
        // A phase's approval gate asks for people now (announced as `approval.requested`).
        let phase = &self.loaded.plan.phases[index];
        let required = phase.gates.iter().find_map(|gate| match gate {
            GateSpec::Approval { required, .. } => Some(*required),
            _ => None,
        });
        if let Some(required) = required {
            let name = phase.name.clone();
            let people = if required == 1 {
                "approval"
            } else {
                "approvals"
            };
            self.event(
                "phase.approval_requested",
                json!({
                    "phase": name, "index": index, "required": required,
                    "reason": format!("phase {name} waits for {required} {people}"),
                }),
            )
            .await?;
        }
        Ok(())
    }

    /// Records one gate measurement.
    pub async fn record_check(
        &mut self,
        phase: usize,
        gate: usize,
        verdict: Verdict,
        value: Option<f64>,
        detail: Value,
    ) -> Result<(), StoreError> {
        self.dirty = true;
        let kind = self.loaded.plan.phases[phase].gates[gate].kind();
        sqlx::query(
            "insert into gate_checks (rollout_id, phase_id, gate_index, gate_kind, verdict, value, detail)
             values ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(self.loaded.id)
        .bind(self.loaded.phase_ids[phase])
        .bind(gate as i32)
        .bind(kind)
        .bind(verdict.as_str())
        .bind(value.filter(|v| v.is_finite()))
        .bind(&detail)
        .execute(&mut *self.tx)
        .await?;
        let check = check_view(verdict, self.now, &detail);
        let view = &mut self.mirror().view;
        if current_phase(view) == Some(phase) {
            let checks = &mut view.phases[phase].gates[gate].checks;
            checks.push(check);
            // As [`load`] reads them: the last 2,000 per gate.
            if checks.len() > MAX_CHECKS {
                checks.drain(..checks.len() - MAX_CHECKS);
            }
        }
        Ok(())
    }

    /// A phase passed; returns how long it took, in seconds.
    pub async fn phase_succeeded(&mut self, index: usize) -> Result<Option<f64>, StoreError> {
        let seconds = self.set_phase(index, PhaseState::Succeeded, None).await?;
        let name = self.loaded.plan.phases[index].name.clone();
        self.event(
            "phase.succeeded",
            json!({ "phase": name, "index": index, "seconds": seconds }),
        )
        .await?;
        Ok(seconds)
    }

    /// The rollout pauses for a person.
    pub async fn pause(&mut self, reason: &str) -> Result<(), StoreError> {
        self.set_state(RolloutState::Paused, Some(reason)).await?;
        self.event("rollout.paused", json!({ "reason": reason }))
            .await?;
        Ok(())
    }

    /// Every phase passed. A rollback that succeeds marks what it undid `rolled_back`.
    pub async fn succeed(&mut self) -> Result<(), StoreError> {
        self.set_state(RolloutState::Succeeded, None).await?;
        self.event(
            "rollout.succeeded",
            json!({ "release": self.loaded.release.version }),
        )
        .await?;
        if self.loaded.view.kind == RolloutKind::Rollback {
            self.finish_rollback(true, None).await?;
        }
        wake_queue(&mut self.tx, self.loaded.environment_id).await?;
        self.stale = true;
        Ok(())
    }

    /// The rollout failed. A rollback that fails marks what it undid `rollback_failed`.
    pub async fn fail(&mut self, phase: Option<usize>, reason: &str) -> Result<(), StoreError> {
        if let Some(index) = phase {
            if !self.loaded.view.phases[index].state.is_final() {
                self.set_phase(index, PhaseState::Failed, Some(reason))
                    .await?;
            }
        }
        finish_phases(&mut self.tx, self.loaded.id).await?;
        self.stale = true;
        self.set_state(RolloutState::Failed, Some(reason)).await?;
        self.event("rollout.failed", json!({ "reason": reason }))
            .await?;
        if self.loaded.view.kind == RolloutKind::Rollback {
            self.finish_rollback(false, Some(reason)).await?;
        }
        wake_queue(&mut self.tx, self.loaded.environment_id).await?;
        Ok(())
    }

    async fn finish_rollback(
        &mut self,
        restored: bool,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        let reason = match reason {
            Some(reason) => format!("the rollback failed: {reason}"),
            None => format!("rolled back to {}", self.loaded.release.version),
        };
        let actor = self.actor.clone();
        self.flush_events().await?;
        rollouts::finish_undone(&mut self.tx, self.loaded.id, restored, &reason, &actor).await?;
        self.event(
            if restored {
                "rollback.restored"
            } else {
                "rollback.failed"
            },
            json!({ "to_release": self.loaded.release.version }),
        )
        .await
    }

    /// A phase failed with `on_failure: rollback`: start the linked rollback rollout.
    pub async fn roll_back(
        mut self,
        phase: usize,
        reason: &str,
        detected_at: DateTime<Utc>,
    ) -> Result<Uuid, StoreError> {
        if !self.loaded.view.phases[phase].state.is_final() {
            self.set_phase(phase, PhaseState::Failed, Some(reason))
                .await?;
        }
        let environment =
            crate::apps::environment(&mut *self.tx, &self.loaded.app, &self.loaded.environment)
                .await?;
        let actor = self.actor.clone();
        self.flush_events().await?;
        let rollback_id = rollouts::rollback_in(
            &mut self.tx,
            &environment,
            Some(self.loaded.id),
            rollouts::RollbackRequest {
                to_release: None,
                reason,
                trigger: "gate",
                override_freeze: None,
                confirm_forward_only: false,
                detected_at: Some(detected_at),
                actor: &actor,
            },
        )
        .await?;
        self.tx.commit().await?;
        Ok(rollback_id)
    }
}

/// A component whose live release can be compared with what its platform serves.
#[derive(Clone, Debug)]
pub struct DriftCandidate {
    /// Environment id.
    pub environment_id: Uuid,
    /// Component id.
    pub component_id: Uuid,
    /// App id.
    pub app_id: Uuid,
    /// App name.
    pub app: String,
    /// Environment name.
    pub environment: String,
    /// Component name.
    pub component: String,
    /// The release Shipgate put there.
    pub release: String,
    /// That release's artifact for the component, as text (platforms that report a commit or an
    /// image rather than a version are compared with it).
    pub artifact: Option<String>,
    /// The target as configured now.
    pub target: TargetSpec,
}

/// Live components with a target in environments with no rollout in flight, for the drift
/// watcher.
pub async fn drift_candidates(pool: &PgPool) -> Result<Vec<DriftCandidate>, StoreError> {
    let rows = sqlx::query(
        "select l.environment_id, l.component_id, a.id as app_id, a.name as app, e.name as environment,
                c.name as component, r.version as release,
                case jsonb_typeof(r.artifacts -> c.name) when 'string' then r.artifacts ->> c.name
                     else (r.artifacts -> c.name)::text end as artifact,
                t.provider, t.settings, t.credential_name, t.health
           from live_components l
           join environments e on e.id = l.environment_id and e.retired_at is null
           join apps a on a.id = e.app_id
           join components c on c.id = l.component_id
           join releases r on r.id = l.release_id
           join targets t on t.environment_id = l.environment_id and t.component_id = l.component_id
          where not exists (select 1 from rollouts x where x.environment_id = l.environment_id
                              and x.state in ('in_progress', 'paused', 'rolling_back'))",
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|row| {
            let provider: String = row.get("provider");
            let settings: Value = row.get("settings");
            let health: Option<Value> = row.get("health");
            Ok(DriftCandidate {
                environment_id: row.get("environment_id"),
                component_id: row.get("component_id"),
                app_id: row.get("app_id"),
                app: row.get("app"),
                environment: row.get("environment"),
                component: row.get("component"),
                release: row.get("release"),
                artifact: row.get("artifact"),
                target: TargetSpec {
                    provider: provider.parse().map_err(StoreError::Corrupt)?,
                    settings: settings.as_object().cloned().unwrap_or_default(),
                    credential: row.get("credential_name"),
                    health: health.map(serde_json::from_value).transpose()?,
                },
            })
        })
        .collect()
}

/// Records what a platform says serves a component; when it starts to differ from the release
/// Shipgate put there, appends a `drift.detected` event (once per change). Returns whether the
/// component has drifted.
pub async fn record_observation(
    pool: &PgPool,
    candidate: &DriftCandidate,
    observed_ref: Option<&str>,
    observed_version: Option<&str>,
    replica: &str,
) -> Result<bool, StoreError> {
    let mut tx = pool.begin().await?;
    let previous: Option<Option<String>> = sqlx::query_scalar(
        "select observed_version from live_components where environment_id = $1 and component_id = $2 for update",
    )
    .bind(candidate.environment_id)
    .bind(candidate.component_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(previous) = previous else {
        return Ok(false);
    };
    let drifted = observed_version.is_some_and(|version| {
        version != candidate.release && Some(version) != candidate.artifact.as_deref()
    });
    sqlx::query(
        "update live_components set observed_ref = $3, observed_version = $4, observed_at = now(), drifted = $5
          where environment_id = $1 and component_id = $2",
    )
    .bind(candidate.environment_id)
    .bind(candidate.component_id)
    .bind(observed_ref)
    .bind(observed_version)
    .bind(drifted)
    .execute(&mut *tx)
    .await?;
    rollouts::notify_environments(&mut tx).await?;
    if drifted && previous.as_deref() != observed_version {
        events::record(
            &mut *tx,
            Scope {
                app_id: Some(candidate.app_id),
                environment_id: Some(candidate.environment_id),
                rollout_id: None,
            },
            &Actor::engine(replica),
            "drift.detected",
            json!({ "component": candidate.component, "expected": candidate.release,
                    "observed": observed_version, "reference": observed_ref }),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(drifted)
}
