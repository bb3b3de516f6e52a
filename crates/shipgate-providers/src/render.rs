//! The Render adapter (`https://api.render.com/v1`, bearer API key).
//!
//! Target settings: `service_id` (`srv-…`) and an optional `api_url`.
//!
//! - **Deploy** triggers `POST /services/{id}/deploys` with `{"commitId": …}` for a git service
//!   or `{"imageUrl": …}` for an image service. A string artifact is read as an image reference
//!   when it contains `/` or `:` (and is not a 40-hex commit sha), else as a commit id; an object
//!   artifact may name either explicitly (`commitId` / `commit`, `imageUrl` / `image`). The
//!   reference is the deploy id, followed on `GET /services/{id}/deploys/{deployId}`. Render may
//!   answer 202 with an empty body; the deploy is then looked up among the newest ones.
//! - **Rollback** uses Render's own `POST /services/{id}/rollback {"deployId": to_ref}`, which
//!   creates a new deploy with `trigger: "rollback"`. Without a `to_ref` (or when Render refuses
//!   to roll back to it as unknown or not eligible) the release's artifact is redeployed. Render
//!   leaves autodeploy on after a rollback, so the result of every rollback carries a `warning`:
//!   the next push to the service's branch will deploy over it.
//! - **Config** upserts each set variable with `PUT /services/{id}/env-vars/{key}` and removes
//!   each unset one with `DELETE`; Render applies environment changes on the next deploy, which
//!   the result notes. Values never appear in results or logs.
//! - **Live** reads the recent deploys and reports the one whose status is `live`.
//! - Render has no traffic-splitting API and no one-off jobs API; both are refused.
//!
//! **Reconciliation limitation.** Render has no idempotency keys and no free-form field on a
//! deploy to carry Shipgate's natural key, and [`Provider::find`] is given only that key (not
//! the commit or image), so a deploy cannot be matched to a step on Render's side. This adapter
//! remembers, in memory, the deploy each natural key started (the last few hundred), so a step
//! whose submission was not recorded is adopted by the same process; after a restart `find`
//! returns `None` and the step is submitted again, which at worst deploys the same commit or
//! image a second time (the first deploy is then superseded, never left half-applied).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;
use reqwest::Method;
use serde_json::{json, Value};

use shipgate_domain::provider::ProviderKind;

use crate::http::{api_url, ApiClient, Call, RetryPolicy};
use crate::{
    LiveState, OperationStatus, Provider, ProviderError, StepRequest, Submitted, TargetContext,
};

/// Render's public API.
pub const DEFAULT_API_URL: &str = "https://api.render.com/v1";

/// Shown with every rollback's result: what Render's rollback leaves behind.
pub const AUTODEPLOY_WARNING: &str = "Render leaves autodeploy on after a rollback: the next push \
     to the service's branch will deploy over this rollback. Turn autodeploy off for the service \
     in Render to keep it.";

/// Shown with every config change's result.
pub const ENV_NOTE: &str = "Render applies environment variable changes on the service's next \
     deploy; running instances keep the old values until then.";

/// Prefix of the reference of a config change (which finishes at once).
const CONFIG_REF: &str = "env-vars:";

/// How many submissions and rollbacks are remembered for `find` and for rollback warnings.
const MEMORY: usize = 512;

/// The Render provider.
pub struct Render {
    api: ApiClient,
    memory: Mutex<Memory>,
}

#[derive(Default)]
struct Memory {
    /// (natural key, service id, deploy id) of the deploys this adapter started, newest last.
    started: VecDeque<(String, String, String)>,
    /// (deploy id, note) of the deploys this adapter started as rollbacks.
    rollbacks: VecDeque<(String, Option<String>)>,
}

fn push_bounded<T>(queue: &mut VecDeque<T>, item: T) {
    if queue.len() >= MEMORY {
        queue.pop_front();
    }
    queue.push_back(item);
}

