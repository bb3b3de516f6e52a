//! A fake of Railway's public GraphQL API (`POST /graphql/v2`, or any path): deployments that
//! build, deploy and then succeed or fail after a latency, native rollback and redeploy,
//! image sources and service variables, answered the way Railway answers: HTTP 200 with
//! `{"data": …}`, or `{"data": null, "errors": [{"message": …}]}` for GraphQL errors
//! ("Not Authorized" included); 429 with `Retry-After` and 500s come from [`Chaos`].
//!
//! There is no GraphQL library behind it: the operation's top-level field is read from the
//! query text (the first name after the first `{`), and its arguments are read from
//! `variables` only, never from literals in the query. The fake does check what a schema
//! would: mutation fields sent as queries (and the reverse), a selection on a scalar field
//! (`deploymentRollback` is a `Boolean!`), a missing selection on an object field, and missing
//! required variables are validation errors.
//!
//! Calls are recorded in [`FakeRailway::calls`] as (`"query"` or `"mutation"`, field name,
//! variables).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use super::{serve, with_chaos, CallLog, Chaos};

/// The token the fake accepts, as `Authorization: Bearer` or `Project-Access-Token`.
pub const TOKEN: &str = "railway-test-token";

#[derive(Clone)]
struct Deployment {
    id: String,
    environment_id: String,
    service_id: String,
    commit: Option<String>,
    image: Option<String>,
    meta: Map<String, Value>,
    created_at: chrono::DateTime<chrono::Utc>,
    started: Instant,
    ready_at: Instant,
    fail: bool,
}

#[derive(Default)]
struct World {
    /// Oldest first.
    deployments: Vec<Deployment>,
    /// Image source per (environment, service).
    images: HashMap<(String, String), String>,
    /// Variables per (environment, service); service "" holds shared variables.
    variables: HashMap<(String, String), BTreeMap<String, String>>,
    /// Statuses forced by tests.
    overrides: HashMap<String, String>,
    /// GraphQL errors to answer next, at HTTP 200.
    queued_errors: VecDeque<String>,
}

/// The fake's state and knobs.
#[derive(Clone, Default)]
pub struct FakeRailway {
    world: Arc<Mutex<World>>,
    /// Commit shas (or image references) whose deployments fail (`FAILED`).
    pub failing_commits: Arc<Mutex<Vec<String>>>,
    /// How long a deployment builds and deploys before it reaches `SUCCESS` (or `FAILED`).
    pub latency: Arc<Mutex<Duration>>,
    /// When set, every deployment reports `canRollback: false` and `deploymentRollback` is
    /// refused.
    pub no_rollback: Arc<AtomicBool>,
    /// Calls received: (`"query"`/`"mutation"`, field, variables).
    pub calls: CallLog,
    /// Failure injection (429 with `Retry-After`, 500, delays).
    pub chaos: Arc<Chaos>,
}

fn error_body(_status: u16, message: &str) -> Value {
    json!({ "errors": [{ "message": message }] })
}

/// A GraphQL answer at HTTP 200 with one error.
fn graphql_error(field: &str, message: &str) -> Response {
    let mut error = json!({ "message": message });
    if !field.is_empty() {
        error["path"] = json!([field]);
    }
    Json(json!({ "data": null, "errors": [error] })).into_response()
}

/// The top-level field of an operation, and whether a selection set follows it.
fn top_level_field(query: &str) -> Option<(String, bool)> {
    let ident = |text: &str| -> String {
        text.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let rest = query[query.find('{')? + 1..].trim_start();
    let mut name = ident(rest);
    let mut after = rest[name.len()..].trim_start();
    if let Some(aliased) = after.strip_prefix(':') {
        let aliased = aliased.trim_start();
        name = ident(aliased);
        after = aliased[name.len()..].trim_start();
    }
    if name.is_empty() {
        return None;
    }
    if after.starts_with('(') {
        let mut depth = 0usize;
        let mut end = None;
        for (index, c) in after.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = Some(index);
                        break;
                    }
                }
                _ => {}
            }
        }
        after = after[end? + 1..].trim_start();
    }
    Some((name, after.starts_with('{')))
}

