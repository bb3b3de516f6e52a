//! The rollout engine: workers claim due rollouts from Postgres with a lease, ask the domain
//! what to do next, record that intent, act through provider adapters and probes, and record
//! the outcome. LISTEN/NOTIFY wakes them at once; a poll is the fallback.
//!
//! Crash safety comes from the order of writes: a step's intent (with its natural key) commits
//! before the provider is called, so a worker that resumes a step with intent but no provider
//! reference asks the provider whether the operation exists instead of calling it again.
//!
//! Writes that need nothing from outside in between share one transaction (a tick's *chain*):
//! a gate's check, the phase it passes and the next phase's start commit together. The chain
//! commits before anything leaves the process (a provider call, a probe, a query) and before
//! the rollout waits, so a crash or an error loses only decisions the next worker makes again
//! and answers it can ask for again (a poll, a probe). What a provider answered to a submit
//! cannot be asked for again everywhere (not every platform can find an operation by its key),
//! so it commits at once.
//!
//! A drive reads its rollout once. From there each write applies to the engine's copy what it
//! wrote (see [`Fenced`]), and the copy a committed chain leaves is what the next decision
//! starts from. Anyone else who changes the rollout bumps its version, so the next fence fails
//! and the engine reads again; what a stale copy can cost is a read-only call (a poll, a probe).

pub mod notifier;

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{json, Value};
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::{Notify, Semaphore};
use tracing::{debug, info, warn};
use uuid::Uuid;

use shipgate_domain::decide::{decide, Decision, Timing, Transition};
use shipgate_domain::plan::{GateSpec, NoData, PrometheusGate, Reading, StepSpec};
use shipgate_domain::provider::ProviderKind;
use shipgate_domain::state::Verdict;
use shipgate_providers::probes;
use shipgate_providers::{
    OperationStatus, ProviderError, Registry, StepRequest, Submitted, TargetContext,
};
use shipgate_store::crypto::SecretBox;
use shipgate_store::engine::{self as store, Fenced, Loaded};
use shipgate_store::{StoreError, WAKE_CHANNEL};

/// Engine settings.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// This replica's name, recorded as the lease owner and event actor.
    pub replica: String,
    /// How long a claim lasts without a heartbeat.
    pub lease: Duration,
    /// How often to look for due work when no NOTIFY arrives.
    pub poll_interval: Duration,
    /// Rollouts driven at once by this replica.
    pub concurrency: usize,
    /// Step polling and timeouts.
    pub timing: Timing,
    /// How often platforms are asked what they serve, to notice drift (zero: never).
    pub drift_interval: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            replica: format!("replica-{}", &Uuid::new_v4().simple().to_string()[..8]),
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            concurrency: 32,
            timing: Timing::default(),
            drift_interval: Duration::from_secs(60),
        }
    }
}

/// Why a tick stopped early.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A provider is unavailable for now; the rollout retries after the wait.
    #[error("provider unavailable: {message}")]
    Backoff {
        /// What happened.
        message: String,
        /// When to try again.
        wait: Duration,
    },
}

/// The transaction a tick keeps open while its writes need nothing from outside, and the copy
/// of the rollout the last one committed (see the module documentation).
#[derive(Default)]
struct Chain {
    open: Option<Fenced>,
    /// What the last committed chain left, when its copy was complete; taken by the next
    /// decision, dropped by anything that commits without it.
    committed: Option<Arc<Loaded>>,
}

/// The engine of one replica.
pub struct Engine {
    pool: PgPool,
    providers: Registry,
    secrets: SecretBox,
    http: reqwest::Client,
    config: EngineConfig,
    held: Mutex<HashSet<Uuid>>,
    wake: Arc<Notify>,
}

impl Engine {
    /// An engine over `pool` driving `providers`.
    pub fn new(
        pool: PgPool,
        providers: Registry,
        secrets: SecretBox,
        config: EngineConfig,
    ) -> Arc<Self> {
        Arc::new(Engine {
            pool,
            providers,
            secrets,
            http: probes::client(),
            config,
            held: Mutex::new(HashSet::new()),
            wake: Arc::new(Notify::new()),
        })
    }

    /// This replica's name.
    pub fn replica(&self) -> &str {
        &self.config.replica
    }

