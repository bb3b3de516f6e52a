//! A fake of the Heroku Platform API v3 for one app: builds (`pending` → `succeeded` /
//! `failed`, a succeeded build makes a slug and a release), releases (versions counting up, one
//! `current`, a release phase that keeps a release `pending` and may fail it), rollback
//! (`POST /apps/{app}/releases {"release": …}` makes a **new** release copying the slug and config
//! vars of the target), config vars (`PATCH` answers the full map and makes a release), one-off
//! dynos (vanish when done, stay `crashed` when they fail), `Range` on lists, and Heroku's error
//! body `{"id", "message"}` (429s carry `rate_limit`).
//!
//! Requests need `Authorization: Bearer …` and `Accept: application/vnd.heroku+json; version=3`.
//! State moves on with time: every request first settles whatever is due.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use super::{serve, with_chaos, CallLog, Chaos};

/// The name of the one app the fake hosts.
pub const APP: &str = "shipgate-demo";

struct Build {
    id: String,
    url: String,
    version: Option<String>,
    version_description: Option<String>,
    created: u64,
    settle_at: Instant,
    fail: bool,
    status: &'static str,
    slug: Option<String>,
    release: Option<String>,
}

struct Release {
    id: String,
    version: u64,
    description: String,
    slug: Option<String>,
    config: BTreeMap<String, String>,
    status: &'static str,
    settle_at: Instant,
    fail: bool,
    created: u64,
}

struct Dyno {
    id: String,
    name: String,
    command: String,
    release: (String, u64),
    settle_at: Instant,
    fail: bool,
    state: &'static str,
}

#[derive(Default)]
struct App {
    builds: Vec<Build>,
    releases: Vec<Release>,
    /// Slug id → the source version it was built from.
    slugs: BTreeMap<String, String>,
    config: BTreeMap<String, String>,
    dynos: Vec<Dyno>,
    /// Events so far, for ordered `created_at` stamps.
    clock: u64,
    runs: u64,
}

/// The fake's state and knobs.
#[derive(Clone)]
pub struct FakeHeroku {
    app: Arc<Mutex<App>>,
    /// Source versions (`source_blob.version`) whose builds fail.
    pub failing_builds: Arc<Mutex<Vec<String>>>,
    /// Source versions whose release phase fails (for a release of a slug built from them).
    pub failing_release_phase: Arc<Mutex<Vec<String>>>,
    /// One-off dyno commands that crash.
    pub failing_commands: Arc<Mutex<Vec<String>>>,
    /// How long builds, release phases and one-off dynos run.
    pub latency: Arc<Mutex<Duration>>,
    /// The state of the app's one web dyno (`up`, `crashed`, …).
    pub web_state: Arc<Mutex<String>>,
    /// Add-on plans attached to the app (reported on every release).
    pub addons: Arc<Mutex<Vec<String>>>,
    /// Calls received (method, path, body).
    pub calls: CallLog,
    /// Failure injection.
    pub chaos: Arc<Chaos>,
}

fn error_body(status: u16, message: &str) -> Value {
    let id = match status {
        429 => "rate_limit",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        422 => "invalid_params",
        400 => "bad_request",
        _ => "internal_server_error",
    };
    json!({ "id": id, "message": message, "url": "https://devcenter.heroku.com/articles/platform-api-reference" })
}

/// A refusal, answered with Heroku's error body.
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, Json(error_body(self.0.as_u16(), &self.1))).into_response()
    }
}

fn refuse(status: StatusCode, message: &str) -> Refusal {
    Refusal(status, message.to_owned())
}

fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn timestamp(tick: u64) -> String {
    // A fixed base plus one second per event keeps `created_at` ordered.
    (chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").expect("a valid date")
        + chrono::Duration::seconds(tick as i64))
    .to_rfc3339()
}

impl App {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn next_version(&self) -> u64 {
        self.releases.iter().map(|r| r.version).max().unwrap_or(0) + 1
    }

    fn current(&self) -> Option<&Release> {
        self.releases
            .iter()
            .filter(|r| r.status == "succeeded")
            .max_by_key(|r| r.version)
    }

