//! The environment policies every rollout start obeys, whoever asks (API, CLI, webhooks, the
//! dashboard, the engine): the promotion rule and freeze windows. [`crate::rollouts`] checks
//! them under the environment's lock, so what is checked is what holds when the rollout is
//! recorded.

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::apps::{self, Environment};
use crate::events::{self, Actor, Scope};
use crate::freezes::{self, FreezeWindow};
use crate::releases::Release;
use crate::StoreError;

/// Who started a rollout, as freeze windows tell them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Initiator {
    /// A person, directly or through CI (`api`, `manual`, `cli`, `dashboard`, `demo`).
    Person,
    /// Shipgate acting on its own rules (`webhook`, `auto-promotion`, `gate`, `deadline`).
    Automation,
}

impl Initiator {
    /// The initiator a rollout's `trigger` stands for.
    pub fn of_trigger(trigger: &str) -> Self {
        match trigger {
            "webhook" | "auto-promotion" | "gate" | "deadline" => Initiator::Automation,
            _ => Initiator::Person,
        }
    }

    fn blocked_by(self, window: &FreezeWindow) -> bool {
        match self {
            Initiator::Person => window.blocks_manual,
            Initiator::Automation => window.blocks_automation,
        }
    }
}

/// What is starting, as a freeze window sees it.
#[derive(Clone, Copy, Debug)]
pub struct Start<'a> {
    /// The environment's name.
    pub environment: &'a str,
    /// Who started it.
    pub initiator: Initiator,
    /// A rollback (which windows that allow rollbacks let through).
    pub rollback: bool,
}

impl FreezeWindow {
    /// When the window is on at `now`, the end of that occurrence. A window that cannot be read
    /// (a weekly window with a bad schedule or time zone) is on, forever: a freeze is never
    /// dropped silently; fix or delete it.
    pub fn on_until(&self, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, String> {
        Ok(self.schedule()?.on_until(now))
    }

    /// Why this window stops `start` at `now`, or `None` when it does not.
    pub fn blocks(&self, start: Start<'_>, now: DateTime<Utc>) -> Option<String> {
        let covers = self
            .environment
            .as_deref()
            .is_none_or(|name| name == start.environment);
        if !covers || (start.rollback && self.allows_rollback) || !start.initiator.blocked_by(self)
        {
            return None;
        }
        let until = match self.on_until(now) {
            Ok(None) => return None,
            Ok(Some(end)) => format!(" until {}", end.format("%Y-%m-%d %H:%M UTC")),
            Err(why) => format!(" (its schedule cannot be read: {why})"),
        };
        let what = match (start.rollback, start.initiator) {
            (true, _) => "rollbacks",
            (false, Initiator::Person) => "rollouts started by people",
            (false, Initiator::Automation) => "automatic rollouts",
        };
        let reason = self
            .reason
            .as_deref()
            .map(|reason| format!(" ({reason})"))
            .unwrap_or_default();
        Some(format!(
            "{} is frozen by the freeze window “{}”{reason}{until}, which blocks {what}",
            start.environment, self.name
        ))
    }
}

/// An admin's decision to start a rollout despite the freeze windows that block it.
#[derive(Clone, Copy, Debug)]
pub struct FreezeOverride<'a> {
    /// Why, for the audit log (not blank).
    pub reason: &'a str,
}

/// Refuses a start that a freeze window blocks now, naming the window; with an override, lets
/// it through. Returns the names of the windows overridden, for [`record_override`] to audit
/// once the rollout exists.
pub async fn check_freezes(
    tx: &mut PgConnection,
    environment: &Environment,
    start: Start<'_>,
    override_freeze: Option<FreezeOverride<'_>>,
) -> Result<Vec<String>, StoreError> {
    let now = database_now(tx).await?;
    check_freezes_at(tx, environment, start, override_freeze, now).await
}

/// [`check_freezes`] at `now`, the transaction's time, which the caller read along with other
/// things.
pub(crate) async fn check_freezes_at(
    tx: &mut PgConnection,
    environment: &Environment,
    start: Start<'_>,
    override_freeze: Option<FreezeOverride<'_>>,
    now: DateTime<Utc>,
) -> Result<Vec<String>, StoreError> {
    let windows = windows_covering(tx, environment.app_id, environment.id).await?;
    let blocking: Vec<(&FreezeWindow, String)> = windows
        .iter()
        .filter_map(|window| window.blocks(start, now).map(|why| (window, why)))
        .collect();
    if blocking.is_empty() {
        return Ok(Vec::new());
    }
    match override_freeze {
        Some(_) => Ok(blocking
            .into_iter()
            .map(|(window, _)| window.name.clone())
            .collect()),
        None => {
            let reasons: Vec<String> = blocking.into_iter().map(|(_, why)| why).collect();
            Err(StoreError::Refused(format!(
                "{}; wait for it to end, or have an admin override the freeze with a reason",
                reasons.join("; ")
            )))
        }
    }
}

