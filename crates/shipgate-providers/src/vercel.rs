//! The Vercel adapter, on the Vercel REST API (`shared/providers.md` §2).
//!
//! - **Deploy** creates a deployment (`POST /v13/deployments?forceNew=1`) from a git ref/sha, a
//!   full `gitSource`, or an existing deployment (redeploy), tagged with the step's natural key
//!   in `meta.shipgate_key`. It is followed on `readyState`; once `READY` the adapter makes sure
//!   the deployment serves production: a production deployment that Vercel aliased is done, one
//!   left `STAGED` (auto-assignment off, e.g. after an instant rollback) or built for another
//!   target is promoted (`POST /v10/projects/{id}/promote/{dpl}`) and the promotion is followed
//!   on the project's `lastAliasRequest`.
//! - **Rollback** uses Vercel's instant rollback to the deployment that served the release
//!   returned to, and follows `lastAliasRequest`; without that deployment it redeploys the
//!   release's artifact.
//! - **Traffic** drives a rolling release (start, approve stages, complete).
//! - **Config** upserts and deletes project environment variables. Vercel applies them to the
//!   next deployment only; the step result says so.
//!
//! Every call carries `teamId` when the target has a `team_id`. References are the deployment
//! id for deployments, `rollback:<dpl>` for instant rollbacks, `promote:<dpl>` for promotions,
//! `traffic:<dpl>:<percent>` for rolling-release stages and `env:<key>` for config changes; the deployment id is always the
//! last `:`-separated part, so a rollback's `to_ref` can be any of them.

use async_trait::async_trait;
use reqwest::{Method, Url};
use serde_json::{json, Value};

use shipgate_domain::provider::ProviderKind;

use crate::http::{api_url, Answer, ApiClient, Call, RetryPolicy};
use crate::{
    HealthReading, LiveState, OperationStatus, Provider, ProviderError, StepRequest, Submitted,
    TargetContext,
};

/// The public Vercel API.
const DEFAULT_API_URL: &str = "https://api.vercel.com";

/// How many recent deployments are searched for a natural key or a version.
const LIST_LIMIT: &str = "20";

/// What Vercel changes to environment variables mean for what is live.
const ENV_NOTE: &str = "Vercel applies environment variable changes to the next deployment; \
                        the deployment serving now keeps its values";

/// The Vercel adapter.
pub struct Vercel {
    api: ApiClient,
}

/// Reads Vercel's `{"error":{"code","message"}}` into `message (code)`.
fn error_message(body: &Value) -> Option<String> {
    let error = body.get("error")?;
    let message = error.get("message").and_then(Value::as_str);
    let code = error.get("code").and_then(Value::as_str);
    match (message, code) {
        (Some(message), Some(code)) => Some(format!("{message} ({code})")),
        (Some(message), None) => Some(message.to_owned()),
        (None, Some(code)) => Some(code.to_owned()),
        (None, None) => error.as_str().map(str::to_owned),
    }
}

/// The deployment id a reference ends with (`dpl_x`, `rollback:dpl_x`, `traffic:dpl_x:25`).
fn deployment_of(reference: &str) -> &str {
    match reference.split_once(':') {
        Some(("traffic", rest)) => rest.split(':').next().unwrap_or(rest),
        Some((_, rest)) => rest.rsplit(':').next().unwrap_or(rest),
        None => reference,
    }
}

/// A string field of a JSON object.
fn text<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

/// A deployment's id: `id` in most answers, `uid` in the v6 list.
fn id_of(deployment: &Value) -> Option<&str> {
    text(deployment, "id").or_else(|| text(deployment, "uid"))
}

/// A deployment's state: `readyState`, else `state` (v6 list), else `status`.
fn state_of(deployment: &Value) -> String {
    text(deployment, "readyState")
        .or_else(|| text(deployment, "state"))
        .or_else(|| text(deployment, "status"))
        .unwrap_or("")
        .to_ascii_uppercase()
}

