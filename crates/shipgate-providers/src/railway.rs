//! The Railway adapter, over Railway's public GraphQL API (`POST …/graphql/v2` with
//! `{"query", "variables"}` and `Authorization: Bearer <token>`).
//!
//! Target settings: `project_id`, `environment_id`, `service_id`, and optionally `api_url`
//! (default `https://backboard.railway.com/graphql/v2`). The credential is an account or
//! workspace token. Project tokens (sent as `Project-Access-Token`) are not supported.
//!
//! - **Deploy.** A string artifact is a commit sha:
//!   `serviceInstanceDeployV2(environmentId, serviceId, commitSha)` answers the new deployment's
//!   id. A string that looks like an image reference (it has `/`, `:` or `@` and is not a hex
//!   sha) or an object `{"image": "ghcr.io/…"}` first points the service at the image with
//!   `serviceInstanceUpdate(…, input: {source: {image}})`, then calls `serviceInstanceDeployV2`
//!   with no commit. An object `{"commit": "<sha>"}` (or `commit_sha`, `sha`) is a commit. The
//!   reference is the deployment id, polled with `deployment(id)`.
//! - **Status.** `SUCCESS`/`SLEEPING` succeed; `FAILED`/`CRASHED` fail; `QUEUED`, `INITIALIZING`,
//!   `WAITING`, `BUILDING`, `DEPLOYING` run; `REMOVING`/`REMOVED`/`SKIPPED` fail as superseded.
//!   `NEEDS_APPROVAL` counts as running (someone must approve it in Railway); since a running
//!   status carries no detail, that is logged instead.
//! - **Rollback.** With a `to_ref` deployment id whose `deployment(id){canRollback}` is true,
//!   `deploymentRollback(id)` (a `Boolean!` in the schema, so nothing is selected on it). Railway
//!   answers no id, so the new deployment is read back from
//!   `serviceInstance{latestDeployment}`; if Railway has not shown it after a few looks the step
//!   gets a retryable error (a resubmission rolls back to the same deployment again, which is
//!   harmless). Where rollback is not allowed (or declined), `deploymentRedeploy(id,
//!   usePreviousImageTag: true)` of the `to_ref`; without a usable `to_ref`, the release's
//!   artifact is deployed again.
//! - **Config.** `variableCollectionUpsert(…, skipDeploys: true)` for the values set and one
//!   `variableDelete` per unset name; done at once. With `skipDeploys` Railway applies the
//!   values on the next deploy, which the result says. Whether `variableDelete` itself
//!   triggers a deploy is not documented.
//! - **Traffic and jobs.** Railway has neither; both are refused as permanent errors.
//! - **Live state and health.** `serviceInstance{latestDeployment{id status meta}}`: the
//!   latest deployment (which may still be building; its status is in the detail) and the
//!   commit or image its `meta` names.
//!
//! **Errors.** Railway answers GraphQL errors as HTTP 200 with `errors[]`. "Not Authorized",
//! missing tokens, validation errors and "not found" are permanent; rate-limit messages are
//! [`ProviderError::RateLimited`] (waited out inline when short, like a 429); internal errors
//! are transient. HTTP 429 and 5xx are handled by [`ApiClient`].
//!
//! **Idempotency — a known limitation.** Railway has no idempotency key and a deployment's
//! `meta` cannot be set by the caller, so [`Provider::find`] is best effort only: it lists the
//! service's five latest deployments and adopts one whose `meta` carries the natural key as a
//! value, which real Railway deployments do not do today. In practice `find` answers `None`,
//! so if Shipgate crashes between Railway accepting a deploy and Shipgate storing its id, the
//! reconciling worker deploys once more (the same commit or image, so the second deployment
//! supersedes the first). Likewise a deploy call that times out after Railway accepted it is
//! retried by the HTTP layer and may deploy twice.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::Method;
use serde_json::{json, Map, Value};

use shipgate_domain::provider::ProviderKind;

use crate::http::{api_url, rate_limit_wait, ApiClient, Call, RetryPolicy};
use crate::{
    HealthReading, LiveState, OperationStatus, Provider, ProviderError, StepRequest, Submitted,
    TargetContext,
};

