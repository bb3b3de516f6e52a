//! A fake of the Vercel REST API (`shared/providers.md` §2) for one project, [`PROJECT_ID`]:
//!
//! - `POST /v13/deployments` (answers **200**; `gitSource` or a redeploy's `deploymentId`),
//!   `GET /v13/deployments/{id}`, `GET /v6/deployments?projectId=&limit=` (newest first, with
//!   `meta`). A deployment goes `QUEUED → INITIALIZING → BUILDING → READY | ERROR` over
//!   [`FakeVercel::latency`]; a production deployment is aliased to production when READY,
//!   unless auto-assignment is off ([`FakeVercel::auto_assign`], or after an instant rollback,
//!   as on Vercel), in which case it stays `readySubstate: STAGED`.
//! - `POST /v10/projects/{id}/promote/{dpl}` and `POST /v1|v9/projects/{id}/rollback/{dpl}`
//!   (**201/202, no body**) record a `lastAliasRequest` that is `pending`, then `in-progress`,
//!   then `succeeded` after [`FakeVercel::alias_latency`], moving `targets.production`.
//! - `GET /v9/projects/{id}`: `targets.production`, `lastAliasRequest`.
//! - Env vars: `POST /v10/projects/{id}/env` (**201** `{created, failed[]}`), `GET
//!   /v10/projects/{id}/env`, `DELETE /v9/projects/{id}/env/{envId}`.
//! - Rolling releases: `GET …/rolling-release`, `POST …/rolling-release/start`,
//!   `…/approve-stage`, `…/complete`, over [`FakeVercel::stages`]; with
//!   [`FakeVercel::rolling_releases`] on, a new production deployment starts one by itself.
//!
//! Every call needs a bearer token; errors are `{"error":{"code","message"}}`, a 429 adds
//! `error.limit`. Calls are recorded with their query string.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, RawQuery, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{serve, with_chaos, CallLog, Chaos};

/// The one project the fake knows.
pub const PROJECT_ID: &str = "prj_fake";

#[derive(Clone)]
struct Deployment {
    id: String,
    name: String,
    target: Option<String>,
    git_source: Value,
    meta: Value,
    created: Instant,
    created_ms: i64,
    ready_at: Instant,
    fails: bool,
    /// Whether the fake has already applied what READY means (production alias).
    settled: bool,
    /// READY but not aliased (auto-assignment off).
    staged: bool,
}

impl Deployment {
    fn ready_state(&self, now: Instant) -> &'static str {
        if now >= self.ready_at {
            return if self.fails { "ERROR" } else { "READY" };
        }
        let total = self.ready_at.duration_since(self.created).as_secs_f64();
        let elapsed = now.duration_since(self.created).as_secs_f64();
        match elapsed / total.max(f64::EPSILON) {
            share if share < 0.25 => "QUEUED",
            share if share < 0.5 => "INITIALIZING",
            _ => "BUILDING",
        }
    }
}

struct AliasRequest {
    kind: &'static str,
    from: Option<String>,
    to: String,
    requested_ms: i64,
    requested: Instant,
    done_at: Instant,
    settled: bool,
}

struct RollingRelease {
    canary: String,
    previous: Option<String>,
    stage: usize,
    state: &'static str,
}

struct EnvVar {
    id: String,
    key: String,
    value: String,
    kind: String,
    target: Value,
}

#[derive(Default)]
struct World {
    deployments: Vec<Deployment>,
    production: Option<String>,
    alias_request: Option<AliasRequest>,
    rolled_back: bool,
    rolling: Option<RollingRelease>,
    envs: Vec<EnvVar>,
    next_id: u64,
}

/// The fake's state and knobs.
#[derive(Clone)]
pub struct FakeVercel {
    world: Arc<Mutex<World>>,
    /// Git refs or shas whose builds fail (`ERROR`).
    pub failing_refs: Arc<Mutex<Vec<String>>>,
    /// Versions (`meta.shipgate_version`) whose builds fail.
    pub failing_versions: Arc<Mutex<Vec<String>>>,
    /// Env var keys the fake refuses (reported in `failed[]`).
    pub refused_env_keys: Arc<Mutex<Vec<String>>>,
    /// How long a deployment takes to reach READY or ERROR.
    pub latency: Arc<Mutex<Duration>>,
    /// How long a promotion or rollback takes to succeed.
    pub alias_latency: Arc<Mutex<Duration>>,
    /// Whether READY production deployments get the production alias at once.
    pub auto_assign: Arc<AtomicBool>,
    /// Whether the project has rolling releases on: a new production deployment then starts a
    /// rolling release as the canary instead of taking all traffic.
    pub rolling_releases: Arc<AtomicBool>,
    /// Rolling-release stages, as target percentages (the last is 100).
    pub stages: Arc<Mutex<Vec<u8>>>,
    /// Calls received, paths with their query strings.
    pub calls: CallLog,
    /// Failure injection.
    pub chaos: Arc<Chaos>,
    clock_ms: Arc<AtomicU64>,
}