/// Whether a git artifact string is a bare commit sha.
fn is_sha(artifact: &str) -> bool {
    (7..=40).contains(&artifact.len()) && artifact.chars().all(|c| c.is_ascii_hexdigit())
}

/// A `gitSource` from `ref`, `sha`, `ref@sha` or a bare sha (used as both ref and sha).
fn git_source_from_text(artifact: &str) -> Value {
    let artifact = artifact.trim();
    if let Some((git_ref, sha)) = artifact.rsplit_once('@') {
        if !git_ref.is_empty() && is_sha(sha) {
            return json!({"type": "github", "ref": git_ref, "sha": sha});
        }
    }
    if is_sha(artifact) {
        return json!({"type": "github", "ref": artifact, "sha": artifact});
    }
    json!({"type": "github", "ref": artifact})
}

/// Where the deployment body gets its source: `gitSource` or `deploymentId` fields.
fn source_fields(artifact: &Value) -> Result<serde_json::Map<String, Value>, ProviderError> {
    let mut fields = serde_json::Map::new();
    match artifact {
        Value::String(artifact) if !artifact.trim().is_empty() => {
            fields.insert("gitSource".into(), git_source_from_text(artifact));
        }
        Value::Object(object) => {
            if let Some(id) = object.get("deploymentId").and_then(Value::as_str) {
                fields.insert("deploymentId".into(), json!(id));
            } else if let Some(source) = object.get("gitSource").filter(|s| s.is_object()) {
                fields.insert("gitSource".into(), source.clone());
            } else if object.contains_key("ref") || object.contains_key("sha") {
                // A flat git description: `{ref, sha, org, repo, repoId, type}`.
                let mut source = object.clone();
                source.entry("type").or_insert_with(|| json!("github"));
                if !source.contains_key("ref") {
                    let sha = source.get("sha").cloned().unwrap_or(Value::Null);
                    source.insert("ref".into(), sha);
                }
                fields.insert("gitSource".into(), Value::Object(source));
            } else {
                return Err(ProviderError::Permanent(
                    "a Vercel artifact object needs `deploymentId`, `gitSource`, or `ref`/`sha`"
                        .into(),
                ));
            }
        }
        _ => {
            return Err(ProviderError::Permanent(
                "a Vercel artifact is a git ref or sha, or an object with `deploymentId` or \
                 `gitSource`"
                    .into(),
            ))
        }
    }
    Ok(fields)
}

/// The platform's status for a settled alias request (promote or rollback).
fn alias_job_status(request: &Value, what: &str, deployment: &str) -> OperationStatus {
    match text(request, "jobStatus").unwrap_or("") {
        "succeeded" | "skipped" => OperationStatus::Succeeded(json!({
            "deploymentId": deployment, "aliasRequest": request,
        })),
        "failed" => OperationStatus::Failed(format!(
            "Vercel reported the {what} of {deployment} as failed"
        )),
        _ => OperationStatus::Running,
    }
}

/// Settings of one target, checked.
struct Project<'a> {
    base: String,
    id: &'a str,
    team: Option<&'a str>,
    token: &'a str,
    production: bool,
}

