//! A fake of the Google Cloud Run Admin API v2 (see `shared/providers.md`, section 4).
//!
//! - `GET|PATCH /v2/projects/{p}/locations/{r}/services/{s}`: the PATCH replaces the fields in
//!   `updateMask` (else the writable fields present in the body: `template`, `traffic`), checks
//!   `etag`, creates a revision when the template changed (named by `template.revision`, else
//!   `{s}-{generation:05}-{xyz}`) and answers an Operation.
//! - `GET …/services/{s}/revisions[/{rev}]`: revisions, newest first, paginated with
//!   `pageSize` / `pageToken` (at most two a page, so clients must follow `nextPageToken`).
//! - `GET /v2/projects/{p}/locations/{r}/operations/{id}`: the Operation, `done` once the
//!   latency has passed. A revision whose image is in `failing_images` fails then
//!   (`CONDITION_FAILED`, reason `CONTAINER_MISSING`), the Operation carries an `error`, and the
//!   traffic stays where it was.
//!
//! int64 fields are strings, errors are `{"error":{code,message,status}}`, traffic targets
//! accept a revision's short name or full path, and every call needs a bearer token.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{serve, with_chaos, CallLog, Chaos};

const REVISION: &str = "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION";
const LATEST: &str = "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST";
/// Revisions per page at most, small so clients have to follow `nextPageToken`.
const PAGE_CAP: usize = 2;

struct Revision {
    /// Short name.
    name: String,
    /// Full name of its service.
    service: String,
    template: Value,
    /// Creation order.
    created: u64,
    ready_at: Instant,
    /// `(reason, message)` when it fails.
    failure: Option<(String, String)>,
}

struct Operation {
    service: String,
    done_at: Instant,
    revision: Option<String>,
    traffic: Vec<Value>,
    generation: i64,
    applied: bool,
    error: Option<Value>,
}

struct Service {
    name: String,
    id: String,
    uid: String,
    generation: i64,
    observed: i64,
    template: Value,
    traffic: Vec<Value>,
    /// What serves: `(type, short revision, percent)`.
    statuses: Vec<(String, String, i64)>,
    latest_created: String,
    latest_ready: String,
    etag: String,
    terminal: Value,
}

#[derive(Default)]
struct Store {
    services: HashMap<String, Service>,
    revisions: Vec<Revision>,
    operations: HashMap<String, Operation>,
    sequence: u64,
}

/// The fake's state.
#[derive(Clone)]
pub struct FakeCloudRun {
    store: Arc<Mutex<Store>>,
    /// Images whose revisions fail (`CONDITION_FAILED`, `CONTAINER_MISSING`).
    pub failing_images: Arc<Mutex<Vec<String>>>,
    /// How long an operation runs before it is `done`.
    pub latency: Arc<Mutex<Duration>>,
    /// PATCHes carrying an `etag` refused next with 409 `ABORTED`, as if someone had changed
    /// the service between the read and the write.
    pub etag_conflicts: Arc<AtomicU32>,
    /// Calls received (paths with their query string).
    pub calls: CallLog,
    /// Failure injection.
    pub chaos: Arc<Chaos>,
}

fn status_word(code: u16) -> &'static str {
    match code {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        _ => "INTERNAL",
    }
}

/// Google's error body.
fn error_body(code: u16, message: &str) -> Value {
    json!({ "error": { "code": code, "message": message, "status": status_word(code) } })
}

fn refuse(code: u16, message: &str) -> Response {
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        Json(error_body(code, message)),
    )
        .into_response()
}

fn short(revision: &str) -> &str {
    revision.rsplit('/').next().unwrap_or(revision)
}

fn condition(state: &str, reason: Option<&str>, message: &str) -> Value {
    let mut condition = json!({
        "type": "Ready",
        "state": state,
        "message": message,
        "lastTransitionTime": chrono::Utc::now().to_rfc3339(),
        "severity": if state == "CONDITION_FAILED" { "ERROR" } else { "INFO" },
    });
    if let Some(reason) = reason {
        condition["reason"] = json!(reason);
        condition["revisionReason"] = json!(reason);
    }
    condition
}

