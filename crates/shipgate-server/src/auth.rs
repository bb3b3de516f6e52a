//! Authentication and authorization.
//!
//! API callers present a bearer token: either the bootstrap `SHIPGATE_ADMIN_TOKEN` (compared in
//! constant time) or a JWT Shipgate signed (HS256 only, `exp` required, issuer and audience
//! pinned) whose id is checked against the store on every request, so revoking one takes effect
//! at once. The signing keys are derived from the master key (and the previous master keys, so a
//! rotation keeps issued tokens valid while the old key is listed).
//!
//! Scopes: `read` reads everything; `deploy` creates releases, starts, pauses, resumes, cancels,
//! retries and rolls back rollouts; `approve` approves, rejects and skips gates; `admin` does
//! everything, including configs, tokens and users. `deploy` and `approve` include `read`. A
//! token may be limited to one app, and to one environment of it.

use std::fmt;
use std::str::FromStr;

use axum::extract::FromRequestParts;
use axum::http::{header, request::Parts};
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use shipgate_store::crypto::SecretBox;
use shipgate_store::Actor;

use crate::error::ApiError;
use crate::AppState;

/// What a token or role allows.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Read everything.
    Read,
    /// Ship: releases, rollouts, pause/resume/cancel/retry, rollbacks.
    Deploy,
    /// Approve or reject rollouts, skip gates.
    Approve,
    /// Everything, including configs, tokens and users.
    Admin,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 4] = [Scope::Read, Scope::Deploy, Scope::Approve, Scope::Admin];

    /// As written in tokens and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Deploy => "deploy",
            Scope::Approve => "approve",
            Scope::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == text)
            .ok_or_else(|| format!("`{text}` is not a scope (read, deploy, approve, admin)"))
    }
}

/// A dashboard user's role; each includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads everything.
    Viewer,
    /// Also ships (deploy scope).
    Deployer,
    /// Also approves (approve scope).
    Approver,
    /// Everything.
    Admin,
}

impl Role {
    /// Every role, least first.
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Deployer, Role::Approver, Role::Admin];

    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Deployer => "deployer",
            Role::Approver => "approver",
            Role::Admin => "admin",
        }
    }

    /// The scopes the role grants.
    pub fn scopes(self) -> Vec<Scope> {
        match self {
            Role::Viewer => vec![Scope::Read],
            Role::Deployer => vec![Scope::Read, Scope::Deploy],
            Role::Approver => vec![Scope::Read, Scope::Deploy, Scope::Approve],
            Role::Admin => Scope::ALL.to_vec(),
        }
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == text)
            .ok_or_else(|| format!("`{text}` is not a role (viewer, deployer, approver, admin)"))
    }
}

/// The claims of a Shipgate JWT.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    /// Always `shipgate`.
    pub iss: String,
    /// `shipgate-api` or `shipgate-dashboard`: a token for one is refused by the other.
    pub aud: String,
    /// Who: the token's name, or `user:<id>` for a dashboard session.
    pub sub: String,
    /// The token's id in the store (API tokens); a random id for sessions.
    pub jti: Uuid,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Expires at (Unix seconds).
    pub exp: i64,
}

const ISSUER: &str = "shipgate";
/// Audience of API tokens.
pub const API_AUDIENCE: &str = "shipgate-api";
/// Audience of dashboard sessions.
pub const SESSION_AUDIENCE: &str = "shipgate-dashboard";

/// Why a JWT was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenError {
    /// Past its `exp`.
    Expired,
    /// Not signed by this Shipgate, malformed, another algorithm, issuer or audience.
    Invalid,
}

/// Signs and verifies JWTs for one purpose with keys derived from the master key(s).
#[derive(Clone)]
pub struct TokenKeys {
    audience: &'static str,
    /// (key id, key), current first.
    keys: Vec<(String, [u8; 32])>,
}

impl fmt::Debug for TokenKeys {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("TokenKeys")
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl TokenKeys {
    /// Keys for API tokens.
    pub fn api(secrets: &SecretBox) -> Self {
        TokenKeys {
            audience: API_AUDIENCE,
            keys: secrets.derive("jwt/api/v1"),
        }
    }

    /// Keys for dashboard sessions.
    pub fn session(secrets: &SecretBox) -> Self {
        TokenKeys {
            audience: SESSION_AUDIENCE,
            keys: secrets.derive("jwt/session/v1"),
        }
    }

    /// A signed token for `sub` with id `jti`, valid until `expires`.
    pub fn sign(&self, sub: &str, jti: Uuid, expires: DateTime<Utc>) -> String {
        let (kid, key) = &self.keys[0];
        let claims = Claims {
            iss: ISSUER.into(),
            aud: self.audience.into(),
            sub: sub.into(),
            jti,
            iat: Utc::now().timestamp(),
            exp: expires.timestamp(),
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(kid.clone());
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(key))
            .expect("HS256 signing cannot fail")
    }

    /// The claims of a token this Shipgate signed for this purpose, unexpired.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
        if header.alg != Algorithm::HS256 {
            return Err(TokenError::Invalid);
        }
        let key = match &header.kid {
            Some(kid) => self.keys.iter().find(|(id, _)| id == kid),
            None => self.keys.first(),
        }
        .ok_or(TokenError::Invalid)?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(&key.1), &validation)
            .map(|data| data.claims)
            .map_err(|error| match error.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })
    }
}