fn error_body(status: u16, message: &str) -> Value {
    let code = match status {
        400 => "bad_request",
        403 => "forbidden",
        404 => "not_found",
        429 => "rate_limited",
        _ => "internal_server_error",
    };
    let mut body = json!({ "error": { "code": code, "message": message } });
    if status == 429 {
        let now = chrono::Utc::now().timestamp();
        body["error"]["limit"] = json!({
            "remaining": 0, "reset": now + 1, "resetMs": (now + 1) * 1000, "total": 100,
        });
    }
    body
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(error_body(status.as_u16(), message))).into_response()
}

fn record_path(path: &str, query: &Option<String>) -> String {
    match query {
        Some(query) if !query.is_empty() => format!("{path}?{query}"),
        _ => path.to_owned(),
    }
}

async fn require_token(request: Request, next: Next) -> Response {
    let authorized = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Bearer ") && v.len() > "Bearer ".len());
    if !authorized {
        return error(StatusCode::FORBIDDEN, "Not authorized");
    }
    next.run(request).await
}

impl FakeVercel {
    fn new() -> Self {
        FakeVercel {
            world: Arc::default(),
            failing_refs: Arc::default(),
            failing_versions: Arc::default(),
            refused_env_keys: Arc::default(),
            latency: Arc::new(Mutex::new(Duration::from_millis(150))),
            alias_latency: Arc::new(Mutex::new(Duration::from_millis(60))),
            auto_assign: Arc::new(AtomicBool::new(true)),
            rolling_releases: Arc::new(AtomicBool::new(false)),
            stages: Arc::new(Mutex::new(vec![10, 25, 50, 100])),
            calls: CallLog::default(),
            chaos: Arc::default(),
            clock_ms: Arc::new(AtomicU64::new(1_700_000_000_000)),
        }
    }

    /// Starts the fake; returns it with its base URL (the `api_url` setting).
    pub async fn start() -> (Self, String) {
        let fake = FakeVercel::new();
        let project = "/{version}/projects/{project}";
        let router = Router::new()
            .route("/v13/deployments", post(create_deployment))
            .route("/v13/deployments/{id}", get(get_deployment))
            .route("/v6/deployments", get(list_deployments))
            .route(project, get(get_project))
            .route(&format!("{project}/promote/{{id}}"), post(promote))
            .route(&format!("{project}/rollback/{{id}}"), post(rollback))
            .route(&format!("{project}/env"), post(create_env).get(list_env))
            .route(&format!("{project}/env/{{env}}"), delete(delete_env))
            .route(&format!("{project}/rolling-release"), get(get_rolling))
            .route(
                &format!("{project}/rolling-release/{{action}}"),
                post(rolling_action),
            )
            .layer(axum::middleware::from_fn(require_token))
            .with_state(fake.clone());
        let url = serve(with_chaos(router, fake.chaos.clone(), error_body)).await;
        (fake, url)
    }

