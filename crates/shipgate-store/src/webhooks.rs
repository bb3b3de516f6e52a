//! Webhook deliveries from Git hosts and CI: finding the app a delivery is for, its secret, and
//! [`ingest`], which records the delivery (unique on source and delivery id), creates or finds
//! its release and enqueues the rollouts its environments' auto-deploy rules admit, all in one
//! transaction. Nothing here calls a provider: the engine picks the rollouts up on NOTIFY.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgExecutor, PgPool, Row};
use uuid::Uuid;

use shipgate_domain::config::{AppSpec, PushedRef};
use shipgate_domain::state::RolloutKind;

use crate::apps::{self, Environment};
use crate::crypto::SecretBox;
use crate::events::Actor;
use crate::releases::{self, Created, NewRelease, Release};
use crate::rollouts::{self, NewRollout};
use crate::{StoreError, UPDATES_CHANNEL, WAKE_CHANNEL};

/// What became of a delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// A release was made (or found) and at least one rollout enqueued.
    Deployed,
    /// A release was made; no environment deploys it (a tag push, no matching rule).
    Accepted,
    /// Nothing to do (a ping, a deletion, an unhandled event, a release already live).
    Ignored,
    /// Policy kept it from deploying (auto-deploy paused, quarantined release, bad content).
    Refused,
}

impl Verdict {
    /// As stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Deployed => "deployed",
            Verdict::Accepted => "accepted",
            Verdict::Ignored => "ignored",
            Verdict::Refused => "refused",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// An app a delivery may be for, with its webhook secret when one is configured.
#[derive(Clone)]
pub struct HookApp {
    /// Id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// The decrypted webhook secret (`webhook_secret` in the app config).
    pub secret: Option<String>,
    /// The app's applied config, as stored (read with the secret, so a delivery costs no
    /// second lookup; parsed by [`HookApp::spec`] once the sender is proven).
    pub config: serde_json::Value,
}

impl HookApp {
    /// The app's config.
    pub fn spec(&self) -> Result<AppSpec, StoreError> {
        Ok(AppSpec::deserialize(&self.config)?)
    }
}

impl fmt::Debug for HookApp {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("HookApp")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("secret", &self.secret.as_ref().map(|_| "***"))
            .finish()
    }
}

fn hook_app(secrets: &SecretBox, row: &sqlx::postgres::PgRow) -> Result<HookApp, StoreError> {
    let sealed: Option<Vec<u8>> = row.get("webhook_secret_ciphertext");
    let key_id: Option<String> = row.get("webhook_secret_key_id");
    let secret = match sealed {
        Some(sealed) => Some(secrets.open(key_id.as_deref().unwrap_or(secrets.key_id()), &sealed)?),
        None => None,
    };
    Ok(HookApp {
        id: row.get("id"),
        name: row.get("name"),
        secret,
        config: row.get("config"),
    })
}

/// The app named `name`, with its webhook secret.
pub async fn app_by_name(
    executor: impl PgExecutor<'_>,
    secrets: &SecretBox,
    name: &str,
) -> Result<HookApp, StoreError> {
    let row = sqlx::query(
        "select id, name, config, webhook_secret_ciphertext, webhook_secret_key_id from apps where name = $1",
    )
    .bind(name)
    .fetch_optional(executor)
    .await?
    .ok_or_else(|| StoreError::NotFound(format!("app `{name}`")))?;
    hook_app(secrets, &row)
}

/// The apps whose `repository` is `repository` (`owner/name`, compared without case: Git
/// hosts treat it so).
pub async fn apps_by_repository(
    executor: impl PgExecutor<'_>,
    secrets: &SecretBox,
    repository: &str,
) -> Result<Vec<HookApp>, StoreError> {
    let rows = sqlx::query(
        "select id, name, config, webhook_secret_ciphertext, webhook_secret_key_id from apps
          where lower(repository) = lower($1) order by name",
    )
    .bind(repository)
    .fetch_all(executor)
    .await?;
    rows.iter().map(|row| hook_app(secrets, row)).collect()
}

/// The delivery being ingested.
#[derive(Clone, Debug)]
pub struct NewDelivery<'a> {
    /// `github`, `gitlab` or `generic`.
    pub source: &'a str,
    /// The sender's delivery id (the de-duplication key with `source`).
    pub delivery_id: &'a str,
    /// The app it is for.
    pub app_id: Uuid,
    /// The app's name.
    pub app: &'a str,
    /// The sender's event name (`push`, `Tag Push Hook`, `release`).
    pub event: &'a str,
    /// SHA-256 of the raw body, hex.
    pub payload_digest: &'a str,
}

