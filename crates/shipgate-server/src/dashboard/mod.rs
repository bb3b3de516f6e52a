//! The server-rendered dashboard (askama): sign-in, the overview of apps × environments, an
//! app's pipeline, releases, rollback history, config, freeze windows, webhook deliveries and
//! delivery metrics, a rollout's timeline with its actions, the audit log, and tokens and users.
//!
//! Every page works without JavaScript: actions are POST forms carrying the session's CSRF
//! token, each behind a confirm step (`<details>`) that names what will happen, and pages with
//! something in flight reload themselves. With JavaScript, `static/live.js` follows the
//! server-sent events of [`live`] (fed by NOTIFY, so changes made by any replica arrive) and
//! swaps the page's live regions in place instead.
//!
//! Handlers are thin like the API's: extract the session, check the role with the same
//! [`Caller::require`] the API uses, call the same store function, then redirect (POST →
//! 303 → GET) or render the refusal in words.

mod admin;
mod app;
pub mod charts;
mod live;
mod overview;
mod rollout;

use askama::Template;
use axum::extract::{FromRequestParts, State};
use axum::http::{header, request::Parts, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use shipgate_store::{Actor, StoreError};

use crate::auth::{authenticate, verify_password, Caller, Role, Scope};
use crate::error::ApiError;
use crate::extract::token_matches;
use crate::AppState;

const COOKIE: &str = "shipgate_session";
const SESSION_HOURS: i64 = 12;

/// The dashboard routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(overview::overview))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/live", get(live::stream))
        .route("/rollouts/{id}", get(rollout::page))
        .route("/rollouts/{id}/actions/{action}", post(rollout::act))
        .route("/apps/{app}", get(app::pipeline))
        .route("/apps/{app}/releases", get(app::releases))
        .route(
            "/apps/{app}/releases/{version}/quarantine",
            post(app::quarantine),
        )
        .route("/apps/{app}/rollbacks", get(app::rollbacks))
        .route(
            "/apps/{app}/rollbacks/{id}",
            get(app::rollback_page).post(app::rollback_note),
        )
        .route(
            "/apps/{app}/rollbacks/{id}/checklist",
            post(app::rollback_checklist),
        )
        .route(
            "/apps/{app}/environments/{environment}/deploy",
            post(app::deploy),
        )
        .route(
            "/apps/{app}/environments/{environment}/rollback",
            post(rollout::roll_back),
        )
        .route(
            "/apps/{app}/environments/{environment}/auto-deploy",
            post(app::resume_auto_deploy),
        )
        .route(
            "/apps/{app}/environments/{environment}/config",
            get(app::config),
        )
        .route(
            "/apps/{app}/freezes",
            get(app::freezes).post(app::create_freeze),
        )
        .route("/apps/{app}/freezes/{id}/delete", post(app::delete_freeze))
        .route("/apps/{app}/deliveries", get(app::deliveries))
        .route("/apps/{app}/notifications", get(app::notifications))
        .route("/apps/{app}/metrics", get(app::metrics))
        .route("/audit", get(admin::audit))
        .route("/access", get(admin::access))
        .route("/access/tokens", post(admin::create_token))
        .route("/access/tokens/{id}/revoke", post(admin::revoke_token))
        .route("/access/users", post(admin::create_user))
        .route(
            "/access/users/{username}/disable",
            post(admin::disable_user),
        )
        .route("/static/style.css", get(stylesheet))
        .route("/static/live.js", get(script))
}

async fn stylesheet() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("../../../../static/style.css"),
    )
}

async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("../../../../static/live.js"),
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

    /// Whether the session may do `scope` on `target` (to show or hide a form).
    fn may(&self, scope: Scope, target: crate::auth::Target<'_>) -> bool {
        self.caller.require(scope, target).is_ok()
    }

    /// The header's navigation for this session (`app`: the app whose pages it links to).
    fn nav(&self, app: Option<&str>, section: &'static str) -> Nav {
        Nav {
            csrf: self.csrf.clone(),
            who: self.caller.actor.label(),
            role: self.role.as_str(),
            is_admin: self.role == Role::Admin && self.caller.app.is_none(),
            app: app.map(str::to_owned),
            section,
        }
    }
}