impl<'a> Project<'a> {
    fn of(target: &'a TargetContext<'_>) -> Result<Self, ProviderError> {
        let settings = &target.target.settings;
        let id = settings
            .get("project_id")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())
            .ok_or_else(|| {
                ProviderError::Permanent("the vercel target has no `project_id`".into())
            })?;
        let token = target.credential.ok_or_else(|| {
            ProviderError::Permanent("the vercel target needs a credential (an API token)".into())
        })?;
        Ok(Project {
            base: api_url(settings, DEFAULT_API_URL),
            id,
            team: settings
                .get("team_id")
                .and_then(Value::as_str)
                .filter(|team| !team.is_empty()),
            token,
            production: settings
                .get("production")
                .and_then(Value::as_bool)
                .unwrap_or(true),
        })
    }

    /// A URL of the API: path segments are escaped, `teamId` is added when set.
    fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Result<String, ProviderError> {
        let mut url = Url::parse(&self.base)
            .map_err(|_| ProviderError::Permanent(format!("bad Vercel api_url {}", self.base)))?;
        url.path_segments_mut()
            .map_err(|_| ProviderError::Permanent(format!("bad Vercel api_url {}", self.base)))?
            .pop_if_empty()
            .extend(segments);
        {
            let mut pairs = url.query_pairs_mut();
            for (key, value) in query {
                pairs.append_pair(key, value);
            }
            if let Some(team) = self.team {
                pairs.append_pair("teamId", team);
            }
        }
        let mut url = String::from(url);
        if url.ends_with('?') {
            url.pop();
        }
        Ok(url)
    }

    /// The environment targets config changes go to.
    fn env_target(&self) -> &'static str {
        if self.production {
            "production"
        } else {
            "preview"
        }
    }
}

impl Vercel {
    /// A Vercel adapter with the given retry policy.
    pub fn new(policy: RetryPolicy) -> Self {
        Vercel {
            api: ApiClient::new("Vercel", policy, error_message),
        }
    }

    async fn send(
        &self,
        project: &Project<'_>,
        method: Method,
        url: String,
        body: Option<&Value>,
    ) -> Result<Answer, ProviderError> {
        let mut call = Call::new(method, url).bearer(Some(project.token));
        if let Some(body) = body {
            call = call.json(body);
        }
        self.api.send(&call).await
    }

    async fn get(&self, project: &Project<'_>, url: String) -> Result<Value, ProviderError> {
        Ok(self.send(project, Method::GET, url, None).await?.body)
    }

    async fn project(&self, project: &Project<'_>) -> Result<Value, ProviderError> {
        let url = project.url(&["v9", "projects", project.id], &[])?;
        self.get(project, url).await
    }

    async fn deployment(&self, project: &Project<'_>, id: &str) -> Result<Value, ProviderError> {
        let url = project.url(&["v13", "deployments", id], &[])?;
        self.get(project, url).await
    }

    /// The project's recent deployments, newest first.
    async fn recent_deployments(&self, project: &Project<'_>) -> Result<Vec<Value>, ProviderError> {
        let url = project.url(
            &["v6", "deployments"],
            &[("projectId", project.id), ("limit", LIST_LIMIT)],
        )?;
        let body = self.get(project, url).await?;
        let mut deployments = body
            .get("deployments")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let created = |d: &Value| {
            d.get("createdAt")
                .or_else(|| d.get("created"))
                .and_then(Value::as_i64)
                .unwrap_or(0)
        };
        deployments.sort_by_key(|d| std::cmp::Reverse(created(d)));
        Ok(deployments)
    }

    /// Creates a deployment tagged with the natural key and version.
    async fn create(
        &self,
        target: &TargetContext<'_>,
        project: &Project<'_>,
        version: &str,
        artifact: &Value,
        natural_key: &str,
    ) -> Result<Submitted, ProviderError> {
        let mut body = source_fields(artifact)?;
        body.insert("name".into(), json!(target.component));
        body.insert("project".into(), json!(project.id));
        if project.production {
            body.insert("target".into(), json!("production"));
        }
        body.insert(
            "meta".into(),
            json!({"shipgate_key": natural_key, "shipgate_version": version}),
        );
        let body = Value::Object(body);
        let url = project.url(&["v13", "deployments"], &[("forceNew", "1")])?;
        // forceNew skips Vercel's deduplication, so a create is never repeated blind.
        let call = Call::new(Method::POST, url)
            .bearer(Some(project.token))
            .json(&body)
            .once();
        let answer = self.api.send(&call).await?;
        let id = id_of(&answer.body).ok_or_else(|| {
            ProviderError::Transient("Vercel created a deployment but gave no id".into())
        })?;
        tracing::info!(deployment = id, version, "vercel deployment created");
        Ok(Submitted {
            reference: id.to_owned(),
            status: OperationStatus::Running,
        })
    }

