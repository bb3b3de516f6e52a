//! The JSON API under `/api/v1`: apply app configs, create releases, start rollouts, act on
//! them, roll back, and read everything back. Handlers are thin: extract, authorize, call the
//! store, map the result.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use shipgate_domain::config;
use shipgate_domain::state::RolloutKind;
use shipgate_domain::Span;
use shipgate_store::apps::{self, App};
use shipgate_store::events::{self, Event, EventFilter};
use shipgate_store::line::{self, LineOutcome};
use shipgate_store::policy::FreezeOverride;
use shipgate_store::releases::{self, Created, NewRelease, Release};
use shipgate_store::rollouts::{
    self, Action, ConfigChange, ConfigEntry, LiveComponent, NewRollout, RollbackRecord,
    RollbackRequest, RolloutDetail, RolloutSummary,
};

use crate::auth::{Caller, Scope, Target};
use crate::cache::Cached;
use crate::error::{ApiError, Problem};
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
        .route("/apps/{app}/stop-the-line", post(stop_app_line))
        .route("/apps/{app}/resume-the-line", post(resume_app_line))
        .route("/stop-the-line", post(stop_every_line))
        .route("/resume-the-line", post(resume_every_line))
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

/// What applying a config document did.
#[derive(Serialize, ToSchema)]
pub struct Applied {
    /// The app the document declares.
    pub app: String,
    /// The app did not exist before.
    pub created: bool,
    /// Anything changed.
    pub changed: bool,
    /// One line per change (`environment staging: plan changed`); empty when nothing changed.
    pub changes: Vec<String>,
}

/// Applies a config document (YAML or JSON). `${VAR}` references must already be resolved: the
/// server never reads its own environment into a config (that would leak its secrets), so
/// `shipgate apply` resolves them where it runs and an unresolved one is refused, naming its field.
#[utoipa::path(
    put,
    path = "/api/v1/apps/{app}",
    tag = "apps",
    summary = "Apply an app's config document",
    params(("app" = String, Path, description = "The app's name; must equal the document's `app`.")),
    request_body(
        description = "The app's config document (see the README's config format), as YAML or JSON, with every `${VAR}` already resolved.",
        content(
            (String = "application/yaml"),
            (Object = "application/json"),
        ),
    ),
    responses(
        (status = 200, description = "The app existed; `changes` says what changed.", body = Applied),
        (status = 201, description = "The app was created.", body = Applied),
        (status = 409, description = "The document conflicts with stored state.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not sent as YAML or JSON.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The document is invalid; `errors` names each field at fault.", body = Problem, content_type = "application/problem+json"),
    ),
)]
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
        Json(Applied {
            app,
            created: outcome.created,
            changed: !outcome.changes.is_empty(),
            changes: outcome.changes,
        }),
    ))
}

/// An app as listed.
#[derive(Serialize, ToSchema)]
pub struct AppSummary {
    /// The app's name.
    pub name: String,
    /// The Git repository (`owner/name`) whose pushes make its releases, if declared.
    pub repository: Option<String>,
    /// Its components, in the order the config declares them.
    pub components: Vec<String>,
    /// Its environments, in promotion order.
    pub environments: Vec<String>,
    /// When its config was last applied with a change.
    pub updated_at: DateTime<Utc>,
}

/// A list of apps.
#[derive(Serialize, ToSchema)]
pub struct AppList {
    /// The apps, by name.
    pub items: Vec<AppSummary>,
}

#[utoipa::path(
    get,
    path = "/api/v1/apps",
    tag = "apps",
    summary = "List apps (a token limited to one app sees that one)",
    responses((status = 200, description = "The apps.", body = AppList)),
)]
async fn list_apps(
    caller: Caller,
    State(state): State<AppState>,
) -> Result<Json<AppList>, ApiError> {
    caller.require(
        Scope::Read,
        caller.app_limit().map_or(Target::Global, Target::App),
    )?;
    let mut apps = apps::list(&state.pool).await?;
    if let Some(limit) = caller.app_limit() {
        apps.retain(|app| app.name == limit);
    }
    let items = apps
        .into_iter()
        .map(|app| AppSummary {
            environments: app
                .spec
                .environments
                .iter()
                .map(|environment| environment.name.clone())
                .collect(),
            name: app.name,
            repository: app.spec.repository,
            components: app.spec.components,
            updated_at: app.updated_at,
        })
        .collect();
    Ok(Json(AppList { items }))
}

