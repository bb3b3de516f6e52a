//! The client commands CI and people run against a Shipgate server: `apply`, `release create`,
//! `deploy`, `promote`, `rollback`, the rollout actions (`pause`, `resume`, `cancel`, `approve`,
//! `reject`) and `status`. `--wait` follows a rollout to its verdict with the long-poll API and
//! turns the verdict into the exit code, so a CI job fails when the deploy does.
//!
//! Output: `--output text` (default) for people; `--output json` prints exactly one JSON
//! document on stdout (the server's answer, or the verdict object of `--wait`). Progress, notes
//! and errors always go to stderr. The token is never printed.
//!
//! Exit codes (also printed by `--help`):
//!
//! | code | meaning |
//! |---|---|
//! | 0 | succeeded: the command did what it said; with `--wait`, the rollout succeeded |
//! | 1 | error: network, bad input, or a server error |
//! | 2 | usage: bad flags or arguments (clap's own) |
//! | 3 | the rollout failed, was cancelled or superseded, or its rollback failed |
//! | 4 | the rollout was rolled back |
//! | 5 | timed out waiting (`--timeout`); the rollout itself goes on |
//! | 6 | refused: the token (401/403), or the server refused by policy or state (409, 423, or a 422 naming no field) |

use std::collections::BTreeMap;
use std::fmt;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand, ValueEnum};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use shipgate_domain::Span;

use crate::config::{redact_url, ClientConfig};

/// The exit codes, as `--help` shows them.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  succeeded (with --wait: the rollout succeeded)
  1  error: network, bad input, or a server error
  2  usage: bad flags or arguments
  3  the rollout failed, was cancelled or superseded, or its rollback failed
  4  the rollout was rolled back
  5  timed out waiting (--timeout); the rollout itself goes on
  6  refused: bad or missing rights (401/403), or the server refused by policy or state
     (409/423, or a 422 naming no field: a release with other content, a quarantined
     release, a rollout that cannot be paused now, ...)";

/// How long one request may take, long-polls aside.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest single long-poll (the server caps it at 120 s).
const LONG_POLL: Duration = Duration::from_secs(30);
/// Attempts of one request that meets a connection error, a 429 or a 502/503/504.
const ATTEMPTS: u32 = 4;

/// Why a client command exits, as a process exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// 0: it worked.
    Succeeded,
    /// 1: network, bad input, or a server error.
    Error,
    /// 3: the rollout failed, was cancelled or superseded, or its rollback failed.
    Failed,
    /// 4: the rollout was rolled back.
    RolledBack,
    /// 5: the wait ran out before the rollout ended.
    TimedOut,
    /// 6: the server refused: credentials, policy or state.
    Refused,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Exit::Succeeded => 0,
            Exit::Error => 1,
            Exit::Failed => 3,
            Exit::RolledBack => 4,
            Exit::TimedOut => 5,
            Exit::Refused => 6,
        }
    }

    /// The exit for a finished rollout's outcome (its terminal state).
    pub fn for_outcome(outcome: &str) -> Self {
        match outcome {
            "succeeded" => Exit::Succeeded,
            "rolled_back" => Exit::RolledBack,
            _ => Exit::Failed,
        }
    }
}

/// An error that ends a client command with a chosen exit code. Without a message the command
/// has already said everything (a verdict printed on stdout).
#[derive(Debug)]
pub struct Failure {
    /// The exit code.
    pub exit: Exit,
    /// What to print on stderr after `error: `.
    pub message: Option<String>,
}

impl Failure {
    fn error(message: impl Into<String>) -> Self {
        Failure {
            exit: Exit::Error,
            message: Some(message.into()),
        }
    }

