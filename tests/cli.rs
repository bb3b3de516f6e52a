//! End-to-end tests of the CLI the way CI runs it: the real `shipgate` binary as a subprocess,
//! configured by `SHIPGATE_URL` and `SHIPGATE_TOKEN`, against a real server on port 0 with a
//! database of its own. They assert what a pipeline notices: the exit code, the verdict on
//! stdout, and the progress on stderr.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use shipgate_testkit::{Server, TestDb, ADMIN_TOKEN};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, Command};

const BINARY: &str = env!("CARGO_BIN_EXE_shipgate");

/// The master key the testkit starts servers with: `shipgate token create` must sign with the
/// same key for the server to accept its tokens.
const MASTER_KEY: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// How long one CLI run may take before the test gives up on it.
const RUN_LIMIT: Duration = Duration::from_secs(90);

const GIT_SHA: &str = "0123456789abcdef0123456789abcdef01234567";

/// The `shop` app: simulated targets where `*-broken` versions fail to deploy and `*-sick`
/// ones turn unhealthy.
/// - `staging`: two phases with health gates, rolled back on failure;
/// - `qa`: one phase that fails the rollout on failure (no rollback);
/// - `production`: a deploy phase, then a phase that waits for a person's approval;
/// - `slow`: a deploy that takes a minute.
const SHOP: &str = r#"
app: shop
repository: acme/shop
components: [web, api]
environments:
  - name: staging
    targets: &targets
      web: { provider: simulated, latency: 200ms, fail_deploy: "*-broken", unhealthy: "*-sick" }
      api: { provider: simulated, latency: 200ms, fail_deploy: "*-broken", unhealthy: "*-sick" }
    plan:
      - name: backend
        deploy: [api]
        gates:
          - health: { components: [api], interval: 200ms, timeout: 1s, failures: 2, successes: 2 }
        on_failure: rollback
      - name: web
        deploy: [web]
        gates:
          - health: { components: [web], interval: 200ms, timeout: 1s, failures: 2, successes: 2 }
        on_failure: rollback
  - name: qa
    targets: *targets
    plan:
      - name: everything
        deploy: [api, web]
        gates: [ { soak: 200ms } ]
        on_failure: fail
  - name: production
    targets: *targets
    plan:
      - name: everything
        deploy: [api, web]
        gates: [ { soak: 200ms } ]
        on_failure: rollback
      - name: sign-off
        gates: [ { approval: { required: 1 } } ]
        on_failure: pause
  - name: slow
    targets:
      web: { provider: simulated, latency: 1m }
      api: { provider: simulated, latency: 1m }
    plan:
      - name: everything
        deploy: [api, web]
        on_failure: fail
"#;

/// A second app, for tokens limited to another app.
const BLOG: &str = r#"
app: blog
repository: acme/blog
components: [web]
environments:
  - name: staging
    targets: { web: { provider: simulated, latency: 100ms } }
    plan: [ { name: all, deploy: [web] } ]
"#;

/// What one CLI run left behind.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn from_output(output: std::process::Output) -> Self {
        Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Asserts the exit code, showing what the command printed when it differs.
    #[track_caller]
    fn exits(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "exit code\n--- stdout:\n{}\n--- stderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// Stdout as the single JSON document `--output json` promises.
    #[track_caller]
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|error| panic!("stdout is not one JSON document ({error}):\n{self}"))
    }

    /// The id in the `started rollout <id>: ...` line `deploy --wait` prints first.
    #[track_caller]
    fn started_rollout(&self) -> String {
        started_rollout(&self.stderr).unwrap_or_else(|| panic!("no `started rollout`:\n{self}"))
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "exit {:?}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn started_rollout(text: &str) -> Option<String> {
    text.lines()
        .find_map(|line| line.strip_prefix("started rollout "))
        .and_then(|rest| rest.split_once(':'))
        .map(|(id, _)| id.to_owned())
}

/// The CLI as CI runs it: a server URL and, maybe, a token in the environment.
#[derive(Clone)]
struct Cli {
    url: String,
    token: Option<String>,
}