    /// Follows a deployment to READY, then to production.
    async fn poll_deployment(
        &self,
        project: &Project<'_>,
        id: &str,
    ) -> Result<OperationStatus, ProviderError> {
        let deployment = self.deployment(project, id).await?;
        let state = state_of(&deployment);
        match state.as_str() {
            "READY" => {}
            "ERROR" | "CANCELED" => {
                let reason = text(&deployment, "errorMessage")
                    .or_else(|| text(&deployment, "errorCode"))
                    .unwrap_or("no reason given");
                let word = if state == "ERROR" {
                    "failed"
                } else {
                    "was canceled"
                };
                return Ok(OperationStatus::Failed(format!(
                    "Vercel deployment {id} {word}: {reason}"
                )));
            }
            // Undocumented; it is terminal in practice (a build Vercel refused to run).
            "BLOCKED" => {
                return Ok(OperationStatus::Failed(format!(
                    "Vercel deployment {id} is blocked (readyState BLOCKED)"
                )))
            }
            _ => return Ok(OperationStatus::Running),
        }
        let summary = json!({
            "deploymentId": id,
            "url": deployment.get("url"),
            "readyState": state,
            "target": deployment.get("target"),
        });
        if !project.production {
            return Ok(OperationStatus::Succeeded(summary));
        }
        if let Some(error) = deployment.get("aliasError").filter(|e| e.is_object()) {
            return Ok(OperationStatus::Failed(format!(
                "Vercel could not alias deployment {id}: {}",
                error_message(&json!({ "error": error })).unwrap_or_default()
            )));
        }
        let built_for_production = text(&deployment, "target") == Some("production");
        let staged = text(&deployment, "readySubstate") == Some("STAGED");
        if built_for_production && !staged {
            return Ok(OperationStatus::Succeeded(summary));
        }
        // Not serving production yet: promote it (once), then follow the promotion.
        Ok(match self.promotion(project, id, true).await? {
            OperationStatus::Succeeded(_) => OperationStatus::Succeeded(summary),
            other => other,
        })
    }

    /// Follows the promotion of `id` to production; starts it when `start` and none is under
    /// way.
    async fn promotion(
        &self,
        project: &Project<'_>,
        id: &str,
        start: bool,
    ) -> Result<OperationStatus, ProviderError> {
        let body = self.project(project).await?;
        let production = body
            .pointer("/targets/production/id")
            .and_then(Value::as_str);
        if production == Some(id) {
            return Ok(OperationStatus::Succeeded(json!({ "deploymentId": id })));
        }
        if let Some(request) = body
            .get("lastAliasRequest")
            .filter(|r| text(r, "toDeploymentId") == Some(id))
        {
            return Ok(alias_job_status(request, "promotion", id));
        }
        if !start {
            return Ok(OperationStatus::Failed(format!(
                "production moved to {} before the promotion of {id} finished",
                production.unwrap_or("nothing")
            )));
        }
        let url = project.url(&["v10", "projects", project.id, "promote", id], &[])?;
        self.send(project, Method::POST, url, None).await?;
        tracing::info!(deployment = id, "vercel deployment promoted to production");
        Ok(OperationStatus::Running)
    }

    /// Follows an instant rollback to `id`.
    async fn poll_rollback(
        &self,
        project: &Project<'_>,
        id: &str,
    ) -> Result<OperationStatus, ProviderError> {
        let body = self.project(project).await?;
        let production = body
            .pointer("/targets/production/id")
            .and_then(Value::as_str);
        if let Some(request) = body
            .get("lastAliasRequest")
            .filter(|r| text(r, "toDeploymentId") == Some(id))
        {
            return Ok(alias_job_status(request, "rollback", id));
        }
        if production == Some(id) {
            return Ok(OperationStatus::Succeeded(json!({ "deploymentId": id })));
        }
        Ok(OperationStatus::Failed(format!(
            "production moved to {} before the rollback to {id} finished",
            production.unwrap_or("nothing")
        )))
    }