    /// Runs until `shutdown` resolves: listens for wake-ups, claims due rollouts, drives them,
    /// and renews the leases it holds.
    pub async fn run(self: Arc<Self>, shutdown: impl Future<Output = ()> + Send) {
        info!(replica = %self.config.replica, "engine started");
        let listener = tokio::spawn(wake_on(
            self.pool.clone(),
            WAKE_CHANNEL,
            Arc::clone(&self.wake),
        ));
        let heartbeat = tokio::spawn(Arc::clone(&self).heartbeat());
        let drift = (!self.config.drift_interval.is_zero())
            .then(|| tokio::spawn(Arc::clone(&self).watch_drift()));
        let promotions = tokio::spawn(Arc::clone(&self).promote());
        let permits = Arc::new(Semaphore::new(self.config.concurrency));
        tokio::pin!(shutdown);
        loop {
            let available = permits.available_permits();
            if available > 0 {
                match store::claim_due(
                    &self.pool,
                    &self.config.replica,
                    self.config.lease,
                    available as i64,
                )
                .await
                {
                    Ok(ids) => {
                        for id in ids {
                            // A late heartbeat let our own lease lapse and we claimed it again:
                            // the drive already running keeps it (the claim renewed the lease).
                            if self.held.lock().expect("lock").contains(&id) {
                                continue;
                            }
                            let permit = Arc::clone(&permits)
                                .acquire_owned()
                                .await
                                .expect("the semaphore is never closed");
                            self.held.lock().expect("lock").insert(id);
                            let engine = Arc::clone(&self);
                            tokio::spawn(async move {
                                let due = engine.drive(id).await;
                                engine.held.lock().expect("lock").remove(&id);
                                drop(permit);
                                // A finished drive may have freed an environment: look again.
                                engine.wake.notify_one();
                                // Due again soon (a step poll, a soak ending, a gate's next
                                // check): look again then, not up to a poll interval later.
                                if let Some(due) = due {
                                    let wait = (due - Utc::now()).to_std().unwrap_or_default();
                                    if wait <= engine.config.poll_interval * 60 {
                                        tokio::time::sleep(wait).await;
                                        engine.wake.notify_one();
                                    }
                                }
                            });
                        }
                    }
                    Err(error) => warn!(%error, "claiming rollouts failed; retrying"),
                }
            }
            tokio::select! {
                _ = &mut shutdown => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.config.poll_interval) => {}
            }
        }
        listener.abort();
        promotions.abort();
        if let Some(drift) = drift {
            drift.abort();
        }
        // Let drives in a provider call finish (their leases are still renewed), then give back
        // what we hold so another replica continues at once.
        let deadline = Instant::now() + Duration::from_secs(10);
        while permits.available_permits() < self.config.concurrency && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        heartbeat.abort();
        let held: Vec<Uuid> = self.held.lock().expect("lock").iter().copied().collect();
        for id in held {
            let _ = sqlx::query("update rollouts set lease_owner = null, lease_until = null where id = $1 and lease_owner = $2")
                .bind(id)
                .bind(&self.config.replica)
                .execute(&self.pool)
                .await;
        }
        info!(replica = %self.config.replica, "engine stopped");
    }

    /// Asks each platform what it serves for every live component, and records drift: a
    /// deploy or rollback made in the platform's own UI. One replica checks per round.
    async fn watch_drift(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.config.drift_interval).await;
            if let Err(error) = self.check_drift().await {
                warn!(%error, "checking for drift failed");
            }
        }
    }

    async fn check_drift(&self) -> Result<(), EngineError> {
        let mut lock = self.pool.begin().await.map_err(StoreError::from)?;
        let ours: bool =
            sqlx::query_scalar("select pg_try_advisory_xact_lock(hashtext('shipgate-drift'))")
                .fetch_one(&mut *lock)
                .await
                .map_err(StoreError::from)?;
        if !ours {
            return Ok(());
        }
        for candidate in store::drift_candidates(&self.pool).await? {
            let Some(provider) = self.providers.get(candidate.target.provider) else {
                continue;
            };
            let credential = match &candidate.target.credential {
                Some(name) => Some(
                    shipgate_store::apps::credential(
                        &self.pool,
                        &self.secrets,
                        candidate.app_id,
                        name,
                    )
                    .await?,
                ),
                None => None,
            };
            let context = TargetContext {
                app: &candidate.app,
                environment: &candidate.environment,
                component: &candidate.component,
                target: &candidate.target,
                credential: credential.as_deref(),
            };
            match provider.live(&context).await {
                Ok(live) => {
                    let drifted = store::record_observation(
                        &self.pool,
                        &candidate,
                        live.reference.as_deref(),
                        live.version.as_deref(),
                        &self.config.replica,
                    )
                    .await?;
                    if drifted {
                        warn!(app = %candidate.app, environment = %candidate.environment,
                              component = %candidate.component, expected = %candidate.release,
                              observed = ?live.version, "drift: the platform serves something else");
                    }
                }
                Err(ProviderError::Permanent(message)) => debug!(%message, "no live view"),
                Err(error) => debug!(%error, "live view unavailable this round"),
            }
        }
        lock.commit().await.map_err(StoreError::from)?;
        Ok(())
    }

    /// Each poll interval: starts the automatic promotions that are due (a release soaked long
    /// enough in the environment an `auto: true` promotion rule names), and announces freeze
    /// windows that began or ended. Every replica looks; the environment's lock and a unique
    /// index let only one promote a release, a conditional update only one announce an edge.
    async fn promote(self: Arc<Self>) {
        let actor = shipgate_store::Actor::engine(&self.config.replica);
        loop {
            tokio::time::sleep(self.config.poll_interval).await;
            match shipgate_store::promotions::promote_due(&self.pool, &actor).await {
                Ok(started) if !started.is_empty() => {
                    metrics::counter!("shipgate_auto_promotions_total")
                        .increment(started.len() as u64);
                    self.wake.notify_one();
                }
                Ok(_) => {}
                Err(error) => warn!(%error, "automatic promotion failed; retrying"),
            }
            match shipgate_store::policy::announce_freeze_edges(&self.pool, &actor).await {
                Ok(0) => {}
                Ok(edges) => info!(edges, "freeze windows began or ended"),
                Err(error) => warn!(%error, "announcing freeze windows failed; retrying"),
            }
        }
    }

    async fn heartbeat(self: Arc<Self>) {
        let every = self.config.lease / 3;
        loop {
            tokio::time::sleep(every).await;
            let held: Vec<Uuid> = self.held.lock().expect("lock").iter().copied().collect();
            if held.is_empty() {
                continue;
            }
            if let Err(error) =
                store::renew(&self.pool, &self.config.replica, &held, self.config.lease).await
            {
                warn!(%error, "renewing leases failed");
            }
        }
    }

    /// Drives one claimed rollout until it has nothing to do now, then gives the lease back;
    /// returns when the rollout is due again, if it said.
    async fn drive(&self, id: Uuid) -> Option<chrono::DateTime<Utc>> {
        let mut seen_version = 0;
        let outcome = self.tick(id, &mut seen_version).await;
        let mut due = None;
        let result = match outcome {
            Ok(wake_at) => {
                due = Some(wake_at);
                store::release_lease(&self.pool, id, &self.config.replica, seen_version, wake_at)
                    .await
            }
            Err(EngineError::Backoff { message, wait }) => {
                debug!(rollout.id = %id, %message, "backing off");
                let wake_at = Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default();
                // Our own writes in this tick (the step's intent) changed the version; compare
                // with the current one so the backoff is not mistaken for someone's wake-up.
                // People's actions take effect without the engine, so none is lost meanwhile.
                match shipgate_store::rollouts::version(&self.pool, id).await {
                    Ok((version, _)) => {
                        store::release_lease(&self.pool, id, &self.config.replica, version, wake_at)
                            .await
                    }
                    Err(error) => Err(error),
                }
            }
            Err(EngineError::Store(StoreError::Fenced)) => Ok(()),
            Err(error) => {
                warn!(rollout.id = %id, %error, "tick failed");
                metrics::counter!("shipgate_engine_errors_total").increment(1);
                match store::count_failed_tick(&self.pool, id).await {
                    Ok(count) if count >= 10 => self.give_up(id, &error.to_string()).await,
                    _ => {}
                }
                sqlx::query("update rollouts set lease_owner = null, lease_until = null where id = $1 and lease_owner = $2")
                    .bind(id)
                    .bind(&self.config.replica)
                    .execute(&self.pool)
                    .await
                    .map(|_| ())
                    .map_err(StoreError::from)
            }
        };
        if let Err(error) = result {
            warn!(rollout.id = %id, %error, "giving the lease back failed; it will lapse");
        }
        due
    }

    /// After repeated engine errors a rollout fails with the reason rather than retrying forever.
    async fn give_up(&self, id: Uuid, reason: &str) {
        let Ok(loaded) = store::load(&self.pool, id).await else {
            return;
        };
        if loaded.view.state.is_terminal() {
            return;
        }
        let reason = format!("the engine failed 10 times in a row: {reason}");
        if loaded.view.state == shipgate_domain::state::RolloutState::Queued {
            // A queued rollout cannot fail; it is cancelled with the reason.
            let actor = shipgate_store::Actor::engine(&self.config.replica);
            let cancelled = shipgate_store::rollouts::act(
                &self.pool,
                id,
                shipgate_store::rollouts::Action::Cancel,
                &actor,
                Some(&reason),
            )
            .await;
            if let Err(error) = cancelled {
                warn!(rollout.id = %id, %error, "could not cancel the rollout");
            }
            return;
        }
        let fenced = Fenced::begin(&self.pool, Arc::new(loaded), &self.config.replica).await;
        if let Ok(mut fenced) = fenced {
            let failed = match fenced.fail(None, &reason).await {
                Ok(()) => fenced.commit().await.map(|_| ()),
                Err(error) => Err(error),
            };
            if let Err(error) = failed {
                warn!(rollout.id = %id, %error, "could not mark the rollout failed");
            }
        }
    }

    /// Decides and acts until the rollout is waiting; returns when it is next due.
    pub async fn tick(
        &self,
        id: Uuid,
        seen_version: &mut i64,
    ) -> Result<chrono::DateTime<Utc>, EngineError> {
        let mut chain = Chain::default();
        // On an error the open chain is dropped, which rolls it back.
        let wake_at = self.decide_and_act(id, seen_version, &mut chain).await?;
        if let Some(version) = self.close(&mut chain).await? {
            *seen_version = version;
        }
        Ok(wake_at)
    }

    async fn decide_and_act(
        &self,
        id: Uuid,
        seen_version: &mut i64,
        chain: &mut Chain,
    ) -> Result<chrono::DateTime<Utc>, EngineError> {
        for _ in 0..500 {
            let loaded = match (chain.open.as_mut(), chain.committed.take()) {
                (Some(open), _) => open.reload().await?,
                (None, Some(copy)) => {
                    Fenced::check_copy(&self.pool, &copy).await?;
                    copy
                }
                (None, None) => Arc::new(store::load(&self.pool, id).await?),
            };
            *seen_version = loaded.version;
            let now = Utc::now();
            let decision = decide(&loaded.view, now, self.config.timing);
            debug!(rollout.id = %id, ?decision, "decided");
            // Transitions join the chain; anything else may ask the outside world, or read on
            // another connection what the chain wrote, so the chain commits first. Activating
            // and rolling back commit on their own (they may give up part-way). A step whose
            // request needs no query records its intent in the chain, which then commits
            // before the provider is called.
            let joins = match &decision {
                Decision::Transition(transition) => !matches!(
                    transition,
                    Transition::Activate | Transition::RollBack { .. }
                ),
                Decision::Submit { phase, step, .. } => {
                    !Self::request_reads(&loaded.plan.phases[*phase].steps[*step])
                }
                _ => false,
            };
            let mut loaded = loaded;
            if !joins {
                // What is read on from here must carry the version the database now has (the
                // chain's, or the one before it if it wrote nothing and rolled back).
                if let Some(version) = self.close(chain).await? {
                    loaded = store::at_version(loaded, version);
                }
                // `loaded` is that copy; what acting commits leaves its own.
                chain.committed = None;
            }
            match self.act(&loaded, decision, now, chain).await {
                Ok(Some(wake_at)) => return Ok(wake_at),
                Ok(None) => {}
                // Someone changed the rollout between our read and our write (a person's action,
                // a wake-up): read again, as long as the rollout is still ours. Only opening a
                // chain is fenced, so no chain is open here.
                Err(EngineError::Store(StoreError::Fenced))
                    if store::holds_lease(&self.pool, id, &self.config.replica).await? =>
                {
                    chain.committed = None;
                }
                Err(error) => return Err(error),
            }
        }
        // A rollout that needs this many actions in one go is re-queued rather than hogging a worker.
        Ok(Utc::now())
    }

    /// The chain's transaction, opened (fenced on `loaded`) if none is.
    async fn fenced<'c>(
        &self,
        chain: &'c mut Chain,
        loaded: &Arc<Loaded>,
    ) -> Result<&'c mut Fenced, StoreError> {
        if chain.open.is_none() {
            let opened =
                Fenced::begin(&self.pool, Arc::clone(loaded), &self.config.replica).await?;
            chain.open = Some(opened);
        }
        Ok(chain.open.as_mut().expect("opened above"))
    }

    /// Commits what the chain wrote (or drops a chain that wrote nothing but its fence), keeping
    /// its copy of the rollout for the next decision; returns the rollout's version afterwards,
    /// if a chain was open.
    async fn close(&self, chain: &mut Chain) -> Result<Option<i64>, StoreError> {
        let Some(mut open) = chain.open.take() else {
            return Ok(None);
        };
        let copy = open.copy();
        let version = open.finish().await?;
        chain.committed = copy.map(|copy| store::at_version(copy, version));
        Ok(Some(version))
    }

    /// Performs one decision; returns when the rollout is next due if it has nothing to do now.
    async fn act(
        &self,
        loaded: &Arc<Loaded>,
        decision: Decision,
        now: chrono::DateTime<Utc>,
        chain: &mut Chain,
    ) -> Result<Option<chrono::DateTime<Utc>>, EngineError> {
        match decision {
            Decision::SleepUntil(at) => return Ok(Some(at)),
            Decision::Idle => return Ok(Some(now + chrono::Duration::hours(1))),
            Decision::Transition(transition) => {
                let kind = transition_name(&transition);
                let wait = self.transition(loaded, transition, now, chain).await?;
                metrics::counter!("shipgate_transitions_total", "transition" => kind).increment(1);
                if wait.is_some() {
                    return Ok(wait);
                }
            }
            Decision::Submit {
                phase,
                step,
                attempt,
            } => {
                self.submit(loaded, phase, step, attempt, chain).await?;
            }
            Decision::Reconcile { phase, step } => {
                self.reconcile(loaded, phase, step, chain).await?
            }
            Decision::Poll { phase, step } => self.poll(loaded, phase, step, chain).await?,
            Decision::Check { phase, gate } => self.check(loaded, phase, gate, chain).await?,
        }
        Ok(None)
    }

    /// A transaction of its own, fenced on `loaded` (for the writes that commit alone).
    async fn fence(&self, loaded: &Arc<Loaded>) -> Result<Fenced, StoreError> {
        Fenced::begin(&self.pool, Arc::clone(loaded), &self.config.replica).await
    }

    /// Records a transition; returns when to look again if the rollout must wait (queued behind
    /// another, the line stopped, held by a freeze window).
    async fn transition(
        &self,
        loaded: &Arc<Loaded>,
        transition: Transition,
        now: chrono::DateTime<Utc>,
        chain: &mut Chain,
    ) -> Result<Option<chrono::DateTime<Utc>>, EngineError> {
        // Whatever frees a queued rollout or resumes the line wakes it; this is a fallback.
        let later = now + chrono::Duration::hours(1);
        let rollout = loaded.id;
        match transition {
            Transition::Activate => {
                let activated = self
                    .fence(loaded)
                    .await?
                    .activate(loaded.view.approval.is_some())
                    .await?;
                return Ok((!activated).then_some(later));
            }
            Transition::Start => {
                // Held back while the app's line is stopped.
                if !self.fenced(chain, loaded).await?.start().await? {
                    return Ok(Some(later));
                }
            }
            Transition::StartPhase(index) => {
                let phase = &loaded.plan.phases[index].name;
                if let Some(hold) = self.fenced(chain, loaded).await?.start_phase(index).await? {
                    info!(rollout.id = %rollout, %phase, reason = %hold.reason, "held by a freeze window");
                    // Looked at again every minute too, so a window deleted or shortened
                    // lets the rollout go on.
                    let recheck = now + chrono::Duration::minutes(1);
                    return Ok(Some(hold.until.map_or(recheck, |until| until.min(recheck))));
                }
                info!(rollout.id = %rollout, %phase, "phase started");
            }
            Transition::StepTimedOut { phase, step } => {
                let row = &loaded.steps[&(phase, step)];
                self.fenced(chain, loaded)
                    .await?
                    .step_timed_out(phase, step, row.id, self.config.timing.step_timeout)
                    .await?;
            }
            Transition::Verify(index) => self.fenced(chain, loaded).await?.verify(index).await?,
            Transition::PhaseSucceeded(index) => {
                info!(rollout.id = %rollout, phase = %loaded.plan.phases[index].name, "phase succeeded");
                if let Some(seconds) = self
                    .fenced(chain, loaded)
                    .await?
                    .phase_succeeded(index)
                    .await?
                {
                    metrics::histogram!("shipgate_phase_duration_seconds").record(seconds);
                }
            }
            Transition::Pause { reason } => {
                info!(rollout.id = %rollout, %reason, "rollout paused");
                self.fenced(chain, loaded).await?.pause(&reason).await?;
            }
            Transition::Succeed => {
                info!(rollout.id = %rollout, release = %loaded.release.version, "rollout succeeded");
                self.fenced(chain, loaded).await?.succeed().await?;
            }
            Transition::Fail { phase, reason } => {
                info!(rollout.id = %rollout, %reason, "rollout failed");
                self.fenced(chain, loaded)
                    .await?
                    .fail(phase, &reason)
                    .await?;
            }
            Transition::RollBack {
                phase,
                reason,
                detected_at,
            } => {
                info!(rollout.id = %rollout, %reason, "rolling back");
                match self
                    .fence(loaded)
                    .await?
                    .roll_back(phase, &reason, detected_at)
                    .await
                {
                    Ok(rollback) => {
                        metrics::counter!("shipgate_rollbacks_total", "trigger" => "gate")
                            .increment(1);
                        info!(rollout.id = %rollout, rollback.id = %rollback, "rollback started");
                    }
                    Err(StoreError::Refused(why)) | Err(StoreError::Conflict(why)) => {
                        self.fenced(chain, loaded)
                            .await?
                            .fail(
                                Some(phase),
                                &format!("{reason}; could not roll back: {why}"),
                            )
                            .await?;
                    }
                    Err(other) => return Err(other.into()),
                }
            }
        }
        Ok(None)
    }

    async fn credential(
        &self,
        loaded: &Loaded,
        component: &str,
    ) -> Result<Option<String>, EngineError> {
        let Some(name) = loaded
            .targets
            .get(component)
            .and_then(|t| t.credential.as_deref())
        else {
            return Ok(None);
        };
        Ok(Some(
            shipgate_store::apps::credential(&self.pool, &self.secrets, loaded.app_id, name)
                .await?,
        ))
    }

    async fn request(
        &self,
        loaded: &Loaded,
        phase: usize,
        step: usize,
    ) -> Result<Value, EngineError> {
        let spec = &loaded.plan.phases[phase].steps[step];
        let version = loaded.release.version.clone();
        let artifact = |component: &str| {
            loaded
                .release
                .artifact(component)
                .cloned()
                .unwrap_or(Value::Null)
        };
        let request = match spec {
            StepSpec::Deploy { component } => json!(StepRequest::Deploy {
                version,
                artifact: artifact(component)
            }),
            StepSpec::Rollback { component } => {
                let from_ref: Option<String> = match loaded.rollback_of {
                    Some(undone) => sqlx::query_scalar(
                        "select provider_ref from step_runs where rollout_id = $1 and component = $2
                            and kind = 'deploy' and provider_ref is not null order by created_at desc limit 1",
                    )
                    .bind(undone)
                    .bind(component)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(StoreError::from)?,
                    None => None,
                };
                // What last changed this component while it ran the release we return to:
                // platforms that roll back natively go back to exactly that. Where a config
                // change makes a new release or revision (Heroku, Cloud Run), that one counts
                // too, or the rollback would drop flags the good release ran with.
                let config_makes_release = loaded.targets.get(component).is_some_and(|t| {
                    matches!(t.provider, ProviderKind::Heroku | ProviderKind::Cloudrun)
                });
                let kinds: &[&str] = if config_makes_release {
                    &["deploy", "rollback", "config"]
                } else {
                    &["deploy", "rollback"]
                };
                let to_ref: Option<String> = sqlx::query_scalar(
                    "select s.provider_ref from step_runs s join rollouts r on r.id = s.rollout_id
                      where r.environment_id = $1 and r.release_id = $2 and s.component = $3
                        and s.kind = any($5) and s.state = 'succeeded'
                        and s.provider_ref is not null and s.provider_ref not like '%:applied'
                        and r.id <> $4
                      order by s.finished_at desc limit 1",
                )
                .bind(loaded.environment_id)
                .bind(loaded.release.id)
                .bind(component)
                .bind(loaded.id)
                .bind(kinds)
                .fetch_optional(&self.pool)
                .await
                .map_err(StoreError::from)?;
                json!(StepRequest::Rollback {
                    version,
                    artifact: artifact(component),
                    from_ref,
                    to_ref,
                })
            }
            StepSpec::Traffic { percent, .. } => json!(StepRequest::Traffic {
                version,
                percent: *percent
            }),
            StepSpec::Config { component, vars } => {
                // Keep the values being replaced, so a rollback can restore them.
                let keys: Vec<String> = vars.keys().cloned().collect();
                let rows: Vec<(String, Option<String>)> = sqlx::query_as(
                    "select v.key, v.value from config_values v join components c on c.id = v.component_id
                      where v.environment_id = $1 and c.app_id = $2 and c.name = $3 and v.key = any($4)",
                )
                .bind(loaded.environment_id)
                .bind(loaded.app_id)
                .bind(component)
                .bind(&keys)
                .fetch_all(&self.pool)
                .await
                .map_err(StoreError::from)?;
                let known: BTreeMap<String, Option<String>> = rows.into_iter().collect();
                let previous: BTreeMap<&String, Option<String>> = keys
                    .iter()
                    .map(|k| (k, known.get(k).cloned().flatten()))
                    .collect();
                let mut request = json!(StepRequest::Config { vars: vars.clone() });
                request["previous"] = json!(previous);
                request
            }
            StepSpec::Job { command, .. } => json!(StepRequest::Job {
                version,
                command: command.clone()
            }),
            StepSpec::Wait { duration } => json!({ "action": "wait", "duration": duration }),
        };
        Ok(request)
    }

    /// Whether [`Engine::request`] reads the database for this step (what the chain wrote
    /// must be committed first then).
    fn request_reads(spec: &StepSpec) -> bool {
        // Every kind named, so a new one is decided here rather than joining by default.
        match spec {
            StepSpec::Rollback { .. } | StepSpec::Config { .. } => true,
            StepSpec::Deploy { .. }
            | StepSpec::Traffic { .. }
            | StepSpec::Job { .. }
            | StepSpec::Wait { .. } => false,
        }
    }

    fn step_request(value: &Value) -> Option<StepRequest> {
        serde_json::from_value(value.clone()).ok()
    }

    /// Records the intent of a step attempt, then calls the provider.
    async fn submit(
        &self,
        loaded: &Arc<Loaded>,
        phase: usize,
        step: usize,
        attempt: u32,
        chain: &mut Chain,
    ) -> Result<(), EngineError> {
        let request = self.request(loaded, phase, step).await?;
        let (step_id, natural_key) = self
            .fenced(chain, loaded)
            .await?
            .record_intent(phase, step, attempt, &request)
            .await?;
        // Durable before the provider hears of it, with what the chain wrote before it.
        let version = self.close(chain).await?.unwrap_or(loaded.version);
        let after = chain
            .committed
            .take()
            .unwrap_or_else(|| store::at_version(Arc::clone(loaded), version));
        self.call_provider(
            &after,
            phase,
            step,
            step_id,
            &natural_key,
            &request,
            false,
            chain,
        )
        .await
    }

    /// A step has intent but no reference: the worker that recorded it may have crashed before or
    /// after calling the provider. Ask the provider; submit only if it has no such operation.
    async fn reconcile(
        &self,
        loaded: &Arc<Loaded>,
        phase: usize,
        step: usize,
        chain: &mut Chain,
    ) -> Result<(), EngineError> {
        let row = loaded.steps[&(phase, step)].clone();
        info!(rollout.id = %loaded.id, natural_key = %row.natural_key, "reconciling a step with the provider");
        self.call_provider(
            loaded,
            phase,
            step,
            row.id,
            &row.natural_key,
            &row.request,
            true,
            chain,
        )
        .await
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one call site each; a struct would only rename them"
    )]
    async fn call_provider(
        &self,
        loaded: &Arc<Loaded>,
        phase: usize,
        step: usize,
        step_id: Uuid,
        natural_key: &str,
        request: &Value,
        reconciling: bool,
        chain: &mut Chain,
    ) -> Result<(), EngineError> {
        let spec = &loaded.plan.phases[phase].steps[step];
        let Some(component) = spec.component() else {
            // Waits have no provider: the timer starts now.
            self.fenced(chain, loaded)
                .await?
                .step_submitted(step_id, "timer", None)
                .await?;
            return Ok(());
        };
        let Some(target) = loaded.targets.get(component) else {
            self.fenced(chain, loaded)
                .await?
                .step_finished(
                    phase,
                    step,
                    step_id,
                    Err(format!("`{component}` has no target")),
                )
                .await?;
            return Ok(());
        };
        let Some(provider) = self.providers.get(target.provider) else {
            self.fenced(chain, loaded)
                .await?
                .step_finished(
                    phase,
                    step,
                    step_id,
                    Err(format!(
                        "no {} adapter is available in this build",
                        target.provider
                    )),
                )
                .await?;
            return Ok(());
        };
        let Some(step_request) = Self::step_request(request) else {
            return Err(
                StoreError::Corrupt(format!("step request {request} is not readable")).into(),
            );
        };
        let credential = self.credential(loaded, component).await?;
        let context = target_context(loaded, component, target, credential.as_deref());
        let provider_name = target.provider.as_str();
        let started = Instant::now();
        let found = if reconciling {
            provider.find(&context, natural_key).await
        } else {
            Ok(None)
        };
        if reconciling && matches!(found, Ok(None)) {
            let created = loaded.view.phases[phase].steps[step]
                .as_ref()
                .map(|s| s.created_at);
            let expired = created.is_some_and(|created| {
                Utc::now() >= created + self.config.timing.step_timeout.to_chrono()
            });
            if expired {
                let message = format!(
                    "the provider never accepted the operation within {}",
                    self.config.timing.step_timeout
                );
                self.fenced(chain, loaded)
                    .await?
                    .step_finished(phase, step, step_id, Err(message))
                    .await?;
                return Ok(());
            }
        }
        // The last moment to find out we lost the rollout before calling the provider.
        if matches!(found, Ok(None))
            && !store::holds_lease(&self.pool, loaded.id, &self.config.replica).await?
        {
            return Err(StoreError::Fenced.into());
        }
        let result: Result<Submitted, ProviderError> = match found {
            Ok(Some(found)) => {
                info!(rollout.id = %loaded.id, reference = %found.reference, "the provider already has this operation; adopting it");
                Ok(found)
            }
            Ok(None) => provider.submit(&context, &step_request, natural_key).await,
            Err(error) => Err(error),
        };
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!("shipgate_provider_calls_total", "provider" => provider_name, "operation" => "submit", "outcome" => outcome).increment(1);
        metrics::histogram!("shipgate_provider_call_seconds", "provider" => provider_name, "operation" => "submit")
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(submitted) => {
                self.fenced(chain, loaded)
                    .await?
                    .step_submitted(step_id, &submitted.reference, None)
                    .await?;
                self.settle(
                    loaded,
                    phase,
                    step,
                    step_id,
                    request,
                    submitted.status,
                    chain,
                )
                .await?;
                // The provider's answer commits at once (see the module documentation).
                self.close(chain).await?;
                Ok(())
            }
            Err(ProviderError::Permanent(message)) => {
                self.fenced(chain, loaded)
                    .await?
                    .step_finished(phase, step, step_id, Err(message))
                    .await?;
                self.close(chain).await?;
                Ok(())
            }
            Err(ProviderError::RateLimited(wait)) => Err(EngineError::Backoff {
                message: "rate limited".into(),
                wait,
            }),
            Err(ProviderError::Transient(message)) => Err(EngineError::Backoff {
                message,
                wait: Duration::from_secs(5),
            }),
        }
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "two call sites; a struct would only rename them"
    )]
    async fn settle(
        &self,
        loaded: &Arc<Loaded>,
        phase: usize,
        step: usize,
        step_id: Uuid,
        request: &Value,
        status: OperationStatus,
        chain: &mut Chain,
    ) -> Result<(), EngineError> {
        let outcome = match status {
            OperationStatus::Running => return Ok(()),
            OperationStatus::Succeeded(mut result) => {
                if let Some(previous) = request.get("previous") {
                    result["previous"] = previous.clone();
                }
                Ok(result)
            }
            OperationStatus::Failed(message) => Err(message),
        };
        self.fenced(chain, loaded)
            .await?
            .step_finished(phase, step, step_id, outcome)
            .await?;
        Ok(())
    }

    async fn poll(
        &self,
        loaded: &Arc<Loaded>,
        phase: usize,
        step: usize,
        chain: &mut Chain,
    ) -> Result<(), EngineError> {
        let row = loaded.steps[&(phase, step)].clone();
        let spec = &loaded.plan.phases[phase].steps[step];
        let Some(component) = spec.component() else {
            // A wait step is due: it is done.
            self.fenced(chain, loaded)
                .await?
                .step_finished(phase, step, row.id, Ok(json!({ "waited": true })))
                .await?;
            return Ok(());
        };
        let target = &loaded.targets[component];
        let provider = self
            .providers
            .get(target.provider)
            .ok_or_else(|| StoreError::Corrupt(format!("no {} adapter", target.provider)))?;
        let credential = self.credential(loaded, component).await?;
        let context = target_context(loaded, component, target, credential.as_deref());
        let reference = row.provider_ref.clone().unwrap_or_default();
        let started = Instant::now();
        let status = provider.poll(&context, &reference).await;
        metrics::histogram!("shipgate_provider_call_seconds", "provider" => target.provider.as_str(), "operation" => "poll")
            .record(started.elapsed().as_secs_f64());
        match status {
            Ok(OperationStatus::Running) => {
                self.fenced(chain, loaded)
                    .await?
                    .step_polled(row.id)
                    .await?
            }
            Ok(status) => {
                self.settle(loaded, phase, step, row.id, &row.request, status, chain)
                    .await?
            }
            Err(ProviderError::Permanent(message)) => {
                self.fenced(chain, loaded)
                    .await?
                    .step_finished(phase, step, row.id, Err(message))
                    .await?
            }
            Err(ProviderError::RateLimited(wait)) => {
                return Err(EngineError::Backoff {
                    message: "rate limited".into(),
                    wait,
                })
            }
            Err(ProviderError::Transient(message)) => {
                metrics::counter!("shipgate_provider_calls_total", "provider" => target.provider.as_str(), "operation" => "poll", "outcome" => "error").increment(1);
                debug!(rollout.id = %loaded.id, %message, "poll failed; will poll again");
                self.fenced(chain, loaded)
                    .await?
                    .step_polled(row.id)
                    .await?;
            }
        }
        Ok(())
    }

    /// Takes one measurement of a gate and records it.
    async fn check(
        &self,
        loaded: &Arc<Loaded>,
        phase: usize,
        gate: usize,
        chain: &mut Chain,
    ) -> Result<(), EngineError> {
        let spec = &loaded.plan.phases[phase].gates[gate];
        let (verdict, value, detail) = match spec {
            GateSpec::Health(health) => {
                let mut healthy = true;
                let mut parts = Vec::new();
                let mut values = Vec::new();
                for component in &health.components {
                    let Some(target) = loaded.targets.get(component) else {
                        healthy = false;
                        parts.push(format!("{component}: no target"));
                        continue;
                    };
                    if let Some(check) = &target.health {
                        let probe =
                            probes::http_health(&self.http, check, health.timeout.to_std()).await;
                        healthy &= probe.verdict == Verdict::Pass;
                        values.extend(probe.value);
                        parts.push(format!("{component}: {}", probe.summary));
                        continue;
                    }
                    let reading = match self.providers.get(target.provider) {
                        Some(provider) => {
                            let credential = self.credential(loaded, component).await?;
                            let context =
                                target_context(loaded, component, target, credential.as_deref());
                            provider.health(&context).await
                        }
                        None => None,
                    };
                    match reading {
                        Some(Ok(reading)) => {
                            healthy &= reading.healthy;
                            parts.push(format!("{component}: {}", reading.summary));
                        }
                        Some(Err(error)) => {
                            healthy = false;
                            parts.push(format!("{component}: {error}"));
                        }
                        None => {
                            healthy = false;
                            parts.push(format!(
                                "{component}: no health URL and the provider has no health view"
                            ));
                        }
                    }
                }
                let verdict = if healthy {
                    Verdict::Pass
                } else {
                    Verdict::Fail
                };
                (
                    verdict,
                    values.first().copied(),
                    json!({ "summary": parts.join("; ") }),
                )
            }
            GateSpec::Prometheus(metric) => self.measure(metric).await,
            GateSpec::Webhook(webhook) => {
                let payload = json!({
                    "rollout": loaded.id, "app": loaded.app, "environment": loaded.environment,
                    "release": loaded.release.version, "phase": loaded.plan.phases[phase].name,
                });
                let probe = probes::confirm_webhook(
                    &self.http,
                    &webhook.url,
                    &payload,
                    webhook.timeout.to_std(),
                )
                .await;
                (
                    probe.verdict,
                    probe.value,
                    json!({ "summary": probe.summary }),
                )
            }
            // Soaks and approvals are decided from time and people, never measured.
            GateSpec::Soak { .. } | GateSpec::Approval { .. } => {
                return Err(
                    StoreError::Corrupt(format!("{} gates are not measured", spec.kind())).into(),
                )
            }
        };
        metrics::counter!("shipgate_gate_checks_total", "kind" => spec.kind(), "verdict" => verdict.as_str()).increment(1);
        self.fenced(chain, loaded)
            .await?
            .record_check(phase, gate, verdict, value, detail)
            .await?;
        Ok(())
    }

    /// One round of a metric gate: the samples behind the value first (when a minimum is set),
    /// then the value against the conditions.
    async fn measure(&self, metric: &PrometheusGate) -> (Verdict, Option<f64>, Value) {
        const TIMEOUT: Duration = Duration::from_secs(10);
        let error = |message: String| {
            (
                Verdict::Inconclusive,
                None,
                json!({ "summary": message, "reading": Reading::Error.as_str() }),
            )
        };
        let mut samples = None;
        if let (Some(query), Some(min)) = (&metric.samples_query, metric.min_samples) {
            let found =
                match probes::prometheus_value(&self.http, &metric.url, query, TIMEOUT).await {
                    Ok(found) => found.unwrap_or(0.0),
                    Err(message) => return error(message),
                };
            if found < min {
                return (
                    Verdict::Inconclusive,
                    None,
                    json!({
                        "summary": format!("{found} samples, {min} needed"),
                        "reading": Reading::TooFewSamples.as_str(),
                        "samples": found,
                    }),
                );
            }
            samples = Some(found);
        }
        match probes::prometheus_value(&self.http, &metric.url, &metric.query, TIMEOUT).await {
            Ok(Some(value)) => {
                let verdict = if metric.accepts(value) {
                    Verdict::Pass
                } else {
                    Verdict::Fail
                };
                let mut summary = format!("value {value} (needs {})", metric.condition());
                if let Some(samples) = samples {
                    summary.push_str(&format!(" from {samples} samples"));
                }
                (
                    verdict,
                    Some(value),
                    json!({ "summary": summary, "samples": samples }),
                )
            }
            Ok(None) => {
                let verdict = match metric.no_data {
                    NoData::Inconclusive => Verdict::Inconclusive,
                    NoData::Fail => Verdict::Fail,
                };
                (
                    verdict,
                    None,
                    json!({
                        "summary": "no data (empty result or NaN)",
                        "reading": Reading::NoData.as_str(),
                    }),
                )
            }
            Err(message) => error(message),
        }
    }
}