impl Cli {
    fn as_token(&self, token: Option<&str>) -> Cli {
        Cli {
            url: self.url.clone(),
            token: token.map(str::to_owned),
        }
    }

    fn command(&self, args: &[String]) -> Command {
        let mut command = Command::new(BINARY);
        command
            .args(args)
            .env("SHIPGATE_URL", &self.url)
            .env_remove("SHIPGATE_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(token) = &self.token {
            command.env("SHIPGATE_TOKEN", token);
        }
        command
    }

    /// Runs `shipgate <line>`, the line split into words as a shell would.
    async fn run(&self, line: &str) -> Run {
        self.run_words(&shell_words(line)).await
    }

    async fn run_words(&self, args: &[String]) -> Run {
        let output = tokio::time::timeout(RUN_LIMIT, self.command(args).output())
            .await
            .unwrap_or_else(|_| panic!("shipgate {args:?} ran over {RUN_LIMIT:?}"))
            .expect("the binary runs");
        Run::from_output(output)
    }

    /// Starts `shipgate <line>` and reads its stderr as it comes.
    fn spawn(&self, line: &str) -> Background {
        let mut child = self
            .command(&shell_words(line))
            .spawn()
            .expect("the binary runs");
        let stderr = BufReader::new(child.stderr.take().expect("piped")).lines();
        Background {
            child,
            stderr,
            seen: String::new(),
        }
    }

    async fn create_release(&self, version: &str) -> Run {
        let web = format!("web=registry.example/shop/web:{version}");
        let api = format!("api=registry.example/shop/api:{version}");
        self.run(&format!(
            "release create --app shop --version {version} --git-sha {GIT_SHA} \
             --artifact {web} --artifact {api}"
        ))
        .await
    }

    /// Creates a release and deploys it with `--wait`.
    async fn ship(&self, environment: &str, version: &str, extra: &str) -> Run {
        self.create_release(version).await.exits(0);
        self.run(&format!(
            "deploy --app shop --env {environment} --release {version} --wait --timeout 60s {extra}"
        ))
        .await
    }

    async fn status(&self, environment: &str) -> Value {
        self.run(&format!(
            "status --app shop --env {environment} --output json"
        ))
        .await
        .exits(0)
        .json()
    }
}

/// A command running in the background.
struct Background {
    child: Child,
    stderr: Lines<BufReader<ChildStderr>>,
    /// Stderr read so far.
    seen: String,
}

impl Background {
    /// Reads stderr until a line containing `needle`, and returns that line.
    async fn until(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let line = tokio::time::timeout(remaining, self.stderr.next_line())
                .await
                .unwrap_or_else(|_| panic!("no `{needle}` within 60 s; stderr:\n{}", self.seen))
                .expect("stderr reads");
            let Some(line) = line else {
                panic!("stderr ended before `{needle}`:\n{}", self.seen);
            };
            self.seen.push_str(&line);
            self.seen.push('\n');
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// Waits for the command to exit.
    async fn finish(mut self) -> Run {
        let mut stdout = self.child.stdout.take().expect("piped");
        let finished = async {
            while let Some(line) = self.stderr.next_line().await.expect("stderr reads") {
                self.seen.push_str(&line);
                self.seen.push('\n');
            }
            let mut text = String::new();
            stdout
                .read_to_string(&mut text)
                .await
                .expect("stdout reads");
            let status = self.child.wait().await.expect("the command exits");
            (status, text)
        };
        let (status, stdout) = tokio::time::timeout(RUN_LIMIT, finished)
            .await
            .expect("the command exits in time");
        Run {
            code: status.code(),
            stdout,
            stderr: self.seen,
        }
    }
}

/// A server with `shop` applied, and the CLI pointed at it as the admin.
struct Setup {
    db: TestDb,
    server: Server,
    admin: Cli,
}

impl Setup {
    async fn new() -> Self {
        let db = TestDb::new().await.unwrap();
        let server = Server::start(BINARY, &db.url, &[]).unwrap();
        let (status, body) = server.apply("shop", SHOP).await.unwrap();
        assert_eq!(status, 201, "{body}");
        let admin = Cli {
            url: server.url.clone(),
            token: Some(ADMIN_TOKEN.to_owned()),
        };
        Setup { db, server, admin }
    }