/// What a request is about, for the checks of [`Caller::require`].
#[derive(Clone, Copy, Debug)]
pub enum Target<'a> {
    /// Not one app's (tokens, users, every app at once): tokens limited to an app are refused.
    Global,
    /// One app, no environment in particular (releases, reads).
    App(&'a str),
    /// One app and all of its environments (applying its config): tokens limited to an
    /// environment are refused.
    WholeApp(&'a str),
    /// One environment of an app.
    Environment(&'a str, &'a str),
}

/// An authenticated caller and what it may do.
#[derive(Clone, Debug)]
pub struct Caller {
    /// Who, for the audit log.
    pub actor: Actor,
    /// What it may do.
    pub scopes: Vec<Scope>,
    /// The app it is limited to.
    pub app: Option<String>,
    /// The environment (of that app) it is limited to.
    pub environment: Option<String>,
}

impl Caller {
    /// The bootstrap admin.
    pub fn bootstrap_admin() -> Self {
        Caller {
            actor: Actor::token("admin"),
            scopes: Scope::ALL.to_vec(),
            app: None,
            environment: None,
        }
    }

    /// Whether the caller holds `scope` (`admin` holds all; `deploy` and `approve` hold `read`).
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&Scope::Admin)
            || self.scopes.contains(&scope)
            || (scope == Scope::Read && !self.scopes.is_empty())
    }

    /// Refuses (403, naming what is missing) unless the caller may do `scope` on `target`.
    pub fn require(&self, scope: Scope, target: Target<'_>) -> Result<(), ApiError> {
        if !self.has(scope) {
            return Err(ApiError::Forbidden(format!(
                "this needs the `{scope}` scope; the token has {}",
                self.scope_list()
            )));
        }
        let app_ok = |app: &str| self.app.as_deref().is_none_or(|limit| limit == app);
        let limited_to_app = || {
            ApiError::Forbidden(format!(
                "this token is limited to app `{}`",
                self.app.as_deref().unwrap_or_default()
            ))
        };
        let limited_to_environment = || {
            ApiError::Forbidden(format!(
                "this token is limited to environment `{}`",
                self.environment.as_deref().unwrap_or_default()
            ))
        };
        match target {
            Target::Global if self.app.is_some() => Err(limited_to_app()),
            Target::Global => Ok(()),
            Target::App(app) if !app_ok(app) => Err(limited_to_app()),
            Target::App(_) => Ok(()),
            Target::WholeApp(app) if !app_ok(app) => Err(limited_to_app()),
            Target::WholeApp(_) if self.environment.is_some() => Err(limited_to_environment()),
            Target::WholeApp(_) => Ok(()),
            Target::Environment(app, _) if !app_ok(app) => Err(limited_to_app()),
            Target::Environment(_, environment)
                if self
                    .environment
                    .as_deref()
                    .is_some_and(|limit| limit != environment) =>
            {
                Err(limited_to_environment())
            }
            Target::Environment(..) => Ok(()),
        }
    }

    /// The app lists are narrowed to for this caller.
    pub fn app_limit(&self) -> Option<&str> {
        self.app.as_deref()
    }

    /// The environment lists are narrowed to for this caller.
    pub fn environment_limit(&self) -> Option<&str> {
        self.environment.as_deref()
    }

    fn scope_list(&self) -> String {
        if self.scopes.is_empty() {
            return "none".into();
        }
        self.scopes
            .iter()
            .map(|scope| format!("`{scope}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The bearer token of a request, if any.
pub fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
        })
        .map(str::trim)
}

/// Authenticates a bearer token: the bootstrap admin token, or a live Shipgate API JWT.
pub async fn authenticate(state: &AppState, token: &str) -> Result<Caller, ApiError> {
    if let Some(admin) = state.admin_token.as_deref() {
        if crate::extract::token_matches(token, admin) {
            return Ok(Caller::bootstrap_admin());
        }
    }
    let claims = state.keys.api.verify(token).map_err(|error| match error {
        TokenError::Expired => ApiError::Unauthorized("the token has expired".into()),
        TokenError::Invalid => ApiError::Unauthorized(
            "the token is not valid (malformed, or not signed by this Shipgate)".into(),
        ),
    })?;
    let stored = shipgate_store::auth::live_token(&state.pool, claims.jti)
        .await?
        .ok_or_else(|| ApiError::Unauthorized("the token was revoked".into()))?;
    Ok(Caller {
        actor: Actor::token(&stored.name),
        scopes: stored
            .scopes
            .iter()
            .filter_map(|scope| scope.parse().ok())
            .collect(),
        app: stored.app,
        environment: stored.environment,
    })
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        let token = bearer(parts).ok_or_else(|| {
            ApiError::Unauthorized(
                "send a token: `Authorization: Bearer <token>` (see `shipgate token create`)"
                    .into(),
            )
        })?;
        let caller = authenticate(state, token).await?;
        parts.extensions.insert(caller.clone());
        Ok(caller)
    }
}

