//! A fake of the Render API, served under `/v1` like the real one:
//!
//! - `POST /services/{id}/deploys` (`{"commitId"}` or `{"imageUrl"}`) answers **201** with a
//!   Deploy (or **202 with an empty body** when asked to, see
//!   [`FakeRender::accept_with_empty_202`]); the deploy moves `created` → `build_in_progress` →
//!   `pre_deploy_in_progress` → `update_in_progress` → `live` over [`FakeRender::latency`], or
//!   stops at `build_failed` / `pre_deploy_failed` for the commits and images named in
//!   [`FakeRender::failing_builds`] / [`FakeRender::failing_pre_deploys`]. A deploy going live
//!   deactivates the service's previous live deploy.
//! - `GET /services/{id}/deploys?limit&status&cursor` (newest first, as
//!   `[{"deploy", "cursor"}]`), `GET /services/{id}/deploys/{deployId}`,
//!   `POST /services/{id}/deploys/{deployId}/cancel`.
//! - `POST /services/{id}/rollback {"deployId"}` answers 201 with a new deploy
//!   (`trigger: "rollback"`) of that deploy's commit or image, which skips the build.
//! - `GET|PUT /services/{id}/env-vars`, `PUT|DELETE /services/{id}/env-vars/{key}`.
//! - Errors are Render's `{"id", "message", "code"?}`; every call needs a bearer token; 429s
//!   (from [`Chaos`]) carry `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` and
//!   `Retry-After`.
//!
//! [`FakeRender::deploy_directly`] makes a deploy as the dashboard or a git push would, to
//! simulate drift.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::{serve, with_chaos, CallLog, Chaos};

/// The service every fake starts with.
pub const SERVICE_ID: &str = "srv-fake0000000000000001";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Outcome {
    Live,
    BuildFailed,
    PreDeployFailed,
}

struct Deploy {
    id: String,
    service: String,
    commit: Option<String>,
    image: Option<String>,
    trigger: String,
    created_at: DateTime<Utc>,
    started: Instant,
    latency: Duration,
    outcome: Outcome,
    /// Rollbacks reuse a build.
    builds: bool,
    /// The final status, once settled (`live` may later become `deactivated`).
    settled: Option<&'static str>,
    finished_at: Option<DateTime<Utc>>,
}

impl Deploy {
    /// The fraction of the latency at which the deploy settles.
    fn settles_at(&self) -> Instant {
        let fraction = match self.outcome {
            Outcome::Live => 1.0,
            Outcome::BuildFailed => 0.5,
            Outcome::PreDeployFailed => 0.75,
        };
        self.started + self.latency.mul_f64(fraction)
    }

    fn status(&self, now: Instant) -> &'static str {
        if let Some(status) = self.settled {
            return status;
        }
        let elapsed = now.saturating_duration_since(self.started).as_secs_f64();
        let progress = elapsed / self.latency.as_secs_f64().max(f64::EPSILON);
        match (self.builds, progress) {
            (_, p) if p < 0.2 => "created",
            (true, p) if p < 0.5 => "build_in_progress",
            (true, p) if p < 0.75 => "pre_deploy_in_progress",
            _ => "update_in_progress",
        }
    }

    fn json(&self, now: Instant) -> Value {
        let created = self.created_at.to_rfc3339();
        let updated = self.finished_at.unwrap_or(self.created_at).to_rfc3339();
        let mut deploy = json!({
            "id": self.id,
            "status": self.status(now),
            "trigger": self.trigger,
            "createdAt": created,
            "updatedAt": updated,
            "startedAt": created,
            "finishedAt": self.finished_at.map(|at| at.to_rfc3339()),
        });
        if let Some(commit) = &self.commit {
            deploy["commit"] = json!({
                "id": commit,
                "message": format!("commit {commit}"),
                "createdAt": created,
            });
        }
        if let Some(image) = &self.image {
            deploy["image"] = json!({
                "ref": image,
                "sha": format!("sha256:{:0>64}", self.id.trim_start_matches("dep-")),
                "registryCredential": null,
            });
        }
        deploy
    }
}