/// Railway's public GraphQL endpoint.
pub const DEFAULT_API_URL: &str = "https://backboard.railway.com/graphql/v2";

/// How long a rate limit reported in `errors[]` without any reset header is taken to last.
const DEFAULT_RATE_LIMIT_WAIT: Duration = Duration::from_secs(60);

const DEPLOY: &str = "mutation shipgateDeploy($environmentId: String!, $serviceId: String!, \
    $commitSha: String) { serviceInstanceDeployV2(environmentId: $environmentId, \
    serviceId: $serviceId, commitSha: $commitSha) }";
const SET_IMAGE: &str = "mutation shipgateSetImage($serviceId: String!, $environmentId: String, \
    $input: ServiceInstanceUpdateInput!) { serviceInstanceUpdate(serviceId: $serviceId, \
    environmentId: $environmentId, input: $input) }";
const DEPLOYMENT: &str = "query shipgateDeployment($id: String!) { deployment(id: $id) { id \
    status canRollback canRedeploy url staticUrl meta createdAt } }";
const DEPLOYMENTS: &str = "query shipgateDeployments($input: DeploymentListInput!, $first: Int) \
    { deployments(input: $input, first: $first) { edges { node { id status meta createdAt } } } }";
const LATEST: &str = "query shipgateLatest($environmentId: String!, $serviceId: String!) { \
    serviceInstance(environmentId: $environmentId, serviceId: $serviceId) { latestDeployment { \
    id status meta createdAt } } }";
const ROLLBACK: &str = "mutation shipgateRollback($id: String!) { deploymentRollback(id: $id) }";
const REDEPLOY: &str = "mutation shipgateRedeploy($id: String!, $usePreviousImageTag: Boolean) \
    { deploymentRedeploy(id: $id, usePreviousImageTag: $usePreviousImageTag) { id status } }";
const SET_VARIABLES: &str = "mutation shipgateSetVariables($input: \
    VariableCollectionUpsertInput!) { variableCollectionUpsert(input: $input) }";
const DELETE_VARIABLE: &str = "mutation shipgateDeleteVariable($input: VariableDeleteInput!) { \
    variableDelete(input: $input) }";

/// The Railway adapter.
pub struct Railway {
    api: ApiClient,
    policy: RetryPolicy,
}

/// The ids and endpoint of one target.
struct Target<'a> {
    url: String,
    token: &'a str,
    project: &'a str,
    environment: &'a str,
    service: &'a str,
}

/// A deployment as Railway reports it.
#[derive(Debug)]
struct Deployment {
    id: String,
    status: String,
    body: Value,
}

impl Deployment {
    fn from_value(value: &Value) -> Option<Self> {
        Some(Deployment {
            id: value.get("id")?.as_str()?.to_owned(),
            status: value
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            body: value.clone(),
        })
    }

    fn meta(&self) -> &Value {
        self.body.get("meta").unwrap_or(&Value::Null)
    }

    /// The commit or image the deployment runs, when its meta says.
    fn source(&self) -> Option<String> {
        let meta = self.meta();
        ["commitHash", "commitSha", "image"]
            .iter()
            .find_map(|key| meta.get(*key).and_then(Value::as_str))
            .map(str::to_owned)
    }

    /// Where the deployment is reachable, when Railway says.
    fn url(&self) -> Option<&Value> {
        ["url", "staticUrl"]
            .iter()
            .find_map(|key| self.body.get(*key).filter(|url| !url.is_null()))
    }

