//! The Google Cloud Run Admin API v2 adapter.
//!
//! Every change is a `PATCH` of the service that answers a long-running Operation, followed with
//! `GET /v2/{operation}` until `done` (see `shared/providers.md`, section 4).
//!
//! - **Deploy** sets `template.containers[0].image` and names the new revision after the step's
//!   natural key (`{service}-sg-{hash}`), so [`Provider::find`] can look it up after a crash. The
//!   same PATCH pins `traffic` to what served before, so the new revision starts at 0% and the
//!   plan's `traffic` steps shift requests to it (a deploy with no `traffic` step after it
//!   therefore serves nothing).
//! - **Traffic** PATCHes `traffic` only (`updateMask=traffic`): the release's newest revision at
//!   the percent, the revision that served before at the rest. No revision is created.
//! - **Rollback** PATCHes `traffic` only, sending 100% to the revision that served the release
//!   returned to: the one in `to_ref`, else the one that served before the undone revision
//!   (`from_ref`) if it runs the same image. Without either, it redeploys the image at 100%. A
//!   native rollback leaves `template` as it was (Cloud Run keeps the undone template there).
//! - **Config** edits `template.containers[0].env`, which creates a revision; it takes the
//!   traffic share of the revision it was derived from.
//!
//! The provider's own health view (for targets without a health URL) is healthy when every
//! revision serving traffic has a succeeded `Ready` condition.
//!
//! References are `{operation name}|{revision}` so a rollback can find the revision of an
//! earlier deploy in the reference the engine stored; a reference found by [`Provider::find`] is
//! `|{revision}` and is polled on the revision itself.

use async_trait::async_trait;
use reqwest::Method;
use serde_json::{json, Map, Value};

use shipgate_domain::provider::ProviderKind;

use crate::http::{api_url, ApiClient, Call, RetryPolicy};
use crate::{
    HealthReading, LiveState, OperationStatus, Provider, ProviderError, StepRequest, Submitted,
    TargetContext,
};

const DEFAULT_API: &str = "https://run.googleapis.com";
const REVISION: &str = "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION";
/// Template label carrying the (sanitised) release version.
const VERSION_LABEL: &str = "shipgate-version";
/// Template label carrying the revision that served when the revision was deployed.
const PREVIOUS_LABEL: &str = "shipgate-previous";
/// Template annotation carrying the exact release version.
const VERSION_ANNOTATION: &str = "shipgate.dev/version";
/// Template annotation carrying the natural key of the step that made the revision.
const KEY_ANNOTATION: &str = "shipgate.dev/natural-key";

/// The Cloud Run provider.
pub struct CloudRun {
    api: ApiClient,
}

/// Google's error body: `{"error":{"code","message","status"}}` → `message (STATUS)`.
fn error_message(body: &Value) -> Option<String> {
    let error = body.get("error")?;
    let message = error.get("message").and_then(Value::as_str)?;
    Some(match error.get("status").and_then(Value::as_str) {
        Some(status) if !status.is_empty() => format!("{message} ({status})"),
        _ => message.to_owned(),
    })
}

/// Where the service lives.
struct Service {
    base: String,
    /// `projects/{p}/locations/{r}/services/{s}`.
    path: String,
    /// The service id.
    id: String,
}

impl Service {
    fn of(target: &TargetContext<'_>) -> Result<Self, ProviderError> {
        let settings = &target.target.settings;
        let get = |key: &str| {
            settings
                .get(key)
                .and_then(Value::as_str)
                .filter(|v| !v.trim().is_empty())
                .map(str::to_owned)
                .ok_or_else(|| {
                    ProviderError::Permanent(format!("the cloudrun target has no `{key}`"))
                })
        };
        let (project, region, id) = (get("project")?, get("region")?, get("service")?);
        Ok(Service {
            base: api_url(settings, DEFAULT_API),
            path: format!("projects/{project}/locations/{region}/services/{id}"),
            id,
        })
    }

    fn url(&self) -> String {
        format!("{}/v2/{}", self.base, self.path)
    }

    fn revision_url(&self, revision: &str) -> String {
        format!("{}/revisions/{}", self.url(), short(revision))
    }

