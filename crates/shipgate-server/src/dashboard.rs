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
use sha2::Sha256;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use shipgate_store::rollouts::{self, RolloutDetail, RolloutSummary};
use shipgate_store::{apps, releases, Actor};

use crate::auth::{authenticate, verify_password, Caller, Role, Scope};
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

fn csrf_key(state: &AppState) -> [u8; 32] {
    state.secrets.derive("dashboard/csrf/v1")[0].1
}

fn sign(state: &AppState, message: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(&csrf_key(state)).expect("HMAC takes any key length");
    mac.update(message.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

fn cookie_value(parts: &Parts) -> Option<String> {
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// A signed-in person: the session cookie is a session JWT, unexpired, whose subject still
/// exists and is enabled (checked on every request, so disabling a user or revoking a token
/// ends their sessions at once).
pub struct Session {
    /// Who, for the audit log.
    pub caller: Caller,
    /// Their role.
    pub role: Role,
    /// The CSRF token forms must carry.
    pub csrf: String,
}

impl Session {
    /// Refuses a form whose CSRF token is not this session's.
    pub fn check_csrf(&self, presented: &str) -> Result<(), StaleForm> {
        if bool::from(self.csrf.as_bytes().ct_eq(presented.as_bytes())) {
            Ok(())
        } else {
            Err(StaleForm)
        }
    }
}

/// A form whose CSRF token is not the session's (403).
#[derive(Debug)]
pub struct StaleForm;

impl IntoResponse for StaleForm {
    fn into_response(self) -> Response {
        (StatusCode::FORBIDDEN, "the form is stale; reload the page").into_response()
    }
}

/// The role an API token's scopes amount to on the dashboard.
fn role_of(caller: &Caller) -> Role {
    if caller.has(Scope::Admin) {
        Role::Admin
    } else if caller.has(Scope::Approve) {
        Role::Approver
    } else if caller.has(Scope::Deploy) {
        Role::Deployer
    } else {
        Role::Viewer
    }
}

async fn session_of(state: &AppState, value: &str) -> Option<Session> {
    let claims = state.keys.session.verify(value).ok()?;
    let csrf = sign(state, &format!("csrf:{}", claims.jti));
    if let Some(id) = claims.sub.strip_prefix("user:") {
        let user = shipgate_store::auth::user_by_id(&state.pool, id.parse().ok()?)
            .await
            .ok()??;
        if user.disabled_at.is_some() {
            return None;
        }
        let role: Role = user.role.parse().ok()?;
        let caller = Caller {
            actor: Actor::user(&user.username),
            scopes: role.scopes(),
            app: None,
            environment: None,
        };
        return Some(Session { caller, role, csrf });
    }
    // Signed in with an API token: the token must still be live.
    let token = claims.sub.strip_prefix("token:")?;
    let caller = if token == "admin" {
        state.admin_token.as_ref()?;
        Caller::bootstrap_admin()
    } else {
        let stored = shipgate_store::auth::live_token(&state.pool, token.parse().ok()?)
            .await
            .ok()??;
        Caller {
            actor: Actor::token(&stored.name),
            scopes: stored
                .scopes
                .iter()
                .filter_map(|s| s.parse().ok())
                .collect(),
            app: stored.app,
            environment: stored.environment,
        }
    };
    let role = role_of(&caller);
    Some(Session { caller, role, csrf })
}

impl FromRequestParts<AppState> for Session {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let value = cookie_value(parts);
        match value {
            Some(value) => match session_of(state, &value).await {
                Some(session) => Ok(session),
                None => Err(Redirect::to("/login").into_response()),
            },
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
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    token: String,
}

fn refuse_login(message: &str) -> Response {
    let page = render(&LoginPage {
        error: Some(message.into()),
    });
    (StatusCode::UNAUTHORIZED, page).into_response()
}

/// Signs in with a user name and password, or with an API token (the bootstrap admin token or
/// a JWT). The session cookie is a session JWT: HttpOnly, SameSite=Strict, 12 hours.
async fn login(State(state): State<AppState>, Form(form): Form<LoginForm>) -> Response {
    let subject = if !form.username.trim().is_empty() {
        let user = shipgate_store::auth::user_by_name(&state.pool, form.username.trim())
            .await
            .ok()
            .flatten()
            .filter(|user| user.disabled_at.is_none());
        let matches = verify_password(
            form.password.clone(),
            user.as_ref().map(|user| user.password_hash.clone()),
        )
        .await;
        match user {
            Some(user) if matches => format!("user:{}", user.id),
            _ => return refuse_login("That user name and password do not match."),
        }
    } else if !form.token.trim().is_empty() {
        let token = form.token.trim();
        let is_admin = state
            .admin_token
            .as_deref()
            .is_some_and(|admin| token_matches(token, admin));
        if is_admin {
            "token:admin".to_owned()
        } else {
            match authenticate(&state, token).await {
                Ok(_) => match state.keys.api.verify(token) {
                    Ok(claims) => format!("token:{}", claims.jti),
                    Err(_) => return refuse_login("That token is not valid."),
                },
                Err(_) => return refuse_login("That token is not valid."),
            }
        }
    } else {
        return refuse_login("Give a user name and password, or a token.");
    };
    let expires = Utc::now() + chrono::Duration::hours(SESSION_HOURS);
    let value = state.keys.session.sign(&subject, Uuid::new_v4(), expires);
    let cookie = format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_HOURS * 3600
    );
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn logout(session: Session, Form(form): Form<CsrfForm>) -> Response {
    if let Err(refused) = session.check_csrf(&form.csrf) {
        return refused.into_response();
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
    let limit = session.caller.app_limit().map(str::to_owned);
    for app in apps::list(pool)
        .await?
        .into_iter()
        .filter(|app| limit.as_deref().is_none_or(|limit| app.name == limit))
    {
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
    let recent = rollouts::recent(pool, limit.as_deref(), None, 25).await?;
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
    session.caller.require(
        Scope::Read,
        crate::auth::Target::Environment(&rollout.app, &rollout.environment),
    )?;
    let live = !rollout.finished;
    render(&RolloutPage {
        rollout,
        live,
        csrf: session.csrf,
    })
}