#[utoipa::path(
    get,
    path = "/api/v1/apps/{app}",
    tag = "apps",
    summary = "Read an app and its applied spec (no secrets)",
    params(("app" = String, Path, description = "The app's name.")),
    responses(
        (status = 200, description = "The app.", body = App),
        (status = 404, description = "No such app.", body = Problem, content_type = "application/problem+json"),
    ),
)]
async fn get_app(
    caller: Caller,
    State(state): State<AppState>,
    Path(app): Path<String>,
) -> Result<Json<App>, ApiError> {
    caller.require(Scope::Read, Target::App(&app))?;
    let app = apps::get(&state.pool, &app).await?;
    Ok(Json(app))
}

#[utoipa::path(
    post,
    path = "/api/v1/apps/{app}/releases",
    tag = "releases",
    summary = "Create a release (idempotent on version)",
    params(("app" = String, Path, description = "The app's name.")),
    request_body(content = NewRelease, content_type = "application/json"),
    responses(
        (status = 200, description = "The same release existed already.", body = Release),
        (status = 201, description = "The release was created.", body = Release),
        (status = 404, description = "No such app.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The version exists with other content.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not sent as JSON.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is invalid (an unknown component, a missing artifact, ...).", body = Problem, content_type = "application/problem+json"),
    ),
)]
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

/// Cursor pagination of a list, newest first.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct Page {
    /// The previous page's `next_cursor`: list what comes after it.
    #[serde(default)]
    pub(crate) before: Option<Uuid>,
    /// Items per page, 1 to 200 (default 50; out-of-range values are clamped).
    #[serde(default)]
    pub(crate) limit: Option<i64>,
}

/// A page of releases, newest first.
#[derive(Serialize, ToSchema)]
pub struct ReleasePage {
    /// The releases.
    pub items: Vec<Release>,
    /// Pass as `before` for the next page; null on the last page.
    pub next_cursor: Option<Uuid>,
}

/// A page size as asked for, clamped to 1..=200 (default 50).
pub(crate) fn limit(requested: Option<i64>) -> i64 {
    requested.unwrap_or(50).clamp(1, 200)
}

#[utoipa::path(
    get,
    path = "/api/v1/apps/{app}/releases",
    tag = "releases",
    summary = "List an app's releases, newest first",
    params(("app" = String, Path, description = "The app's name."), Page),
    responses(
        (status = 200, description = "A page of releases.", body = ReleasePage),
        (status = 404, description = "No such app.", body = Problem, content_type = "application/problem+json"),
    ),
)]
async fn list_releases(
    caller: Caller,
    State(state): State<AppState>,
    Path(app): Path<String>,
    Query(page): Query<Page>,
) -> Result<Json<ReleasePage>, ApiError> {
    caller.require(Scope::Read, Target::App(&app))?;
    let app = apps::get(&state.pool, &app).await?;
    let limit = limit(page.limit);
    let items = releases::list(&state.pool, app.id, page.before, limit).await?;
    let next = (items.len() as i64 == limit)
        .then(|| items.last().map(|r| r.id))
        .flatten();
    Ok(Json(ReleasePage {
        items,
        next_cursor: next,
    }))
}

#[utoipa::path(
    get,
    path = "/api/v1/apps/{app}/releases/{version}",
    tag = "releases",
    summary = "Read one release",
    params(
        ("app" = String, Path, description = "The app's name."),
        ("version" = String, Path, description = "The release's version."),
    ),
    responses(
        (status = 200, description = "The release.", body = Release),
        (status = 404, description = "No such app or release.", body = Problem, content_type = "application/problem+json"),
    ),
)]
async fn get_release(
    caller: Caller,
    State(state): State<AppState>,
    Path((app, version)): Path<(String, String)>,
) -> Result<Json<Release>, ApiError> {
    caller.require(Scope::Read, Target::App(&app))?;
    let app = apps::get(&state.pool, &app).await?;
    Ok(Json(
        releases::by_version(&state.pool, app.id, &version).await?,
    ))
}