    fn status(&self) -> OperationStatus {
        let id = &self.id;
        match self.status.as_str() {
            "SUCCESS" | "SLEEPING" => OperationStatus::Succeeded(json!({
                "deployment": id,
                "status": self.status,
                "source": self.source(),
                "url": self.url(),
            })),
            "FAILED" | "CRASHED" => OperationStatus::Failed(format!(
                "the Railway deployment {id} is {} (see its logs in Railway)",
                self.status
            )),
            "REMOVING" | "REMOVED" | "SKIPPED" => OperationStatus::Failed(format!(
                "superseded: the Railway deployment {id} is {} (another deployment replaced it)",
                self.status
            )),
            "NEEDS_APPROVAL" => {
                tracing::info!(deployment = %id, "the Railway deployment waits for approval in Railway");
                OperationStatus::Running
            }
            "QUEUED" | "INITIALIZING" | "WAITING" | "BUILDING" | "DEPLOYING" => {
                OperationStatus::Running
            }
            other => {
                tracing::warn!(deployment = %id, status = other, "unknown Railway deployment status; still waiting");
                OperationStatus::Running
            }
        }
    }
}

/// The message of a non-2xx answer: GraphQL `errors[]`, else a `message`.
fn error_message(body: &Value) -> Option<String> {
    graphql_messages(body).or_else(|| {
        body.get("message")
            .and_then(Value::as_str)
            .map(str::to_owned)
    })
}

/// Every message of a GraphQL `errors[]`, joined.
fn graphql_messages(body: &Value) -> Option<String> {
    let errors = body.get("errors")?.as_array()?;
    let messages: Vec<&str> = errors
        .iter()
        .filter_map(|e| e.get("message").and_then(Value::as_str))
        .collect();
    (!messages.is_empty()).then(|| messages.join("; "))
}

/// How a GraphQL error answered at HTTP 200 is treated.
#[derive(Debug, PartialEq)]
enum ErrorKind {
    RateLimited,
    Transient,
    Permanent,
}

fn classify(body: &Value) -> ErrorKind {
    let errors = body
        .get("errors")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let text = |e: &Value| {
        e.get("message")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_ascii_lowercase()
    };
    let code = |e: &Value| {
        e.pointer("/extensions/code")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_ascii_uppercase()
    };
    let permanent = |e: &Value| {
        let message = text(e);
        let code = code(e);
        [
            "not authorized",
            "unauthorized",
            "token not found",
            "forbidden",
            "not found",
            "cannot query field",
            "must not have a selection",
            "must have a selection",
            "unknown argument",
            "unknown type",
            "variable \"$",
            "expected type",
            "expected value",
            "syntax error",
            "invalid",
        ]
        .iter()
        .any(|needle| message.contains(needle))
            || [
                "GRAPHQL_VALIDATION_FAILED",
                "GRAPHQL_PARSE_FAILED",
                "BAD_USER_INPUT",
                "UNAUTHENTICATED",
                "FORBIDDEN",
            ]
            .contains(&code.as_str())
    };
    let rate_limited = |e: &Value| {
        let message = text(e);
        message.contains("rate limit")
            || message.contains("too many requests")
            || ["RATE_LIMITED", "TOO_MANY_REQUESTS"].contains(&code(e).as_str())
    };
    let transient = |e: &Value| {
        let message = text(e);
        [
            "internal",
            "problem processing request",
            "timed out",
            "timeout",
            "temporarily",
            "try again",
            "unavailable",
        ]
        .iter()
        .any(|needle| message.contains(needle))
    };
    if errors.iter().any(permanent) {
        ErrorKind::Permanent
    } else if errors.iter().any(rate_limited) {
        ErrorKind::RateLimited
    } else if !errors.is_empty() && errors.iter().all(transient) {
        ErrorKind::Transient
    } else {
        ErrorKind::Permanent
    }
}

fn setting<'a>(target: &'a TargetContext<'_>, key: &str) -> Result<&'a str, ProviderError> {
    target
        .target
        .settings
        .get(key)
        .and_then(Value::as_str)
        .filter(|value| !value.trim().is_empty())
        .ok_or_else(|| ProviderError::Permanent(format!("the railway target has no `{key}`")))
}

/// Whether a string is a (possibly abbreviated) git commit sha.
fn is_sha(text: &str) -> bool {
    (7..=40).contains(&text.len()) && text.chars().all(|c| c.is_ascii_hexdigit())
}

/// What to deploy.
#[derive(Debug, PartialEq)]
enum Source {
    Commit(String),
    Image(String),
}

