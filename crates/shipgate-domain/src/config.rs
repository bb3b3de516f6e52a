//! App configuration as code: the YAML/JSON document a team applies, its `${VAR}` resolution,
//! and its validation into an [`AppSpec`] that the store keeps and rollouts snapshot.
//!
//! Every refusal names the field at fault (`environments[0].targets.api.provider`), and nothing
//! is applied unless the whole document is valid.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::duration::Span;
use crate::notification::{ChannelKind, ChannelSpec, NotificationEvent, Severity};
use crate::pattern::glob_matches;
use crate::plan::{
    GateSpec, HealthGate, NoData, OnFailure, PhaseSpec, Plan, PrometheusGate, StepSpec, WebhookGate,
};
use crate::provider::ProviderKind;

/// One field's problem.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// Path to the field, such as `environments[0].plan[1].deploy[0]`.
    pub field: String,
    /// What is wrong with it, in words a person can act on.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            formatter.write_str(&self.message)
        } else {
            write!(formatter, "{}: {}", self.field, self.message)
        }
    }
}

/// Why a config document was refused; lists every problem found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid app config: {}", .errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct ConfigError {
    /// The problems, each naming its field.
    pub errors: Vec<FieldError>,
}

impl ConfigError {
    fn single(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            errors: vec![FieldError {
                field: field.into(),
                message: message.into(),
            }],
        }
    }
}

/// A secret value from a config document. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value, for encryption or for the provider call that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("Secret(***)")
    }
}

// ---------------------------------------------------------------------------------------------
// The document as written.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AppDocument {
    app: String,
    #[serde(default)]
    repository: Option<String>,
    components: Vec<String>,
    #[serde(default)]
    credentials: BTreeMap<String, Secret>,
    #[serde(default)]
    webhook_secret: Option<Secret>,
    #[serde(default)]
    prometheus_url: Option<String>,
    environments: Vec<EnvironmentDocument>,
    #[serde(default)]
    notifications: Vec<ChannelDocument>,
}

