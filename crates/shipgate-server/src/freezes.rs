//! Freeze windows over the API: list an app's windows (with whether each is on and its next
//! occurrences), create one-off or weekly windows, preview what a window would block before
//! creating it, and delete one.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use shipgate_store::apps;
use shipgate_store::freezes::{
    self, FreezePreview, FreezeTimes, FreezeWindow, NewFreeze, Occurrence,
};

use crate::auth::{Caller, Scope, Target};
use crate::error::{ApiError, Problem};
use crate::extract::ApiJson;
use crate::AppState;

/// The routes under `/api/v1` for freeze windows.
pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/apps/{app}/freeze-windows",
            get(list_freezes).post(create_freeze),
        )
        .route("/apps/{app}/freeze-windows/preview", post(preview_freeze))
        .route("/apps/{app}/freeze-windows/{id}", delete(delete_freeze))
}

/// A freeze window to create or preview: `starts_at` and `ends_at` for a one-off window, or
/// `weekly` (with `time_zone`) for one that recurs.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FreezeRequest {
    /// What it is (`holiday`, `launch day`): 1 to 100 characters.
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    /// The environment it freezes; every environment of the app when absent.
    #[serde(default)]
    pub environment: Option<String>,
    /// Start of a one-off window.
    #[serde(default)]
    pub starts_at: Option<DateTime<Utc>>,
    /// End (exclusive) of a one-off window.
    #[serde(default)]
    pub ends_at: Option<DateTime<Utc>>,
    /// A weekly window in local time: `"Fri 18:00-Mon 08:00"`, a list of such spans, or
    /// `{"days": ["sat", "sun"], "start": "00:00", "end": "24:00"}`.
    #[serde(default)]
    pub weekly: Option<Value>,
    /// The IANA time zone a weekly window is read in (default `UTC`), e.g. `Europe/Berlin`.
    #[serde(default)]
    pub time_zone: Option<String>,
    /// Whether rollouts people start (dashboard, API, CLI) are blocked (default true).
    #[serde(default = "yes")]
    pub blocks_manual: bool,
    /// Whether automatic rollouts (pushes, auto-promotion) are blocked (default true).
    #[serde(default = "yes")]
    pub blocks_automation: bool,
    /// Whether rollbacks may still run (default true).
    #[serde(default = "yes")]
    pub allows_rollback: bool,
    /// Why, shown wherever the window refuses something.
    #[serde(default)]
    pub reason: Option<String>,
}

fn yes() -> bool {
    true
}

/// A freeze window, whether it is on now, and its next occurrences.
#[derive(Serialize, ToSchema)]
pub struct ListedFreeze {
    /// The window.
    #[serde(flatten)]
    pub window: FreezeWindow,
    /// Whether it is on now (a window whose schedule cannot be read counts as on).
    pub on_now: bool,
    /// Its next occurrences, the current one first (up to three).
    pub next: Vec<Occurrence>,
}

/// An app's freeze windows.
#[derive(Serialize, ToSchema)]
pub struct FreezeList {
    /// The windows, current and future first.
    pub items: Vec<ListedFreeze>,
}

/// Checks the request and whether the caller may freeze what it names.
async fn new_freeze<'a>(
    caller: &Caller,
    state: &AppState,
    app: &str,
    request: &'a FreezeRequest,
    scope: Scope,
) -> Result<NewFreeze<'a>, ApiError> {
    match &request.environment {
        Some(environment) => caller.require(scope, Target::Environment(app, environment))?,
        None => caller.require(scope, Target::WholeApp(app))?,
    }
    let found = apps::get(&state.pool, app).await?;
    let environment = match &request.environment {
        Some(name) => {
            let environment = apps::environment(&state.pool, app, name).await?;
            Some((environment.id, environment.name))
        }
        None => None,
    };
    let name = request.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::field("name", "give 1 to 100 characters"));
    }
    let times = match (&request.weekly, request.starts_at, request.ends_at) {
        (None, Some(starts_at), Some(ends_at)) => {
            if request.time_zone.is_some() {
                return Err(ApiError::field(
                    "time_zone",
                    "only weekly windows have a time zone; one-off times are absolute",
                ));
            }
            FreezeTimes::OneOff { starts_at, ends_at }
        }
        (Some(weekly), None, None) => FreezeTimes::Weekly {
            weekly: weekly.clone(),
            time_zone: request.time_zone.clone().unwrap_or_else(|| "UTC".into()),
        },
        (Some(_), _, _) => {
            return Err(ApiError::field(
                "weekly",
                "give `weekly` or `starts_at` and `ends_at`, not both",
            ))
        }
        (None, None, _) => {
            return Err(ApiError::field(
                "starts_at",
                "give `starts_at` and `ends_at` for a one-off window, or `weekly`",
            ))
        }
        (None, Some(_), None) => {
            return Err(ApiError::field("ends_at", "a one-off window needs an end"))
        }
    };
    Ok(NewFreeze {
        app_id: found.id,
        environment,
        name,
        times,
        reason: request
            .reason
            .as_deref()
            .map(str::trim)
            .filter(|reason| !reason.is_empty()),
        blocks_manual: request.blocks_manual,
        blocks_automation: request.blocks_automation,
        allows_rollback: request.allows_rollback,
    })
}