/// Whether auto-deploy (webhook pushes) is paused in an environment.
#[derive(Serialize, ToSchema)]
pub struct AutoDeployStatus {
    /// Paused: pushes make releases but deploy nothing here until resumed.
    pub paused: bool,
    /// Why it was paused (such as a rollback).
    pub reason: Option<String>,
    /// Since when.
    pub since: Option<DateTime<Utc>>,
}

/// An environment now: what is live, what is moving, what waits.
#[derive(Serialize, ToSchema)]
pub struct EnvironmentStatus {
    /// The app's name.
    pub app: String,
    /// The environment's name.
    pub environment: String,
    /// The version of the last release that finished rolling out here, if any.
    pub current_release: Option<String>,
    /// The release live on each component, with drift.
    pub live: Vec<LiveComponent>,
    /// The rollout holding the environment (awaiting approval, running, paused or rolling back).
    pub in_flight: Option<RolloutSummary>,
    /// Rollouts waiting their turn.
    pub queued: Vec<RolloutSummary>,
    /// Whether pushes deploy here.
    pub auto_deploy: AutoDeployStatus,
    /// The environment's policy: approvals, who may approve, freeze windows and similar rules,
    /// as its config declares it.
    #[schema(value_type = Object)]
    pub policy: shipgate_domain::config::Policy,
    /// The ten most recent rollouts, newest first.
    pub recent: Vec<RolloutSummary>,
}

#[utoipa::path(
    get,
    path = "/api/v1/apps/{app}/environments/{environment}",
    tag = "environments",
    summary = "An environment's live releases, in-flight and queued rollouts and auto-deploy pause",
    params(
        ("app" = String, Path, description = "The app's name."),
        ("environment" = String, Path, description = "The environment's name."),
    ),
    responses(
        (status = 200, description = "The environment now.", body = EnvironmentStatus),
        (status = 404, description = "No such app or environment.", body = Problem, content_type = "application/problem+json"),
    ),
)]
async fn environment_status(
    caller: Caller,
    State(state): State<AppState>,
    Path((app, environment)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Read, Target::Environment(&app, &environment))?;
    // Served from memory while nothing it shows changed (see `crate::cache`).
    let key = (app, environment);
    if let Some(body) = state.statuses.get(&key) {
        return Ok(json_body(body));
    }
    let ticket = state.statuses.ticket(&key);
    let status = read_environment_status(&state, &key.0, &key.1).await?;
    let body = Bytes::from(
        serde_json::to_vec(&status)
            .map_err(|error| ApiError::Internal(format!("environment status as JSON: {error}")))?,
    );
    state.statuses.put(key, ticket, body.clone());
    Ok(json_body(body))
}

async fn read_environment_status(
    state: &AppState,
    app: &str,
    environment: &str,
) -> Result<EnvironmentStatus, ApiError> {
    let environment = apps::environment(&state.pool, app, environment).await?;
    let live = rollouts::live_components(&state.pool, environment.id).await?;
    let recent = rollouts::recent(&state.pool, Some(app), Some(&environment.name), 10).await?;
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
    Ok(EnvironmentStatus {
        app: app.to_owned(),
        environment: environment.name,
        current_release: current,
        live,
        in_flight,
        queued: recent
            .iter()
            .filter(|r| r.state == "queued")
            .cloned()
            .collect(),
        auto_deploy: AutoDeployStatus {
            paused: environment.auto_deploy_paused_at.is_some(),
            reason: environment.auto_deploy_paused_reason,
            since: environment.auto_deploy_paused_at,
        },
        policy: environment.policy,
        recent,
    })
}