/// How a delivery's ref reads for auto-deploy rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushedRefOwned {
    /// A branch name.
    Branch(String),
    /// A tag name.
    Tag(String),
    /// No ref (a generic delivery without `git_ref`): a release only.
    None,
}

/// A release to make (or find) and deploy where the rules admit it.
#[derive(Clone, Debug)]
pub struct Push {
    /// Version labels to try in order: a version taken by another commit moves on to the next
    /// (short sha, longer sha, full sha). The release's own `version` is ignored.
    pub versions: Vec<String>,
    /// The release.
    pub release: NewRelease,
    /// Whether a release of the same commit under a tried version counts as this one (Git
    /// pushes: the same commit pushed to another branch); otherwise the content must match.
    pub same_commit_is_same_release: bool,
    /// The pushed ref.
    pub pushed: PushedRefOwned,
    /// Every file the push changed, when the payload lists them all.
    pub changed_paths: Option<Vec<String>>,
    /// The repository's default branch: pushes to it make a release even when no
    /// environment auto-deploys it.
    pub default_branch: Option<String>,
    /// Make the release whatever the ref (tags, CI announcements); otherwise a branch push
    /// makes one only for the default branch or a branch some environment auto-deploys.
    pub always_release: bool,
}

/// What to do with a verified delivery.
#[derive(Clone, Debug)]
pub enum Work {
    /// Record it only (a ping, a deletion, an unhandled event, invalid content).
    Record {
        /// The verdict.
        verdict: Verdict,
        /// Why.
        reason: String,
    },
    /// Make a release and deploy it.
    Push(Box<Push>),
}

/// What ingesting a delivery did.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Outcome {
    /// The delivery's row id.
    pub id: Uuid,
    /// The delivery had been received before: nothing new was done, and the rest is what the
    /// first one did.
    pub duplicate: bool,
    /// The verdict.
    pub verdict: String,
    /// Why, per environment.
    pub reason: Option<String>,
    /// The release made or found.
    pub release: Option<String>,
    /// The rollouts enqueued.
    pub rollouts: Vec<Uuid>,
}

/// Records a verified delivery and does its work in one transaction. A delivery seen before
/// (same source and delivery id) changes nothing and answers what the first one did: its
/// work is rolled back when recording it conflicts (a concurrent duplicate waits there for
/// the first to commit).
pub async fn ingest(
    pool: &PgPool,
    delivery: &NewDelivery<'_>,
    work: &Work,
) -> Result<Outcome, StoreError> {
    // A push locks the environment, then the queued rollouts it supersedes; the engine locks a
    // rollout, then (activating it) rows of its environment. When the two cross, Postgres
    // aborts one; the delivery's transaction is then retried whole (nothing of it committed).
    let mut attempt = 1;
    loop {
        match ingest_once(pool, delivery, work).await {
            Err(error) if error.is_deadlock() && attempt < 5 => attempt += 1,
            other => return other,
        }
    }
}

async fn ingest_once(
    pool: &PgPool,
    delivery: &NewDelivery<'_>,
    work: &Work,
) -> Result<Outcome, StoreError> {
    let mut tx = pool.begin().await?;
    let actor = Actor {
        kind: "webhook",
        name: format!("{}:{}", delivery.source, delivery.delivery_id),
    };
    let done = match work {
        Work::Record { verdict, reason } => Done {
            verdict: *verdict,
            notes: vec![reason.clone()],
            release: None,
            rollouts: Vec::new(),
        },
        Work::Push(push) => deploy_push(&mut tx, delivery, push, &actor).await?,
    };
    let reason = (!done.notes.is_empty()).then(|| done.notes.join("; "));
    // The delivery is recorded last, with what it did, in one write. A delivery id seen
    // before conflicts here (a concurrent duplicate, having done its work, waits here for the
    // first to commit): its work is rolled back whole, NOTIFYs included, and it answers what
    // the first one did.
    let id = Uuid::now_v7();
    let recorded: Option<Uuid> = sqlx::query_scalar(
        "insert into webhook_deliveries (id, source, delivery_id, app_id, event, verdict, reason,
                                         payload_digest, release_id, rollout_id)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         on conflict (source, delivery_id) do nothing returning id",
    )
    .bind(id)
    .bind(delivery.source)
    .bind(delivery.delivery_id)
    .bind(delivery.app_id)
    .bind(delivery.event)
    .bind(done.verdict.as_str())
    .bind(&reason)
    .bind(delivery.payload_digest)
    .bind(done.release.as_ref().map(|r| r.id))
    .bind(done.rollouts.first())
    .fetch_optional(&mut *tx)
    .await?;
    if recorded.is_none() {
        tx.rollback().await?;
        return earlier(pool, delivery.source, delivery.delivery_id).await;
    }
    tx.commit().await?;
    Ok(Outcome {
        id,
        duplicate: false,
        verdict: done.verdict.as_str().to_owned(),
        reason,
        release: done.release.map(|r| r.version),
        rollouts: done.rollouts,
    })
}

