//! Who may do what: API tokens (their ids, scopes and restrictions; the signed JWT itself is
//! never stored), dashboard users with argon2 password hashes, and `Idempotency-Key` records.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use crate::events::{self, Actor, Scope};
use crate::StoreError;

/// A stored API token (the record behind a JWT's `jti`).
#[derive(Clone, Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Token {
    /// Id (the JWT's `jti`).
    pub id: Uuid,
    /// What it is for (`github-actions`, `alice's laptop`).
    pub name: String,
    /// Scopes: `read`, `deploy`, `approve`, `admin`.
    pub scopes: Vec<String>,
    /// The app it is limited to, if any.
    pub app: Option<String>,
    /// The environment it is limited to, if any.
    pub environment: Option<String>,
    /// Who created it.
    pub created_by: String,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// When it stops working.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Last seen (updated at most once a minute).
    pub last_used_at: Option<DateTime<Utc>>,
}

const TOKEN_COLUMNS: &str = "t.id, t.name, t.scopes, a.name as app, t.environment, t.created_by,
    t.created_at, t.expires_at, t.revoked_at, t.last_used_at";

/// What a new token grants.
#[derive(Debug)]
pub struct NewToken<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its scopes.
    pub scopes: &'a [String],
    /// The app it is limited to.
    pub app: Option<&'a str>,
    /// The environment it is limited to.
    pub environment: Option<&'a str>,
    /// When it expires.
    pub expires_at: DateTime<Utc>,
}

/// Records a new token and audits it. An unknown app or environment is refused.
pub async fn create_token(
    pool: &PgPool,
    new: &NewToken<'_>,
    actor: &Actor,
) -> Result<Token, StoreError> {
    let mut tx = pool.begin().await?;
    let app_id: Option<Uuid> = match new.app {
        Some(app) => Some(
            sqlx::query_scalar("select id from apps where name = $1")
                .bind(app)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("app {app}")))?,
        ),
        None => None,
    };
    if let (Some(app_id), Some(environment)) = (app_id, new.environment) {
        let known: bool = sqlx::query_scalar(
            "select exists(select 1 from environments where app_id = $1 and name = $2)",
        )
        .bind(app_id)
        .bind(environment)
        .fetch_one(&mut *tx)
        .await?;
        if !known {
            return Err(StoreError::NotFound(format!(
                "environment {environment} of app {}",
                new.app.unwrap_or_default()
            )));
        }
    }
    let id = Uuid::now_v7();
    sqlx::query(
        "insert into api_tokens (id, name, scopes, app_id, environment, created_by, expires_at)
         values ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(id)
    .bind(new.name)
    .bind(new.scopes)
    .bind(app_id)
    .bind(new.environment)
    .bind(actor.label())
    .bind(new.expires_at)
    .execute(&mut *tx)
    .await?;
    events::record(
        &mut *tx,
        Scope {
            app_id,
            ..Scope::default()
        },
        actor,
        "token.created",
        json!({ "token": id, "name": new.name, "scopes": new.scopes,
                "app": new.app, "environment": new.environment }),
    )
    .await?;
    let token = token_by_id(&mut *tx, id).await?;
    tx.commit().await?;
    Ok(token)
}

async fn token_by_id(executor: impl PgExecutor<'_>, id: Uuid) -> Result<Token, StoreError> {
    sqlx::query_as::<_, Token>(&format!(
        "select {TOKEN_COLUMNS} from api_tokens t left join apps a on a.id = t.app_id where t.id = $1"
    ))
    .bind(id)
    .fetch_optional(executor)
    .await?
    .ok_or_else(|| StoreError::NotFound(format!("token {id}")))
}

