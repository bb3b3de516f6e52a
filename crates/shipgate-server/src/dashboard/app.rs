//! An app's pages: the pipeline (environments left to right, recent releases, promote buttons
//! that say what the policy still requires), releases (where each is live; quarantine and
//! clear), rollback history (with the incident note and the post-rollback checklist), config
//! and flags per environment with their history, freeze windows, webhook deliveries,
//! notifications and what became of them, and the delivery metrics (deployment frequency, lead time, change failure rate, time to restore).

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::{Html, IntoResponse, Response};
use axum::Form;
use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use shipgate_domain::state::RolloutKind;
use shipgate_store::apps::{self, App, Environment};
use shipgate_store::dashboard::{self as views, DeployBucket, RestoreBucket, RollbackEntry};
use shipgate_store::freezes::{self, FreezePreview, FreezeTimes, FreezeWindow};
use shipgate_store::notifications::{self, Notification};
use shipgate_store::policy;
use shipgate_store::releases::{self, Release};
use shipgate_store::rollouts::{self, ConfigChange, ConfigEntry, NewRollout};
use shipgate_store::webhooks::{self, Delivery};

use super::overview::{environment_cards, rollout_rows, EnvironmentCard, RolloutRow};
use super::{charts, done, parse_uuid, render, span, when, CsrfForm, Nav, PageError, Session};
use crate::auth::{Scope, Target};
use crate::AppState;

/// Reads an app the session may read (as a whole, or one environment of it).
async fn readable_app(state: &AppState, session: &Session, name: &str) -> Result<App, PageError> {
    session.caller.require(Scope::Read, Target::App(name))?;
    Ok(apps::get(&state.pool, name).await?)
}

/// The app's environments the session may see, in promotion order.
fn visible_environments<'a>(
    session: &'a Session,
    app: &'a App,
) -> impl Iterator<Item = &'a str> + 'a {
    app.spec
        .environments
        .iter()
        .map(|e| e.name.as_str())
        .filter(|name| {
            session
                .caller
                .environment_limit()
                .is_none_or(|limit| limit == *name)
        })
}

// ---------------------------------------------------------------------------------------------
// Pipeline and promotion.

/// Whether (and how) a release can enter an environment now.
pub(super) struct Offer {
    environment: String,
    /// `deploy` or `promote`.
    kind: &'static str,
    /// The environment runs it now.
    live: bool,
    /// When it last succeeded there.
    succeeded_at: Option<String>,
    /// What stops it (the policy still requires): non-empty means no button.
    blockers: Vec<String>,
    /// What will happen on the way (approvals, queueing).
    notes: Vec<String>,
    /// The session may start it.
    allowed: bool,
}

/// What a release needs before it may enter `environment`, from the environment's policy and
/// what is known of the release. Pure, so the rules are tested without a database.
pub(super) struct OfferInputs<'a> {
    pub release: &'a Release,
    pub environment: &'a Environment,
    /// The app's environments (to name the `from` of a promotion rule).
    pub environments: &'a [Environment],
    /// `(release id, environment id, finished at)` of succeeded rollouts.
    pub succeeded: &'a [(Uuid, Uuid, DateTime<Utc>)],
    /// The version the environment runs.
    pub current: Option<&'a str>,
    pub freezes: &'a [FreezeWindow],
    /// A rollout holds the environment now.
    pub busy: bool,
    pub now: DateTime<Utc>,
}

pub(super) fn offer(inputs: &OfferInputs<'_>) -> Offer {
    let release = inputs.release;
    let environment = inputs.environment;
    let policy = &environment.policy;
    let mut blockers = Vec::new();
    let mut notes = Vec::new();
    let succeeded_in = |environment_id: Uuid| {
        inputs
            .succeeded
            .iter()
            .filter(|(r, e, _)| *r == release.id && *e == environment_id)
            .map(|(_, _, at)| *at)
            .max()
    };
    if let Some(reason) = &release.quarantine_reason {
        blockers.push(format!("clear its quarantine first ({reason})"));
    }
    if let Some(rule) = &policy.promotion {
        match inputs.environments.iter().find(|e| e.name == rule.from) {
            Some(from) => match succeeded_in(from.id) {
                None => blockers.push(format!("succeed in {} first", rule.from)),
                Some(at) => {
                    let soak = Duration::from_std(rule.soak.to_std()).unwrap_or_default();
                    if at + soak > inputs.now {
                        blockers.push(format!(
                            "soak in {} until {} ({} left of {})",
                            rule.from,
                            when(at + soak),
                            span((at + soak - inputs.now).num_seconds() as f64),
                            rule.soak
                        ));
                    }
                }
            },
            None => blockers.push(format!(
                "the promotion rule names `{}`, which is not an environment",
                rule.from
            )),
        }
    }
    // The same rule the store enforces on every start (`FreezeWindow::blocks`), worded for
    // the button.
    for freeze in inputs.freezes {
        let start = policy::Start {
            environment: &environment.name,
            initiator: policy::Initiator::Person,
            rollback: false,
        };
        if freeze.blocks(start, inputs.now).is_some() {
            blockers.push(format!(
                "wait for the freeze “{}” to end{}",
                freeze.name,
                match freeze.on_until(inputs.now) {
                    Ok(Some(end)) => format!(" at {}", when(end)),
                    _ => String::new(),
                }
            ));
        }
    }
    if let Some(approvals) = &policy.approvals {
        notes.push(format!(
            "then {} approval{} before it starts{}",
            approvals.required,
            if approvals.required == 1 { "" } else { "s" },
            if approvals.allow_self_approval {
                ""
            } else {
                " (not yours)"
            }
        ));
    }
    if inputs.busy {
        notes.push(match policy.concurrency {
            shipgate_domain::config::Concurrency::Queue => {
                "it queues behind the rollout in progress".to_owned()
            }
            shipgate_domain::config::Concurrency::Supersede => {
                "it queues behind the rollout in progress, replacing any already waiting".to_owned()
            }
        });
    }
    Offer {
        environment: environment.name.clone(),
        kind: if policy.promotion.is_some() {
            "promote"
        } else {
            "deploy"
        },
        live: inputs.current == Some(release.version.as_str()),
        succeeded_at: succeeded_in(environment.id).map(|at| at.format("%m-%d %H:%M").to_string()),
        blockers,
        notes,
        allowed: false,
    }
}