fn source_of(artifact: &Value) -> Result<Source, ProviderError> {
    let text = |value: &Value| {
        value
            .as_str()
            .map(str::trim)
            .filter(|text| !text.is_empty())
            .map(str::to_owned)
    };
    match artifact {
        Value::String(_) => {
            let artifact = text(artifact).unwrap_or_default();
            if artifact.is_empty() {
                Err(ProviderError::Permanent(
                    "the release has an empty artifact for this component".into(),
                ))
            } else if !is_sha(&artifact) && artifact.contains(['/', ':', '@']) {
                Ok(Source::Image(artifact))
            } else {
                Ok(Source::Commit(artifact))
            }
        }
        Value::Object(object) => {
            if let Some(image) = object.get("image").and_then(text) {
                return Ok(Source::Image(image));
            }
            ["commit", "commit_sha", "commitSha", "sha"]
                .iter()
                .find_map(|key| object.get(*key).and_then(text))
                .map(Source::Commit)
                .ok_or_else(|| {
                    ProviderError::Permanent(
                        "a railway artifact is a commit sha, or an object with `image` or `commit`"
                            .into(),
                    )
                })
        }
        _ => Err(ProviderError::Permanent(
            "a railway artifact is a commit sha, or an object with `image` or `commit`".into(),
        )),
    }
}

/// Whether a deployment's `meta` carries the natural key as one of its values.
fn meta_mentions(meta: &Value, key: &str) -> bool {
    meta.as_object()
        .is_some_and(|meta| meta.values().any(|value| value.as_str() == Some(key)))
}

impl Railway {
    /// A Railway adapter with the given retry policy.
    pub fn new(policy: RetryPolicy) -> Self {
        Railway {
            api: ApiClient::new("Railway", policy, error_message),
            policy,
        }
    }

    fn target<'a>(target: &'a TargetContext<'_>) -> Result<Target<'a>, ProviderError> {
        let token = target
            .credential
            .filter(|token| !token.trim().is_empty())
            .ok_or_else(|| {
                ProviderError::Permanent("the railway target has no credential (a token)".into())
            })?;
        Ok(Target {
            url: api_url(&target.target.settings, DEFAULT_API_URL),
            token,
            project: setting(target, "project_id")?,
            environment: setting(target, "environment_id")?,
            service: setting(target, "service_id")?,
        })
    }