/// The token behind a JWT, if it exists and is neither revoked nor expired. Marks it used (at
/// most once a minute, so reads stay reads).
pub async fn live_token(pool: &PgPool, id: Uuid) -> Result<Option<Token>, StoreError> {
    let token = sqlx::query_as::<_, Token>(&format!(
        "select {TOKEN_COLUMNS} from api_tokens t left join apps a on a.id = t.app_id
          where t.id = $1 and t.revoked_at is null and (t.expires_at is null or t.expires_at > now())"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    if let Some(token) = &token {
        let stale = token
            .last_used_at
            .is_none_or(|used| Utc::now() - used > chrono::Duration::minutes(1));
        if stale {
            sqlx::query("update api_tokens set last_used_at = now() where id = $1")
                .bind(id)
                .execute(pool)
                .await?;
        }
    }
    Ok(token)
}

/// Every token, newest first.
pub async fn list_tokens(pool: &PgPool) -> Result<Vec<Token>, StoreError> {
    Ok(sqlx::query_as::<_, Token>(&format!(
        "select {TOKEN_COLUMNS} from api_tokens t left join apps a on a.id = t.app_id
          order by t.created_at desc"
    ))
    .fetch_all(pool)
    .await?)
}

/// Revokes a token: every later request with it is refused. Revoking twice is harmless.
pub async fn revoke_token(pool: &PgPool, id: Uuid, actor: &Actor) -> Result<Token, StoreError> {
    let mut tx = pool.begin().await?;
    let revoked = sqlx::query(
        "update api_tokens set revoked_at = now() where id = $1 and revoked_at is null",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let token = token_by_id(&mut *tx, id).await?;
    if revoked > 0 {
        events::record(
            &mut *tx,
            Scope::default(),
            actor,
            "token.revoked",
            json!({ "token": id, "name": token.name }),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(token)
}

/// A dashboard user.
#[derive(Clone, Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct User {
    /// Id.
    pub id: Uuid,
    /// Sign-in name.
    pub username: String,
    /// `viewer`, `deployer`, `approver` or `admin`.
    pub role: String,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// When it was disabled (it can no longer sign in).
    pub disabled_at: Option<DateTime<Utc>>,
    /// The argon2 hash (PHC string); never serialized.
    #[serde(skip)]
    pub password_hash: String,
}

const USER_COLUMNS: &str = "id, username, role, created_at, disabled_at, password_hash";

/// Creates a user with an already-hashed password. A taken name is a conflict.
pub async fn create_user(
    pool: &PgPool,
    username: &str,
    password_hash: &str,
    role: &str,
    actor: &Actor,
) -> Result<User, StoreError> {
    let mut tx = pool.begin().await?;
    let user = sqlx::query_as::<_, User>(&format!(
        "insert into users (id, username, password_hash, role) values ($1, $2, $3, $4)
         returning {USER_COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(username)
    .bind(password_hash)
    .bind(role)
    .fetch_one(&mut *tx)
    .await
    .map_err(|error| {
        if StoreError::is_unique_violation(&error, "users_username_key") {
            StoreError::Conflict(format!("a user named {username} exists"))
        } else {
            error.into()
        }
    })?;
    events::record(
        &mut *tx,
        Scope::default(),
        actor,
        "user.created",
        json!({ "username": username, "role": role }),
    )
    .await?;
    tx.commit().await?;
    Ok(user)
}

/// A user by name (disabled ones included: callers decide).
pub async fn user_by_name(pool: &PgPool, username: &str) -> Result<Option<User>, StoreError> {
    Ok(sqlx::query_as::<_, User>(&format!(
        "select {USER_COLUMNS} from users where username = $1"
    ))
    .bind(username)
    .fetch_optional(pool)
    .await?)
}

/// A user by id.
pub async fn user_by_id(pool: &PgPool, id: Uuid) -> Result<Option<User>, StoreError> {
    Ok(
        sqlx::query_as::<_, User>(&format!("select {USER_COLUMNS} from users where id = $1"))
            .bind(id)
            .fetch_optional(pool)
            .await?,
    )
}

/// Every user, by name.
pub async fn list_users(pool: &PgPool) -> Result<Vec<User>, StoreError> {
    Ok(sqlx::query_as::<_, User>(&format!(
        "select {USER_COLUMNS} from users order by username"
    ))
    .fetch_all(pool)
    .await?)
}

/// Disables a user: their sessions stop working at once.
pub async fn disable_user(
    pool: &PgPool,
    username: &str,
    actor: &Actor,
) -> Result<User, StoreError> {
    let mut tx = pool.begin().await?;
    let user = sqlx::query_as::<_, User>(&format!(
        "update users set disabled_at = coalesce(disabled_at, now()) where username = $1
         returning {USER_COLUMNS}"
    ))
    .bind(username)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| StoreError::NotFound(format!("user {username}")))?;
    events::record(
        &mut *tx,
        Scope::default(),
        actor,
        "user.disabled",
        json!({ "username": username }),
    )
    .await?;
    tx.commit().await?;
    Ok(user)
}

/// Sets a user's password hash (and re-enables them).
pub async fn set_password(
    pool: &PgPool,
    username: &str,
    password_hash: &str,
    actor: &Actor,
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    let updated =
        sqlx::query("update users set password_hash = $2, disabled_at = null where username = $1")
            .bind(username)
            .bind(password_hash)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    if updated == 0 {
        return Err(StoreError::NotFound(format!("user {username}")));
    }
    events::record(
        &mut *tx,
        Scope::default(),
        actor,
        "user.password_set",
        json!({ "username": username }),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// How long an idempotency key is remembered.
pub const IDEMPOTENCY_HOURS: i64 = 24;

/// What a request's `Idempotency-Key` finds.
#[derive(Debug)]
pub enum Claimed {
    /// The key is new (or expired): run the request, then [`finish_idempotent`].
    Fresh,
    /// The same request already ran: answer this again.
    Replay {
        /// The status answered.
        status: u16,
        /// `{"content_type": ..., "body": ...}` as stored.
        response: Value,
    },
    /// The key was used for a different request.
    Mismatch,
    /// The first request with the key has not finished yet.
    InProgress,
}

/// Claims `key` for `principal`'s request whose digest is `request_hash`.
pub async fn claim_idempotency_key(
    pool: &PgPool,
    principal: &str,
    key: &str,
    request_hash: &str,
) -> Result<Claimed, StoreError> {
    // A fresh key, or one old enough to be forgotten, becomes ours (status 0: running).
    let claimed = sqlx::query(
        "insert into idempotency_keys (key, principal, request_hash, status, response)
         values ($1, $2, $3, 0, 'null')
         on conflict (principal, key) do update
            set request_hash = excluded.request_hash, status = 0, response = 'null', created_at = now()
          where idempotency_keys.created_at < now() - make_interval(hours => $4)",
    )
    .bind(key)
    .bind(principal)
    .bind(request_hash)
    .bind(IDEMPOTENCY_HOURS as i32)
    .execute(pool)
    .await?
    .rows_affected();
    if claimed > 0 {
        return Ok(Claimed::Fresh);
    }
    let row: Option<(String, i32, Value)> = sqlx::query_as(
        "select request_hash, status, response from idempotency_keys where principal = $1 and key = $2",
    )
    .bind(principal)
    .bind(key)
    .fetch_optional(pool)
    .await?;
    Ok(match row {
        // Released between our insert and this read: the caller may try again.
        None => Claimed::InProgress,
        Some((hash, _, _)) if hash != request_hash => Claimed::Mismatch,
        Some((_, 0, _)) => Claimed::InProgress,
        Some((_, status, response)) => Claimed::Replay {
            status: status as u16,
            response,
        },
    })
}

/// Stores the answer to a claimed key.
pub async fn finish_idempotent(
    pool: &PgPool,
    principal: &str,
    key: &str,
    status: u16,
    response: &Value,
) -> Result<(), StoreError> {
    sqlx::query(
        "update idempotency_keys set status = $3, response = $4 where principal = $1 and key = $2",
    )
    .bind(principal)
    .bind(key)
    .bind(i32::from(status))
    .bind(response)
    .execute(pool)
    .await?;
    Ok(())
}

/// Forgets a claimed key whose request did not complete (a 5xx, refused credentials), so a
/// retry runs it again. Also sweeps keys past their lifetime.
pub async fn release_idempotency_key(
    pool: &PgPool,
    principal: &str,
    key: &str,
) -> Result<(), StoreError> {
    sqlx::query("delete from idempotency_keys where principal = $1 and key = $2")
        .bind(principal)
        .bind(key)
        .execute(pool)
        .await?;
    sqlx::query(
        "delete from idempotency_keys where created_at < now() - make_interval(hours => $1)",
    )
    .bind(IDEMPOTENCY_HOURS as i32)
    .execute(pool)
    .await?;
    Ok(())
}