    /// Moves every build, release and dyno whose time has come to its next state.
    fn settle(&mut self, fake: &FakeHeroku) {
        let now = Instant::now();
        let latency = *fake.latency.lock().unwrap();
        let mut made = Vec::new();
        for build in self.builds.iter_mut() {
            if build.status == "pending" && now >= build.settle_at {
                if build.fail {
                    build.status = "failed";
                } else {
                    build.status = "succeeded";
                    let slug = uuid();
                    build.slug = Some(slug.clone());
                    made.push((build.id.clone(), slug, build.version.clone()));
                }
            }
        }
        for (build_id, slug, version) in made {
            let version_text = version.clone().unwrap_or_default();
            self.slugs.insert(slug.clone(), version_text.clone());
            let short: String = version_text.chars().take(8).collect();
            let release_id =
                self.release(fake, Some(slug), format!("Deploy {short}"), None, latency);
            if let Some(build) = self.builds.iter_mut().find(|b| b.id == build_id) {
                build.release = Some(release_id);
            }
        }
        for release in self.releases.iter_mut() {
            if release.status == "pending" && now >= release.settle_at {
                release.status = if release.fail { "failed" } else { "succeeded" };
            }
        }
        for dyno in self.dynos.iter_mut() {
            if dyno.state != "crashed" && now >= dyno.settle_at {
                dyno.state = if dyno.fail { "crashed" } else { "gone" };
            } else if dyno.state == "starting" {
                dyno.state = "up";
            }
        }
        self.dynos.retain(|d| d.state != "gone");
    }

    /// Makes a release; returns its id. `config` defaults to the app's config now.
    fn release(
        &mut self,
        fake: &FakeHeroku,
        slug: Option<String>,
        description: String,
        config: Option<BTreeMap<String, String>>,
        latency: Duration,
    ) -> String {
        let source = slug
            .as_ref()
            .and_then(|s| self.slugs.get(s))
            .cloned()
            .unwrap_or_default();
        let fail =
            !source.is_empty() && fake.failing_release_phase.lock().unwrap().contains(&source);
        let id = uuid();
        let created = self.tick();
        let config = config.unwrap_or_else(|| self.config.clone());
        self.config = config.clone();
        let pending = !latency.is_zero();
        self.releases.push(Release {
            id: id.clone(),
            version: self.next_version(),
            description,
            slug,
            config,
            status: if pending {
                "pending"
            } else if fail {
                "failed"
            } else {
                "succeeded"
            },
            settle_at: Instant::now() + latency,
            fail,
            created,
        });
        id
    }

    fn release_json(&self, release: &Release, addons: &[String]) -> Value {
        let current = self.current().is_some_and(|c| c.id == release.id);
        json!({
            "id": release.id,
            "version": release.version,
            "status": release.status,
            "current": current,
            "description": release.description,
            "eligible_for_rollback": release.slug.is_some(),
            "slug": release.slug.as_ref().map(|id| json!({ "id": id })),
            "artifacts": release.slug.as_ref().map(|id| vec![json!({ "type": "slug", "id": id })]).unwrap_or_default(),
            "output_stream_url": format!("https://busl.example/releases/{}", release.id),
            "addon_plan_names": addons,
            "app": { "id": "app-0001", "name": APP },
            "user": { "id": "user-0001", "email": "ops@example.com" },
            "created_at": timestamp(release.created),
            "updated_at": timestamp(release.created),
        })
    }

    fn build_json(build: &Build) -> Value {
        json!({
            "id": build.id,
            "status": build.status,
            "source_blob": {
                "url": build.url,
                "version": build.version,
                "version_description": build.version_description,
                "checksum": null,
            },
            "slug": build.slug.as_ref().map(|id| json!({ "id": id })),
            "release": build.release.as_ref().map(|id| json!({ "id": id })),
            "buildpacks": null,
            "output_stream_url": format!("https://busl.example/builds/{}", build.id),
            "app": { "id": "app-0001", "name": APP },
            "user": { "id": "user-0001", "email": "ops@example.com" },
            "created_at": timestamp(build.created),
            "updated_at": timestamp(build.created),
        })
    }