    fn now_ms(&self) -> i64 {
        // Strictly increasing, so "newest first" is well defined within one millisecond.
        let wall = chrono::Utc::now().timestamp_millis() as u64;
        let previous = self
            .clock_ms
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
                Some(wall.max(last + 1))
            })
            .unwrap_or(wall);
        wall.max(previous + 1) as i64
    }

    /// Applies what time has done: builds finishing, production aliases, alias requests.
    fn advance(&self, world: &mut World) {
        let now = Instant::now();
        let auto_assign = self.auto_assign.load(Ordering::SeqCst);
        let rolling_releases = self.rolling_releases.load(Ordering::SeqCst);
        // Events in the order they happened: (when, deployment index or alias request).
        let mut events: Vec<(Instant, Option<usize>)> = world
            .deployments
            .iter()
            .enumerate()
            .filter(|(_, d)| !d.settled && d.ready_at <= now)
            .map(|(index, d)| (d.ready_at, Some(index)))
            .collect();
        if let Some(request) = world
            .alias_request
            .as_ref()
            .filter(|r| !r.settled && r.done_at <= now)
        {
            events.push((request.done_at, None));
        }
        events.sort_by_key(|(when, _)| *when);
        for (_, event) in events {
            match event {
                Some(index) => {
                    let deployment = &mut world.deployments[index];
                    deployment.settled = true;
                    if deployment.fails || deployment.target.as_deref() != Some("production") {
                        continue;
                    }
                    let id = deployment.id.clone();
                    let rolling = world.rolling.as_ref().is_some_and(|r| r.state == "ACTIVE");
                    if rolling_releases && world.production.is_some() && !rolling {
                        // Rolling releases on: the new deployment becomes the canary at the
                        // first stage; production stays where it is until the release ends.
                        world.rolling = Some(RollingRelease {
                            canary: id,
                            previous: world.production.clone(),
                            stage: 0,
                            state: "ACTIVE",
                        });
                    } else if auto_assign && !world.rolled_back {
                        world.production = Some(id);
                    } else {
                        world.deployments[index].staged = true;
                    }
                }
                None => {
                    let request = world.alias_request.as_mut().expect("pushed above");
                    request.settled = true;
                    world.production = Some(request.to.clone());
                    let to = request.to.clone();
                    if let Some(deployment) = world.deployments.iter_mut().find(|d| d.id == to) {
                        deployment.staged = false;
                    }
                }
            }
        }
    }

    fn deployment_json(&self, deployment: &Deployment, world: &World) -> Value {
        let state = deployment.ready_state(Instant::now());
        let production = world.production.as_deref() == Some(deployment.id.as_str());
        let substate = match state {
            "READY" if deployment.staged => Some("STAGED"),
            "READY" if production => Some("PROMOTED"),
            "READY"
                if world
                    .rolling
                    .as_ref()
                    .is_some_and(|r| r.canary == deployment.id && r.state == "ACTIVE") =>
            {
                Some("ROLLING")
            }
            _ => None,
        };
        let url = format!("{}-{}.vercel.app", deployment.name, &deployment.id[4..]);
        json!({
            "id": deployment.id,
            "uid": deployment.id,
            "name": deployment.name,
            "url": url,
            "projectId": PROJECT_ID,
            "readyState": state,
            "state": state,
            "status": state,
            "readySubstate": substate,
            "target": deployment.target,
            "alias": if production { json!([format!("{}.vercel.app", deployment.name)]) } else { json!([]) },
            "aliasAssigned": production,
            "aliasError": null,
            "errorCode": if state == "ERROR" { json!("BUILD_FAILED") } else { Value::Null },
            "errorMessage": if state == "ERROR" {
                json!("Command \"npm run build\" exited with 1")
            } else {
                Value::Null
            },
            "createdAt": deployment.created_ms,
            "created": deployment.created_ms,
            "meta": deployment.meta,
            "gitSource": deployment.git_source,
            "inspectorUrl": format!("https://vercel.com/fake/{}", deployment.id),
        })
    }

    fn project_json(&self, world: &World) -> Value {
        let production = world
            .production
            .as_ref()
            .and_then(|id| world.deployments.iter().find(|d| &d.id == id))
            .map(|d| {
                let full = self.deployment_json(d, world);
                json!({
                    "id": d.id, "url": full["url"], "alias": full["alias"],
                    "readyState": full["readyState"], "meta": d.meta, "createdAt": d.created_ms,
                })
            });
        let now = Instant::now();
        let alias_request = world.alias_request.as_ref().map(|r| {
            let status = if r.settled {
                "succeeded"
            } else if now.duration_since(r.requested) < r.done_at.duration_since(r.requested) / 2 {
                "pending"
            } else {
                "in-progress"
            };
            json!({
                "type": r.kind, "fromDeploymentId": r.from, "toDeploymentId": r.to,
                "jobStatus": status, "requestedAt": r.requested_ms,
            })
        });
        json!({
            "id": PROJECT_ID,
            "name": "fake-project",
            "targets": { "production": production },
            "lastAliasRequest": alias_request,
        })
    }

    fn rolling_json(&self, world: &World) -> Value {
        let Some(release) = &world.rolling else {
            return Value::Null;
        };
        let stages = self.stages.lock().unwrap().clone();
        let last = stages.len().saturating_sub(1);
        let stage = |index: usize| {
            json!({
                "index": index, "targetPercentage": stages[index], "isFinalStage": index == last,
                "requireApproval": true, "duration": null,
            })
        };
        json!({
            "state": release.state,
            "canaryDeployment": { "id": release.canary },
            "currentDeployment": release.previous.as_ref().map(|id| json!({ "id": id })),
            "advancementType": "manual-approval",
            "stages": (0..stages.len()).map(stage).collect::<Vec<_>>(),
            "activeStage": stage(release.stage),
            "nextStage": (release.stage < last).then(|| stage(release.stage + 1)),
        })
    }

    /// The deployment serving production now.
    pub fn production(&self) -> Option<String> {
        let mut world = self.world.lock().unwrap();
        self.advance(&mut world);
        world.production.clone()
    }

    /// Points production at a deployment behind Shipgate's back (a change made in the
    /// dashboard), for drift tests.
    pub fn set_production(&self, id: &str) {
        let mut world = self.world.lock().unwrap();
        self.advance(&mut world);
        world.production = Some(id.to_owned());
    }

    /// Deployments created in all.
    pub fn deployments(&self) -> usize {
        self.world.lock().unwrap().deployments.len()
    }

    /// The id of the deployment created for a version, newest first.
    pub fn deployment_of(&self, version: &str) -> Option<String> {
        let world = self.world.lock().unwrap();
        world
            .deployments
            .iter()
            .rev()
            .find(|d| d.meta["shipgate_version"].as_str() == Some(version))
            .map(|d| d.id.clone())
    }

    /// The environment variables, by key (values as set).
    pub fn env(&self) -> BTreeMap<String, String> {
        let world = self.world.lock().unwrap();
        world
            .envs
            .iter()
            .map(|e| (e.key.clone(), e.value.clone()))
            .collect()
    }

    /// The rolling release's canary and the share it serves, if one is active or complete.
    pub fn canary(&self) -> Option<(String, u8)> {
        let world = self.world.lock().unwrap();
        let release = world.rolling.as_ref()?;
        let stages = self.stages.lock().unwrap();
        Some((release.canary.clone(), stages[release.stage]))
    }
}