fn service_name(project: &str, region: &str, service: &str) -> String {
    format!("projects/{project}/locations/{region}/services/{service}")
}

impl Store {
    /// Finishes the operations whose time has come, in the order they were made.
    fn settle(&mut self) {
        let now = Instant::now();
        let mut due: Vec<String> = self
            .operations
            .iter()
            .filter(|(_, op)| !op.applied && op.done_at <= now)
            .map(|(name, _)| name.clone())
            .collect();
        due.sort_by_key(|name| self.operations[name].generation);
        for name in due {
            let op = self.operations.get_mut(&name).expect("listed");
            op.applied = true;
            let failure = op.revision.as_ref().and_then(|rev| {
                self.revisions
                    .iter()
                    .find(|r| r.service == op.service && &r.name == rev)
                    .and_then(|r| r.failure.clone().map(|f| (rev.clone(), f)))
            });
            let Some(service) = self.services.get_mut(&op.service) else {
                continue;
            };
            service.observed = service.observed.max(op.generation);
            match failure {
                Some((revision, (reason, message))) => {
                    let text = format!(
                        "Revision '{revision}' is not ready and cannot serve traffic. {message}"
                    );
                    op.error = Some(json!({ "code": 9, "message": text, "details": [] }));
                    service.terminal = condition("CONDITION_FAILED", Some(&reason), &text);
                }
                None => {
                    if let Some(revision) = &op.revision {
                        service.latest_ready = revision.clone();
                    }
                    service.statuses = resolve(&op.traffic, &service.latest_ready);
                    service.terminal = condition("CONDITION_SUCCEEDED", None, "");
                }
            }
        }
    }

    fn next(&mut self) -> u64 {
        self.sequence += 1;
        self.sequence
    }

    fn render_revision(&self, revision: &Revision) -> Value {
        let now = Instant::now();
        let reconciling = now < revision.ready_at;
        let ready = match (&revision.failure, reconciling) {
            (_, true) => condition("CONDITION_RECONCILING", None, "Deploying revision"),
            (Some((reason, message)), false) => {
                condition("CONDITION_FAILED", Some(reason), message)
            }
            (None, false) => condition("CONDITION_SUCCEEDED", None, ""),
        };
        let mut rendered = revision.template.clone();
        let fields = rendered.as_object_mut().expect("templates are objects");
        fields.remove("revision");
        fields.insert(
            "name".into(),
            json!(format!("{}/revisions/{}", revision.service, revision.name)),
        );
        fields.insert("service".into(), json!(revision.service));
        fields.insert("uid".into(), json!(format!("uid-{}", revision.created)));
        fields.insert("generation".into(), json!("1"));
        fields.insert(
            "observedGeneration".into(),
            json!(if reconciling { "0" } else { "1" }),
        );
        fields.insert("reconciling".into(), json!(reconciling));
        fields.insert("conditions".into(), json!([ready]));
        fields.insert(
            "createTime".into(),
            json!(format!("2026-01-01T00:00:00.{:09}Z", revision.created)),
        );
        rendered
    }

    fn render_service(&self, service: &Service) -> Value {
        let reconciling = service.observed != service.generation;
        let terminal = if reconciling {
            condition("CONDITION_RECONCILING", None, "Deploying")
        } else {
            service.terminal.clone()
        };
        let statuses: Vec<Value> = service
            .statuses
            .iter()
            .map(|(kind, revision, percent)| {
                json!({ "type": kind, "revision": revision, "percent": percent })
            })
            .collect();
        json!({
            "name": service.name,
            "uid": service.uid,
            "generation": service.generation.to_string(),
            "observedGeneration": service.observed.to_string(),
            "etag": service.etag,
            "template": service.template,
            "traffic": service.traffic,
            "trafficStatuses": statuses,
            "reconciling": reconciling,
            "terminalCondition": terminal,
            "conditions": [terminal],
            "latestCreatedRevision": format!("{}/revisions/{}", service.name, service.latest_created),
            "latestReadyRevision": format!("{}/revisions/{}", service.name, service.latest_ready),
            "uri": format!("https://{}-fake.a.run.app", service.id),
        })
    }