/// A request to roll a release out to an environment.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct StartRollout {
    /// The version of an existing release of the app.
    release: String,
    /// `deploy` (the default) or `promote` (from the previous environment in the promotion order).
    #[serde(default)]
    #[schema(pattern = "^(deploy|promote)$")]
    kind: Option<String>,
    /// Start it despite the freeze windows that would refuse it (`admin` scope only; audited
    /// as `freeze.overridden` with the reason and the windows).
    #[serde(default)]
    override_freeze: Option<OverrideFreeze>,
}

/// An admin's override of freeze windows.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct OverrideFreeze {
    /// Why the freeze may not hold this time, for the audit log (not blank).
    #[schema(pattern = "\\S")]
    reason: String,
}

/// The store's override from the request's, once the caller may give one (403 otherwise).
fn freeze_override<'a>(
    caller: &Caller,
    requested: Option<&'a OverrideFreeze>,
) -> Result<Option<FreezeOverride<'a>>, ApiError> {
    let Some(requested) = requested else {
        return Ok(None);
    };
    if !caller.has(Scope::Admin) {
        return Err(ApiError::Forbidden(
            "overriding a freeze window needs the `admin` scope".into(),
        ));
    }
    if requested.reason.trim().is_empty() {
        return Err(ApiError::field(
            "override_freeze.reason",
            "say why the freeze may not hold",
        ));
    }
    Ok(Some(FreezeOverride {
        reason: &requested.reason,
    }))
}

#[utoipa::path(
    post,
    path = "/api/v1/apps/{app}/environments/{environment}/rollouts",
    tag = "rollouts",
    summary = "Start a rollout (it starts, waits for approval, or queues)",
    params(
        ("app" = String, Path, description = "The app's name."),
        ("environment" = String, Path, description = "The environment's name."),
    ),
    request_body(content = StartRollout, content_type = "application/json"),
    responses(
        (status = 201, description = "The rollout was created.", body = RolloutDetail),
        (status = 404, description = "No such app or environment.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Conflicts with the environment's state.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not sent as JSON.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token may not deploy here, or overrides a freeze without the `admin` scope.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "No such release, a bad `kind`, or refused by policy: a quarantined release, one the promotion rule does not let in yet (not succeeded in the `from` environment, or still soaking there), a freeze window that blocks it, or a stopped line (the detail names them).", body = Problem, content_type = "application/problem+json"),
    ),
)]
async fn start_rollout(
    caller: Caller,
    State(state): State<AppState>,
    Path((app, environment)): Path<(String, String)>,
    ApiJson(body): ApiJson<StartRollout>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Scope::Deploy, Target::Environment(&app, &environment))?;
    let override_freeze = freeze_override(&caller, body.override_freeze.as_ref())?;
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
            override_freeze,
        },
    )
    .await?;
    let detail = rollouts::detail(&state.pool, id).await?;
    Ok((StatusCode::CREATED, Json(detail)))
}

/// A request to roll an environment back now.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Rollback {
    /// The version to return to (default: the release live before the current one).
    #[serde(default)]
    to_release: Option<String>,
    /// Why, for the audit log and the people on call (not blank).
    #[schema(pattern = "\\S")]
    reason: String,
    /// Roll back despite freeze windows that do not allow rollbacks (`admin` scope only;
    /// audited as `freeze.overridden`).
    #[serde(default)]
    override_freeze: Option<OverrideFreeze>,
    /// Roll back although the release being undone is `forward_only` (its migrations stay);
    /// without it such a rollback is refused with 422 saying so.
    #[serde(default)]
    confirm_forward_only: bool,
}