/// Wakes `wake` on every NOTIFY on `channel`, and once each time the LISTEN is (re)registered
/// (anything sent while it was not is found by the next look), reconnecting as needed.
pub(crate) async fn wake_on(pool: PgPool, channel: &'static str, wake: Arc<Notify>) {
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(error) => {
                warn!(%error, channel, "cannot listen; polling meanwhile");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        if let Err(error) = listener.listen(channel).await {
            warn!(%error, channel, "LISTEN failed; retrying");
            tokio::time::sleep(Duration::from_secs(2)).await;
            continue;
        }
        wake.notify_one();
        loop {
            match listener.recv().await {
                Ok(_) => wake.notify_one(),
                Err(error) => {
                    warn!(%error, channel, "lost the LISTEN connection; reconnecting");
                    break;
                }
            }
        }
    }
}

/// Where a step or probe acts.
fn target_context<'a>(
    loaded: &'a Loaded,
    component: &'a str,
    target: &'a shipgate_domain::config::TargetSpec,
    credential: Option<&'a str>,
) -> TargetContext<'a> {
    TargetContext {
        app: &loaded.app,
        environment: &loaded.environment,
        component,
        target,
        credential,
    }
}

fn transition_name(transition: &Transition) -> &'static str {
    match transition {
        Transition::Activate => "activate",
        Transition::Start => "start",
        Transition::StartPhase(_) => "start_phase",
        Transition::StepTimedOut { .. } => "step_timed_out",
        Transition::Verify(_) => "verify",
        Transition::PhaseSucceeded(_) => "phase_succeeded",
        Transition::RollBack { .. } => "roll_back",
        Transition::Pause { .. } => "pause",
        Transition::Succeed => "succeed",
        Transition::Fail { .. } => "fail",
    }
}