    fn dyno_json(dyno: &Dyno) -> Value {
        json!({
            "id": dyno.id,
            "name": dyno.name,
            "command": dyno.command,
            "type": "run",
            "state": dyno.state,
            "size": "Basic",
            "attach_url": null,
            "release": { "id": dyno.release.0, "version": dyno.release.1 },
            "app": { "id": "app-0001", "name": APP },
        })
    }

    fn find_release(&self, key: &str) -> Option<&Release> {
        let key = key.trim_start_matches('v');
        self.releases
            .iter()
            .find(|r| r.id == key || r.version.to_string() == key)
    }

    /// Heroku's rollback: a new release with the slug and config vars of `target`.
    fn rollback(&mut self, fake: &FakeHeroku, target: &str) -> Result<String, Refusal> {
        let (slug, config, version) = match self.find_release(target) {
            None => return Err(refuse(StatusCode::NOT_FOUND, "Couldn't find that release.")),
            Some(r) if r.slug.is_none() => {
                return Err(refuse(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Cannot roll back to a release that has no slug.",
                ))
            }
            Some(r) => (r.slug.clone(), r.config.clone(), r.version),
        };
        let latency = *fake.latency.lock().unwrap();
        Ok(self.release(
            fake,
            slug,
            format!("Rollback to v{version}"),
            Some(config),
            latency,
        ))
    }
}

/// Applies `Range: <field> ..; order=desc, max=N` to a list (the field is not checked).
fn ranged(mut items: Vec<Value>, headers: &HeaderMap) -> Response {
    let range = headers
        .get("range")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if range.contains("order=desc") {
        items.reverse();
    }
    let max = range
        .split([';', ','])
        .filter_map(|part| part.trim().strip_prefix("max="))
        .find_map(|n| n.trim().parse::<usize>().ok())
        .unwrap_or(200);
    if items.len() > max {
        items.truncate(max);
        let mut response = (StatusCode::PARTIAL_CONTENT, Json(Value::Array(items))).into_response();
        response
            .headers_mut()
            .insert("next-range", HeaderValue::from_static("]..; max=200"));
        return response;
    }
    (StatusCode::OK, Json(Value::Array(items))).into_response()
}

async fn auth(request: Request, next: Next) -> Response {
    let headers = request.headers();
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Bearer ") && v.len() > 7);
    if !bearer {
        return refuse(StatusCode::UNAUTHORIZED, "Invalid credentials provided.").into_response();
    }
    let versioned = headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/vnd.heroku+json; version=3"));
    if !versioned {
        return refuse(
            StatusCode::BAD_REQUEST,
            "Please specify a version: Accept: application/vnd.heroku+json; version=3",
        )
        .into_response();
    }
    next.run(request).await
}