    fn operation_url(&self, operation: &str) -> String {
        format!("{}/v2/{}", self.base, operation.trim_start_matches('/'))
    }
}

/// The short name of a revision given as a short name or a full resource path.
fn short(revision: &str) -> &str {
    revision.rsplit('/').next().unwrap_or(revision)
}

/// FNV-1a: a hash that is the same in every build and process.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The name of the revision a step with `natural_key` creates: `{service}-sg-{hash}`,
/// lowercase, at most 63 characters.
pub fn revision_name(service: &str, natural_key: &str) -> String {
    let hash = format!("{:016x}", fnv1a(natural_key));
    let suffix = format!("-sg-{}", &hash[..10]);
    let prefix: String = service
        .to_ascii_lowercase()
        .chars()
        .take(63 - suffix.len())
        .collect();
    format!("{prefix}{suffix}")
}

/// A label value: lowercase letters, digits, `_` and `-`, at most 63 characters.
pub fn label_value(text: &str) -> String {
    text.to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect()
}

/// An integer sent as a JSON number or (int64) as a string.
fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn text<'v>(value: &'v Value, key: &str) -> Option<&'v str> {
    value
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// `message (REASON)` of a condition.
fn condition_message(condition: &Value) -> String {
    let message = text(condition, "message").unwrap_or("the revision is not ready");
    let reason = ["reason", "revisionReason", "executionReason"]
        .iter()
        .filter_map(|key| text(condition, key))
        .find(|reason| !reason.ends_with("UNSPECIFIED"));
    match reason {
        Some(reason) if !message.contains(reason) => format!("{message} ({reason})"),
        _ => message.to_owned(),
    }
}

/// The `Ready` condition of a revision or service.
fn ready_condition(resource: &Value) -> Option<&Value> {
    resource
        .get("conditions")
        .and_then(Value::as_array)
        .and_then(|conditions| {
            conditions
                .iter()
                .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
        })
        .or_else(|| resource.get("terminalCondition"))
}

/// How a revision is doing, from its `Ready` condition.
fn revision_status(revision: &Value) -> OperationStatus {
    let condition = ready_condition(revision);
    let state = condition.and_then(|c| text(c, "state")).unwrap_or("");
    let reconciling = revision.get("reconciling").and_then(Value::as_bool) == Some(true);
    match (state, condition) {
        ("CONDITION_FAILED", Some(condition)) => {
            OperationStatus::Failed(condition_message(condition))
        }
        ("CONDITION_SUCCEEDED", _) if !reconciling => OperationStatus::Succeeded(json!({
            "revision": text(revision, "name").map(short),
        })),
        _ => OperationStatus::Running,
    }
}

/// How a service is doing once its operation is done: succeeded needs `reconciling == false`,
/// `terminalCondition.state == CONDITION_SUCCEEDED` and `observedGeneration == generation`.
fn service_status(service: &Value, revision: &str) -> OperationStatus {
    let condition = service.get("terminalCondition");
    let state = condition.and_then(|c| text(c, "state")).unwrap_or("");
    if let ("CONDITION_FAILED", Some(condition)) = (state, condition) {
        return OperationStatus::Failed(condition_message(condition));
    }
    let reconciling = service.get("reconciling").and_then(Value::as_bool) == Some(true);
    let generation = service.get("generation").and_then(int);
    let observed = service.get("observedGeneration").and_then(int);
    if reconciling || generation != observed || state != "CONDITION_SUCCEEDED" {
        return OperationStatus::Running;
    }
    OperationStatus::Succeeded(json!({
        "revision": (!revision.is_empty()).then_some(revision),
        "service": text(service, "name"),
        "latestReadyRevision": text(service, "latestReadyRevision").map(short),
        "traffic": split_json(&serving(service)),
    }))
}

/// What serves now, `(short revision name, percent)`, biggest share first: `trafficStatuses`,
/// with `LATEST` entries resolved to `latestReadyRevision`; else the latest ready revision.
fn serving(service: &Value) -> Vec<(String, i64)> {
    let latest_ready = text(service, "latestReadyRevision").map(short);
    let mut split: Vec<(String, i64)> = Vec::new();
    for status in service
        .get("trafficStatuses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let percent = status.get("percent").and_then(int).unwrap_or(0);
        if percent <= 0 {
            continue;
        }
        let revision = match text(status, "revision") {
            Some(revision) => short(revision),
            None => match latest_ready {
                Some(revision) => revision,
                None => continue,
            },
        };
        match split.iter_mut().find(|(r, _)| r == revision) {
            Some((_, share)) => *share += percent,
            None => split.push((revision.to_owned(), percent)),
        }
    }
    if split.is_empty() {
        if let Some(revision) = latest_ready {
            split.push((revision.to_owned(), 100));
        }
    }
    split.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    split
}

