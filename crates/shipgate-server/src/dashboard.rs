//! The server-rendered dashboard: sign-in, the overview of apps × environments with live
//! releases and rollouts, and a rollout's phase timeline. It works without JavaScript (pages
//! refresh themselves while something is in flight).

use askama::Template;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::{header, request::Parts, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Form, Router};
use base64::Engine as _;
use chrono::Utc;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use shipgate_store::rollouts::{self, RolloutDetail, RolloutSummary};
use shipgate_store::{apps, releases};

use crate::error::ApiError;
use crate::extract::token_matches;
use crate::AppState;

const COOKIE: &str = "shipgate_session";
const SESSION_HOURS: i64 = 12;

/// The dashboard routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(overview))
        .route("/login", get(login_page).post(login))
        .route("/logout", axum::routing::post(logout))
        .route("/rollouts/{id}", get(rollout_page))
        .route("/static/style.css", get(stylesheet))
}

async fn stylesheet() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("../../../static/style.css"),
    )
}

fn session_key(state: &AppState) -> Vec<u8> {
    Sha256::digest(format!("shipgate-session:{}", state.admin_token).as_bytes()).to_vec()
}

fn sign(state: &AppState, message: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(&session_key(state)).expect("HMAC takes any key length");
    mac.update(message.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

fn session_value(state: &AppState, expires: i64) -> String {
    format!("{expires}.{}", sign(state, &format!("session:{expires}")))
}

/// A signed-in person (the session cookie is valid and unexpired).
pub struct Session {
    /// The CSRF token forms must carry.
    pub csrf: String,
}

impl FromRequestParts<AppState> for Session {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let cookie = parts
            .headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, _)| *name == COOKIE)
            .map(|(_, value)| value.to_owned());
        let valid = cookie.as_deref().and_then(|value| {
            let (expires, _) = value.split_once('.')?;
            let expires: i64 = expires.parse().ok()?;
            let expected = session_value(state, expires);
            let genuine: bool = expected.as_bytes().ct_eq(value.as_bytes()).into();
            (genuine && expires > Utc::now().timestamp()).then(|| value.to_owned())
        });
        match valid {
            Some(value) => Ok(Session {
                csrf: sign(state, &format!("csrf:{value}")),
            }),
            None => Err(Redirect::to("/login").into_response()),
        }
    }
}

fn render(template: &impl Template) -> Result<Html<String>, ApiError> {
    template
        .render()
        .map(Html)
        .map_err(|error| ApiError::Internal(format!("template: {error}")))
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    error: Option<String>,
}

