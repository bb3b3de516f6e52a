//! Operations endpoints: liveness, readiness and Prometheus metrics.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::{self, Scope, Target};
use crate::error::ApiError;
use crate::AppState;

/// `/healthz`, `/readyz`, `/metrics`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// Whether the process is up, or can serve.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok` (liveness), `ready` or `unavailable` (readiness).
    pub status: String,
    /// Why it cannot serve; only when `unavailable`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Health {
    fn status(status: &str) -> Self {
        Health {
            status: status.to_owned(),
            reason: None,
        }
    }
}

/// The process is up.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    summary = "Liveness",
    security(()),
    responses((status = 200, description = "The process is up.", body = Health)),
)]
async fn healthz() -> Json<Health> {
    Json(Health::status("ok"))
}

/// The process can serve: the database answers.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    summary = "Readiness: the database answers",
    security(()),
    responses(
        (status = 200, description = "Ready.", body = Health),
        (status = 503, description = "The database is not answering.", body = Health),
    ),
)]
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let check = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        sqlx::query_scalar::<_, i32>("select 1").fetch_one(&state.pool),
    )
    .await;
    match check {
        Ok(Ok(_)) => (StatusCode::OK, Json(Health::status("ready"))),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "unavailable".to_owned(),
                reason: Some("the database is not answering".to_owned()),
            }),
        ),
    }
}

/// Prometheus text: rollouts by state (read from the database, so it is the same on every
/// replica), plus this process's counters and histograms. Needs a token with `read` (Prometheus
/// sends one with `authorization: {credentials: ...}`) unless `SHIPGATE_METRICS_PUBLIC` is set.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus metrics",
    responses(
        (status = 200, description = "Prometheus text exposition format.", body = String, content_type = "text/plain"),
    ),
)]
async fn metrics(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    if !state.settings.metrics_public {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or_else(|| ApiError::Unauthorized("send a token with the `read` scope".into()))?;
        auth::authenticate(&state, token.trim())
            .await?
            .require(Scope::Read, Target::Global)?;
    }
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "select s.state::text, count(r.id) from unnest(enum_range(null::rollout_state)) s(state)
           left join rollouts r on r.state = s.state group by s.state order by s.state",
    )
    .fetch_all(&state.pool)
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    let rollbacks: Vec<(String, String, i64)> = sqlx::query_as(
        "select trigger, coalesce(outcome, 'running'), count(*) from rollbacks group by 1, 2 order by 1, 2",
    )
    .fetch_all(&state.pool)
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut text = String::from(
        "# HELP shipgate_rollouts Rollouts by state.\n# TYPE shipgate_rollouts gauge\n",
    );
    for (rollout_state, count) in rows {
        text.push_str(&format!(
            "shipgate_rollouts{{state=\"{rollout_state}\"}} {count}\n"
        ));
    }
    text.push_str("# HELP shipgate_rollbacks Rollbacks by trigger and outcome.\n# TYPE shipgate_rollbacks gauge\n");
    for (trigger, outcome, count) in rollbacks {
        text.push_str(&format!(
            "shipgate_rollbacks{{trigger=\"{trigger}\",outcome=\"{outcome}\"}} {count}\n"
        ));
    }
    if let Some(handle) = &state.metrics {
        text.push_str(&handle.render());
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text))
}