async fn earlier(pool: &PgPool, source: &str, delivery_id: &str) -> Result<Outcome, StoreError> {
    let row = sqlx::query(
        "select d.id, d.verdict, d.reason, r.version, d.rollout_id
           from webhook_deliveries d left join releases r on r.id = d.release_id
          where d.source = $1 and d.delivery_id = $2",
    )
    .bind(source)
    .bind(delivery_id)
    .fetch_one(pool)
    .await?;
    Ok(Outcome {
        id: row.get("id"),
        duplicate: true,
        verdict: row.get("verdict"),
        reason: row.get("reason"),
        release: row.get("version"),
        rollouts: row
            .get::<Option<Uuid>, _>("rollout_id")
            .into_iter()
            .collect(),
    })
}

struct Done {
    verdict: Verdict,
    notes: Vec<String>,
    release: Option<Release>,
    rollouts: Vec<Uuid>,
}

impl Done {
    fn only(verdict: Verdict, note: String) -> Self {
        Done {
            verdict,
            notes: vec![note],
            release: None,
            rollouts: Vec::new(),
        }
    }
}

async fn deploy_push(
    tx: &mut PgConnection,
    delivery: &NewDelivery<'_>,
    push: &Push,
    actor: &Actor,
) -> Result<Done, StoreError> {
    let environments = apps::environments(&mut *tx, delivery.app_id).await?;
    let pushed = match &push.pushed {
        PushedRefOwned::Branch(name) => Some(PushedRef::Branch(name)),
        PushedRefOwned::Tag(name) => Some(PushedRef::Tag(name)),
        PushedRefOwned::None => None,
    };
    // A branch push makes a release only when some environment deploys that branch or it is
    // the default branch: pushes to feature branches are not releases.
    if let (Some(PushedRef::Branch(branch)), false) = (pushed, push.always_release) {
        let wanted =
            environments.iter().any(|environment| {
                environment.policy.auto_deploy.as_ref().is_some_and(|rule| {
                    shipgate_domain::pattern::glob_matches(&rule.branch, branch)
                })
            });
        let default = push.default_branch.as_deref() == Some(branch);
        if !wanted && !default {
            return Ok(Done::only(
                Verdict::Ignored,
                format!(
                    "no environment auto-deploys branch `{branch}` and it is not the default branch: no release made"
                ),
            ));
        }
    }

    let release = match find_or_create(tx, delivery, push, actor).await? {
        Ok(release) => release,
        Err(reason) => return Ok(Done::only(Verdict::Refused, reason)),
    };
    let (release, created) = release;
    let mut done = Done {
        verdict: if created == Created::New {
            Verdict::Accepted
        } else {
            Verdict::Ignored
        },
        notes: Vec::new(),
        release: None,
        rollouts: Vec::new(),
    };
    match created {
        Created::New => done
            .notes
            .push(format!("release {} created", release.version)),
        Created::Existing => done
            .notes
            .push(format!("release {} already existed", release.version)),
    }
    let Some(pushed) = pushed else {
        done.notes
            .push("no git_ref given, so no environment auto-deploys it".into());
        done.release = Some(release);
        return Ok(done);
    };
    let mut refused = false;
    let mut any_rule = false;
    for environment in &environments {
        let Some(rule) = &environment.policy.auto_deploy else {
            continue;
        };
        any_rule = true;
        let name = &environment.name;
        if let Err(why) = rule.admits(pushed, push.changed_paths.as_deref()) {
            done.notes.push(format!("{name}: {why}"));
            continue;
        }
        if let Some(since) = environment.auto_deploy_paused_at {
            refused = true;
            done.notes.push(format!(
                "{name}: auto-deploy is paused since {} ({}); resume it to deploy pushes again",
                since.format("%Y-%m-%d %H:%M:%S UTC"),
                environment
                    .auto_deploy_paused_reason
                    .as_deref()
                    .unwrap_or("no reason recorded")
            ));
            continue;
        }
        if let Some(reason) = &release.quarantine_reason {
            refused = true;
            done.notes.push(format!(
                "{name}: release {} is quarantined ({reason})",
                release.version
            ));
            continue;
        }
        // One push at a time per environment from here on: what is newer, what is queued and
        // the new rollout are decided under the lock, so concurrent pushes cannot each leave
        // a queued rollout behind.
        rollouts::lock_for_start(tx, environment).await?;
        if let Some(why) = newer_in(tx, environment, &release).await? {
            done.notes.push(format!("{name}: {why}"));
            continue;
        }
        let new = NewRollout {
            environment,
            release: &release,
            kind: RolloutKind::Deploy,
            actor,
            trigger: "webhook",
            override_freeze: None,
        };
        // Admission writes nothing, so a refusal leaves the transaction as it was.
        let admitted = match rollouts::admit(tx, &new).await {
            Ok(admitted) => admitted,
            Err(StoreError::Refused(why) | StoreError::Conflict(why)) => {
                refused = true;
                done.notes.push(format!("{name}: {why}"));
                continue;
            }
            Err(other) => return Err(other),
        };
        let superseded = supersede_queued(tx, environment).await?;
        let rollout = rollouts::insert_admitted(tx, &new, admitted).await?;
        record_superseded(tx, environment, &superseded, rollout, actor).await?;
        done.notes
            .push(format!("{name}: rollout {rollout} enqueued"));
        done.rollouts.push(rollout);
    }
    if !any_rule {
        done.notes
            .push("no environment has an auto_deploy rule".into());
    }
    if !done.rollouts.is_empty() {
        done.verdict = Verdict::Deployed;
    } else if refused {
        done.verdict = Verdict::Refused;
    }
    done.release = Some(release);
    Ok(done)
}