    /// `shipgate token create ...` on the server's machine: straight into its database, signed
    /// with its master key.
    async fn token_create(&self, line: &str) -> Run {
        let output = Command::new(BINARY)
            .args(["token", "create"])
            .args(shell_words(line))
            .env("DATABASE_URL", &self.db.url)
            .env("SHIPGATE_MASTER_KEY", MASTER_KEY)
            .env("RUST_LOG", "warn")
            .env_remove("SHIPGATE_TOKEN")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(RUN_LIMIT, output)
            .await
            .expect("token create ends in time")
            .expect("the binary runs");
        Run::from_output(output)
    }

    /// A token minted with `token create`, checked to be the one line on stdout.
    async fn mint(&self, line: &str) -> String {
        let run = self.token_create(line).await;
        run.exits(0);
        let token = run.stdout.trim();
        assert_eq!(run.stdout.lines().count(), 1, "only the token: {run}");
        assert_eq!(token.split('.').count(), 3, "a JWT: {run}");
        assert!(run.stderr.contains("shown once"), "{run}");
        assert!(
            !run.stderr.contains(token),
            "the token is printed once: {run}"
        );
        token.to_owned()
    }

    async fn finish(self) {
        drop(self.server);
        self.db.drop_database().await.unwrap();
    }
}

/// A URL nothing listens on.
fn unreachable_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

#[tokio::test]
async fn release_create_is_idempotent_on_content_and_refuses_other_content_under_the_same_version()
{
    let setup = Setup::new().await;
    let cli = &setup.admin;

    let created = cli.create_release("1.0.0").await;
    created.exits(0);
    assert!(
        created.stdout.contains("created release 1.0.0 of shop")
            && created
                .stdout
                .contains("web=registry.example/shop/web:1.0.0"),
        "{created}"
    );

    let again = cli.create_release("1.0.0").await;
    again.exits(0);
    assert!(again.stdout.contains("already exists"), "{again}");

    let other = cli
        .run(
            "release create --app shop --version 1.0.0 \
             --artifact web=registry.example/shop/web:other \
             --artifact api=registry.example/shop/api:1.0.0",
        )
        .await;
    other.exits(6);
    assert!(other.stdout.is_empty(), "{other}");
    assert!(
        other
            .stderr
            .contains("release 1.0.0 of shop was refused (409"),
        "{other}"
    );

    // With only --git-sha, every component's artifact is the commit; --output json prints the
    // release as the server answered it.
    let json = cli
        .run(&format!(
            "release create --app shop --version 1.1.0 --git-sha {GIT_SHA} --output json"
        ))
        .await;
    let release = json.exits(0).json();
    assert_eq!(release["version"], "1.1.0", "{release}");
    assert_eq!(release["artifacts"]["web"], GIT_SHA, "{release}");
    assert_eq!(release["artifacts"]["api"], GIT_SHA, "{release}");
    setup.finish().await;
}

#[tokio::test]
async fn deploy_wait_succeeds_printing_progress_phase_by_phase_and_status_reports_it() {
    let setup = Setup::new().await;
    let cli = &setup.admin;

    let run = cli.ship("staging", "1.0.0", "").await;
    run.exits(0);
    let id = run.started_rollout();
    assert_eq!(
        run.stdout.trim(),
        format!("rollout {id}: deploy of 1.0.0 to shop/staging succeeded; shop/staging runs 1.0.0")
    );
    // Not a terminal: plain lines, no redrawn bar, each phase as it moves on.
    assert!(
        !run.stderr.contains('\r') && !run.stderr.contains('\x1b'),
        "{run}"
    );
    let lines: Vec<&str> = run.stderr.lines().collect();
    let position = |wanted: &str| {
        lines
            .iter()
            .position(|line| *line == wanted)
            .unwrap_or_else(|| panic!("no line `{wanted}`:\n{run}"))
    };
    let order = [
        position("phase 1/2 backend: verifying"),
        position("phase 1/2 backend: succeeded"),
        position("phase 2/2 web: verifying"),
        position("phase 2/2 web: succeeded"),
    ];
    assert!(order.windows(2).all(|pair| pair[0] < pair[1]), "{run}");

    // status: one environment as the server's JSON, every environment in text.
    let status = cli.status("staging").await;
    assert_eq!(status["current_release"], "1.0.0", "{status}");
    assert!(status["in_flight"].is_null(), "{status}");
    let releases: Vec<&str> = status["live"]
        .as_array()
        .unwrap()
        .iter()
        .map(|component| component["release"].as_str().unwrap())
        .collect();
    assert_eq!(releases, ["1.0.0", "1.0.0"], "{status}");

    let every = cli.run("status --app shop --output json").await;
    let every = every.exits(0).json();
    assert_eq!(every["app"], "shop");
    let names: Vec<&str> = every["environments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|environment| environment["environment"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["staging", "qa", "production", "slow"], "{every}");

    let text = cli.run("status --app shop").await;
    text.exits(0);
    assert!(
        text.stdout.contains("shop/staging: release 1.0.0")
            && text.stdout.contains("shop/qa: nothing deployed yet"),
        "{text}"
    );
    setup.finish().await;
}

#[tokio::test]
async fn a_deploy_whose_deploy_step_fails_exits_3_saying_why() {
    let setup = Setup::new().await;
    let run = setup.admin.ship("qa", "2.0.0-broken", "").await;
    run.exits(3);
    let id = run.started_rollout();
    let verdict = run.stdout.trim();
    assert!(
        verdict.starts_with(&format!(
            "rollout {id}: deploy of 2.0.0-broken to shop/qa failed: "
        )) && verdict.contains("build of 2.0.0-broken failed"),
        "{run}"
    );
    assert!(run.stderr.contains("phase 1/1 everything: failed"), "{run}");
    setup.finish().await;
}

#[tokio::test]
async fn an_unhealthy_release_is_rolled_back_and_deploy_wait_exits_4_with_a_json_verdict() {
    let setup = Setup::new().await;
    let cli = &setup.admin;
    cli.ship("staging", "1.0.0", "").await.exits(0);

    let run = cli.ship("staging", "1.1.0-sick", "--output json").await;
    run.exits(4);
    let verdict = run.json();
    assert_eq!(verdict["outcome"], "rolled_back", "{verdict}");
    assert_eq!(verdict["exit_code"], 4, "{verdict}");
    let reason = verdict["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("gate health of api")
            && reason.contains("1.1.0-sick answers 503")
            && reason.contains("rolled back to 1.0.0"),
        "the reason names the failed gate and where it went back to: {verdict}"
    );
    assert_eq!(verdict["rollout"]["release"], "1.1.0-sick", "{verdict}");
    assert_eq!(verdict["rollout"]["state"], "rolled_back", "{verdict}");
    assert!(
        verdict["rollout"]["rolled_back_by"].is_string(),
        "{verdict}"
    );
    // Progress still went to stderr.
    assert!(run.stderr.contains("phase 1/2 backend: failed"), "{run}");

    let status = cli.status("staging").await;
    assert_eq!(status["current_release"], "1.0.0", "{status}");
    setup.finish().await;
}

#[tokio::test]
async fn deploy_wait_gives_up_after_its_timeout_with_exit_5_and_the_rollout_goes_on() {
    let setup = Setup::new().await;
    let cli = &setup.admin;
    cli.create_release("4.0.0").await.exits(0);

    let started = Instant::now();
    let run = cli
        .run("deploy --app shop --env slow --release 4.0.0 --wait --timeout 1s")
        .await;
    run.exits(5);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "it stopped waiting soon after --timeout: {:?}",
        started.elapsed()
    );
    let id = run.started_rollout();
    assert!(
        run.stdout
            .contains(&format!("gave up waiting for rollout {id}"))
            && run.stdout.contains("after 1s")
            && run
                .stdout
                .contains("it goes on (shipgate status --app shop --env slow)"),
        "{run}"
    );

    // The rollout is still in flight; cancelling it is the user's call.
    let status = cli.status("slow").await;
    assert_eq!(status["in_flight"]["id"], id.as_str(), "{status}");
    let cancel = cli.run(&format!("cancel {id} --comment 'too slow'")).await;
    cancel.exits(0);
    assert!(cancel.stdout.contains("cancelled"), "{cancel}");
    let status = cli.status("slow").await;
    assert!(status["in_flight"].is_null(), "{status}");
    setup.finish().await;
}

#[tokio::test]
async fn a_missing_or_invalid_token_exits_6() {
    let setup = Setup::new().await;
    let status = "status --app shop --env staging";

    let missing = setup.admin.as_token(None).run(status).await;
    missing.exits(6);
    assert!(missing.stderr.contains("SHIPGATE_TOKEN"), "{missing}");

    let invalid = setup
        .admin
        .as_token(Some("not-a-real-token-0123456789"))
        .run(status)
        .await;
    invalid.exits(6);
    assert!(
        invalid.stderr.contains("401") && invalid.stderr.contains("check SHIPGATE_TOKEN"),
        "{invalid}"
    );
    assert!(invalid.stdout.is_empty(), "{invalid}");
    setup.finish().await;
}

#[tokio::test]
async fn token_create_prints_a_token_that_works_where_its_scope_reaches_and_exits_6_elsewhere() {
    let setup = Setup::new().await;
    let ci = setup
        .mint("--name ci-staging --scope deploy --app shop --env staging --expires 1h")
        .await;
    let ci = setup.admin.as_token(Some(&ci));

    // Within its reach: a release, and a deploy to staging followed to the end.
    ci.ship("staging", "5.0.0", "").await.exits(0);

    // Another environment of the app is out of reach.
    let production = ci
        .run("deploy --app shop --env production --release 5.0.0")
        .await;
    production.exits(6);
    assert!(production.stderr.contains("403"), "{production}");
    let rollback = ci
        .run("rollback --app shop --env production --reason no")
        .await;
    rollback.exits(6);
    // Its status of the whole app shows what it may read, and says what it leaves out.
    let status = ci.run("status --app shop").await;
    status.exits(0);
    assert!(
        status.stdout.contains("shop/staging: release 5.0.0")
            && !status.stdout.contains("shop/production"),
        "{status}"
    );
    assert!(
        status.stderr.contains("not shown") && status.stderr.contains("production"),
        "{status}"
    );

    // A read-only token sees but cannot deploy.
    let reader = setup.mint("--name dashboard --scope read --app shop").await;
    let reader = setup.admin.as_token(Some(&reader));
    assert_eq!(reader.status("staging").await["current_release"], "5.0.0");
    let deploy = reader
        .run("deploy --app shop --env staging --release 5.0.0")
        .await;
    deploy.exits(6);

    // A token for another app reaches nothing of this one.
    let (code, body) = setup.server.apply("blog", BLOG).await.unwrap();
    assert_eq!(code, 201, "{body}");
    let other = setup.mint("--name blog-ci --scope deploy --app blog").await;
    let other = setup.admin.as_token(Some(&other));
    other.run("status --app shop --env staging").await.exits(6);
    other.run("status --app shop").await.exits(6);
    other.create_release("5.1.0").await.exits(6);

    // What `token create` refuses, it says, and mints nothing.
    let bad = setup.token_create("--name x --scope everything").await;
    assert_ne!(bad.code, Some(0), "{bad}");
    assert!(
        bad.stdout.is_empty() && bad.stderr.contains("scope"),
        "{bad}"
    );
    setup.finish().await;
}

#[tokio::test]
async fn bad_flags_exit_2_before_anything_is_sent() {
    // Pointed at nothing: a command that got past its flags would exit 1, not 2.
    let cli = Cli {
        url: unreachable_url(),
        token: Some(ADMIN_TOKEN.to_owned()),
    };
    let cases = [
        ("deploy --app shop --env staging", "--release"),
        (
            "deploy --app shop --env staging --release 1 --wait --timeout soon",
            "soon",
        ),
        (
            "deploy --app shop --env staging --release 1 --colour",
            "--colour",
        ),
        (
            "release create --app shop --version 1 --artifact web",
            "COMPONENT=REF",
        ),
        ("status --app shop --output yaml", "yaml"),
        ("rollback --app shop --env staging", "--reason"),
        ("reject 0190c7d6-0000-7000-8000-000000000000", "--comment"),
        ("frobnicate", "frobnicate"),
    ];
    for (args, named) in cases {
        let run = cli.run(args).await;
        assert_eq!(run.code, Some(2), "{args:?}: {run}");
        assert!(
            run.stderr.contains(named),
            "{args:?} names `{named}`: {run}"
        );
        assert!(run.stdout.is_empty(), "{args:?}: {run}");
    }
    // --help is not an error, and says what the exit codes mean.
    let help = cli.run("deploy --help").await;
    help.exits(0);
    assert!(
        help.stdout.contains("Exit codes:")
            && help.stdout.contains("4  the rollout was rolled back"),
        "{help}"
    );
}

#[tokio::test]
async fn an_unreachable_server_exits_1_naming_it() {
    let url = unreachable_url();
    let cli = Cli {
        url: url.clone(),
        token: Some(ADMIN_TOKEN.to_owned()),
    };
    let run = cli
        .run("deploy --app shop --env staging --release 1.0.0 --wait")
        .await;
    run.exits(1);
    assert!(
        run.stderr.contains(&url) && run.stderr.contains("could not connect"),
        "{run}"
    );
    assert!(run.stdout.is_empty(), "{run}");

    let not_a_url = Cli {
        url: "shipgate.internal".to_owned(),
        token: Some(ADMIN_TOKEN.to_owned()),
    };
    let run = not_a_url.run("status --app shop --env staging").await;
    run.exits(1);
    assert!(run.stderr.contains("is not a URL"), "{run}");
}

#[tokio::test]
async fn rollback_returns_the_environment_to_its_previous_release() {
    let setup = Setup::new().await;
    let cli = &setup.admin;
    for version in ["1.0.0", "1.1.0", "1.2.0"] {
        cli.ship("staging", version, "").await.exits(0);
    }

    let run = cli
        .run(
            "rollback --app shop --env staging --reason 'checkout errors after 1.2.0' \
             --wait --timeout 60s",
        )
        .await;
    run.exits(0);
    assert!(
        run.stdout
            .contains("rollback of 1.1.0 to shop/staging succeeded; shop/staging runs 1.1.0"),
        "{run}"
    );
    assert_eq!(cli.status("staging").await["current_release"], "1.1.0");

    // The release rolled back from is quarantined: going back to it is refused.
    let refused = cli
        .run("rollback --app shop --env staging --reason undo --to 1.2.0")
        .await;
    refused.exits(6);
    assert!(refused.stderr.contains("quarantined"), "{refused}");

    // Without --wait it starts the rollback; --output json prints the rollout.
    let run = cli
        .run("rollback --app shop --env staging --reason 'further back' --to 1.0.0 --output json")
        .await;
    let rollout = run.exits(0).json();
    assert_eq!(rollout["kind"], "rollback", "{rollout}");
    assert_eq!(rollout["release"], "1.0.0", "{rollout}");
    setup.finish().await;
}

#[tokio::test]
async fn pause_resume_and_approve_drive_a_rollout_waiting_for_approval() {
    let setup = Setup::new().await;
    let cli = &setup.admin;
    cli.create_release("3.0.0").await.exits(0);

    let mut waiting =
        cli.spawn("deploy --app shop --env production --release 3.0.0 --wait --timeout 60s");
    let started = waiting.until("started rollout ").await;
    let id = started_rollout(&started).unwrap();
    let asks = waiting.until("waiting for approval").await;
    assert_eq!(
        asks,
        format!("phase 2/2 sign-off: waiting for approval (shipgate approve {id})")
    );

    let pause = cli.run(&format!("pause {id} --comment lunch")).await;
    pause.exits(0);
    assert!(pause.stdout.contains("paused"), "{pause}");
    // The waiting deploy says so, and how to go on.
    let paused = waiting.until("rollout paused").await;
    assert!(
        paused.contains(&format!("shipgate resume {id}")),
        "{paused}"
    );
    // Pausing twice is refused by the rollout's state.
    let twice = cli.run(&format!("pause {id}")).await;
    twice.exits(6);
    assert!(twice.stderr.contains("pause of rollout"), "{twice}");

    cli.run(&format!("resume {id}")).await.exits(0);
    let approve = cli
        .run(&format!(
            "approve {id} --comment 'checklist done' --output json"
        ))
        .await;
    let approved = approve.exits(0).json();
    assert_eq!(approved["id"], id.as_str(), "{approved}");

    let run = waiting.finish().await;
    run.exits(0);
    assert!(
        run.stdout
            .contains("deploy of 3.0.0 to shop/production succeeded"),
        "{run}"
    );
    assert_eq!(cli.status("production").await["current_release"], "3.0.0");
    setup.finish().await;
}

/// A word of a shell command line, with `$NAME`, `${NAME}` and `${{ expression }}` replaced by
/// `x` (what CI would put there).
fn substitute(word: &str) -> String {
    let mut out = String::new();
    let mut rest = word;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let skip = if let Some(inner) = after.strip_prefix("{{") {
            inner.find("}}").map_or(after.len(), |end| end + 4)
        } else if after.starts_with('{') {
            after.find('}').map_or(after.len(), |end| end + 1)
        } else {
            after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len())
        };
        out.push('x');
        rest = &after[skip..];
    }
    out.push_str(rest);
    out
}