#[utoipa::path(
    post,
    path = "/api/v1/apps/{app}/environments/{environment}/rollback",
    tag = "rollouts",
    summary = "Roll an environment back now",
    params(
        ("app" = String, Path, description = "The app's name."),
        ("environment" = String, Path, description = "The environment's name."),
    ),
    request_body(content = Rollback, content_type = "application/json"),
    responses(
        (status = 201, description = "The rollback rollout was created.", body = RolloutDetail),
        (status = 404, description = "No such app, environment or release.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Conflicts with the environment's state.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not sent as JSON.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token may not deploy here, or overrides a freeze without the `admin` scope.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "No reason given, nothing to roll back to, or a freeze window that does not allow rollbacks (the detail names it).", body = Problem, content_type = "application/problem+json"),
    ),
)]
async fn roll_back(
    caller: Caller,
    State(state): State<AppState>,
    Path((app, environment)): Path<(String, String)>,
    ApiJson(body): ApiJson<Rollback>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Scope::Deploy, Target::Environment(&app, &environment))?;
    if body.reason.trim().is_empty() {
        return Err(ApiError::field("reason", "say why you are rolling back"));
    }
    let override_freeze = freeze_override(&caller, body.override_freeze.as_ref())?;
    let actor = caller.actor;
    let environment = apps::environment(&state.pool, &app, &environment).await?;
    let id = rollouts::rollback(
        &state.pool,
        &environment,
        RollbackRequest {
            to_release: body.to_release.as_deref(),
            reason: &body.reason,
            trigger: "api",
            override_freeze,
            confirm_forward_only: body.confirm_forward_only,
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

/// An environment's rollbacks, newest first.
#[derive(Serialize, ToSchema)]
pub struct RollbackList {
    /// The rollbacks.
    pub items: Vec<RollbackRecord>,
}

#[utoipa::path(
    get,
    path = "/api/v1/apps/{app}/environments/{environment}/rollbacks",
    tag = "environments",
    summary = "An environment's rollback history",
    params(
        ("app" = String, Path, description = "The app's name."),
        ("environment" = String, Path, description = "The environment's name."),
        Page,
    ),
    responses(
        (status = 200, description = "The rollbacks, newest first (`before` is ignored).", body = RollbackList),
        (status = 404, description = "No such app or environment.", body = Problem, content_type = "application/problem+json"),
    ),
)]
async fn rollback_history(
    caller: Caller,
    State(state): State<AppState>,
    Path((app, environment)): Path<(String, String)>,
    Query(page): Query<Page>,
) -> Result<Json<RollbackList>, ApiError> {
    caller.require(Scope::Read, Target::Environment(&app, &environment))?;
    let environment = apps::environment(&state.pool, &app, &environment).await?;
    let items = rollouts::rollbacks(&state.pool, environment.id, limit(page.limit)).await?;
    Ok(Json(RollbackList { items }))
}

/// The config vars and flags Shipgate set in an environment.
#[derive(Serialize, ToSchema)]
pub struct EnvironmentConfig {
    /// The values now, by component and key.
    pub values: Vec<ConfigEntry>,
    /// Recent changes, newest first (`limit` of them).
    pub history: Vec<ConfigChange>,
}

/// The config vars and flags Shipgate set in an environment, with their history.
#[utoipa::path(
    get,
    path = "/api/v1/apps/{app}/environments/{environment}/config",
    tag = "environments",
    summary = "The config vars and flags Shipgate set in an environment, with their history",
    params(
        ("app" = String, Path, description = "The app's name."),
        ("environment" = String, Path, description = "The environment's name."),
        Page,
    ),
    responses(
        (status = 200, description = "Values and history (`before` is ignored).", body = EnvironmentConfig),
        (status = 404, description = "No such app or environment.", body = Problem, content_type = "application/problem+json"),
    ),
)]
async fn environment_config(
    caller: Caller,
    State(state): State<AppState>,
    Path((app, environment)): Path<(String, String)>,
    Query(page): Query<Page>,
) -> Result<Json<EnvironmentConfig>, ApiError> {
    caller.require(Scope::Read, Target::Environment(&app, &environment))?;
    let environment = apps::environment(&state.pool, &app, &environment).await?;
    let (values, history) =
        rollouts::config(&state.pool, environment.id, limit(page.limit)).await?;
    Ok(Json(EnvironmentConfig { values, history }))
}

#[utoipa::path(
    post,
    path = "/api/v1/apps/{app}/environments/{environment}/auto-deploy/resume",
    tag = "environments",
    summary = "Clear an environment's auto-deploy pause",
    params(
        ("app" = String, Path, description = "The app's name."),
        ("environment" = String, Path, description = "The environment's name."),
    ),
    responses(
        (status = 204, description = "Auto-deploy is on (whether or not it was paused)."),
        (status = 404, description = "No such app or environment.", body = Problem, content_type = "application/problem+json"),
    ),
)]
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