/// Render's error body is `{"id", "message", "code"?}`.
fn error_message(body: &Value) -> Option<String> {
    let message = body.get("message").and_then(Value::as_str)?.trim();
    if message.is_empty() {
        return None;
    }
    match body.get("code").and_then(Value::as_str) {
        Some(code) if !code.is_empty() && !message.contains(code) => {
            Some(format!("{message} ({code})"))
        }
        _ => Some(message.to_owned()),
    }
}

/// Percent-encodes one path segment.
fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// One Render service, as a target names it.
struct Service<'a> {
    id: String,
    /// `…/services/{id}`.
    url: String,
    key: &'a str,
}

impl<'a> Service<'a> {
    fn of(target: &TargetContext<'a>) -> Result<Self, ProviderError> {
        let settings = &target.target.settings;
        let id = settings
            .get("service_id")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|id| !id.is_empty())
            .ok_or_else(|| {
                ProviderError::Permanent("the render target has no `service_id`".into())
            })?;
        let key = target.credential.ok_or_else(|| {
            ProviderError::Permanent(
                "the render target has no credential: Render needs an API key".into(),
            )
        })?;
        let base = api_url(settings, DEFAULT_API_URL);
        Ok(Service {
            id: id.to_owned(),
            url: format!("{base}/services/{}", segment(id)),
            key,
        })
    }

    fn call(&self, method: Method, path: &str) -> Call<'a> {
        Call::new(method, format!("{}{path}", self.url)).bearer(Some(self.key))
    }
}

/// What a deploy deploys.
#[derive(Clone, Debug, PartialEq)]
enum Source {
    Commit(String),
    Image(String),
}

impl Source {
    fn of(artifact: &Value) -> Result<Self, ProviderError> {
        match artifact {
            Value::String(text) => Self::classify(text),
            Value::Object(map) => {
                let pick = |keys: &[&str]| {
                    keys.iter().find_map(|key| {
                        map.get(*key)
                            .and_then(Value::as_str)
                            .map(str::trim)
                            .filter(|text| !text.is_empty())
                    })
                };
                match (pick(&["commitId", "commit"]), pick(&["imageUrl", "image"])) {
                    (Some(commit), None) => Ok(Source::Commit(commit.to_owned())),
                    (None, Some(image)) => Ok(Source::Image(image.to_owned())),
                    (Some(_), Some(_)) => Err(ProviderError::Permanent(
                        "the artifact names both a commit and an image; Render deploys one or \
                         the other"
                            .into(),
                    )),
                    (None, None) => Err(ProviderError::Permanent(
                        "the artifact has no `commitId` or `imageUrl` for Render".into(),
                    )),
                }
            }
            _ => Err(ProviderError::Permanent(
                "the release has no artifact for this component: Render needs a commit id or \
                 an image reference"
                    .into(),
            )),
        }
    }

    fn classify(text: &str) -> Result<Self, ProviderError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(ProviderError::Permanent(
                "the artifact is empty: Render needs a commit id or an image reference".into(),
            ));
        }
        let sha = text.len() == 40 && text.bytes().all(|b| b.is_ascii_hexdigit());
        if !sha && (text.contains('/') || text.contains(':')) {
            Ok(Source::Image(text.to_owned()))
        } else {
            Ok(Source::Commit(text.to_owned()))
        }
    }

    fn body(&self) -> Value {
        match self {
            Source::Commit(commit) => json!({ "commitId": commit }),
            Source::Image(image) => json!({ "imageUrl": image }),
        }
    }

    /// Whether a deploy deploys this (a short sha matches its full sha).
    fn matches(&self, deploy: &Value) -> bool {
        match self {
            Source::Commit(commit) => commit_of(deploy)
                .is_some_and(|id| id.starts_with(commit.as_str()) || commit.starts_with(id)),
            Source::Image(image) => image_of(deploy)
                .is_some_and(|reference| reference == image || reference.ends_with(image.as_str())),
        }
    }
}