impl FakeHeroku {
    /// Starts the fake; returns it with its base URL (use it as the target's `api_url`, with
    /// `app` = [`APP`]).
    pub async fn start() -> (Self, String) {
        let fake = FakeHeroku {
            app: Arc::default(),
            failing_builds: Arc::default(),
            failing_release_phase: Arc::default(),
            failing_commands: Arc::default(),
            latency: Arc::new(Mutex::new(Duration::from_millis(100))),
            web_state: Arc::new(Mutex::new("up".into())),
            addons: Arc::new(Mutex::new(vec!["heroku-postgresql:essential-0".into()])),
            calls: CallLog::default(),
            chaos: Arc::default(),
        };
        {
            // A new app's first release, as Heroku makes it.
            let mut app = fake.app.lock().unwrap();
            app.release(&fake, None, "Initial release".into(), None, Duration::ZERO);
        }
        let router = Router::new()
            .route("/apps/{app}/builds", get(list_builds).post(create_build))
            .route("/apps/{app}/builds/{id}", get(build_info))
            .route(
                "/apps/{app}/releases",
                get(list_releases).post(create_release),
            )
            .route("/apps/{app}/releases/{id}", get(release_info))
            .route("/apps/{app}/releases/{id}/config-vars", get(release_config))
            .route("/apps/{app}/config-vars", get(config).patch(update_config))
            .route("/apps/{app}/dynos", get(list_dynos).post(create_dyno))
            .route("/apps/{app}/dynos/{id}", get(dyno_info))
            .layer(axum::middleware::from_fn(auth))
            .with_state(fake.clone());
        let url = serve(with_chaos(router, fake.chaos.clone(), error_body)).await;
        (fake, url)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, App> {
        let mut app = self.app.lock().unwrap();
        app.settle(self);
        app
    }

    /// Adds a slug built (elsewhere) from `version`; returns its id, for `{"slug": id}` artifacts.
    pub fn add_slug(&self, version: &str) -> String {
        let id = uuid();
        self.state().slugs.insert(id.clone(), version.to_owned());
        id
    }

    /// Rolls back as a person would in Heroku's dashboard, outside Shipgate; returns the new
    /// release's id.
    pub fn rollback_outside(&self, release_version: u64) -> String {
        let mut app = self.state();
        app.rollback(self, &release_version.to_string())
            .unwrap_or_else(|_| panic!("release v{release_version} can be rolled back to"))
    }

    /// Every release, oldest first, as the API shows them.
    pub fn releases(&self) -> Vec<Value> {
        let app = self.state();
        let addons = self.addons.lock().unwrap().clone();
        app.releases
            .iter()
            .map(|r| app.release_json(r, &addons))
            .collect()
    }

    /// The current release, as the API shows it.
    pub fn current_release(&self) -> Option<Value> {
        self.releases()
            .into_iter()
            .find(|r| r["current"] == Value::Bool(true))
    }

    /// Builds started in all.
    pub fn builds(&self) -> usize {
        self.state().builds.len()
    }

    /// The app's config vars now.
    pub fn config_vars(&self) -> BTreeMap<String, String> {
        self.state().config.clone()
    }

    /// The source version a slug was built from.
    pub fn slug_version(&self, slug: &str) -> Option<String> {
        self.state().slugs.get(slug).cloned()
    }
}

/// Starts a fake Heroku; returns it with its base URL (the same as [`FakeHeroku::start`]).
pub async fn start() -> (FakeHeroku, String) {
    FakeHeroku::start().await
}

type Answer = Result<Response, Refusal>;

fn check_app(app: &str) -> Result<(), Refusal> {
    if app == APP || app == "app-0001" {
        Ok(())
    } else {
        Err(refuse(StatusCode::NOT_FOUND, "Couldn't find that app."))
    }
}

fn parse(body: &Bytes) -> Result<Value, Refusal> {
    if body.is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    serde_json::from_slice(body)
        .map_err(|_| refuse(StatusCode::BAD_REQUEST, "Invalid JSON in the request body."))
}

fn created(value: Value) -> Response {
    (StatusCode::CREATED, Json(value)).into_response()
}

async fn create_build(
    State(fake): State<FakeHeroku>,
    Path(app): Path<String>,
    body: Bytes,
) -> Answer {
    check_app(&app)?;
    let body = parse(&body)?;
    fake.calls
        .record("POST", &format!("/apps/{app}/builds"), body.clone());
    let blob = &body["source_blob"];
    let Some(url) = blob["url"].as_str() else {
        return Err(refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            "source_blob.url is required.",
        ));
    };
    let version = blob["version"].as_str().map(str::to_owned);
    // `version_description` is read inside `source_blob` or, leniently, at the top level.
    let version_description = blob["version_description"]
        .as_str()
        .or(body["version_description"].as_str())
        .map(str::to_owned);
    let fail = version
        .as_ref()
        .is_some_and(|v| fake.failing_builds.lock().unwrap().contains(v));
    let latency = *fake.latency.lock().unwrap();
    let mut state = fake.state();
    let created_tick = state.tick();
    let build = Build {
        id: uuid(),
        url: url.to_owned(),
        version,
        version_description,
        created: created_tick,
        settle_at: Instant::now() + latency,
        fail,
        status: "pending",
        slug: None,
        release: None,
    };
    let json = App::build_json(&build);
    state.builds.push(build);
    Ok(created(json))
}

async fn list_builds(
    State(fake): State<FakeHeroku>,
    Path(app): Path<String>,
    headers: HeaderMap,
) -> Answer {
    check_app(&app)?;
    fake.calls
        .record("GET", &format!("/apps/{app}/builds"), Value::Null);
    let state = fake.state();
    let mut builds: Vec<&Build> = state.builds.iter().collect();
    builds.sort_by_key(|b| b.created);
    Ok(ranged(
        builds.into_iter().map(App::build_json).collect(),
        &headers,
    ))
}