    async fn rollback(
        &self,
        target: &TargetContext<'_>,
        project: &Project<'_>,
        request: (&str, &Value, Option<&str>),
        natural_key: &str,
    ) -> Result<Submitted, ProviderError> {
        let (version, artifact, to_ref) = request;
        let Some(to) = to_ref.map(deployment_of).filter(|id| !id.is_empty()) else {
            // No deployment to return to: build the release again.
            return self
                .create(target, project, version, artifact, natural_key)
                .await;
        };
        let reference = format!("rollback:{to}");
        let body = self.project(project).await?;
        if body
            .pointer("/targets/production/id")
            .and_then(Value::as_str)
            == Some(to)
        {
            return Ok(Submitted {
                reference,
                status: OperationStatus::Succeeded(
                    json!({ "deploymentId": to, "note": "already serving production" }),
                ),
            });
        }
        let description = format!("Shipgate rollback to {version}");
        let url = project.url(
            &["v1", "projects", project.id, "rollback", to],
            &[("description", &description)],
        )?;
        match self.send(project, Method::POST, url, None).await {
            Ok(_) => {}
            // The deployment is gone (deleted, or past retention): build the release again.
            Err(ProviderError::Permanent(message)) if message.contains("HTTP 404") => {
                tracing::warn!(
                    deployment = to,
                    "vercel deployment to roll back to is gone; redeploying"
                );
                return self
                    .create(target, project, version, artifact, natural_key)
                    .await;
            }
            Err(other) => return Err(other),
        }
        tracing::info!(
            deployment = to,
            version,
            "vercel instant rollback requested"
        );
        Ok(Submitted {
            reference,
            status: OperationStatus::Running,
        })
    }

    /// The newest deployment this target made for `version`.
    async fn deployment_for_version(
        &self,
        project: &Project<'_>,
        version: &str,
    ) -> Result<String, ProviderError> {
        let deployments = self.recent_deployments(project).await?;
        deployments
            .iter()
            .filter(|d| {
                d.pointer("/meta/shipgate_version").and_then(Value::as_str) == Some(version)
            })
            .find(|d| state_of(d) == "READY")
            .and_then(id_of)
            .map(str::to_owned)
            .ok_or_else(|| {
                ProviderError::Permanent(format!(
                    "no ready Vercel deployment of version {version} among the last \
                     {LIST_LIMIT} deployments of {}",
                    project.id
                ))
            })
    }

    async fn rolling_release(&self, project: &Project<'_>) -> Result<Value, ProviderError> {
        let url = project.url(&["v1", "projects", project.id, "rolling-release"], &[])?;
        let body = self.get(project, url).await?;
        Ok(body.get("rollingRelease").cloned().unwrap_or(Value::Null))
    }

    async fn rolling_post(
        &self,
        project: &Project<'_>,
        action: &str,
        body: &Value,
    ) -> Result<Value, ProviderError> {
        let url = project.url(
            &["v1", "projects", project.id, "rolling-release", action],
            &[],
        )?;
        let answer = self.send(project, Method::POST, url, Some(body)).await?;
        Ok(answer
            .body
            .get("rollingRelease")
            .cloned()
            .unwrap_or(Value::Null))
    }