/// A request to stop the line.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct StopTheLine {
    /// Why, for the audit log, the paused rollouts and every start refused meanwhile (not blank).
    #[schema(pattern = "\\S")]
    reason: String,
}

fn line_reason(body: &StopTheLine) -> Result<&str, ApiError> {
    match body.reason.trim() {
        "" => Err(ApiError::field("reason", "say why you stop the line")),
        reason => Ok(reason),
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/apps/{app}/stop-the-line",
    tag = "rollouts",
    summary = "Stop the line of an app: pause its rollouts in progress and start nothing new",
    description = "Pauses every rollout in progress in the app's environments (rollbacks excepted) \
        and holds back queued and approved ones; new rollouts are refused, naming the reason, \
        until the line is resumed. Rollbacks are still allowed. Stopping a stopped line keeps its \
        reason. Needs the `deploy` scope on the whole app.",
    params(("app" = String, Path, description = "The app's name.")),
    request_body(content = StopTheLine, content_type = "application/json"),
    responses(
        (status = 200, description = "The line is stopped; the rollouts this call paused.", body = LineOutcome),
        (status = 403, description = "The token may not deploy to the whole app.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such app.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not sent as JSON.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "No reason given.", body = Problem, content_type = "application/problem+json"),
    ),
)]
async fn stop_app_line(
    caller: Caller,
    State(state): State<AppState>,
    Path(app): Path<String>,
    ApiJson(body): ApiJson<StopTheLine>,
) -> Result<Json<LineOutcome>, ApiError> {
    caller.require(Scope::Deploy, Target::WholeApp(&app))?;
    let reason = line_reason(&body)?;
    let app = apps::get(&state.pool, &app).await?;
    Ok(Json(
        line::stop(&state.pool, Some(app.id), reason, &caller.actor).await?,
    ))
}

#[utoipa::path(
    post,
    path = "/api/v1/apps/{app}/resume-the-line",
    tag = "rollouts",
    summary = "Resume the line of an app",
    description = "Clears the stop and resumes exactly the rollouts it paused (not ones paused \
        for other reasons); queued and approved rollouts go ahead. Resuming a running line does \
        nothing. Needs the `deploy` scope on the whole app.",
    params(("app" = String, Path, description = "The app's name.")),
    responses(
        (status = 200, description = "The line runs; the rollouts this call resumed.", body = LineOutcome),
        (status = 403, description = "The token may not deploy to the whole app.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such app.", body = Problem, content_type = "application/problem+json"),
    ),
)]
async fn resume_app_line(
    caller: Caller,
    State(state): State<AppState>,
    Path(app): Path<String>,
) -> Result<Json<LineOutcome>, ApiError> {
    caller.require(Scope::Deploy, Target::WholeApp(&app))?;
    let app = apps::get(&state.pool, &app).await?;
    Ok(Json(
        line::resume(&state.pool, Some(app.id), &caller.actor).await?,
    ))
}

#[utoipa::path(
    post,
    path = "/api/v1/stop-the-line",
    tag = "rollouts",
    summary = "Stop the line of every app",
    description = "What `POST /api/v1/apps/{app}/stop-the-line` does, for every app at once. \
        Needs the `admin` scope.",
    request_body(content = StopTheLine, content_type = "application/json"),
    responses(
        (status = 200, description = "Every line is stopped; the rollouts this call paused.", body = LineOutcome),
        (status = 403, description = "The token is not an admin's.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not sent as JSON.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "No reason given.", body = Problem, content_type = "application/problem+json"),
    ),
)]
async fn stop_every_line(
    caller: Caller,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<StopTheLine>,
) -> Result<Json<LineOutcome>, ApiError> {
    caller.require(Scope::Admin, Target::Global)?;
    let reason = line_reason(&body)?;
    Ok(Json(
        line::stop(&state.pool, None, reason, &caller.actor).await?,
    ))
}

