//! The Heroku adapter, on the Platform API v3 (`settings.app`, optional `settings.api_url`; the
//! credential is an API token sent as a bearer token).
//!
//! - **Deploy.** The artifact is a source tarball URL (a build: `POST /apps/{app}/builds`), an
//!   object `{"source_blob": {…}}` (a build with that blob) or `{"slug": "<id>"}` (a release of
//!   that slug: `POST /apps/{app}/releases`). A build is followed to its release, and the release
//!   through its release phase: a release stays `pending` while the release phase runs, and a
//!   `failed` release means the release phase failed.
//! - **Rollback.** Heroku's own rollback, `POST /apps/{app}/releases {"release": id}`, when
//!   `to_ref` names the release (or the build) returned to: it makes a new release with the slug
//!   and config vars of that one. Without a usable `to_ref` the previous artifact is redeployed.
//!   Either way add-ons and database state are not rolled back, and the result says so in `note`.
//! - **Config.** `PATCH /apps/{app}/config-vars` (`null` unsets). The change makes a release;
//!   when the newest release is that change and still runs its release phase, it is followed.
//! - **Job.** A one-off dyno (`POST /apps/{app}/dynos`, `type: run`), done when it is gone,
//!   failed when it is `crashed`. The Platform API does not report an exit status.
//! - **Traffic** splitting does not exist on Heroku and is refused.
//!
//! Heroku has no idempotency keys. Builds carry `"shipgate <key>: …"` in
//! `source_blob.version_description` and slug releases in `description`, so [`Provider::find`]
//! finds them by listing the newest builds and releases. A native rollback's description is
//! Heroku's own, so instead submitting a rollback adopts a newest release that already copies the
//! target's slug. Config changes are safe to repeat; one-off dynos cannot be found again.
//!
//! References say what they point at: `build:<id>`, `release:<id>`, `rollback:release:<id>`
//! (a native rollback), `redeploy:build:<id>` / `redeploy:release:<id>` (a rollback by
//! redeploying), `config:release:<id>`, `config:applied` and `dyno:<id>`. A bare id is taken for
//! a release.

use std::collections::BTreeMap;

use async_trait::async_trait;
use reqwest::Method;
use serde_json::{json, Map, Value};

use shipgate_domain::provider::ProviderKind;

use crate::http::{api_url, ApiClient, Call, RetryPolicy};
use crate::{
    HealthReading, LiveState, OperationStatus, Provider, ProviderError, StepRequest, Submitted,
    TargetContext,
};

const DEFAULT_API: &str = "https://api.heroku.com";
const ACCEPT: &str = "application/vnd.heroku+json; version=3";
/// How many of the newest builds and releases [`Provider::find`] looks through.
const SEARCH_DEPTH: u32 = 200;

/// What rollbacks leave behind on Heroku.
const ROLLBACK_NOTE: &str = "Heroku's rollback restored the code (slug) and config vars of the \
release returned to. It does not roll back add-ons or database state (schema migrations, data): \
check those by hand.";
const REDEPLOY_NOTE: &str = "Rolled back by redeploying the previous artifact: config vars, \
add-ons and database state (schema migrations, data) were not rolled back.";

/// The Heroku adapter.
pub struct Heroku {
    /// Reads and idempotent writes: retried on 5xx, timeouts and 429s.
    api: ApiClient,
    /// Creates (builds, releases, rollbacks, dynos), sent once: see [`Heroku::create`].
    once: ApiClient,
    policy: RetryPolicy,
}

/// Heroku's error body is `{"id": "not_found", "message": "…"}`: "message (id)".
fn error_message(body: &Value) -> Option<String> {
    let message = body.get("message")?.as_str()?;
    Some(match body.get("id").and_then(Value::as_str) {
        Some(id) => format!("{message} ({id})"),
        None => message.to_owned(),
    })
}

/// What a reference points at.
#[derive(Clone, Debug, PartialEq)]
enum Object {
    Build(String),
    Release(String),
    Dyno(String),
    /// A config change whose release could not be told apart: done when accepted.
    Applied,
}

/// Why the operation was started.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Purpose {
    Deploy,
    Rollback,
    Redeploy,
    Config,
}

