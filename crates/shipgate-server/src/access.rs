//! Managing access (admins only): API tokens (created and shown once, listed, revoked) and
//! dashboard users (created with a role, listed, disabled). The same functions back
//! `shipgate token create` and `shipgate user create` on the server's machine, which is how the
//! first admin credential is made.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get};
use axum::{Json, Router};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use shipgate_domain::Span;
use shipgate_store::auth::{self, NewToken, Token, User};
use shipgate_store::{apps, Actor, StoreError};

use crate::auth::{hash_password, Caller, Role, Scope, Target, TokenKeys, MIN_PASSWORD_LENGTH};
use crate::error::{ApiError, Problem};
use crate::extract::ApiJson;
use crate::AppState;

/// `/tokens` and `/users` under `/api/v1`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/tokens", get(list_tokens).post(create_token))
        .route("/tokens/{id}", delete(revoke_token))
        .route("/users", get(list_users).post(create_user))
        .route("/users/{username}", delete(disable_user))
}

/// The longest a token may live.
pub const MAX_TOKEN_DAYS: i64 = 730;
/// How long a token lives when the request does not say.
pub const DEFAULT_TOKEN_DAYS: i64 = 90;

/// A token request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// What it is for.
    pub name: String,
    /// What it may do: `read`, `deploy`, `approve`, `admin` (at least one).
    #[schema(value_type = Vec<crate::auth::Scope>, min_items = 1)]
    pub scopes: Vec<String>,
    /// Limit it to this app.
    #[serde(default)]
    pub app: Option<String>,
    /// Limit it to this environment of `app`.
    #[serde(default)]
    pub environment: Option<String>,
    /// Lifetime such as `90d` or `12h` (default 90 days, at most 730 days).
    #[serde(default)]
    #[schema(pattern = "^([0-9]+(ms|s|m|h|d))+$")]
    pub expires_in: Option<String>,
}

/// A token as created: the only time its secret is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct IssuedToken {
    /// The bearer token (a JWT). Shown once; Shipgate keeps only its id.
    pub token: String,
    /// What it grants.
    #[serde(flatten)]
    pub record: Token,
}

/// Validates a token request, records it and signs it.
pub async fn issue_token(
    pool: &PgPool,
    keys: &TokenKeys,
    request: &TokenRequest,
    actor: &Actor,
) -> Result<IssuedToken, ApiError> {
    let name = request.name.trim();
    if name.is_empty() || name.len() > 100 {
        return Err(ApiError::field(
            "name",
            "give the token a name of 1 to 100 characters",
        ));
    }
    if request.scopes.is_empty() {
        return Err(ApiError::field(
            "scopes",
            "give at least one scope: read, deploy, approve or admin",
        ));
    }
    let mut scopes = Vec::new();
    for (index, scope) in request.scopes.iter().enumerate() {
        let scope: Scope = scope
            .parse()
            .map_err(|message: String| ApiError::field(format!("scopes[{index}]"), message))?;
        if !scopes.contains(&scope.as_str().to_owned()) {
            scopes.push(scope.as_str().to_owned());
        }
    }
    if request.environment.is_some() && request.app.is_none() {
        return Err(ApiError::field(
            "environment",
            "an environment limit needs an app limit too (environments belong to apps)",
        ));
    }
    let lifetime = match request.expires_in.as_deref() {
        None => chrono::Duration::days(DEFAULT_TOKEN_DAYS),
        Some(text) => {
            let span: Span =
                text.parse()
                    .map_err(|error: shipgate_domain::duration::SpanParseError| {
                        ApiError::field("expires_in", error.to_string())
                    })?;
            let lifetime = chrono::Duration::from_std(span.to_std())
                .map_err(|_| ApiError::field("expires_in", "too long"))?;
            if lifetime < chrono::Duration::minutes(1)
                || lifetime > chrono::Duration::days(MAX_TOKEN_DAYS)
            {
                return Err(ApiError::field(
                    "expires_in",
                    format!("a token lives between 1 minute and {MAX_TOKEN_DAYS} days"),
                ));
            }
            lifetime
        }
    };
    // The limits name things that must exist: say which field is wrong (422), as for any other
    // invalid field, rather than answer as if the route were missing (404).
    if let Some(app) = request.app.as_deref() {
        apps::get(pool, app).await.map_err(|error| match error {
            StoreError::NotFound(_) => ApiError::field("app", format!("there is no app `{app}`")),
            other => other.into(),
        })?;
        if let Some(environment) = request.environment.as_deref() {
            apps::environment(pool, app, environment)
                .await
                .map_err(|error| match error {
                    StoreError::NotFound(_) => ApiError::field(
                        "environment",
                        format!("app `{app}` has no environment `{environment}`"),
                    ),
                    other => other.into(),
                })?;
        }
    }
    let expires_at = Utc::now() + lifetime;
    let record = auth::create_token(
        pool,
        &NewToken {
            name,
            scopes: &scopes,
            app: request.app.as_deref(),
            environment: request.environment.as_deref(),
            expires_at,
        },
        actor,
    )
    .await?;
    let token = keys.sign(&record.name, record.id, expires_at);
    Ok(IssuedToken { token, record })
}

