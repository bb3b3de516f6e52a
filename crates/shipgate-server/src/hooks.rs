//! The webhook receiver: `POST /hooks/github`, `/hooks/gitlab` and `/hooks/generic/{app}`
//! turn a push into a release and enqueue its rollouts where the environments' auto-deploy rules
//! admit it; `GET /api/v1/apps/{app}/deliveries` shows what became of each delivery.
//!
//! Every delivery is checked in this order, and nothing is recorded until the sender is proven:
//! rate limit per source address (429 with `Retry-After`), body of at most 1 MiB (413),
//! required headers (400), the signature or token (401; missing or wrong), a parsable body
//! (400), a known app (404). A verified delivery is then recorded with its verdict (`deployed`,
//! `accepted`, `ignored`, `refused`) and reason, together with its release and rollouts, in one
//! transaction ([`shipgate_store::webhooks::ingest`]); the answer is immediate (202 when work was
//! enqueued, else 200) and no provider is called here: the engine picks the rollouts up on
//! NOTIFY. A delivery id seen before answers 200 with what the first delivery did, and does
//! nothing new.
//!
//! Which app: `/hooks/github` and `/hooks/gitlab` find it by the payload's repository
//! (`repository.full_name`, `project.path_with_namespace`) against the apps' `repository`, and
//! the signature must verify with that app's `webhook_secret`. When several apps share a
//! repository (a monorepo), the secret that verifies picks the app; if that is still ambiguous,
//! point each hook at `/hooks/github/{app}` or `/hooks/gitlab/{app}`.
//!
//! What a push deploys: each component's artifact is the pushed commit (see [`git_artifacts`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;
use uuid::Uuid;

use shipgate_domain::config::AppSpec;
use shipgate_domain::provider::ProviderKind;
use shipgate_store::releases::{self, NewRelease};
use shipgate_store::webhooks::{
    self, Delivery, HookApp, NewDelivery, Outcome, Push, PushedRefOwned, Verdict, Work,
};
use shipgate_store::{apps, StoreError};

use crate::api::Page;
use crate::auth::{Caller, Scope, Target};
use crate::error::{ApiError, Problem};
use crate::extract::parse_json;
use crate::limits::Limiter;
use crate::AppState;

/// Largest delivery body accepted.
pub const HOOK_BODY_LIMIT: usize = 1024 * 1024;

/// Deliveries accepted per minute from one source address (a burst of a quarter of it).
pub const HOOK_RATE_PER_MINUTE: u32 = 1200;

/// The header carrying a generic delivery's signature: `sha256=<hex HMAC-SHA256 of the body>`.
pub const GENERIC_SIGNATURE_HEADER: &str = "x-shipgate-signature";

/// The header carrying a generic delivery's id (unique per delivery, reused on a retry).
pub const GENERIC_DELIVERY_HEADER: &str = "x-shipgate-delivery";

/// What every webhook receiver may answer (for the OpenAPI document).
#[derive(utoipa::IntoResponses)]
#[allow(
    dead_code,
    reason = "only described, never built: the handlers answer through HookError"
)]
enum DeliveryResponses {
    /// Recorded; nothing was enqueued (ignored, refused, or a duplicate).
    #[response(status = 200)]
    Recorded(DeliveryAnswer),
    /// Recorded; a release was made or rollouts enqueued.
    #[response(status = 202)]
    Enqueued(DeliveryAnswer),
    /// A required header is missing or the payload is not a push of this sender.
    #[response(status = 400, content_type = "application/problem+json")]
    BadRequest(Problem),
    /// Unsigned, or the signature (token) does not verify with the app's `webhook_secret`.
    #[response(status = 401, content_type = "application/problem+json")]
    Unauthorized(Problem),
    /// No app has this repository (or name).
    #[response(status = 404, content_type = "application/problem+json")]
    NotFound(Problem),
    /// Several apps share the repository and the secret; name the app in the URL.
    #[response(status = 409, content_type = "application/problem+json")]
    Ambiguous(Problem),
    /// The body is over 1 MiB.
    #[response(status = 413, content_type = "application/problem+json")]
    TooLarge(Problem),
    /// The delivery is invalid.
    #[response(status = 422, content_type = "application/problem+json")]
    Invalid(Problem),
    /// Too many deliveries from this address; retry after `Retry-After` seconds.
    #[response(
        status = 429,
        content_type = "application/problem+json",
        headers(("Retry-After" = u64, description = "Seconds to wait."))
    )]
    TooMany(Problem),
}

/// The `/hooks` routes, rate limited per source address.
pub fn router() -> Router<AppState> {
    let limiter = Arc::new(Limiter::new(HOOK_RATE_PER_MINUTE));
    Router::new()
        .route("/hooks/github", post(github))
        .route("/hooks/github/{app}", post(github_for_app))
        .route("/hooks/gitlab", post(gitlab))
        .route("/hooks/gitlab/{app}", post(gitlab_for_app))
        .route("/hooks/generic/{app}", post(generic))
        .route_layer(axum::middleware::from_fn_with_state(limiter, rate_limit))
}

/// The routes under `/api/v1` that show deliveries.
pub fn api_router() -> Router<AppState> {
    Router::new().route("/apps/{app}/deliveries", get(list_deliveries))
}

// ---------------------------------------------------------------------------------------------
// Errors and limits.

/// An error of the receiver: an [`ApiError`], or a body over the limit (413).
#[derive(Debug)]
enum HookError {
    Api(ApiError),
    TooLarge,
}

impl From<ApiError> for HookError {
    fn from(error: ApiError) -> Self {
        HookError::Api(error)
    }
}