#[derive(Clone, Debug, PartialEq)]
struct Reference {
    purpose: Purpose,
    object: Object,
}

impl Reference {
    fn new(purpose: Purpose, object: Object) -> Self {
        Reference { purpose, object }
    }

    fn parse(text: &str) -> Result<Self, ProviderError> {
        let bad = || ProviderError::Permanent(format!("`{text}` is not a Heroku reference"));
        let parts: Vec<&str> = text.trim().split(':').collect();
        let (id, tags) = parts.split_last().ok_or_else(bad)?;
        if id.is_empty() {
            return Err(bad());
        }
        let (purpose, tags) = match tags.first() {
            Some(&"rollback") => (Purpose::Rollback, &tags[1..]),
            Some(&"redeploy") => (Purpose::Redeploy, &tags[1..]),
            Some(&"config") => (Purpose::Config, &tags[1..]),
            _ => (Purpose::Deploy, tags),
        };
        let object = match tags {
            [] if purpose == Purpose::Config && *id == "applied" => Object::Applied,
            [] | ["release"] => Object::Release((*id).to_owned()),
            ["build"] => Object::Build((*id).to_owned()),
            ["dyno"] => Object::Dyno((*id).to_owned()),
            _ => return Err(bad()),
        };
        Ok(Reference { purpose, object })
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let purpose = match self.purpose {
            Purpose::Deploy => "",
            Purpose::Rollback => "rollback:",
            Purpose::Redeploy => "redeploy:",
            Purpose::Config => "config:",
        };
        match &self.object {
            Object::Build(id) => write!(f, "{purpose}build:{id}"),
            Object::Release(id) => write!(f, "{purpose}release:{id}"),
            Object::Dyno(id) => write!(f, "{purpose}dyno:{id}"),
            Object::Applied => write!(f, "{purpose}applied"),
        }
    }
}

/// Where and as whom to call.
struct App<'a> {
    base: String,
    app: String,
    token: &'a str,
}

