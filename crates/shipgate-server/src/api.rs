//! The JSON API under `/api/v1`: apply app configs, create releases, start rollouts, act on
//! them, roll back, and read everything back. Handlers are thin: extract, authorize, call the
//! store, map the result.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures::StreamExt as _;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use shipgate_domain::config;
use shipgate_domain::state::RolloutKind;
use shipgate_domain::Span;
use shipgate_store::apps;
use shipgate_store::events::{self, EventFilter};
use shipgate_store::releases::{self, Created, NewRelease};
use shipgate_store::rollouts::{self, Action, NewRollout, RollbackRequest};

use crate::auth::{Caller, Scope, Target};
use crate::error::ApiError;
use crate::extract::{parse_json, ApiJson};
use crate::AppState;

/// The `/api/v1` routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/apps", get(list_apps))
        .route("/apps/{app}", put(apply_app).get(get_app))
        .route(
            "/apps/{app}/releases",
            post(create_release).get(list_releases),
        )
        .route("/apps/{app}/releases/{version}", get(get_release))
        .route(
            "/apps/{app}/environments/{environment}",
            get(environment_status),
        )
        .route(
            "/apps/{app}/environments/{environment}/rollouts",
            post(start_rollout),
        )
        .route(
            "/apps/{app}/environments/{environment}/rollback",
            post(roll_back),
        )
        .route(
            "/apps/{app}/environments/{environment}/config",
            get(environment_config),
        )
        .route(
            "/apps/{app}/environments/{environment}/rollbacks",
            get(rollback_history),
        )
        .route(
            "/apps/{app}/environments/{environment}/auto-deploy/resume",
            post(resume_auto_deploy),
        )
        .route("/rollouts", get(list_rollouts))
        .route("/rollouts/{id}", get(get_rollout))
        .route("/rollouts/{id}/events", get(rollout_events))
        .route("/rollouts/{id}/{action}", post(act_on_rollout))
        .route("/events", get(list_events))
        .fallback(|| async {
            ApiError::NotFound("no such route; see the README's API overview".into())
        })
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    id.parse()
        .map_err(|_| ApiError::NotFound(format!("rollout {id} not found")))
}

/// Applies a config document (YAML or JSON). `${VAR}` references must already be resolved: the
/// server never reads its own environment into a config (that would leak its secrets), so
/// `shipgate apply` resolves them where it runs and an unresolved one is refused, naming its field.
async fn apply_app(
    caller: Caller,
    State(state): State<AppState>,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Scope::Admin, Target::WholeApp(&app))?;
    let actor = caller.actor;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let accepted = [
        "application/json",
        "application/yaml",
        "application/x-yaml",
        "text/yaml",
        "text/plain",
    ];
    if !accepted
        .iter()
        .any(|accepted| content_type.starts_with(accepted))
    {
        return Err(ApiError::UnsupportedMediaType(
            "send the config as application/yaml or application/json".into(),
        ));
    }
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::BadRequest("the body is not UTF-8".into()))?;
    let mut tree = config::parse_tree(text)?;
    config::resolve_variables(&mut tree, &|_| None).map_err(|mut error| {
        for field in &mut error.errors {
            field.message.push_str(
                " on the server, which never reads its own environment: resolve variables where you apply (shipgate apply does)",
            );
        }
        error
    })?;
    let document = config::validate(tree)?;
    if document.spec.app != app {
        return Err(ApiError::field(
            "app",
            format!(
                "the document declares app `{}` but was sent to /apps/{app}",
                document.spec.app
            ),
        ));
    }
    let outcome = apps::apply(&state.pool, &document, &state.secrets, &actor).await?;
    let status = if outcome.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(
            json!({ "app": app, "created": outcome.created, "changed": !outcome.changes.is_empty(), "changes": outcome.changes }),
        ),
    ))
}

