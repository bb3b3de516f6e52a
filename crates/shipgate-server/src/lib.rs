//! Shipgate's HTTP surface: the JSON API for CI (`/api/v1`), operations endpoints
//! (`/healthz`, `/readyz`, `/metrics`) and the server-rendered dashboard (`/`).

pub mod access;
pub mod api;
pub mod auth;
pub mod cache;
pub mod dashboard;
pub mod error;
pub mod extract;
pub mod freezes;
pub mod hooks;
pub mod idempotency;
pub mod limits;
pub mod notifications;
pub mod openapi;
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

/// Settings of the HTTP surface (from the process configuration).
#[derive(Clone, Debug, Default)]
pub struct HttpSettings {
    /// Request rate limits.
    pub rate_limits: limits::RateLimits,
    /// Origins allowed to call the API from a browser (CORS); empty: CORS off.
    pub cors_origins: Vec<String>,
    /// Whether `/metrics` answers without a token.
    pub metrics_public: bool,
    /// Whether rollouts are served from [`cache::RolloutCache`].
    pub rollout_cache: bool,
}

/// The JWT keys of the API and of dashboard sessions.
#[derive(Clone, Debug)]
pub struct Keys {
    /// API tokens.
    pub api: auth::TokenKeys,
    /// Dashboard sessions.
    pub session: auth::TokenKeys,
}

/// What every handler can reach. Cloned by every layer of every request, so everything in it
/// is a handle (an `Arc` or a pool): cloning the keys themselves was a fifth of a cached read's
/// CPU (allocations and copies, measured with perf).
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub pool: PgPool,
    /// Credential encryption.
    pub secrets: Arc<SecretBox>,
    /// The bootstrap admin token, if configured.
    pub admin_token: Option<Arc<str>>,
    /// JWT keys.
    pub keys: Arc<Keys>,
    /// Rate limiters.
    pub limiters: Arc<limits::Limiters>,
    /// HTTP settings.
    pub settings: Arc<HttpSettings>,
    /// Rollout ids as they change (from NOTIFY, so changes made by any replica arrive).
    pub updates: broadcast::Sender<Uuid>,
    /// Prometheus rendering of the process's metrics.
    pub metrics: Option<PrometheusHandle>,
    /// Rollouts as the API answers them, while nothing changed.
    pub rollouts: Arc<cache::RolloutCache>,
    /// Environment statuses as the API answers them, while nothing changed.
    pub statuses: Arc<cache::StatusCache>,
}

impl AppState {
    /// A state over `pool`. Call [`AppState::forward_updates`] to feed `updates`.
    pub fn new(
        pool: PgPool,
        secrets: SecretBox,
        admin_token: Option<&str>,
        metrics: Option<PrometheusHandle>,
        settings: HttpSettings,
    ) -> Self {
        let (updates, _) = broadcast::channel(1024);
        AppState {
            keys: Arc::new(Keys {
                api: auth::TokenKeys::api(&secrets),
                session: auth::TokenKeys::session(&secrets),
            }),
            pool,
            secrets: Arc::new(secrets),
            admin_token: admin_token.filter(|t| !t.is_empty()).map(Arc::from),
            limiters: Arc::new(limits::Limiters::new(settings.rate_limits)),
            rollouts: Arc::new(cache::RolloutCache::new(settings.rollout_cache)),
            statuses: Arc::new(cache::StatusCache::new(settings.rollout_cache)),
            settings: Arc::new(settings),
            updates,
            metrics,
        }
    }

    /// Forwards rollout change notifications from Postgres to `updates` and to the rollout
    /// cache, reconnecting as needed. The cache serves only while connected: notifications
    /// sent while the connection was down are lost.
    pub async fn forward_updates(self) {
        loop {
            let listener = async {
                let mut listener = PgListener::connect_with(&self.pool).await?;
                listener.listen(UPDATES_CHANNEL).await?;
                self.rollouts.set_live(true);
                self.statuses.set_live(true);
                // `try_recv` says when the connection dropped (`None`), where `recv` would
                // reconnect silently past lost notifications.
                while let Some(notification) = listener.try_recv().await? {
                    // A rollout's id, or `environments`: either may change what an
                    // environment's status shows.
                    self.statuses.clear();
                    if let Ok(id) = notification.payload().parse::<Uuid>() {
                        self.rollouts.invalidate(&id);
                        let _ = self.updates.send(id);
                    }
                }
                Ok::<(), sqlx::Error>(())
            };
            let outcome = listener.await;
            self.rollouts.set_live(false);
            self.statuses.set_live(false);
            match outcome {
                Err(error) => {
                    tracing::warn!(%error, "lost the live-update connection; reconnecting")
                }
                Ok(()) => tracing::warn!("the live-update connection closed; reconnecting"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Empties the caches once a write request (any method but GET, HEAD, OPTIONS) was answered,
/// so the writer reads its own write at once.
async fn writes_clear_the_cache(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let reads = matches!(
        *request.method(),
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    );
    let response = next.run(request).await;
    if !reads {
        state.rollouts.clear();
        state.statuses.clear();
    }
    response
}

/// Answers every error under `/api/` and `/hooks/` as problem+json, including the framework's own.
async fn api_problems(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let path = request.uri().path();
    let is_api = path.starts_with("/api/") || path.starts_with("/hooks/");
    let response = next.run(request).await;
    if is_api {
        error::problem_for_plain_errors(response).await
    } else {
        response
    }
}

/// Marks API answers uncacheable (they carry live state and are per caller).
async fn no_store(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let mut response = next.run(request).await;
    response
        .headers_mut()
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::Method;
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|origin| HeaderValue::from_str(origin.trim()).ok())
        .collect();
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::HeaderName::from_static(idempotency::HEADER),
            ])
            .max_age(Duration::from_secs(600)),
    )
}

/// The whole application router.
pub fn app(state: AppState) -> Router {
    let api = api::router()
        .merge(access::router())
        .merge(hooks::api_router())
        .merge(notifications::router())
        .merge(freezes::router())
        .merge(openapi::router())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            idempotency::idempotent,
        ))
        .layer(axum::middleware::map_response(
            error::problem_for_plain_errors,
        ))
        .layer(axum::middleware::from_fn(no_store));
    let api = match cors(&state.settings.cors_origins) {
        Some(cors) => api.layer(cors),
        None => api,
    };
    Router::new()
        .merge(ops::router())
        .nest("/api/v1", api)
        .merge(hooks::router())
        .merge(dashboard::router())
        .layer(RequestBodyLimitLayer::new(BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            writes_clear_the_cache,
        ))
        .layer(axum::middleware::from_fn(api_problems))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limits::limit,
        ))
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
        // Scripts and styles come from the binary's own /static; inline style attributes are
        // allowed for server-computed widths (progress bars), never inline scripts.
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                 img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; \
                 form-action 'self'; base-uri 'none'; object-src 'none'",
            ),
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