/// Splits one command line into words the way `sh` would (quotes, no expansion), up to the
/// first redirection, pipe or separator.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for character in line.chars() {
        match (quote, character) {
            (Some(open), c) if c == open => quote = None,
            (Some(_), c) => word.push(c),
            (None, '"' | '\'') => {
                quote = Some(character);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(substitute(&std::mem::take(&mut word)));
                    in_word = false;
                }
            }
            (None, '>' | '|' | ';' | '&') => break,
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(substitute(&word));
    }
    words
}

/// Every string in a YAML document.
fn strings(value: &serde_yaml::Value, found: &mut Vec<String>) {
    match value {
        serde_yaml::Value::String(text) => found.push(text.clone()),
        serde_yaml::Value::Sequence(items) => items.iter().for_each(|item| strings(item, found)),
        serde_yaml::Value::Mapping(map) => map.values().for_each(|item| strings(item, found)),
        serde_yaml::Value::Tagged(tagged) => strings(&tagged.value, found),
        _ => {}
    }
}

#[tokio::test]
async fn the_ci_examples_are_valid_yaml_and_call_the_cli_with_flags_it_accepts() {
    let directory = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/ci");
    // Flags are parsed before anything else; with no token the CLI then stops with 6. A flag
    // it does not know would exit 2 instead.
    let cli = Cli {
        url: unreachable_url(),
        token: None,
    };
    for file in ["github-actions.yml", "gitlab-ci.yml"] {
        let text = std::fs::read_to_string(format!("{directory}/{file}")).unwrap();
        let document: serde_yaml::Value = serde_yaml::from_str(&text)
            .unwrap_or_else(|error| panic!("{file} is not YAML: {error}"));
        let mut scripts = Vec::new();
        strings(&document, &mut scripts);
        let commands: Vec<Vec<String>> = scripts
            .iter()
            .flat_map(|script| {
                script
                    .replace("\\\n", " ")
                    .lines()
                    .map(str::trim)
                    .filter(|line| line.starts_with("shipgate "))
                    .map(shell_words)
                    .collect::<Vec<_>>()
            })
            .collect();
        let called: Vec<String> = commands.iter().map(|words| words[1..3].join(" ")).collect();
        assert!(
            called.iter().any(|c| c == "release create")
                && commands
                    .iter()
                    .any(|words| words[1] == "deploy" && words.contains(&"--wait".to_owned())),
            "{file} creates a release and deploys with --wait: {called:?}"
        );
        for words in &commands {
            let run = cli.run_words(&words[1..]).await;
            assert_eq!(
                run.code,
                Some(6),
                "{file}: `{}` is not accepted: {run}",
                words.join(" ")
            );
            assert!(run.stderr.contains("SHIPGATE_TOKEN"), "{run}");
        }
    }
}