/// What the header of every signed-in page shows.
pub(crate) struct Nav {
    /// The CSRF token (the sign-out form and every other form of the page).
    pub csrf: String,
    /// Who is signed in.
    pub who: String,
    /// Their role.
    pub role: &'static str,
    /// Whether to link to tokens and users.
    pub is_admin: bool,
    /// The app whose pages the sub-navigation links to.
    pub app: Option<String>,
    /// The page's section, marked `aria-current`.
    pub section: &'static str,
}

/// A form whose CSRF token is not the session's (403).
#[derive(Debug)]
pub struct StaleForm;

impl IntoResponse for StaleForm {
    fn into_response(self) -> Response {
        PageError {
            status: StatusCode::FORBIDDEN,
            message: "The form is stale (its security token does not match your session). Reload the page and try again.".into(),
        }
        .into_response()
    }
}

impl From<StaleForm> for PageError {
    fn from(_: StaleForm) -> Self {
        PageError {
            status: StatusCode::FORBIDDEN,
            message: "The form is stale (its security token does not match your session). Reload the page and try again.".into(),
        }
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

/// A page that could not be shown, or an action refused: rendered as a page that says why.
#[derive(Debug)]
pub(crate) struct PageError {
    status: StatusCode,
    message: String,
}

impl PageError {
    fn not_found(what: impl Into<String>) -> Self {
        PageError {
            status: StatusCode::NOT_FOUND,
            message: what.into(),
        }
    }

    fn refused(message: impl Into<String>) -> Self {
        PageError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: message.into(),
        }
    }
}

impl From<ApiError> for PageError {
    fn from(error: ApiError) -> Self {
        let status = error.clone_status();
        let message = match &error {
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "dashboard page failed");
                "Something went wrong on our side; it has been logged.".to_owned()
            }
            other => other.to_string(),
        };
        PageError { status, message }
    }
}

impl From<StoreError> for PageError {
    fn from(error: StoreError) -> Self {
        ApiError::from(error).into()
    }
}

trait StatusOf {
    fn clone_status(&self) -> StatusCode;
}

impl StatusOf for ApiError {
    fn clone_status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    status: u16,
    title: &'a str,
    message: &'a str,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error");
        let page = ErrorPage {
            status: self.status.as_u16(),
            title,
            message: &self.message,
        }
        .render()
        .unwrap_or_else(|_| self.message.clone());
        (self.status, Html(page)).into_response()
    }
}

/// Renders a template (a failure is a logged 500).
fn render(template: &impl Template) -> Result<Html<String>, PageError> {
    template
        .render()
        .map(Html)
        .map_err(|error| ApiError::Internal(format!("template: {error}")).into())
}

/// After a successful action: back to a page (303, so a reload does not post again).
fn done(to: &str) -> Response {
    Redirect::to(to).into_response()
}

/// A time as pages show it.
fn when(time: DateTime<Utc>) -> String {
    time.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A duration in words a person reads at a glance (`45 s`, `12 min`, `3.5 h`, `2.0 d`).
fn span(seconds: f64) -> String {
    if !seconds.is_finite() {
        return "—".into();
    }
    let seconds = seconds.max(0.0);
    if seconds < 90.0 {
        format!("{seconds:.0} s")
    } else if seconds < 90.0 * 60.0 {
        format!("{:.0} min", seconds / 60.0)
    } else if seconds < 48.0 * 3600.0 {
        format!("{:.1} h", seconds / 3600.0)
    } else {
        format!("{:.1} d", seconds / 86400.0)
    }
}

/// Parses a path id; anything else is a 404 naming it.
fn parse_uuid(id: &str, what: &str) -> Result<Uuid, PageError> {
    id.parse()
        .map_err(|_| PageError::not_found(format!("{what} {id} not found")))
}

/// The CSRF token of a form, alone.
#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    error: Option<String>,
}

async fn login_page() -> Result<Html<String>, PageError> {
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

async fn logout(session: Session, Form(form): Form<CsrfForm>) -> Response {
    if let Err(refused) = session.check_csrf(&form.csrf) {
        return refused.into_response();
    }
    let cookie = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/login")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_at_a_glance() {
        assert_eq!(span(12.0), "12 s");
        assert_eq!(span(600.0), "10 min");
        assert_eq!(span(3.5 * 3600.0), "3.5 h");
        assert_eq!(span(3.0 * 86400.0), "3.0 d");
        assert_eq!(span(f64::NAN), "—");
    }
}