/// (is a mutation, returns an object) of the fields the fake serves.
fn schema(field: &str) -> Option<(bool, bool)> {
    Some(match field {
        "deployment" | "deployments" | "serviceInstance" => (false, true),
        "variables" => (false, false),
        "deploymentRedeploy" => (true, true),
        "serviceInstanceDeployV2"
        | "serviceInstanceDeploy"
        | "serviceInstanceUpdate"
        | "deploymentRollback"
        | "variableCollectionUpsert"
        | "variableUpsert"
        | "variableDelete" => (true, false),
        _ => return None,
    })
}

/// A required `String!` argument.
fn required(variables: &Value, name: &str) -> Result<String, String> {
    variables
        .get(name)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| {
            format!("Variable \"${name}\" of required type \"String!\" was not provided.")
        })
}

/// A required field of an input object.
fn input_field(input: &Value, name: &str) -> Result<String, String> {
    input
        .get(name)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| {
            format!("Variable \"$input\" got invalid value; Field \"{name}\" of required type \"String!\" was not provided.")
        })
}

fn optional(variables: &Value, name: &str) -> Option<String> {
    variables
        .get(name)
        .and_then(Value::as_str)
        .map(str::to_owned)
}

impl World {
    fn status(&self, index: usize, now: Instant) -> String {
        let deployment = &self.deployments[index];
        if let Some(status) = self.overrides.get(&deployment.id) {
            return status.clone();
        }
        if now < deployment.ready_at {
            let half = (deployment.ready_at - deployment.started) / 2;
            return if now < deployment.started + half {
                "BUILDING".into()
            } else {
                "DEPLOYING".into()
            };
        }
        if deployment.fail {
            return "FAILED".into();
        }
        let replaced = self.deployments[index + 1..].iter().any(|later| {
            later.environment_id == deployment.environment_id
                && later.service_id == deployment.service_id
                && now >= later.ready_at
                && !later.fail
        });
        if replaced {
            "REMOVED".into()
        } else {
            "SUCCESS".into()
        }
    }

    fn index(&self, id: &str) -> Option<usize> {
        self.deployments.iter().position(|d| d.id == id)
    }

    fn latest(&self, environment: &str, service: &str) -> Option<usize> {
        self.deployments
            .iter()
            .rposition(|d| d.environment_id == environment && d.service_id == service)
    }
}

impl FakeRailway {
    /// Starts the fake; returns it with its GraphQL URL (`…/graphql/v2`).
    pub async fn start() -> (FakeRailway, String) {
        let fake = FakeRailway::default();
        *fake.latency.lock().unwrap() = Duration::from_millis(200);
        let router = Router::new()
            .route("/graphql/v2", post(graphql))
            .fallback(post(graphql))
            .with_state(fake.clone());
        let base = serve(with_chaos(router, fake.chaos.clone(), error_body)).await;
        (fake, format!("{base}/graphql/v2"))
    }

    fn can_rollback(&self, world: &World, index: usize, now: Instant) -> bool {
        let deployment = &world.deployments[index];
        !self.no_rollback.load(Ordering::SeqCst)
            && !deployment.fail
            && now >= deployment.ready_at
            && !matches!(world.status(index, now).as_str(), "FAILED" | "CRASHED")
    }

    fn render(&self, world: &World, index: usize, now: Instant) -> Value {
        let deployment = &world.deployments[index];
        json!({
            "id": deployment.id,
            "status": world.status(index, now),
            "canRollback": self.can_rollback(world, index, now),
            "canRedeploy": true,
            "url": null,
            "staticUrl": format!("{}.up.railway.app", deployment.service_id),
            "meta": deployment.meta,
            "createdAt": deployment.created_at.to_rfc3339(),
            "environmentId": deployment.environment_id,
            "serviceId": deployment.service_id,
        })
    }

