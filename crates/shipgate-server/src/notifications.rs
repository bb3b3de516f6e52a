//! `GET /api/v1/apps/{app}/notifications`: what became of each notification of an app (its
//! channel, event, state, attempts and last error). Channel URLs and secrets are never shown.

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use shipgate_store::apps;
use shipgate_store::notifications::{self, Notification};

use crate::auth::{Caller, Scope, Target};
use crate::error::{ApiError, Problem};
use crate::AppState;

/// The routes under `/api/v1` that show notifications.
pub fn router() -> Router<AppState> {
    Router::new().route("/apps/{app}/notifications", get(list_notifications))
}

/// Cursor pagination of notifications, newest first.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct Page {
    /// The previous page's `next_cursor`: list what comes after it.
    #[serde(default)]
    before: Option<i64>,
    /// Items per page, 1 to 200 (default 50; out-of-range values are clamped).
    #[serde(default)]
    limit: Option<i64>,
}

/// A page of an app's notifications, newest first.
#[derive(Serialize, ToSchema)]
pub struct NotificationPage {
    /// The notifications.
    pub items: Vec<Notification>,
    /// Pass as `before` for the next page; null on the last page.
    pub next_cursor: Option<i64>,
}

/// An app's notifications and their delivery state, newest first, cursor-paginated
/// (`?before=<next_cursor>&limit=`). Spans every environment, so a token limited to one
/// environment may not read it.
#[utoipa::path(
    get,
    path = "/api/v1/apps/{app}/notifications",
    tag = "notifications",
    summary = "An app's notifications and what became of each",
    params(("app" = String, Path, description = "The app's name."), Page),
    responses(
        (status = 200, description = "A page of notifications.", body = NotificationPage),
        (status = 404, description = "No such app.", body = Problem, content_type = "application/problem+json"),
    ),
)]
async fn list_notifications(
    caller: Caller,
    State(state): State<AppState>,
    Path(app): Path<String>,
    Query(page): Query<Page>,
) -> Result<Json<NotificationPage>, ApiError> {
    caller.require(Scope::Read, Target::WholeApp(&app))?;
    let app = apps::get(&state.pool, &app).await?;
    let limit = crate::api::limit(page.limit);
    let items = notifications::list(&state.pool, app.id, page.before, limit).await?;
    let next_cursor = (items.len() as i64 == limit)
        .then(|| items.last().map(|notification| notification.id))
        .flatten();
    Ok(Json(NotificationPage { items, next_cursor }))
}