impl<'a> App<'a> {
    fn of(target: &TargetContext<'a>) -> Result<Self, ProviderError> {
        let app = target
            .target
            .settings
            .get("app")
            .and_then(Value::as_str)
            .filter(|a| !a.is_empty())
            .ok_or_else(|| ProviderError::Permanent("the Heroku target has no `app`".into()))?;
        if !app
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(ProviderError::Permanent(format!(
                "`{app}` is not a Heroku app name or id"
            )));
        }
        let token = target.credential.ok_or_else(|| {
            ProviderError::Permanent(
                "the Heroku target has no credential: name one holding a Heroku API token".into(),
            )
        })?;
        Ok(App {
            base: api_url(&target.target.settings, DEFAULT_API),
            app: app.to_owned(),
            token,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/apps/{}{path}", self.base, self.app)
    }
}

/// The text Shipgate leaves on what it starts, so [`Provider::find`] can find it again.
fn marker(natural_key: &str) -> String {
    format!("shipgate {natural_key}")
}

fn carries_marker(text: Option<&str>, natural_key: &str) -> bool {
    let marker = marker(natural_key);
    text.is_some_and(|t| t == marker || t.starts_with(&format!("{marker}: ")))
}

/// The release version Shipgate wrote in a description, if it wrote one.
fn version_in(description: &str) -> Option<String> {
    let rest = description.strip_prefix("shipgate ")?;
    let (_, what) = rest.split_once(": ")?;
    what.strip_prefix("deploy ")
        .or_else(|| what.strip_prefix("rollback to "))
        .map(str::to_owned)
}

fn text(value: &Value, key: &str) -> Option<String> {
    match value.get(key)? {
        Value::String(text) => Some(text.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn slug_of(release: &Value) -> Option<String> {
    release.get("slug").and_then(|s| text(s, "id"))
}

fn is_not_found(error: &ProviderError) -> bool {
    matches!(error, ProviderError::Permanent(message) if message.contains("HTTP 404"))
}

/// A release, as results and live state show it.
fn release_summary(release: &Value) -> Value {
    json!({
        "id": release.get("id"),
        "version": release.get("version"),
        "status": release.get("status"),
        "description": release.get("description"),
        "slug": slug_of(release),
        "created_at": release.get("created_at"),
    })
}

impl Heroku {
    /// A Heroku adapter with the given retry policy.
    pub fn new(policy: RetryPolicy) -> Self {
        let single = RetryPolicy {
            attempts: 1,
            ..policy
        };
        Heroku {
            api: ApiClient::new("Heroku", policy, error_message),
            once: ApiClient::new("Heroku", single, error_message),
            policy,
        }
    }

    fn request<'a>(
        app: &'a App<'_>,
        method: Method,
        path: &str,
        body: Option<&'a Value>,
        range: Option<&str>,
    ) -> Call<'a> {
        let mut call = Call::new(method, app.url(path))
            .bearer(Some(app.token))
            .header("Accept", ACCEPT);
        if let Some(body) = body {
            call = call.json(body);
        }
        if let Some(range) = range {
            call = call.header("Range", range);
        }
        call
    }

    async fn call(
        &self,
        app: &App<'_>,
        method: Method,
        path: &str,
        body: Option<&Value>,
        range: Option<&str>,
    ) -> Result<Value, ProviderError> {
        let call = Self::request(app, method, path, body, range);
        Ok(self.api.send(&call).await?.body)
    }

    async fn get(&self, app: &App<'_>, path: &str) -> Result<Value, ProviderError> {
        self.call(app, Method::GET, path, None, None).await
    }

    /// Creates something. Heroku has no idempotency keys, so a create that may have been
    /// processed (a 5xx answer, a timeout) is not sent again here: the error goes back to the
    /// engine, which asks [`Provider::find`] (builds and slug releases carry the natural key;
    /// a rollback adopts a release already copying its target) before submitting again. A 429
    /// was not processed, so it is waited out and sent again, within the retry policy.
    async fn create(
        &self,
        app: &App<'_>,
        path: &str,
        body: &Value,
    ) -> Result<Value, ProviderError> {
        let call = Self::request(app, Method::POST, path, Some(body), None);
        let mut attempt = 1;
        loop {
            match self.once.send(&call).await {
                Ok(answer) => return Ok(answer.body),
                Err(ProviderError::RateLimited(wait))
                    if attempt < self.policy.attempts && wait <= self.policy.max_inline_wait =>
                {
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// The newest releases, newest first.
    async fn releases(&self, app: &App<'_>, max: u32) -> Result<Vec<Value>, ProviderError> {
        let range = format!("version ..; order=desc, max={max}");
        let list = self
            .call(app, Method::GET, "/releases", None, Some(&range))
            .await?;
        let mut list = match list {
            Value::Array(items) => items,
            _ => Vec::new(),
        };
        // Newest first whatever order the answer came in.
        list.sort_by_key(|r| std::cmp::Reverse(r.get("version").and_then(Value::as_u64)));
        Ok(list)
    }

    /// The newest builds, newest first.
    async fn builds(&self, app: &App<'_>, max: u32) -> Result<Vec<Value>, ProviderError> {
        let range = format!("created_at ..; order=desc, max={max}");
        let list = self
            .call(app, Method::GET, "/builds", None, Some(&range))
            .await?;
        let mut list = match list {
            Value::Array(items) => items,
            _ => Vec::new(),
        };
        list.sort_by(|a, b| {
            let at = |v: &Value| text(v, "created_at").unwrap_or_default();
            at(b).cmp(&at(a))
        });
        Ok(list)
    }

    /// Starts a build or a slug release for an artifact.
    async fn deploy(
        &self,
        app: &App<'_>,
        purpose: Purpose,
        version: &str,
        artifact: &Value,
        description: String,
    ) -> Result<Submitted, ProviderError> {
        let blob = match artifact {
            Value::String(url) if !url.trim().is_empty() => Some(json!({ "url": url })),
            Value::Object(fields) => {
                if let Some(slug) = fields.get("slug") {
                    let slug = match slug {
                        Value::String(id) => id.clone(),
                        Value::Object(_) => text(slug, "id").unwrap_or_default(),
                        _ => String::new(),
                    };
                    if slug.is_empty() {
                        return Err(ProviderError::Permanent(
                            "the artifact's `slug` is not a slug id".into(),
                        ));
                    }
                    let body = json!({ "slug": slug, "description": description });
                    let release = self.create(app, "/releases", &body).await?;
                    let id = text(&release, "id").ok_or_else(|| {
                        ProviderError::Transient("Heroku answered a release without an id".into())
                    })?;
                    let reference = Reference::new(purpose, Object::Release(id));
                    let status = self.release_outcome(app, &release, &reference).await?;
                    return Ok(Submitted {
                        reference: reference.to_string(),
                        status,
                    });
                }
                fields
                    .get("source_blob")
                    .filter(|b| b.is_object())
                    .cloned()
                    .or_else(|| fields.contains_key("url").then(|| artifact.clone()))
            }
            _ => None,
        };
        let Some(Value::Object(mut blob)) = blob else {
            return Err(ProviderError::Permanent(format!(
                "a Heroku artifact is a source tarball URL, {{\"slug\": \"<id>\"}} or \
                 {{\"source_blob\": {{\"url\": …}}}}; got {artifact}"
            )));
        };
        blob.entry("version").or_insert_with(|| json!(version));
        blob.insert("version_description".into(), json!(description));
        let mut body = Map::new();
        if let Some(buildpacks) = artifact.get("buildpacks") {
            body.insert("buildpacks".into(), buildpacks.clone());
        }
        body.insert("source_blob".into(), Value::Object(blob));
        let build = self.create(app, "/builds", &Value::Object(body)).await?;
        let id = text(&build, "id").ok_or_else(|| {
            ProviderError::Transient("Heroku answered a build without an id".into())
        })?;
        let reference = Reference::new(purpose, Object::Build(id));
        let status = match build.get("status").and_then(Value::as_str) {
            Some("failed") => build_failed(&build),
            _ => OperationStatus::Running,
        };
        Ok(Submitted {
            reference: reference.to_string(),
            status,
        })
    }

    /// The release a rollback's `to_ref` names, if it can be found.
    async fn release_named(
        &self,
        app: &App<'_>,
        to_ref: &str,
    ) -> Result<Option<Value>, ProviderError> {
        let Ok(reference) = Reference::parse(to_ref) else {
            return Ok(None);
        };
        let release_id = match reference.object {
            Object::Release(id) => id,
            Object::Build(id) => {
                let build = match self.get(app, &format!("/builds/{id}")).await {
                    Ok(build) => build,
                    Err(error) if is_not_found(&error) => return Ok(None),
                    Err(error) => return Err(error),
                };
                match build.get("release").and_then(|r| text(r, "id")) {
                    Some(id) => id,
                    None => return Ok(None),
                }
            }
            Object::Dyno(_) | Object::Applied => return Ok(None),
        };
        match self.get(app, &format!("/releases/{release_id}")).await {
            Ok(release) => Ok(Some(release)),
            Err(error) if is_not_found(&error) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Heroku's own rollback to `target` (a release), unless the newest release already is one.
    async fn rollback(&self, app: &App<'_>, target: &Value) -> Result<Submitted, ProviderError> {
        let target_id = text(target, "id")
            .ok_or_else(|| ProviderError::Permanent("the release has no id".into()))?;
        let target_version = target.get("version").and_then(Value::as_u64).unwrap_or(0);
        let target_slug = slug_of(target);
        // A rollback submitted before a crash: the newest release already is a rollback to the
        // target (Heroku describes it "Rollback to vN"; if that wording ever changes, the worst
        // case is a second rollback to the same slug and config), or is the target itself.
        let newest = self.releases(app, 1).await?.into_iter().next();
        let adopted = newest.filter(|n| {
            let description = n
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_ascii_lowercase();
            let names_target = description
                .split(|c: char| !c.is_ascii_alphanumeric())
                .any(|word| word == format!("v{target_version}"));
            let copies_target = description.contains("rollback") && names_target;
            target_slug.is_some()
                && slug_of(n) == target_slug
                && (text(n, "id") == Some(target_id.clone()) || copies_target)
                && n.get("status").and_then(Value::as_str) != Some("failed")
        });
        let release = match adopted {
            Some(release) => release,
            None => {
                self.create(app, "/releases", &json!({ "release": target_id }))
                    .await?
            }
        };
        let id = text(&release, "id").ok_or_else(|| {
            ProviderError::Transient("Heroku answered a release without an id".into())
        })?;
        let reference = Reference::new(Purpose::Rollback, Object::Release(id));
        let status = self.release_outcome(app, &release, &reference).await?;
        Ok(Submitted {
            reference: reference.to_string(),
            status,
        })
    }

    async fn config(
        &self,
        app: &App<'_>,
        vars: &BTreeMap<String, Option<String>>,
    ) -> Result<Submitted, ProviderError> {
        if let Some(bad) = vars
            .keys()
            .find(|k| k.is_empty() || !k.chars().all(|c| c.is_alphanumeric() || c == '_'))
        {
            return Err(ProviderError::Permanent(format!(
                "`{bad}` is not a Heroku config var name (letters, digits and `_`)"
            )));
        }
        let body: Map<String, Value> = vars
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().map_or(Value::Null, Value::String)))
            .collect();
        let config = self
            .call(
                app,
                Method::PATCH,
                "/config-vars",
                Some(&Value::Object(body)),
                None,
            )
            .await?;
        let keys: Vec<&String> = config
            .as_object()
            .map(|m| m.keys().collect())
            .unwrap_or_default();
        let set: BTreeMap<&String, &String> = vars
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
            .collect();
        let unset: Vec<&String> = vars
            .iter()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k)
            .collect();
        // The change made a release: the newest one, if it reads as a config change.
        let newest = self.releases(app, 1).await?.into_iter().next().filter(|r| {
            r.get("description")
                .and_then(Value::as_str)
                .is_some_and(|d| d.to_ascii_lowercase().contains("config"))
        });
        let mut result = json!({
            "provider": "heroku",
            "set": set,
            "unset": unset,
            // Only the names: the other values may be add-on credentials.
            "config_keys": keys,
        });
        let Some(release) = newest else {
            return Ok(Submitted {
                reference: Reference::new(Purpose::Config, Object::Applied).to_string(),
                status: OperationStatus::Succeeded(result),
            });
        };
        let id = text(&release, "id").unwrap_or_default();
        let reference = Reference::new(Purpose::Config, Object::Release(id));
        let status = match release_status(&release) {
            OperationStatus::Succeeded(_) => {
                result["release"] = release_summary(&release);
                OperationStatus::Succeeded(result)
            }
            other => other,
        };
        Ok(Submitted {
            reference: reference.to_string(),
            status,
        })
    }

    async fn job(
        &self,
        app: &App<'_>,
        command: &str,
        natural_key: &str,
    ) -> Result<Submitted, ProviderError> {
        let body = json!({
            "command": command,
            "attach": false,
            "type": "run",
            "env": { "SHIPGATE_NATURAL_KEY": natural_key },
        });
        let dyno = self.create(app, "/dynos", &body).await?;
        let id = text(&dyno, "id").ok_or_else(|| {
            ProviderError::Transient("Heroku answered a dyno without an id".into())
        })?;
        Ok(Submitted {
            reference: Reference::new(Purpose::Deploy, Object::Dyno(id)).to_string(),
            status: dyno_status(&dyno),
        })
    }

    /// A release's outcome, with what a rollback left behind or a config change set.
    async fn release_outcome(
        &self,
        app: &App<'_>,
        release: &Value,
        reference: &Reference,
    ) -> Result<OperationStatus, ProviderError> {
        let status = release_status(release);
        let OperationStatus::Succeeded(_) = status else {
            return Ok(status);
        };
        let mut result = json!({
            "provider": "heroku",
            "app": app.app,
            "reference": reference.to_string(),
            "release": release_summary(release),
        });
        match reference.purpose {
            Purpose::Rollback => {
                result["note"] = json!(ROLLBACK_NOTE);
                result["addons"] = release
                    .get("addon_plan_names")
                    .cloned()
                    .unwrap_or(Value::Null);
            }
            Purpose::Redeploy => {
                result["note"] = json!(REDEPLOY_NOTE);
                result["addons"] = release
                    .get("addon_plan_names")
                    .cloned()
                    .unwrap_or(Value::Null);
            }
            Purpose::Config => {
                if let Some(id) = text(release, "id") {
                    let config = self
                        .get(app, &format!("/releases/{id}/config-vars"))
                        .await?;
                    let keys: Vec<&String> = config
                        .as_object()
                        .map(|m| m.keys().collect())
                        .unwrap_or_default();
                    result["config_keys"] = json!(keys);
                }
            }
            Purpose::Deploy => {}
        }
        Ok(OperationStatus::Succeeded(result))
    }

    /// Follows a build, then its release.
    async fn build_outcome(
        &self,
        app: &App<'_>,
        build: &Value,
        reference: &Reference,
    ) -> Result<OperationStatus, ProviderError> {
        match build.get("status").and_then(Value::as_str) {
            Some("failed") => Ok(build_failed(build)),
            Some("succeeded") => {
                // The release appears on the build once it exists.
                let Some(release_id) = build.get("release").and_then(|r| text(r, "id")) else {
                    return Ok(OperationStatus::Running);
                };
                let release = self.get(app, &format!("/releases/{release_id}")).await?;
                let mut status = self.release_outcome(app, &release, reference).await?;
                if let OperationStatus::Succeeded(result) = &mut status {
                    result["build"] = json!({
                        "id": build.get("id"),
                        "source_version": build.get("source_blob").and_then(|b| b.get("version")),
                        "slug": build.get("slug").and_then(|s| s.get("id")),
                    });
                }
                Ok(status)
            }
            _ => Ok(OperationStatus::Running),
        }
    }

    /// Which version of Shipgate's a release serves: from its description, else from an older
    /// release of the same slug Shipgate made, else from the build that made the slug.
    async fn version_of(
        &self,
        app: &App<'_>,
        release: &Value,
        releases: &[Value],
    ) -> Result<Option<String>, ProviderError> {
        if let Some(version) = release
            .get("description")
            .and_then(Value::as_str)
            .and_then(version_in)
        {
            return Ok(Some(version));
        }
        let Some(slug) = slug_of(release) else {
            return Ok(None);
        };
        if let Some(version) = releases
            .iter()
            .filter(|r| slug_of(r).as_deref() == Some(slug.as_str()))
            .find_map(|r| {
                r.get("description")
                    .and_then(Value::as_str)
                    .and_then(version_in)
            })
        {
            return Ok(Some(version));
        }
        let builds = self.builds(app, 50).await?;
        Ok(builds
            .iter()
            .find(|b| b.get("slug").and_then(|s| text(s, "id")).as_deref() == Some(slug.as_str()))
            .and_then(|b| b.get("source_blob").and_then(|s| text(s, "version"))))
    }
}

fn build_failed(build: &Value) -> OperationStatus {
    let id = text(build, "id").unwrap_or_default();
    let mut message = format!("the Heroku build {id} failed");
    if let Some(url) = text(build, "output_stream_url") {
        message.push_str(&format!("; its output is at {url}"));
    }
    OperationStatus::Failed(message)
}

/// A release's status alone (`pending` while the release phase runs).
fn release_status(release: &Value) -> OperationStatus {
    let version = text(release, "version").unwrap_or_else(|| "?".into());
    match release.get("status").and_then(Value::as_str) {
        Some("succeeded") => OperationStatus::Succeeded(release_summary(release)),
        Some("failed") => {
            let mut message = format!(
                "the release phase of Heroku release v{version} failed, so the release was not \
                 made live"
            );
            if let Some(url) = text(release, "output_stream_url") {
                message.push_str(&format!("; its output is at {url}"));
            }
            OperationStatus::Failed(message)
        }
        Some("expired") => OperationStatus::Failed(format!(
            "Heroku release v{version} expired before it went live"
        )),
        _ => OperationStatus::Running,
    }
}

fn dyno_status(dyno: &Value) -> OperationStatus {
    let name = text(dyno, "name").unwrap_or_else(|| "the one-off dyno".into());
    let command = text(dyno, "command").unwrap_or_default();
    // Not in the documented schema, but honoured if a platform reports it.
    let exit = dyno
        .get("exit_status")
        .or_else(|| dyno.get("exit_code"))
        .and_then(Value::as_i64);
    match (exit, dyno.get("state").and_then(Value::as_str)) {
        (Some(0), _) => OperationStatus::Succeeded(json!({ "dyno": name, "exit_status": 0 })),
        (Some(code), _) => {
            OperationStatus::Failed(format!("`{command}` on {name} exited with status {code}"))
        }
        (None, Some("crashed")) => {
            OperationStatus::Failed(format!("`{command}` on {name} crashed"))
        }
        (None, Some("down")) => OperationStatus::Succeeded(json!({
            "dyno": name,
            "note": "the one-off dyno stopped; Heroku does not report its exit status, see the app's logs",
        })),
        _ => OperationStatus::Running,
    }
}

#[async_trait]
impl Provider for Heroku {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Heroku
    }

    async fn submit(
        &self,
        target: &TargetContext<'_>,
        request: &StepRequest,
        natural_key: &str,
    ) -> Result<Submitted, ProviderError> {
        let app = App::of(target)?;
        let marker = marker(natural_key);
        match request {
            StepRequest::Deploy { version, artifact } => {
                let description = format!("{marker}: deploy {version}");
                self.deploy(&app, Purpose::Deploy, version, artifact, description)
                    .await
            }
            StepRequest::Rollback {
                version,
                artifact,
                to_ref,
                ..
            } => {
                if let Some(to_ref) = to_ref.as_deref() {
                    if let Some(release) = self.release_named(&app, to_ref).await? {
                        if slug_of(&release).is_some() {
                            return self.rollback(&app, &release).await;
                        }
                    }
                }
                if artifact.is_null() {
                    return Err(ProviderError::Permanent(format!(
                        "nothing to roll back to: no Heroku release for {version} is known and \
                         it has no artifact to redeploy"
                    )));
                }
                let description = format!("{marker}: rollback to {version}");
                self.deploy(&app, Purpose::Redeploy, version, artifact, description)
                    .await
            }
            StepRequest::Traffic { .. } => Err(ProviderError::Permanent(
                "Heroku cannot send a share of traffic to a version".into(),
            )),
            StepRequest::Config { vars } => self.config(&app, vars).await,
            StepRequest::Job { command, .. } => self.job(&app, command, natural_key).await,
        }
    }

    async fn find(
        &self,
        target: &TargetContext<'_>,
        natural_key: &str,
    ) -> Result<Option<Submitted>, ProviderError> {
        let app = App::of(target)?;
        let purpose = |text: &str| {
            if text.contains(": rollback to ") {
                Purpose::Redeploy
            } else {
                Purpose::Deploy
            }
        };
        for release in self.releases(&app, SEARCH_DEPTH).await? {
            let description = release.get("description").and_then(Value::as_str);
            if carries_marker(description, natural_key) {
                let id = text(&release, "id").unwrap_or_default();
                let reference =
                    Reference::new(purpose(description.unwrap_or("")), Object::Release(id));
                let status = self.release_outcome(&app, &release, &reference).await?;
                return Ok(Some(Submitted {
                    reference: reference.to_string(),
                    status,
                }));
            }
        }
        for build in self.builds(&app, SEARCH_DEPTH).await? {
            let description = build
                .get("source_blob")
                .and_then(|b| b.get("version_description"))
                .and_then(Value::as_str);
            if carries_marker(description, natural_key) {
                let id = text(&build, "id").unwrap_or_default();
                let reference =
                    Reference::new(purpose(description.unwrap_or("")), Object::Build(id));
                let status = self.build_outcome(&app, &build, &reference).await?;
                return Ok(Some(Submitted {
                    reference: reference.to_string(),
                    status,
                }));
            }
        }
        Ok(None)
    }

    async fn poll(
        &self,
        target: &TargetContext<'_>,
        reference: &str,
    ) -> Result<OperationStatus, ProviderError> {
        let app = App::of(target)?;
        let parsed = Reference::parse(reference)?;
        match &parsed.object {
            Object::Build(id) => {
                let build = self.get(&app, &format!("/builds/{id}")).await?;
                self.build_outcome(&app, &build, &parsed).await
            }
            Object::Release(id) => {
                let release = self.get(&app, &format!("/releases/{id}")).await?;
                self.release_outcome(&app, &release, &parsed).await
            }
            Object::Dyno(id) => match self.get(&app, &format!("/dynos/{id}")).await {
                Ok(dyno) => Ok(dyno_status(&dyno)),
                // One-off dynos vanish when their command ends.
                Err(error) if is_not_found(&error) => Ok(OperationStatus::Succeeded(json!({
                    "dyno": id,
                    "note": "the one-off dyno finished; Heroku does not report its exit status, \
                             see the app's logs",
                }))),
                Err(error) => Err(error),
            },
            Object::Applied => Ok(OperationStatus::Succeeded(json!({ "config": "applied" }))),
        }
    }

    async fn live(&self, target: &TargetContext<'_>) -> Result<LiveState, ProviderError> {
        let app = App::of(target)?;
        let releases = self.releases(&app, 50).await?;
        let current = releases
            .iter()
            .find(|r| r.get("current").and_then(Value::as_bool) == Some(true))
            .or_else(|| {
                releases
                    .iter()
                    .find(|r| r.get("status").and_then(Value::as_str) == Some("succeeded"))
            });
        let Some(current) = current else {
            return Ok(LiveState {
                reference: None,
                version: None,
                detail: json!({ "releases": releases.len() }),
            });
        };
        let version = self.version_of(&app, current, &releases).await?;
        let mut detail = json!({ "release": release_summary(current) });
        if let Some(newest) = releases.first().filter(|n| {
            n.get("id") != current.get("id")
                && n.get("status").and_then(Value::as_str) == Some("pending")
        }) {
            detail["pending"] = release_summary(newest);
        }
        Ok(LiveState {
            reference: text(current, "id").map(|id| format!("release:{id}")),
            version,
            detail,
        })
    }

    async fn health(
        &self,
        target: &TargetContext<'_>,
    ) -> Option<Result<HealthReading, ProviderError>> {
        let app = match App::of(target) {
            Ok(app) => app,
            Err(error) => return Some(Err(error)),
        };
        let dynos = match self.get(&app, "/dynos").await {
            Ok(Value::Array(dynos)) => dynos,
            Ok(_) => Vec::new(),
            Err(error) => return Some(Err(error)),
        };
        // Process dynos (web, worker, …): one-off `run` dynos come and go and say nothing.
        let processes: Vec<&Value> = dynos
            .iter()
            .filter(|d| d.get("type").and_then(Value::as_str) != Some("run"))
            .collect();
        let up = processes
            .iter()
            .filter(|d| matches!(d.get("state").and_then(Value::as_str), Some("up" | "idle")))
            .count();
        let mut summary = format!("{up} of {} dynos up", processes.len());
        let crashed: Vec<String> = processes
            .iter()
            .filter(|d| d.get("state").and_then(Value::as_str) == Some("crashed"))
            .filter_map(|d| text(d, "name"))
            .collect();
        if !crashed.is_empty() {
            summary.push_str(&format!("; crashed: {}", crashed.join(", ")));
        }
        Some(Ok(HealthReading {
            healthy: !processes.is_empty() && up == processes.len(),
            summary,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_round_trip_and_bare_ids_are_releases() {
        for text in [
            "build:b1",
            "release:r1",
            "rollback:release:r2",
            "redeploy:build:b3",
            "config:release:r4",
            "config:applied",
            "dyno:d5",
        ] {
            assert_eq!(Reference::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(
            Reference::parse("0123-abcd").unwrap(),
            Reference::new(Purpose::Deploy, Object::Release("0123-abcd".into()))
        );
        assert!(Reference::parse("spaceship:x").is_err());
    }

    #[test]
    fn markers_do_not_match_longer_keys_and_carry_the_version() {
        assert!(carries_marker(
            Some("shipgate k:1:2:1: deploy 1.0"),
            "k:1:2:1"
        ));
        assert!(!carries_marker(
            Some("shipgate k:1:2:10: deploy 1.0"),
            "k:1:2:1"
        ));
        assert_eq!(
            version_in("shipgate k:1: deploy 1.0.0").as_deref(),
            Some("1.0.0")
        );
        assert_eq!(
            version_in("shipgate k:1: rollback to 0.9").as_deref(),
            Some("0.9")
        );
        assert_eq!(version_in("Rollback to v3"), None);
        assert_eq!(
            error_message(&json!({"id": "not_found", "message": "Couldn't find that app."})),
            Some("Couldn't find that app. (not_found)".into())
        );
    }
}