/// Audits a start that went ahead despite freeze windows.
pub async fn record_override(
    tx: &mut PgConnection,
    scope: Scope,
    actor: &Actor,
    windows: &[String],
    override_freeze: FreezeOverride<'_>,
) -> Result<(), StoreError> {
    events::record(
        &mut *tx,
        scope,
        actor,
        "freeze.overridden",
        json!({ "windows": windows, "reason": override_freeze.reason }),
    )
    .await
}

/// Keeps an override's reason with the rollout it started, so the windows it overrode do not
/// hold it at its phase boundaries either.
pub async fn keep_override(
    tx: &mut PgConnection,
    rollout: Uuid,
    override_freeze: FreezeOverride<'_>,
) -> Result<(), StoreError> {
    sqlx::query("update rollouts set freeze_override = $2 where id = $1")
        .bind(rollout)
        .bind(override_freeze.reason)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// The freeze windows of an environment, by ids.
async fn windows_covering(
    tx: &mut PgConnection,
    app_id: Uuid,
    environment_id: Uuid,
) -> Result<Vec<FreezeWindow>, StoreError> {
    Ok(sqlx::query_as::<_, FreezeWindow>(&format!(
        "select {} where f.app_id = $1 and (f.environment_id is null or f.environment_id = $2)
          order by f.name",
        freezes::SELECT
    ))
    .bind(app_id)
    .bind(environment_id)
    .fetch_all(&mut *tx)
    .await?)
}

/// How a held rollout's reason begins.
pub const HELD: &str = "held before its next phase:";

/// A rollout held at a phase boundary by a freeze window that began after it started.
#[derive(Clone, Debug, PartialEq)]
pub struct Hold {
    /// Which windows and until when, as people read it.
    pub reason: String,
    /// The end of the latest blocking occurrence (`None`: a window that cannot be read).
    pub until: Option<DateTime<Utc>>,
}

/// Whether a freeze window holds a running rollout before its next phase: the same rule as
/// at its start (who started it, whether it is a rollback). The caller skips rollouts an admin
/// started through a freeze.
pub async fn hold(
    tx: &mut PgConnection,
    (app_id, environment_id): (Uuid, Uuid),
    start: Start<'_>,
    now: DateTime<Utc>,
) -> Result<Option<Hold>, StoreError> {
    let windows = windows_covering(tx, app_id, environment_id).await?;
    let mut reasons = Vec::new();
    let mut until: Option<DateTime<Utc>> = Some(now);
    for window in &windows {
        if let Some(why) = window.blocks(start, now) {
            reasons.push(why);
            let end = window.on_until(now).ok().flatten();
            until = match (until, end) {
                (Some(held), Some(end)) => Some(held.max(end)),
                _ => None,
            };
        }
    }
    if reasons.is_empty() {
        return Ok(None);
    }
    Ok(Some(Hold {
        reason: format!("{HELD} {}", reasons.join("; ")),
        until,
    }))
}

/// Announces the freeze windows that began or ended since they were last looked at: each edge
/// flips the window's `announced_on` with a conditional update and records `freeze.began` or
/// `freeze.ended` (which notifies the app's channels) in the same transaction, so with several
/// replicas looking, each edge is announced once. Returns how many edges were announced.
pub async fn announce_freeze_edges(pool: &PgPool, actor: &Actor) -> Result<usize, StoreError> {
    let now: DateTime<Utc> = sqlx::query_scalar("select now()").fetch_one(pool).await?;
    let rows = sqlx::query(&format!(
        "select f.app_id, f.environment_id, f.announced_on, {}",
        freezes::SELECT
    ))
    .fetch_all(pool)
    .await?;
    let mut announced = 0;
    for row in rows {
        let window: FreezeWindow = sqlx::FromRow::from_row(&row)?;
        let was_on: bool = row.get("announced_on");
        let until = window.on_until(now);
        let on = !matches!(until, Ok(None));
        if on == was_on {
            continue;
        }
        let mut tx = pool.begin().await?;
        let flipped = sqlx::query(
            "update freeze_windows set announced_on = $2 where id = $1 and announced_on = $3",
        )
        .bind(window.id)
        .bind(on)
        .bind(was_on)
        .execute(&mut *tx)
        .await?;
        if flipped.rows_affected() != 1 {
            continue;
        }
        let scope = Scope {
            app_id: row.get("app_id"),
            environment_id: row.get("environment_id"),
            rollout_id: None,
        };
        let covers = window.environment.as_deref().unwrap_or("every environment");
        let reason = match (&until, on) {
            (Ok(Some(end)), true) => format!(
                "freeze window “{}” began for {covers}{}, until {}",
                window.name,
                window
                    .reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default(),
                end.format("%Y-%m-%d %H:%M UTC")
            ),
            (Err(why), true) => format!(
                "freeze window “{}” cannot be read and holds {covers} until fixed: {why}",
                window.name
            ),
            _ => format!("freeze window “{}” ended for {covers}", window.name),
        };
        events::record(
            &mut *tx,
            scope,
            actor,
            if on { "freeze.began" } else { "freeze.ended" },
            json!({
                "window": window.name, "id": window.id, "reason": reason,
                "until": until.ok().flatten(),
            }),
        )
        .await?;
        tx.commit().await?;
        announced += 1;
    }
    Ok(announced)
}

/// Refuses a release the environment's promotion rule does not let in yet: it must have
/// succeeded in the rule's `from` environment at least `soak` ago.
pub async fn check_promotion(
    tx: &mut PgConnection,
    environment: &Environment,
    release: &Release,
) -> Result<(), StoreError> {
    let Some(rule) = &environment.policy.promotion else {
        return Ok(());
    };
    let from = match apps::environment(&mut *tx, &environment.app, &rule.from).await {
        Ok(from) => from,
        Err(StoreError::NotFound(_)) => {
            return Err(StoreError::Refused(format!(
                "the promotion rule of {} names `{}`, which is not an environment of {}",
                environment.name, rule.from, environment.app
            )))
        }
        Err(other) => return Err(other),
    };
    let (succeeded_at, now): (Option<DateTime<Utc>>, DateTime<Utc>) = sqlx::query_as(
        "select max(finished_at), now() from rollouts
          where environment_id = $1 and release_id = $2 and state = 'succeeded'",
    )
    .bind(from.id)
    .bind(release.id)
    .fetch_one(&mut *tx)
    .await?;
    let Some(succeeded_at) = succeeded_at else {
        return Err(StoreError::Refused(format!(
            "release {} must succeed in {} before it may enter {} (its promotion rule)",
            release.version, rule.from, environment.name
        )));
    };
    let soaked_at = succeeded_at + rule.soak.to_chrono();
    if soaked_at > now {
        let left = (soaked_at - now).num_seconds().max(1) as u64;
        return Err(StoreError::Refused(format!(
            "release {} succeeded in {} at {} and must soak there for {} before it may enter {}: \
             {} left, until {}",
            release.version,
            rule.from,
            succeeded_at.format("%Y-%m-%d %H:%M:%S UTC"),
            rule.soak,
            environment.name,
            shipgate_domain::Span::secs(left),
            soaked_at.format("%Y-%m-%d %H:%M:%S UTC")
        )));
    }
    Ok(())
}

async fn database_now(tx: &mut PgConnection) -> Result<DateTime<Utc>, StoreError> {
    Ok(sqlx::query_scalar("select now()")
        .fetch_one(&mut *tx)
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use uuid::Uuid;

    fn window(environment: Option<&str>) -> FreezeWindow {
        FreezeWindow {
            id: Uuid::nil(),
            environment: environment.map(str::to_owned),
            name: "weekend".into(),
            kind: "weekly".into(),
            starts_at: None,
            ends_at: None,
            weekly: Some(json!("Fri 18:00-Mon 08:00")),
            time_zone: "Europe/Berlin".into(),
            blocks_manual: true,
            blocks_automation: false,
            allows_rollback: true,
            reason: None,
            created_by: "user:ops".into(),
        }
    }

    fn start(initiator: Initiator, rollback: bool) -> Start<'static> {
        Start {
            environment: "production",
            initiator,
            rollback,
        }
    }

    #[test]
    fn a_weekly_window_blocks_people_but_not_automation_or_rollbacks_when_it_says_so() {
        // Saturday 2026-03-28 12:00 UTC, inside the weekend.
        let saturday: DateTime<Utc> = "2026-03-28T12:00:00Z".parse().unwrap();
        let weekend = window(Some("production"));
        let why = weekend
            .blocks(start(Initiator::Person, false), saturday)
            .unwrap();
        assert!(why.contains("“weekend”"), "{why}");
        assert!(why.contains("until 2026-03-30 06:00 UTC"), "{why}");
        assert_eq!(
            weekend.blocks(start(Initiator::Automation, false), saturday),
            None
        );
        assert_eq!(
            weekend.blocks(start(Initiator::Person, true), saturday),
            None
        );
        let tuesday: DateTime<Utc> = "2026-03-31T12:00:00Z".parse().unwrap();
        assert_eq!(
            weekend.blocks(start(Initiator::Person, false), tuesday),
            None
        );
        assert_eq!(
            window(Some("staging")).blocks(start(Initiator::Person, false), saturday),
            None
        );
    }

    #[test]
    fn an_unreadable_window_blocks_and_says_why() {
        let broken = FreezeWindow {
            time_zone: "Europe/Atlantis".into(),
            ..window(None)
        };
        let why = broken
            .blocks(start(Initiator::Person, false), Utc::now())
            .unwrap();
        assert!(why.contains("cannot be read"), "{why}");
    }
}