fn text<'v>(value: &'v Value, pointer: &str) -> Option<&'v str> {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .filter(|text| !text.is_empty())
}

fn commit_of(deploy: &Value) -> Option<&str> {
    text(deploy, "/commit/id")
}

fn image_of(deploy: &Value) -> Option<&str> {
    text(deploy, "/image/ref")
}

fn id_of(deploy: &Value) -> Option<&str> {
    text(deploy, "/id")
}

/// The commit id or image reference a deploy deploys.
fn version_of(deploy: &Value) -> Option<String> {
    commit_of(deploy)
        .or_else(|| image_of(deploy))
        .map(str::to_owned)
}

/// What a result shows of a deploy.
fn summary(deploy: &Value) -> Value {
    json!({
        "deploy_id": id_of(deploy),
        "status": text(deploy, "/status"),
        "trigger": text(deploy, "/trigger"),
        "commit": commit_of(deploy),
        "image": image_of(deploy),
        "created_at": text(deploy, "/createdAt"),
        "finished_at": text(deploy, "/finishedAt"),
    })
}

/// Reads a deploy list, `[{"deploy": {…}, "cursor": …}]` (bare deploys accepted too).
fn deploys_of(body: Value) -> Result<Vec<Value>, ProviderError> {
    let Value::Array(items) = body else {
        return Err(ProviderError::Transient(
            "Render answered the deploy list with something other than a list".into(),
        ));
    };
    Ok(items
        .into_iter()
        .map(|mut item| match item.get_mut("deploy") {
            Some(deploy) => deploy.take(),
            None => item,
        })
        .collect())
}

fn http_status_is(error: &ProviderError, codes: &[u16]) -> bool {
    match error {
        ProviderError::Permanent(message) => codes
            .iter()
            .any(|code| message.contains(&format!("(HTTP {code})"))),
        _ => false,
    }
}