/// Hashes a password with argon2id (off the async threads: it is slow on purpose).
pub async fn hash_password(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || {
        use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
        let salt = SaltString::generate(&mut OsRng);
        argon2::Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|error| ApiError::Internal(format!("argon2: {error}")))
    })
    .await
    .map_err(|error| ApiError::Internal(format!("argon2 task: {error}")))?
}

/// A hash no password matches, verified against when the user does not exist so that a
/// sign-in takes as long for an unknown name as for a wrong password.
const DECOY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c2hpcGdhdGVkZWNveQ$0Yy9d6cM4tlPN7JZKQ3Cjm5Xy0rWb7qOe6m8RMoXCtU";

/// Whether `password` matches `hash` (or, with no hash, spends the same time and says no).
pub async fn verify_password(password: String, hash: Option<String>) -> bool {
    tokio::task::spawn_blocking(move || {
        use argon2::password_hash::{PasswordHash, PasswordVerifier};
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| DECOY_HASH.to_owned());
        let Ok(parsed) = PasswordHash::new(&hash) else {
            return false;
        };
        let matches = argon2::Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        known && matches
    })
    .await
    .unwrap_or(false)
}

/// The smallest password accepted.
pub const MIN_PASSWORD_LENGTH: usize = 12;

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(scopes: &[Scope], app: Option<&str>, environment: Option<&str>) -> Caller {
        Caller {
            actor: Actor::token("t"),
            scopes: scopes.to_vec(),
            app: app.map(Into::into),
            environment: environment.map(Into::into),
        }
    }

    #[test]
    fn scopes_include_read_and_admin_includes_all() {
        let deploy = caller(&[Scope::Deploy], None, None);
        assert!(deploy.has(Scope::Read) && deploy.has(Scope::Deploy));
        assert!(!deploy.has(Scope::Approve) && !deploy.has(Scope::Admin));
        let admin = caller(&[Scope::Admin], None, None);
        assert!(Scope::ALL.iter().all(|scope| admin.has(*scope)));
        assert!(!caller(&[], None, None).has(Scope::Read));
    }

    #[test]
    fn restrictions_limit_apps_and_environments() {
        let limited = caller(&[Scope::Deploy], Some("shop"), Some("staging"));
        assert!(limited
            .require(Scope::Deploy, Target::Environment("shop", "staging"))
            .is_ok());
        assert!(limited
            .require(Scope::Deploy, Target::Environment("shop", "production"))
            .is_err());
        assert!(limited
            .require(Scope::Deploy, Target::Environment("blog", "staging"))
            .is_err());
        assert!(limited.require(Scope::Deploy, Target::App("shop")).is_ok());
        assert!(limited
            .require(Scope::Deploy, Target::WholeApp("shop"))
            .is_err());
        assert!(limited.require(Scope::Read, Target::Global).is_err());
        assert!(limited
            .require(Scope::Approve, Target::Environment("shop", "staging"))
            .is_err());
    }

    #[test]
    fn tokens_verify_only_for_their_purpose_and_until_they_expire() {
        let secrets = SecretBox::new([3u8; 32], &[]);
        let api = TokenKeys::api(&secrets);
        let session = TokenKeys::session(&secrets);
        let id = Uuid::now_v7();
        let token = api.sign("ci", id, Utc::now() + chrono::Duration::hours(1));
        assert_eq!(api.verify(&token).unwrap().jti, id);
        assert_eq!(session.verify(&token).unwrap_err(), TokenError::Invalid);
        let expired = api.sign("ci", id, Utc::now() - chrono::Duration::minutes(5));
        assert_eq!(api.verify(&expired).unwrap_err(), TokenError::Expired);
        let stranger = TokenKeys::api(&SecretBox::new([4u8; 32], &[]));
        assert_eq!(stranger.verify(&token).unwrap_err(), TokenError::Invalid);
        // A rotation keeps tokens signed with the previous key valid.
        let rotated = TokenKeys::api(&SecretBox::new([4u8; 32], &[[3u8; 32]]));
        assert!(rotated.verify(&token).is_ok());
        // Tampering with the payload breaks the signature.
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[1] = parts[1].chars().rev().collect();
        assert!(api.verify(&parts.join(".")).is_err());
        // `alg: none` is refused.
        let none = format!("eyJhbGciOiJub25lIn0.{}.", token.split('.').nth(1).unwrap());
        assert!(api.verify(&none).is_err());
    }

    #[tokio::test]
    async fn passwords_verify_against_their_hash_only() {
        let hash = hash_password("correct horse battery".into()).await.unwrap();
        assert!(verify_password("correct horse battery".into(), Some(hash.clone())).await);
        assert!(!verify_password("wrong".into(), Some(hash)).await);
        assert!(!verify_password("anything".into(), None).await);
        // The decoy is a real hash, so an unknown name costs a full verification.
        use argon2::password_hash::PasswordHash;
        assert!(PasswordHash::new(DECOY_HASH).is_ok());
    }
}
