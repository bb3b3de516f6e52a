//! Automatic promotion: an environment whose promotion rule says `auto: true` receives, once
//! per release, the newest release that succeeded in the rule's `from` environment and soaked
//! there, as a rollout with the trigger `auto-promotion` (automation, as freeze windows see it).
//!
//! Safe with many replicas: each environment is promoted into under its lock, the check that
//! the release was never rolled out there runs under that lock, and a unique index
//! (`rollouts_one_auto_promotion`) backs it.

use sqlx::{PgPool, Row};
use tracing::{debug, info};
use uuid::Uuid;

use shipgate_domain::state::RolloutKind;

use crate::apps::{self, Environment};
use crate::events::Actor;
use crate::releases;
use crate::rollouts::{self, lock_for_start, NewRollout};
use crate::StoreError;

/// The trigger of the rollouts this module starts.
pub const TRIGGER: &str = "auto-promotion";

/// Starts the promotions that are due in every environment with an automatic promotion rule;
/// returns the rollouts started. A promotion refused for now (a freeze window, a stopped line)
/// is tried again on a later call.
pub async fn promote_due(pool: &PgPool, actor: &Actor) -> Result<Vec<Uuid>, StoreError> {
    let rows = sqlx::query(
        "select a.name as app, e.name as environment from environments e join apps a on a.id = e.app_id
          where e.retired_at is null and (e.policy -> 'promotion' ->> 'auto')::boolean
          order by a.name, e.position",
    )
    .fetch_all(pool)
    .await?;
    let mut started = Vec::new();
    for row in rows {
        let environment =
            apps::environment(pool, row.get("app"), row.get::<&str, _>("environment")).await?;
        if let Some(id) = promote_into(pool, &environment, actor).await? {
            started.push(id);
        }
    }
    Ok(started)
}

/// Promotes the due release into one environment, if there is one.
async fn promote_into(
    pool: &PgPool,
    environment: &Environment,
    actor: &Actor,
) -> Result<Option<Uuid>, StoreError> {
    let Some(rule) = environment
        .policy
        .promotion
        .as_ref()
        .filter(|rule| rule.auto)
    else {
        return Ok(None);
    };
    let from = match apps::environment(pool, &environment.app, &rule.from).await {
        Ok(from) => from,
        // The rule names an environment that is gone: nothing to promote from.
        Err(StoreError::NotFound(_)) => return Ok(None),
        Err(other) => return Err(other),
    };
    let mut tx = pool.begin().await?;
    lock_for_start(&mut tx, environment).await?;
    // The newest release that soaked in `from`, never rolled out here before (once per
    // release), and not older than what runs or waits to run here.
    let due: Option<Uuid> = sqlx::query_scalar(
        "select rel.id
           from rollouts r join releases rel on rel.id = r.release_id
          where r.environment_id = $1 and r.state = 'succeeded' and rel.quarantined_at is null
            and r.finished_at <= now() - make_interval(secs => $3)
            and not exists (select 1 from rollouts t where t.environment_id = $2 and t.release_id = rel.id)
            and not exists (
                select 1 from rollouts t join releases newer on newer.id = t.release_id
                 where t.environment_id = $2
                   and (newer.created_at, newer.id) > (rel.created_at, rel.id)
                   and (t.state in ('queued', 'pending_approval', 'in_progress', 'paused', 'rolling_back')
                        or t.id = (select id from rollouts where environment_id = $2 and state = 'succeeded'
                                    order by finished_at desc, id desc limit 1)))
          order by rel.created_at desc, rel.id desc
          limit 1",
    )
    .bind(from.id)
    .bind(environment.id)
    .bind(rule.soak.to_std().as_secs_f64())
    .fetch_optional(&mut *tx)
    .await?;
    let Some(release_id) = due else {
        return Ok(None);
    };
    let release = releases::by_id(&mut *tx, release_id).await?;
    let started = rollouts::start_in(
        &mut tx,
        NewRollout {
            environment,
            release: &release,
            kind: RolloutKind::Promote,
            actor,
            trigger: TRIGGER,
            override_freeze: None,
        },
    )
    .await;
    match started {
        Ok(id) => {
            tx.commit().await?;
            info!(app = %environment.app, environment = %environment.name,
                  release = %release.version, rollout.id = %id, "release promoted automatically");
            Ok(Some(id))
        }
        Err(StoreError::Refused(why)) => {
            debug!(app = %environment.app, environment = %environment.name,
                   release = %release.version, %why, "automatic promotion held back");
            Ok(None)
        }
        // Another replica promoted it between our check and our insert.
        Err(StoreError::Database(error))
            if StoreError::is_unique_violation(&error, "rollouts_one_auto_promotion") =>
        {
            Ok(None)
        }
        Err(other) => Err(other),
    }
}
