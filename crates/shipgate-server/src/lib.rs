//! Shipgate's HTTP surface: the JSON API for CI (`/api/v1`), operations endpoints
//! (`/healthz`, `/readyz`, `/metrics`) and the server-rendered dashboard (`/`).

pub mod api;
pub mod dashboard;
pub mod error;
pub mod extract;
pub mod ops;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderValue};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::broadcast;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;
use uuid::Uuid;

use shipgate_store::crypto::SecretBox;
use shipgate_store::UPDATES_CHANNEL;

/// Largest request body accepted (config documents are the largest bodies).
pub const BODY_LIMIT: usize = 1024 * 1024;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub pool: PgPool,
    /// Credential encryption.
    pub secrets: SecretBox,
    /// The bootstrap admin token.
    pub admin_token: Arc<str>,
    /// Rollout ids as they change (from NOTIFY, so changes made by any replica arrive).
    pub updates: broadcast::Sender<Uuid>,
    /// Prometheus rendering of the process's metrics.
    pub metrics: Option<PrometheusHandle>,
}

impl AppState {
    /// A state over `pool`. Call [`AppState::forward_updates`] to feed `updates`.
    pub fn new(
        pool: PgPool,
        secrets: SecretBox,
        admin_token: &str,
        metrics: Option<PrometheusHandle>,
    ) -> Self {
        let (updates, _) = broadcast::channel(1024);
        AppState {
            pool,
            secrets,
            admin_token: Arc::from(admin_token),
            updates,
            metrics,
        }
    }

    /// Forwards rollout change notifications from Postgres to `updates`, reconnecting as needed.
    pub async fn forward_updates(self) {
        loop {
            let listener = async {
                let mut listener = PgListener::connect_with(&self.pool).await?;
                listener.listen(UPDATES_CHANNEL).await?;
                loop {
                    let notification = listener.recv().await?;
                    if let Ok(id) = notification.payload().parse::<Uuid>() {
                        let _ = self.updates.send(id);
                    }
                }
                #[expect(unreachable_code, reason = "the loop only ends through `?`")]
                Ok::<(), sqlx::Error>(())
            };
            if let Err(error) = listener.await {
                tracing::warn!(%error, "lost the live-update connection; reconnecting");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Answers every error under `/api/` as problem+json, including the framework's own.
async fn api_problems(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let is_api = request.uri().path().starts_with("/api/");
    let response = next.run(request).await;
    if is_api {
        error::problem_for_plain_errors(response).await
    } else {
        response
    }
}

/// The whole application router.
pub fn app(state: AppState) -> Router {
    Router::new()
        .merge(ops::router())
        .nest(
            "/api/v1",
            api::router().layer(axum::middleware::map_response(
                error::problem_for_plain_errors,
            )),
        )
        .merge(dashboard::router())
        .layer(RequestBodyLimitLayer::new(BODY_LIMIT))
        .layer(axum::middleware::from_fn(api_problems))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
