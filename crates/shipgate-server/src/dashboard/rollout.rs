//! A rollout's page: the phase timeline with steps, gates and charts of their measurements,
//! approvals, the event log, and the actions a person takes (pause, resume, approve or reject
//! with a comment, retry, skip a gate, cancel, roll back). Each action sits behind a confirm
//! step naming what will happen; a refusal (by role or by policy) re-renders the page saying
//! why.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::Form;
use serde::Deserialize;
use uuid::Uuid;

use shipgate_store::apps;
use shipgate_store::dashboard::{self as views, ApprovalRecord, AuditFilter};
use shipgate_store::events::Event;
use shipgate_store::rollouts::{
    self, Action, CheckDetail, GateDetail, PhaseDetail, RollbackRequest, RolloutDetail,
};

use super::{charts, done, parse_uuid, render, Nav, PageError, Session};
use crate::auth::{Scope, Target};
use crate::AppState;

/// A gate as the timeline shows it.
struct GateView {
    detail: GateDetail,
    /// An SVG chart of its measurements (trusted: built by [`charts`] from numbers).
    chart: Option<String>,
    last: Option<CheckDetail>,
}

/// A phase as the timeline shows it.
struct PhaseView {
    detail: PhaseDetail,
    gates: Vec<GateView>,
    current: bool,
}

/// An action the session may take now, and what it will do.
pub(super) struct ActionView {
    /// Path segment (`pause`, `skip-gate`).
    name: &'static str,
    /// The summary's words (`Pause…`).
    label: &'static str,
    /// What will happen, in full.
    consequence: String,
    /// The confirm button's words.
    button: String,
    /// `None`: no comment field; `Some(true)`: a required one.
    comment: Option<bool>,
    /// Destructive (drawn in red).
    danger: bool,
}

#[derive(Template)]
#[template(path = "rollout.html")]
struct RolloutPage {
    nav: Nav,
    rollout: RolloutDetail,
    phases: Vec<PhaseView>,
    approvals: Vec<ApprovalRecord>,
    events: Vec<Event>,
    actions: Vec<ActionView>,
    /// Roll the environment back: what it will do.
    rollback: Option<String>,
    /// The release this rollout deploys is `forward_only`: the rollback form asks to confirm.
    forward_only: bool,
    /// Why the last action was refused.
    notice: Option<String>,
    /// Why the session sees no actions.
    no_actions: Option<String>,
    live: bool,
}

fn phase_name(rollout: &RolloutDetail) -> Option<&PhaseDetail> {
    rollout
        .current_phase
        .and_then(|index| rollout.phases.get(index))
}

/// The actions open on `rollout` for `session`, each with what it will do.
fn actions_for(session: &Session, rollout: &RolloutDetail) -> Vec<ActionView> {
    let target = Target::Environment(&rollout.app, &rollout.environment);
    let deploy = session.may(Scope::Deploy, target);
    let approve = session.may(Scope::Approve, target);
    let state = rollout.state.as_str();
    let phase = phase_name(rollout);
    let phase_label = phase.map_or_else(
        || "the current phase".to_owned(),
        |p| format!("phase “{}”", p.name),
    );
    let verifying = phase.is_some_and(|p| p.state == "verifying");
    let approval_gate =
        verifying && phase.is_some_and(|p| p.gates.iter().any(|g| g.kind == "approval"));
    let active = matches!(state, "in_progress" | "paused");
    let where_ = format!("{} / {}", rollout.app, rollout.environment);
    let mut actions = Vec::new();
    if approve && (state == "pending_approval" || (active && approval_gate)) {
        let consequence = if state == "pending_approval" {
            format!(
                "Approving lets {} start in {where_} once the approvals the environment requires are in; your approval is recorded with your comment.",
                rollout.release
            )
        } else {
            format!(
                "Approving passes the approval gate of {phase_label}; {} then continues to the next phase in {where_}.",
                rollout.release
            )
        };
        actions.push(ActionView {
            name: "approve",
            label: "Approve…",
            consequence,
            button: format!("Approve {}", rollout.release),
            comment: Some(false),
            danger: false,
        });
        actions.push(ActionView {
            name: "reject",
            label: "Reject…",
            consequence: format!(
                "Rejecting refuses {} in {where_}: the rollout stops at {phase_label} and follows the plan's on-failure rule. Say why: the comment is required and recorded.",
                rollout.release
            ),
            button: format!("Reject {}", rollout.release),
            comment: Some(true),
            danger: true,
        });
    }
    if deploy && state == "in_progress" {
        actions.push(ActionView {
            name: "pause",
            label: "Pause…",
            consequence: format!(
                "Pausing stops {where_} from starting new steps and gate checks of {phase_label}; what is running now finishes. The rollout waits until someone resumes, retries or cancels it."
            ),
            button: "Pause the rollout".into(),
            comment: Some(false),
            danger: false,
        });
    }
    if deploy && state == "paused" {
        actions.push(ActionView {
            name: "resume",
            label: "Resume…",
            consequence: format!(
                "Resuming continues {phase_label} of {} in {where_}, retrying what failed and counting gate checks from now.",
                rollout.release
            ),
            button: "Resume the rollout".into(),
            comment: Some(false),
            danger: false,
        });
    }
    if deploy && active {
        actions.push(ActionView {
            name: "retry",
            label: "Retry…",
            consequence: format!(
                "Retrying runs the failed step or gate of {phase_label} again as a new attempt; gate checks count from now{}.",
                if state == "paused" { ", and the rollout resumes" } else { "" }
            ),
            button: format!("Retry {phase_label}"),
            comment: Some(false),
            danger: false,
        });
    }
    if approve && active && verifying {
        actions.push(ActionView {
            name: "skip-gate",
            label: "Skip gates…",
            consequence: format!(
                "Skipping marks every gate of {phase_label} as passed by you (recorded in the audit log with your comment), and {} moves on to the next phase without that evidence.",
                rollout.release
            ),
            button: format!("Skip the gates of {phase_label}"),
            comment: Some(false),
            danger: true,
        });
    }
    if deploy && !rollout.finished && state != "rolling_back" {
        actions.push(ActionView {
            name: "cancel",
            label: "Cancel…",
            consequence: format!(
                "Cancelling stops this rollout of {} for good: no further steps run, and whatever it already deployed in {where_} stays deployed (roll back to undo that).",
                rollout.release
            ),
            button: "Cancel the rollout".into(),
            comment: Some(false),
            danger: true,
        });
    }
    actions
}