    fn render_operation(&self, name: &str, op: &Operation) -> Value {
        let mut rendered = json!({
            "name": name,
            "metadata": { "@type": "type.googleapis.com/google.cloud.run.v2.Service", "name": op.service },
            "done": op.applied,
        });
        if op.applied {
            match &op.error {
                Some(error) => rendered["error"] = error.clone(),
                None => {
                    if let Some(service) = self.services.get(&op.service) {
                        let mut response = self.render_service(service);
                        response["@type"] =
                            json!("type.googleapis.com/google.cloud.run.v2.Service");
                        rendered["response"] = response;
                    }
                }
            }
        }
        rendered
    }
}

/// What serves for a traffic spec; an empty spec is 100% to the latest ready revision.
fn resolve(traffic: &[Value], latest_ready: &str) -> Vec<(String, String, i64)> {
    if traffic.is_empty() {
        return vec![(LATEST.into(), latest_ready.to_owned(), 100)];
    }
    traffic
        .iter()
        .map(|entry| {
            let kind = entry["type"].as_str().unwrap_or(REVISION).to_owned();
            let revision = match entry["revision"].as_str() {
                Some(revision) if kind != LATEST => short(revision).to_owned(),
                _ => latest_ready.to_owned(),
            };
            (kind, revision, entry["percent"].as_i64().unwrap_or(0))
        })
        .collect()
}

fn authorized(headers: &HeaderMap) -> bool {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Bearer ") && v.len() > 7)
}