async fn login_page() -> Result<Html<String>, ApiError> {
    render(&LoginPage { error: None })
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(State(state): State<AppState>, Form(form): Form<LoginForm>) -> Response {
    if !token_matches(form.token.trim(), &state.admin_token) {
        let page = render(&LoginPage {
            error: Some("That token is not valid.".into()),
        });
        return (StatusCode::UNAUTHORIZED, page).into_response();
    }
    let expires = Utc::now().timestamp() + SESSION_HOURS * 3600;
    let cookie = format!(
        "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        session_value(&state, expires),
        SESSION_HOURS * 3600
    );
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn logout(session: Session, Form(form): Form<CsrfForm>) -> Response {
    if !bool::from(session.csrf.as_bytes().ct_eq(form.csrf.as_bytes())) {
        return (StatusCode::FORBIDDEN, "the form is stale; reload the page").into_response();
    }
    let cookie = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/login")).into_response()
}

/// One environment's row on the overview.
struct EnvironmentRow {
    name: String,
    current_release: Option<String>,
    live: Vec<(String, String, Option<String>)>,
    in_flight: Option<RolloutSummary>,
    auto_deploy_paused: Option<String>,
}

struct AppRow {
    name: String,
    repository: Option<String>,
    environments: Vec<EnvironmentRow>,
    quarantined: Vec<(String, String)>,
}

struct RolloutRow {
    summary: RolloutSummary,
    phases: Vec<(String, String)>,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    apps: Vec<AppRow>,
    rollouts: Vec<RolloutRow>,
    rollbacks: Vec<(String, String, rollouts::RollbackRecord)>,
    live: bool,
    csrf: String,
}

async fn overview(
    session: Session,
    State(state): State<AppState>,
) -> Result<Html<String>, ApiError> {
    let pool = &state.pool;
    let mut app_rows = Vec::new();
    let mut rollbacks = Vec::new();
    for app in apps::list(pool).await? {
        let mut environments = Vec::new();
        for spec in &app.spec.environments {
            let environment = apps::environment(pool, &app.name, &spec.name).await?;
            let live = rollouts::live_components(pool, environment.id)
                .await?
                .into_iter()
                .map(|l| {
                    let observed = l.drifted.then_some(l.observed_version).flatten();
                    (l.component, l.release, observed)
                })
                .collect();
            let current = match rollouts::current_release_id(pool, environment.id).await? {
                Some(id) => Some(releases::by_id(pool, id).await?.version),
                None => None,
            };
            let in_flight = rollouts::recent(pool, Some(&app.name), Some(&spec.name), 5)
                .await?
                .into_iter()
                .find(|r| {
                    matches!(
                        r.state.as_str(),
                        "pending_approval" | "in_progress" | "paused" | "rolling_back"
                    )
                });
            for record in rollouts::rollbacks(pool, environment.id, 5).await? {
                rollbacks.push((app.name.clone(), spec.name.clone(), record));
            }
            environments.push(EnvironmentRow {
                name: spec.name.clone(),
                current_release: current,
                live,
                in_flight,
                auto_deploy_paused: environment.auto_deploy_paused_reason,
            });
        }
        let quarantined: Vec<(String, String)> = sqlx::query_as(
            "select version, coalesce(quarantine_reason, '') from releases
              where app_id = $1 and quarantined_at is not null order by quarantined_at desc limit 5",
        )
        .bind(app.id)
        .fetch_all(pool)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
        app_rows.push(AppRow {
            name: app.name.clone(),
            repository: app.spec.repository.clone(),
            environments,
            quarantined,
        });
    }
    rollbacks.sort_by_key(|entry| std::cmp::Reverse(entry.2.requested_at));
    rollbacks.truncate(10);
    let recent = rollouts::recent(pool, None, None, 25).await?;
    let ids: Vec<Uuid> = recent.iter().map(|r| r.id).collect();
    let phase_rows: Vec<(Uuid, String, String)> = sqlx::query_as(
        "select rollout_id, name, state::text from phases where rollout_id = any($1) order by rollout_id, position",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    let live = recent.iter().any(|r| {
        matches!(
            r.state.as_str(),
            "queued" | "pending_approval" | "in_progress" | "rolling_back"
        )
    });
    let rollouts = recent
        .into_iter()
        .map(|summary| RolloutRow {
            phases: phase_rows
                .iter()
                .filter(|(id, _, _)| *id == summary.id)
                .map(|(_, name, state)| (name.clone(), state.clone()))
                .collect(),
            summary,
        })
        .collect();
    render(&OverviewPage {
        apps: app_rows,
        rollouts,
        rollbacks,
        live,
        csrf: session.csrf,
    })
}

#[derive(Template)]
#[template(path = "rollout.html")]
struct RolloutPage {
    rollout: RolloutDetail,
    live: bool,
    csrf: String,
}

async fn rollout_page(
    session: Session,
    State(state): State<AppState>,
    Path(id): Path<String>,
    _headers: HeaderMap,
) -> Result<Html<String>, ApiError> {
    let id: Uuid = id
        .parse()
        .map_err(|_| ApiError::NotFound(format!("rollout {id} not found")))?;
    let rollout = rollouts::detail(&state.pool, id).await?;
    let live = !rollout.finished;
    render(&RolloutPage {
        rollout,
        live,
        csrf: session.csrf,
    })
}