#[derive(Default)]
struct World {
    services: BTreeSet<String>,
    /// In creation order.
    deploys: Vec<Deploy>,
    env: HashMap<String, BTreeMap<String, String>>,
    next: u64,
}

impl World {
    /// Settles the deploys that are due, in the order they fall due.
    fn advance(&mut self) {
        let now = Instant::now();
        let mut due: Vec<usize> = (0..self.deploys.len())
            .filter(|&i| self.deploys[i].settled.is_none() && self.deploys[i].settles_at() <= now)
            .collect();
        due.sort_by_key(|&i| self.deploys[i].settles_at());
        for i in due {
            let (service, outcome, at) = {
                let deploy = &self.deploys[i];
                let late = deploy
                    .settles_at()
                    .saturating_duration_since(deploy.started);
                let at = deploy.created_at
                    + chrono::Duration::from_std(late).unwrap_or(chrono::Duration::zero());
                (deploy.service.clone(), deploy.outcome, at)
            };
            if outcome == Outcome::Live {
                for other in self.deploys.iter_mut() {
                    if other.service == service && other.settled == Some("live") {
                        other.settled = Some("deactivated");
                    }
                }
            }
            let deploy = &mut self.deploys[i];
            deploy.settled = Some(match outcome {
                Outcome::Live => "live",
                Outcome::BuildFailed => "build_failed",
                Outcome::PreDeployFailed => "pre_deploy_failed",
            });
            deploy.finished_at = Some(at);
        }
    }

    fn find(&self, service: &str, id: &str) -> Option<usize> {
        self.deploys
            .iter()
            .position(|d| d.service == service && d.id == id)
    }
}

/// The fake's state and knobs.
#[derive(Clone, Default)]
pub struct FakeRender {
    world: Arc<Mutex<World>>,
    /// Commit ids or image references whose builds fail (`build_failed`).
    pub failing_builds: Arc<Mutex<HashSet<String>>>,
    /// Commit ids or image references whose pre-deploy command fails (`pre_deploy_failed`).
    pub failing_pre_deploys: Arc<Mutex<HashSet<String>>>,
    /// How long a deploy takes to go live.
    pub latency: Arc<Mutex<Duration>>,
    /// The next this-many deploy triggers are answered 202 with an empty body.
    pub accept_with_empty_202: Arc<AtomicU32>,
    /// Calls received (method, path after `/v1`, JSON body or `Null`).
    pub calls: CallLog,
    /// Failure injection.
    pub chaos: Arc<Chaos>,
}

fn error_body(status: u16, message: &str) -> Value {
    json!({ "id": format!("err-{status}-{}", uuid::Uuid::new_v4().simple()), "message": message })
}

/// A refused request, boxed (a response is large).
type Refusal = Box<Response>;

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(error_body(status.as_u16(), message))).into_response()
}

fn authorized(headers: &HeaderMap) -> Result<(), Refusal> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("");
    if token.is_empty() {
        return Err(Box::new(error(StatusCode::UNAUTHORIZED, "unauthorized")));
    }
    Ok(())
}

fn parse(body: &Bytes) -> Result<Value, Refusal> {
    if body.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(body).map_err(|_| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            "the request body is not valid JSON",
        ))
    })
}

/// Adds Render's rate-limit headers to every 429.
async fn rate_limit_headers(mut response: Response) -> Response {
    if response.status() == StatusCode::TOO_MANY_REQUESTS {
        let reset = response
            .headers()
            .get("retry-after")
            .cloned()
            .unwrap_or(HeaderValue::from_static("60"));
        let headers = response.headers_mut();
        headers.insert("ratelimit-limit", HeaderValue::from_static("400"));
        headers.insert("ratelimit-remaining", HeaderValue::from_static("0"));
        headers.insert("ratelimit-reset", reset);
    }
    response
}