    async fn traffic(
        &self,
        project: &Project<'_>,
        version: &str,
        percent: u8,
    ) -> Result<Submitted, ProviderError> {
        let canary = self.deployment_for_version(project, version).await?;
        let reference = format!("traffic:{canary}:{percent}");
        let current = self.rolling_release(project).await?;
        let active_for_canary = text(&current, "state").map(str::to_ascii_uppercase)
            == Some("ACTIVE".into())
            && current
                .pointer("/canaryDeployment/id")
                .and_then(Value::as_str)
                == Some(canary.as_str());
        let body = json!({ "canaryDeploymentId": canary });
        if !active_for_canary && percent < 100 {
            let serving = self.project(project).await?;
            if serving
                .pointer("/targets/production/id")
                .and_then(Value::as_str)
                == Some(canary.as_str())
            {
                // Nothing to shift: the deploy already took all traffic (rolling releases
                // are off on the project).
                tracing::warn!(
                    deployment = %canary,
                    percent,
                    "the vercel deployment already serves all production traffic"
                );
                return Ok(Submitted {
                    reference,
                    status: OperationStatus::Succeeded(json!({
                        "canaryDeploymentId": canary,
                        "percent": 100,
                        "requested": percent,
                        "note": "the deployment already serves all production traffic; enable \
                                 rolling releases on the Vercel project to shift traffic gradually",
                    })),
                });
            }
        }
        if percent >= 100 {
            if active_for_canary {
                self.rolling_post(project, "complete", &body).await?;
            } else {
                let serving = self.project(project).await?;
                if serving
                    .pointer("/targets/production/id")
                    .and_then(Value::as_str)
                    != Some(canary.as_str())
                {
                    // No rolling release for it: promote it outright, and follow that.
                    let status = self.promotion(project, &canary, true).await?;
                    return Ok(Submitted {
                        reference: format!("promote:{canary}"),
                        status,
                    });
                }
            }
            return Ok(Submitted {
                reference,
                status: OperationStatus::Succeeded(
                    json!({ "canaryDeploymentId": canary, "percent": 100 }),
                ),
            });
        }
        let mut release = if active_for_canary {
            current
        } else {
            self.rolling_post(project, "start", &body).await?
        };
        let stages: Vec<(u64, u64)> = release
            .get("stages")
            .and_then(Value::as_array)
            .map(|stages| {
                stages
                    .iter()
                    .enumerate()
                    .map(|(position, stage)| {
                        (
                            stage
                                .get("index")
                                .and_then(Value::as_u64)
                                .unwrap_or(position as u64),
                            stage
                                .get("targetPercentage")
                                .and_then(Value::as_u64)
                                .unwrap_or(0),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        // The first stage that reaches the asked share; stages are configured on the project.
        let Some(&(wanted, reached)) = stages.iter().find(|(_, share)| *share >= percent as u64)
        else {
            return Err(ProviderError::Permanent(format!(
                "the Vercel project's rolling release has no stage of {percent}% or more"
            )));
        };
        let mut index = release
            .pointer("/activeStage/index")
            .or_else(|| release.get("currentStageIndex"))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        while index < wanted {
            index += 1;
            let body = json!({ "nextStageIndex": index, "canaryDeploymentId": canary });
            release = self.rolling_post(project, "approve-stage", &body).await?;
        }
        Ok(Submitted {
            reference,
            status: OperationStatus::Succeeded(json!({
                "canaryDeploymentId": canary,
                "percent": reached,
                "requested": percent,
                "rollingRelease": release,
            })),
        })
    }

    async fn config(
        &self,
        project: &Project<'_>,
        vars: &std::collections::BTreeMap<String, Option<String>>,
        natural_key: &str,
    ) -> Result<Submitted, ProviderError> {
        let target = project.env_target();
        let sets: Vec<Value> = vars
            .iter()
            .filter_map(|(key, value)| {
                value.as_ref().map(|value| {
                    json!({"key": key, "value": value, "type": "encrypted", "target": [target]})
                })
            })
            .collect();
        let unsets: Vec<&str> = vars
            .iter()
            .filter(|(_, value)| value.is_none())
            .map(|(key, _)| key.as_str())
            .collect();
        if !sets.is_empty() {
            let url = project.url(
                &["v10", "projects", project.id, "env"],
                &[("upsert", "true")],
            )?;
            let body = Value::Array(sets);
            let answer = self.send(project, Method::POST, url, Some(&body)).await?;
            let failures: Vec<String> = answer
                .body
                .get("failed")
                .and_then(Value::as_array)
                .map(|failed| {
                    failed
                        .iter()
                        .map(|failure| {
                            let key = failure
                                .pointer("/error/key")
                                .and_then(Value::as_str)
                                .unwrap_or("?");
                            let message =
                                error_message(failure).unwrap_or_else(|| "refused".into());
                            format!("{key}: {message}")
                        })
                        .collect()
                })
                .unwrap_or_default();
            if !failures.is_empty() {
                return Err(ProviderError::Permanent(format!(
                    "Vercel refused environment variables: {}",
                    failures.join("; ")
                )));
            }
        }
        let mut removed = Vec::new();
        if !unsets.is_empty() {
            let url = project.url(&["v10", "projects", project.id, "env"], &[])?;
            let listed = self.get(project, url).await?;
            let envs = listed
                .get("envs")
                .and_then(Value::as_array)
                .or_else(|| listed.as_array())
                .cloned()
                .unwrap_or_default();
            for env in &envs {
                let Some(key) = text(env, "key").filter(|key| unsets.contains(key)) else {
                    continue;
                };
                let applies = env
                    .get("target")
                    .map(|targets| match targets {
                        Value::Array(targets) => targets.iter().any(|t| t.as_str() == Some(target)),
                        Value::String(single) => single == target,
                        _ => false,
                    })
                    .unwrap_or(false);
                let Some(env_id) = text(env, "id").filter(|_| applies) else {
                    continue;
                };
                let url = project.url(&["v9", "projects", project.id, "env", env_id], &[])?;
                match self.send(project, Method::DELETE, url, None).await {
                    Ok(_) => removed.push(key.to_owned()),
                    // Gone already: what we wanted.
                    Err(ProviderError::Permanent(message)) if message.contains("HTTP 404") => {
                        removed.push(key.to_owned())
                    }
                    Err(other) => return Err(other),
                }
            }
        }
        let set: Vec<&String> = vars
            .iter()
            .filter(|(_, value)| value.is_some())
            .map(|(key, _)| key)
            .collect();
        Ok(Submitted {
            reference: format!("env:{natural_key}"),
            status: OperationStatus::Succeeded(json!({
                "set": set, "removed": removed, "target": target, "note": ENV_NOTE,
            })),
        })
    }

    async fn poll_traffic(
        &self,
        project: &Project<'_>,
        canary: &str,
        percent: &str,
    ) -> Result<OperationStatus, ProviderError> {
        let release = self.rolling_release(project).await?;
        Ok(OperationStatus::Succeeded(json!({
            "canaryDeploymentId": canary,
            "requested": percent.parse::<u8>().ok(),
            "rollingRelease": release,
        })))
    }
}

#[async_trait]
impl Provider for Vercel {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Vercel
    }

    async fn submit(
        &self,
        target: &TargetContext<'_>,
        request: &StepRequest,
        natural_key: &str,
    ) -> Result<Submitted, ProviderError> {
        let project = Project::of(target)?;
        match request {
            StepRequest::Deploy { version, artifact } => {
                self.create(target, &project, version, artifact, natural_key)
                    .await
            }
            StepRequest::Rollback {
                version,
                artifact,
                to_ref,
                ..
            } => {
                self.rollback(
                    target,
                    &project,
                    (version, artifact, to_ref.as_deref()),
                    natural_key,
                )
                .await
            }
            StepRequest::Traffic { version, percent } => {
                self.traffic(&project, version, *percent).await
            }
            StepRequest::Config { vars } => self.config(&project, vars, natural_key).await,
            StepRequest::Job { .. } => Err(ProviderError::Permanent(
                "Vercel has no one-off jobs".into(),
            )),
        }
    }

    async fn find(
        &self,
        target: &TargetContext<'_>,
        natural_key: &str,
    ) -> Result<Option<Submitted>, ProviderError> {
        let project = Project::of(target)?;
        let deployments = self.recent_deployments(&project).await?;
        let Some(id) = deployments
            .iter()
            .find(|d| d.pointer("/meta/shipgate_key").and_then(Value::as_str) == Some(natural_key))
            .and_then(id_of)
        else {
            // Rollbacks, traffic and config changes leave no trace to find; repeating them is
            // harmless (they converge on the same state).
            return Ok(None);
        };
        let status = self.poll_deployment(&project, id).await?;
        Ok(Some(Submitted {
            reference: id.to_owned(),
            status,
        }))
    }

    async fn poll(
        &self,
        target: &TargetContext<'_>,
        reference: &str,
    ) -> Result<OperationStatus, ProviderError> {
        let project = Project::of(target)?;
        match reference.split_once(':') {
            Some(("rollback", _)) => self.poll_rollback(&project, deployment_of(reference)).await,
            Some(("traffic", rest)) => {
                let (canary, percent) = rest.split_once(':').unwrap_or((rest, ""));
                self.poll_traffic(&project, canary, percent).await
            }
            Some(("promote", id)) => self.promotion(&project, id, false).await,
            Some(("env", _)) => Ok(OperationStatus::Succeeded(json!({ "note": ENV_NOTE }))),
            _ => self.poll_deployment(&project, reference).await,
        }
    }

    async fn live(&self, target: &TargetContext<'_>) -> Result<LiveState, ProviderError> {
        let project = Project::of(target)?;
        let body = self.project(&project).await?;
        let production = body
            .pointer("/targets/production")
            .cloned()
            .unwrap_or(Value::Null);
        let reference = text(&production, "id").map(str::to_owned);
        let mut version = production
            .pointer("/meta/shipgate_version")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let mut url = production.get("url").cloned().unwrap_or(Value::Null);
        if let (None, Some(id)) = (&version, &reference) {
            let deployment = self.deployment(&project, id).await?;
            version = deployment
                .pointer("/meta/shipgate_version")
                .and_then(Value::as_str)
                .map(str::to_owned);
            if url.is_null() {
                url = deployment.get("url").cloned().unwrap_or(Value::Null);
            }
        }
        Ok(LiveState {
            reference,
            version,
            detail: json!({
                "url": url,
                "lastAliasRequest": body.get("lastAliasRequest"),
            }),
        })
    }

    async fn health(
        &self,
        target: &TargetContext<'_>,
    ) -> Option<Result<HealthReading, ProviderError>> {
        let reading = async {
            let project = Project::of(target)?;
            let body = self.project(&project).await?;
            let Some(id) = body
                .pointer("/targets/production/id")
                .and_then(Value::as_str)
            else {
                return Ok(HealthReading {
                    healthy: false,
                    summary: "Vercel has no production deployment".into(),
                });
            };
            let state = state_of(&self.deployment(&project, id).await?);
            Ok(HealthReading {
                healthy: state == "READY",
                summary: format!("Vercel production deployment {id} is {state}"),
            })
        };
        Some(reading.await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_end_with_their_deployment() {
        assert_eq!(deployment_of("dpl_1"), "dpl_1");
        assert_eq!(deployment_of("rollback:dpl_2"), "dpl_2");
        assert_eq!(deployment_of("traffic:dpl_3:25"), "dpl_3");
    }

    #[test]
    fn errors_read_as_message_and_code() {
        let body = json!({"error": {"code": "forbidden", "message": "Not authorized"}});
        assert_eq!(
            error_message(&body).as_deref(),
            Some("Not authorized (forbidden)")
        );
    }

    #[test]
    fn git_artifacts_become_git_sources() {
        let sha = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(
            git_source_from_text(&format!("main@{sha}")),
            json!({"type": "github", "ref": "main", "sha": sha})
        );
        assert_eq!(
            git_source_from_text("release/1.2"),
            json!({"type": "github", "ref": "release/1.2"})
        );
        assert_eq!(git_source_from_text(sha)["sha"], json!(sha));
    }
}