    /// Sends one operation; answers `data.<field>`. GraphQL errors become provider errors.
    async fn graphql(
        &self,
        target: &Target<'_>,
        field: &str,
        query: &str,
        variables: Value,
    ) -> Result<Value, ProviderError> {
        let body = json!({ "query": query, "variables": variables });
        let mut call = Call::new(Method::POST, target.url.clone())
            .bearer(Some(target.token))
            .json(&body);
        if matches!(
            field,
            "serviceInstanceDeployV2" | "deploymentRollback" | "deploymentRedeploy"
        ) {
            // These start deployments and Railway cannot deduplicate them.
            call = call.once();
        }
        let mut attempt = 1;
        loop {
            let answer = self.api.send(&call).await?;
            let Some(messages) = graphql_messages(&answer.body) else {
                return match answer.body.get("data").and_then(|data| data.get(field)) {
                    Some(value) => Ok(value.clone()),
                    None => Err(ProviderError::Transient(format!(
                        "Railway answered {field} without data"
                    ))),
                };
            };
            match classify(&answer.body) {
                ErrorKind::Permanent => {
                    return Err(ProviderError::Permanent(format!(
                        "Railway refused {field}: {messages}"
                    )))
                }
                ErrorKind::Transient => {
                    return Err(ProviderError::Transient(format!(
                        "Railway failed {field}: {messages}"
                    )))
                }
                ErrorKind::RateLimited => {
                    let wait = rate_limit_wait(&answer.headers).unwrap_or(DEFAULT_RATE_LIMIT_WAIT);
                    if attempt >= self.policy.attempts || wait > self.policy.max_inline_wait {
                        return Err(ProviderError::RateLimited(wait));
                    }
                    tracing::debug!(platform = "Railway", ?wait, "rate limited; waiting");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
            }
        }
    }

    async fn deployment(&self, target: &Target<'_>, id: &str) -> Result<Deployment, ProviderError> {
        let value = self
            .graphql(target, "deployment", DEPLOYMENT, json!({ "id": id }))
            .await?;
        Deployment::from_value(&value)
            .ok_or_else(|| ProviderError::Permanent(format!("Railway has no deployment {id}")))
    }

    async fn latest(&self, target: &Target<'_>) -> Result<Option<Deployment>, ProviderError> {
        let value = self
            .graphql(
                target,
                "serviceInstance",
                LATEST,
                json!({ "environmentId": target.environment, "serviceId": target.service }),
            )
            .await?;
        Ok(value
            .get("latestDeployment")
            .and_then(Deployment::from_value))
    }

    async fn deploy(
        &self,
        target: &Target<'_>,
        source: Source,
    ) -> Result<Submitted, ProviderError> {
        let commit = match source {
            Source::Commit(sha) => Some(sha),
            Source::Image(image) => {
                let updated = self
                    .graphql(
                        target,
                        "serviceInstanceUpdate",
                        SET_IMAGE,
                        json!({
                            "serviceId": target.service,
                            "environmentId": target.environment,
                            "input": { "source": { "image": image } },
                        }),
                    )
                    .await?;
                if updated == Value::Bool(false) {
                    return Err(ProviderError::Permanent(format!(
                        "Railway declined to point the service at the image {image}"
                    )));
                }
                None
            }
        };
        let id = self
            .graphql(
                target,
                "serviceInstanceDeployV2",
                DEPLOY,
                json!({
                    "environmentId": target.environment,
                    "serviceId": target.service,
                    "commitSha": commit,
                }),
            )
            .await?;
        let reference = id.as_str().map(str::to_owned).ok_or_else(|| {
            ProviderError::Transient(format!(
                "Railway answered serviceInstanceDeployV2 with {id}, not a deployment id"
            ))
        })?;
        Ok(Submitted {
            reference,
            status: OperationStatus::Running,
        })
    }

    async fn redeploy(&self, target: &Target<'_>, id: &str) -> Result<Submitted, ProviderError> {
        let value = self
            .graphql(
                target,
                "deploymentRedeploy",
                REDEPLOY,
                // The exact image that deployment ran, not whatever its tag points at now.
                json!({ "id": id, "usePreviousImageTag": true }),
            )
            .await?;
        let deployment = Deployment::from_value(&value).ok_or_else(|| {
            ProviderError::Transient(format!(
                "Railway answered deploymentRedeploy with {value}, not a deployment"
            ))
        })?;
        Ok(Submitted {
            reference: deployment.id.clone(),
            status: deployment.status(),
        })
    }

    /// Native rollback to `to_ref`; `None` when Railway does not allow it there.
    async fn native_rollback(
        &self,
        target: &Target<'_>,
        to_ref: &str,
    ) -> Result<Option<Submitted>, ProviderError> {
        let before = self.latest(target).await?.map(|d| d.id);
        match self
            .graphql(
                target,
                "deploymentRollback",
                ROLLBACK,
                json!({ "id": to_ref }),
            )
            .await
        {
            Ok(Value::Bool(true)) => {}
            Ok(other) => {
                tracing::info!(deployment = %to_ref, answer = %other, "Railway declined the rollback; redeploying instead");
                return Ok(None);
            }
            Err(ProviderError::Permanent(message)) => {
                tracing::info!(deployment = %to_ref, %message, "Railway refused the rollback; redeploying instead");
                return Ok(None);
            }
            Err(other) => return Err(other),
        }
        for look in 1..=4u32 {
            if let Some(latest) = self.latest(target).await? {
                if Some(&latest.id) != before.as_ref() {
                    return Ok(Some(Submitted {
                        reference: latest.id.clone(),
                        status: latest.status(),
                    }));
                }
            }
            tokio::time::sleep(self.policy.base_delay.saturating_mul(look)).await;
        }
        Err(ProviderError::Transient(format!(
            "Railway accepted the rollback to {to_ref} but has not shown its deployment yet"
        )))
    }

    async fn rollback(
        &self,
        target: &Target<'_>,
        artifact: &Value,
        to_ref: Option<&str>,
    ) -> Result<Submitted, ProviderError> {
        if let Some(to_ref) = to_ref.filter(|r| !r.trim().is_empty()) {
            match self.deployment(target, to_ref).await {
                Ok(deployment) => {
                    let flag = |key: &str| deployment.body.get(key).and_then(Value::as_bool);
                    if flag("canRollback") == Some(true) {
                        if let Some(submitted) = self.native_rollback(target, to_ref).await? {
                            return Ok(submitted);
                        }
                    }
                    if flag("canRedeploy") != Some(false) {
                        match self.redeploy(target, to_ref).await {
                            Ok(submitted) => return Ok(submitted),
                            Err(ProviderError::Permanent(message)) => {
                                tracing::info!(deployment = %to_ref, %message, "Railway refused the redeploy; deploying the artifact instead");
                            }
                            Err(other) => return Err(other),
                        }
                    }
                }
                Err(ProviderError::Permanent(message)) => {
                    tracing::info!(deployment = %to_ref, %message, "the deployment rolled back to is not readable; deploying the artifact instead");
                }
                Err(other) => return Err(other),
            }
        }
        self.deploy(target, source_of(artifact)?).await
    }

    async fn config(
        &self,
        target: &Target<'_>,
        vars: &std::collections::BTreeMap<String, Option<String>>,
    ) -> Result<Submitted, ProviderError> {
        let set: Map<String, Value> = vars
            .iter()
            .filter_map(|(name, value)| Some((name.clone(), Value::from(value.clone()?))))
            .collect();
        let unset: Vec<&String> = vars
            .iter()
            .filter(|(_, value)| value.is_none())
            .map(|(name, _)| name)
            .collect();
        let set_names: Vec<&String> = set.keys().collect();
        let set_names = json!(set_names);
        if !set.is_empty() {
            self.graphql(
                target,
                "variableCollectionUpsert",
                SET_VARIABLES,
                json!({ "input": {
                    "projectId": target.project,
                    "environmentId": target.environment,
                    "serviceId": target.service,
                    "variables": set,
                    "skipDeploys": true,
                }}),
            )
            .await?;
        }
        for name in &unset {
            self.graphql(
                target,
                "variableDelete",
                DELETE_VARIABLE,
                json!({ "input": {
                    "projectId": target.project,
                    "environmentId": target.environment,
                    "serviceId": target.service,
                    "name": name,
                }}),
            )
            .await?;
        }
        Ok(Submitted {
            reference: format!("variables:{}:{}", target.environment, target.service),
            status: OperationStatus::Succeeded(json!({
                "set": set_names,
                "unset": unset,
                "note": "Railway applies variables on the next deploy (set with skipDeploys: true)",
            })),
        })
    }
}

#[async_trait]
impl Provider for Railway {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Railway
    }