#[utoipa::path(
    post,
    path = "/api/v1/resume-the-line",
    tag = "rollouts",
    summary = "Resume the line of every app",
    description = "Clears every app's stop (including stops of single apps) and resumes the \
        rollouts those stops paused. Needs the `admin` scope.",
    responses(
        (status = 200, description = "Every line runs; the rollouts this call resumed.", body = LineOutcome),
        (status = 403, description = "The token is not an admin's.", body = Problem, content_type = "application/problem+json"),
    ),
)]
async fn resume_every_line(
    caller: Caller,
    State(state): State<AppState>,
) -> Result<Json<LineOutcome>, ApiError> {
    caller.require(Scope::Admin, Target::Global)?;
    Ok(Json(line::resume(&state.pool, None, &caller.actor).await?))
}

/// Which rollouts to list.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct RolloutFilter {
    /// Only this app's (a token limited to an app lists its app's).
    #[serde(default)]
    app: Option<String>,
    /// Only this environment's.
    #[serde(default)]
    environment: Option<String>,
    /// How many, 1 to 200 (default 50; out-of-range values are clamped).
    #[serde(default)]
    limit: Option<i64>,
}

/// Recent rollouts, newest first.
#[derive(Serialize, ToSchema)]
pub struct RolloutList {
    /// The rollouts.
    pub items: Vec<RolloutSummary>,
}

#[utoipa::path(
    get,
    path = "/api/v1/rollouts",
    tag = "rollouts",
    summary = "Recent rollouts, newest first",
    params(RolloutFilter),
    responses((status = 200, description = "The rollouts.", body = RolloutList)),
)]
async fn list_rollouts(
    caller: Caller,
    State(state): State<AppState>,
    Query(filter): Query<RolloutFilter>,
) -> Result<Json<RolloutList>, ApiError> {
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
    Ok(Json(RolloutList { items }))
}

/// How long to long-poll a rollout.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct Wait {
    /// Wait up to this long (such as `60s`; at most 120 seconds) for a change.
    #[serde(default)]
    wait: Option<String>,
    /// Return as soon as the rollout's version differs from this one.
    #[serde(default)]
    since: Option<i64>,
}

/// Reads a rollout. With `?wait=60s` it long-polls: it answers when the rollout changes (or
/// already differs from `since`), ends, or the wait runs out, whichever comes first.
#[utoipa::path(
    get,
    path = "/api/v1/rollouts/{id}",
    tag = "rollouts",
    summary = "Read a rollout, optionally long-polling until it changes",
    params(("id" = Uuid, Path, description = "The rollout's id."), Wait),
    responses(
        (status = 200, description = "The rollout with its phases, step attempts and gate checks.", body = RolloutDetail),
        (status = 404, description = "No such rollout.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`wait` is not a duration.", body = Problem, content_type = "application/problem+json"),
    ),
)]
async fn get_rollout(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<Wait>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    if query.wait.is_none() {
        // A rollout that did not change since it was last read comes from memory (see
        // `crate::cache` for what keeps it exact).
        if let Some(hit) = state.rollouts.get(&id) {
            caller.require(Scope::Read, Target::Environment(&hit.app, &hit.environment))?;
            return Ok(json_body(hit.body));
        }
        let ticket = state.rollouts.ticket(&id);
        let detail = rollouts::detail(&state.pool, id).await?;
        caller.require(
            Scope::Read,
            Target::Environment(&detail.app, &detail.environment),
        )?;
        let body = Bytes::from(
            serde_json::to_vec(&detail)
                .map_err(|error| ApiError::Internal(format!("rollout as JSON: {error}")))?,
        );
        state.rollouts.put(
            id,
            ticket,
            Cached {
                body: body.clone(),
                app: detail.app,
                environment: detail.environment,
            },
        );
        return Ok(json_body(body));
    }
    let detail = rollouts::detail(&state.pool, id).await?;
    caller.require(
        Scope::Read,
        Target::Environment(&detail.app, &detail.environment),
    )?;
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
    Ok(Json(rollouts::detail(&state.pool, id).await?).into_response())
}