async fn create_deployment(
    State(fake): State<FakeVercel>,
    RawQuery(query): RawQuery,
    Json(body): Json<Value>,
) -> Response {
    fake.calls.record(
        "POST",
        &record_path("/v13/deployments", &query),
        body.clone(),
    );
    let Some(name) = body["name"].as_str().filter(|n| !n.is_empty()) else {
        return error(StatusCode::BAD_REQUEST, "Missing required property `name`");
    };
    let mut world = fake.world.lock().unwrap();
    fake.advance(&mut world);
    let mut git_source = body["gitSource"].clone();
    let mut meta = body["meta"].clone();
    if let Some(source_id) = body["deploymentId"].as_str() {
        let Some(source) = world.deployments.iter().find(|d| d.id == source_id) else {
            return error(StatusCode::NOT_FOUND, "Deployment not found");
        };
        git_source = source.git_source.clone();
        if meta.is_null() {
            meta = source.meta.clone();
        }
    } else if !git_source.is_object() {
        return error(
            StatusCode::BAD_REQUEST,
            "Either `gitSource`, `files` or `deploymentId` is required",
        );
    } else if git_source["ref"].as_str().is_none_or(str::is_empty) {
        return error(StatusCode::BAD_REQUEST, "`gitSource.ref` is required");
    }
    if !meta.is_object() {
        meta = json!({});
    }
    let target = match &body["target"] {
        Value::String(target) if ["production", "staging"].contains(&target.as_str()) => {
            Some(target.clone())
        }
        Value::Null => None,
        _ => return error(StatusCode::BAD_REQUEST, "Invalid `target`"),
    };
    let fails = {
        let refs = fake.failing_refs.lock().unwrap();
        let versions = fake.failing_versions.lock().unwrap();
        ["ref", "sha"]
            .iter()
            .filter_map(|key| git_source[key].as_str())
            .any(|value| refs.iter().any(|r| r == value))
            || meta["shipgate_version"]
                .as_str()
                .is_some_and(|v| versions.iter().any(|f| f == v))
    };
    world.next_id += 1;
    let now = Instant::now();
    let deployment = Deployment {
        id: format!("dpl_{:08}", world.next_id),
        name: name.to_owned(),
        target,
        git_source,
        meta,
        created: now,
        created_ms: fake.now_ms(),
        ready_at: now + *fake.latency.lock().unwrap(),
        fails,
        settled: false,
        staged: false,
    };
    let answer = fake.deployment_json(&deployment, &world);
    world.deployments.push(deployment);
    (StatusCode::OK, Json(answer)).into_response()
}