/// Finds the release of this push or makes it; `Ok(Err(reason))` when no version fits.
async fn find_or_create(
    tx: &mut PgConnection,
    delivery: &NewDelivery<'_>,
    push: &Push,
    actor: &Actor,
) -> Result<Result<(Release, Created), String>, StoreError> {
    let mut last = String::from("no version to give the release");
    for version in &push.versions {
        let release = NewRelease {
            version: version.clone(),
            ..push.release.clone()
        };
        if push.same_commit_is_same_release {
            // The insert comes first: a new commit (the usual push) costs one statement, and
            // a concurrent delivery of the same version waits for it and then finds it.
            if let Some(created) =
                releases::insert_new(tx, delivery.app_id, &release, actor, "webhook").await?
            {
                return Ok(Ok((created, Created::New)));
            }
            let existing = releases::by_version(&mut *tx, delivery.app_id, version).await?;
            if existing.git_sha.is_some() && existing.git_sha == release.git_sha {
                return Ok(Ok((existing, Created::Existing)));
            }
            last = format!(
                "version {version} is taken by another commit ({})",
                existing.git_sha.as_deref().unwrap_or("none")
            );
            continue;
        }
        match releases::create_in(tx, delivery.app_id, &release, actor, "webhook").await {
            Ok(found) => return Ok(Ok(found)),
            Err(StoreError::Conflict(message)) => last = message,
            Err(other) => return Err(other),
        }
    }
    Ok(Err(last))
}

/// Why `release` must not be deployed over what the environment runs or has on its way: the
/// same commit is already there, or something newer is. Automation never deploys an older
/// release over a newer one. Newer means a later commit time when both releases have one,
/// else a later creation.
async fn newer_in(
    tx: &mut PgConnection,
    environment: &Environment,
    release: &Release,
) -> Result<Option<String>, StoreError> {
    let rows = sqlx::query(&format!(
        "select r.id, r.version, r.git_sha, r.committed_at, r.created_at, 'live' as state
           from releases r where r.id = {current}
         union all
         select r.id, r.version, r.git_sha, r.committed_at, r.created_at, o.state::text
           from rollouts o join releases r on r.id = o.release_id
          where o.environment_id = $1 and o.kind <> 'rollback'
            and o.state in ('queued', 'pending_approval', 'in_progress', 'paused')",
        current = rollouts::current_release("$1"),
    ))
    .bind(environment.id)
    .fetch_all(&mut *tx)
    .await?;
    for row in rows {
        let id: Uuid = row.get("id");
        let version: String = row.get("version");
        let git_sha: Option<String> = row.get("git_sha");
        let state: String = row.get("state");
        let there = if state == "live" {
            format!("runs release {version}")
        } else {
            format!("has release {version} {state}")
        };
        if id == release.id || (git_sha.is_some() && git_sha == release.git_sha) {
            return Ok(Some(format!("already {there} of this commit")));
        }
        let committed: Option<DateTime<Utc>> = row.get("committed_at");
        let created: DateTime<Utc> = row.get("created_at");
        let newer = match (committed, release.committed_at) {
            (Some(theirs), Some(ours)) => theirs > ours,
            _ => created > release.created_at,
        };
        if newer {
            return Ok(Some(format!(
                "{there}, newer than {}; automation never deploys an older release over a newer one",
                release.version
            )));
        }
    }
    Ok(None)
}