    /// Adds a deployment; answers its id.
    #[allow(clippy::too_many_arguments)]
    fn create(
        &self,
        world: &mut World,
        environment: &str,
        service: &str,
        commit: Option<String>,
        image: Option<String>,
        reason: &str,
        latency: Duration,
        extra_meta: Map<String, Value>,
    ) -> String {
        let failing = self.failing_commits.lock().unwrap();
        let fail = [&commit, &image]
            .into_iter()
            .flatten()
            .any(|source| failing.contains(source));
        drop(failing);
        let mut meta = Map::new();
        if let Some(commit) = &commit {
            meta.insert("commitHash".into(), json!(commit));
        }
        if let Some(image) = &image {
            meta.insert("image".into(), json!(image));
        }
        meta.insert("reason".into(), json!(reason));
        meta.extend(extra_meta);
        let id = uuid::Uuid::new_v4().to_string();
        let now = Instant::now();
        world.deployments.push(Deployment {
            id: id.clone(),
            environment_id: environment.to_owned(),
            service_id: service.to_owned(),
            commit,
            image,
            meta,
            created_at: chrono::Utc::now(),
            started: now,
            ready_at: now + latency,
            fail,
        });
        id
    }

    fn latency(&self) -> Duration {
        *self.latency.lock().unwrap()
    }

    /// A deployment made outside Shipgate (Railway's dashboard, its CLI, a git push): it
    /// succeeds at once, with `extra_meta` merged into its `meta`. Answers its id.
    pub fn deploy_directly(
        &self,
        environment_id: &str,
        service_id: &str,
        commit: &str,
        extra_meta: Value,
    ) -> String {
        let extra = extra_meta.as_object().cloned().unwrap_or_default();
        let mut world = self.world.lock().unwrap();
        self.create(
            &mut world,
            environment_id,
            service_id,
            Some(commit.to_owned()),
            None,
            "deploy",
            Duration::ZERO,
            extra,
        )
    }

    /// Forces a deployment's status (`CRASHED`, `SLEEPING`, `NEEDS_APPROVAL`, …).
    pub fn set_status(&self, deployment_id: &str, status: &str) {
        self.world
            .lock()
            .unwrap()
            .overrides
            .insert(deployment_id.to_owned(), status.to_owned());
    }

    /// Answers the next request with this GraphQL error at HTTP 200.
    pub fn fail_next(&self, message: &str) {
        self.world
            .lock()
            .unwrap()
            .queued_errors
            .push_back(message.to_owned());
    }

    /// A service's variables in an environment.
    pub fn variables(&self, environment_id: &str, service_id: &str) -> BTreeMap<String, String> {
        self.world
            .lock()
            .unwrap()
            .variables
            .get(&(environment_id.to_owned(), service_id.to_owned()))
            .cloned()
            .unwrap_or_default()
    }

    /// Sets a variable directly (as in Railway's dashboard).
    pub fn set_variable(&self, environment_id: &str, service_id: &str, name: &str, value: &str) {
        self.world
            .lock()
            .unwrap()
            .variables
            .entry((environment_id.to_owned(), service_id.to_owned()))
            .or_default()
            .insert(name.to_owned(), value.to_owned());
    }

    /// The image a service is pointed at, if any.
    pub fn image(&self, environment_id: &str, service_id: &str) -> Option<String> {
        self.world
            .lock()
            .unwrap()
            .images
            .get(&(environment_id.to_owned(), service_id.to_owned()))
            .cloned()
    }

    /// Every deployment as `deployment(id)` would answer it, newest first.
    pub fn deployments(&self) -> Vec<Value> {
        let world = self.world.lock().unwrap();
        let now = Instant::now();
        (0..world.deployments.len())
            .rev()
            .map(|index| self.render(&world, index, now))
            .collect()
    }