/// A notification channel as written: exactly one of `slack` or `webhook`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelDocument {
    name: String,
    #[serde(default)]
    slack: Option<SlackDocument>,
    #[serde(default)]
    webhook: Option<ChannelWebhookDocument>,
    #[serde(default)]
    environments: Vec<String>,
    #[serde(default)]
    events: Vec<String>,
    #[serde(default)]
    severity: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SlackDocument {
    webhook_url: Secret,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelWebhookDocument {
    url: Secret,
    #[serde(default)]
    secret: Option<Secret>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvironmentDocument {
    name: String,
    #[serde(default)]
    auto_deploy: Option<AutoDeploy>,
    #[serde(default)]
    approvals: Option<Approvals>,
    #[serde(default)]
    concurrency: Concurrency,
    #[serde(default)]
    promotion: Option<Promotion>,
    targets: BTreeMap<String, Map<String, Value>>,
    #[serde(default)]
    plan: Vec<PhaseDocument>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PhaseDocument {
    name: String,
    #[serde(default)]
    job: Option<JobDocument>,
    #[serde(default)]
    deploy: Vec<String>,
    #[serde(default)]
    traffic: Option<TrafficDocument>,
    #[serde(default)]
    config: BTreeMap<String, BTreeMap<String, Option<ConfigValue>>>,
    #[serde(default)]
    wait: Option<Span>,
    #[serde(default)]
    gates: Vec<GateDocument>,
    #[serde(default)]
    on_failure: OnFailure,
}

/// Config values may be written as strings, numbers or booleans; platforms store strings.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
enum ConfigValue {
    Text(String),
    Number(serde_json::Number),
    Flag(bool),
}

impl ConfigValue {
    fn into_string(self) -> String {
        match self {
            ConfigValue::Text(text) => text,
            ConfigValue::Number(number) => number.to_string(),
            ConfigValue::Flag(flag) => flag.to_string(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobDocument {
    component: String,
    command: String,
    /// Undoes `command` (a down migration); run first when the rollout is rolled back.
    #[serde(default)]
    down: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrafficDocument {
    component: String,
    percent: u8,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum GateDocument {
    Health(HealthDocument),
    Soak(Span),
    Approval(ApprovalDocument),
    Prometheus(Box<PrometheusDocument>),
    Webhook(WebhookDocument),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthDocument {
    #[serde(default)]
    components: Option<Vec<String>>,
    #[serde(default = "default_health_interval")]
    interval: Span,
    #[serde(default = "default_health_timeout")]
    timeout: Span,
    #[serde(default = "default_failures")]
    failures: u32,
    #[serde(default = "one")]
    successes: u32,
    #[serde(default)]
    initial_delay: Span,
    #[serde(default = "default_deadline")]
    deadline: Span,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApprovalDocument {
    #[serde(default)]
    required: Option<u32>,
    #[serde(default)]
    timeout: Option<Span>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrometheusDocument {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    query: Option<String>,
    /// A built-in query: `error_rate` or `p95_latency`.
    #[serde(default)]
    template: Option<MetricTemplate>,
    /// Label matchers the template's series are narrowed by, e.g. `job="shop"`.
    #[serde(default)]
    selector: Option<String>,
    /// The template's rate window.
    #[serde(default)]
    window: Option<Span>,
    /// The template's request counter (`error_rate`) or histogram (`p95_latency`).
    #[serde(default)]
    metric: Option<String>,
    /// The `error_rate` template's matcher for failed requests.
    #[serde(default)]
    errors: Option<String>,
    #[serde(default)]
    below: Option<f64>,
    #[serde(default)]
    above: Option<f64>,
    #[serde(default)]
    range: Option<[f64; 2]>,
    #[serde(default = "default_metric_interval")]
    interval: Span,
    #[serde(default, rename = "for")]
    hold: Span,
    #[serde(default)]
    count: Option<u32>,
    #[serde(default = "one")]
    failures: u32,
    #[serde(default = "default_consecutive_errors")]
    consecutive_errors: u32,
    #[serde(default)]
    samples_query: Option<String>,
    #[serde(default)]
    min_samples: Option<f64>,
    #[serde(default)]
    initial_delay: Span,
    #[serde(default)]
    no_data: NoData,
    #[serde(default = "default_deadline")]
    deadline: Span,
}

/// Built-in metric gates with the seeds' thresholds.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum MetricTemplate {
    /// Share of requests answered 5xx, below 1%.
    ErrorRate,
    /// 95th percentile request duration from a histogram, below 2 s.
    P95Latency,
}

impl MetricTemplate {
    fn default_metric(self) -> &'static str {
        match self {
            MetricTemplate::ErrorRate => "http_requests_total",
            MetricTemplate::P95Latency => "http_request_duration_seconds",
        }
    }

    fn default_below(self) -> f64 {
        match self {
            MetricTemplate::ErrorRate => 0.01,
            MetricTemplate::P95Latency => 2.0,
        }
    }
}

/// The PromQL a template stands for: (query, samples query).
fn template_queries(
    template: MetricTemplate,
    metric: &PrometheusDocument,
    selector: &str,
) -> (String, String) {
    let window = format!(
        "{}s",
        metric.window.unwrap_or(Span::secs(300)).as_millis() / 1000
    );
    let name = metric
        .metric
        .as_deref()
        .unwrap_or(template.default_metric());
    // `name{selector,extra}`, or the bare name when there is nothing to match.
    let series = |name: &str, extra: &str| {
        let matchers: Vec<&str> = [selector, extra]
            .into_iter()
            .filter(|part| !part.is_empty())
            .collect();
        if matchers.is_empty() {
            name.to_owned()
        } else {
            format!("{name}{{{}}}", matchers.join(","))
        }
    };
    match template {
        MetricTemplate::ErrorRate => {
            let errors = metric.errors.as_deref().unwrap_or(r#"code=~"5..""#);
            (
                // No failed request yet means no error series at all: count that as 0 rather
                // than no data (a healthy fresh deploy); no requests at all stays no data.
                format!(
                    "(sum(rate({}[{window}])) or vector(0)) / sum(rate({}[{window}]))",
                    series(name, errors),
                    series(name, "")
                ),
                format!("sum(increase({}[{window}]))", series(name, "")),
            )
        }
        MetricTemplate::P95Latency => (
            format!(
                "histogram_quantile(0.95, sum by (le) (rate({}[{window}])))",
                series(&format!("{name}_bucket"), "")
            ),
            format!(
                "sum(increase({}[{window}]))",
                series(&format!("{name}_count"), "")
            ),
        ),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookDocument {
    url: String,
    #[serde(default = "default_metric_interval")]
    interval: Span,
    #[serde(default = "default_health_timeout")]
    timeout: Span,
    #[serde(default = "default_failures")]
    failures: u32,
}

fn default_health_interval() -> Span {
    Span::secs(30)
}
fn default_health_timeout() -> Span {
    Span::secs(10)
}
fn default_metric_interval() -> Span {
    Span::secs(60)
}
fn default_deadline() -> Span {
    Span::secs(15 * 60)
}
fn default_failures() -> u32 {
    3
}
fn default_consecutive_errors() -> u32 {
    4
}
fn one() -> u32 {
    1
}

// ---------------------------------------------------------------------------------------------
// The validated model.

/// Auto-deploy rule: pushes to matching branches create a release and deploy it here.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoDeploy {
    /// Branch glob (`main`, `release/*`).
    pub branch: String,
    /// Only pushes touching one of these path globs deploy (all pushes when empty).
    #[serde(default)]
    pub paths: Vec<String>,
    /// Whether tag pushes deploy too.
    #[serde(default)]
    pub tags: bool,
}

/// What a push updated, as an auto-deploy rule sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushedRef<'a> {
    /// A branch (`main`, without `refs/heads/`).
    Branch(&'a str),
    /// A tag (`v1.4.0`, without `refs/tags/`).
    Tag(&'a str),
}

impl AutoDeploy {
    /// Whether a push deploys to the environment under this rule; `Err` says why not.
    ///
    /// Branch pushes match the `branch` glob (`*` is any run of characters, `/` included). With
    /// `paths`, at least one changed file must match one of those globs; `changed` is `None`
    /// when the push does not list every changed file (a truncated commit list), and then the
    /// path filter cannot rule the push out, so it deploys. Tag pushes deploy only with
    /// `tags: true`; the branch glob and path filters do not apply to them.
    pub fn admits(&self, pushed: PushedRef<'_>, changed: Option<&[String]>) -> Result<(), String> {
        match pushed {
            PushedRef::Tag(tag) => {
                if self.tags {
                    Ok(())
                } else {
                    Err(format!(
                        "tag `{tag}` does not deploy here (auto_deploy.tags is off)"
                    ))
                }
            }
            PushedRef::Branch(branch) => {
                if !glob_matches(&self.branch, branch) {
                    return Err(format!(
                        "branch `{branch}` does not match auto_deploy.branch `{}`",
                        self.branch
                    ));
                }
                match changed {
                    Some(files) if !self.paths.is_empty() => {
                        let touched = files.iter().any(|file| {
                            self.paths.iter().any(|pattern| glob_matches(pattern, file))
                        });
                        if touched {
                            Ok(())
                        } else {
                            Err(format!(
                                "no changed file matches auto_deploy.paths [{}]",
                                self.paths.join(", ")
                            ))
                        }
                    }
                    _ => Ok(()),
                }
            }
        }
    }
}

/// Approvals a rollout needs before it starts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approvals {
    /// How many distinct approvers.
    #[serde(default = "one")]
    pub required: u32,
    /// Whether the person who started a rollout may approve it.
    #[serde(default)]
    pub allow_self_approval: bool,
    /// How long an approval request stays open.
    #[serde(default = "default_approval_timeout")]
    pub timeout: Span,
}

fn default_approval_timeout() -> Span {
    Span::secs(24 * 3600)
}

/// What happens to a rollout started while another is active in the environment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Concurrency {
    /// Wait in line, first in first out.
    #[default]
    Queue,
    /// The newest replaces rollouts still waiting in line.
    Supersede,
}

/// Promotion rule: a release enters this environment only after it succeeded in `from`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Promotion {
    /// Environment the release must have succeeded in.
    pub from: String,
    /// How long it must have run there.
    #[serde(default)]
    pub soak: Span,
    /// Promote automatically once soaked.
    #[serde(default)]
    pub auto: bool,
}

/// A health endpoint of a target.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// URL probed with GET.
    pub url: String,
    /// Status that counts as healthy.
    #[serde(default = "default_expect_status")]
    pub expect_status: u16,
    /// Optional check of a JSON field of the body, such as `status == "healthy"`.
    #[serde(default)]
    pub json: Option<JsonCheck>,
}

fn default_expect_status() -> u16 {
    200
}

/// A JSON field check on a health response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonCheck {
    /// Dotted path into the body (`status`, `checks.db.status`).
    pub path: String,
    /// The value it must equal.
    pub equals: Value,
}

/// Where and how one component of one environment is deployed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TargetSpec {
    /// Provider kind.
    pub provider: ProviderKind,
    /// Provider settings (the keys of DESIGN.md's table for that provider).
    pub settings: Map<String, Value>,
    /// Name of the app credential the provider authenticates with.
    pub credential: Option<String>,
    /// Health endpoint, if any.
    pub health: Option<HealthCheck>,
}

/// One environment, validated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EnvironmentSpec {
    /// Name (`staging`).
    pub name: String,
    /// Auto-deploy rule.
    pub auto_deploy: Option<AutoDeploy>,
    /// Approvals before a rollout starts.
    pub approvals: Option<Approvals>,
    /// Queue or supersede.
    pub concurrency: Concurrency,
    /// Promotion rule.
    pub promotion: Option<Promotion>,
    /// One target per component.
    pub targets: BTreeMap<String, TargetSpec>,
    /// The plan new rollouts snapshot.
    pub plan: Plan,
}

/// Environment policy as stored (everything but targets and plan).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// Auto-deploy rule.
    pub auto_deploy: Option<AutoDeploy>,
    /// Approvals before a rollout starts.
    pub approvals: Option<Approvals>,
    /// Queue or supersede.
    #[serde(default)]
    pub concurrency: Concurrency,
    /// Promotion rule.
    pub promotion: Option<Promotion>,
}

impl EnvironmentSpec {
    /// The policy part of the environment.
    pub fn policy(&self) -> Policy {
        Policy {
            auto_deploy: self.auto_deploy.clone(),
            approvals: self.approvals.clone(),
            concurrency: self.concurrency,
            promotion: self.promotion.clone(),
        }
    }
}

/// An app, validated; holds no secret values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AppSpec {
    /// App name.
    pub app: String,
    /// Repository (`owner/name`).
    pub repository: Option<String>,
    /// Component names in declared order.
    pub components: Vec<String>,
    /// Names of the credentials the document declares.
    pub credential_names: Vec<String>,
    /// Whether a webhook secret is declared.
    pub has_webhook_secret: bool,
    /// Environments in promotion order.
    pub environments: Vec<EnvironmentSpec>,
    /// Notification channels (their URLs and secrets are held apart, sealed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notifications: Vec<ChannelSpec>,
}

/// A channel's sealed parts: the URL (a Slack webhook URL is itself a credential) and the
/// signing secret of a generic webhook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelSecrets {
    /// Where to POST.
    pub url: Secret,
    /// The HMAC-SHA256 key of `X-Shipgate-Signature`.
    pub secret: Option<Secret>,
}

/// A validated document: the spec plus the secrets it carried.
#[derive(Debug)]
pub struct AppliedDocument {
    /// The spec.
    pub spec: AppSpec,
    /// Credential values by name.
    pub credentials: BTreeMap<String, Secret>,
    /// The webhook secret, if given.
    pub webhook_secret: Option<Secret>,
    /// Each notification channel's URL and secret, by channel name.
    pub channel_secrets: BTreeMap<String, ChannelSecrets>,
}

// ---------------------------------------------------------------------------------------------
// Parsing.

/// Parses a YAML or JSON document (JSON is YAML) into a tree, before variable resolution.
pub fn parse_tree(text: &str) -> Result<Value, ConfigError> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') {
        return serde_json::from_str(text)
            .map_err(|error| ConfigError::single("", format!("not valid JSON: {error}")));
    }
    let value: Value = serde_yaml::from_str(text)
        .map_err(|error| ConfigError::single("", format!("not valid YAML: {error}")))?;
    if !value.is_object() {
        return Err(ConfigError::single(
            "",
            "the document must be a mapping with `app`, `components` and `environments`",
        ));
    }
    Ok(value)
}

/// Replaces `${NAME}` in every string of the tree with `lookup(NAME)`; `$${` writes a literal
/// `${`. Every variable `lookup` cannot answer is reported with the field it stands in.
pub fn resolve_variables(
    tree: &mut Value,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    let mut errors = Vec::new();
    resolve_in(tree, String::new(), lookup, &mut errors);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigError { errors })
    }
}