struct ReleaseRow {
    release: Release,
    offers: Vec<Offer>,
}

#[derive(Template)]
#[template(path = "app.html")]
struct PipelinePage {
    nav: Nav,
    app: App,
    environments: Vec<EnvironmentCard>,
    /// Environments the session may roll back.
    can_roll_back: Vec<String>,
    releases: Vec<ReleaseRow>,
    rollouts: Vec<RolloutRow>,
    live: bool,
}

struct PipelineFacts {
    environments: Vec<Environment>,
    succeeded: Vec<(Uuid, Uuid, DateTime<Utc>)>,
    freezes: Vec<FreezeWindow>,
    current: Vec<(Uuid, String)>,
    busy: Vec<Uuid>,
}

async fn pipeline_facts(
    state: &AppState,
    app: &App,
    releases: &[Release],
) -> Result<PipelineFacts, PageError> {
    let mut environments = Vec::new();
    for spec in &app.spec.environments {
        environments.push(apps::environment(&state.pool, &app.name, &spec.name).await?);
    }
    let ids: Vec<Uuid> = environments.iter().map(|e| e.id).collect();
    let release_ids: Vec<Uuid> = releases.iter().map(|r| r.id).collect();
    Ok(PipelineFacts {
        succeeded: views::succeeded_in(&state.pool, &release_ids).await?,
        freezes: freezes::list(&state.pool, app.id).await?,
        current: views::current_releases(&state.pool, &ids).await?,
        busy: views::in_flight(&state.pool, &ids)
            .await?
            .into_iter()
            .map(|(environment, _)| environment)
            .collect(),
        environments,
    })
}

fn offer_for(facts: &PipelineFacts, release: &Release, environment: &Environment) -> Offer {
    offer(&OfferInputs {
        release,
        environment,
        environments: &facts.environments,
        succeeded: &facts.succeeded,
        current: facts
            .current
            .iter()
            .find(|(id, _)| *id == environment.id)
            .map(|(_, version)| version.as_str()),
        freezes: &facts.freezes,
        busy: facts.busy.contains(&environment.id),
        now: Utc::now(),
    })
}