impl Render {
    /// A Render provider with the given retry policy.
    pub fn new(policy: RetryPolicy) -> Self {
        Render {
            api: ApiClient::new("Render", policy, error_message),
            memory: Mutex::new(Memory::default()),
        }
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        // The memory is only a cache: a panic elsewhere never makes it unusable.
        self.memory
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn remember(&self, natural_key: &str, service: &Service<'_>, deploy_id: &str) {
        push_bounded(
            &mut self.memory().started,
            (
                natural_key.to_owned(),
                service.id.clone(),
                deploy_id.to_owned(),
            ),
        );
    }

    fn remember_rollback(&self, deploy_id: &str, note: Option<String>) {
        push_bounded(&mut self.memory().rollbacks, (deploy_id.to_owned(), note));
    }

    /// How a deploy is doing, as an operation status.
    fn status_of(&self, deploy: &Value) -> OperationStatus {
        let id = id_of(deploy).unwrap_or("?");
        let of = match (commit_of(deploy), image_of(deploy)) {
            (Some(commit), _) => format!(" of commit {commit}"),
            (None, Some(image)) => format!(" of image {image}"),
            (None, None) => String::new(),
        };
        let status = text(deploy, "/status").unwrap_or("");
        match status {
            "live" => OperationStatus::Succeeded(self.result(deploy, None)),
            "deactivated" => OperationStatus::Succeeded(self.result(
                deploy,
                Some("the deploy went live and has since been superseded by a newer deploy"),
            )),
            "build_failed" => {
                OperationStatus::Failed(format!("the build failed on Render (deploy {id}{of})"))
            }
            "update_failed" => OperationStatus::Failed(format!(
                "the new version failed to start on Render: the update failed (deploy {id}{of})"
            )),
            "pre_deploy_failed" => OperationStatus::Failed(format!(
                "the pre-deploy command failed on Render (deploy {id}{of})"
            )),
            "canceled" | "cancelled" => OperationStatus::Failed(format!(
                "the deploy was canceled on Render (deploy {id}{of})"
            )),
            _ => OperationStatus::Running,
        }
    }

    /// The succeeded value of a deploy: its summary, with a note and, for rollbacks, the
    /// autodeploy warning.
    fn result(&self, deploy: &Value, note: Option<&str>) -> Value {
        let mut result = summary(deploy);
        let mut notes: Vec<String> = note.map(str::to_owned).into_iter().collect();
        let id = id_of(deploy).unwrap_or("");
        let remembered = self
            .memory()
            .rollbacks
            .iter()
            .find(|(deploy_id, _)| deploy_id == id)
            .map(|(_, note)| note.clone());
        if let Some(Some(note)) = &remembered {
            notes.push(note.clone());
        }
        if remembered.is_some() || text(deploy, "/trigger") == Some("rollback") {
            result["warning"] = json!(AUTODEPLOY_WARNING);
        }
        if !notes.is_empty() {
            result["note"] = json!(notes.join("; "));
        }
        result
    }

    async fn list(&self, service: &Service<'_>, query: &str) -> Result<Vec<Value>, ProviderError> {
        let answer = self
            .api
            .send(&service.call(Method::GET, &format!("/deploys?{query}")))
            .await?;
        deploys_of(answer.body)
    }

    async fn get_deploy(
        &self,
        service: &Service<'_>,
        deploy_id: &str,
    ) -> Result<Value, ProviderError> {
        let path = format!("/deploys/{}", segment(deploy_id));
        Ok(self.api.send(&service.call(Method::GET, &path)).await?.body)
    }

    /// Triggers a deploy; returns Render's deploy.
    async fn create_deploy(
        &self,
        service: &Service<'_>,
        source: &Source,
    ) -> Result<Value, ProviderError> {
        let body = source.body();
        let answer = self
            .api
            .send(&service.call(Method::POST, "/deploys").json(&body).once())
            .await?;
        if id_of(&answer.body).is_some() {
            return Ok(answer.body);
        }
        // 202 with an empty body: Render took the deploy without describing it. The newest
        // API-triggered deploy of the same commit or image is it (a concurrent deploy of the
        // same thing from elsewhere is indistinguishable, and equivalent).
        let recent = self.list(service, "limit=5").await?;
        let found = recent
            .iter()
            .find(|deploy| {
                source.matches(deploy) && text(deploy, "/trigger").is_none_or(|t| t == "api")
            })
            .or_else(|| recent.iter().find(|deploy| source.matches(deploy)))
            .cloned();
        found.ok_or_else(|| {
            ProviderError::Transient(
                "Render accepted the deploy but does not list it yet".to_owned(),
            )
        })
    }

    async fn deploy(
        &self,
        service: &Service<'_>,
        artifact: &Value,
        natural_key: &str,
    ) -> Result<(Value, Submitted), ProviderError> {
        let source = Source::of(artifact)?;
        let deploy = self.create_deploy(service, &source).await?;
        let reference = id_of(&deploy)
            .ok_or_else(|| ProviderError::Transient("Render's deploy has no id".into()))?
            .to_owned();
        self.remember(natural_key, service, &reference);
        tracing::info!(service = %service.id, deploy = %reference, "render deploy triggered");
        let status = self.status_of(&deploy);
        Ok((deploy, Submitted { reference, status }))
    }

    async fn rollback(
        &self,
        service: &Service<'_>,
        artifact: &Value,
        to_ref: Option<&str>,
        natural_key: &str,
    ) -> Result<Submitted, ProviderError> {
        let redeploy_note = match to_ref {
            Some(to_ref) => {
                let body = json!({ "deployId": to_ref });
                let call = service.call(Method::POST, "/rollback").json(&body).once();
                match self.api.send(&call).await {
                    Ok(answer) => {
                        let reference = id_of(&answer.body)
                            .ok_or_else(|| {
                                ProviderError::Transient(
                                    "Render's rollback has no deploy id".into(),
                                )
                            })?
                            .to_owned();
                        self.remember(natural_key, service, &reference);
                        self.remember_rollback(&reference, None);
                        tracing::info!(service = %service.id, deploy = %reference, to = %to_ref, "render rollback triggered");
                        let status = self.status_of(&answer.body);
                        return Ok(Submitted { reference, status });
                    }
                    // Render does not know that deploy or will not roll back to it: redeploy
                    // the release's artifact, when there is one.
                    Err(error)
                        if http_status_is(&error, &[400, 404, 409, 410])
                            && Source::of(artifact).is_ok() =>
                    {
                        format!(
                            "Render refused to roll back to {to_ref} ({error}); the release's \
                             artifact was redeployed instead"
                        )
                    }
                    Err(error) => return Err(error),
                }
            }
            None => "no earlier Render deploy of this release is known here, so its artifact \
                     was redeployed"
                .to_owned(),
        };
        let (deploy, mut submitted) = self.deploy(service, artifact, natural_key).await?;
        self.remember_rollback(&submitted.reference, Some(redeploy_note));
        // The status was read before the deploy was known as a rollback.
        submitted.status = self.status_of(&deploy);
        Ok(submitted)
    }

    async fn config(
        &self,
        service: &Service<'_>,
        vars: &BTreeMap<String, Option<String>>,
        natural_key: &str,
    ) -> Result<Submitted, ProviderError> {
        let mut set = Vec::new();
        let mut unset = Vec::new();
        for (key, value) in vars {
            if key.trim().is_empty() {
                return Err(ProviderError::Permanent(
                    "an environment variable name is empty".into(),
                ));
            }
            let path = format!("/env-vars/{}", segment(key));
            match value {
                Some(value) => {
                    let body = json!({ "value": value });
                    self.api
                        .send(&service.call(Method::PUT, &path).json(&body))
                        .await?;
                    set.push(key.clone());
                }
                None => {
                    match self.api.send(&service.call(Method::DELETE, &path)).await {
                        Ok(_) => {}
                        // Already unset.
                        Err(error) if http_status_is(&error, &[404]) => {}
                        Err(error) => return Err(error),
                    }
                    unset.push(key.clone());
                }
            }
        }
        tracing::info!(service = %service.id, set = set.len(), unset = unset.len(), "render env vars changed");
        Ok(Submitted {
            reference: format!("{CONFIG_REF}{natural_key}"),
            status: OperationStatus::Succeeded(json!({
                "set": set,
                "unset": unset,
                "note": ENV_NOTE,
            })),
        })
    }
}

#[async_trait]
impl Provider for Render {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Render
    }

