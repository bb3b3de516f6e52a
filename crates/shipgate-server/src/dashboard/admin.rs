//! The audit log with filters, and (admins only) API tokens and dashboard users, through the
//! same functions as `/api/v1/tokens` and `/api/v1/users` ([`crate::access`]).

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Form;
use serde::Deserialize;
use uuid::Uuid;

use shipgate_store::auth::{self, Token, User};
use shipgate_store::dashboard::{self as views, AuditFilter};
use shipgate_store::events::Event;

use super::{done, parse_uuid, render, Nav, PageError, Session};
use crate::access::{add_user, issue_token, TokenRequest, UserRequest};
use crate::auth::{Role, Scope, Target};
use crate::AppState;

/// The audit log's filters, as the form sends them (empty fields mean "any").
#[derive(Deserialize, Default)]
pub(super) struct AuditQuery {
    #[serde(default)]
    app: String,
    #[serde(default)]
    environment: String,
    #[serde(default)]
    actor: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    rollout: String,
    #[serde(default)]
    before: Option<i64>,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    nav: Nav,
    filter: AuditQuery,
    events: Vec<Event>,
    /// The query string of the next page.
    next: Option<String>,
}

fn some(text: &str) -> Option<String> {
    Some(text.trim().to_owned()).filter(|t| !t.is_empty())
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

pub(super) async fn audit(
    session: Session,
    State(state): State<AppState>,
    Query(mut filter): Query<AuditQuery>,
) -> Result<Html<String>, PageError> {
    // A session limited to an app sees that app's events only.
    if let Some(limit) = session.caller.app_limit() {
        filter.app = limit.to_owned();
    }
    match some(&filter.app) {
        Some(app) => session.caller.require(Scope::Read, Target::App(&app))?,
        None => session.caller.require(Scope::Read, Target::Global)?,
    }
    let rollout_id = match some(&filter.rollout) {
        Some(id) => Some(parse_uuid(&id, "rollout")?),
        None => None,
    };
    const LIMIT: i64 = 100;
    let events = views::audit(
        &state.pool,
        &AuditFilter {
            app: some(&filter.app),
            environment: some(&filter.environment),
            actor: some(&filter.actor),
            action: some(&filter.action),
            rollout_id,
            before: filter.before,
            limit: LIMIT,
        },
    )
    .await?;
    let next = (events.len() as i64 == LIMIT)
        .then(|| events.last().map(|e| e.id))
        .flatten()
        .map(|before| {
            format!(
                "app={}&environment={}&actor={}&action={}&rollout={}&before={before}",
                encode(&filter.app),
                encode(&filter.environment),
                encode(&filter.actor),
                encode(&filter.action),
                encode(&filter.rollout),
            )
        });
    render(&AuditPage {
        nav: session.nav(some(&filter.app).as_deref(), "audit"),
        filter,
        events,
        next,
    })
}

#[derive(Template)]
#[template(path = "access.html")]
struct AccessPage {
    nav: Nav,
    tokens: Vec<Token>,
    users: Vec<User>,
    /// A token just created: shown this once.
    issued: Option<(String, String)>,
    roles: Vec<&'static str>,
}

fn require_admin(session: &Session) -> Result<(), PageError> {
    Ok(session.caller.require(Scope::Admin, Target::Global)?)
}

async fn access_page(
    state: &AppState,
    session: &Session,
    issued: Option<(String, String)>,
) -> Result<Html<String>, PageError> {
    require_admin(session)?;
    render(&AccessPage {
        nav: session.nav(None, "access"),
        tokens: auth::list_tokens(&state.pool).await?,
        users: auth::list_users(&state.pool).await?,
        issued,
        roles: Role::ALL.iter().map(|role| role.as_str()).collect(),
    })
}

pub(super) async fn access(
    session: Session,
    State(state): State<AppState>,
) -> Result<Html<String>, PageError> {
    access_page(&state, &session, None).await
}

#[derive(Deserialize)]
pub(super) struct TokenForm {
    csrf: String,
    name: String,
    #[serde(default)]
    read: Option<String>,
    #[serde(default)]
    deploy: Option<String>,
    #[serde(default)]
    approve: Option<String>,
    #[serde(default)]
    admin: Option<String>,
    #[serde(default)]
    app: String,
    #[serde(default)]
    environment: String,
    #[serde(default)]
    expires_in: String,
}

/// Creates a token and shows it once (the page is not cached and not redirected to, so the
/// secret is never in a URL or history entry).
pub(super) async fn create_token(
    session: Session,
    State(state): State<AppState>,
    Form(form): Form<TokenForm>,
) -> Result<Response, PageError> {
    session.check_csrf(&form.csrf)?;
    require_admin(&session)?;
    let scopes = [
        (form.read.is_some(), "read"),
        (form.deploy.is_some(), "deploy"),
        (form.approve.is_some(), "approve"),
        (form.admin.is_some(), "admin"),
    ]
    .into_iter()
    .filter(|(on, _)| *on)
    .map(|(_, scope)| scope.to_owned())
    .collect();
    let request = TokenRequest {
        name: form.name,
        scopes,
        app: some(&form.app),
        environment: some(&form.environment),
        expires_in: some(&form.expires_in),
    };
    let issued = issue_token(
        &state.pool,
        &state.keys.api,
        &request,
        &session.caller.actor,
    )
    .await?;
    let page = access_page(
        &state,
        &session,
        Some((issued.record.name.clone(), issued.token)),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        [(header::CACHE_CONTROL, "no-store")],
        page,
    )
        .into_response())
}

#[derive(Deserialize)]
pub(super) struct CsrfOnly {
    csrf: String,
}

pub(super) async fn revoke_token(
    session: Session,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Form(form): Form<CsrfOnly>,
) -> Result<Response, PageError> {
    session.check_csrf(&form.csrf)?;
    require_admin(&session)?;
    let id: Uuid = parse_uuid(&id, "token")?;
    auth::revoke_token(&state.pool, id, &session.caller.actor).await?;
    Ok(done("/access"))
}

#[derive(Deserialize)]
pub(super) struct UserForm {
    csrf: String,
    username: String,
    password: String,
    role: String,
}

pub(super) async fn create_user(
    session: Session,
    State(state): State<AppState>,
    Form(form): Form<UserForm>,
) -> Result<Response, PageError> {
    session.check_csrf(&form.csrf)?;
    require_admin(&session)?;
    add_user(
        &state.pool,
        UserRequest {
            username: form.username,
            password: form.password,
            role: form.role,
        },
        &session.caller.actor,
    )
    .await?;
    Ok(done("/access"))
}

pub(super) async fn disable_user(
    session: Session,
    State(state): State<AppState>,
    Path(username): Path<String>,
    Form(form): Form<CsrfOnly>,
) -> Result<Response, PageError> {
    session.check_csrf(&form.csrf)?;
    require_admin(&session)?;
    auth::disable_user(&state.pool, &username, &session.caller.actor).await?;
    Ok(done("/access"))
}