impl From<StoreError> for HookError {
    fn from(error: StoreError) -> Self {
        HookError::Api(error.into())
    }
}

impl IntoResponse for HookError {
    fn into_response(self) -> Response {
        match self {
            HookError::Api(error) => error.into_response(),
            HookError::TooLarge => {
                let status = StatusCode::PAYLOAD_TOO_LARGE;
                let body = json!({
                    "type": "about:blank", "title": "Payload Too Large", "status": status.as_u16(),
                    "detail": format!("a delivery body may be at most {HOOK_BODY_LIMIT} bytes"),
                });
                let mut response = (status, Json(body)).into_response();
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/problem+json"),
                );
                response
            }
        }
    }
}

fn unauthorized(message: impl Into<String>) -> HookError {
    HookError::Api(ApiError::Unauthorized(message.into()))
}

fn bad_request(message: impl Into<String>) -> HookError {
    HookError::Api(ApiError::BadRequest(message.into()))
}

async fn rate_limit(State(limiter): State<Arc<Limiter>>, request: Request, next: Next) -> Response {
    // The peer address: behind a proxy every delivery shares the proxy's bucket (forwarding
    // headers are not trusted, or anyone could pick a fresh bucket per request).
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip().to_string())
        .unwrap_or_else(|| "unknown".into());
    if let Err(wait) = limiter.check(&format!("hooks:{client}")) {
        metrics::counter!("shipgate_webhook_rejections_total", "why" => "rate_limited")
            .increment(1);
        return ApiError::TooManyRequests {
            detail: "too many webhook deliveries from this address; slow down".into(),
            retry_after: wait.as_secs_f64().ceil() as u64,
        }
        .into_response();
    }
    next.run(request).await
}

fn body_of(body: Result<Bytes, BytesRejection>) -> Result<Bytes, HookError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            HookError::TooLarge
        } else {
            bad_request(rejection.body_text())
        }
    })?;
    if body.len() > HOOK_BODY_LIMIT {
        return Err(HookError::TooLarge);
    }
    Ok(body)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|value| !value.is_empty())
}

fn required<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str, HookError> {
    let value =
        header(headers, name).ok_or_else(|| bad_request(format!("missing header {name}")))?;
    if value.len() > 200 {
        return Err(bad_request(format!("header {name} is too long")));
    }
    Ok(value)
}