    fn answer(&self, field: &str, variables: &Value) -> Result<Value, String> {
        let now = Instant::now();
        let mut world = self.world.lock().unwrap();
        match field {
            "deployment" => {
                let id = required(variables, "id")?;
                let index = world.index(&id).ok_or("Deployment not found")?;
                Ok(self.render(&world, index, now))
            }
            "deployments" => {
                let input = variables.get("input").cloned().unwrap_or(Value::Null);
                let environment = optional(&input, "environmentId");
                let service = optional(&input, "serviceId");
                let first = variables
                    .get("first")
                    .and_then(Value::as_u64)
                    .unwrap_or(u64::MAX) as usize;
                let edges: Vec<Value> = (0..world.deployments.len())
                    .rev()
                    .filter(|&index| {
                        let d = &world.deployments[index];
                        environment.as_ref().is_none_or(|e| *e == d.environment_id)
                            && service.as_ref().is_none_or(|s| *s == d.service_id)
                    })
                    .take(first)
                    .map(|index| json!({ "node": self.render(&world, index, now) }))
                    .collect();
                Ok(json!({ "edges": edges }))
            }
            "serviceInstance" => {
                let environment = required(variables, "environmentId")?;
                let service = required(variables, "serviceId")?;
                let latest = world
                    .latest(&environment, &service)
                    .map(|index| self.render(&world, index, now));
                Ok(json!({
                    "serviceId": service,
                    "environmentId": environment,
                    "latestDeployment": latest,
                }))
            }
            "variables" => {
                let environment = required(variables, "environmentId")?;
                let service = optional(variables, "serviceId").unwrap_or_default();
                Ok(json!(world
                    .variables
                    .get(&(environment, service))
                    .cloned()
                    .unwrap_or_default()))
            }
            "serviceInstanceDeployV2" | "serviceInstanceDeploy" => {
                let environment = required(variables, "environmentId")?;
                let service = required(variables, "serviceId")?;
                let commit = optional(variables, "commitSha");
                let image = world
                    .images
                    .get(&(environment.clone(), service.clone()))
                    .cloned();
                let (commit, image) = match (commit, image) {
                    (Some(commit), _) => (Some(commit), None),
                    (None, Some(image)) => (None, Some(image)),
                    (None, None) => {
                        // "The latest commit": the fake takes the last one deployed.
                        let last = world
                            .latest(&environment, &service)
                            .and_then(|index| world.deployments[index].commit.clone());
                        (last, None)
                    }
                };
                let id = self.create(
                    &mut world,
                    &environment,
                    &service,
                    commit,
                    image,
                    "deploy",
                    self.latency(),
                    Map::new(),
                );
                Ok(if field == "serviceInstanceDeploy" {
                    json!(true)
                } else {
                    json!(id)
                })
            }
            "serviceInstanceUpdate" => {
                let service = required(variables, "serviceId")?;
                let environment = optional(variables, "environmentId").unwrap_or_default();
                let input = variables
                    .get("input")
                    .ok_or("Variable \"$input\" of required type \"ServiceInstanceUpdateInput!\" was not provided.")?;
                if let Some(image) = input.pointer("/source/image").and_then(Value::as_str) {
                    world
                        .images
                        .insert((environment, service), image.to_owned());
                }
                Ok(json!(true))
            }
            "deploymentRollback" => {
                let id = required(variables, "id")?;
                let index = world.index(&id).ok_or("Deployment not found")?;
                if !self.can_rollback(&world, index, now) {
                    return Err("This deployment cannot be rolled back".into());
                }
                let target = world.deployments[index].clone();
                let mut meta = Map::new();
                meta.insert("rollbackTargetDeploymentId".into(), json!(id));
                self.create(
                    &mut world,
                    &target.environment_id,
                    &target.service_id,
                    target.commit,
                    target.image,
                    "rollback",
                    self.latency(),
                    meta,
                );
                Ok(json!(true))
            }
            "deploymentRedeploy" => {
                let id = required(variables, "id")?;
                let index = world.index(&id).ok_or("Deployment not found")?;
                let target = world.deployments[index].clone();
                let new = self.create(
                    &mut world,
                    &target.environment_id,
                    &target.service_id,
                    target.commit,
                    target.image,
                    "redeploy",
                    self.latency(),
                    Map::new(),
                );
                let index = world.index(&new).expect("just created");
                Ok(self.render(&world, index, now))
            }
            "variableCollectionUpsert" | "variableUpsert" => {
                let input = variables
                    .get("input")
                    .ok_or("Variable \"$input\" of required type was not provided.")?;
                input_field(input, "projectId")?;
                let environment = input_field(input, "environmentId")?;
                let service = optional(input, "serviceId").unwrap_or_default();
                let mut values = BTreeMap::new();
                if field == "variableUpsert" {
                    values.insert(input_field(input, "name")?, input_field(input, "value")?);
                } else {
                    let given = input.get("variables").and_then(Value::as_object).ok_or(
                        "Variable \"$input\" got invalid value; Field \"variables\" of required type \"EnvironmentVariables!\" was not provided.",
                    )?;
                    for (name, value) in given {
                        let value = value.as_str().ok_or_else(|| {
                            format!(
                                "Variable \"$input\" got invalid value; \"{name}\" is not a string"
                            )
                        })?;
                        values.insert(name.clone(), value.to_owned());
                    }
                }
                let replace = input.get("replace").and_then(Value::as_bool) == Some(true);
                let skip = input.get("skipDeploys").and_then(Value::as_bool) == Some(true);
                let stored = world
                    .variables
                    .entry((environment.clone(), service.clone()))
                    .or_default();
                if replace {
                    stored.clear();
                }
                stored.extend(values);
                if !skip && !service.is_empty() {
                    self.redeploy_latest(&mut world, &environment, &service);
                }
                Ok(json!(true))
            }
            "variableDelete" => {
                let input = variables
                    .get("input")
                    .ok_or("Variable \"$input\" of required type \"VariableDeleteInput!\" was not provided.")?;
                input_field(input, "projectId")?;
                let environment = input_field(input, "environmentId")?;
                let name = input_field(input, "name")?;
                let service = optional(input, "serviceId").unwrap_or_default();
                if let Some(stored) = world.variables.get_mut(&(environment, service)) {
                    stored.remove(&name);
                }
                Ok(json!(true))
            }
            other => Err(format!("Cannot query field \"{other}\".")),
        }
    }