/// A JSON body already serialized.
fn json_body(body: Bytes) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// Streams a rollout as server-sent events: `rollout` (the whole rollout, as `GET` answers it)
/// now and on every change, then one `verdict` (`{"outcome", "reason", "rollback"}`) when it
/// ends, and the stream closes. Changes arrive through NOTIFY, so a change made by any replica
/// is seen; a re-read every few seconds covers a missed notification.
#[utoipa::path(
    get,
    path = "/api/v1/rollouts/{id}/events",
    tag = "rollouts",
    summary = "Follow a rollout as server-sent events until it ends",
    params(("id" = Uuid, Path, description = "The rollout's id.")),
    responses(
        (status = 200, description = "An event stream: `rollout` events (the rollout, as `GET /api/v1/rollouts/{id}` answers it) on every change, then one `verdict` event (`{\"outcome\", \"reason\", \"rollback\"}`), then the stream ends.", body = String, content_type = "text/event-stream"),
        (status = 404, description = "No such rollout.", body = Problem, content_type = "application/problem+json"),
    ),
)]
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

/// A person's note on an action.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    /// Why (required to reject), for the audit log.
    #[serde(default)]
    comment: Option<String>,
}

/// What a person can do to a rollout.
#[derive(ToSchema)]
#[schema(rename_all = "kebab-case")]
#[expect(
    dead_code,
    reason = "documents the `{action}` path segment, which is parsed by name"
)]
enum RolloutActionName {
    /// Stop between steps until resumed.
    Pause,
    /// Carry on after a pause.
    Resume,
    /// Stop for good.
    Cancel,
    /// Approve a rollout waiting for approval (or an approval gate).
    Approve,
    /// Refuse it (needs a `comment`).
    Reject,
    /// Try the failed step again.
    Retry,
    /// Treat the current gate as passed.
    SkipGate,
}

#[utoipa::path(
    post,
    path = "/api/v1/rollouts/{id}/{action}",
    tag = "rollouts",
    summary = "Act on a rollout: pause, resume, cancel, approve, reject, retry or skip a gate",
    params(
        ("id" = Uuid, Path, description = "The rollout's id."),
        ("action" = inline(RolloutActionName), Path, description = "The action."),
    ),
    request_body(content = Option<ActionBody>, content_type = "application/json", description = "Optional; `reject` needs a comment."),
    responses(
        (status = 200, description = "The rollout after the action.", body = RolloutDetail),
        (status = 404, description = "No such rollout or action.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The rollout changed meanwhile; try again.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "A body not sent as JSON.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not possible in the rollout's state, or a reject without a comment.", body = Problem, content_type = "application/problem+json"),
    ),
)]
async fn act_on_rollout(
    caller: Caller,
    State(state): State<AppState>,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<RolloutDetail>, ApiError> {
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

/// Which audit records to list.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct EventQuery {
    /// Only this app's.
    #[serde(default)]
    app: Option<String>,
    /// Only this rollout's.
    #[serde(default)]
    rollout: Option<Uuid>,
    /// Records older than this id (the previous page's `next_cursor`).
    #[serde(default)]
    before: Option<i64>,
    /// Records newer than this id, oldest first (for following the log).
    #[serde(default)]
    after: Option<i64>,
    /// How many, 1 to 200 (default 50; out-of-range values are clamped).
    #[serde(default)]
    limit: Option<i64>,
}

/// A page of the audit log.
#[derive(Serialize, ToSchema)]
pub struct EventPage {
    /// The records.
    pub items: Vec<Event>,
    /// Pass as `before` for the next page; null on the last page and when following with `after`.
    pub next_cursor: Option<i64>,
}

#[utoipa::path(
    get,
    path = "/api/v1/events",
    tag = "events",
    summary = "The audit log",
    params(EventQuery),
    responses((status = 200, description = "A page of audit records.", body = EventPage)),
)]
async fn list_events(
    caller: Caller,
    State(state): State<AppState>,
    Query(mut query): Query<EventQuery>,
) -> Result<Json<EventPage>, ApiError> {
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
    let next_cursor = (items.len() as i64 == limit && query.after.is_none())
        .then(|| items.last().map(|event| event.id))
        .flatten();
    Ok(Json(EventPage { items, next_cursor }))
}