// ---------------------------------------------------------------------------------------------
// Signatures.

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Whether `signature` (`sha256=<hex>`, as GitHub's `X-Hub-Signature-256` and Shipgate's
/// `X-Shipgate-Signature`) is the HMAC-SHA256 of `body` under `secret`, compared in constant
/// time.
pub fn signature_matches(secret: &str, body: &[u8], signature: &str) -> bool {
    let Some(expected) = signature
        .trim()
        .strip_prefix("sha256=")
        .and_then(decode_hex)
    else {
        return false;
    };
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// Whether a GitLab `X-Gitlab-Token` equals the secret, in constant time (digests are compared,
/// so not even the length leaks).
pub fn token_matches(secret: &str, token: &str) -> bool {
    let secret = Sha256::digest(secret.as_bytes());
    let token = Sha256::digest(token.as_bytes());
    bool::from(secret.ct_eq(&token))
}

/// The app among `candidates` whose secret `verifies`; 401 when none does, 409 when several do.
fn verified(
    candidates: Vec<HookApp>,
    verifies: impl Fn(&str) -> bool,
) -> Result<HookApp, HookError> {
    if candidates.iter().all(|app| app.secret.is_none()) {
        let names: Vec<&str> = candidates.iter().map(|app| app.name.as_str()).collect();
        return Err(unauthorized(format!(
            "app {} has no webhook_secret: declare one in its config so deliveries can be verified",
            names.join(", ")
        )));
    }
    let mut matching: Vec<HookApp> = candidates
        .into_iter()
        .filter(|app| app.secret.as_deref().is_some_and(&verifies))
        .collect();
    match matching.len() {
        0 => Err(unauthorized(
            "the signature does not match the app's webhook_secret",
        )),
        1 => Ok(matching.remove(0)),
        _ => Err(HookError::Api(ApiError::Conflict(format!(
            "apps {} share this repository and secret; point the hook at /hooks/<source>/{{app}}",
            matching
                .iter()
                .map(|app| app.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )))),
    }
}

/// The candidate apps: the one named in the path, or those of the repository.
async fn candidates(
    state: &AppState,
    named: Option<&str>,
    repository: Option<&str>,
    field: &str,
) -> Result<Vec<HookApp>, HookError> {
    if let Some(name) = named {
        return Ok(vec![
            webhooks::app_by_name(&state.pool, &state.secrets, name).await?,
        ]);
    }
    let repository = repository.ok_or_else(|| {
        bad_request(format!(
            "the payload has no {field}; point the hook at a URL naming the app instead"
        ))
    })?;
    let found = webhooks::apps_by_repository(&state.pool, &state.secrets, repository).await?;
    if found.is_empty() {
        return Err(HookError::Api(ApiError::NotFound(format!(
            "no app has repository `{repository}`; set `repository` in the app's config"
        ))));
    }
    Ok(found)
}

// ---------------------------------------------------------------------------------------------
// Pushes, whoever sent them.

/// Where a repository is hosted, for the artifact links.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Host {
    Github,
    Gitlab,
}

/// A push, from GitHub or GitLab.
#[derive(Clone, Debug)]
struct GitPush {
    host: Host,
    /// `refs/heads/main`.
    git_ref: String,
    /// The commit the ref points at now (all zeros when deleted).
    sha: String,
    deleted: bool,
    head: Option<HeadCommit>,
    /// Every changed file, when the payload lists every commit.
    changed: Option<Vec<String>>,
    default_branch: Option<String>,
    /// `owner/name`.
    repository: String,
    /// `https://github.com/owner/name`.
    web_url: Option<String>,
    /// GitLab's numeric project id.
    project_id: Option<i64>,
    /// An annotated tag's message (GitLab).
    tag_message: Option<String>,
}

#[derive(Clone, Debug)]
struct HeadCommit {
    message: String,
    author: Option<String>,
    timestamp: Option<DateTime<Utc>>,
}

impl GitPush {
    fn pushed(&self) -> PushedRefOwned {
        if let Some(branch) = self.git_ref.strip_prefix("refs/heads/") {
            PushedRefOwned::Branch(branch.to_owned())
        } else if let Some(tag) = self.git_ref.strip_prefix("refs/tags/") {
            PushedRefOwned::Tag(tag.to_owned())
        } else {
            PushedRefOwned::None
        }
    }

    fn ref_name(&self) -> &str {
        self.git_ref
            .strip_prefix("refs/heads/")
            .or_else(|| self.git_ref.strip_prefix("refs/tags/"))
            .unwrap_or(&self.git_ref)
    }
}

fn is_sha(text: &str) -> bool {
    text.len() == 40 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

#[derive(Deserialize)]
struct Person {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    email: Option<String>,
}

impl Person {
    fn label(&self) -> Option<String> {
        match (&self.name, &self.email) {
            (Some(name), Some(email)) => Some(format!("{name} <{email}>")),
            (Some(name), None) => Some(name.clone()),
            (None, Some(email)) => Some(email.clone()),
            (None, None) => None,
        }
    }
}

#[derive(Deserialize)]
struct PushCommit {
    id: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    timestamp: Option<String>,
    #[serde(default)]
    author: Option<Person>,
    #[serde(default)]
    added: Vec<String>,
    #[serde(default)]
    modified: Vec<String>,
    #[serde(default)]
    removed: Vec<String>,
}

impl PushCommit {
    fn head(&self) -> HeadCommit {
        HeadCommit {
            message: self.message.clone(),
            author: self.author.as_ref().and_then(Person::label),
            timestamp: self
                .timestamp
                .as_deref()
                .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
                .map(|time| time.with_timezone(&Utc)),
        }
    }

    fn files(&self) -> impl Iterator<Item = &String> {
        self.added.iter().chain(&self.modified).chain(&self.removed)
    }
}

fn changed_files(commits: &[PushCommit]) -> Vec<String> {
    let mut files: Vec<String> = commits
        .iter()
        .flat_map(PushCommit::files)
        .cloned()
        .collect();
    files.sort();
    files.dedup();
    files
}

#[derive(Deserialize)]
struct GithubPush {
    #[serde(rename = "ref")]
    git_ref: String,
    after: String,
    #[serde(default)]
    deleted: bool,
    #[serde(default)]
    commits: Vec<PushCommit>,
    #[serde(default)]
    head_commit: Option<PushCommit>,
    repository: GithubRepository,
}

#[derive(Deserialize)]
struct GithubRepository {
    full_name: String,
    #[serde(default)]
    html_url: Option<String>,
    #[serde(default)]
    default_branch: Option<String>,
}

impl From<GithubPush> for GitPush {
    fn from(push: GithubPush) -> Self {
        let deleted = push.deleted || push.after.bytes().all(|b| b == b'0');
        // The commits list, else (a new branch at an existing commit) the head commit's files.
        let changed = if !push.commits.is_empty() {
            Some(changed_files(&push.commits))
        } else {
            push.head_commit
                .as_ref()
                .map(|head| changed_files(std::slice::from_ref(head)))
        };
        // An annotated tag's `after` is the tag object; the head commit is the commit.
        let sha = push
            .head_commit
            .as_ref()
            .map(|head| head.id.clone())
            .filter(|id| is_sha(id))
            .unwrap_or(push.after);
        GitPush {
            host: Host::Github,
            git_ref: push.git_ref,
            sha,
            deleted,
            head: push.head_commit.as_ref().map(PushCommit::head),
            changed,
            default_branch: push.repository.default_branch,
            repository: push.repository.full_name,
            web_url: push.repository.html_url,
            project_id: None,
            tag_message: None,
        }
    }
}

#[derive(Deserialize)]
struct GitlabPush {
    object_kind: String,
    #[serde(rename = "ref")]
    git_ref: String,
    after: String,
    #[serde(default)]
    checkout_sha: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    commits: Vec<PushCommit>,
    #[serde(default)]
    total_commits_count: Option<usize>,
    project: GitlabProject,
}

#[derive(Deserialize)]
struct GitlabProject {
    id: i64,
    path_with_namespace: String,
    #[serde(default)]
    web_url: Option<String>,
    #[serde(default)]
    default_branch: Option<String>,
}

impl From<GitlabPush> for GitPush {
    fn from(push: GitlabPush) -> Self {
        let deleted = push.after.bytes().all(|b| b == b'0') || push.checkout_sha.is_none();
        let sha = push.checkout_sha.clone().unwrap_or(push.after.clone());
        // GitLab lists at most 20 commits; with more, the file list is incomplete.
        let complete = push
            .total_commits_count
            .is_none_or(|total| total <= push.commits.len());
        let changed = (complete && !push.commits.is_empty()).then(|| changed_files(&push.commits));
        let head = push
            .commits
            .iter()
            .find(|commit| commit.id == sha)
            .or(push.commits.last())
            .map(PushCommit::head);
        GitPush {
            host: Host::Gitlab,
            git_ref: push.git_ref,
            sha,
            deleted,
            head,
            changed,
            default_branch: push.project.default_branch,
            repository: push.project.path_with_namespace,
            web_url: push.project.web_url,
            project_id: Some(push.project.id),
            tag_message: push
                .message
                .filter(|message| push.object_kind == "tag_push" && !message.trim().is_empty()),
        }
    }
}

/// One artifact per component for a pushed commit. A platform that builds from source is given
/// the commit itself:
///
/// - by default the full commit sha, as a string (Render `commitId`, Railway `commitSha`, the
///   simulated and HTTP providers);
/// - for a component with a Heroku or Vercel target, an object that also carries what those
///   need: `{"commit", "ref", "gitSource": {…}}` (Vercel's `gitSource`: `github` with
///   `org`/`repo`, or `gitlab` with `projectId`) and `"source_blob": {"url", "version"}`
///   (Heroku builds from the host's tarball of the commit, which Heroku must be able to fetch:
///   public repositories, or use the generic hook with a signed URL);
/// - a component deployed only to Cloud Run gets none: Cloud Run deploys images, which a push
///   does not name. Build them in CI and announce the release on `/hooks/generic/{app}`.
fn git_artifacts(spec: &AppSpec, push: &GitPush) -> BTreeMap<String, Value> {
    let mut artifacts = BTreeMap::new();
    for component in &spec.components {
        let kinds: Vec<ProviderKind> = spec
            .environments
            .iter()
            .filter_map(|environment| environment.targets.get(component))
            .map(|target| target.provider)
            .collect();
        if !kinds.is_empty() && kinds.iter().all(|kind| *kind == ProviderKind::Cloudrun) {
            continue;
        }
        let heroku = kinds.contains(&ProviderKind::Heroku);
        let vercel = kinds.contains(&ProviderKind::Vercel);
        if !heroku && !vercel {
            artifacts.insert(component.clone(), json!(push.sha));
            continue;
        }
        let mut artifact = json!({ "commit": push.sha, "ref": push.ref_name() });
        if vercel {
            artifact["gitSource"] = match push.host {
                Host::Github => {
                    let (org, repo) = push
                        .repository
                        .split_once('/')
                        .unwrap_or(("", &push.repository));
                    json!({ "type": "github", "org": org, "repo": repo,
                            "ref": push.ref_name(), "sha": push.sha })
                }
                Host::Gitlab => json!({ "type": "gitlab", "projectId": push.project_id,
                                        "ref": push.ref_name(), "sha": push.sha }),
            };
        }
        if heroku {
            if let Some(web) = push.web_url.as_deref().map(|url| url.trim_end_matches('/')) {
                let url = match push.host {
                    Host::Github => format!("{web}/archive/{}.tar.gz", push.sha),
                    Host::Gitlab => {
                        let name = push.repository.rsplit('/').next().unwrap_or("source");
                        format!("{web}/-/archive/{sha}/{name}-{sha}.tar.gz", sha = push.sha)
                    }
                };
                artifact["source_blob"] = json!({ "url": url, "version": push.sha });
            }
        }
        artifacts.insert(component.clone(), artifact);
    }
    artifacts
}

const NOTES_LIMIT: usize = 4000;

fn notes_of(push: &GitPush) -> Option<String> {
    let mut notes = match (&push.head, &push.tag_message) {
        (_, Some(message)) => message.trim().to_owned(),
        (Some(head), None) => head.message.trim().to_owned(),
        (None, None) => return None,
    };
    if notes.len() > NOTES_LIMIT {
        let mut cut = NOTES_LIMIT;
        while !notes.is_char_boundary(cut) {
            cut -= 1;
        }
        notes.truncate(cut);
        notes.push('…');
    }
    if let Some(author) = push.head.as_ref().and_then(|head| head.author.as_deref()) {
        notes.push_str(&format!("\n\nAuthor: {author}"));
    }
    Some(notes)
}

/// Whether `version` is a usable release version (as [`releases::check`] wants it).
fn valid_version(version: &str) -> bool {
    !version.is_empty()
        && version.len() <= 128
        && version.trim() == version
        && !version.chars().any(|c| c.is_control() || c == '/')
}

/// What a push does: nothing for a deletion or an unknown ref; else a release versioned by the
/// short sha (longer if 7 digits collide) for a branch, by the tag name for a tag.
fn work_for_push(spec: &AppSpec, push: &GitPush) -> Work {
    let pushed = push.pushed();
    let kind = match &pushed {
        PushedRefOwned::Branch(name) => format!("branch `{name}`"),
        PushedRefOwned::Tag(name) => format!("tag `{name}`"),
        PushedRefOwned::None => {
            return Work::Record {
                verdict: Verdict::Ignored,
                reason: format!("ref `{}` is neither a branch nor a tag", push.git_ref),
            }
        }
    };
    if push.deleted {
        return Work::Record {
            verdict: Verdict::Ignored,
            reason: format!("{kind} was deleted: nothing to release"),
        };
    }
    let artifacts = git_artifacts(spec, push);
    if artifacts.is_empty() {
        return Work::Record {
            verdict: Verdict::Refused,
            reason: "no component can be deployed from a commit (Cloud Run deploys images): \
                     announce releases with their images on /hooks/generic/{app}"
                .into(),
        };
    }
    let sha = push.sha.to_ascii_lowercase();
    let by_sha = vec![sha[..7].to_owned(), sha[..12].to_owned(), sha.clone()];
    let versions = match &pushed {
        PushedRefOwned::Tag(tag) if valid_version(tag) => vec![tag.clone()],
        PushedRefOwned::Tag(tag) if valid_version(&tag.replace('/', "-")) => {
            vec![tag.replace('/', "-")]
        }
        _ => by_sha,
    };
    Work::Push(Box::new(Push {
        versions,
        release: NewRelease {
            version: String::new(),
            git_sha: Some(sha),
            git_ref: Some(push.git_ref.clone()),
            artifacts,
            notes: notes_of(push),
            committed_at: push.head.as_ref().and_then(|head| head.timestamp),
            ..NewRelease::default()
        },
        same_commit_is_same_release: true,
        always_release: matches!(pushed, PushedRefOwned::Tag(_)),
        pushed,
        changed_paths: push.changed.clone(),
        default_branch: push.default_branch.clone(),
    }))
}

/// Records a verified delivery and does its work (see [`webhooks::ingest`]).
async fn record(
    state: &AppState,
    delivery: &NewDelivery<'_>,
    work: &Work,
) -> Result<Outcome, HookError> {
    let outcome = webhooks::ingest(&state.pool, delivery, work).await?;
    if !outcome.duplicate {
        metrics::counter!("shipgate_webhook_deliveries_total",
            "source" => delivery.source.to_owned(), "verdict" => outcome.verdict.clone())
        .increment(1);
    }
    tracing::info!(
        delivery.source = delivery.source,
        delivery.id = delivery.delivery_id,
        app = delivery.app,
        event = delivery.event,
        verdict = %outcome.verdict,
        duplicate = outcome.duplicate,
        release = outcome.release.as_deref(),
        "webhook delivery"
    );
    Ok(outcome)
}

/// What became of a delivery, as answered to its sender.
#[derive(Serialize, ToSchema)]
pub struct DeliveryAnswer {
    /// The delivery's id in Shipgate (see `GET /api/v1/apps/{app}/deliveries`).
    pub delivery: Uuid,
    /// The delivery had been received before: nothing new was done, and the rest is what the
    /// first one did.
    pub duplicate: bool,
    /// `deployed`, `accepted`, `ignored` or `refused`.
    pub verdict: String,
    /// Why, per environment.
    pub reason: Option<String>,
    /// The version of the release made or found.
    pub release: Option<String>,
    /// The rollouts enqueued.
    pub rollouts: Vec<Uuid>,
}

/// The answer to a recorded delivery: 202 when a release was made or rollouts enqueued, 200
/// otherwise (and for a delivery seen before).
fn respond(outcome: Outcome) -> Response {
    let status =
        if !outcome.duplicate && matches!(outcome.verdict.as_str(), "deployed" | "accepted") {
            StatusCode::ACCEPTED
        } else {
            StatusCode::OK
        };
    (
        status,
        Json(DeliveryAnswer {
            delivery: outcome.id,
            duplicate: outcome.duplicate,
            verdict: outcome.verdict,
            reason: outcome.reason,
            release: outcome.release,
            rollouts: outcome.rollouts,
        }),
    )
        .into_response()
}

async fn ingest(
    state: &AppState,
    delivery: NewDelivery<'_>,
    work: Work,
) -> Result<Response, HookError> {
    Ok(respond(record(state, &delivery, &work).await?))
}

fn digest(body: &[u8]) -> String {
    Sha256::digest(body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn parse_payload<T: serde::de::DeserializeOwned>(json: &[u8], what: &str) -> Result<T, HookError> {
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        bad_request(format!(
            "not a {what} payload (at `{path}`): {}",
            error.into_inner()
        ))
    })
}

// ---------------------------------------------------------------------------------------------
// GitHub.

/// A form-encoded GitHub delivery.
#[derive(ToSchema)]
#[expect(
    dead_code,
    reason = "documents the form body, which is read by `form_field`"
)]
struct GithubForm {
    /// The event payload, as JSON.
    payload: String,
}

/// The JSON of a GitHub delivery: the body, or its `payload` field when form-encoded.
fn github_json(headers: &HeaderMap, body: &Bytes) -> Result<Vec<u8>, HookError> {
    let form = header(headers, header::CONTENT_TYPE.as_str())
        .is_some_and(|value| value.starts_with("application/x-www-form-urlencoded"));
    if !form {
        return Ok(body.to_vec());
    }
    form_field(body, "payload")
        .ok_or_else(|| bad_request("a form-encoded delivery needs a `payload` field"))
}

/// The value of `name` in an `application/x-www-form-urlencoded` body, decoded.
fn form_field(body: &[u8], name: &str) -> Option<Vec<u8>> {
    body.split(|&b| b == b'&').find_map(|pair| {
        let (key, value) = match pair.iter().position(|&b| b == b'=') {
            Some(at) => (&pair[..at], &pair[at + 1..]),
            None => (pair, &[][..]),
        };
        (percent_decode(key)? == name.as_bytes()).then(|| percent_decode(value))?
    })
}

fn percent_decode(text: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut index = 0;
    while index < text.len() {
        match text[index] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(text.get(index + 1..index + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                index += 2;
            }
            other => out.push(other),
        }
        index += 1;
    }
    Some(out)
}

#[utoipa::path(
    post,
    path = "/hooks/github",
    tag = "webhooks",
    summary = "Receive a GitHub delivery (the app is found by repository)",
    security(()),
    params(
        ("X-GitHub-Event" = String, Header, description = "The event: `push` acts, `ping` checks the hook, others are recorded as ignored."),
        ("X-GitHub-Delivery" = String, Header, description = "The delivery's unique id (GitHub reuses it on a redelivery)."),
        ("X-Hub-Signature-256" = String, Header, description = "`sha256=<hex HMAC-SHA256 of the body under the app's webhook_secret>`."),
    ),
    request_body(
        description = "GitHub's push event payload (any event is accepted and recorded), as JSON or form-encoded with the JSON in `payload`.",
        content(
            (Object = "application/json"),
            (GithubForm = "application/x-www-form-urlencoded"),
        ),
    ),
    responses(DeliveryResponses),
)]
async fn github(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, HookError> {
    receive_github(&state, None, &headers, body).await
}

#[utoipa::path(
    post,
    path = "/hooks/github/{app}",
    tag = "webhooks",
    summary = "Receive a GitHub delivery for a named app",
    security(()),
    params(
        ("app" = String, Path, description = "The app the delivery is for."),
        ("X-GitHub-Event" = String, Header, description = "The event: `push` acts, `ping` checks the hook, others are recorded as ignored."),
        ("X-GitHub-Delivery" = String, Header, description = "The delivery's unique id (GitHub reuses it on a redelivery)."),
        ("X-Hub-Signature-256" = String, Header, description = "`sha256=<hex HMAC-SHA256 of the body under the app's webhook_secret>`."),
    ),
    request_body(
        description = "GitHub's push event payload (any event is accepted and recorded), as JSON or form-encoded with the JSON in `payload`.",
        content(
            (Object = "application/json"),
            (GithubForm = "application/x-www-form-urlencoded"),
        ),
    ),
    responses(DeliveryResponses),
)]
async fn github_for_app(
    State(state): State<AppState>,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, HookError> {
    receive_github(&state, Some(&app), &headers, body).await
}

async fn receive_github(
    state: &AppState,
    named: Option<&str>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, HookError> {
    let body = body_of(body)?;
    let event = required(headers, "x-github-event")?;
    let delivery_id = required(headers, "x-github-delivery")?;
    let signature = header(headers, "x-hub-signature-256").ok_or_else(|| {
        unauthorized(
            "unsigned delivery: give the GitHub hook the app's webhook_secret as its secret, \
             so GitHub sends X-Hub-Signature-256",
        )
    })?;
    let json = github_json(headers, &body)?;
    let payload: Value = serde_json::from_slice(&json)
        .map_err(|error| bad_request(format!("the payload is not valid JSON: {error}")))?;
    let repository = payload
        .pointer("/repository/full_name")
        .and_then(Value::as_str);
    let candidates = candidates(state, named, repository, "repository.full_name").await?;
    let app = verified(candidates, |secret| {
        signature_matches(secret, &body, signature)
    })?;
    let work = match event {
        "ping" => Work::Record {
            verdict: Verdict::Ignored,
            reason: "ping: the hook reaches Shipgate and its signature verifies".into(),
        },
        "push" => {
            let push: GithubPush = parse_payload(&json, "GitHub push")?;
            work_for_push(&app.spec()?, &push.into())
        }
        other => Work::Record {
            verdict: Verdict::Ignored,
            reason: format!("event `{other}` is not handled; Shipgate acts on `push`"),
        },
    };
    let digest = digest(&body);
    let delivery = NewDelivery {
        source: "github",
        delivery_id,
        app_id: app.id,
        app: &app.name,
        event,
        payload_digest: &digest,
    };
    ingest(state, delivery, work).await
}

// ---------------------------------------------------------------------------------------------
// GitLab.

#[utoipa::path(
    post,
    path = "/hooks/gitlab",
    tag = "webhooks",
    summary = "Receive a GitLab delivery (the app is found by project path)",
    security(()),
    params(
        ("X-Gitlab-Event" = String, Header, description = "The event, such as `Push Hook` or `Tag Push Hook`; others are recorded as ignored."),
        ("X-Gitlab-Event-UUID" = String, Header, description = "The delivery's unique id."),
        ("X-Gitlab-Token" = String, Header, description = "The hook's secret token: the app's webhook_secret."),
    ),
    request_body(
        description = "GitLab's push or tag push event payload (any event is accepted and recorded).",
        content((Object = "application/json")),
    ),
    responses(DeliveryResponses),
)]
async fn gitlab(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, HookError> {
    receive_gitlab(&state, None, &headers, body).await
}

#[utoipa::path(
    post,
    path = "/hooks/gitlab/{app}",
    tag = "webhooks",
    summary = "Receive a GitLab delivery for a named app",
    security(()),
    params(
        ("app" = String, Path, description = "The app the delivery is for."),
        ("X-Gitlab-Event" = String, Header, description = "The event, such as `Push Hook` or `Tag Push Hook`; others are recorded as ignored."),
        ("X-Gitlab-Event-UUID" = String, Header, description = "The delivery's unique id."),
        ("X-Gitlab-Token" = String, Header, description = "The hook's secret token: the app's webhook_secret."),
    ),
    request_body(
        description = "GitLab's push or tag push event payload (any event is accepted and recorded).",
        content((Object = "application/json")),
    ),
    responses(DeliveryResponses),
)]
async fn gitlab_for_app(
    State(state): State<AppState>,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, HookError> {
    receive_gitlab(&state, Some(&app), &headers, body).await
}

async fn receive_gitlab(
    state: &AppState,
    named: Option<&str>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, HookError> {
    let body = body_of(body)?;
    let event = required(headers, "x-gitlab-event")?;
    let delivery_id = required(headers, "x-gitlab-event-uuid")?;
    let token = header(headers, "x-gitlab-token").ok_or_else(|| {
        unauthorized(
            "no X-Gitlab-Token: give the GitLab hook the app's webhook_secret as its secret token",
        )
    })?;
    let payload: Value = serde_json::from_slice(&body)
        .map_err(|error| bad_request(format!("the payload is not valid JSON: {error}")))?;
    let repository = payload
        .pointer("/project/path_with_namespace")
        .and_then(Value::as_str);
    let candidates = candidates(state, named, repository, "project.path_with_namespace").await?;
    let app = verified(candidates, |secret| token_matches(secret, token))?;
    let kind = payload.get("object_kind").and_then(Value::as_str);
    let work = match kind {
        Some("push" | "tag_push") => {
            let push: GitlabPush = parse_payload(&body, "GitLab push")?;
            work_for_push(&app.spec()?, &push.into())
        }
        other => Work::Record {
            verdict: Verdict::Ignored,
            reason: format!(
                "event `{}` is not handled; Shipgate acts on Push Hook and Tag Push Hook",
                other.unwrap_or(event)
            ),
        },
    };
    let digest = digest(&body);
    let delivery = NewDelivery {
        source: "gitlab",
        delivery_id,
        app_id: app.id,
        app: &app.name,
        event,
        payload_digest: &digest,
    };
    ingest(state, delivery, work).await
}

// ---------------------------------------------------------------------------------------------
// Generic (CI).

#[utoipa::path(
    post,
    path = "/hooks/generic/{app}",
    tag = "webhooks",
    summary = "Receive a signed release announcement from CI",
    security(()),
    params(
        ("app" = String, Path, description = "The app the delivery is for."),
        ("X-Shipgate-Delivery" = String, Header, description = "The delivery's unique id (reuse it on a retry)."),
        ("X-Shipgate-Signature" = String, Header, description = "`sha256=<hex HMAC-SHA256 of the body under the app's webhook_secret>`."),
    ),
    request_body(
        description = "The release to make, as `POST /api/v1/apps/{app}/releases` takes it; it rolls out where the auto-deploy rules admit it.",
        content((NewRelease = "application/json")),
    ),
    responses(DeliveryResponses),
)]
async fn generic(
    State(state): State<AppState>,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, HookError> {
    let body = body_of(body)?;
    let delivery_id = required(&headers, GENERIC_DELIVERY_HEADER)?;
    let signature = header(&headers, GENERIC_SIGNATURE_HEADER).ok_or_else(|| {
        unauthorized(
            "unsigned delivery: send X-Shipgate-Signature: sha256=<hex HMAC-SHA256 of the body \
             under the app's webhook_secret>",
        )
    })?;
    let candidates = candidates(&state, Some(app.as_str()), None, "").await?;
    let app = verified(candidates, |secret| {
        signature_matches(secret, &body, signature)
    })?;
    let release: NewRelease = parse_json(&body)?;
    let spec = app.spec()?;
    let digest = digest(&body);
    let delivery = NewDelivery {
        source: "generic",
        delivery_id,
        app_id: app.id,
        app: &app.name,
        event: "release",
        payload_digest: &digest,
    };
    if let Err((field, message)) = releases::check(&release, &spec.components) {
        // Signed, so recorded; refused, and said so in the answer for the CI job to fail.
        let reason = format!("{field}: {message}");
        let work = Work::Record {
            verdict: Verdict::Refused,
            reason: reason.clone(),
        };
        let outcome = record(&state, &delivery, &work).await?;
        if outcome.duplicate {
            return Ok(respond(outcome));
        }
        return Err(ApiError::field(field, message).into());
    }
    let pushed = match release.git_ref.as_deref() {
        None => PushedRefOwned::None,
        Some(text) => {
            if let Some(tag) = text.strip_prefix("refs/tags/") {
                PushedRefOwned::Tag(tag.to_owned())
            } else {
                PushedRefOwned::Branch(text.strip_prefix("refs/heads/").unwrap_or(text).to_owned())
            }
        }
    };
    let work = Work::Push(Box::new(Push {
        versions: vec![release.version.clone()],
        release,
        same_commit_is_same_release: false,
        always_release: true,
        pushed,
        changed_paths: None,
        default_branch: None,
    }));
    ingest(&state, delivery, work).await
}

// ---------------------------------------------------------------------------------------------
// Visibility.

/// A page of an app's webhook deliveries, newest first.
#[derive(Serialize, ToSchema)]
pub struct DeliveryPage {
    /// The deliveries.
    pub items: Vec<Delivery>,
    /// Pass as `before` for the next page; null on the last page.
    pub next_cursor: Option<Uuid>,
}

/// An app's deliveries, newest first, cursor-paginated (`?before=<next_cursor>&limit=`).
#[utoipa::path(
    get,
    path = "/api/v1/apps/{app}/deliveries",
    tag = "webhooks",
    summary = "An app's webhook deliveries and what became of each",
    params(("app" = String, Path, description = "The app's name."), Page),
    responses(
        (status = 200, description = "A page of deliveries.", body = DeliveryPage),
        (status = 404, description = "No such app.", body = Problem, content_type = "application/problem+json"),
    ),
)]
async fn list_deliveries(
    caller: Caller,
    State(state): State<AppState>,
    Path(app): Path<String>,
    Query(page): Query<Page>,
) -> Result<Json<DeliveryPage>, ApiError> {
    caller.require(Scope::Read, Target::App(&app))?;
    let app = apps::get(&state.pool, &app).await?;
    let limit = crate::api::limit(page.limit);
    let items = webhooks::list(&state.pool, app.id, page.before, limit).await?;
    let next = (items.len() as i64 == limit)
        .then(|| items.last().map(|delivery| delivery.id))
        .flatten();
    Ok(Json(DeliveryPage {
        items,
        next_cursor: next,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shipgate_domain::config;

    #[test]
    fn the_github_documented_signature_verifies_and_others_do_not() {
        // shared/providers.md, from GitHub's "Validating webhook deliveries".
        let secret = "It's a Secret to Everybody";
        let signature = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(signature_matches(secret, b"Hello, World!", signature));
        assert!(!signature_matches(secret, b"Hello, World?", signature));
        assert!(!signature_matches(
            "another secret",
            b"Hello, World!",
            signature
        ));
        assert!(!signature_matches(
            secret,
            b"Hello, World!",
            &signature[7..]
        ));
        assert!(!signature_matches(secret, b"Hello, World!", "sha256=zz"));
        assert!(!signature_matches(
            secret,
            b"Hello, World!",
            "sha1=757107ea"
        ));
    }

    #[test]
    fn gitlab_tokens_compare_whole() {
        assert!(token_matches("s3cret", "s3cret"));
        assert!(!token_matches("s3cret", "s3cre"));
        assert!(!token_matches("s3cret", ""));
    }

    #[test]
    fn form_encoded_payloads_decode() {
        let body = b"other=1&payload=%7B%22a%22%3A+%22b+c%22%7D";
        assert_eq!(form_field(body, "payload").unwrap(), br#"{"a": "b c"}"#);
        assert_eq!(form_field(body, "missing"), None);
        assert_eq!(form_field(b"payload=%zz", "payload"), None);
    }

    fn spec(targets: &str) -> AppSpec {
        let text = format!(
            "app: shop\nrepository: acme/shop\ncomponents: [web, api, jobs]\n\
             credentials: {{ heroku: k, vercel: v, gcp: g }}\n\
             environments:\n  - name: production\n    targets:\n{targets}\n    plan:\n      - name: all\n        deploy: [web, api, jobs]\n        traffic: {{ component: jobs, percent: 100 }}\n"
        );
        config::load(&text, &|_| None).unwrap().spec
    }

    #[test]
    fn a_push_gives_each_component_its_commit_in_the_form_its_platform_reads() {
        let spec = spec(
            "      web: { provider: vercel, project_id: prj_1, credential: vercel }\n      \
             api: { provider: heroku, app: shop-api, credential: heroku }\n      \
             jobs: { provider: cloudrun, project: p, region: r, service: s, credential: gcp }",
        );
        let payload: GithubPush = serde_json::from_str(include_str!(
            "../../../tests/fixtures/github/push-branch.json"
        ))
        .unwrap();
        let push: GitPush = payload.into();
        let sha = "6113728f27ae82c7b1a177c8d03f9e96e0adf246";
        let artifacts = git_artifacts(&spec, &push);
        assert_eq!(artifacts["web"]["gitSource"]["org"], "Codertocat");
        assert_eq!(artifacts["web"]["gitSource"]["repo"], "Hello-World");
        assert_eq!(artifacts["web"]["gitSource"]["sha"], sha);
        assert_eq!(
            artifacts["api"]["source_blob"]["url"],
            format!("https://github.com/Codertocat/Hello-World/archive/{sha}.tar.gz")
        );
        assert!(!artifacts.contains_key("jobs"), "Cloud Run deploys images");

        let Work::Push(work) = work_for_push(&spec, &push) else {
            panic!("a push to the default branch makes a release");
        };
        assert_eq!(work.versions[0], "6113728");
        assert_eq!(work.release.git_ref.as_deref(), Some("refs/heads/master"));
        assert_eq!(
            work.changed_paths.as_deref(),
            Some(&["README.md".to_owned()][..])
        );
        assert!(work
            .release
            .notes
            .unwrap()
            .starts_with("Initial commit\n\nAuthor: Codertocat"));
        assert_eq!(
            work.release.committed_at.unwrap().to_rfc3339(),
            "2019-05-15T15:19:25+00:00"
        );
    }

    #[test]
    fn gitlab_pushes_read_their_head_commit_and_tags_their_name() {
        let spec = spec(
            "      web: { provider: simulated }\n      api: { provider: render, service_id: srv-1, credential: heroku }\n      jobs: { provider: simulated }",
        );
        let push: GitlabPush =
            serde_json::from_str(include_str!("../../../tests/fixtures/gitlab/push.json")).unwrap();
        let push: GitPush = push.into();
        assert_eq!(push.sha, "da1560886d4f094c3e6c9ef40349f7d38b5d27d7");
        assert_eq!(push.head.as_ref().unwrap().message, "fixed readme");
        // 4 commits pushed, 2 listed: the file list is incomplete.
        assert_eq!(push.changed, None);
        assert_eq!(git_artifacts(&spec, &push)["api"], json!(push.sha));

        let tag: GitlabPush =
            serde_json::from_str(include_str!("../../../tests/fixtures/gitlab/tag_push.json"))
                .unwrap();
        let Work::Push(work) = work_for_push(&spec, &tag.into()) else {
            panic!("a tag makes a release");
        };
        assert_eq!(work.versions, ["v1.0.0"]);
        assert_eq!(work.pushed, PushedRefOwned::Tag("v1.0.0".into()));
    }

    #[test]
    fn deletions_are_ignored() {
        let spec = spec("      web: { provider: simulated }\n      api: { provider: simulated }\n      jobs: { provider: simulated }");
        let push: GithubPush = serde_json::from_str(include_str!(
            "../../../tests/fixtures/github/push-deleted.json"
        ))
        .unwrap();
        match work_for_push(&spec, &push.into()) {
            Work::Record { verdict, reason } => {
                assert_eq!(verdict, Verdict::Ignored);
                assert!(reason.contains("deleted"), "{reason}");
            }
            Work::Push(_) => panic!("a deletion releases nothing"),
        }
    }
}