async fn get_deployment(
    State(fake): State<FakeVercel>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    fake.calls.record(
        "GET",
        &record_path(&format!("/v13/deployments/{id}"), &query),
        Value::Null,
    );
    let mut world = fake.world.lock().unwrap();
    fake.advance(&mut world);
    match world.deployments.iter().find(|d| d.id == id) {
        Some(deployment) => Json(fake.deployment_json(deployment, &world)).into_response(),
        None => error(StatusCode::NOT_FOUND, "Deployment not found"),
    }
}

async fn list_deployments(State(fake): State<FakeVercel>, RawQuery(query): RawQuery) -> Response {
    fake.calls
        .record("GET", &record_path("/v6/deployments", &query), Value::Null);
    let params: BTreeMap<String, String> = query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    if params
        .get("projectId")
        .is_some_and(|project| project != PROJECT_ID)
    {
        return error(StatusCode::NOT_FOUND, "Project not found");
    }
    let limit = params
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(20usize)
        .min(100);
    let mut world = fake.world.lock().unwrap();
    fake.advance(&mut world);
    let deployments: Vec<Value> = world
        .deployments
        .iter()
        .rev()
        .take(limit)
        .map(|d| {
            let mut item = fake.deployment_json(d, &world);
            // The v6 list names the id `uid` and the state `state`/`readyState`.
            if let Some(object) = item.as_object_mut() {
                object.remove("id");
            }
            item
        })
        .collect();
    Json(json!({
        "deployments": deployments,
        "pagination": { "count": deployments.len(), "next": null, "prev": null },
    }))
    .into_response()
}