fn split_json(split: &[(String, i64)]) -> Value {
    Value::Array(
        split
            .iter()
            .map(|(revision, percent)| json!({ "revision": revision, "percent": percent }))
            .collect(),
    )
}

fn pin(revision: &str, percent: i64) -> Value {
    json!({ "type": REVISION, "revision": revision, "percent": percent })
}

/// The image of a Deploy or Rollback artifact: a string, or an object with `image`.
fn image_of(artifact: &Value) -> Result<String, ProviderError> {
    match artifact {
        Value::String(image) if !image.trim().is_empty() => Ok(image.trim().to_owned()),
        Value::Object(map) => map
            .get("image")
            .and_then(Value::as_str)
            .filter(|image| !image.trim().is_empty())
            .map(|image| image.trim().to_owned())
            .ok_or_else(|| {
                ProviderError::Permanent("the cloudrun artifact object has no `image`".into())
            }),
        _ => Err(ProviderError::Permanent(
            "a cloudrun artifact is a container image (ideally a digest)".into(),
        )),
    }
}

/// `(operation name, revision)` of a reference.
fn split_reference(reference: &str) -> (&str, &str) {
    match reference.split_once('|') {
        Some((operation, revision)) => (operation, short(revision)),
        None if reference.contains("/revisions/") => ("", short(reference)),
        None => (reference, ""),
    }
}

fn object<'v>(value: &'v mut Value, key: &str) -> &'v mut Map<String, Value> {
    if !value.get(key).is_some_and(Value::is_object) {
        value[key] = json!({});
    }
    value[key].as_object_mut().expect("just made an object")
}

/// The first container of a template, made if missing.
fn first_container(template: &mut Value) -> &mut Value {
    if !template.get("containers").is_some_and(Value::is_array) {
        template["containers"] = json!([]);
    }
    let containers = template["containers"]
        .as_array_mut()
        .expect("just made an array");
    if containers.is_empty() {
        containers.push(json!({}));
    }
    &mut containers[0]
}

/// Sets (`Some`) or removes (`None`) env vars of a container.
fn edit_env(container: &mut Value, vars: &std::collections::BTreeMap<String, Option<String>>) {
    let mut env: Vec<Value> = container
        .get("env")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (name, value) in vars {
        env.retain(|entry| entry.get("name").and_then(Value::as_str) != Some(name));
        if let Some(value) = value {
            env.push(json!({ "name": name, "value": value }));
        }
    }
    container["env"] = Value::Array(env);
}

fn is_not_found(error: &ProviderError) -> bool {
    matches!(error, ProviderError::Permanent(message) if message.contains("HTTP 404"))
}

impl CloudRun {
    /// A Cloud Run provider with the given retry policy.
    pub fn new(policy: RetryPolicy) -> Self {
        CloudRun {
            api: ApiClient::new("Cloud Run", policy, error_message),
        }
    }

    async fn get(&self, target: &TargetContext<'_>, url: String) -> Result<Value, ProviderError> {
        let call = Call::new(Method::GET, url).bearer(target.credential);
        Ok(self.api.send(&call).await?.body)
    }

    async fn get_service(
        &self,
        target: &TargetContext<'_>,
        service: &Service,
    ) -> Result<Value, ProviderError> {
        self.get(target, service.url()).await
    }