pub(super) async fn pipeline(
    session: Session,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Html<String>, PageError> {
    let app = readable_app(&state, &session, &name).await?;
    let (environments, _) =
        environment_cards(&state, &app, session.caller.environment_limit()).await?;
    let recent = releases::list(&state.pool, app.id, None, 10).await?;
    let facts = pipeline_facts(&state, &app, &recent).await?;
    let visible: Vec<&str> = visible_environments(&session, &app).collect();
    let releases = recent
        .into_iter()
        .map(|release| ReleaseRow {
            offers: facts
                .environments
                .iter()
                .filter(|e| visible.contains(&e.name.as_str()))
                .map(|environment| {
                    let mut offer = offer_for(&facts, &release, environment);
                    offer.allowed = session.may(
                        Scope::Deploy,
                        Target::Environment(&app.name, &environment.name),
                    );
                    offer
                })
                .collect(),
            release,
        })
        .collect();
    let recent_rollouts = rollouts::recent(
        &state.pool,
        Some(&app.name),
        session.caller.environment_limit(),
        15,
    )
    .await?;
    let live = recent_rollouts
        .iter()
        .any(|r| super::overview::moving(&r.state));
    let can_roll_back = visible
        .iter()
        .filter(|name| session.may(Scope::Deploy, Target::Environment(&app.name, name)))
        .map(|name| (*name).to_owned())
        .collect();
    render(&PipelinePage {
        nav: session.nav(Some(&app.name), "pipeline"),
        environments,
        can_roll_back,
        releases,
        rollouts: rollout_rows(&state, recent_rollouts).await?,
        live,
        app,
    })
}

#[derive(Deserialize)]
pub(super) struct DeployForm {
    csrf: String,
    release: String,
}

/// Starts a rollout of a release into an environment from the pipeline, once the policy's
/// requirements are met (otherwise refuses, naming them).
pub(super) async fn deploy(
    session: Session,
    State(state): State<AppState>,
    Path((name, environment)): Path<(String, String)>,
    Form(form): Form<DeployForm>,
) -> Result<Response, PageError> {
    session.check_csrf(&form.csrf)?;
    session
        .caller
        .require(Scope::Deploy, Target::Environment(&name, &environment))?;
    let app = apps::get(&state.pool, &name).await?;
    let release = releases::by_version(&state.pool, app.id, &form.release).await?;
    let facts = pipeline_facts(&state, &app, std::slice::from_ref(&release)).await?;
    let target = facts
        .environments
        .iter()
        .find(|e| e.name == environment)
        .ok_or_else(|| PageError::not_found(format!("environment {environment} not found")))?;
    let offer = offer_for(&facts, &release, target);
    if !offer.blockers.is_empty() {
        return Err(PageError::refused(format!(
            "{} was not started in {environment}: the policy still requires that it {}.",
            release.version,
            offer.blockers.join("; and ")
        )));
    }
    let id = rollouts::start(
        &state.pool,
        NewRollout {
            environment: target,
            release: &release,
            kind: if offer.kind == "promote" {
                RolloutKind::Promote
            } else {
                RolloutKind::Deploy
            },
            actor: &session.caller.actor,
            trigger: "manual",
            override_freeze: None,
        },
    )
    .await?;
    Ok(done(&format!("/rollouts/{id}")))
}

/// Clears an environment's auto-deploy pause (after a rollback).
pub(super) async fn resume_auto_deploy(
    session: Session,
    State(state): State<AppState>,
    Path((name, environment)): Path<(String, String)>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PageError> {
    session.check_csrf(&form.csrf)?;
    session
        .caller
        .require(Scope::Deploy, Target::Environment(&name, &environment))?;
    let environment = apps::environment(&state.pool, &name, &environment).await?;
    rollouts::resume_auto_deploy(&state.pool, &environment, &session.caller.actor).await?;
    Ok(done(&format!("/apps/{name}")))
}

// ---------------------------------------------------------------------------------------------
// Releases.

struct ReleaseLine {
    release: Release,
    /// (environment, components)
    live: Vec<(String, String)>,
}

#[derive(Template)]
#[template(path = "releases.html")]
struct ReleasesPage {
    nav: Nav,
    app: String,
    releases: Vec<ReleaseLine>,
    next: Option<Uuid>,
    can_quarantine: bool,
    can_clear: bool,
}

#[derive(Deserialize)]
pub(super) struct PageQuery {
    #[serde(default)]
    before: Option<Uuid>,
}

const PAGE: i64 = 50;

pub(super) async fn releases(
    session: Session,
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(page): Query<PageQuery>,
) -> Result<Html<String>, PageError> {
    let app = readable_app(&state, &session, &name).await?;
    let list = releases::list(&state.pool, app.id, page.before, PAGE).await?;
    let next = (list.len() as i64 == PAGE)
        .then(|| list.last().map(|r| r.id))
        .flatten();
    let ids: Vec<Uuid> = list.iter().map(|r| r.id).collect();
    let live = views::where_live(&state.pool, &ids).await?;
    let releases = list
        .into_iter()
        .map(|release| {
            let mut places: Vec<(String, String)> = Vec::new();
            for (_, environment, component) in live.iter().filter(|(id, _, _)| *id == release.id) {
                match places.iter_mut().find(|(e, _)| e == environment) {
                    Some((_, components)) => {
                        components.push_str(", ");
                        components.push_str(component);
                    }
                    None => places.push((environment.clone(), component.clone())),
                }
            }
            ReleaseLine {
                release,
                live: places,
            }
        })
        .collect();
    render(&ReleasesPage {
        nav: session.nav(Some(&app.name), "releases"),
        can_quarantine: session.may(Scope::Deploy, Target::App(&app.name)),
        can_clear: session.may(Scope::Approve, Target::App(&app.name)),
        app: app.name,
        releases,
        next,
    })
}

#[derive(Deserialize)]
pub(super) struct QuarantineForm {
    csrf: String,
    /// `quarantine` or `clear`.
    action: String,
    #[serde(default)]
    reason: String,
}

/// Quarantines a release (deploy scope) or clears its quarantine (approve scope: it lets
/// automation deploy a release someone marked bad).
pub(super) async fn quarantine(
    session: Session,
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    Form(form): Form<QuarantineForm>,
) -> Result<Response, PageError> {
    session.check_csrf(&form.csrf)?;
    let reason = match form.action.as_str() {
        "quarantine" => {
            session.caller.require(Scope::Deploy, Target::App(&name))?;
            let reason = form.reason.trim();
            if reason.is_empty() {
                return Err(PageError::refused(
                    "Say why the release is bad: the reason is required.",
                ));
            }
            Some(reason)
        }
        "clear" => {
            session.caller.require(Scope::Approve, Target::App(&name))?;
            None
        }
        other => {
            return Err(PageError::refused(format!(
                "`{other}` is not quarantine or clear"
            )))
        }
    };
    let app = apps::get(&state.pool, &name).await?;
    views::quarantine(&state.pool, app.id, &version, reason, &session.caller.actor).await?;
    Ok(done(&format!("/apps/{name}/releases")))
}

// ---------------------------------------------------------------------------------------------
// Rollback history, incident notes and the post-rollback checklist.

/// The post-rollback checklist (the runbook's, `seeds/002`): key and what to do.
pub(super) const CHECKLIST: [(&str, &str); 6] = [
    (
        "verify-health",
        "Verify system health (all health checks passing)",
    ),
    ("monitor-errors", "Monitor error rates for 15 minutes"),
    ("document", "Document the incident in the runbook"),
    ("post-mortem", "Create a post-mortem issue"),
    ("notify-users", "Notify affected users if data was lost"),
    ("root-cause", "Schedule a root cause analysis meeting"),
];

struct RollbackLine {
    entry: RollbackEntry,
    /// detected → restored, or requested → restored.
    time_to_restore: Option<String>,
    checklist_done: usize,
}

fn rollback_line(entry: RollbackEntry) -> RollbackLine {
    let start = entry
        .record
        .detected_at
        .unwrap_or(entry.record.requested_at);
    RollbackLine {
        time_to_restore: entry
            .record
            .restored_at
            .map(|restored| span((restored - start).num_milliseconds() as f64 / 1000.0)),
        checklist_done: CHECKLIST
            .iter()
            .filter(|(key, _)| entry.checklist.get(key).is_some())
            .count(),
        entry,
    }
}

#[derive(Template)]
#[template(path = "rollbacks.html")]
struct RollbacksPage {
    nav: Nav,
    app: String,
    rollbacks: Vec<RollbackLine>,
    total: usize,
}

pub(super) async fn rollbacks(
    session: Session,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Html<String>, PageError> {
    let app = readable_app(&state, &session, &name).await?;
    let visible: Vec<&str> = visible_environments(&session, &app).collect();
    let rollbacks: Vec<RollbackLine> = views::rollback_history(&state.pool, app.id, 100)
        .await?
        .into_iter()
        .filter(|entry| visible.contains(&entry.environment.as_str()))
        .map(rollback_line)
        .collect();
    render(&RollbacksPage {
        nav: session.nav(Some(&app.name), "rollbacks"),
        total: CHECKLIST.len(),
        app: app.name,
        rollbacks,
    })
}

struct ChecklistItem {
    key: &'static str,
    label: &'static str,
    /// Who ticked it, and when.
    done: Option<String>,
}

#[derive(Template)]
#[template(path = "rollback.html")]
struct RollbackPage {
    nav: Nav,
    app: String,
    line: RollbackLine,
    checklist: Vec<ChecklistItem>,
    can_write: bool,
}

async fn rollback_of_app(
    state: &AppState,
    session: &Session,
    name: &str,
    id: &str,
) -> Result<RollbackEntry, PageError> {
    let id = parse_uuid(id, "rollback")?;
    let entry = views::rollback_entry(&state.pool, id).await?;
    let app = readable_app(state, session, name).await?;
    let belongs = app
        .spec
        .environments
        .iter()
        .any(|e| e.name == entry.environment);
    if !belongs {
        return Err(PageError::not_found(format!(
            "rollback {id} of {name} not found"
        )));
    }
    session
        .caller
        .require(Scope::Read, Target::Environment(name, &entry.environment))?;
    Ok(entry)
}

pub(super) async fn rollback_page(
    session: Session,
    State(state): State<AppState>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Html<String>, PageError> {
    let entry = rollback_of_app(&state, &session, &name, &id).await?;
    let checklist = CHECKLIST
        .iter()
        .map(|(key, label)| ChecklistItem {
            key,
            label,
            done: entry.checklist.get(key).map(|done| {
                format!(
                    "{} at {}",
                    done.get("by").and_then(Value::as_str).unwrap_or("someone"),
                    done.get("at")
                        .and_then(Value::as_str)
                        .and_then(|at| at.parse::<DateTime<Utc>>().ok())
                        .map(when)
                        .unwrap_or_default()
                )
            }),
        })
        .collect();
    let can_write = session.may(
        Scope::Deploy,
        Target::Environment(&name, &entry.environment),
    );
    render(&RollbackPage {
        nav: session.nav(Some(&name), "rollbacks"),
        app: name,
        line: rollback_line(entry),
        checklist,
        can_write,
    })
}

#[derive(Deserialize)]
pub(super) struct NoteForm {
    csrf: String,
    #[serde(default)]
    note: String,
}

pub(super) async fn rollback_note(
    session: Session,
    State(state): State<AppState>,
    Path((name, id)): Path<(String, String)>,
    Form(form): Form<NoteForm>,
) -> Result<Response, PageError> {
    session.check_csrf(&form.csrf)?;
    let entry = rollback_of_app(&state, &session, &name, &id).await?;
    session.caller.require(
        Scope::Deploy,
        Target::Environment(&name, &entry.environment),
    )?;
    if form.note.len() > 20_000 {
        return Err(PageError::refused(
            "Keep the note under 20,000 characters (link to a longer document).",
        ));
    }
    views::set_incident_note(
        &state.pool,
        entry.record.rollout_id,
        &form.note,
        &session.caller.actor,
    )
    .await?;
    Ok(done(&format!(
        "/apps/{name}/rollbacks/{}",
        entry.record.rollout_id
    )))
}

#[derive(Deserialize)]
pub(super) struct ChecklistForm {
    csrf: String,
    item: String,
    /// `done` or `undo`.
    mark: String,
}

pub(super) async fn rollback_checklist(
    session: Session,
    State(state): State<AppState>,
    Path((name, id)): Path<(String, String)>,
    Form(form): Form<ChecklistForm>,
) -> Result<Response, PageError> {
    session.check_csrf(&form.csrf)?;
    let entry = rollback_of_app(&state, &session, &name, &id).await?;
    session.caller.require(
        Scope::Deploy,
        Target::Environment(&name, &entry.environment),
    )?;
    if !CHECKLIST.iter().any(|(key, _)| *key == form.item) {
        return Err(PageError::refused(format!(
            "`{}` is not an item of the checklist",
            form.item
        )));
    }
    views::set_checklist_item(
        &state.pool,
        entry.record.rollout_id,
        &form.item,
        form.mark == "done",
        &session.caller.actor,
    )
    .await?;
    Ok(done(&format!(
        "/apps/{name}/rollbacks/{}",
        entry.record.rollout_id
    )))
}

// ---------------------------------------------------------------------------------------------
// Config and flags.

#[derive(Template)]
#[template(path = "config.html")]
struct ConfigPage {
    nav: Nav,
    app: String,
    environment: String,
    environments: Vec<String>,
    values: Vec<ConfigEntry>,
    history: Vec<ConfigChange>,
}

pub(super) async fn config(
    session: Session,
    State(state): State<AppState>,
    Path((name, environment)): Path<(String, String)>,
) -> Result<Html<String>, PageError> {
    session
        .caller
        .require(Scope::Read, Target::Environment(&name, &environment))?;
    let app = apps::get(&state.pool, &name).await?;
    let stored = apps::environment(&state.pool, &name, &environment).await?;
    let (values, history) = rollouts::config(&state.pool, stored.id, 200).await?;
    render(&ConfigPage {
        nav: session.nav(Some(&name), "config"),
        environments: visible_environments(&session, &app)
            .map(str::to_owned)
            .collect(),
        app: name,
        environment,
        values,
        history,
    })
}

// ---------------------------------------------------------------------------------------------
// Freeze windows.

#[derive(Template)]
#[template(path = "freezes.html")]
struct FreezesPage {
    nav: Nav,
    app: String,
    environments: Vec<String>,
    windows: Vec<(FreezeWindow, bool)>,
    can_create: bool,
    can_delete: bool,
    draft: FreezeForm,
    preview: Option<FreezePreview>,
}

pub(super) async fn freezes(
    session: Session,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Html<String>, PageError> {
    let now = Utc::now();
    let draft = FreezeForm {
        csrf: String::new(),
        action: String::new(),
        name: String::new(),
        environment: String::new(),
        kind: "one_off".into(),
        starts_at: now.format("%Y-%m-%dT%H:%M").to_string(),
        ends_at: (now + Duration::hours(2))
            .format("%Y-%m-%dT%H:%M")
            .to_string(),
        weekly: "Fri 18:00-Mon 08:00".into(),
        time_zone: "UTC".into(),
        reason: String::new(),
        blocks_manual: Some("on".into()),
        blocks_automation: Some("on".into()),
        allows_rollback: Some("on".into()),
    };
    freezes_page(&state, &session, &name, draft, None).await
}

async fn freezes_page(
    state: &AppState,
    session: &Session,
    name: &str,
    draft: FreezeForm,
    preview: Option<FreezePreview>,
) -> Result<Html<String>, PageError> {
    let app = readable_app(state, session, name).await?;
    let now = Utc::now();
    let windows = freezes::list(&state.pool, app.id)
        .await?
        .into_iter()
        .map(|window| {
            let on = window.is_on(now);
            (window, on)
        })
        .collect();
    render(&FreezesPage {
        nav: session.nav(Some(&app.name), "freezes"),
        environments: visible_environments(session, &app)
            .map(str::to_owned)
            .collect(),
        can_create: session.may(Scope::Deploy, Target::WholeApp(&app.name)),
        can_delete: session.may(Scope::Approve, Target::WholeApp(&app.name)),
        app: app.name,
        windows,
        draft,
        preview,
    })
}

/// The new-window form, also kept to show it again under a preview.
#[derive(Clone, Deserialize)]
pub(super) struct FreezeForm {
    csrf: String,
    /// `preview` shows what the window would block; anything else creates it.
    #[serde(default)]
    action: String,
    name: String,
    #[serde(default)]
    environment: String,
    /// `one_off` or `weekly`.
    #[serde(default)]
    kind: String,
    /// `YYYY-MM-DDTHH:MM`, UTC (an HTML `datetime-local`).
    #[serde(default)]
    starts_at: String,
    #[serde(default)]
    ends_at: String,
    /// `Fri 18:00-Mon 08:00`, several separated by commas.
    #[serde(default)]
    weekly: String,
    #[serde(default)]
    time_zone: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    blocks_manual: Option<String>,
    #[serde(default)]
    blocks_automation: Option<String>,
    #[serde(default)]
    allows_rollback: Option<String>,
}

fn parse_local(text: &str, field: &str) -> Result<DateTime<Utc>, PageError> {
    chrono::NaiveDateTime::parse_from_str(text.trim(), "%Y-%m-%dT%H:%M")
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(text.trim(), "%Y-%m-%dT%H:%M:%S"))
        .map(|naive| naive.and_utc())
        .map_err(|_| {
            PageError::refused(format!(
                "{field}: give a date and time such as 2026-12-24T18:00 (UTC)"
            ))
        })
}

/// Creates a freeze window, one-off or weekly (deploy scope: freezing only ever makes things
/// safer), or with `action=preview` shows what it would block and keeps the form as filled.
pub(super) async fn create_freeze(
    session: Session,
    State(state): State<AppState>,
    Path(name): Path<String>,
    Form(form): Form<FreezeForm>,
) -> Result<Response, PageError> {
    session.check_csrf(&form.csrf)?;
    session
        .caller
        .require(Scope::Deploy, Target::WholeApp(&name))?;
    let app = apps::get(&state.pool, &name).await?;
    let environment = match form.environment.trim() {
        "" => None,
        environment => {
            let found = apps::environment(&state.pool, &name, environment).await?;
            Some((found.id, found.name))
        }
    };
    let title = form.name.trim();
    if title.is_empty() || title.len() > 100 {
        return Err(PageError::refused(
            "Give the freeze window a name of 1 to 100 characters.",
        ));
    }
    let times = if form.kind == "weekly" {
        let spans: Vec<Value> = form
            .weekly
            .split(',')
            .map(str::trim)
            .filter(|span| !span.is_empty())
            .map(|span| Value::String(span.to_owned()))
            .collect();
        FreezeTimes::Weekly {
            weekly: Value::Array(spans),
            time_zone: form.time_zone.trim().to_owned(),
        }
    } else {
        FreezeTimes::OneOff {
            starts_at: parse_local(&form.starts_at, "Starts")?,
            ends_at: parse_local(&form.ends_at, "Ends")?,
        }
    };
    let new = freezes::NewFreeze {
        app_id: app.id,
        environment,
        name: title,
        times,
        reason: Some(form.reason.trim()).filter(|r| !r.is_empty()),
        blocks_manual: form.blocks_manual.is_some(),
        blocks_automation: form.blocks_automation.is_some(),
        allows_rollback: form.allows_rollback.is_some(),
    };
    if form.action == "preview" {
        let preview = freezes::preview(&state.pool, &new).await?;
        let page = freezes_page(&state, &session, &name, form.clone(), Some(preview)).await?;
        return Ok(page.into_response());
    }
    freezes::create(&state.pool, &new, &session.caller.actor).await?;
    Ok(done(&format!("/apps/{name}/freezes")))
}

/// Deletes a freeze window (approve scope: it lets rollouts through again).
pub(super) async fn delete_freeze(
    session: Session,
    State(state): State<AppState>,
    Path((name, id)): Path<(String, String)>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PageError> {
    session.check_csrf(&form.csrf)?;
    session
        .caller
        .require(Scope::Approve, Target::WholeApp(&name))?;
    let id = parse_uuid(&id, "freeze window")?;
    let app = apps::get(&state.pool, &name).await?;
    freezes::delete(&state.pool, app.id, id, &session.caller.actor).await?;
    Ok(done(&format!("/apps/{name}/freezes")))
}

// ---------------------------------------------------------------------------------------------
// Webhook deliveries.

#[derive(Template)]
#[template(path = "deliveries.html")]
struct DeliveriesPage {
    nav: Nav,
    app: String,
    deliveries: Vec<Delivery>,
    next: Option<Uuid>,
}

pub(super) async fn deliveries(
    session: Session,
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(page): Query<PageQuery>,
) -> Result<Html<String>, PageError> {
    let app = readable_app(&state, &session, &name).await?;
    let deliveries = webhooks::list(&state.pool, app.id, page.before, PAGE).await?;
    let next = (deliveries.len() as i64 == PAGE)
        .then(|| deliveries.last().map(|d| d.id))
        .flatten();
    render(&DeliveriesPage {
        nav: session.nav(Some(&app.name), "deliveries"),
        app: app.name,
        deliveries,
        next,
    })
}

// ---------------------------------------------------------------------------------------------
// Notifications.

#[derive(Template)]
#[template(path = "notifications.html")]
struct NotificationsPage {
    nav: Nav,
    app: String,
    notifications: Vec<Notification>,
    next: Option<i64>,
}

#[derive(Deserialize)]
pub(super) struct NotificationsQuery {
    #[serde(default)]
    before: Option<i64>,
}

/// The app's notifications, newest first, with their delivery state. They span every
/// environment, so a session limited to one environment may not read them.
pub(super) async fn notifications(
    session: Session,
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(page): Query<NotificationsQuery>,
) -> Result<Html<String>, PageError> {
    session
        .caller
        .require(Scope::Read, Target::WholeApp(&name))?;
    let app = apps::get(&state.pool, &name).await?;
    let notifications = notifications::list(&state.pool, app.id, page.before, PAGE).await?;
    let next = (notifications.len() as i64 == PAGE)
        .then(|| notifications.last().map(|n| n.id))
        .flatten();
    render(&NotificationsPage {
        nav: session.nav(Some(&app.name), "notifications"),
        app: app.name,
        notifications,
        next,
    })
}

// ---------------------------------------------------------------------------------------------
// Delivery metrics.

/// The four delivery metrics of one environment over a window, bucketed for charts.
#[derive(Clone)]
pub(super) struct Delivery4 {
    pub environment: String,
    pub deploys: usize,
    pub per_week: f64,
    pub lead_time: Option<f64>,
    pub failure_rate: Option<f64>,
    pub time_to_restore: Option<f64>,
    /// (caption, SVG)
    pub charts: Vec<(String, String)>,
}

/// Computes the metrics from the database's buckets: deployment frequency (succeeded
/// deploys), lead time for changes (median, commit → live), change failure rate (failed or
/// rolled back over finished) and time to restore (median, detected → restored), over the
/// whole window and per bucket for the charts.
pub(super) fn delivery_metrics(
    environment: &str,
    deploys: &[DeployBucket],
    restores: &[RestoreBucket],
    since: DateTime<Utc>,
    now: DateTime<Utc>,
    bucket: Duration,
) -> Delivery4 {
    let count = (((now - since).num_seconds() as f64) / bucket.num_seconds() as f64)
        .ceil()
        .max(1.0) as usize;
    let label_of = |index: usize| {
        let start = since + bucket * index as i32;
        if bucket >= Duration::days(7) {
            start.format("%m-%d").to_string()
        } else if bucket >= Duration::days(1) {
            start.format("%d").to_string()
        } else {
            start.format("%H:%M").to_string()
        }
    };
    let deploy_at = |index: usize| {
        deploys
            .iter()
            .find(|b| b.bucket.is_some_and(|b| usize::try_from(b) == Ok(index)))
    };
    let restore_at = |index: usize| {
        restores
            .iter()
            .find(|b| b.bucket.is_some_and(|b| usize::try_from(b) == Ok(index)))
    };
    let whole = deploys
        .iter()
        .find(|b| b.bucket.is_none())
        .cloned()
        .unwrap_or_default();
    let whole_restores = restores
        .iter()
        .find(|b| b.bucket.is_none())
        .cloned()
        .unwrap_or_default();
    let weeks = ((now - since).num_seconds() as f64 / (7.0 * 86400.0)).max(1.0 / 7.0);
    let series = |value: &dyn Fn(usize) -> Option<f64>| -> Vec<(String, Option<f64>)> {
        (0..count)
            .map(|index| (label_of(index), value(index)))
            .collect()
    };
    let frequency = series(&|i| Some(deploy_at(i).map_or(0.0, |b| b.succeeded as f64)));
    let lead = series(&|i| deploy_at(i).and_then(|b| b.lead_seconds));
    let rate = series(&|i| {
        deploy_at(i)
            .filter(|b| b.finished > 0)
            .map(|b| b.failed as f64 / b.finished as f64 * 100.0)
    });
    let restore = series(&|i| restore_at(i).and_then(|b| b.restore_seconds));
    let chart = |caption: &str, values: &[(String, Option<f64>)], format: fn(f64) -> String| {
        (
            caption.to_owned(),
            charts::bars(&format!("{environment}: {caption}"), values, format),
        )
    };
    let charts = vec![
        chart(
            "Deployment frequency (succeeded deploys)",
            &frequency,
            |v| format!("{v:.0}"),
        ),
        chart("Lead time for changes (median)", &lead, span),
        chart("Change failure rate", &rate, |v| format!("{v:.0}%")),
        chart("Time to restore (median)", &restore, span),
    ];
    Delivery4 {
        environment: environment.to_owned(),
        deploys: whole.succeeded as usize,
        per_week: whole.succeeded as f64 / weeks,
        lead_time: whole.lead_seconds,
        failure_rate: (whole.finished > 0)
            .then(|| whole.failed as f64 / whole.finished as f64 * 100.0),
        time_to_restore: whole_restores.restore_seconds,
        charts,
    }
}

#[derive(Template)]
#[template(path = "metrics.html")]
struct MetricsPage {
    nav: Nav,
    app: String,
    days: i64,
    environments: Vec<Delivery4>,
    computed_at: String,
}

/// How long computed metrics are served again: they move slowly, and computing them reads
/// every deploy of the window (tens of milliseconds for a team that ships hundreds a day).
const METRICS_FRESH: std::time::Duration = std::time::Duration::from_secs(60);

/// Metrics computed recently, by (app, window in days, environments shown): when, as of
/// when, and what.
type MetricsKey = (String, i64, Vec<String>);
#[expect(
    clippy::type_complexity,
    reason = "a cache entry, named by its key type"
)]
static METRICS_CACHE: std::sync::LazyLock<
    std::sync::Mutex<
        std::collections::HashMap<MetricsKey, (std::time::Instant, DateTime<Utc>, Vec<Delivery4>)>,
    >,
> = std::sync::LazyLock::new(Default::default);

#[derive(Deserialize)]
pub(super) struct MetricsQuery {
    #[serde(default)]
    days: Option<i64>,
}

pub(super) async fn metrics(
    session: Session,
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<MetricsQuery>,
) -> Result<Html<String>, PageError> {
    let app = readable_app(&state, &session, &name).await?;
    let days = query.days.unwrap_or(28).clamp(1, 365);
    let now = Utc::now();
    let since = now - Duration::days(days);
    let bucket = if days <= 2 {
        Duration::hours(2)
    } else if days <= 31 {
        Duration::days(1)
    } else {
        Duration::days(7)
    };
    let visible: Vec<String> = visible_environments(&session, &app)
        .map(str::to_owned)
        .collect();
    let key = (app.name.clone(), days, visible.clone());
    let cached = METRICS_CACHE
        .lock()
        .ok()
        .and_then(|cache| cache.get(&key).cloned())
        .filter(|(at, _, _)| at.elapsed() < METRICS_FRESH);
    let (computed_at, environments) = match cached {
        Some((_, computed_at, environments)) => (computed_at, environments),
        None => {
            // The environments' queries run side by side (each aggregates in the database).
            let computed = futures::future::try_join_all(visible.iter().map(|environment| {
                let state = &state;
                let app = &app.name;
                async move {
                    let stored = apps::environment(&state.pool, app, environment).await?;
                    let (deploys, restores) = views::delivery_buckets(
                        &state.pool,
                        stored.id,
                        since,
                        bucket.num_seconds(),
                    )
                    .await?;
                    Ok::<_, PageError>(delivery_metrics(
                        environment,
                        &deploys,
                        &restores,
                        since,
                        now,
                        bucket,
                    ))
                }
            }))
            .await?;
            if let Ok(mut cache) = METRICS_CACHE.lock() {
                cache.retain(|_, (at, _, _)| at.elapsed() < METRICS_FRESH);
                cache.insert(key, (std::time::Instant::now(), now, computed.clone()));
            }
            (now, computed)
        }
    };
    render(&MetricsPage {
        nav: session.nav(Some(&app.name), "metrics"),
        app: app.name,
        days,
        environments,
        computed_at: super::when(computed_at),
    })
}

impl Delivery4 {
    fn lead_time_text(&self) -> String {
        self.lead_time.map_or_else(|| "—".into(), span)
    }
    fn restore_text(&self) -> String {
        self.time_to_restore.map_or_else(|| "—".into(), span)
    }
    fn failure_text(&self) -> String {
        self.failure_rate
            .map_or_else(|| "—".into(), |rate| format!("{rate:.0}%"))
    }
}

impl RollbackLine {
    fn checklist_text(&self, total: &usize) -> String {
        format!("{}/{}", self.checklist_done, total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(bucket: Option<i32>, succeeded: i64, failed: i64, lead: f64) -> DeployBucket {
        DeployBucket {
            bucket,
            succeeded,
            failed,
            finished: succeeded + failed,
            lead_seconds: Some(lead),
        }
    }

    #[test]
    fn delivery_metrics_show_the_window_and_each_bucket() {
        let now = Utc::now();
        let since = now - Duration::days(7);
        let deploys = [
            bucket(Some(5), 1, 1, 600.0),
            bucket(Some(6), 2, 0, 1800.0),
            bucket(None, 3, 1, 1200.0),
        ];
        let restores = [
            RestoreBucket {
                bucket: Some(5),
                restored: 1,
                restore_seconds: Some(90.0),
            },
            RestoreBucket {
                bucket: None,
                restored: 1,
                restore_seconds: Some(90.0),
            },
        ];
        let metrics = delivery_metrics(
            "production",
            &deploys,
            &restores,
            since,
            now,
            Duration::days(1),
        );
        assert_eq!(metrics.deploys, 3);
        assert_eq!(metrics.lead_time, Some(1200.0));
        assert_eq!(metrics.failure_rate, Some(25.0));
        assert_eq!(metrics.time_to_restore, Some(90.0));
        assert!((metrics.per_week - 3.0).abs() < 0.01);
        assert_eq!(metrics.charts.len(), 4);
        assert!(
            metrics.charts[2].1.contains("50%"),
            "the bucket with one of two failed"
        );
        let empty = delivery_metrics("staging", &[], &[], since, now, Duration::days(1));
        assert_eq!(
            (empty.deploys, empty.failure_rate, empty.lead_time),
            (0, None, None)
        );
    }
}

#[cfg(test)]
mod offer_tests {
    use super::*;
    use shipgate_domain::config::{Approvals, Policy, Promotion};
    use shipgate_domain::plan::Plan;
    use shipgate_domain::Span;

    fn environment(name: &str, position: i32, policy: Policy) -> Environment {
        Environment {
            id: Uuid::now_v7(),
            app_id: Uuid::nil(),
            app: "shop".into(),
            name: name.into(),
            position,
            plan: Plan { phases: Vec::new() },
            policy,
            auto_deploy_paused_reason: None,
            auto_deploy_paused_at: None,
        }
    }

    fn release(version: &str, quarantine: Option<&str>) -> Release {
        Release {
            id: Uuid::now_v7(),
            version: version.into(),
            git_sha: None,
            git_ref: None,
            artifacts: serde_json::json!({}),
            config: serde_json::json!({}),
            notes: None,
            forward_only: false,
            created_by: "user:ana".into(),
            source: "api".into(),
            committed_at: None,
            quarantined_at: quarantine.map(|_| Utc::now()),
            quarantine_reason: quarantine.map(Into::into),
            created_at: Utc::now(),
        }
    }

    #[test]
    fn a_promote_button_says_what_the_policy_still_requires() {
        let staging = environment("staging", 0, Policy::default());
        let production = environment(
            "production",
            1,
            Policy {
                approvals: Some(Approvals {
                    required: 2,
                    allow_self_approval: false,
                    timeout: Span::secs(3600),
                }),
                promotion: Some(Promotion {
                    from: "staging".into(),
                    soak: Span::secs(3600),
                    auto: false,
                }),
                ..Policy::default()
            },
        );
        let environments = [staging.clone(), production.clone()];
        let now = Utc::now();
        let fresh = release("2.0.0", None);
        let inputs = |release: &'_ Release, succeeded: &'_ [(Uuid, Uuid, DateTime<Utc>)]| {
            offer(&OfferInputs {
                release,
                environment: &environments[1],
                environments: &environments,
                succeeded,
                current: Some("1.0.0"),
                freezes: &[],
                busy: true,
                now,
            })
        };
        let never = inputs(&fresh, &[]);
        assert_eq!(never.kind, "promote");
        assert_eq!(never.blockers, ["succeed in staging first"]);
        assert!(never.notes[0].starts_with("then 2 approvals before it starts (not yours)"));
        assert!(never.notes[1].starts_with("it queues behind"));

        let soaking = inputs(
            &fresh,
            &[(fresh.id, staging.id, now - Duration::minutes(20))],
        );
        assert!(
            soaking.blockers[0].starts_with("soak in staging until"),
            "{:?}",
            soaking.blockers
        );
        assert!(
            soaking.blockers[0].contains("40 min left of 1h"),
            "{:?}",
            soaking.blockers
        );

        let soaked = inputs(&fresh, &[(fresh.id, staging.id, now - Duration::hours(2))]);
        assert!(soaked.blockers.is_empty(), "{:?}", soaked.blockers);

        let bad = release("2.0.1", Some("error rate doubled"));
        let quarantined = inputs(&bad, &[(bad.id, staging.id, now - Duration::hours(2))]);
        assert_eq!(
            quarantined.blockers,
            ["clear its quarantine first (error rate doubled)"]
        );
    }
}