async fn list_apps(
    caller: Caller,
    State(state): State<AppState>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(
        Scope::Read,
        caller.app_limit().map_or(Target::Global, Target::App),
    )?;
    let mut apps = apps::list(&state.pool).await?;
    if let Some(limit) = caller.app_limit() {
        apps.retain(|app| app.name == limit);
    }
    Ok(Json(json!({ "items": apps.iter().map(|a| json!({
        "name": a.name, "repository": a.spec.repository, "components": a.spec.components,
        "environments": a.spec.environments.iter().map(|e| &e.name).collect::<Vec<_>>(),
        "updated_at": a.updated_at,
    })).collect::<Vec<_>>() })))
}

async fn get_app(
    caller: Caller,
    State(state): State<AppState>,
    Path(app): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Scope::Read, Target::App(&app))?;
    let app = apps::get(&state.pool, &app).await?;
    Ok(Json(app))
}

async fn create_release(
    caller: Caller,
    State(state): State<AppState>,
    Path(app): Path<String>,
    ApiJson(release): ApiJson<NewRelease>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Scope::Deploy, Target::App(&app))?;
    let actor = caller.actor;
    let app = apps::get(&state.pool, &app).await?;
    releases::check(&release, &app.spec.components)
        .map_err(|(field, message)| ApiError::field(field, message))?;
    let (release, created) = releases::create(&state.pool, app.id, &release, &actor, "api").await?;
    let status = match created {
        Created::New => StatusCode::CREATED,
        Created::Existing => StatusCode::OK,
    };
    Ok((status, Json(release)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Page {
    #[serde(default)]
    before: Option<Uuid>,
    #[serde(default)]
    limit: Option<i64>,
}

fn limit(requested: Option<i64>) -> i64 {
    requested.unwrap_or(50).clamp(1, 200)
}

async fn list_releases(
    caller: Caller,
    State(state): State<AppState>,
    Path(app): Path<String>,
    Query(page): Query<Page>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Scope::Read, Target::App(&app))?;
    let app = apps::get(&state.pool, &app).await?;
    let limit = limit(page.limit);
    let items = releases::list(&state.pool, app.id, page.before, limit).await?;
    let next = (items.len() as i64 == limit)
        .then(|| items.last().map(|r| r.id))
        .flatten();
    Ok(Json(json!({ "items": items, "next_cursor": next })))
}

async fn get_release(
    caller: Caller,
    State(state): State<AppState>,
    Path((app, version)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Scope::Read, Target::App(&app))?;
    let app = apps::get(&state.pool, &app).await?;
    Ok(Json(
        releases::by_version(&state.pool, app.id, &version).await?,
    ))
}

async fn environment_status(
    caller: Caller,
    State(state): State<AppState>,
    Path((app, environment)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Scope::Read, Target::Environment(&app, &environment))?;
    let environment = apps::environment(&state.pool, &app, &environment).await?;
    let live = rollouts::live_components(&state.pool, environment.id).await?;
    let recent = rollouts::recent(&state.pool, Some(&app), Some(&environment.name), 10).await?;
    let in_flight = recent
        .iter()
        .find(|r| {
            matches!(
                r.state.as_str(),
                "pending_approval" | "in_progress" | "paused" | "rolling_back"
            )
        })
        .cloned();
    let current = rollouts::current_release_id(&state.pool, environment.id).await?;
    let current = match current {
        Some(id) => Some(releases::by_id(&state.pool, id).await?.version),
        None => None,
    };
    Ok(Json(json!({
        "app": app,
        "environment": environment.name,
        "current_release": current,
        "live": live,
        "in_flight": in_flight,
        "queued": recent.iter().filter(|r| r.state == "queued").collect::<Vec<_>>(),
        "auto_deploy": {
            "paused": environment.auto_deploy_paused_at.is_some(),
            "reason": environment.auto_deploy_paused_reason,
            "since": environment.auto_deploy_paused_at,
        },
        "policy": environment.policy,
        "recent": recent,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartRollout {
    release: String,
    #[serde(default)]
    kind: Option<String>,
}

async fn start_rollout(
    caller: Caller,
    State(state): State<AppState>,
    Path((app, environment)): Path<(String, String)>,
    ApiJson(body): ApiJson<StartRollout>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Scope::Deploy, Target::Environment(&app, &environment))?;
    let actor = caller.actor;
    let environment = apps::environment(&state.pool, &app, &environment).await?;
    let release = releases::by_version(&state.pool, environment.app_id, &body.release)
        .await
        .map_err(|error| match error {
            shipgate_store::StoreError::NotFound(_) => ApiError::field(
                "release",
                format!("release `{}` does not exist", body.release),
            ),
            other => other.into(),
        })?;
    let kind = match body.kind.as_deref() {
        None | Some("deploy") => RolloutKind::Deploy,
        Some("promote") => RolloutKind::Promote,
        Some(other) => {
            return Err(ApiError::field(
                "kind",
                format!("`{other}` is not `deploy` or `promote`"),
            ))
        }
    };
    let id = rollouts::start(
        &state.pool,
        NewRollout {
            environment: &environment,
            release: &release,
            kind,
            actor: &actor,
            trigger: "api",
        },
    )
    .await?;
    let detail = rollouts::detail(&state.pool, id).await?;
    Ok((StatusCode::CREATED, Json(detail)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rollback {
    #[serde(default)]
    to_release: Option<String>,
    reason: String,
}

async fn roll_back(
    caller: Caller,
    State(state): State<AppState>,
    Path((app, environment)): Path<(String, String)>,
    ApiJson(body): ApiJson<Rollback>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Scope::Deploy, Target::Environment(&app, &environment))?;
    let actor = caller.actor;
    if body.reason.trim().is_empty() {
        return Err(ApiError::field("reason", "say why you are rolling back"));
    }
    let environment = apps::environment(&state.pool, &app, &environment).await?;
    let id = rollouts::rollback(
        &state.pool,
        &environment,
        RollbackRequest {
            to_release: body.to_release.as_deref(),
            reason: &body.reason,
            trigger: "api",
            detected_at: None,
            actor: &actor,
        },
    )
    .await?;
    metrics::counter!("shipgate_rollbacks_total", "trigger" => "api").increment(1);
    Ok((
        StatusCode::CREATED,
        Json(rollouts::detail(&state.pool, id).await?),
    ))
}

async fn rollback_history(
    caller: Caller,
    State(state): State<AppState>,
    Path((app, environment)): Path<(String, String)>,
    Query(page): Query<Page>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Scope::Read, Target::Environment(&app, &environment))?;
    let environment = apps::environment(&state.pool, &app, &environment).await?;
    let items = rollouts::rollbacks(&state.pool, environment.id, limit(page.limit)).await?;
    Ok(Json(json!({ "items": items })))
}

/// The config vars and flags Shipgate set in an environment, with their history.
async fn environment_config(
    caller: Caller,
    State(state): State<AppState>,
    Path((app, environment)): Path<(String, String)>,
    Query(page): Query<Page>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Scope::Read, Target::Environment(&app, &environment))?;
    let environment = apps::environment(&state.pool, &app, &environment).await?;
    let (values, history) =
        rollouts::config(&state.pool, environment.id, limit(page.limit)).await?;
    Ok(Json(json!({ "values": values, "history": history })))
}

async fn resume_auto_deploy(
    caller: Caller,
    State(state): State<AppState>,
    Path((app, environment)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Scope::Deploy, Target::Environment(&app, &environment))?;
    let actor = caller.actor;
    let environment = apps::environment(&state.pool, &app, &environment).await?;
    rollouts::resume_auto_deploy(&state.pool, &environment, &actor).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RolloutFilter {
    #[serde(default)]
    app: Option<String>,
    #[serde(default)]
    environment: Option<String>,
    #[serde(default)]
    limit: Option<i64>,
}

async fn list_rollouts(
    caller: Caller,
    State(state): State<AppState>,
    Query(filter): Query<RolloutFilter>,
) -> Result<impl IntoResponse, ApiError> {
    // A limited token lists what it may see: its app (and environment) unless it asks for less.
    let app = filter.app.as_deref().or(caller.app_limit());
    let environment = filter.environment.as_deref().or(caller.environment_limit());
    match (app, environment) {
        (Some(app), Some(environment)) => {
            caller.require(Scope::Read, Target::Environment(app, environment))?
        }
        (Some(app), None) => caller.require(Scope::Read, Target::WholeApp(app))?,
        (None, _) => caller.require(Scope::Read, Target::Global)?,
    }
    let items = rollouts::recent(&state.pool, app, environment, limit(filter.limit)).await?;
    Ok(Json(json!({ "items": items })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wait {
    #[serde(default)]
    wait: Option<String>,
    /// Return as soon as the rollout's version differs from this one.
    #[serde(default)]
    since: Option<i64>,
}

/// Reads a rollout. With `?wait=60s` it long-polls: it answers when the rollout changes (or
/// already differs from `since`), ends, or the wait runs out, whichever comes first.
async fn get_rollout(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<Wait>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id)?;
    let detail = rollouts::detail(&state.pool, id).await?;
    caller.require(
        Scope::Read,
        Target::Environment(&detail.app, &detail.environment),
    )?;
    if query.wait.is_none() {
        return Ok(Json(detail));
    }
    if let Some(wait) = &query.wait {
        let wait: Span =
            wait.parse()
                .map_err(|error: shipgate_domain::duration::SpanParseError| {
                    ApiError::field("wait", error.to_string())
                })?;
        let wait = wait.to_std().min(Duration::from_secs(120));
        let mut updates = state.updates.subscribe();
        let (version, rollout_state) = rollouts::version(&state.pool, id).await?;
        let seen = query.since.unwrap_or(version);
        if seen == version && !rollout_state.is_terminal() {
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                let changed = tokio::time::timeout_at(deadline, updates.recv()).await;
                match changed {
                    Err(_) => break,
                    Ok(Ok(changed)) if changed != id => continue,
                    // A change of ours, or missed messages: look.
                    Ok(_) => {
                        let (now, _) = rollouts::version(&state.pool, id).await?;
                        if now != seen {
                            break;
                        }
                    }
                }
            }
        }
    }
    Ok(Json(rollouts::detail(&state.pool, id).await?))
}

/// Streams a rollout as server-sent events: `rollout` (the whole rollout, as `GET` answers it)
/// now and on every change, then one `verdict` (`{"outcome", "reason", "rollback"}`) when it
/// ends, and the stream closes. Changes arrive through NOTIFY, so a change made by any replica
/// is seen; a re-read every few seconds covers a missed notification.
async fn rollout_events(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use tokio::sync::broadcast::error::RecvError;

    let id = parse_id(&id)?;
    let first = rollouts::detail(&state.pool, id).await?;
    caller.require(
        Scope::Read,
        Target::Environment(&first.app, &first.environment),
    )?;
    let mut updates = state.updates.subscribe();
    let (sender, receiver) = tokio::sync::mpsc::channel::<Event>(16);
    let pool = state.pool.clone();
    tokio::spawn(async move {
        let mut next = Some(first);
        let mut last_version = None;
        loop {
            let detail = match next.take() {
                Some(detail) => detail,
                None => match rollouts::detail(&pool, id).await {
                    Ok(detail) => detail,
                    Err(error) => {
                        tracing::warn!(%error, rollout = %id, "event stream could not read the rollout");
                        let _ = sender
                            .send(
                                Event::default()
                                    .event("error")
                                    .data("the rollout could not be read; reconnect"),
                            )
                            .await;
                        return;
                    }
                },
            };
            if last_version != Some(detail.version) {
                last_version = Some(detail.version);
                let event = Event::default()
                    .event("rollout")
                    .id(detail.version.to_string())
                    .json_data(&detail)
                    .expect("a rollout serializes");
                if sender.send(event).await.is_err() {
                    return;
                }
                if let Some(verdict) = &detail.verdict {
                    let event = Event::default()
                        .event("verdict")
                        .json_data(verdict)
                        .expect("a verdict serializes");
                    let _ = sender.send(event).await;
                    return;
                }
            }
            let recheck = tokio::time::sleep(Duration::from_secs(5));
            tokio::pin!(recheck);
            loop {
                tokio::select! {
                    changed = updates.recv() => match changed {
                        Ok(changed) if changed != id => continue,
                        Ok(_) | Err(RecvError::Lagged(_)) => break,
                        Err(RecvError::Closed) => (&mut recheck).await,
                    },
                    () = &mut recheck => break,
                    () = sender.closed() => return,
                }
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(receiver)
        .map(Ok::<_, std::convert::Infallible>);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    #[serde(default)]
    comment: Option<String>,
}

async fn act_on_rollout(
    caller: Caller,
    State(state): State<AppState>,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id)?;
    let target = rollouts::detail(&state.pool, id).await?;
    let needs = match action.as_str() {
        "approve" | "reject" | "skip-gate" => Scope::Approve,
        _ => Scope::Deploy,
    };
    caller.require(needs, Target::Environment(&target.app, &target.environment))?;
    let self_approval_allowed = caller.has(Scope::Admin);
    let actor = caller.actor;
    let body: ActionBody = if body.is_empty() {
        ActionBody::default()
    } else {
        let is_json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !is_json {
            return Err(ApiError::UnsupportedMediaType(
                "send the body as application/json".into(),
            ));
        }
        parse_json(&body)?
    };
    let comment = body.comment.as_deref();
    match action.as_str() {
        "approve" | "reject" => {
            let approve = action == "approve";
            if !approve && comment.is_none_or(|c| c.trim().is_empty()) {
                return Err(ApiError::field("comment", "say why you reject it"));
            }
            // Admins may approve their own rollouts; others follow the environment's policy.
            rollouts::decide_approval(
                &state.pool,
                id,
                approve,
                &actor,
                comment,
                self_approval_allowed,
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
                    return Err(ApiError::NotFound(format!(
                        "no action `{other}`; actions are pause, resume, cancel, approve, reject, retry, skip-gate"
                    )))
                }
            };
            rollouts::act(&state.pool, id, action, &actor, comment).await?;
        }
    }
    Ok(Json(rollouts::detail(&state.pool, id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventQuery {
    #[serde(default)]
    app: Option<String>,
    #[serde(default)]
    rollout: Option<Uuid>,
    #[serde(default)]
    before: Option<i64>,
    #[serde(default)]
    after: Option<i64>,
    #[serde(default)]
    limit: Option<i64>,
}

async fn list_events(
    caller: Caller,
    State(state): State<AppState>,
    Query(mut query): Query<EventQuery>,
) -> Result<impl IntoResponse, ApiError> {
    if query.app.is_none() {
        query.app = caller.app_limit().map(str::to_owned);
    }
    match query.app.as_deref() {
        Some(app) => caller.require(Scope::Read, Target::App(app))?,
        None => caller.require(Scope::Read, Target::Global)?,
    }
    let limit = limit(query.limit);
    let items = events::list(
        &state.pool,
        &EventFilter {
            app: query.app,
            rollout_id: query.rollout,
            before: query.before,
            after: query.after,
            limit,
        },
    )
    .await?;
    let next: Option<Value> = (items.len() as i64 == limit && query.after.is_none())
        .then(|| items.last().map(|e| json!(e.id)))
        .flatten();
    Ok(Json(json!({ "items": items, "next_cursor": next })))
}