    fn silent(exit: Exit) -> Self {
        Failure {
            exit,
            message: None,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.message {
            Some(message) => formatter.write_str(message),
            None => write!(formatter, "exit {}", self.exit.code()),
        }
    }
}

impl std::error::Error for Failure {}

/// Reports a command's error on stderr and picks the exit code: a [`Failure`] carries its own,
/// anything else exits 1.
pub fn report(error: &anyhow::Error) -> ExitCode {
    match error.downcast_ref::<Failure>() {
        Some(failure) => {
            if let Some(message) = &failure.message {
                eprintln!("error: {message}");
            }
            ExitCode::from(failure.exit.code())
        }
        None => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// What the commands print on stdout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Sentences for people.
    #[default]
    Text,
    /// One JSON document (the server's answer, or the verdict of `--wait`), nothing else.
    Json,
}

/// Where to talk to, as whom, and how to print: shared by every client command.
#[derive(Args, Clone)]
pub struct Common {
    #[command(flatten)]
    client: ClientConfig,
    /// `text` for people; `json` prints one JSON document on stdout (progress goes to stderr).
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

/// Following a rollout to its end.
#[derive(Args, Clone)]
pub struct WaitArgs {
    /// Follow the rollout until it ends and exit with its verdict (see the exit codes).
    #[arg(long)]
    wait: bool,
    /// With --wait: stop waiting after this long (exit 5); the rollout itself goes on.
    #[arg(long, default_value = "30m", value_name = "DURATION")]
    timeout: Span,
}

/// The client commands.
#[derive(Subcommand)]
pub enum ClientCommand {
    /// Releases: immutable bundles of one artifact per component.
    #[command(subcommand)]
    Release(ReleaseCommand),
    /// Deploy a release into an environment (it starts, waits for approvals, or queues).
    #[command(after_help = EXIT_CODES)]
    Deploy(StartArgs),
    /// Promote a release into an environment (a deploy of a release an earlier stage ran).
    #[command(after_help = EXIT_CODES)]
    Promote(StartArgs),
    /// Roll an environment back to its last known-good release, or to the one given.
    #[command(after_help = EXIT_CODES)]
    Rollback(RollbackArgs),
    /// Pause a rollout between steps.
    #[command(after_help = EXIT_CODES)]
    Pause(ActionArgs),
    /// Resume a paused rollout.
    #[command(after_help = EXIT_CODES)]
    Resume(ActionArgs),
    /// Cancel a rollout (what it deployed stays; roll back to undo it).
    #[command(after_help = EXIT_CODES)]
    Cancel(ActionArgs),
    /// Approve what a rollout waits on (the environment's approvals or a phase's gate).
    #[command(after_help = EXIT_CODES)]
    Approve(ActionArgs),
    /// Reject what a rollout waits on, saying why.
    #[command(after_help = EXIT_CODES)]
    Reject(RejectArgs),
    /// What runs in an app's environments: live release, rollout in flight, auto-deploy pause.
    #[command(after_help = EXIT_CODES)]
    Status(StatusArgs),
}

/// `release ...`.
#[derive(Subcommand)]
pub enum ReleaseCommand {
    /// Create a release. Idempotent on version: the same content again is fine (exit 0), other
    /// content under the same version is refused (exit 6).
    #[command(after_help = EXIT_CODES)]
    Create(CreateRelease),
}

/// `release create`.
#[derive(Args)]
pub struct CreateRelease {
    /// The app.
    #[arg(long)]
    app: String,
    /// The version label, unique per app (`1.4.0`, a commit sha).
    #[arg(long)]
    version: String,
    /// The commit. Without --artifact, every component's artifact is this commit.
    #[arg(long)]
    git_sha: Option<String>,
    /// The ref (`refs/heads/main`).
    #[arg(long)]
    git_ref: Option<String>,
    /// One component's artifact: an image, slug id or git ref, or a JSON object. Repeat per
    /// component.
    #[arg(long = "artifact", value_name = "COMPONENT=REF", value_parser = parse_artifact)]
    artifacts: Vec<(String, Value)>,
    /// Free text (commit message, changelog).
    #[arg(long)]
    notes: Option<String>,
    #[command(flatten)]
    common: Common,
}

/// `deploy` and `promote`.
#[derive(Args)]
pub struct StartArgs {
    /// The app.
    #[arg(long)]
    app: String,
    /// The environment.
    #[arg(long = "env", value_name = "ENVIRONMENT")]
    environment: String,
    /// The release version.
    #[arg(long)]
    release: String,
    #[command(flatten)]
    wait: WaitArgs,
    #[command(flatten)]
    common: Common,
}

/// `rollback`.
#[derive(Args)]
pub struct RollbackArgs {
    /// The app.
    #[arg(long)]
    app: String,
    /// The environment.
    #[arg(long = "env", value_name = "ENVIRONMENT")]
    environment: String,
    /// Why (kept in the rollback history).
    #[arg(long)]
    reason: String,
    /// The release to return to (default: the last known-good one).
    #[arg(long = "to", value_name = "VERSION")]
    to_release: Option<String>,
    /// Roll back although the release being undone is forward-only (its database migrations
    /// and other one-way changes stay); without it such a rollback is refused (exit 6).
    #[arg(long)]
    confirm_forward_only: bool,
    #[command(flatten)]
    wait: WaitArgs,
    #[command(flatten)]
    common: Common,
}

/// `pause`, `resume`, `cancel`, `approve`.
#[derive(Args)]
pub struct ActionArgs {
    /// The rollout's id.
    #[arg(value_name = "ROLLOUT_ID")]
    rollout: String,
    /// A comment for the audit log.
    #[arg(long)]
    comment: Option<String>,
    #[command(flatten)]
    common: Common,
}

/// `reject`.
#[derive(Args)]
pub struct RejectArgs {
    /// The rollout's id.
    #[arg(value_name = "ROLLOUT_ID")]
    rollout: String,
    /// Why it is rejected.
    #[arg(long)]
    comment: String,
    #[command(flatten)]
    common: Common,
}

/// `status`.
#[derive(Args)]
pub struct StatusArgs {
    /// The app.
    #[arg(long)]
    app: String,
    /// One environment (default: every environment of the app).
    #[arg(long = "env", value_name = "ENVIRONMENT")]
    environment: Option<String>,
    #[command(flatten)]
    common: Common,
}

fn parse_artifact(text: &str) -> Result<(String, Value), String> {
    let (component, reference) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not COMPONENT=REF"))?;
    let (component, reference) = (component.trim(), reference.trim());
    if component.is_empty() || reference.is_empty() {
        return Err(format!("`{text}` is not COMPONENT=REF"));
    }
    let artifact = if reference.starts_with('{') {
        serde_json::from_str(reference)
            .map_err(|error| format!("the artifact of {component} is not a JSON object: {error}"))?
    } else {
        Value::String(reference.to_owned())
    };
    Ok((component.to_owned(), artifact))
}

/// Runs a client command.
pub async fn run(command: ClientCommand) -> anyhow::Result<()> {
    match command {
        ClientCommand::Release(ReleaseCommand::Create(args)) => create_release(args).await?,
        ClientCommand::Deploy(args) => start(args, "deploy").await?,
        ClientCommand::Promote(args) => start(args, "promote").await?,
        ClientCommand::Rollback(args) => rollback(args).await?,
        ClientCommand::Pause(args) => act(args, "pause").await?,
        ClientCommand::Resume(args) => act(args, "resume").await?,
        ClientCommand::Cancel(args) => act(args, "cancel").await?,
        ClientCommand::Approve(args) => act(args, "approve").await?,
        ClientCommand::Reject(args) => {
            act(
                ActionArgs {
                    rollout: args.rollout,
                    comment: Some(args.comment),
                    common: args.common,
                },
                "reject",
            )
            .await?
        }
        ClientCommand::Status(args) => status(args).await?,
    }
    Ok(())
}

/// An answer from the server: its status and its body (JSON, or the text as a JSON string).
struct Answer {
    status: StatusCode,
    body: Value,
    retry_after: Option<Duration>,
}

/// The server's URL and the token, with the HTTP plumbing every command shares.
struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

/// Whether an answer is worth asking again for: the request did not run (or is safe to repeat).
/// A 409 with `Retry-After` is the server saying an earlier attempt with the same
/// `Idempotency-Key` is still running (after a proxy's 502/504, say): asking again gets its
/// answer once it is done. Other 409s are refusals.
fn transient(answer: &Answer) -> bool {
    match answer.status.as_u16() {
        429 | 502 | 503 | 504 => true,
        409 => answer.retry_after.is_some(),
        _ => false,
    }
}

/// A transport error with its causes, without the URL (the caller names the server).
fn describe(error: &reqwest::Error) -> String {
    let mut text = if error.is_timeout() {
        "timed out".to_owned()
    } else if error.is_connect() {
        "could not connect".to_owned()
    } else {
        "the request failed".to_owned()
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

impl Api {
    fn new(client: &ClientConfig) -> Result<Self, Failure> {
        let token = client
            .token
            .as_deref()
            .map(str::trim)
            .filter(|token| !token.is_empty())
            // No rights at all: refused (6) like a token the server turns down, so CI
            // tells a missing secret apart from an outage.
            .ok_or(Failure {
                exit: Exit::Refused,
                message: Some("set SHIPGATE_TOKEN (or --token) to a Shipgate API token".into()),
            })?
            .to_owned();
        let base = client.url.trim().trim_end_matches('/').to_owned();
        reqwest::Url::parse(&base).map_err(|error| {
            Failure::error(format!(
                "SHIPGATE_URL `{}` is not a URL: {error}",
                redact_url(&base)
            ))
        })?;
        let http = reqwest::Client::builder()
            .user_agent(concat!("shipgate-cli/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|error| Failure::error(format!("starting the HTTP client: {error}")))?;
        Ok(Api { http, base, token })
    }

    /// The server, for messages (credentials in the URL hidden).
    fn server(&self) -> String {
        redact_url(&self.base)
    }

    /// One request, no retries: a transport error comes back as `Err`.
    async fn once(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
        timeout: Duration,
    ) -> Result<Answer, reqwest::Error> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(timeout);
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = response.text().await?;
        let body = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok(Answer {
            status,
            body,
            retry_after,
        })
    }

    /// A request, asked again when it did not reach the server or the server could not take it
    /// (429, 502, 503, 504). Mutations carry one `Idempotency-Key` across attempts, so a repeat
    /// never does the thing twice.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, Failure> {
        let key = (method != Method::GET).then(|| uuid::Uuid::new_v4().to_string());
        let mut delay = Duration::from_millis(500);
        for attempt in 1..=ATTEMPTS {
            let last = attempt == ATTEMPTS;
            match self
                .once(method.clone(), path, body, key.as_deref(), REQUEST_TIMEOUT)
                .await
            {
                Ok(answer) if transient(&answer) && !last => {
                    let pause = answer
                        .retry_after
                        .unwrap_or(delay)
                        .min(Duration::from_secs(30));
                    eprintln!(
                        "{} answered {}; trying again in {}s",
                        self.server(),
                        answer.status,
                        pause.as_secs_f32()
                    );
                    tokio::time::sleep(pause).await;
                }
                Ok(answer) => return Ok(answer),
                // Only errors where the request never reached the server are safe to repeat
                // without asking: a timed-out mutation may be running still.
                Err(error) if error.is_connect() && !last => {
                    eprintln!(
                        "cannot reach {} ({}); trying again in {}s",
                        self.server(),
                        describe(&error),
                        delay.as_secs_f32()
                    );
                    tokio::time::sleep(delay).await;
                }
                Err(error) => {
                    return Err(Failure::error(format!(
                        "{method} {}{path}: {}",
                        self.server(),
                        describe(&error)
                    )))
                }
            }
            delay *= 2;
        }
        unreachable!("the last attempt returns")
    }

    async fn get(&self, path: &str) -> Result<Answer, Failure> {
        self.call(Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: &Value) -> Result<Answer, Failure> {
        self.call(Method::POST, path, Some(body)).await
    }
}

/// The server's problem+json as a [`Failure`]: `what` failed or was refused, with the detail
/// and every field at fault.
fn problem(what: &str, answer: &Answer) -> Failure {
    let status = answer.status;
    let errors: Vec<(String, String)> = answer.body["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|error| {
                    (
                        error["field"].as_str().unwrap_or("").to_owned(),
                        error["message"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let detail = match &answer.body {
        Value::Object(problem) => problem
            .get("detail")
            .and_then(Value::as_str)
            .map(str::to_owned),
        // Not ours (a proxy's page): a line of it is enough.
        Value::String(text) => text
            .lines()
            .map(str::trim)
            .find(|line| !line.is_empty())
            .map(|line| line.chars().take(200).collect()),
        _ => None,
    }
    .unwrap_or_else(|| status.canonical_reason().unwrap_or("no detail").to_owned());
    let exit = match status.as_u16() {
        401 | 403 | 409 | 423 => Exit::Refused,
        422 if errors.is_empty() => Exit::Refused,
        _ => Exit::Error,
    };
    let verb = if exit == Exit::Refused {
        "was refused"
    } else {
        "failed"
    };
    let mut message = format!("{what} {verb} ({status}): {detail}");
    let only_the_detail =
        errors.len() == 1 && detail == format!("{}: {}", errors[0].0, errors[0].1);
    if !only_the_detail {
        for (field, field_message) in &errors {
            message.push_str(&format!("\n  {field}: {field_message}"));
        }
    }
    if status == StatusCode::UNAUTHORIZED {
        message.push_str("\n  check SHIPGATE_TOKEN (or --token)");
    }
    Failure {
        exit,
        message: Some(message),
    }
}

/// A path segment, percent-encoded.
fn segment(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

/// `apply -f`: validates a config file locally, resolving `${VAR}` from this environment, and
/// sends it.
pub async fn apply(file: &Path, dry_run: bool, client: &ClientConfig) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file)
        .map_err(|error| Failure::error(format!("reading {}: {error}", file.display())))?;
    let mut tree = shipgate_domain::config::parse_tree(&text)?;
    shipgate_domain::config::resolve_variables(&mut tree, &|name| std::env::var(name).ok())?;
    let document = shipgate_domain::config::validate(tree.clone())?;
    let app = &document.spec.app;
    if dry_run {
        println!(
            "{app}: valid ({} environments)",
            document.spec.environments.len()
        );
        return Ok(());
    }
    let api = Api::new(client)?;
    let answer = api
        .call(
            Method::PUT,
            &format!("/api/v1/apps/{}", segment(app)),
            Some(&tree),
        )
        .await?;
    if !answer.status.is_success() {
        return Err(problem(&format!("applying {}", file.display()), &answer).into());
    }
    let changes = answer.body["changes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if changes.is_empty() {
        println!("{app}: unchanged");
    } else {
        println!("{app}:");
        for change in changes {
            println!("  {}", change.as_str().unwrap_or_default());
        }
    }
    Ok(())
}

async fn create_release(args: CreateRelease) -> Result<(), Failure> {
    let api = Api::new(&args.common.client)?;
    let app_path = format!("/api/v1/apps/{}", segment(&args.app));
    let mut artifacts: BTreeMap<String, Value> = args.artifacts.into_iter().collect();
    if artifacts.is_empty() {
        let sha = args.git_sha.as_deref().ok_or_else(|| {
            Failure::error("give each component's artifact with --artifact COMPONENT=REF, or --git-sha to use the commit for every component")
        })?;
        let answer = api.get(&app_path).await?;
        if !answer.status.is_success() {
            return Err(problem(&format!("reading app {}", args.app), &answer));
        }
        for component in answer.body["spec"]["components"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            artifacts.insert(component.to_owned(), Value::String(sha.to_owned()));
        }
    }
    let mut body = json!({ "version": args.version, "artifacts": artifacts });
    for (key, value) in [
        ("git_sha", &args.git_sha),
        ("git_ref", &args.git_ref),
        ("notes", &args.notes),
    ] {
        if let Some(value) = value {
            body[key] = json!(value);
        }
    }
    let answer = api.post(&format!("{app_path}/releases"), &body).await?;
    let what = format!("release {} of {}", args.version, args.app);
    let existed = match answer.status.as_u16() {
        201 => false,
        200 => true,
        _ => return Err(problem(&format!("creating {what}"), &answer)),
    };
    match args.common.output {
        Output::Json => print_json(&answer.body),
        Output::Text if existed => {
            println!("{what} already exists with the same content; nothing to do")
        }
        Output::Text => println!(
            "created {what} ({})",
            artifacts
                .iter()
                .map(|(component, artifact)| match artifact {
                    Value::String(reference) => format!("{component}={reference}"),
                    other => format!("{component}={other}"),
                })
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
    Ok(())
}

/// A rollout in one line: `rollout <id>: deploy of 1.4.0 to shop/staging`.
fn rollout_label(rollout: &Value) -> String {
    format!(
        "rollout {}: {} of {} to {}/{}",
        rollout["id"].as_str().unwrap_or("?"),
        rollout["kind"].as_str().unwrap_or("rollout"),
        rollout["release"].as_str().unwrap_or("?"),
        rollout["app"].as_str().unwrap_or("?"),
        rollout["environment"].as_str().unwrap_or("?"),
    )
}

/// What a rollout's state means to someone waiting for it.
fn state_note(rollout: &Value) -> String {
    let id = rollout["id"].as_str().unwrap_or("?");
    let state = rollout["state"].as_str().unwrap_or("unknown");
    let reason = rollout["state_reason"].as_str();
    let because = reason.map(|r| format!(": {r}")).unwrap_or_default();
    match state {
        "queued" => "queued behind the rollout that holds the environment".to_owned(),
        "pending_approval" => {
            format!("waiting for approval (shipgate approve {id}){because}")
        }
        "paused" => format!("paused{because} (shipgate resume {id} to go on)"),
        "in_progress" => "in progress".to_owned(),
        "rolling_back" => format!("rolling back{because}"),
        other => format!("{}{because}", other.replace('_', " ")),
    }
}

/// Starts a rollout (`deploy`, `promote`) and, with `--wait`, follows it.
async fn start(args: StartArgs, kind: &str) -> Result<(), Failure> {
    let api = Api::new(&args.common.client)?;
    let answer = api
        .post(
            &format!(
                "/api/v1/apps/{}/environments/{}/rollouts",
                segment(&args.app),
                segment(&args.environment)
            ),
            &json!({ "release": args.release, "kind": kind }),
        )
        .await?;
    if !answer.status.is_success() {
        return Err(problem(
            &format!(
                "{kind} of {} to {}/{}",
                args.release, args.app, args.environment
            ),
            &answer,
        ));
    }
    started(&api, answer.body, &args.wait, args.common.output).await
}

/// `rollback`, and with `--wait`, follows the rollback.
async fn rollback(args: RollbackArgs) -> Result<(), Failure> {
    let api = Api::new(&args.common.client)?;
    let mut body = json!({ "reason": args.reason });
    if args.confirm_forward_only {
        body["confirm_forward_only"] = json!(true);
    }
    if let Some(to) = &args.to_release {
        body["to_release"] = json!(to);
    }
    let answer = api
        .post(
            &format!(
                "/api/v1/apps/{}/environments/{}/rollback",
                segment(&args.app),
                segment(&args.environment)
            ),
            &body,
        )
        .await?;
    if !answer.status.is_success() {
        return Err(problem(
            &format!("rollback of {}/{}", args.app, args.environment),
            &answer,
        ));
    }
    started(&api, answer.body, &args.wait, args.common.output).await
}

async fn started(
    api: &Api,
    rollout: Value,
    wait: &WaitArgs,
    output: Output,
) -> Result<(), Failure> {
    if wait.wait {
        eprintln!("started {}", rollout_label(&rollout));
        return follow(api, rollout, wait.timeout, output).await;
    }
    match output {
        Output::Json => print_json(&rollout),
        Output::Text => println!(
            "started {} ({})",
            rollout_label(&rollout),
            state_note(&rollout)
        ),
    }
    Ok(())
}

/// `pause`, `resume`, `cancel`, `approve`, `reject`.
async fn act(args: ActionArgs, action: &str) -> Result<(), Failure> {
    let api = Api::new(&args.common.client)?;
    let body = match &args.comment {
        Some(comment) => json!({ "comment": comment }),
        None => json!({}),
    };
    let answer = api
        .post(
            &format!("/api/v1/rollouts/{}/{action}", segment(&args.rollout)),
            &body,
        )
        .await?;
    if !answer.status.is_success() {
        return Err(problem(
            &format!("{action} of rollout {}", args.rollout),
            &answer,
        ));
    }
    match args.common.output {
        Output::Json => print_json(&answer.body),
        Output::Text => println!(
            "{}: {}",
            rollout_label(&answer.body),
            state_note(&answer.body)
        ),
    }
    Ok(())
}

/// `status`: one environment, or each of the app's.
async fn status(args: StatusArgs) -> Result<(), Failure> {
    let api = Api::new(&args.common.client)?;
    let app_path = format!("/api/v1/apps/{}", segment(&args.app));
    let environments: Vec<String> = match &args.environment {
        Some(environment) => vec![environment.clone()],
        None => {
            let answer = api.get(&app_path).await?;
            if !answer.status.is_success() {
                return Err(problem(&format!("reading app {}", args.app), &answer));
            }
            answer.body["spec"]["environments"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|environment| environment["name"].as_str().map(str::to_owned))
                .collect()
        }
    };
    let mut statuses = Vec::new();
    let mut hidden = Vec::new();
    for environment in &environments {
        let answer = api
            .get(&format!("{app_path}/environments/{}", segment(environment)))
            .await?;
        // Listing every environment with a token limited to some of them: show those.
        if answer.status == StatusCode::FORBIDDEN && args.environment.is_none() {
            hidden.push(environment.as_str());
            continue;
        }
        if !answer.status.is_success() {
            return Err(problem(
                &format!("reading {}/{environment}", args.app),
                &answer,
            ));
        }
        statuses.push(answer.body);
    }
    if !hidden.is_empty() {
        if statuses.is_empty() {
            return Err(Failure {
                exit: Exit::Refused,
                message: Some(format!(
                    "reading {} was refused: the token may read none of its environments",
                    args.app
                )),
            });
        }
        eprintln!(
            "not shown (the token may not read them): {}",
            hidden.join(", ")
        );
    }
    match args.common.output {
        Output::Json if args.environment.is_some() => print_json(&statuses[0]),
        Output::Json => print_json(&json!({ "app": args.app, "environments": statuses })),
        Output::Text => {
            for status in &statuses {
                print!("{}", describe_environment(status));
            }
        }
    }
    Ok(())
}

/// An environment's status for people.
fn describe_environment(status: &Value) -> String {
    let mut text = format!(
        "{}/{}: {}\n",
        status["app"].as_str().unwrap_or("?"),
        status["environment"].as_str().unwrap_or("?"),
        match status["current_release"].as_str() {
            Some(release) => format!("release {release}"),
            None => "nothing deployed yet".to_owned(),
        }
    );
    let live: Vec<String> = status["live"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|component| {
            let mut line = format!(
                "{} {}",
                component["component"].as_str().unwrap_or("?"),
                component["release"].as_str().unwrap_or("?")
            );
            if component["drifted"] == Value::Bool(true) {
                line.push_str(&format!(
                    " (drifted: the platform serves {})",
                    component["observed_version"]
                        .as_str()
                        .unwrap_or("something else")
                ));
            }
            line
        })
        .collect();
    if !live.is_empty() {
        text.push_str(&format!("  live:        {}\n", live.join(", ")));
    }
    let in_flight = &status["in_flight"];
    if in_flight.is_object() {
        let phase = match in_flight["current_phase"].as_str() {
            Some(name) => format!(
                ", phase {}/{} {name}",
                in_flight["phases_done"].as_i64().unwrap_or(0) + 1,
                in_flight["phases_total"].as_i64().unwrap_or(0)
            ),
            None => String::new(),
        };
        text.push_str(&format!(
            "  in flight:   {} {} {} ({}{phase})\n",
            in_flight["id"].as_str().unwrap_or("?"),
            in_flight["kind"].as_str().unwrap_or("?"),
            in_flight["release"].as_str().unwrap_or("?"),
            state_note(in_flight),
        ));
    }
    for queued in status["queued"].as_array().into_iter().flatten() {
        text.push_str(&format!(
            "  queued:      {} {} {}\n",
            queued["id"].as_str().unwrap_or("?"),
            queued["kind"].as_str().unwrap_or("?"),
            queued["release"].as_str().unwrap_or("?"),
        ));
    }
    let auto_deploy = &status["auto_deploy"];
    if auto_deploy["paused"] == Value::Bool(true) {
        text.push_str(&format!(
            "  auto-deploy: paused since {}: {}\n",
            auto_deploy["since"].as_str().unwrap_or("?"),
            auto_deploy["reason"].as_str().unwrap_or("no reason given")
        ));
    } else {
        text.push_str("  auto-deploy: on\n");
    }
    text
}

/// A finished rollout's verdict: the server's `verdict`, else derived from its state.
fn verdict(rollout: &Value) -> Option<(String, Option<String>)> {
    let state = rollout["state"].as_str().unwrap_or("unknown");
    match rollout.get("verdict") {
        Some(Value::Object(verdict)) => Some((
            verdict
                .get("outcome")
                .and_then(Value::as_str)
                .unwrap_or(state)
                .to_owned(),
            verdict
                .get("reason")
                .and_then(Value::as_str)
                .or(rollout["state_reason"].as_str())
                .map(str::to_owned),
        )),
        _ if rollout["finished"] == Value::Bool(true) => Some((
            state.to_owned(),
            rollout["state_reason"].as_str().map(str::to_owned),
        )),
        _ => None,
    }
}

/// Where a rollout is, in a few words: `phase 2/4 web: verifying`.
fn position(rollout: &Value) -> String {
    let phases = rollout["phases"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let current = rollout["current_phase"]
        .as_u64()
        .and_then(|index| usize::try_from(index).ok())
        .filter(|index| *index < phases.len());
    match current {
        Some(index) => format!(
            "phase {}/{} {}: {}",
            index + 1,
            phases.len(),
            phases[index]["name"].as_str().unwrap_or("?"),
            phases[index]["state"].as_str().unwrap_or("?")
        ),
        None => rollout["state"].as_str().unwrap_or("unknown").to_owned(),
    }
}

/// Shows a rollout's progress on stderr: a redrawn bar on a terminal, plain lines otherwise.
struct Progress {
    terminal: bool,
    /// Something is drawn on the current line (terminal only).
    drawn: bool,
    state: Option<String>,
    phases: Vec<String>,
}

impl Progress {
    fn new() -> Self {
        Progress {
            terminal: std::io::stderr().is_terminal(),
            drawn: false,
            state: None,
            phases: Vec::new(),
        }
    }

    /// A line that stays.
    fn line(&mut self, text: &str) {
        let mut stderr = std::io::stderr().lock();
        if self.drawn {
            let _ = write!(stderr, "\r\x1b[2K");
            self.drawn = false;
        }
        let _ = writeln!(stderr, "{text}");
    }

    fn show(&mut self, rollout: &Value) {
        let state = rollout["state"].as_str().unwrap_or("unknown").to_owned();
        let phases = rollout["phases"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        if self.state.as_deref() != Some(state.as_str()) {
            // The finished state is the verdict's to tell.
            if rollout["finished"] != Value::Bool(true) {
                self.line(&format!("rollout {}", state_note(rollout)));
            }
            self.state = Some(state.clone());
        }
        self.phases.resize(phases.len(), String::new());
        for (index, phase) in phases.iter().enumerate() {
            let phase_state = phase["state"].as_str().unwrap_or("?");
            if self.phases[index] == phase_state {
                continue;
            }
            self.phases[index] = phase_state.to_owned();
            if phase_state == "pending" {
                continue;
            }
            let name = phase["name"].as_str().unwrap_or("?");
            let label = format!("phase {}/{} {name}", index + 1, phases.len());
            let waits_for_approval = phase_state == "verifying"
                && phase["gates"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|gate| gate["kind"] == "approval");
            if waits_for_approval {
                self.line(&format!(
                    "{label}: waiting for approval (shipgate approve {})",
                    rollout["id"].as_str().unwrap_or("?")
                ));
            } else if !self.terminal || matches!(phase_state, "failed" | "aborted") {
                self.line(&format!("{label}: {phase_state}"));
            }
        }
        if self.terminal && rollout["finished"] != Value::Bool(true) {
            let done = phases
                .iter()
                .filter(|phase| matches!(phase["state"].as_str(), Some("succeeded" | "skipped")))
                .count();
            let width = 20;
            let filled = (done * width).checked_div(phases.len()).unwrap_or(0);
            let mut stderr = std::io::stderr().lock();
            let _ = write!(
                stderr,
                "\r\x1b[2K[{}{}] {done}/{} {}",
                "#".repeat(filled),
                "-".repeat(width - filled),
                phases.len(),
                position(rollout)
            );
            let _ = stderr.flush();
            self.drawn = true;
        }
    }

    fn finish(&mut self) {
        if self.drawn {
            let mut stderr = std::io::stderr().lock();
            let _ = write!(stderr, "\r\x1b[2K");
            let _ = stderr.flush();
            self.drawn = false;
        }
    }
}

/// Follows a rollout with long-polls until it ends or `timeout` passes, surviving network
/// errors and 5xx answers, then prints the verdict and exits with it.
async fn follow(api: &Api, rollout: Value, timeout: Span, output: Output) -> Result<(), Failure> {
    let id = rollout["id"]
        .as_str()
        .ok_or_else(|| Failure::error("the server's answer names no rollout id"))?
        .to_owned();
    let deadline = Instant::now() + timeout.to_std();
    let mut progress = Progress::new();
    let mut last = rollout;
    let mut delay = Duration::from_millis(500);
    let mut trouble: Option<String> = None;
    loop {
        progress.show(&last);
        if let Some((outcome, reason)) = verdict(&last) {
            progress.finish();
            return conclude(&last, &outcome, reason.as_deref(), output);
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            progress.finish();
            let mut reason = format!(
                "still {} after {timeout} ({})",
                last["state"].as_str().unwrap_or("unknown"),
                position(&last)
            );
            if let Some(trouble) = &trouble {
                reason.push_str(&format!("; last error: {trouble}"));
            }
            return conclude(&last, "timed_out", Some(&reason), output);
        }
        let wait = remaining.min(LONG_POLL);
        let mut path = format!(
            "/api/v1/rollouts/{}?wait={}ms",
            segment(&id),
            wait.as_millis().max(1)
        );
        if let Some(version) = last["version"].as_i64() {
            path.push_str(&format!("&since={version}"));
        }
        let request_timeout = wait + Duration::from_secs(15);
        let problem_now = match api
            .once(Method::GET, &path, None, None, request_timeout)
            .await
        {
            Ok(answer) if answer.status.is_success() => {
                if trouble.take().is_some() {
                    progress.line(&format!("{} answers again", api.server()));
                }
                delay = Duration::from_millis(500);
                last = answer.body;
                continue;
            }
            Ok(answer)
                if answer.status.is_server_error()
                    || answer.status == StatusCode::TOO_MANY_REQUESTS =>
            {
                if let Some(retry_after) = answer.retry_after {
                    delay = delay.max(retry_after);
                }
                format!("the server answered {}", answer.status)
            }
            Ok(answer) => return Err(problem(&format!("following rollout {id}"), &answer)),
            Err(error) => describe(&error),
        };
        if trouble.as_deref() != Some(problem_now.as_str()) {
            progress.line(&format!(
                "{}: {problem_now}; still waiting, trying again",
                api.server()
            ));
        }
        trouble = Some(problem_now);
        let remaining = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(delay.min(remaining)).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// Prints the verdict (a sentence, or one JSON object) and picks the exit.
fn conclude(
    rollout: &Value,
    outcome: &str,
    reason: Option<&str>,
    output: Output,
) -> Result<(), Failure> {
    let exit = if outcome == "timed_out" {
        Exit::TimedOut
    } else {
        Exit::for_outcome(outcome)
    };
    match output {
        Output::Json => print_json(&json!({
            "outcome": outcome,
            "reason": reason,
            "exit_code": exit.code(),
            "rollout": rollout,
        })),
        Output::Text => {
            let because = reason.map(|r| format!(": {r}")).unwrap_or_default();
            let sentence = match exit {
                Exit::Succeeded => format!(
                    "{} succeeded; {}/{} runs {}",
                    rollout_label(rollout),
                    rollout["app"].as_str().unwrap_or("?"),
                    rollout["environment"].as_str().unwrap_or("?"),
                    rollout["release"].as_str().unwrap_or("?")
                ),
                Exit::RolledBack => {
                    let by = rollout["rolled_back_by"]
                        .as_str()
                        .map(|id| format!(" (by rollout {id})"))
                        .unwrap_or_default();
                    format!("{} was rolled back{by}{because}", rollout_label(rollout))
                }
                Exit::TimedOut => format!(
                    "gave up waiting for {}{because}; it goes on (shipgate status --app {} --env {})",
                    rollout_label(rollout),
                    rollout["app"].as_str().unwrap_or("?"),
                    rollout["environment"].as_str().unwrap_or("?")
                ),
                _ => format!(
                    "{} {}{because}",
                    rollout_label(rollout),
                    outcome.replace('_', " ")
                ),
            };
            println!("{sentence}");
        }
    }
    match exit {
        Exit::Succeeded => Ok(()),
        other => Err(Failure::silent(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifacts_are_component_equals_reference_or_a_json_object() {
        assert_eq!(
            parse_artifact("web=registry.example/web@sha256:ab=cd").unwrap(),
            ("web".into(), json!("registry.example/web@sha256:ab=cd"))
        );
        assert_eq!(
            parse_artifact(r#"api={"slug": "s-1"}"#).unwrap(),
            ("api".into(), json!({ "slug": "s-1" }))
        );
        assert!(parse_artifact("web").is_err());
        assert!(parse_artifact("=ref").is_err());
    }

    #[test]
    fn the_verdict_is_the_servers_else_derived_from_a_finished_state() {
        let running = json!({ "state": "in_progress", "finished": false });
        assert_eq!(verdict(&running), None);
        let derived = json!({ "state": "rolled_back", "state_reason": "health", "finished": true });
        assert_eq!(
            verdict(&derived),
            Some(("rolled_back".into(), Some("health".into())))
        );
        let given = json!({ "state": "failed", "finished": true,
                            "verdict": { "outcome": "failed", "reason": "deploy of web failed" } });
        assert_eq!(
            verdict(&given),
            Some(("failed".into(), Some("deploy of web failed".into())))
        );
        let not_yet = json!({ "state": "paused", "finished": false, "verdict": null });
        assert_eq!(verdict(&not_yet), None);
    }

    #[test]
    fn outcomes_map_to_distinct_exit_codes() {
        assert_eq!(Exit::for_outcome("succeeded").code(), 0);
        assert_eq!(Exit::for_outcome("rolled_back").code(), 4);
        for outcome in ["failed", "cancelled", "superseded", "rollback_failed"] {
            assert_eq!(Exit::for_outcome(outcome).code(), 3, "{outcome}");
        }
    }

    #[test]
    fn problems_name_the_detail_and_every_field_and_classify_refusals() {
        let answer = |status: u16, body: Value| Answer {
            status: StatusCode::from_u16(status).unwrap(),
            body,
            retry_after: None,
        };
        let refused = problem(
            "deploy",
            &answer(
                409,
                json!({ "detail": "another rollout holds this environment" }),
            ),
        );
        assert_eq!(refused.exit, Exit::Refused);
        assert!(refused.message.unwrap().contains("another rollout holds"));
        let invalid = problem(
            "creating release",
            &answer(
                422,
                json!({ "detail": "2 errors", "errors": [
                    { "field": "version", "message": "too long" },
                    { "field": "artifacts.web", "message": "empty" } ] }),
            ),
        );
        assert_eq!(invalid.exit, Exit::Error);
        let message = invalid.message.unwrap();
        assert!(message.contains("version: too long") && message.contains("artifacts.web: empty"));
        assert_eq!(problem("x", &answer(401, json!({}))).exit, Exit::Refused);
        assert_eq!(problem("x", &answer(500, Value::Null)).exit, Exit::Error);
    }

    #[test]
    fn a_conflict_is_asked_again_only_when_the_server_says_to_retry() {
        let answer = |status: u16, retry_after: Option<u64>| Answer {
            status: StatusCode::from_u16(status).unwrap(),
            body: Value::Null,
            retry_after: retry_after.map(Duration::from_secs),
        };
        assert!(
            transient(&answer(409, Some(1))),
            "our own key, still running"
        );
        assert!(!transient(&answer(409, None)), "a refusal");
        assert!(transient(&answer(503, None)) && transient(&answer(429, Some(5))));
        assert!(!transient(&answer(422, None)) && !transient(&answer(500, None)));
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(segment("1.0.0-rc 1/x"), "1.0.0-rc%201%2Fx");
    }
}