    /// What a variable change without `skipDeploys` does: deploys the latest source again.
    fn redeploy_latest(&self, world: &mut World, environment: &str, service: &str) {
        if let Some(index) = world.latest(environment, service) {
            let latest = world.deployments[index].clone();
            self.create(
                world,
                environment,
                service,
                latest.commit,
                latest.image,
                "variables",
                self.latency(),
                Map::new(),
            );
        }
    }
}

async fn graphql(State(fake): State<FakeRailway>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return (
            axum::http::StatusCode::BAD_REQUEST,
            Json(json!({ "errors": [{ "message": "POST body missing, invalid Content-Type, or JSON object has no keys." }] })),
        )
            .into_response();
    };
    let query = body.get("query").and_then(Value::as_str).unwrap_or("");
    let variables = match body.get("variables") {
        Some(Value::Null) | None => json!({}),
        Some(variables) => variables.clone(),
    };
    let mutation = query.trim_start().starts_with("mutation");
    let Some((field, selected)) = top_level_field(query) else {
        return graphql_error("", "Syntax Error: Unexpected <EOF>.");
    };
    fake.calls.record(
        if mutation { "mutation" } else { "query" },
        &field,
        variables.clone(),
    );

    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let bearer = header("authorization").and_then(|v| v.strip_prefix("Bearer "));
    if bearer != Some(TOKEN) && header("project-access-token") != Some(TOKEN) {
        return graphql_error(&field, "Not Authorized");
    }
    if let Some(message) = fake.world.lock().unwrap().queued_errors.pop_front() {
        return graphql_error(&field, &message);
    }

    let operation = if mutation { "Mutation" } else { "Query" };
    match schema(&field) {
        Some((is_mutation, _)) if is_mutation != mutation => {
            return graphql_error(
                &field,
                &format!("Cannot query field \"{field}\" on type \"{operation}\"."),
            );
        }
        Some((_, false)) if selected => {
            return graphql_error(
                &field,
                &format!(
                    "Field \"{field}\" must not have a selection since its type has no subfields."
                ),
            );
        }
        Some((_, true)) if !selected => {
            return graphql_error(
                &field,
                &format!("Field \"{field}\" of an object type must have a selection of subfields."),
            );
        }
        None => {
            return graphql_error(
                &field,
                &format!("Cannot query field \"{field}\" on type \"{operation}\"."),
            );
        }
        _ => {}
    }
    match fake.answer(&field, &variables) {
        Ok(value) => {
            let mut data = Map::new();
            data.insert(field, value);
            Json(json!({ "data": data })).into_response()
        }
        Err(message) => graphql_error(&field, &message),
    }
}