async fn get_service(
    State(fake): State<FakeCloudRun>,
    Path((project, region, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let name = service_name(&project, &region, &id);
    fake.calls
        .record("GET", &format!("/v2/{name}"), Value::Null);
    if !authorized(&headers) {
        return refuse(401, "Request had invalid authentication credentials.");
    }
    let mut store = fake.store.lock().unwrap();
    store.settle();
    match store.services.get(&name) {
        Some(service) => Json(store.render_service(service)).into_response(),
        None => refuse(
            404,
            &format!("Resource '{id}' of kind 'SERVICE' was not found"),
        ),
    }
}

async fn patch_service(
    State(fake): State<FakeCloudRun>,
    Path((project, region, id)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let name = service_name(&project, &region, &id);
    let mut path = format!("/v2/{name}");
    if let Some(mask) = query.get("updateMask") {
        path.push_str(&format!("?updateMask={mask}"));
    }
    fake.calls.record("PATCH", &path, body.clone());
    if !authorized(&headers) {
        return refuse(401, "Request had invalid authentication credentials.");
    }
    let failing = fake.failing_images.lock().unwrap().clone();
    let latency = *fake.latency.lock().unwrap();
    let mut store = fake.store.lock().unwrap();
    store.settle();
    let Some(service) = store.services.get(&name) else {
        return refuse(
            404,
            &format!("Resource '{id}' of kind 'SERVICE' was not found"),
        );
    };
    if let Some(etag) = body.get("etag").and_then(Value::as_str) {
        let conflict = fake
            .etag_conflicts
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if conflict || etag != service.etag {
            return refuse(
                409,
                "The etag does not match the current service: read it again",
            );
        }
    }
    let fields: Vec<String> = match query.get("updateMask") {
        Some(mask) => mask.split(',').map(|f| f.trim().to_owned()).collect(),
        None => ["template", "traffic"]
            .iter()
            .filter(|f| body.get(**f).is_some())
            .map(|f| (*f).to_owned())
            .collect(),
    };
    let generation = service.generation + 1;

    // A new revision when the template changed.
    let mut new_revision: Option<(String, Value)> = None;
    if fields.iter().any(|f| f == "template") {
        let template = body.get("template").cloned().unwrap_or(json!({}));
        if !template.is_object() {
            return refuse(400, "template must be an object");
        }
        if template != service.template {
            let image = template
                .pointer("/containers/0/image")
                .and_then(Value::as_str)
                .unwrap_or("");
            if image.is_empty() {
                return refuse(400, "template.containers[0].image is required");
            }
            let revision = match template.get("revision").and_then(Value::as_str) {
                Some(revision) if !revision.is_empty() => revision.to_owned(),
                _ => format!("{id}-{generation:05}-x{:02}", store.sequence % 100),
            };
            if !revision.starts_with(&format!("{id}-")) || revision.len() > 63 {
                return refuse(
                    400,
                    &format!("Revision name '{revision}' must start with '{id}-' and be at most 63 characters"),
                );
            }
            if store
                .revisions
                .iter()
                .any(|r| r.service == name && r.name == revision)
            {
                return refuse(
                    409,
                    &format!(
                        "Revision named '{revision}' with different configuration already exists."
                    ),
                );
            }
            new_revision = Some((revision, template));
        }
    }

    // Traffic: revisions given by short name or full path must exist; percents sum to 100.
    let service = &store.services[&name];
    let traffic: Vec<Value> = if fields.iter().any(|f| f == "traffic") {
        let given = body
            .get("traffic")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut normalized = Vec::new();
        let mut sum = 0;
        for entry in &given {
            let kind = entry["type"].as_str().unwrap_or(REVISION);
            let percent = match &entry["percent"] {
                Value::Number(n) => n.as_i64().unwrap_or(-1),
                Value::Null => 0,
                _ => -1,
            };
            if !(0..=100).contains(&percent) {
                return refuse(400, "traffic percent must be between 0 and 100");
            }
            sum += percent;
            let mut target = json!({ "type": kind, "percent": percent });
            if let Some(tag) = entry.get("tag") {
                target["tag"] = tag.clone();
            }
            if kind != LATEST {
                let Some(revision) = entry["revision"].as_str().map(short) else {
                    return refuse(400, "a REVISION traffic target needs `revision`");
                };
                let known = new_revision.as_ref().is_some_and(|(r, _)| r == revision)
                    || store
                        .revisions
                        .iter()
                        .any(|r| r.service == name && r.name == revision);
                if !known {
                    return refuse(
                        400,
                        &format!("Revision '{revision}' referenced in traffic not found"),
                    );
                }
                target["revision"] = json!(revision);
            }
            normalized.push(target);
        }
        if !normalized.is_empty() && sum != 100 {
            return refuse(
                400,
                &format!("traffic percents must add up to 100, not {sum}"),
            );
        }
        normalized
    } else {
        service.traffic.clone()
    };

    let done_at = Instant::now() + latency;
    let created = store.next();
    let operation = format!(
        "projects/{project}/locations/{region}/operations/{}",
        uuid::Uuid::new_v4()
    );
    let revision = new_revision.map(|(revision, template)| {
        let image = template
            .pointer("/containers/0/image")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let failure = failing.contains(&image).then(|| {
            (
                "CONTAINER_MISSING".to_owned(),
                format!("Image '{image}' not found."),
            )
        });
        store.revisions.push(Revision {
            name: revision.clone(),
            service: name.clone(),
            template: template.clone(),
            created,
            ready_at: done_at,
            failure,
        });
        (revision, template)
    });
    let service = store.services.get_mut(&name).expect("checked");
    service.generation = generation;
    service.etag = format!("\"etag-{created}\"");
    service.traffic = traffic.clone();
    if let Some((revision, template)) = &revision {
        service.template = template.clone();
        service.latest_created = revision.clone();
    }
    store.operations.insert(
        operation.clone(),
        Operation {
            service: name,
            done_at,
            revision: revision.map(|(revision, _)| revision),
            traffic,
            generation,
            applied: false,
            error: None,
        },
    );
    store.settle();
    let rendered = store.render_operation(&operation, &store.operations[&operation]);
    Json(rendered).into_response()
}

async fn list_revisions(
    State(fake): State<FakeCloudRun>,
    Path((project, region, id)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let name = service_name(&project, &region, &id);
    fake.calls
        .record("GET", &format!("/v2/{name}/revisions"), Value::Null);
    if !authorized(&headers) {
        return refuse(401, "Request had invalid authentication credentials.");
    }
    let mut store = fake.store.lock().unwrap();
    store.settle();
    if !store.services.contains_key(&name) {
        return refuse(
            404,
            &format!("Resource '{id}' of kind 'SERVICE' was not found"),
        );
    }
    let size: usize = query
        .get("pageSize")
        .and_then(|s| s.parse().ok())
        .filter(|s| *s > 0)
        .unwrap_or(20)
        .min(PAGE_CAP);
    let start: usize = query
        .get("pageToken")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut all: Vec<&Revision> = store
        .revisions
        .iter()
        .filter(|r| r.service == name)
        .collect();
    all.sort_by_key(|r| std::cmp::Reverse(r.created));
    let page: Vec<Value> = all
        .iter()
        .skip(start)
        .take(size)
        .map(|r| store.render_revision(r))
        .collect();
    let mut answer = json!({ "revisions": page });
    if start + size < all.len() {
        answer["nextPageToken"] = json!((start + size).to_string());
    }
    Json(answer).into_response()
}

async fn get_revision(
    State(fake): State<FakeCloudRun>,
    Path((project, region, id, revision)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let name = service_name(&project, &region, &id);
    fake.calls.record(
        "GET",
        &format!("/v2/{name}/revisions/{revision}"),
        Value::Null,
    );
    if !authorized(&headers) {
        return refuse(401, "Request had invalid authentication credentials.");
    }
    let mut store = fake.store.lock().unwrap();
    store.settle();
    match store
        .revisions
        .iter()
        .find(|r| r.service == name && r.name == revision)
    {
        Some(found) => Json(store.render_revision(found)).into_response(),
        None => refuse(
            404,
            &format!("Resource '{revision}' of kind 'REVISION' was not found"),
        ),
    }
}

async fn get_operation(
    State(fake): State<FakeCloudRun>,
    Path((project, region, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let name = format!("projects/{project}/locations/{region}/operations/{id}");
    fake.calls
        .record("GET", &format!("/v2/{name}"), Value::Null);
    if !authorized(&headers) {
        return refuse(401, "Request had invalid authentication credentials.");
    }
    let mut store = fake.store.lock().unwrap();
    store.settle();
    match store.operations.get(&name) {
        Some(op) => Json(store.render_operation(&name, op)).into_response(),
        None => refuse(404, &format!("Operation '{id}' was not found")),
    }
}

impl FakeCloudRun {
    /// Starts the fake; returns it with its base URL (use it as the target's `api_url`).
    pub async fn start() -> (Self, String) {
        let fake = FakeCloudRun {
            store: Arc::default(),
            failing_images: Arc::default(),
            etag_conflicts: Arc::default(),
            latency: Arc::new(Mutex::new(Duration::from_millis(100))),
            calls: CallLog::default(),
            chaos: Arc::default(),
        };
        let services = "/v2/projects/{project}/locations/{region}/services/{service}";
        let router = Router::new()
            .route(services, get(get_service).patch(patch_service))
            .route(&format!("{services}/revisions"), get(list_revisions))
            .route(
                &format!("{services}/revisions/{{revision}}"),
                get(get_revision),
            )
            .route(
                "/v2/projects/{project}/locations/{region}/operations/{operation}",
                get(get_operation),
            )
            .with_state(fake.clone());
        let url = serve(with_chaos(router, fake.chaos.clone(), error_body)).await;
        (fake, url)
    }

    /// Creates a service whose first revision (`{service}-00001-abc`, running `image`) is ready
    /// and serves 100% (as `LATEST`). Returns that revision's short name.
    pub fn seed_service(&self, project: &str, region: &str, service: &str, image: &str) -> String {
        let name = service_name(project, region, service);
        let revision = format!("{service}-00001-abc");
        let template = json!({ "containers": [{ "image": image }] });
        let mut store = self.store.lock().unwrap();
        let created = store.next();
        store.revisions.push(Revision {
            name: revision.clone(),
            service: name.clone(),
            template: template.clone(),
            created,
            ready_at: Instant::now(),
            failure: None,
        });
        store.services.insert(
            name.clone(),
            Service {
                name,
                id: service.to_owned(),
                uid: uuid::Uuid::new_v4().to_string(),
                generation: 1,
                observed: 1,
                template,
                traffic: vec![json!({ "type": LATEST, "percent": 100 })],
                statuses: vec![(LATEST.into(), revision.clone(), 100)],
                latest_created: revision.clone(),
                latest_ready: revision.clone(),
                etag: format!("\"etag-{created}\""),
                terminal: condition("CONDITION_SUCCEEDED", None, ""),
            },
        );
        revision
    }

    /// The service as `GET` answers it.
    pub fn service(&self, project: &str, region: &str, service: &str) -> Option<Value> {
        let mut store = self.store.lock().unwrap();
        store.settle();
        let name = service_name(project, region, service);
        store.services.get(&name).map(|s| store.render_service(s))
    }

    /// What serves: `(short revision name, percent)` from `trafficStatuses`, entries at 0%
    /// left out.
    pub fn traffic(&self, project: &str, region: &str, service: &str) -> Vec<(String, i64)> {
        let mut store = self.store.lock().unwrap();
        store.settle();
        let name = service_name(project, region, service);
        store
            .services
            .get(&name)
            .map(|s| {
                s.statuses
                    .iter()
                    .filter(|(_, _, percent)| *percent > 0)
                    .map(|(_, revision, percent)| (revision.clone(), *percent))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Short names of the service's revisions, oldest first.
    pub fn revisions(&self, project: &str, region: &str, service: &str) -> Vec<String> {
        let store = self.store.lock().unwrap();
        let name = service_name(project, region, service);
        store
            .revisions
            .iter()
            .filter(|r| r.service == name)
            .map(|r| r.name.clone())
            .collect()
    }

    /// The env of a revision's first container, as `(name, value)`.
    pub fn env(
        &self,
        project: &str,
        region: &str,
        service: &str,
        revision: &str,
    ) -> Vec<(String, String)> {
        let store = self.store.lock().unwrap();
        let name = service_name(project, region, service);
        store
            .revisions
            .iter()
            .find(|r| r.service == name && r.name == short(revision))
            .and_then(|r| r.template.pointer("/containers/0/env").cloned())
            .and_then(|env| env.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap_or("").to_owned(),
                    e["value"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }

    /// Makes a revision fail from now on (it crashes after it was ready): its `Ready`
    /// condition becomes `CONDITION_FAILED` with `reason`.
    pub fn fail_revision(
        &self,
        project: &str,
        region: &str,
        service: &str,
        revision: &str,
        reason: &str,
        message: &str,
    ) {
        let mut store = self.store.lock().unwrap();
        let name = service_name(project, region, service);
        if let Some(found) = store
            .revisions
            .iter_mut()
            .find(|r| r.service == name && r.name == short(revision))
        {
            found.failure = Some((reason.to_owned(), message.to_owned()));
        }
    }

    /// Changes the traffic split directly, as someone in the console would (drift):
    /// `(short revision name, percent)` pairs, effective at once.
    pub fn set_traffic(&self, project: &str, region: &str, service: &str, split: &[(&str, i64)]) {
        let mut store = self.store.lock().unwrap();
        store.settle();
        let created = store.next();
        let name = service_name(project, region, service);
        let Some(service) = store.services.get_mut(&name) else {
            return;
        };
        service.traffic = split
            .iter()
            .map(|(revision, percent)| json!({ "type": REVISION, "revision": revision, "percent": percent }))
            .collect();
        service.statuses = split
            .iter()
            .map(|(revision, percent)| (REVISION.to_owned(), (*revision).to_owned(), *percent))
            .collect();
        service.generation += 1;
        service.observed = service.generation;
        service.etag = format!("\"etag-{created}\"");
    }
}