/// A refusal: status and message, made into an error body by [`Refusal::into_response`].
struct Refusal(StatusCode, &'static str);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

fn check_project(project: &str) -> Result<(), Refusal> {
    if project == PROJECT_ID || project == "fake-project" {
        Ok(())
    } else {
        Err(Refusal(StatusCode::NOT_FOUND, "Project not found"))
    }
}

async fn get_project(
    State(fake): State<FakeVercel>,
    Path((version, project)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    fake.calls.record(
        "GET",
        &record_path(&format!("/{version}/projects/{project}"), &query),
        Value::Null,
    );
    if let Err(refusal) = check_project(&project) {
        return refusal.into_response();
    }
    let mut world = fake.world.lock().unwrap();
    fake.advance(&mut world);
    Json(fake.project_json(&world)).into_response()
}

/// Starts a promotion or rollback; answers 201 (or 202 for a promotion) with no body.
fn alias(
    fake: &FakeVercel,
    kind: &'static str,
    project: &str,
    id: &str,
) -> Result<StatusCode, Refusal> {
    check_project(project)?;
    let mut world = fake.world.lock().unwrap();
    fake.advance(&mut world);
    let Some(deployment) = world.deployments.iter().find(|d| d.id == id) else {
        return Err(Refusal(StatusCode::NOT_FOUND, "Deployment not found"));
    };
    if deployment.ready_state(Instant::now()) != "READY" {
        return Err(Refusal(
            StatusCode::BAD_REQUEST,
            "The deployment is not ready and cannot serve production",
        ));
    }
    if world
        .alias_request
        .as_ref()
        .is_some_and(|r| !r.settled && r.to == id)
    {
        return Ok(StatusCode::ACCEPTED);
    }
    let now = Instant::now();
    world.alias_request = Some(AliasRequest {
        kind,
        from: world.production.clone(),
        to: id.to_owned(),
        requested_ms: fake.now_ms(),
        requested: now,
        done_at: now + *fake.alias_latency.lock().unwrap(),
        settled: false,
    });
    // As on Vercel: an instant rollback turns off the automatic production alias until a
    // deployment is promoted again.
    world.rolled_back = kind == "rollback";
    Ok(if kind == "promote" {
        StatusCode::ACCEPTED
    } else {
        StatusCode::CREATED
    })
}

async fn promote(
    State(fake): State<FakeVercel>,
    Path((version, project, id)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    fake.calls.record(
        "POST",
        &record_path(
            &format!("/{version}/projects/{project}/promote/{id}"),
            &query,
        ),
        Value::Null,
    );
    if version != "v10" {
        return error(StatusCode::NOT_FOUND, "The requested path was not found");
    }
    match alias(&fake, "promote", &project, &id) {
        Ok(status) => status.into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

async fn rollback(
    State(fake): State<FakeVercel>,
    Path((version, project, id)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    fake.calls.record(
        "POST",
        &record_path(
            &format!("/{version}/projects/{project}/rollback/{id}"),
            &query,
        ),
        Value::Null,
    );
    // The SDK and docs use v1; the CLI and much other code use v9.
    if version != "v1" && version != "v9" {
        return error(StatusCode::NOT_FOUND, "The requested path was not found");
    }
    match alias(&fake, "rollback", &project, &id) {
        Ok(status) => status.into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

fn valid_env_key(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

async fn create_env(
    State(fake): State<FakeVercel>,
    Path((version, project)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    Json(body): Json<Value>,
) -> Response {
    let path = record_path(&format!("/{version}/projects/{project}/env"), &query);
    fake.calls.record("POST", &path, body.clone());
    if let Err(refusal) = check_project(&project) {
        return refusal.into_response();
    }
    let upsert = query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .any(|pair| pair == "upsert=true");
    let (items, many) = match &body {
        Value::Array(items) => (items.clone(), true),
        Value::Object(_) => (vec![body.clone()], false),
        _ => return error(StatusCode::BAD_REQUEST, "Invalid request body"),
    };
    let refused = fake.refused_env_keys.lock().unwrap().clone();
    let mut world = fake.world.lock().unwrap();
    let mut created = Vec::new();
    let mut failed = Vec::new();
    for item in items {
        let key = item["key"].as_str().unwrap_or("").to_owned();
        let fail = |code: &str, message: String| json!({ "error": { "code": code, "message": message, "key": key } });
        if !valid_env_key(&key) {
            failed.push(fail(
                "invalid_key",
                format!("The name `{key}` is not a valid environment variable name"),
            ));
            continue;
        }
        if refused.contains(&key) {
            failed.push(fail(
                "forbidden",
                format!("The environment variable `{key}` is reserved"),
            ));
            continue;
        }
        let (Some(value), Some(kind)) = (item["value"].as_str(), item["type"].as_str()) else {
            failed.push(fail(
                "bad_request",
                "`value` and `type` are required".into(),
            ));
            continue;
        };
        let target = item["target"].clone();
        let overlaps = |existing: &EnvVar| {
            existing.key == key
                && existing
                    .target
                    .as_array()
                    .zip(target.as_array())
                    .is_some_and(|(a, b)| a.iter().any(|t| b.contains(t)))
        };
        if let Some(existing) = world.envs.iter_mut().find(|e| overlaps(e)) {
            if !upsert {
                failed.push(fail(
                    "ENV_ALREADY_EXISTS",
                    format!("A variable with the name `{key}` already exists"),
                ));
                continue;
            }
            existing.value = value.to_owned();
            existing.kind = kind.to_owned();
            existing.target = target.clone();
            created.push(json!({ "id": existing.id, "key": key, "type": kind, "target": target }));
            continue;
        }
        world.next_id += 1;
        let id = format!("env_{:08}", world.next_id);
        created.push(json!({ "id": id, "key": key, "type": kind, "target": target }));
        world.envs.push(EnvVar {
            id,
            key: key.clone(),
            value: value.to_owned(),
            kind: kind.to_owned(),
            target,
        });
    }
    let created = if many {
        Value::Array(created)
    } else {
        created.into_iter().next().unwrap_or(Value::Null)
    };
    (
        StatusCode::CREATED,
        Json(json!({ "created": created, "failed": failed })),
    )
        .into_response()
}

async fn list_env(
    State(fake): State<FakeVercel>,
    Path((version, project)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    fake.calls.record(
        "GET",
        &record_path(&format!("/{version}/projects/{project}/env"), &query),
        Value::Null,
    );
    if let Err(refusal) = check_project(&project) {
        return refusal.into_response();
    }
    let world = fake.world.lock().unwrap();
    let envs: Vec<Value> = world
        .envs
        .iter()
        .map(|e| {
            // Encrypted values are not returned in the clear without `decrypt=true`.
            json!({ "id": e.id, "key": e.key, "type": e.kind, "target": e.target,
                    "value": if e.kind == "plain" { json!(e.value) } else { json!("<encrypted>") } })
        })
        .collect();
    Json(json!({ "envs": envs, "pagination": { "count": envs.len(), "next": null } }))
        .into_response()
}

async fn delete_env(
    State(fake): State<FakeVercel>,
    Path((version, project, env)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    fake.calls.record(
        "DELETE",
        &record_path(&format!("/{version}/projects/{project}/env/{env}"), &query),
        Value::Null,
    );
    if let Err(refusal) = check_project(&project) {
        return refusal.into_response();
    }
    let mut world = fake.world.lock().unwrap();
    let Some(position) = world.envs.iter().position(|e| e.id == env) else {
        return error(StatusCode::NOT_FOUND, "Environment variable not found");
    };
    let removed = world.envs.remove(position);
    Json(
        json!({ "id": removed.id, "key": removed.key, "type": removed.kind,
                 "target": removed.target }),
    )
    .into_response()
}

async fn get_rolling(
    State(fake): State<FakeVercel>,
    Path((version, project)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    fake.calls.record(
        "GET",
        &record_path(
            &format!("/{version}/projects/{project}/rolling-release"),
            &query,
        ),
        Value::Null,
    );
    if let Err(refusal) = check_project(&project) {
        return refusal.into_response();
    }
    let mut world = fake.world.lock().unwrap();
    fake.advance(&mut world);
    Json(json!({ "rollingRelease": fake.rolling_json(&world) })).into_response()
}

async fn rolling_action(
    State(fake): State<FakeVercel>,
    Path((version, project, action)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    body: axum::body::Bytes,
) -> Response {
    // `complete` may come with no body.
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    fake.calls.record(
        "POST",
        &record_path(
            &format!("/{version}/projects/{project}/rolling-release/{action}"),
            &query,
        ),
        body.clone(),
    );
    if let Err(refusal) = check_project(&project) {
        return refusal.into_response();
    }
    let mut world = fake.world.lock().unwrap();
    fake.advance(&mut world);
    let canary = body["canaryDeploymentId"].as_str().unwrap_or("").to_owned();
    let last = fake.stages.lock().unwrap().len().saturating_sub(1);
    let active = world.rolling.as_ref().filter(|r| r.state == "ACTIVE");
    match action.as_str() {
        "start" => {
            if active.is_some_and(|r| r.canary == canary) {
                // Already rolling this canary: the current state, no side effects.
            } else if active.is_some() {
                return error(
                    StatusCode::BAD_REQUEST,
                    "Another rolling release is in progress",
                );
            } else {
                let ready = world
                    .deployments
                    .iter()
                    .find(|d| d.id == canary)
                    .is_some_and(|d| d.ready_state(Instant::now()) == "READY");
                if !ready {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "The canary deployment must exist and be ready",
                    );
                }
                world.rolling = Some(RollingRelease {
                    canary,
                    previous: world.production.clone(),
                    stage: 0,
                    state: "ACTIVE",
                });
            }
        }
        "approve-stage" => {
            let Some(next) = body["nextStageIndex"].as_u64().map(|n| n as usize) else {
                return error(StatusCode::BAD_REQUEST, "`nextStageIndex` is required");
            };
            let Some(release) = world
                .rolling
                .as_mut()
                .filter(|r| r.state == "ACTIVE" && r.canary == canary)
            else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "No active rolling release for this canary",
                );
            };
            if next != release.stage + 1 || next > last {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("Stage {next} is not the next stage"),
                );
            }
            release.stage = next;
            if next == last {
                release.state = "COMPLETE";
                let canary = release.canary.clone();
                world.production = Some(canary);
            }
        }
        "complete" => {
            let Some(release) = world
                .rolling
                .as_mut()
                .filter(|r| r.state == "ACTIVE" && r.canary == canary)
            else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "No active rolling release for this canary",
                );
            };
            release.stage = last;
            release.state = "COMPLETE";
            let canary = release.canary.clone();
            world.production = Some(canary);
        }
        _ => return error(StatusCode::NOT_FOUND, "The requested path was not found"),
    }
    Json(json!({ "rollingRelease": fake.rolling_json(&world) })).into_response()
}