#[utoipa::path(
    get,
    path = "/api/v1/apps/{app}/freeze-windows",
    tag = "freezes",
    summary = "An app's freeze windows",
    description = "Every freeze window of the app, with whether it is on now and its next \
        occurrences. Needs the `read` scope on the whole app.",
    params(("app" = String, Path, description = "The app's name.")),
    responses(
        (status = 200, description = "The windows.", body = FreezeList),
        (status = 403, description = "The token may not read the whole app.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such app.", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn list_freezes(
    caller: Caller,
    State(state): State<AppState>,
    Path(app): Path<String>,
) -> Result<Json<FreezeList>, ApiError> {
    caller.require(Scope::Read, Target::WholeApp(&app))?;
    let app = apps::get(&state.pool, &app).await?;
    let now = Utc::now();
    let items = freezes::list(&state.pool, app.id)
        .await?
        .into_iter()
        .map(|window| {
            let next = window
                .schedule()
                .map(|schedule| schedule.occurrences(now, 3))
                .unwrap_or_default()
                .into_iter()
                .map(|(starts_at, ends_at)| Occurrence { starts_at, ends_at })
                .collect();
            ListedFreeze {
                on_now: window.is_on(now),
                window,
                next,
            }
        })
        .collect();
    Ok(Json(FreezeList { items }))
}

#[utoipa::path(
    post,
    path = "/api/v1/apps/{app}/freeze-windows",
    tag = "freezes",
    summary = "Create a freeze window",
    description = "A one-off window (`starts_at`, `ends_at`) or a weekly one (`weekly`, \
        `time_zone`). While it is on, the rollouts it blocks are refused however they are asked \
        for, and rollouts already running are held before their next phase until it ends. \
        Needs the `deploy` scope on the environment it names, or on the whole app.",
    params(("app" = String, Path, description = "The app's name.")),
    request_body(content = FreezeRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "The window.", body = FreezeWindow),
        (status = 403, description = "The token may not deploy there.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such app or environment.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not sent as JSON.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The window cannot be read (times, schedule, time zone).", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn create_freeze(
    caller: Caller,
    State(state): State<AppState>,
    Path(app): Path<String>,
    ApiJson(request): ApiJson<FreezeRequest>,
) -> Result<(StatusCode, Json<FreezeWindow>), ApiError> {
    let new = new_freeze(&caller, &state, &app, &request, Scope::Deploy).await?;
    let window = freezes::create(&state.pool, &new, &caller.actor).await?;
    Ok((StatusCode::CREATED, Json(window)))
}

#[utoipa::path(
    post,
    path = "/api/v1/apps/{app}/freeze-windows/preview",
    tag = "freezes",
    summary = "Preview what a freeze window would block",
    description = "Creates nothing. Shows the window's next occurrences, the rollouts in flight \
        it would hold, and how many of the last 30 days' rollouts it would have refused (with up \
        to 20 of them). Needs the `read` scope on the environment it names, or the whole app.",
    params(("app" = String, Path, description = "The app's name.")),
    request_body(content = FreezeRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "What the window would do.", body = FreezePreview),
        (status = 403, description = "The token may not read there.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such app or environment.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not sent as JSON.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The window cannot be read (times, schedule, time zone).", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn preview_freeze(
    caller: Caller,
    State(state): State<AppState>,
    Path(app): Path<String>,
    ApiJson(request): ApiJson<FreezeRequest>,
) -> Result<Json<FreezePreview>, ApiError> {
    let new = new_freeze(&caller, &state, &app, &request, Scope::Read).await?;
    Ok(Json(freezes::preview(&state.pool, &new).await?))
}

#[utoipa::path(
    delete,
    path = "/api/v1/apps/{app}/freeze-windows/{id}",
    tag = "freezes",
    summary = "Delete a freeze window",
    description = "Lets what it blocked through again at once (held rollouts go on within a \
        minute). Needs the `approve` scope on the whole app.",
    params(
        ("app" = String, Path, description = "The app's name."),
        ("id" = Uuid, Path, description = "The window's id."),
    ),
    responses(
        (status = 204, description = "Deleted."),
        (status = 403, description = "The token may not approve for the whole app.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such app or window.", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn delete_freeze(
    caller: Caller,
    State(state): State<AppState>,
    Path((app, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::Approve, Target::WholeApp(&app))?;
    let app = apps::get(&state.pool, &app).await?;
    let id: Uuid = id
        .parse()
        .map_err(|_| ApiError::NotFound(format!("freeze window {id} not found")))?;
    freezes::delete(&state.pool, app.id, id, &caller.actor).await?;
    Ok(StatusCode::NO_CONTENT)
}