    /// A revision, or `None` if there is none by that name.
    async fn get_revision(
        &self,
        target: &TargetContext<'_>,
        service: &Service,
        revision: &str,
    ) -> Result<Option<Value>, ProviderError> {
        match self.get(target, service.revision_url(revision)).await {
            Ok(revision) => Ok(Some(revision)),
            Err(error) if is_not_found(&error) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Every revision of the service (following `nextPageToken`).
    async fn revisions(
        &self,
        target: &TargetContext<'_>,
        service: &Service,
    ) -> Result<Vec<Value>, ProviderError> {
        let mut all = Vec::new();
        let mut token = String::new();
        for _ in 0..100 {
            let mut url = format!("{}/revisions?pageSize=100", service.url());
            if !token.is_empty() {
                url.push_str("&pageToken=");
                url.extend(token.bytes().map(|b| {
                    if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                        char::from(b).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                }));
            }
            let page = self.get(target, url).await?;
            if let Some(revisions) = page.get("revisions").and_then(Value::as_array) {
                all.extend(revisions.iter().cloned());
            }
            match text(&page, "nextPageToken") {
                Some(next) => token = next.to_owned(),
                None => break,
            }
        }
        Ok(all)
    }

    /// PATCHes the service and reads the Operation answered into a submission.
    async fn patch(
        &self,
        target: &TargetContext<'_>,
        service: &Service,
        body: &Value,
        update_mask: Option<&str>,
        revision: &str,
    ) -> Result<Submitted, ProviderError> {
        let url = match update_mask {
            Some(mask) => format!("{}?updateMask={mask}", service.url()),
            None => service.url(),
        };
        let call = Call::new(Method::PATCH, url)
            .bearer(target.credential)
            .json(body);
        let operation = self.api.send(&call).await?.body;
        let Some(name) = text(&operation, "name") else {
            return Err(ProviderError::Permanent(
                "Cloud Run answered the update without an operation name".into(),
            ));
        };
        let reference = format!("{name}|{revision}");
        let status = self
            .operation_status(target, service, &operation, revision)
            .await?;
        Ok(Submitted { reference, status })
    }

    /// How an Operation is doing.
    async fn operation_status(
        &self,
        target: &TargetContext<'_>,
        service: &Service,
        operation: &Value,
        revision: &str,
    ) -> Result<OperationStatus, ProviderError> {
        if operation.get("done").and_then(Value::as_bool) != Some(true) {
            return Ok(OperationStatus::Running);
        }
        if let Some(error) = operation.get("error").filter(|e| !e.is_null()) {
            let mut message = text(error, "message")
                .unwrap_or("the Cloud Run operation failed")
                .to_owned();
            // The revision's Ready condition carries the reason (CONTAINER_MISSING, …).
            if !revision.is_empty() {
                if let Ok(Some(found)) = self.get_revision(target, service, revision).await {
                    if let OperationStatus::Failed(why) = revision_status(&found) {
                        if !message.contains(&why) {
                            message = format!("{message}: {why}");
                        }
                    }
                }
            }
            return Ok(OperationStatus::Failed(message));
        }
        let answered = operation
            .get("response")
            .filter(|r| r.get("generation").is_some());
        let status = match answered {
            Some(response) => service_status(response, revision),
            None => OperationStatus::Running,
        };
        if status != OperationStatus::Running {
            return Ok(status);
        }
        // The response may predate the service settling: ask the service itself.
        let current = self.get_service(target, service).await?;
        Ok(service_status(&current, revision))
    }

    /// Reads the service, edits it with `edit` and PATCHes it whole (with its `etag`), creating
    /// revision `revision`. A conflict on the etag (someone changed the service in between) is
    /// retried on a fresh read; a PATCH that already went through is adopted.
    async fn replace_service(
        &self,
        target: &TargetContext<'_>,
        service: &Service,
        revision: &str,
        edit: impl Fn(&mut Value),
    ) -> Result<Submitted, ProviderError> {
        let mut attempt = 0;
        loop {
            let mut body = self.get_service(target, service).await?;
            if text(&body["template"], "revision") == Some(revision) {
                // This step's PATCH already went through: follow the revision.
                return self.adopt(target, service, revision).await;
            }
            if !body["template"].is_object() {
                body["template"] = json!({});
            }
            edit(&mut body);
            match self.patch(target, service, &body, None, revision).await {
                Err(ProviderError::Permanent(message))
                    if attempt < 2
                        && message.contains("HTTP 409")
                        && message.contains("(ABORTED)") =>
                {
                    tracing::debug!(
                        revision,
                        "the service changed under the update; reading it again"
                    );
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Deploys an image as a revision named after `natural_key`; `pin_traffic` keeps the traffic
    /// where it was (canary), else the new revision gets it all.
    async fn deploy(
        &self,
        target: &TargetContext<'_>,
        service: &Service,
        image: &str,
        version: &str,
        natural_key: &str,
        pin_traffic: bool,
    ) -> Result<Submitted, ProviderError> {
        let revision = revision_name(&service.id, natural_key);
        self.replace_service(target, service, &revision, |body| {
            let split = serving(body);
            let template = &mut body["template"];
            first_container(template)["image"] = json!(image);
            template["revision"] = json!(revision);
            let labels = object(template, "labels");
            labels.insert(VERSION_LABEL.into(), json!(label_value(version)));
            match split.first() {
                Some((previous, _)) => labels.insert(PREVIOUS_LABEL.into(), json!(previous)),
                None => labels.remove(PREVIOUS_LABEL),
            };
            let annotations = object(template, "annotations");
            annotations.insert(VERSION_ANNOTATION.into(), json!(version));
            annotations.insert(KEY_ANNOTATION.into(), json!(natural_key));
            body["traffic"] = if pin_traffic && !split.is_empty() {
                Value::Array(split.iter().map(|(r, p)| pin(r, *p)).collect())
            } else {
                json!([pin(&revision, 100)])
            };
        })
        .await
    }

    /// A revision made by an earlier attempt of the same step.
    async fn adopt(
        &self,
        target: &TargetContext<'_>,
        service: &Service,
        revision: &str,
    ) -> Result<Submitted, ProviderError> {
        let status = match self.get_revision(target, service, revision).await? {
            Some(found) => revision_status(&found),
            None => OperationStatus::Running,
        };
        Ok(Submitted {
            reference: format!("|{revision}"),
            status,
        })
    }

    async fn traffic(
        &self,
        target: &TargetContext<'_>,
        service: &Service,
        version: &str,
        percent: u8,
    ) -> Result<Submitted, ProviderError> {
        let percent = i64::from(percent.min(100));
        let current = self.get_service(target, service).await?;
        let latest_created = text(&current, "latestCreatedRevision").map(short);
        let label = label_value(version);
        let candidate = self
            .revisions(target, service)
            .await?
            .into_iter()
            .filter(|r| {
                let exact = r
                    .pointer("/annotations/shipgate.dev~1version")
                    .and_then(Value::as_str);
                let labelled = r
                    .pointer(&format!("/labels/{VERSION_LABEL}"))
                    .and_then(Value::as_str);
                exact == Some(version) || (exact.is_none() && labelled == Some(label.as_str()))
            })
            .filter(|r| !matches!(revision_status(r), OperationStatus::Failed(_)))
            .max_by(|a, b| {
                let created = |r: &Value| {
                    text(r, "createTime")
                        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                        .map(|t| t.timestamp_nanos_opt().unwrap_or(i64::MAX))
                        .unwrap_or(i64::MIN)
                };
                let latest = |r: &Value| text(r, "name").map(short) == latest_created;
                created(a)
                    .cmp(&created(b))
                    .then_with(|| latest(a).cmp(&latest(b)))
            })
            .ok_or_else(|| {
                ProviderError::Permanent(format!(
                    "Cloud Run has no ready revision of version {version}; deploy it first"
                ))
            })?;
        let new = text(&candidate, "name").map(short).unwrap_or("").to_owned();
        let previous = serving(&current)
            .into_iter()
            .map(|(revision, _)| revision)
            .find(|revision| *revision != new)
            .or_else(|| {
                candidate
                    .pointer(&format!("/labels/{PREVIOUS_LABEL}"))
                    .and_then(Value::as_str)
                    .filter(|previous| *previous != new)
                    .map(str::to_owned)
            });
        let traffic = match (percent, previous) {
            (100, _) => vec![pin(&new, 100)],
            (0, Some(previous)) => vec![pin(&previous, 100)],
            (percent, Some(previous)) => vec![pin(&new, percent), pin(&previous, 100 - percent)],
            (_, None) => {
                return Err(ProviderError::Permanent(format!(
                    "no earlier revision of {} can take the other {}% of traffic",
                    service.id,
                    100 - percent
                )))
            }
        };
        self.patch(
            target,
            service,
            &json!({ "traffic": traffic }),
            Some("traffic"),
            &new,
        )
        .await
    }

    /// Sends all traffic back natively when a revision of the release returned to is known:
    /// the one `to_ref` names, else the one that served before the revision being undone
    /// (`from_ref`) if it runs the same image. Otherwise redeploys the image at 100%.
    async fn rollback(
        &self,
        target: &TargetContext<'_>,
        service: &Service,
        request: &StepRequest,
        natural_key: &str,
    ) -> Result<Submitted, ProviderError> {
        let StepRequest::Rollback {
            version,
            artifact,
            from_ref,
            to_ref,
        } = request
        else {
            return Err(ProviderError::Permanent("not a rollback".into()));
        };
        let revision_of = |reference: &Option<String>| {
            reference
                .as_deref()
                .map(|r| split_reference(r).1.to_owned())
                .filter(|r| !r.is_empty())
        };
        let usable = |found: &Value| !matches!(revision_status(found), OperationStatus::Failed(_));
        let image = image_of(artifact).ok();
        let mut back_to = None;
        if let Some(revision) = revision_of(to_ref) {
            match self.get_revision(target, service, &revision).await? {
                Some(found) if usable(&found) => back_to = Some(revision),
                _ => tracing::info!(revision, "the revision to roll back to is gone or failed"),
            }
        }
        if let (None, Some(undone), Some(image)) = (&back_to, revision_of(from_ref), &image) {
            let previous = self
                .get_revision(target, service, &undone)
                .await?
                .and_then(|found| {
                    found
                        .pointer(&format!("/labels/{PREVIOUS_LABEL}"))
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                });
            if let Some(previous) = previous {
                if let Some(found) = self.get_revision(target, service, &previous).await? {
                    let same_image = found.pointer("/containers/0/image").and_then(Value::as_str)
                        == Some(image.as_str());
                    if same_image && usable(&found) {
                        back_to = Some(previous);
                    }
                }
            }
        }
        if let Some(revision) = back_to {
            let traffic = json!({ "traffic": [pin(&revision, 100)] });
            return self
                .patch(target, service, &traffic, Some("traffic"), &revision)
                .await;
        }
        let image = image_of(artifact)?;
        self.deploy(target, service, &image, version, natural_key, false)
            .await
    }

    /// Healthy when every revision serving traffic is Ready.
    async fn serving_health(
        &self,
        target: &TargetContext<'_>,
    ) -> Result<HealthReading, ProviderError> {
        let service = Service::of(target)?;
        let current = self.get_service(target, &service).await?;
        let split = serving(&current);
        if split.is_empty() {
            return Ok(HealthReading {
                healthy: false,
                summary: format!("no revision of {} serves traffic", service.id),
            });
        }
        let mut parts = Vec::new();
        let mut healthy = true;
        for (revision, percent) in &split {
            let status = match self.get_revision(target, &service, revision).await? {
                Some(found) => revision_status(&found),
                None => OperationStatus::Failed("the revision is gone".into()),
            };
            match status {
                OperationStatus::Succeeded(_) => {
                    parts.push(format!("{revision} ({percent}%) is ready"))
                }
                OperationStatus::Running => {
                    healthy = false;
                    parts.push(format!("{revision} ({percent}%) is not ready yet"));
                }
                OperationStatus::Failed(why) => {
                    healthy = false;
                    parts.push(format!("{revision} ({percent}%) is not ready: {why}"));
                }
            }
        }
        Ok(HealthReading {
            healthy,
            summary: parts.join("; "),
        })
    }

    async fn config(
        &self,
        target: &TargetContext<'_>,
        service: &Service,
        vars: &std::collections::BTreeMap<String, Option<String>>,
        natural_key: &str,
    ) -> Result<Submitted, ProviderError> {
        let revision = revision_name(&service.id, natural_key);
        self.replace_service(target, service, &revision, |body| {
            let derived_from = text(body, "latestCreatedRevision")
                .map(short)
                .map(str::to_owned);
            let template = &mut body["template"];
            edit_env(first_container(template), vars);
            template["revision"] = json!(revision);
            object(template, "annotations").insert(KEY_ANNOTATION.into(), json!(natural_key));
            // The new revision takes the share of the revision it derives from; `LATEST`
            // entries follow it by themselves.
            if let Some(traffic) = body.get_mut("traffic").and_then(Value::as_array_mut) {
                for entry in traffic.iter_mut() {
                    let named = entry.get("revision").and_then(Value::as_str).map(short);
                    if named.is_some() && named == derived_from.as_deref() {
                        entry["revision"] = json!(revision);
                    }
                }
            }
        })
        .await
    }
}

#[async_trait]
impl Provider for CloudRun {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Cloudrun
    }

    async fn submit(
        &self,
        target: &TargetContext<'_>,
        request: &StepRequest,
        natural_key: &str,
    ) -> Result<Submitted, ProviderError> {
        let service = Service::of(target)?;
        match request {
            StepRequest::Deploy { version, artifact } => {
                let image = image_of(artifact)?;
                self.deploy(target, &service, &image, version, natural_key, true)
                    .await
            }
            StepRequest::Traffic { version, percent } => {
                self.traffic(target, &service, version, *percent).await
            }
            StepRequest::Rollback { .. } => {
                self.rollback(target, &service, request, natural_key).await
            }
            StepRequest::Config { vars } => self.config(target, &service, vars, natural_key).await,
            StepRequest::Job { .. } => Err(ProviderError::Permanent(
                "the cloudrun provider cannot run jobs".into(),
            )),
        }
    }

    async fn find(
        &self,
        target: &TargetContext<'_>,
        natural_key: &str,
    ) -> Result<Option<Submitted>, ProviderError> {
        // Deploys, redeploys and config changes name their revision after the key; traffic
        // changes make no revision, and repeating their declarative PATCH is safe.
        let service = Service::of(target)?;
        let revision = revision_name(&service.id, natural_key);
        Ok(self
            .get_revision(target, &service, &revision)
            .await?
            .map(|found| Submitted {
                reference: format!("|{revision}"),
                status: revision_status(&found),
            }))
    }

    async fn poll(
        &self,
        target: &TargetContext<'_>,
        reference: &str,
    ) -> Result<OperationStatus, ProviderError> {
        let service = Service::of(target)?;
        let (operation, revision) = split_reference(reference);
        if operation.is_empty() {
            if revision.is_empty() {
                return Err(ProviderError::Permanent(format!(
                    "`{reference}` is not a Cloud Run operation or revision"
                )));
            }
            return Ok(match self.get_revision(target, &service, revision).await? {
                Some(found) => match revision_status(&found) {
                    OperationStatus::Succeeded(_) => {
                        let current = self.get_service(target, &service).await?;
                        service_status(&current, revision)
                    }
                    other => other,
                },
                None => OperationStatus::Running,
            });
        }
        let answer = self.get(target, service.operation_url(operation)).await?;
        self.operation_status(target, &service, &answer, revision)
            .await
    }

    async fn health(
        &self,
        target: &TargetContext<'_>,
    ) -> Option<Result<HealthReading, ProviderError>> {
        Some(self.serving_health(target).await)
    }

    async fn live(&self, target: &TargetContext<'_>) -> Result<LiveState, ProviderError> {
        let service = Service::of(target)?;
        let current = self.get_service(target, &service).await?;
        let split = serving(&current);
        let reference = match split.as_slice() {
            [] => None,
            [(revision, 100)] => Some(revision.clone()),
            many => Some(
                many.iter()
                    .map(|(revision, percent)| format!("{revision}:{percent}"))
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        };
        // The version of the revision with the biggest share, from the annotation deploys set.
        let version = match split.first() {
            Some((revision, _)) => self
                .get_revision(target, &service, revision)
                .await?
                .and_then(|found| {
                    found
                        .pointer("/annotations/shipgate.dev~1version")
                        .or_else(|| found.pointer("/containers/0/image"))
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                }),
            None => None,
        };
        Ok(LiveState {
            reference,
            version,
            detail: json!({
                "traffic": split_json(&split),
                "latestReadyRevision": text(&current, "latestReadyRevision").map(short),
                "latestCreatedRevision": text(&current, "latestCreatedRevision").map(short),
                "image": current.pointer("/template/containers/0/image"),
            }),
        })
    }
}