    async fn submit(
        &self,
        target: &TargetContext<'_>,
        request: &StepRequest,
        natural_key: &str,
    ) -> Result<Submitted, ProviderError> {
        let service = Service::of(target)?;
        match request {
            StepRequest::Deploy { artifact, .. } => self
                .deploy(&service, artifact, natural_key)
                .await
                .map(|(_, submitted)| submitted),
            StepRequest::Rollback {
                artifact, to_ref, ..
            } => {
                let to_ref = to_ref.as_deref().map(str::trim).filter(|r| !r.is_empty());
                self.rollback(&service, artifact, to_ref, natural_key).await
            }
            StepRequest::Config { vars } => self.config(&service, vars, natural_key).await,
            StepRequest::Traffic { .. } => Err(ProviderError::Permanent(
                "Render has no API to send a share of traffic to a version".into(),
            )),
            StepRequest::Job { .. } => Err(ProviderError::Permanent(
                "the render provider cannot run one-off jobs".into(),
            )),
        }
    }

    async fn find(
        &self,
        target: &TargetContext<'_>,
        natural_key: &str,
    ) -> Result<Option<Submitted>, ProviderError> {
        // See the module documentation: only deploys this process started can be found.
        let service = Service::of(target)?;
        let remembered = self
            .memory()
            .started
            .iter()
            .rev()
            .find(|(key, service_id, _)| key == natural_key && *service_id == service.id)
            .map(|(_, _, deploy_id)| deploy_id.clone());
        let Some(deploy_id) = remembered else {
            return Ok(None);
        };
        match self.get_deploy(&service, &deploy_id).await {
            Ok(deploy) => Ok(Some(Submitted {
                status: self.status_of(&deploy),
                reference: deploy_id,
            })),
            Err(error) if http_status_is(&error, &[404]) => Ok(None),
            Err(error) => Err(error),
        }
    }

