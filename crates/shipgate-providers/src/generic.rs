//! The generic `http` provider, for anything with a deploy endpoint: Shipgate POSTs the step to
//! `deploy_url` (or `rollback_url`, `job_url`) with an `Idempotency-Key` header, and follows it
//! on `status_url` until it reports a verdict.
//!
//! URLs are templates: `{app}`, `{environment}`, `{component}`, `{version}`, `{id}` (the
//! operation id the deploy answer gave, or the idempotency key) are replaced. The deploy answer
//! may carry `{"id": "...", "status": "..."}`; a status answer carries `{"status": "..."}` with
//! one of `pending`/`running`/`in_progress`, `succeeded`/`success`/`ready`/`live`/`done`, or
//! `failed`/`error`/`canceled` (and an optional `message`). Without a `status_url`, a 2xx answer
//! to the POST means done.

use async_trait::async_trait;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use shipgate_domain::provider::ProviderKind;

use crate::http::{ApiClient, Call, RetryPolicy};
use crate::{OperationStatus, Provider, ProviderError, StepRequest, Submitted, TargetContext};

/// The generic HTTP provider.
pub struct Generic {
    api: ApiClient,
}

fn error_message(body: &Value) -> Option<String> {
    body.get("message")
        .or_else(|| body.get("error").and_then(|e| e.get("message").or(Some(e))))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

impl Generic {
    /// A generic provider with the given retry policy.
    pub fn new(policy: RetryPolicy) -> Self {
        Generic {
            api: ApiClient::new("the deploy endpoint", policy, error_message),
        }
    }

    fn url(target: &TargetContext<'_>, key: &str, version: &str, id: &str) -> Option<String> {
        let template = target.target.settings.get(key)?.as_str()?;
        Some(
            template
                .replace("{app}", target.app)
                .replace("{environment}", target.environment)
                .replace("{component}", target.component)
                .replace("{version}", version)
                .replace("{id}", id),
        )
    }

    fn call<'a>(&self, target: &'a TargetContext<'_>, method: Method, url: String) -> Call<'a> {
        let mut call = Call::new(method, url).bearer(target.credential);
        if let Some(headers) = target
            .target
            .settings
            .get("headers")
            .and_then(Value::as_object)
        {
            for (name, value) in headers {
                if let Some(value) = value.as_str() {
                    call = call.header(name, value);
                }
            }
        }
        call
    }
}

/// Reads a status word into an operation status.
pub fn status_from(body: &Value) -> OperationStatus {
    let word = body
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_ascii_lowercase();
    match word.as_str() {
        "succeeded" | "success" | "ready" | "live" | "done" | "completed" => {
            OperationStatus::Succeeded(body.clone())
        }
        "failed" | "error" | "canceled" | "cancelled" => OperationStatus::Failed(
            body.get("message")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| format!("the deploy endpoint reported {word}")),
        ),
        _ => OperationStatus::Running,
    }
}

#[async_trait]
impl Provider for Generic {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Http
    }

    async fn submit(
        &self,
        target: &TargetContext<'_>,
        request: &StepRequest,
        natural_key: &str,
    ) -> Result<Submitted, ProviderError> {
        let (url_key, version) = match request {
            StepRequest::Deploy { version, .. } => ("deploy_url", version),
            StepRequest::Rollback { version, .. } => {
                if target.target.settings.contains_key("rollback_url") {
                    ("rollback_url", version)
                } else {
                    // No rollback endpoint: redeploy the previous artifact.
                    ("deploy_url", version)
                }
            }
            StepRequest::Job { version, .. } => ("job_url", version),
            StepRequest::Traffic { .. } | StepRequest::Config { .. } => {
                return Err(ProviderError::Permanent(
                    "the http provider cannot shift traffic or set config vars".into(),
                ))
            }
        };
        let url = Self::url(target, url_key, version, natural_key)
            .ok_or_else(|| ProviderError::Permanent(format!("the target has no `{url_key}`")))?;
        let body = json!({
            "app": target.app, "environment": target.environment, "component": target.component,
            "key": natural_key, "request": request,
        });
        let call = self
            .call(target, Method::POST, url)
            .header("Idempotency-Key", natural_key)
            .json(&body);
        let answer = self.api.send(&call).await?;
        let reference = answer
            .body
            .get("id")
            .map(|id| match id {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            })
            .unwrap_or_else(|| natural_key.to_owned());
        let status = if target.target.settings.contains_key("status_url") {
            status_from(&answer.body)
        } else {
            OperationStatus::Succeeded(answer.body)
        };
        Ok(Submitted { reference, status })
    }

    async fn find(
        &self,
        target: &TargetContext<'_>,
        natural_key: &str,
    ) -> Result<Option<Submitted>, ProviderError> {
        // The status endpoint is asked about the idempotency key; without one there is no way
        // to ask, and resubmitting with the same Idempotency-Key is the endpoint's to dedupe.
        let Some(url) = Self::url(target, "status_url", "", natural_key) else {
            return Ok(None);
        };
        match self.api.send(&self.call(target, Method::GET, url)).await {
            Ok(answer) => Ok(Some(Submitted {
                reference: natural_key.to_owned(),
                status: status_from(&answer.body),
            })),
            Err(ProviderError::Permanent(message)) if message.contains("HTTP 404") => Ok(None),
            Err(other) => Err(other),
        }
    }

    async fn poll(
        &self,
        target: &TargetContext<'_>,
        reference: &str,
    ) -> Result<OperationStatus, ProviderError> {
        let Some(url) = Self::url(target, "status_url", "", reference) else {
            return Ok(OperationStatus::Succeeded(Value::Null));
        };
        let answer = self.api.send(&self.call(target, Method::GET, url)).await?;
        if answer.status == StatusCode::NO_CONTENT {
            return Ok(OperationStatus::Running);
        }
        Ok(status_from(&answer.body))
    }
}
