//! The environment policies every rollout start obeys, whoever asks (API, CLI, webhooks, the
//! dashboard, the engine): the promotion rule and freeze windows. [`crate::rollouts`] checks
//! them under the environment's lock, so what is checked is what holds when the rollout is
//! recorded.

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgConnection;

use shipgate_domain::freeze::Schedule;

use crate::apps::{self, Environment};
use crate::dashboard::FreezeWindow;
use crate::events::{self, Actor, Scope};
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
        let schedule = Schedule::from_stored(
            &self.kind,
            self.starts_at,
            self.ends_at,
            self.weekly.as_ref(),
            &self.time_zone,
        )
        .map_err(|error| error.to_string())?;
        Ok(schedule.on_until(now))
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

/// The freeze windows that could cover an environment (its own and the app's).
pub async fn freezes_of(
    tx: &mut PgConnection,
    environment: &Environment,
) -> Result<Vec<FreezeWindow>, StoreError> {
    Ok(sqlx::query_as::<_, FreezeWindow>(
        "select f.id, e.name as environment, f.name, f.kind, f.starts_at, f.ends_at, f.weekly,
                f.time_zone, f.blocks_manual, f.blocks_automation, f.allows_rollback, f.reason,
                f.created_by
           from freeze_windows f left join environments e on e.id = f.environment_id
          where f.app_id = $1 and (f.environment_id is null or f.environment_id = $2)
          order by f.name",
    )
    .bind(environment.app_id)
    .bind(environment.id)
    .fetch_all(&mut *tx)
    .await?)
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
    let windows = freezes_of(tx, environment).await?;
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