/// Builds the rollout page (`notice`: why the last action was refused).
async fn build(
    state: &AppState,
    session: &Session,
    id: Uuid,
    notice: Option<String>,
) -> Result<RolloutPage, PageError> {
    let rollout = rollouts::detail(&state.pool, id).await?;
    session.caller.require(
        Scope::Read,
        Target::Environment(&rollout.app, &rollout.environment),
    )?;
    let approvals = views::approvals(&state.pool, id).await?;
    let events = views::audit(
        &state.pool,
        &AuditFilter {
            rollout_id: Some(id),
            limit: 200,
            ..AuditFilter::default()
        },
    )
    .await?;
    let actions = actions_for(session, &rollout);
    let rollback = rollback_offer(state, session, &rollout).await?;
    let forward_only = match &rollback {
        Some(_) => {
            let app = apps::get(&state.pool, &rollout.app).await?;
            shipgate_store::releases::by_version(&state.pool, app.id, &rollout.release)
                .await?
                .forward_only
        }
        None => false,
    };
    let no_actions = (actions.is_empty() && rollback.is_none() && !rollout.finished).then(|| {
        format!(
            "Your role ({}) cannot act on this rollout now, or nothing is open to act on in its state ({}).",
            session.role.as_str(),
            rollout.state
        )
    });
    let current = rollout.current_phase;
    let phases = rollout
        .phases
        .iter()
        .enumerate()
        .map(|(index, phase)| PhaseView {
            gates: phase
                .gates
                .iter()
                .map(|gate| GateView {
                    chart: charts::gate_chart(&gate.description, &gate.checks),
                    last: gate.checks.last().cloned(),
                    detail: gate.clone(),
                })
                .collect(),
            detail: phase.clone(),
            current: current == Some(index),
        })
        .collect();
    Ok(RolloutPage {
        nav: session.nav(Some(&rollout.app), "rollout"),
        live: !rollout.finished,
        phases,
        approvals,
        events,
        actions,
        rollback,
        forward_only,
        notice,
        no_actions,
        rollout,
    })
}

/// What rolling the rollout's environment back would do, when the session may and it makes
/// sense from this page: the rollout is in flight, or it brought what the environment runs.
async fn rollback_offer(
    state: &AppState,
    session: &Session,
    rollout: &RolloutDetail,
) -> Result<Option<String>, PageError> {
    if rollout.kind == "rollback"
        || !session.may(
            Scope::Deploy,
            Target::Environment(&rollout.app, &rollout.environment),
        )
    {
        return Ok(None);
    }
    let in_flight = matches!(
        rollout.state.as_str(),
        "pending_approval" | "in_progress" | "paused"
    );
    if !in_flight {
        if rollout.state != "succeeded" {
            return Ok(None);
        }
        let environment =
            apps::environment(&state.pool, &rollout.app, &rollout.environment).await?;
        let current = views::current_releases(&state.pool, &[environment.id]).await?;
        if current.first().map(|(_, version)| version) != Some(&rollout.release) {
            return Ok(None);
        }
    }
    let to = rollout.previous_release.as_deref().map_or_else(
        || "the last known-good release".to_owned(),
        |v| format!("{v} (the last known-good release)"),
    );
    Ok(Some(format!(
        "Rolling back returns {} / {} to {to} at once, ahead of any queue: {} stops{}, is quarantined so automation never deploys it again, and auto-deploy pauses until someone resumes it. Canary steps and approval gates are skipped; health is still verified.",
        rollout.app,
        rollout.environment,
        rollout.release,
        if in_flight { " where it is" } else { " serving" },
    )))
}