impl FakeRender {
    /// Starts the fake with one service, [`SERVICE_ID`]; returns it with its API base URL
    /// (ending in `/v1`, to use as the target's `api_url`).
    pub async fn start() -> (Self, String) {
        let fake = FakeRender::default();
        *fake.latency.lock().unwrap() = Duration::from_millis(200);
        fake.add_service(SERVICE_ID);
        let api = Router::new()
            .route(
                "/services/{service}/deploys",
                post(trigger_deploy).get(list_deploys),
            )
            .route("/services/{service}/deploys/{deploy}", get(get_deploy))
            .route(
                "/services/{service}/deploys/{deploy}/cancel",
                post(cancel_deploy),
            )
            .route("/services/{service}/rollback", post(rollback))
            .route(
                "/services/{service}/env-vars",
                get(list_env).put(replace_env),
            )
            .route(
                "/services/{service}/env-vars/{key}",
                put(put_env).delete(delete_env),
            )
            .with_state(fake.clone());
        let router = Router::new().nest("/v1", api);
        let router = with_chaos(router, fake.chaos.clone(), error_body)
            .layer(axum::middleware::map_response(rate_limit_headers));
        let url = serve(router).await;
        (fake, format!("{url}/v1"))
    }

    /// Adds a service.
    pub fn add_service(&self, id: &str) {
        self.world.lock().unwrap().services.insert(id.to_owned());
    }

    fn create(
        &self,
        world: &mut World,
        service: &str,
        commit: Option<String>,
        image: Option<String>,
        trigger: &str,
    ) -> usize {
        world.next += 1;
        let builds = trigger != "rollback";
        let artifact = commit.clone().or_else(|| image.clone()).unwrap_or_default();
        let outcome = if builds && self.failing_builds.lock().unwrap().contains(&artifact) {
            Outcome::BuildFailed
        } else if self.failing_pre_deploys.lock().unwrap().contains(&artifact) {
            Outcome::PreDeployFailed
        } else {
            Outcome::Live
        };
        world.deploys.push(Deploy {
            id: format!("dep-{:020}", world.next),
            service: service.to_owned(),
            commit,
            image,
            trigger: trigger.to_owned(),
            created_at: Utc::now(),
            started: Instant::now(),
            latency: *self.latency.lock().unwrap(),
            outcome,
            builds,
            settled: None,
            finished_at: None,
        });
        world.deploys.len() - 1
    }

    /// Starts a deploy outside Shipgate (the dashboard, a git push with autodeploy on), with
    /// the given trigger (`manual`, `new_commit`, …); returns its id.
    pub fn deploy_directly(&self, service: &str, commit: &str, trigger: &str) -> String {
        let mut world = self.world.lock().unwrap();
        world.advance();
        let index = self.create(&mut world, service, Some(commit.to_owned()), None, trigger);
        world.deploys[index].id.clone()
    }

    /// A deploy as the API shows it now.
    pub fn deploy(&self, id: &str) -> Option<Value> {
        let mut world = self.world.lock().unwrap();
        world.advance();
        let now = Instant::now();
        world
            .deploys
            .iter()
            .find(|d| d.id == id)
            .map(|d| d.json(now))
    }

    /// A service's deploys as the API shows them now, newest first.
    pub fn deploys(&self, service: &str) -> Vec<Value> {
        let mut world = self.world.lock().unwrap();
        world.advance();
        let now = Instant::now();
        world
            .deploys
            .iter()
            .rev()
            .filter(|d| d.service == service)
            .map(|d| d.json(now))
            .collect()
    }

    /// A service's environment variables.
    pub fn env(&self, service: &str) -> BTreeMap<String, String> {
        self.world
            .lock()
            .unwrap()
            .env
            .get(service)
            .cloned()
            .unwrap_or_default()
    }

    /// Records a call and checks its token and service.
    fn enter(
        &self,
        method: &str,
        path: &str,
        headers: &HeaderMap,
        body: &Value,
        service: &str,
    ) -> Result<(), Refusal> {
        self.calls.record(method, path, body.clone());
        authorized(headers)?;
        if !self.world.lock().unwrap().services.contains(service) {
            return Err(Box::new(error(StatusCode::NOT_FOUND, "service not found")));
        }
        Ok(())
    }
}