async fn build_info(
    State(fake): State<FakeHeroku>,
    Path((app, id)): Path<(String, String)>,
) -> Answer {
    check_app(&app)?;
    fake.calls
        .record("GET", &format!("/apps/{app}/builds/{id}"), Value::Null);
    let state = fake.state();
    match state.builds.iter().find(|b| b.id == id) {
        Some(build) => Ok(Json(App::build_json(build)).into_response()),
        None => Err(refuse(StatusCode::NOT_FOUND, "Couldn't find that build.")),
    }
}

async fn create_release(
    State(fake): State<FakeHeroku>,
    Path(app): Path<String>,
    body: Bytes,
) -> Answer {
    check_app(&app)?;
    let body = parse(&body)?;
    fake.calls
        .record("POST", &format!("/apps/{app}/releases"), body.clone());
    let latency = *fake.latency.lock().unwrap();
    let addons = fake.addons.lock().unwrap().clone();
    let mut state = fake.state();
    let id = if let Some(target) = body.get("release") {
        // Rollback: `release` is a release id or a version number.
        let target = match target {
            Value::String(text) => text.clone(),
            Value::Number(n) => n.to_string(),
            _ => {
                return Err(refuse(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "release must be a release id or version.",
                ))
            }
        };
        state.rollback(&fake, &target)?
    } else if let Some(slug) = body.get("slug").and_then(Value::as_str) {
        if !state.slugs.contains_key(slug) {
            return Err(refuse(StatusCode::NOT_FOUND, "Couldn't find that slug."));
        }
        let description = body["description"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("Deploy {}", &slug[..8.min(slug.len())]));
        state.release(&fake, Some(slug.to_owned()), description, None, latency)
    } else {
        return Err(refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Either slug or release is required.",
        ));
    };
    let release = state.find_release(&id).expect("just made");
    Ok(created(state.release_json(release, &addons)))
}

async fn list_releases(
    State(fake): State<FakeHeroku>,
    Path(app): Path<String>,
    headers: HeaderMap,
) -> Answer {
    check_app(&app)?;
    fake.calls
        .record("GET", &format!("/apps/{app}/releases"), Value::Null);
    let addons = fake.addons.lock().unwrap().clone();
    let state = fake.state();
    let mut releases: Vec<&Release> = state.releases.iter().collect();
    releases.sort_by_key(|r| r.version);
    let items = releases
        .into_iter()
        .map(|r| state.release_json(r, &addons))
        .collect();
    Ok(ranged(items, &headers))
}

async fn release_info(
    State(fake): State<FakeHeroku>,
    Path((app, id)): Path<(String, String)>,
) -> Answer {
    check_app(&app)?;
    fake.calls
        .record("GET", &format!("/apps/{app}/releases/{id}"), Value::Null);
    let addons = fake.addons.lock().unwrap().clone();
    let state = fake.state();
    match state.find_release(&id) {
        Some(release) => Ok(Json(state.release_json(release, &addons)).into_response()),
        None => Err(refuse(StatusCode::NOT_FOUND, "Couldn't find that release.")),
    }
}

async fn release_config(
    State(fake): State<FakeHeroku>,
    Path((app, id)): Path<(String, String)>,
) -> Answer {
    check_app(&app)?;
    fake.calls.record(
        "GET",
        &format!("/apps/{app}/releases/{id}/config-vars"),
        Value::Null,
    );
    let state = fake.state();
    match state.find_release(&id) {
        Some(release) => Ok(Json(json!(release.config)).into_response()),
        None => Err(refuse(StatusCode::NOT_FOUND, "Couldn't find that release.")),
    }
}

async fn config(State(fake): State<FakeHeroku>, Path(app): Path<String>) -> Answer {
    check_app(&app)?;
    fake.calls
        .record("GET", &format!("/apps/{app}/config-vars"), Value::Null);
    Ok(Json(json!(fake.state().config)).into_response())
}