pub(super) async fn page(
    session: Session,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Html<String>, PageError> {
    let id = parse_uuid(&id, "rollout")?;
    render(&build(&state, &session, id, None).await?)
}

/// Renders the rollout page again with the refusal on it (so the person sees the rollout as
/// it is now next to why their action did not happen).
async fn refused_on_page(
    state: &AppState,
    session: &Session,
    id: Uuid,
    error: PageError,
) -> Response {
    match build(state, session, id, Some(error.message.clone())).await {
        Ok(page) => match render(&page) {
            Ok(html) => (error.status, html).into_response(),
            Err(error) => error.into_response(),
        },
        Err(_) => error.into_response(),
    }
}

#[derive(Deserialize)]
pub(super) struct ActionForm {
    csrf: String,
    #[serde(default)]
    comment: String,
}

/// Takes an action on a rollout, with the same checks and store calls as the API's
/// `POST /api/v1/rollouts/{id}/{action}`.
pub(super) async fn act(
    session: Session,
    State(state): State<AppState>,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
) -> Response {
    let id = match parse_uuid(&id, "rollout") {
        Ok(id) => id,
        Err(error) => return error.into_response(),
    };
    if let Err(stale) = session.check_csrf(&form.csrf) {
        return stale.into_response();
    }
    match perform(&state, &session, id, &action, &form.comment).await {
        Ok(()) => done(&format!("/rollouts/{id}")),
        Err(error) if error.status == StatusCode::NOT_FOUND => error.into_response(),
        Err(error) => refused_on_page(&state, &session, id, error).await,
    }
}

async fn perform(
    state: &AppState,
    session: &Session,
    id: Uuid,
    action: &str,
    comment: &str,
) -> Result<(), PageError> {
    let target = rollouts::detail(&state.pool, id).await?;
    let needs = match action {
        "approve" | "reject" | "skip-gate" => Scope::Approve,
        _ => Scope::Deploy,
    };
    session
        .caller
        .require(needs, Target::Environment(&target.app, &target.environment))?;
    let actor = &session.caller.actor;
    let comment = Some(comment.trim()).filter(|c| !c.is_empty());
    match action {
        "approve" | "reject" => {
            let approve = action == "approve";
            if !approve && comment.is_none() {
                return Err(PageError::refused(
                    "Say why you reject it: the comment is required.",
                ));
            }
            rollouts::decide_approval(
                &state.pool,
                id,
                approve,
                actor,
                comment,
                session.caller.has(Scope::Admin),
            )
            .await?;
        }
        name => {
            let action = match name {
                "pause" => Action::Pause,
                "resume" => Action::Resume,
                "cancel" => Action::Cancel,
                "retry" => Action::Retry,
                "skip-gate" => Action::SkipGate,
                other => {
                    return Err(PageError::not_found(format!(
                        "no action `{other}`; actions are pause, resume, cancel, approve, reject, retry, skip-gate"
                    )))
                }
            };
            rollouts::act(&state.pool, id, action, actor, comment).await?;
        }
    }
    Ok(())
}

#[derive(Deserialize)]
pub(super) struct RollbackForm {
    csrf: String,
    #[serde(default)]
    reason: String,
    /// The rollout page the form was on (a refusal is shown there).
    #[serde(default)]
    from: Option<Uuid>,
    /// Present when the person confirmed rolling back a `forward_only` release.
    #[serde(default)]
    confirm_forward_only: Option<String>,
}

/// Rolls an environment back (as `POST /api/v1/apps/{app}/environments/{environment}/rollback`
/// does, with the trigger `manual`), then shows the rollback rollout.
pub(super) async fn roll_back(
    session: Session,
    State(state): State<AppState>,
    Path((app, environment)): Path<(String, String)>,
    Form(form): Form<RollbackForm>,
) -> Response {
    if let Err(stale) = session.check_csrf(&form.csrf) {
        return stale.into_response();
    }
    let started = async {
        session
            .caller
            .require(Scope::Deploy, Target::Environment(&app, &environment))?;
        if form.reason.trim().is_empty() {
            return Err(PageError::refused(
                "Say why you are rolling back: the reason is required.",
            ));
        }
        let environment = apps::environment(&state.pool, &app, &environment).await?;
        let id = rollouts::rollback(
            &state.pool,
            &environment,
            RollbackRequest {
                to_release: None,
                reason: form.reason.trim(),
                trigger: "manual",
                override_freeze: None,
                confirm_forward_only: form.confirm_forward_only.is_some(),
                detected_at: None,
                actor: &session.caller.actor,
            },
        )
        .await?;
        metrics::counter!("shipgate_rollbacks_total", "trigger" => "manual").increment(1);
        Ok::<Uuid, PageError>(id)
    }
    .await;
    match (started, form.from) {
        (Ok(id), _) => done(&format!("/rollouts/{id}")),
        (Err(error), Some(from)) if error.status != StatusCode::NOT_FOUND => {
            refused_on_page(&state, &session, from, error).await
        }
        (Err(error), _) => error.into_response(),
    }
}