fn resolve_in(
    value: &mut Value,
    path: String,
    lookup: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<FieldError>,
) {
    match value {
        Value::String(text) => match substitute(text, lookup) {
            Ok(Some(resolved)) => *text = resolved,
            Ok(None) => {}
            Err(name) => errors.push(FieldError {
                field: path,
                message: format!("variable `{name}` is not set"),
            }),
        },
        Value::Array(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                resolve_in(item, format!("{path}[{index}]"), lookup, errors);
            }
        }
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                resolve_in(item, child, lookup, errors);
            }
        }
        _ => {}
    }
}

/// `Ok(None)` when the text holds no reference; `Err(name)` for the first unset variable.
fn substitute(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<String>, String> {
    if !text.contains("${") {
        return Ok(None);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        if let Some(literal) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = literal;
        } else if let Some(body) = after.strip_prefix("${") {
            let Some(end) = body.find('}') else {
                out.push_str(after);
                rest = "";
                break;
            };
            let name = &body[..end];
            match lookup(name) {
                Some(value) => out.push_str(&value),
                None => return Err(name.to_owned()),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(Some(out))
}

/// Validates a resolved tree into an [`AppliedDocument`].
pub fn validate(tree: Value) -> Result<AppliedDocument, ConfigError> {
    let document: AppDocument = serde_path_to_error::deserialize(tree).map_err(|error| {
        let field = error.path().to_string();
        let field = if field == "." { String::new() } else { field };
        ConfigError::single(field, error.into_inner().to_string())
    })?;
    let mut errors = Vec::new();
    let spec = build_spec(&document, &mut errors);
    if errors.is_empty() {
        let channel_secrets = document
            .notifications
            .into_iter()
            .filter_map(|channel| {
                let secrets = match (channel.slack, channel.webhook) {
                    (Some(slack), None) => ChannelSecrets {
                        url: slack.webhook_url,
                        secret: None,
                    },
                    (None, Some(webhook)) => ChannelSecrets {
                        url: webhook.url,
                        secret: webhook.secret,
                    },
                    _ => return None,
                };
                Some((channel.name, secrets))
            })
            .collect();
        Ok(AppliedDocument {
            spec,
            credentials: document.credentials,
            webhook_secret: document.webhook_secret,
            channel_secrets,
        })
    } else {
        Err(ConfigError { errors })
    }
}

/// Parses, resolves with `lookup` and validates in one go.
pub fn load(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<AppliedDocument, ConfigError> {
    let mut tree = parse_tree(text)?;
    resolve_variables(&mut tree, lookup)?;
    validate(tree)
}

fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric()
}

const NAME_RULE: &str =
    "must be 1 to 63 lowercase letters, digits, `-` or `_`, starting with a letter or digit";

fn build_spec(document: &AppDocument, errors: &mut Vec<FieldError>) -> AppSpec {
    let mut push = |field: String, message: String| errors.push(FieldError { field, message });

    if !is_valid_name(&document.app) {
        push("app".into(), format!("`{}` {NAME_RULE}", document.app));
    }
    if document.components.is_empty() {
        push("components".into(), "declare at least one component".into());
    }
    let mut components = BTreeSet::new();
    for (index, component) in document.components.iter().enumerate() {
        if !is_valid_name(component) {
            push(
                format!("components[{index}]"),
                format!("`{component}` {NAME_RULE}"),
            );
        }
        if !components.insert(component.as_str()) {
            push(
                format!("components[{index}]"),
                format!("component `{component}` is declared twice"),
            );
        }
    }
    for name in document.credentials.keys() {
        if !is_valid_name(name) {
            push(
                format!("credentials.{name}"),
                format!("`{name}` {NAME_RULE}"),
            );
        }
    }
    for (name, secret) in &document.credentials {
        if secret.expose().is_empty() {
            push(
                format!("credentials.{name}"),
                "the credential is empty".into(),
            );
        }
    }
    if document.environments.is_empty() {
        push(
            "environments".into(),
            "declare at least one environment".into(),
        );
    }

    let mut environment_names = BTreeSet::new();
    let mut environments = Vec::new();
    for (env_index, environment) in document.environments.iter().enumerate() {
        let at = format!("environments[{env_index}]");
        if !is_valid_name(&environment.name) {
            push(
                format!("{at}.name"),
                format!("`{}` {NAME_RULE}", environment.name),
            );
        }
        if !environment_names.insert(environment.name.as_str()) {
            push(
                format!("{at}.name"),
                format!("environment `{}` is declared twice", environment.name),
            );
        }
        if let Some(promotion) = &environment.promotion {
            let earlier = document.environments[..env_index]
                .iter()
                .any(|earlier| earlier.name == promotion.from);
            if !earlier {
                push(
                    format!("{at}.promotion.from"),
                    format!(
                        "`{}` is not an environment declared before `{}`",
                        promotion.from, environment.name
                    ),
                );
            }
        }
        if let Some(approvals) = &environment.approvals {
            if approvals.required == 0 {
                push(
                    format!("{at}.approvals.required"),
                    "must be at least 1 (leave `approvals` out to need none)".into(),
                );
            }
        }

        let mut targets = BTreeMap::new();
        for (component, raw) in &environment.targets {
            let field = format!("{at}.targets.{component}");
            if !components.contains(component.as_str()) {
                push(
                    field.clone(),
                    format!("`{component}` is not one of the app's components"),
                );
                continue;
            }
            match build_target(raw, &field, &document.credentials) {
                Ok(target) => {
                    targets.insert(component.clone(), target);
                }
                Err(mut found) => errors_extend(&mut push, &mut found),
            }
        }

        let mut phase_names = BTreeSet::new();
        let mut phases = Vec::new();
        for (phase_index, phase) in environment.plan.iter().enumerate() {
            let at = format!("{at}.plan[{phase_index}]");
            if phase.name.trim().is_empty() {
                push(format!("{at}.name"), "a phase needs a name".into());
            }
            if !phase_names.insert(phase.name.as_str()) {
                push(
                    format!("{at}.name"),
                    format!("phase `{}` is declared twice", phase.name),
                );
            }
            let context = PhaseContext {
                at: &at,
                environment,
                targets: &targets,
                prometheus_url: document.prometheus_url.as_deref(),
            };
            let built = build_phase(phase, &context);
            match built {
                Ok(spec) => phases.push(spec),
                Err(mut found) => errors_extend(&mut push, &mut found),
            }
        }
        if environment.plan.is_empty() {
            push(
                format!("{at}.plan"),
                "the plan needs at least one phase".into(),
            );
        }
        for problem in unserved_canaries(&phases, &targets) {
            push(format!("{at}.plan[{}].deploy", problem.0), problem.1);
        }
        environments.push(EnvironmentSpec {
            name: environment.name.clone(),
            auto_deploy: environment.auto_deploy.clone(),
            approvals: environment.approvals.clone(),
            concurrency: environment.concurrency,
            promotion: environment.promotion.clone(),
            targets,
            plan: Plan { phases },
        });
    }

    let notifications = build_channels(document, &environment_names, errors);
    AppSpec {
        app: document.app.clone(),
        repository: document.repository.clone(),
        components: document.components.clone(),
        credential_names: document.credentials.keys().cloned().collect(),
        has_webhook_secret: document.webhook_secret.is_some(),
        environments,
        notifications,
    }
}

/// Whether `url` may receive notifications: HTTPS, or plain HTTP to this machine (tests).
fn is_allowed_notification_url(url: &str) -> bool {
    if url.starts_with("https://") && url.len() > "https://".len() {
        return true;
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = match host.rsplit_once(':') {
        Some((name, port)) if !name.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    matches!(host, "127.0.0.1" | "localhost" | "[::1]")
}

fn build_channels(
    document: &AppDocument,
    environment_names: &BTreeSet<&str>,
    errors: &mut Vec<FieldError>,
) -> Vec<ChannelSpec> {
    let mut push = |field: String, message: String| errors.push(FieldError { field, message });
    let mut names = BTreeSet::new();
    let mut channels = Vec::new();
    for (index, channel) in document.notifications.iter().enumerate() {
        let at = format!("notifications[{index}]");
        if !is_valid_name(&channel.name) {
            push(
                format!("{at}.name"),
                format!("`{}` {NAME_RULE}", channel.name),
            );
        }
        if !names.insert(channel.name.as_str()) {
            push(
                format!("{at}.name"),
                format!("channel `{}` is declared twice", channel.name),
            );
        }
        // The URL is a secret: the messages name the field, never the value.
        let (kind, url_field, url, signed) = match (&channel.slack, &channel.webhook) {
            (Some(slack), None) => (
                ChannelKind::Slack,
                format!("{at}.slack.webhook_url"),
                &slack.webhook_url,
                false,
            ),
            (None, Some(webhook)) => {
                if webhook
                    .secret
                    .as_ref()
                    .is_some_and(|secret| secret.expose().is_empty())
                {
                    push(format!("{at}.webhook.secret"), "the secret is empty".into());
                }
                (
                    ChannelKind::Webhook,
                    format!("{at}.webhook.url"),
                    &webhook.url,
                    webhook.secret.is_some(),
                )
            }
            _ => {
                push(
                    at.clone(),
                    "give exactly one of `slack: { webhook_url }` or `webhook: { url, secret }`"
                        .into(),
                );
                continue;
            }
        };
        if !is_allowed_notification_url(url.expose()) {
            push(
                url_field,
                "must be an https:// URL (http:// only to 127.0.0.1 or localhost)".into(),
            );
        }
        for (position, environment) in channel.environments.iter().enumerate() {
            if !environment_names.contains(environment.as_str()) {
                push(
                    format!("{at}.environments[{position}]"),
                    format!("`{environment}` is not one of the app's environments"),
                );
            }
        }
        let mut events = Vec::new();
        for (position, name) in channel.events.iter().enumerate() {
            match NotificationEvent::parse(name) {
                Some(event) => events.push(event),
                None => push(
                    format!("{at}.events[{position}]"),
                    format!(
                        "`{name}` is not an event: one of {}",
                        NotificationEvent::ALL
                            .map(NotificationEvent::as_str)
                            .join(", ")
                    ),
                ),
            }
        }
        let severity = match channel.severity.as_deref() {
            None => Severity::Info,
            Some(name) => match Severity::ALL.into_iter().find(|s| s.as_str() == name) {
                Some(severity) => severity,
                None => {
                    push(
                        format!("{at}.severity"),
                        format!("`{name}` is not a severity: one of info, warning, critical"),
                    );
                    Severity::Info
                }
            },
        };
        channels.push(ChannelSpec {
            name: channel.name.clone(),
            kind,
            environments: channel.environments.clone(),
            events,
            severity,
            signed,
        });
    }
    channels
}

/// Platforms that deploy a new version at 0% traffic (Cloud Run pins traffic so a canary can
/// shift it) need a `traffic` step for it in the same phase or a later one, or the release would
/// never serve. Returns (phase index, message) for each deploy left unserved.
fn unserved_canaries(
    phases: &[PhaseSpec],
    targets: &BTreeMap<String, TargetSpec>,
) -> Vec<(usize, String)> {
    let mut problems = Vec::new();
    for (index, phase) in phases.iter().enumerate() {
        for step in &phase.steps {
            let StepSpec::Deploy { component } = step else {
                continue;
            };
            let pins_traffic = targets
                .get(component)
                .is_some_and(|target| target.provider == ProviderKind::Cloudrun);
            if !pins_traffic {
                continue;
            }
            let served = phases[index..].iter().flat_map(|p| &p.steps).any(
                |later| matches!(later, StepSpec::Traffic { component: c, .. } if c == component),
            );
            if !served {
                problems.push((
                    index,
                    format!(
                        "`{component}` is a Cloud Run target, whose new revision starts at 0% traffic: add `traffic: {{ component: {component}, percent: 100 }}` to this phase or a later one"
                    ),
                ));
            }
        }
    }
    problems
}

fn errors_extend(push: &mut impl FnMut(String, String), found: &mut Vec<FieldError>) {
    for error in found.drain(..) {
        push(error.field, error.message);
    }
}

fn build_target(
    raw: &Map<String, Value>,
    field: &str,
    credentials: &BTreeMap<String, Secret>,
) -> Result<TargetSpec, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut settings = raw.clone();
    let provider = match settings.remove("provider") {
        None => {
            return Err(vec![FieldError {
                field: format!("{field}.provider"),
                message: format!("missing: one of {}", ProviderKind::NAMES.join(", ")),
            }])
        }
        Some(Value::String(name)) => match name.parse::<ProviderKind>() {
            Ok(kind) => kind,
            Err(message) => {
                return Err(vec![FieldError {
                    field: format!("{field}.provider"),
                    message,
                }])
            }
        },
        Some(_) => {
            return Err(vec![FieldError {
                field: format!("{field}.provider"),
                message: "must be a string".into(),
            }])
        }
    };
    let credential = match settings.remove("credential") {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) => {
            if !credentials.contains_key(&name) {
                errors.push(FieldError {
                    field: format!("{field}.credential"),
                    message: format!("`{name}` is not declared under `credentials`"),
                });
            }
            Some(name)
        }
        Some(_) => {
            errors.push(FieldError {
                field: format!("{field}.credential"),
                message: "must be the name of a credential".into(),
            });
            None
        }
    };
    let health = match settings.remove("health") {
        None | Some(Value::Null) => None,
        Some(value) => match serde_path_to_error::deserialize::<_, HealthCheck>(value) {
            Ok(check) => {
                if !check.url.starts_with("http://") && !check.url.starts_with("https://") {
                    errors.push(FieldError {
                        field: format!("{field}.health.url"),
                        message: "must be an http:// or https:// URL".into(),
                    });
                }
                Some(check)
            }
            Err(error) => {
                let inner = error.path().to_string();
                errors.push(FieldError {
                    field: if inner == "." {
                        format!("{field}.health")
                    } else {
                        format!("{field}.health.{inner}")
                    },
                    message: error.into_inner().to_string(),
                });
                None
            }
        },
    };
    for problem in provider.check_settings(&settings) {
        errors.push(FieldError {
            field: if problem.key.is_empty() {
                field.to_owned()
            } else {
                format!("{field}.{}", problem.key)
            },
            message: problem.message,
        });
    }
    if provider.needs_credential() && credential.is_none() {
        errors.push(FieldError {
            field: format!("{field}.credential"),
            message: format!("the {provider} provider needs a credential"),
        });
    }
    if errors.is_empty() {
        Ok(TargetSpec {
            provider,
            settings,
            credential,
            health,
        })
    } else {
        Err(errors)
    }
}

struct PhaseContext<'a> {
    at: &'a str,
    environment: &'a EnvironmentDocument,
    targets: &'a BTreeMap<String, TargetSpec>,
    prometheus_url: Option<&'a str>,
}

/// Validates a metric gate, expanding a template into its queries.
fn prometheus_gate(
    metric: &PrometheusDocument,
    at: &str,
    app_url: Option<&str>,
    error: &mut impl FnMut(String, String),
) -> PrometheusGate {
    let url = metric.url.clone().or(app_url.map(str::to_owned));
    if url.is_none() {
        error(
            format!("{at}.url"),
            "give the Prometheus URL here or as the app's `prometheus_url`".into(),
        );
    }
    let template_only = [
        ("selector", metric.selector.is_some()),
        ("window", metric.window.is_some()),
        ("metric", metric.metric.is_some()),
        ("errors", metric.errors.is_some()),
    ];
    let (query, samples_query, default_below) = match (metric.template, &metric.query) {
        (Some(_), Some(_)) => {
            error(
                format!("{at}.query"),
                "give a `query` or a `template`, not both".into(),
            );
            (String::new(), None, None)
        }
        (None, None) => {
            error(
                format!("{at}.query"),
                "give a PromQL `query` or a `template` (error_rate, p95_latency)".into(),
            );
            (String::new(), None, None)
        }
        (None, Some(query)) => {
            if query.trim().is_empty() {
                error(format!("{at}.query"), "the query is empty".into());
            }
            for (name, given) in template_only {
                if given {
                    error(
                        format!("{at}.{name}"),
                        "only applies with a `template`".into(),
                    );
                }
            }
            (query.clone(), metric.samples_query.clone(), None)
        }
        (Some(template), None) => {
            let selector = metric.selector.as_deref().unwrap_or("").trim();
            if selector.contains(['{', '}']) {
                error(
                    format!("{at}.selector"),
                    r#"label matchers only, without braces: job="shop", env="production""#.into(),
                );
            }
            if let Some(errors) = &metric.errors {
                if errors.contains(['{', '}']) || errors.trim().is_empty() {
                    error(
                        format!("{at}.errors"),
                        r#"a label matcher without braces, e.g. status=~"5..""#.into(),
                    );
                }
            }
            if matches!(template, MetricTemplate::P95Latency) && metric.errors.is_some() {
                error(
                    format!("{at}.errors"),
                    "only applies to the error_rate template".into(),
                );
            }
            if let Some(name) = &metric.metric {
                let valid = name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                    && !name.starts_with(|c: char| c.is_ascii_digit())
                    && !name.is_empty();
                if !valid {
                    error(
                        format!("{at}.metric"),
                        "a Prometheus metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)".into(),
                    );
                }
            }
            if metric
                .window
                .is_some_and(|window| window.as_millis() < 1000)
            {
                error(
                    format!("{at}.window"),
                    "a rate window of at least 1s (Prometheus needs a few scrapes in it)".into(),
                );
            }
            let (query, samples) = template_queries(template, metric, selector);
            (
                query,
                Some(metric.samples_query.clone().unwrap_or(samples)),
                Some(template.default_below()),
            )
        }
    };
    let conditions_given =
        metric.below.is_some() || metric.above.is_some() || metric.range.is_some();
    let below = metric.below.or(default_below.filter(|_| !conditions_given));
    if below.is_none() && metric.above.is_none() && metric.range.is_none() {
        error(
            at.to_owned(),
            "give `below`, `above`, `range` or a template".into(),
        );
    }
    if let Some([min, max]) = metric.range {
        if min.partial_cmp(&max).is_none_or(|order| order.is_gt()) {
            error(
                format!("{at}.range"),
                "give [min, max] with min ≤ max".into(),
            );
        }
    }
    if metric.count == Some(0) {
        error(format!("{at}.count"), "must be at least 1".into());
    }
    if metric.count.is_some() && metric.hold.as_millis() > 0 {
        error(
            format!("{at}.for"),
            "give `count` (rounds to take) or `for` (how long passes must hold), not both".into(),
        );
    }
    if metric.count.is_some_and(|count| count < metric.failures) {
        error(
            format!("{at}.failures"),
            "a failure limit above `count` can never be reached".into(),
        );
    }
    if metric
        .min_samples
        .is_some_and(|min| min.is_nan() || min < 0.0)
    {
        error(format!("{at}.min_samples"), "must be 0 or more".into());
    }
    let samples_query = samples_query.filter(|query| !query.trim().is_empty());
    if metric.min_samples.is_some() && samples_query.is_none() {
        error(
            format!("{at}.samples_query"),
            "`min_samples` needs the query that counts the samples (templates have one)".into(),
        );
    }
    if metric.samples_query.is_some() && metric.min_samples.is_none() {
        error(
            format!("{at}.min_samples"),
            "give the minimum the `samples_query` must reach".into(),
        );
    }
    PrometheusGate {
        url: url.unwrap_or_default(),
        query,
        below,
        above: metric.above,
        range: metric.range.map(|[min, max]| (min, max)),
        interval: metric.interval,
        hold: metric.hold,
        count: metric.count,
        failures: metric.failures.max(1),
        failures_apart: true,
        consecutive_errors: metric.consecutive_errors.max(1),
        samples_query: samples_query.filter(|_| metric.min_samples.is_some()),
        min_samples: metric.min_samples,
        initial_delay: metric.initial_delay,
        no_data: metric.no_data,
        deadline: metric.deadline,
    }
}

fn build_phase(
    phase: &PhaseDocument,
    context: &PhaseContext<'_>,
) -> Result<PhaseSpec, Vec<FieldError>> {
    let at = context.at;
    let mut errors = Vec::new();
    let mut error = |field: String, message: String| errors.push(FieldError { field, message });
    let target_of = |component: &str| context.targets.get(component);
    let missing_target = |component: &str| {
        format!(
            "`{component}` has no target in environment `{}`",
            context.environment.name
        )
    };

    let mut steps = Vec::new();
    if let Some(job) = &phase.job {
        match target_of(&job.component) {
            None => error(
                format!("{at}.job.component"),
                missing_target(&job.component),
            ),
            Some(target) if !target.provider.capabilities().jobs => error(
                format!("{at}.job"),
                format!("the {} provider cannot run jobs", target.provider),
            ),
            Some(_) => {}
        }
        if job.command.trim().is_empty() {
            error(format!("{at}.job.command"), "the command is empty".into());
        }
        if job
            .down
            .as_deref()
            .is_some_and(|down| down.trim().is_empty())
        {
            error(
                format!("{at}.job.down"),
                "the down command is empty; leave it out if the job cannot be undone".into(),
            );
        }
        steps.push(StepSpec::Job {
            component: job.component.clone(),
            command: job.command.clone(),
            down: job.down.clone(),
        });
    }
    let mut deployed = BTreeSet::new();
    for (index, component) in phase.deploy.iter().enumerate() {
        if target_of(component).is_none() {
            error(format!("{at}.deploy[{index}]"), missing_target(component));
        }
        if !deployed.insert(component.as_str()) {
            error(
                format!("{at}.deploy[{index}]"),
                format!("`{component}` is deployed twice in this phase"),
            );
        }
        steps.push(StepSpec::Deploy {
            component: component.clone(),
        });
    }
    for (component, vars) in &phase.config {
        let field = format!("{at}.config.{component}");
        match target_of(component) {
            None => error(field.clone(), missing_target(component)),
            Some(target) if !target.provider.capabilities().config_vars => error(
                field.clone(),
                format!("the {} provider cannot set config vars", target.provider),
            ),
            Some(_) => {}
        }
        if vars.is_empty() {
            error(field.clone(), "name at least one variable".into());
        }
        for key in vars.keys() {
            let valid = !key.is_empty()
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
            if !valid {
                error(
                    format!("{field}.{key}"),
                    "variable names are letters, digits, `_`, `.` or `-`".into(),
                );
            }
        }
    }
    for (component, vars) in &phase.config {
        let vars = vars
            .iter()
            .map(|(key, value)| (key.clone(), value.clone().map(ConfigValue::into_string)))
            .collect();
        steps.push(StepSpec::Config {
            component: component.clone(),
            vars,
        });
    }
    if let Some(traffic) = &phase.traffic {
        match target_of(&traffic.component) {
            None => error(
                format!("{at}.traffic.component"),
                missing_target(&traffic.component),
            ),
            Some(target) if !target.provider.capabilities().traffic_split => error(
                format!("{at}.traffic"),
                format!(
                    "the {} provider cannot split traffic; use a platform that can (cloudrun, vercel) or deploy without `traffic`",
                    target.provider
                ),
            ),
            Some(_) => {}
        }
        if traffic.percent > 100 {
            error(
                format!("{at}.traffic.percent"),
                "must be between 0 and 100".into(),
            );
        }
        steps.push(StepSpec::Traffic {
            component: traffic.component.clone(),
            percent: traffic.percent,
        });
    }
    if let Some(duration) = phase.wait {
        steps.push(StepSpec::Wait { duration });
    }
    if steps.is_empty() && phase.gates.is_empty() {
        error(
            at.to_owned(),
            "the phase does nothing: give it `deploy`, `config`, `traffic`, `job`, `wait` or `gates`"
                .into(),
        );
    }

    let approvals = context.environment.approvals.as_ref();
    let mut gates = Vec::new();
    for (index, gate) in phase.gates.iter().enumerate() {
        let field = format!("{at}.gates[{index}]");
        match gate {
            GateDocument::Health(health) => {
                let components = health
                    .components
                    .clone()
                    .unwrap_or_else(|| phase.deploy.clone());
                if components.is_empty() {
                    error(
                        format!("{field}.health.components"),
                        "name the components to probe (the phase deploys none)".into(),
                    );
                }
                for (position, component) in components.iter().enumerate() {
                    match target_of(component) {
                        None => error(
                            format!("{field}.health.components[{position}]"),
                            missing_target(component),
                        ),
                        Some(target)
                            if target.health.is_none()
                                && target.provider != ProviderKind::Simulated =>
                        {
                            error(
                                format!("{field}.health.components[{position}]"),
                                format!(
                                    "`{component}` has no `health` URL in its target, so it cannot be probed"
                                ),
                            )
                        }
                        Some(_) => {}
                    }
                }
                if health.failures == 0 || health.successes == 0 {
                    error(
                        format!("{field}.health"),
                        "`failures` and `successes` must be at least 1".into(),
                    );
                }
                if health.interval.as_millis() < 100 {
                    error(
                        format!("{field}.health.interval"),
                        "must be at least 100ms".into(),
                    );
                }
                gates.push(GateSpec::Health(HealthGate {
                    components,
                    interval: health.interval,
                    timeout: health.timeout,
                    failures: health.failures,
                    successes: health.successes,
                    initial_delay: health.initial_delay,
                    deadline: health.deadline,
                }));
            }
            GateDocument::Soak(duration) => gates.push(GateSpec::Soak {
                duration: *duration,
            }),
            GateDocument::Approval(approval) => {
                let required = approval
                    .required
                    .or(approvals.map(|a| a.required))
                    .unwrap_or(1);
                if required == 0 {
                    error(
                        format!("{field}.approval.required"),
                        "must be at least 1".into(),
                    );
                }
                gates.push(GateSpec::Approval {
                    required,
                    timeout: approval
                        .timeout
                        .or(approvals.map(|a| a.timeout))
                        .unwrap_or_else(default_approval_timeout),
                });
            }
            GateDocument::Prometheus(metric) => {
                gates.push(GateSpec::Prometheus(prometheus_gate(
                    metric,
                    &format!("{field}.prometheus"),
                    context.prometheus_url,
                    &mut error,
                )));
            }
            GateDocument::Webhook(webhook) => {
                if !webhook.url.starts_with("http://") && !webhook.url.starts_with("https://") {
                    error(
                        format!("{field}.webhook.url"),
                        "must be an http:// or https:// URL".into(),
                    );
                }
                gates.push(GateSpec::Webhook(WebhookGate {
                    url: webhook.url.clone(),
                    interval: webhook.interval,
                    timeout: webhook.timeout,
                    failures: webhook.failures.max(1),
                }));
            }
        }
    }
    if errors.is_empty() {
        Ok(PhaseSpec {
            name: phase.name.clone(),
            steps,
            gates,
            on_failure: phase.on_failure,
        })
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLASS_CHAT: &str = r#"
app: class-chat
repository: acme/class-chat
components: [frontend, node-api, python-ai]
credentials:
  heroku: ${HEROKU_API_KEY}
  vercel: ${VERCEL_TOKEN}
prometheus_url: http://prometheus.internal:9090
environments:
  - name: production
    auto_deploy: { branch: main }
    approvals: { required: 1, allow_self_approval: false }
    targets:
      frontend:  { provider: vercel, project_id: prj_class_chat, credential: vercel }
      node-api:  { provider: heroku, app: class-chat-node, credential: heroku,
                   health: { url: "https://class-chat-node.example/api/v1/user/auth-status" } }
      python-ai: { provider: heroku, app: class-chat-python, credential: heroku,
                   health: { url: "https://class-chat-python.example/health", json: { path: status, equals: healthy } } }
    plan:
      - name: backend
        deploy: [python-ai, node-api]
        gates:
          - health: { components: [python-ai, node-api], interval: 30s, timeout: 10s, failures: 3 }
        on_failure: rollback
      - name: frontend
        deploy: [frontend]
        gates:
          - prometheus: { query: 'sum(rate(x[5m]))', below: 0.01, for: 5m, no_data: inconclusive }
        on_failure: rollback
      - name: ocr
        config: { python-ai: { ENABLE_OCR: "true" } }
        gates: [ { approval: {} } ]
        on_failure: pause
"#;

    fn env(name: &str) -> Option<String> {
        match name {
            "HEROKU_API_KEY" => Some("heroku-secret".into()),
            "VERCEL_TOKEN" => Some("vercel-secret".into()),
            _ => None,
        }
    }

    fn errors_of(text: &str) -> Vec<FieldError> {
        load(text, &env)
            .expect_err("document should be refused")
            .errors
    }

    #[test]
    fn the_design_example_validates_into_three_phases() {
        let applied = load(CLASS_CHAT, &env).unwrap();
        let production = &applied.spec.environments[0];
        assert_eq!(production.plan.phases.len(), 3);
        assert_eq!(applied.credentials["heroku"].expose(), "heroku-secret");
        assert_eq!(
            production.plan.phases[2].steps,
            vec![StepSpec::Config {
                component: "python-ai".into(),
                vars: BTreeMap::from([("ENABLE_OCR".into(), Some("true".into()))]),
            }]
        );
        let json = serde_json::to_string(&applied.spec).unwrap();
        assert!(
            !json.contains("heroku-secret"),
            "the spec must hold no secret"
        );
    }

    /// CLASS_CHAT with the frontend phase's metric gate replaced by `gate`.
    fn with_metric_gate(gate: &str) -> String {
        CLASS_CHAT.replace(
            "- prometheus: { query: 'sum(rate(x[5m]))', below: 0.01, for: 5m, no_data: inconclusive }",
            &format!("- prometheus: {gate}"),
        )
    }

    fn metric_gate_of(gate: &str) -> PrometheusGate {
        let applied = load(&with_metric_gate(gate), &env).unwrap();
        match &applied.spec.environments[0].plan.phases[1].gates[0] {
            GateSpec::Prometheus(gate) => gate.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn metric_templates_expand_to_the_seeds_thresholds_and_a_sample_count() {
        let errors = metric_gate_of(
            r#"{ template: error_rate, selector: 'job="web"', window: 2m, min_samples: 100, count: 5, failures: 2 }"#,
        );
        assert_eq!(
            errors.query,
            r#"(sum(rate(http_requests_total{job="web",code=~"5.."}[120s])) or vector(0)) / sum(rate(http_requests_total{job="web"}[120s]))"#
        );
        assert_eq!(
            errors.samples_query.as_deref(),
            Some(r#"sum(increase(http_requests_total{job="web"}[120s]))"#)
        );
        assert_eq!(
            (errors.below, errors.count, errors.failures),
            (Some(0.01), Some(5), 2)
        );
        assert_eq!(errors.consecutive_errors, 4, "the default");
        let latency = metric_gate_of("{ template: p95_latency, metric: rpc_seconds }");
        assert_eq!(
            latency.query,
            "histogram_quantile(0.95, sum by (le) (rate(rpc_seconds_bucket[300s])))"
        );
        assert_eq!(latency.below, Some(2.0));
        assert_eq!(latency.samples_query, None, "no minimum, no samples query");
        let ranged = metric_gate_of("{ query: 'up', range: [0.5, 1.5] }");
        assert_eq!((ranged.below, ranged.range), (None, Some((0.5, 1.5))));
        let custom =
            metric_gate_of("{ template: error_rate, below: 0.05, errors: 'status=~\"5..\"' }");
        assert!(
            custom.query.contains(r#"status=~"5..""#),
            "{}",
            custom.query
        );
        assert_eq!(custom.below, Some(0.05));
    }

    #[test]
    fn metric_gates_that_cannot_work_are_refused_naming_the_field() {
        let at = "environments[0].plan[1].gates[0].prometheus";
        for (gate, field, words) in [
            ("{ query: 'up', template: error_rate }", "query", "not both"),
            ("{ below: 1 }", "query", "template"),
            ("{ query: 'up' }", "", "`below`, `above`, `range`"),
            (
                "{ query: 'up', below: 1, count: 3, for: 1m }",
                "for",
                "not both",
            ),
            (
                "{ query: 'up', below: 1, count: 2, failures: 3 }",
                "failures",
                "never be reached",
            ),
            (
                "{ query: 'up', below: 1, min_samples: 10 }",
                "samples_query",
                "counts the samples",
            ),
            (
                "{ query: 'up', below: 1, selector: 'job=\"x\"' }",
                "selector",
                "template",
            ),
            (
                "{ template: error_rate, selector: '{job=\"x\"}' }",
                "selector",
                "braces",
            ),
            ("{ query: 'up', range: [2, 1] }", "range", "min ≤ max"),
            (
                "{ template: p95_latency, metric: '9lives' }",
                "metric",
                "metric name",
            ),
        ] {
            let errors = errors_of(&with_metric_gate(gate));
            let expected = if field.is_empty() {
                at.to_owned()
            } else {
                format!("{at}.{field}")
            };
            assert!(
                errors
                    .iter()
                    .any(|e| e.field == expected && e.message.contains(words)),
                "{gate}: {errors:?}"
            );
        }
    }

    #[test]
    fn an_unset_variable_names_the_field_it_stands_in() {
        let errors = load(CLASS_CHAT, &|name| {
            (name == "HEROKU_API_KEY").then(|| "k".to_owned())
        })
        .unwrap_err()
        .errors;
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "credentials.vercel");
        assert!(errors[0].message.contains("VERCEL_TOKEN"));
    }

    #[test]
    fn a_doubled_dollar_writes_a_literal_reference() {
        let mut tree = serde_json::json!({ "a": "cost $${HOME} and ${X}" });
        resolve_variables(&mut tree, &|_| Some("1".into())).unwrap();
        assert_eq!(tree["a"], "cost ${HOME} and 1");
    }

    #[test]
    fn unknown_fields_are_named() {
        let errors = errors_of(&CLASS_CHAT.replace(
            "on_failure: pause",
            "on_failure: pause\n        colour: red",
        ));
        assert_eq!(errors[0].field, "environments[0].plan[2].colour");
        assert!(errors[0].message.contains("colour"), "{:?}", errors);
    }

    #[test]
    fn wrong_types_are_named() {
        let errors = errors_of(&CLASS_CHAT.replace("failures: 3", "failures: lots"));
        assert_eq!(
            errors[0].field,
            "environments[0].plan[0].gates[0].health.failures"
        );
    }

    #[test]
    fn unknown_providers_and_components_are_named() {
        let errors = errors_of(&CLASS_CHAT.replace("provider: vercel", "provider: netlify"));
        assert_eq!(errors[0].field, "environments[0].targets.frontend.provider");
        assert!(errors[0].message.contains("netlify"));

        let errors = errors_of(&CLASS_CHAT.replace("deploy: [frontend]", "deploy: [backend]"));
        assert_eq!(errors[0].field, "environments[0].plan[1].deploy[0]");
    }

    #[test]
    fn duplicate_names_are_refused() {
        let errors = errors_of(&CLASS_CHAT.replace(
            "[frontend, node-api, python-ai]",
            "[frontend, node-api, python-ai, frontend]",
        ));
        assert_eq!(errors[0].field, "components[3]");
        let errors = errors_of(&CLASS_CHAT.replace("name: frontend\n", "name: backend\n"));
        assert_eq!(errors[0].field, "environments[0].plan[1].name");
    }

    #[test]
    fn traffic_on_a_platform_that_cannot_split_is_refused() {
        let errors = errors_of(&CLASS_CHAT.replace(
            "deploy: [python-ai, node-api]",
            "deploy: [python-ai, node-api]\n        traffic: { component: node-api, percent: 10 }",
        ));
        assert_eq!(errors[0].field, "environments[0].plan[0].traffic");
        assert!(errors[0].message.contains("heroku"));
    }

    #[test]
    fn missing_provider_settings_and_credentials_are_named() {
        let errors =
            errors_of(&CLASS_CHAT.replace("app: class-chat-node, credential: heroku,", ""));
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert!(
            fields.contains(&"environments[0].targets.node-api.app"),
            "{fields:?}"
        );
        assert!(
            fields.contains(&"environments[0].targets.node-api.credential"),
            "{fields:?}"
        );
    }

    #[test]
    fn a_cloud_run_deploy_without_a_later_traffic_step_is_refused() {
        let document = |traffic: &str| {
            format!(
                "app: rag\ncomponents: [api]\ncredentials: {{ gcp: t }}\nenvironments:\n  - name: production\n    targets:\n      api: {{ provider: cloudrun, project: p, region: r, service: s, credential: gcp }}\n    plan:\n      - {{ name: canary, deploy: [api] }}\n      - {{ name: full, {traffic} }}\n"
            )
        };
        let errors = load(&document("wait: 1s"), &|_| None).unwrap_err().errors;
        assert_eq!(errors[0].field, "environments[0].plan[0].deploy");
        assert!(errors[0].message.contains("0% traffic"), "{errors:?}");
        assert!(load(
            &document("traffic: { component: api, percent: 100 }"),
            &|_| None
        )
        .is_ok());
    }

    #[test]
    fn auto_deploy_matches_branch_globs_paths_and_tags() {
        let rule = AutoDeploy {
            branch: "release/*".into(),
            paths: vec!["api/*".into(), "Cargo.lock".into()],
            tags: false,
        };
        let files = |list: &[&str]| list.iter().map(|f| f.to_string()).collect::<Vec<_>>();
        let api = files(&["api/src/main.rs"]);
        let docs = files(&["docs/index.md"]);
        assert_eq!(
            rule.admits(PushedRef::Branch("release/1.4"), Some(&api)),
            Ok(())
        );
        assert!(rule
            .admits(PushedRef::Branch("release/1.4"), Some(&docs))
            .unwrap_err()
            .contains("auto_deploy.paths"));
        // Without a full file list the path filter cannot rule a push out.
        assert_eq!(rule.admits(PushedRef::Branch("release/1.4"), None), Ok(()));
        assert!(rule
            .admits(PushedRef::Branch("main"), Some(&api))
            .unwrap_err()
            .contains("does not match"));
        assert!(rule.admits(PushedRef::Tag("v1.4.0"), None).is_err());
        let tags = AutoDeploy {
            branch: "main".into(),
            paths: Vec::new(),
            tags: true,
        };
        assert_eq!(tags.admits(PushedRef::Tag("v1.4.0"), Some(&docs)), Ok(()));
        assert_eq!(tags.admits(PushedRef::Branch("main"), Some(&docs)), Ok(()));
    }

    #[test]
    fn json_documents_are_accepted() {
        let json = r#"{"app":"demo","components":["web"],"environments":[{"name":"staging",
            "targets":{"web":{"provider":"simulated"}},"plan":[{"name":"all","deploy":["web"]}]}]}"#;
        let applied = load(json, &|_| None).unwrap();
        assert_eq!(
            applied.spec.environments[0].plan.phases[0].on_failure,
            OnFailure::Rollback
        );
    }
}