async fn update_config(
    State(fake): State<FakeHeroku>,
    Path(app): Path<String>,
    body: Bytes,
) -> Answer {
    check_app(&app)?;
    let body = parse(&body)?;
    fake.calls
        .record("PATCH", &format!("/apps/{app}/config-vars"), body.clone());
    let Some(changes) = body.as_object() else {
        return Err(refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            "The body must be an object of config vars.",
        ));
    };
    let valid_key = |k: &str| !k.is_empty() && k.chars().all(|c| c.is_alphanumeric() || c == '_');
    if let Some(bad) = changes.keys().find(|k| !valid_key(k)) {
        return Err(refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("Invalid config var name: {bad}"),
        ));
    }
    let latency = *fake.latency.lock().unwrap();
    let mut state = fake.state();
    let mut config = state.config.clone();
    let (mut set, mut removed) = (Vec::new(), Vec::new());
    for (key, value) in changes {
        match value {
            Value::Null => {
                config.remove(key);
                removed.push(key.clone());
            }
            Value::String(text) => {
                config.insert(key.clone(), text.clone());
                set.push(key.clone());
            }
            _ => {
                return Err(refuse(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &format!("The value of {key} must be a string or null."),
                ))
            }
        }
    }
    let description = match (set.is_empty(), removed.is_empty()) {
        (false, true) => format!("Set {} config vars", set.join(", ")),
        (true, false) => format!("Remove {} config vars", removed.join(", ")),
        _ => format!(
            "Set {} and remove {} config vars",
            set.join(", "),
            removed.join(", ")
        ),
    };
    let slug = state.current().and_then(|r| r.slug.clone());
    state.release(&fake, slug, description, Some(config.clone()), latency);
    Ok(Json(json!(config)).into_response())
}

async fn create_dyno(
    State(fake): State<FakeHeroku>,
    Path(app): Path<String>,
    body: Bytes,
) -> Answer {
    check_app(&app)?;
    let body = parse(&body)?;
    fake.calls
        .record("POST", &format!("/apps/{app}/dynos"), body.clone());
    let Some(command) = body["command"].as_str() else {
        return Err(refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            "command is required.",
        ));
    };
    let fail = fake
        .failing_commands
        .lock()
        .unwrap()
        .iter()
        .any(|c| c == command);
    let latency = *fake.latency.lock().unwrap();
    let mut state = fake.state();
    let Some(release) = state.current().map(|r| (r.id.clone(), r.version)) else {
        return Err(refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            "The app has no release to run.",
        ));
    };
    state.runs += 1;
    let dyno = Dyno {
        id: uuid(),
        name: format!("run.{}", 1000 + state.runs),
        command: command.to_owned(),
        release,
        settle_at: Instant::now() + latency,
        fail,
        state: "starting",
    };
    let json = App::dyno_json(&dyno);
    state.dynos.push(dyno);
    Ok(created(json))
}

async fn list_dynos(State(fake): State<FakeHeroku>, Path(app): Path<String>) -> Answer {
    check_app(&app)?;
    fake.calls
        .record("GET", &format!("/apps/{app}/dynos"), Value::Null);
    let state = fake.state();
    let mut dynos: Vec<Value> = state.dynos.iter().map(App::dyno_json).collect();
    // The app's web dyno, on the current release.
    let web_state = fake.web_state.lock().unwrap().clone();
    if let Some(current) = state.current() {
        dynos.push(json!({
            "id": "web-dyno-1", "name": "web.1", "type": "web", "state": web_state,
            "command": "npm start", "size": "Basic",
            "release": { "id": current.id, "version": current.version },
        }));
    }
    Ok(Json(Value::Array(dynos)).into_response())
}

async fn dyno_info(
    State(fake): State<FakeHeroku>,
    Path((app, id)): Path<(String, String)>,
) -> Answer {
    check_app(&app)?;
    fake.calls
        .record("GET", &format!("/apps/{app}/dynos/{id}"), Value::Null);
    let state = fake.state();
    match state.dynos.iter().find(|d| d.id == id || d.name == id) {
        Some(dyno) => Ok(Json(App::dyno_json(dyno)).into_response()),
        None => Err(refuse(StatusCode::NOT_FOUND, "Couldn't find that process.")),
    }
}