    async fn submit(
        &self,
        target: &TargetContext<'_>,
        request: &StepRequest,
        _natural_key: &str,
    ) -> Result<Submitted, ProviderError> {
        let railway = Self::target(target)?;
        match request {
            StepRequest::Deploy { artifact, .. } => {
                self.deploy(&railway, source_of(artifact)?).await
            }
            StepRequest::Rollback {
                artifact, to_ref, ..
            } => self.rollback(&railway, artifact, to_ref.as_deref()).await,
            StepRequest::Config { vars } => self.config(&railway, vars).await,
            StepRequest::Traffic { .. } => Err(ProviderError::Permanent(
                "Railway cannot split traffic between versions".into(),
            )),
            StepRequest::Job { .. } => Err(ProviderError::Permanent(
                "the railway provider cannot run one-off jobs".into(),
            )),
        }
    }

    async fn find(
        &self,
        target: &TargetContext<'_>,
        natural_key: &str,
    ) -> Result<Option<Submitted>, ProviderError> {
        // Best effort (see the module docs): Railway keeps no caller key on a deployment.
        let railway = Self::target(target)?;
        let answer = self
            .graphql(
                &railway,
                "deployments",
                DEPLOYMENTS,
                json!({
                    "input": {
                        "projectId": railway.project,
                        "serviceId": railway.service,
                        "environmentId": railway.environment,
                    },
                    "first": 5,
                }),
            )
            .await;
        let connection = match answer {
            Ok(connection) => connection,
            Err(ProviderError::Permanent(message)) => {
                tracing::debug!(%message, "cannot list Railway deployments to reconcile; none adopted");
                return Ok(None);
            }
            Err(other) => return Err(other),
        };
        let found = connection
            .get("edges")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|edge| edge.get("node").and_then(Deployment::from_value))
            .find(|deployment| meta_mentions(deployment.meta(), natural_key));
        Ok(found.map(|deployment| Submitted {
            reference: deployment.id.clone(),
            status: deployment.status(),
        }))
    }

    async fn poll(
        &self,
        target: &TargetContext<'_>,
        reference: &str,
    ) -> Result<OperationStatus, ProviderError> {
        if reference.starts_with("variables:") {
            return Ok(OperationStatus::Succeeded(Value::Null));
        }
        let railway = Self::target(target)?;
        Ok(self.deployment(&railway, reference).await?.status())
    }

    async fn live(&self, target: &TargetContext<'_>) -> Result<LiveState, ProviderError> {
        let railway = Self::target(target)?;
        Ok(match self.latest(&railway).await? {
            Some(latest) => LiveState {
                reference: Some(latest.id.clone()),
                version: latest.source(),
                detail: json!({
                    "status": latest.status,
                    "meta": latest.meta(),
                    "createdAt": latest.body.get("createdAt"),
                }),
            },
            None => LiveState {
                reference: None,
                version: None,
                detail: json!({ "status": null }),
            },
        })
    }

    async fn health(
        &self,
        target: &TargetContext<'_>,
    ) -> Option<Result<HealthReading, ProviderError>> {
        let railway = match Self::target(target) {
            Ok(railway) => railway,
            Err(error) => return Some(Err(error)),
        };
        Some(self.latest(&railway).await.map(|latest| match latest {
            Some(latest) => HealthReading {
                healthy: matches!(latest.status.as_str(), "SUCCESS" | "SLEEPING"),
                summary: format!(
                    "Railway reports the latest deployment {} as {}",
                    latest.id, latest.status
                ),
            },
            None => HealthReading {
                healthy: false,
                summary: "Railway has no deployment for this service".into(),
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifacts_read_as_commits_or_images() {
        assert_eq!(
            source_of(&json!("a1b2c3d")).unwrap(),
            Source::Commit("a1b2c3d".into())
        );
        assert_eq!(
            source_of(&json!("ghcr.io/o/a:1.0")).unwrap(),
            Source::Image("ghcr.io/o/a:1.0".into())
        );
        assert_eq!(
            source_of(&json!({ "image": "ghcr.io/o/a:2" })).unwrap(),
            Source::Image("ghcr.io/o/a:2".into())
        );
        assert_eq!(
            source_of(&json!({ "commit": "abcdef1" })).unwrap(),
            Source::Commit("abcdef1".into())
        );
        assert!(source_of(&Value::Null).is_err());
    }

    #[test]
    fn graphql_errors_are_classified() {
        let body = |message: &str| json!({ "data": null, "errors": [{ "message": message }] });
        assert_eq!(classify(&body("Not Authorized")), ErrorKind::Permanent);
        assert_eq!(
            classify(&body("Cannot query field \"x\" on type \"Query\".")),
            ErrorKind::Permanent
        );
        assert_eq!(
            classify(&body("Rate limit exceeded")),
            ErrorKind::RateLimited
        );
        assert_eq!(
            classify(&body("Problem processing request")),
            ErrorKind::Transient
        );
        assert_eq!(classify(&body("Something odd")), ErrorKind::Permanent);
    }
}
