//! The overview: every app × environment with the live release of each component, health,
//! the rollout in flight and its progress, and the paused / frozen / quarantined badges; then
//! the recent rollouts and rollbacks.

use askama::Template;
use axum::extract::State;
use axum::response::Html;
use chrono::Utc;
use uuid::Uuid;

use shipgate_store::apps;
use shipgate_store::dashboard as views;
use shipgate_store::rollouts::{self, RollbackRecord, RolloutSummary};

use super::{render, Nav, PageError, Session};
use crate::AppState;

/// One environment's card.
pub(super) struct EnvironmentCard {
    pub name: String,
    pub current_release: Option<String>,
    /// (component, release, what the platform serves instead when it drifted)
    pub live: Vec<(String, String, Option<String>)>,
    pub in_flight: Vec<RolloutSummary>,
    pub auto_deploy_paused: Option<String>,
    /// (verdict, when)
    pub health: Option<(String, String)>,
    /// The freeze window on now, by name.
    pub frozen: Option<String>,
}

pub(super) struct AppRow {
    pub name: String,
    pub repository: Option<String>,
    pub environments: Vec<EnvironmentCard>,
    pub quarantined: Vec<(String, String)>,
}

pub(super) struct RolloutRow {
    pub summary: RolloutSummary,
    pub phases: Vec<(String, String)>,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    nav: Nav,
    apps: Vec<AppRow>,
    rollouts: Vec<RolloutRow>,
    rollbacks: Vec<(String, String, RollbackRecord)>,
    live: bool,
}

/// The environment cards of one app, in promotion order (shared with the pipeline page).
pub(super) async fn environment_cards(
    state: &AppState,
    app: &apps::App,
    only: Option<&str>,
) -> Result<(Vec<EnvironmentCard>, Vec<apps::Environment>), PageError> {
    let pool = &state.pool;
    let mut environments = Vec::new();
    for spec in &app.spec.environments {
        if only.is_some_and(|only| only != spec.name) {
            continue;
        }
        environments.push(apps::environment(pool, &app.name, &spec.name).await?);
    }
    let ids: Vec<Uuid> = environments.iter().map(|e| e.id).collect();
    let current = views::current_releases(pool, &ids).await?;
    let in_flight = views::in_flight(pool, &ids).await?;
    let freezes = shipgate_store::freezes::list(pool, app.id).await?;
    let now = Utc::now();
    let mut cards = Vec::new();
    for environment in &environments {
        let live = rollouts::live_components(pool, environment.id)
            .await?
            .into_iter()
            .map(|l| {
                let observed = l.drifted.then_some(l.observed_version).flatten();
                (l.component, l.release, observed)
            })
            .collect();
        let health = views::latest_health(pool, environment.id)
            .await?
            .map(|(verdict, at)| (verdict, super::when(at)));
        let frozen = freezes
            .iter()
            .find(|f| {
                f.is_on(now)
                    && f.environment
                        .as_deref()
                        .is_none_or(|name| name == environment.name)
            })
            .map(|f| f.name.clone());
        cards.push(EnvironmentCard {
            name: environment.name.clone(),
            current_release: current
                .iter()
                .find(|(id, _)| *id == environment.id)
                .map(|(_, version)| version.clone()),
            live,
            in_flight: in_flight
                .iter()
                .filter(|(id, _)| *id == environment.id)
                .map(|(_, summary)| summary.clone())
                .collect(),
            auto_deploy_paused: environment.auto_deploy_paused_reason.clone(),
            health,
            frozen,
        });
    }
    Ok((cards, environments))
}

/// Recent rollouts with their phases, for tables.
pub(super) async fn rollout_rows(
    state: &AppState,
    recent: Vec<RolloutSummary>,
) -> Result<Vec<RolloutRow>, PageError> {
    let ids: Vec<Uuid> = recent.iter().map(|r| r.id).collect();
    let phase_rows = views::phases_of(&state.pool, &ids).await?;
    Ok(recent
        .into_iter()
        .map(|summary| RolloutRow {
            phases: phase_rows
                .iter()
                .filter(|(id, _, _)| *id == summary.id)
                .map(|(_, name, state)| (name.clone(), state.clone()))
                .collect(),
            summary,
        })
        .collect())
}

/// Whether a rollout in this state is still moving (pages showing it follow it live).
pub(super) fn moving(state: &str) -> bool {
    matches!(
        state,
        "queued" | "pending_approval" | "in_progress" | "paused" | "rolling_back"
    )
}

pub(super) async fn overview(
    session: Session,
    State(state): State<AppState>,
) -> Result<Html<String>, PageError> {
    let pool = &state.pool;
    let mut app_rows = Vec::new();
    let mut rollbacks = Vec::new();
    let limit = session.caller.app_limit().map(str::to_owned);
    for app in apps::list(pool)
        .await?
        .into_iter()
        .filter(|app| limit.as_deref().is_none_or(|limit| app.name == limit))
    {
        let (environments, stored) =
            environment_cards(&state, &app, session.caller.environment_limit()).await?;
        for environment in &stored {
            for record in rollouts::rollbacks(pool, environment.id, 5).await? {
                rollbacks.push((app.name.clone(), environment.name.clone(), record));
            }
        }
        app_rows.push(AppRow {
            name: app.name.clone(),
            repository: app.spec.repository.clone(),
            environments,
            quarantined: views::quarantined(pool, app.id, 5).await?,
        });
    }
    rollbacks.sort_by_key(|entry| std::cmp::Reverse(entry.2.requested_at));
    rollbacks.truncate(10);
    let recent = rollouts::recent(pool, limit.as_deref(), None, 25).await?;
    let live = recent.iter().any(|r| moving(&r.state));
    let rollouts = rollout_rows(&state, recent).await?;
    render(&OverviewPage {
        nav: session.nav(None, "overview"),
        apps: app_rows,
        rollouts,
        rollbacks,
        live,
    })
}