#[utoipa::path(
    post,
    path = "/api/v1/tokens",
    tag = "access",
    summary = "Create an API token (its secret is shown only in this answer)",
    request_body(content = TokenRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "The token, with its secret.", body = IssuedToken),
        (status = 415, description = "Not sent as JSON.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is invalid (an unknown scope, app or environment, a bad lifetime); `errors` names it.", body = Problem, content_type = "application/problem+json"),
    ),
)]
async fn create_token(
    caller: Caller,
    State(state): State<AppState>,
    ApiJson(request): ApiJson<TokenRequest>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Scope::Admin, Target::Global)?;
    let issued = issue_token(&state.pool, &state.keys.api, &request, &caller.actor).await?;
    Ok((StatusCode::CREATED, Json(issued)))
}

/// The API tokens (never their secrets).
#[derive(Serialize, ToSchema)]
pub struct TokenList {
    /// The tokens, revoked and expired ones included.
    pub items: Vec<Token>,
}

#[utoipa::path(
    get,
    path = "/api/v1/tokens",
    tag = "access",
    summary = "List API tokens",
    responses((status = 200, description = "The tokens.", body = TokenList)),
)]
async fn list_tokens(
    caller: Caller,
    State(state): State<AppState>,
) -> Result<Json<TokenList>, ApiError> {
    caller.require(Scope::Admin, Target::Global)?;
    Ok(Json(TokenList {
        items: auth::list_tokens(&state.pool).await?,
    }))
}

#[utoipa::path(
    delete,
    path = "/api/v1/tokens/{id}",
    tag = "access",
    summary = "Revoke an API token (at once)",
    params(("id" = Uuid, Path, description = "The token's id.")),
    responses(
        (status = 200, description = "The token, revoked.", body = Token),
        (status = 404, description = "No such token.", body = Problem, content_type = "application/problem+json"),
    ),
)]
async fn revoke_token(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Token>, ApiError> {
    caller.require(Scope::Admin, Target::Global)?;
    let id: Uuid = id
        .parse()
        .map_err(|_| ApiError::NotFound(format!("token {id} not found")))?;
    Ok(Json(
        auth::revoke_token(&state.pool, id, &caller.actor).await?,
    ))
}

/// A user request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserRequest {
    /// Sign-in name: 1 to 64 letters, digits, `.`, `-`, `_` or `@`.
    #[schema(pattern = "^[A-Za-z0-9._@-]{1,64}$")]
    pub username: String,
    /// At least 12 characters.
    #[schema(min_length = 12)]
    pub password: String,
    /// `viewer`, `deployer`, `approver` or `admin`; each includes the ones before it.
    #[schema(pattern = "^(viewer|deployer|approver|admin)$")]
    pub role: String,
}

/// Validates a user request, hashes the password (argon2id) and records the user.
pub async fn add_user(
    pool: &PgPool,
    request: UserRequest,
    actor: &Actor,
) -> Result<User, ApiError> {
    let username = request.username.trim().to_owned();
    let valid_name = !username.is_empty()
        && username.len() <= 64
        && username
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@'));
    if !valid_name {
        return Err(ApiError::field(
            "username",
            "use 1 to 64 letters, digits, '.', '-', '_' or '@'",
        ));
    }
    let role: Role = request
        .role
        .parse()
        .map_err(|message: String| ApiError::field("role", message))?;
    if request.password.chars().count() < MIN_PASSWORD_LENGTH {
        return Err(ApiError::field(
            "password",
            format!("use at least {MIN_PASSWORD_LENGTH} characters"),
        ));
    }
    if request.password.len() > 1024 {
        return Err(ApiError::field("password", "use at most 1024 bytes"));
    }
    let hash = hash_password(request.password).await?;
    Ok(auth::create_user(pool, &username, &hash, role.as_str(), actor).await?)
}

#[utoipa::path(
    post,
    path = "/api/v1/users",
    tag = "access",
    summary = "Create a dashboard user",
    request_body(content = UserRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "The user.", body = User),
        (status = 409, description = "The username is taken.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not sent as JSON.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is invalid; `errors` names it.", body = Problem, content_type = "application/problem+json"),
    ),
)]
async fn create_user(
    caller: Caller,
    State(state): State<AppState>,
    ApiJson(request): ApiJson<UserRequest>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Scope::Admin, Target::Global)?;
    let user = add_user(&state.pool, request, &caller.actor).await?;
    Ok((StatusCode::CREATED, Json(user)))
}

/// The dashboard users.
#[derive(Serialize, ToSchema)]
pub struct UserList {
    /// The users, disabled ones included.
    pub items: Vec<User>,
}

#[utoipa::path(
    get,
    path = "/api/v1/users",
    tag = "access",
    summary = "List dashboard users",
    responses((status = 200, description = "The users.", body = UserList)),
)]
async fn list_users(
    caller: Caller,
    State(state): State<AppState>,
) -> Result<Json<UserList>, ApiError> {
    caller.require(Scope::Admin, Target::Global)?;
    Ok(Json(UserList {
        items: auth::list_users(&state.pool).await?,
    }))
}

#[utoipa::path(
    delete,
    path = "/api/v1/users/{username}",
    tag = "access",
    summary = "Disable a dashboard user (their sessions end)",
    params(("username" = String, Path, description = "The user's sign-in name.")),
    responses(
        (status = 200, description = "The user, disabled.", body = User),
        (status = 404, description = "No such user.", body = Problem, content_type = "application/problem+json"),
    ),
)]
async fn disable_user(
    caller: Caller,
    State(state): State<AppState>,
    Path(username): Path<String>,
) -> Result<Json<User>, ApiError> {
    caller.require(Scope::Admin, Target::Global)?;
    Ok(Json(
        auth::disable_user(&state.pool, &username, &caller.actor).await?,
    ))
}