    async fn poll(
        &self,
        target: &TargetContext<'_>,
        reference: &str,
    ) -> Result<OperationStatus, ProviderError> {
        if reference.starts_with(CONFIG_REF) {
            return Ok(OperationStatus::Succeeded(json!({ "note": ENV_NOTE })));
        }
        let service = Service::of(target)?;
        let deploy = self.get_deploy(&service, reference).await?;
        Ok(self.status_of(&deploy))
    }

    async fn live(&self, target: &TargetContext<'_>) -> Result<LiveState, ProviderError> {
        let service = Service::of(target)?;
        let recent = self.list(&service, "limit=20").await?;
        let is_live = |deploy: &&Value| text(deploy, "/status") == Some("live");
        let mut live = recent.iter().find(is_live).cloned();
        if live.is_none() {
            // Many deploys since the live one: ask for it by status.
            live = self
                .list(&service, "status=live&limit=1")
                .await?
                .iter()
                .find(is_live)
                .cloned();
        }
        let newest = recent.first().map(summary);
        let Some(live) = live else {
            return Ok(LiveState {
                reference: None,
                version: None,
                detail: json!({
                    "note": "Render reports no live deploy for the service",
                    "newest": newest,
                }),
            });
        };
        let mut detail = summary(&live);
        if text(&live, "/trigger") == Some("rollback") {
            detail["warning"] = json!(AUTODEPLOY_WARNING);
        }
        if let Some(newest) = newest.filter(|newest| newest["deploy_id"] != detail["deploy_id"]) {
            detail["newest"] = newest;
        }
        Ok(LiveState {
            reference: id_of(&live).map(str::to_owned),
            version: version_of(&live),
            detail,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifacts_read_as_commits_or_images() {
        let commit = |s: &str| Source::Commit(s.to_owned());
        let image = |s: &str| Source::Image(s.to_owned());
        assert_eq!(Source::of(&json!("a1b2c3d")).unwrap(), commit("a1b2c3d"));
        let sha = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(Source::of(&json!(sha)).unwrap(), commit(sha));
        assert_eq!(
            Source::of(&json!("docker.io/org/app:1.2")).unwrap(),
            image("docker.io/org/app:1.2")
        );
        assert_eq!(Source::of(&json!("app:1.2")).unwrap(), image("app:1.2"));
        assert_eq!(
            Source::of(&json!({"imageUrl": "org/app"})).unwrap(),
            image("org/app")
        );
        assert_eq!(
            Source::of(&json!({"commitId": "abc"})).unwrap(),
            commit("abc")
        );
        assert!(Source::of(&Value::Null).is_err());
        assert!(Source::of(&json!({"commitId": "a", "imageUrl": "b/c"})).is_err());
    }

    #[test]
    fn error_bodies_give_their_message() {
        assert_eq!(
            error_message(&json!({"id": "x", "message": "service not found"})),
            Some("service not found".into())
        );
        assert_eq!(
            error_message(&json!({"id": "x", "message": "nope", "code": "bad_request"})),
            Some("nope (bad_request)".into())
        );
        assert_eq!(error_message(&json!({"id": "x"})), None);
        assert_eq!(segment("srv-1/x y"), "srv-1%2Fx%20y");
    }
}