/// A push replaces the older automated rollouts still waiting in the environment's queue
/// (rollbacks, and rollouts people started, keep their place). Runs under the environment's
/// lock, after admission and before the new rollout is inserted.
async fn supersede_queued(
    tx: &mut PgConnection,
    environment: &Environment,
) -> Result<Vec<Uuid>, StoreError> {
    Ok(sqlx::query_scalar(
        "update rollouts set state = 'superseded', state_reason = 'a newer push replaced it',
                finished_at = now(), updated_at = now(), version = version + 1
          where environment_id = $1 and state = 'queued' and kind <> 'rollback'
            and trigger = 'webhook'
          returning id",
    )
    .bind(environment.id)
    .fetch_all(&mut *tx)
    .await?)
}

/// Records which rollouts `by` superseded and wakes the engine and the live views for all of
/// them, in one statement.
async fn record_superseded(
    tx: &mut PgConnection,
    environment: &Environment,
    superseded: &[Uuid],
    by: Uuid,
    actor: &Actor,
) -> Result<(), StoreError> {
    let woken: Vec<Uuid> = superseded.iter().copied().chain([by]).collect();
    sqlx::query(
        "with recorded as (
             insert into events (app_id, environment_id, rollout_id, actor_kind, actor, action, details)
             select $1, $2, s.old, $3, $4, 'rollout.superseded', jsonb_build_object('by', $5::uuid)
               from unnest($6::uuid[]) with ordinality as s(old, n)
              order by s.n)
         select pg_notify($7, w.id::text), pg_notify($8, w.id::text)
           from unnest($9::uuid[]) as w(id)",
    )
    .bind(environment.app_id)
    .bind(environment.id)
    .bind(actor.kind)
    .bind(&actor.name)
    .bind(by)
    .bind(superseded)
    .bind(WAKE_CHANNEL)
    .bind(UPDATES_CHANNEL)
    .bind(&woken)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// A delivery as listed.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Delivery {
    /// Row id (the list's cursor).
    pub id: Uuid,
    /// When it arrived.
    pub received_at: DateTime<Utc>,
    /// `github`, `gitlab`, `generic`.
    pub source: String,
    /// The sender's event name.
    pub event: String,
    /// The sender's delivery id.
    pub delivery_id: String,
    /// `deployed`, `accepted`, `ignored`, `refused`.
    pub verdict: String,
    /// Why.
    pub reason: Option<String>,
    /// The release made or found.
    pub release: Option<String>,
    /// The (first) rollout enqueued.
    pub rollout_id: Option<Uuid>,
    /// SHA-256 of the body.
    pub payload_digest: String,
}

/// An app's deliveries, newest first; `before` is the id of the last one of the previous page.
pub async fn list(
    pool: &PgPool,
    app_id: Uuid,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Delivery>, StoreError> {
    let rows = sqlx::query(
        "select d.id, d.received_at, d.source, d.event, d.delivery_id, d.verdict, d.reason,
                r.version, d.rollout_id, d.payload_digest
           from webhook_deliveries d left join releases r on r.id = d.release_id
          where d.app_id = $1 and ($2::uuid is null or d.id < $2)
          order by d.id desc limit $3",
    )
    .bind(app_id)
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| Delivery {
            id: row.get("id"),
            received_at: row.get("received_at"),
            source: row.get("source"),
            event: row.get("event"),
            delivery_id: row.get("delivery_id"),
            verdict: row.get("verdict"),
            reason: row.get("reason"),
            release: row.get("version"),
            rollout_id: row.get("rollout_id"),
            payload_digest: row.get("payload_digest"),
        })
        .collect())
}