fn text(body: &Value, key: &str) -> Option<String> {
    body.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

async fn trigger_deploy(
    State(fake): State<FakeRender>,
    Path(service): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body = match parse(&body) {
        Ok(body) => body,
        Err(response) => return *response,
    };
    let path = format!("/services/{service}/deploys");
    if let Err(response) = fake.enter("POST", &path, &headers, &body, &service) {
        return *response;
    }
    let commit = text(&body, "commitId");
    let image = text(&body, "imageUrl");
    if body.get("deployMode").and_then(Value::as_str) == Some("deploy_only")
        && (commit.is_some() || image.is_some() || body.get("clearCache").is_some())
    {
        return error(
            StatusCode::BAD_REQUEST,
            "deployMode deploy_only cannot be combined with commitId, imageUrl or clearCache",
        );
    }
    match (&commit, &image) {
        (Some(_), Some(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "only one of commitId and imageUrl may be given",
            )
        }
        (None, None) => {
            return error(
                StatusCode::BAD_REQUEST,
                "the fake needs a commitId or an imageUrl",
            )
        }
        _ => {}
    }
    let mut world = fake.world.lock().unwrap();
    world.advance();
    let index = fake.create(&mut world, &service, commit, image, "api");
    let empty = fake
        .accept_with_empty_202
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if empty {
        return StatusCode::ACCEPTED.into_response();
    }
    (
        StatusCode::CREATED,
        Json(world.deploys[index].json(Instant::now())),
    )
        .into_response()
}

async fn list_deploys(
    State(fake): State<FakeRender>,
    Path(service): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/services/{service}/deploys");
    if let Err(response) = fake.enter("GET", &path, &headers, &Value::Null, &service) {
        return *response;
    }
    let limit = match query.get("limit").map(|l| l.parse::<usize>()) {
        None => 20,
        Some(Ok(limit)) if (1..=100).contains(&limit) => limit,
        Some(_) => return error(StatusCode::BAD_REQUEST, "limit must be between 1 and 100"),
    };
    let statuses: Vec<&str> = query
        .get("status")
        .map(|s| s.split(',').map(str::trim).collect())
        .unwrap_or_default();
    let mut world = fake.world.lock().unwrap();
    world.advance();
    let now = Instant::now();
    let mut newest_first = world
        .deploys
        .iter()
        .rev()
        .filter(|d| d.service == service)
        .peekable();
    if let Some(cursor) = query.get("cursor") {
        while newest_first.next_if(|d| &d.id != cursor).is_some() {}
        newest_first.next();
    }
    let page: Vec<Value> = newest_first
        .filter(|d| statuses.is_empty() || statuses.contains(&d.status(now)))
        .take(limit)
        .map(|d| json!({ "deploy": d.json(now), "cursor": d.id }))
        .collect();
    Json(Value::Array(page)).into_response()
}

async fn get_deploy(
    State(fake): State<FakeRender>,
    Path((service, deploy)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/services/{service}/deploys/{deploy}");
    if let Err(response) = fake.enter("GET", &path, &headers, &Value::Null, &service) {
        return *response;
    }
    let mut world = fake.world.lock().unwrap();
    world.advance();
    match world.find(&service, &deploy) {
        Some(index) => Json(world.deploys[index].json(Instant::now())).into_response(),
        None => error(StatusCode::NOT_FOUND, "deploy not found"),
    }
}

async fn cancel_deploy(
    State(fake): State<FakeRender>,
    Path((service, deploy)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/services/{service}/deploys/{deploy}/cancel");
    if let Err(response) = fake.enter("POST", &path, &headers, &Value::Null, &service) {
        return *response;
    }
    let mut world = fake.world.lock().unwrap();
    world.advance();
    let Some(index) = world.find(&service, &deploy) else {
        return error(StatusCode::NOT_FOUND, "deploy not found");
    };
    let deploy = &mut world.deploys[index];
    if deploy.settled.is_some() {
        return error(
            StatusCode::CONFLICT,
            "the deploy has finished and cannot be canceled",
        );
    }
    deploy.settled = Some("canceled");
    deploy.finished_at = Some(Utc::now());
    Json(deploy.json(Instant::now())).into_response()
}

async fn rollback(
    State(fake): State<FakeRender>,
    Path(service): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body = match parse(&body) {
        Ok(body) => body,
        Err(response) => return *response,
    };
    let path = format!("/services/{service}/rollback");
    if let Err(response) = fake.enter("POST", &path, &headers, &body, &service) {
        return *response;
    }
    let Some(target) = text(&body, "deployId") else {
        return error(StatusCode::BAD_REQUEST, "deployId is required");
    };
    let mut world = fake.world.lock().unwrap();
    world.advance();
    let Some(index) = world.find(&service, &target) else {
        return error(StatusCode::NOT_FOUND, "deploy not found");
    };
    let (commit, image) = {
        let deploy = &world.deploys[index];
        if !matches!(deploy.settled, Some("live" | "deactivated")) {
            return error(
                StatusCode::BAD_REQUEST,
                "only a deploy that went live can be rolled back to",
            );
        }
        (deploy.commit.clone(), deploy.image.clone())
    };
    let index = fake.create(&mut world, &service, commit, image, "rollback");
    (
        StatusCode::CREATED,
        Json(world.deploys[index].json(Instant::now())),
    )
        .into_response()
}

fn env_list(vars: &BTreeMap<String, String>) -> Value {
    Value::Array(
        vars.iter()
            .map(|(key, value)| json!({ "envVar": { "key": key, "value": value }, "cursor": key }))
            .collect(),
    )
}

async fn list_env(
    State(fake): State<FakeRender>,
    Path(service): Path<String>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/services/{service}/env-vars");
    if let Err(response) = fake.enter("GET", &path, &headers, &Value::Null, &service) {
        return *response;
    }
    Json(env_list(&fake.env(&service))).into_response()
}

fn value_of(item: &Value) -> Option<String> {
    if item.get("generateValue").and_then(Value::as_bool) == Some(true) {
        return Some(uuid::Uuid::new_v4().simple().to_string());
    }
    item.get("value").and_then(Value::as_str).map(str::to_owned)
}

async fn replace_env(
    State(fake): State<FakeRender>,
    Path(service): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body = match parse(&body) {
        Ok(body) => body,
        Err(response) => return *response,
    };
    let path = format!("/services/{service}/env-vars");
    if let Err(response) = fake.enter("PUT", &path, &headers, &body, &service) {
        return *response;
    }
    let Some(items) = body.as_array() else {
        return error(
            StatusCode::BAD_REQUEST,
            "the body must be a list of env vars",
        );
    };
    let mut vars = BTreeMap::new();
    for item in items {
        match (text(item, "key"), value_of(item)) {
            (Some(key), Some(value)) => {
                vars.insert(key, value);
            }
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "each env var needs a key and a value",
                )
            }
        }
    }
    let answer = env_list(&vars);
    fake.world.lock().unwrap().env.insert(service, vars);
    Json(answer).into_response()
}

async fn put_env(
    State(fake): State<FakeRender>,
    Path((service, key)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body = match parse(&body) {
        Ok(body) => body,
        Err(response) => return *response,
    };
    let path = format!("/services/{service}/env-vars/{key}");
    if let Err(response) = fake.enter("PUT", &path, &headers, &body, &service) {
        return *response;
    }
    let Some(value) = value_of(&body) else {
        return error(StatusCode::BAD_REQUEST, "value is required");
    };
    fake.world
        .lock()
        .unwrap()
        .env
        .entry(service)
        .or_default()
        .insert(key.clone(), value.clone());
    Json(json!({ "key": key, "value": value })).into_response()
}

async fn delete_env(
    State(fake): State<FakeRender>,
    Path((service, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/services/{service}/env-vars/{key}");
    if let Err(response) = fake.enter("DELETE", &path, &headers, &Value::Null, &service) {
        return *response;
    }
    let removed = fake
        .world
        .lock()
        .unwrap()
        .env
        .get_mut(&service)
        .and_then(|vars| vars.remove(&key));
    match removed {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => error(StatusCode::NOT_FOUND, "env var not found"),
    }
}
