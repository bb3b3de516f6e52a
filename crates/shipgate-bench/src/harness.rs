//! The reliability harness: the real binary under the failures a release control plane meets.
//!
//! - **chaos**: three replicas share the work; one is `kill -9`ed every few seconds and started
//!   again. Every rollout must reach the state its release calls for, and no simulated provider
//!   operation may be issued twice.
//! - **database restart**: a private PostgreSQL cluster (never the shared one) is stopped under a
//!   running replica and started again: the replica must not exit, and work must resume within
//!   seconds of the database's return.
//! - **fault storm**: the `http` provider against a fake platform answering 30 % 5xx, 10 % 429
//!   with `Retry-After`, and some calls never (past the client's timeout). Every rollout must
//!   succeed, no operation may be performed twice, and retries must stay bounded.
//! - **load**: mixed API reads and signed webhook pushes at a fixed rate: zero errors, p99
//!   reported.
//!
//! `Form::Short` runs in CI (a couple of minutes); `Form::Long` is the by-hand form.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use rand::seq::SliceRandom;
use rand::Rng;
use serde_json::{json, Value};
use shipgate_testkit::{Server, TestDb, ADMIN_TOKEN};

use crate::support::{self, ms, MakeRequest};
use crate::{bench, fleet};

/// How long the harness runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// CI: ~30 rollouts of chaos over ~20 s, a short storm, 15 s of load.
    Short,
    /// By hand: 200 rollouts of chaos over a minute, a long storm, 60 s of load.
    Long,
}

impl Form {
    fn chaos_rollouts(self) -> usize {
        match self {
            Form::Short => 30,
            Form::Long => 200,
        }
    }
    fn chaos_seconds(self) -> u64 {
        match self {
            Form::Short => 20,
            Form::Long => 60,
        }
    }
    fn storm_rollouts(self) -> usize {
        match self {
            Form::Short => 16,
            Form::Long => 100,
        }
    }
    fn load_seconds(self) -> u64 {
        match self {
            Form::Short => 15,
            Form::Long => 60,
        }
    }
}

/// Runs every scenario of `form`; fails with every scenario's problems.
pub async fn run(form: Form) -> Result<()> {
    let binary = support::shipgate_binary(form == Form::Long)?;
    println!("harness ({form:?}) with {}", binary.display());
    let mut failures = Vec::new();
    let started = Instant::now();
    // The storm mostly waits out injected timeouts: it runs beside the chaos.
    let (chaos, storm) = tokio::join!(chaos(&binary, form), fault_storm(&binary, form));
    for (name, outcome) in [
        ("chaos", chaos),
        ("fault storm", storm),
        ("database restart", database_restart(&binary, form).await),
        ("load", load(&binary, form).await),
    ] {
        match outcome {
            Ok(()) => println!("[{name}] passed"),
            Err(error) => {
                println!("[{name}] FAILED: {error:#}");
                failures.push(format!("{name}: {error:#}"));
            }
        }
    }
    println!("harness took {:.0} s", started.elapsed().as_secs_f64());
    if !failures.is_empty() {
        bail!("{}", failures.join("\n"));
    }
    Ok(())
}

fn replica_env<'a>(replica: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![
        ("SHIPGATE_REPLICA", replica),
        ("SHIPGATE_LEASE", "3s"),
        ("SHIPGATE_STEP_POLL_INTERVAL", "200ms"),
        ("SHIPGATE_DB_CONNECTIONS", "8"),
        ("SHIPGATE_WORKERS", "16"),
        ("SHIPGATE_DRIFT_INTERVAL", "0s"),
        ("SHIPGATE_RATE_LIMIT_PER_CLIENT", "1000000"),
        ("SHIPGATE_RATE_LIMIT_PER_TOKEN", "1000000"),
        ("RUST_LOG", "error"),
    ];
    env.extend_from_slice(extra);
    env
}

const CHAOS_PLAN: &str = r#"
      - name: backend
        deploy: [api]
        gates: [ { health: { components: [api], interval: 300ms, timeout: 1s, failures: 2, successes: 2 } } ]
        on_failure: rollback
      - name: web
        deploy: [web]
        gates: [ { soak: 300ms } ]
        on_failure: rollback
"#;

/// Operations the simulated platform was asked for more than once.
async fn issued_twice(db: &TestDb) -> Result<Vec<(String, i64)>> {
    Ok(sqlx::query_as(
        "select natural_key, count(*) from simulated_operations group by natural_key having count(*) > 1",
    )
    .fetch_all(&db.pool)
    .await?)
}

async fn wait_finished(db: &TestDb, limit: Duration) -> Result<()> {
    let started = Instant::now();
    while support::unfinished(db).await? > 0 {
        if started.elapsed() > limit {
            let stuck: Vec<(String, String)> = sqlx::query_as(
                "select id::text, state::text from rollouts
                  where state in ('queued', 'pending_approval', 'in_progress', 'paused', 'rolling_back') limit 5",
            )
            .fetch_all(&db.pool)
            .await?;
            bail!("rollouts unfinished after {limit:?}, e.g. {stuck:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

/// Three replicas, one killed with SIGKILL every few seconds and started again.
async fn chaos(binary: &Path, form: Form) -> Result<()> {
    let db = TestDb::new().await?;
    let binary_text = binary.to_string_lossy().to_string();
    let names = ["chaos-a", "chaos-b", "chaos-c"];
    let mut replicas: Vec<Server> = Vec::new();
    for name in names {
        replicas.push(Server::start(
            &binary_text,
            &db.url,
            &replica_env(name, &[]),
        )?);
    }
    // Two rollouts per environment: a good release first, then a good or a sick one queued
    // behind it (a sick one must be rolled back to the first).
    let environments = form.chaos_rollouts() / 2;
    let app = "chaos".to_owned();
    let (status, body) = replicas[0]
        .apply(
            &app,
            &fleet::config(&app, environments, "300ms", CHAOS_PLAN),
        )
        .await?;
    ensure!(status == 201, "apply: {status} {body}");
    for version in ["1.0.0", "1.1.0", "1.1.0-sick"] {
        let (status, body) = replicas[0]
            .post(
                "/api/v1/apps/chaos/releases",
                &json!({ "version": version, "artifacts": { "web": version, "api": version } }),
            )
            .await?;
        ensure!(status == 201, "release {version}: {status} {body}");
    }
    // Created while held from the engine, so the first quarantine cannot refuse the last ones.
    support::hold_rollouts(&db).await?;
    let mut expected: Vec<(String, &str)> = Vec::new();
    for index in 0..environments {
        let second = if index % 3 == 2 {
            "1.1.0-sick"
        } else {
            "1.1.0"
        };
        for (version, state) in [
            ("1.0.0", "succeeded"),
            (
                second,
                if second.ends_with("-sick") {
                    "rolled_back"
                } else {
                    "succeeded"
                },
            ),
        ] {
            let (status, body) = replicas[index % 3]
                .post(
                    &format!("/api/v1/apps/chaos/environments/e{index}/rollouts"),
                    &json!({ "release": version }),
                )
                .await?;
            ensure!(status == 201, "rollout: {status} {body}");
            expected.push((body["id"].as_str().context("id")?.to_owned(), state));
        }
    }

    support::release_rollouts(&db).await?;
    let until = Instant::now() + Duration::from_secs(form.chaos_seconds());
    let mut kills = 0;
    while Instant::now() < until {
        let pause = rand::thread_rng().gen_range(2000..4000);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let victim = rand::thread_rng().gen_range(0..replicas.len());
        replicas[victim].kill9();
        kills += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
        replicas[victim] = Server::start(&binary_text, &db.url, &replica_env(names[victim], &[]))?;
    }
    wait_finished(&db, Duration::from_secs(180)).await?;

    let mut wrong = Vec::new();
    let mut cancelled_in_queue = 0;
    for (id, state) in &expected {
        let (actual, reason, operations): (String, Option<String>, i64) = sqlx::query_as(
            "select r.state::text, r.state_reason,
                    (select count(*) from step_runs s where s.rollout_id = r.id)
               from rollouts r where r.id = $1::uuid",
        )
        .bind(id)
        .fetch_one(&db.pool)
        .await?;
        // Once one environment rolled the sick release back it is quarantined, and the sick
        // rollouts still queued elsewhere are cancelled without deploying: right as well.
        let quarantined_in_queue = *state == "rolled_back"
            && actual == "cancelled"
            && reason.as_deref().is_some_and(|r| r.contains("quarantined"))
            && operations == 0;
        if quarantined_in_queue {
            cancelled_in_queue += 1;
        } else if actual != *state {
            wrong.push(format!("{id}: {actual} ({reason:?}), expected {state}"));
        }
    }
    let failed_rollbacks: i64 = sqlx::query_scalar(
        "select count(*) from rollouts where kind = 'rollback' and state <> 'succeeded'",
    )
    .fetch_one(&db.pool)
    .await?;
    let twice = issued_twice(&db).await?;
    let operations: i64 = sqlx::query_scalar("select count(*) from simulated_operations")
        .fetch_one(&db.pool)
        .await?;
    let by_replica: Vec<(String, i64)> = sqlx::query_as(
        "select issued_by, count(*) from simulated_operations group by 1 order by 1",
    )
    .fetch_all(&db.pool)
    .await?;
    println!(
        "[chaos] {} rollouts ({cancelled_in_queue} of the unhealthy release cancelled in the queue once it was quarantined), \
         {kills} kill -9s over {} s, {operations} provider operations {by_replica:?}",
        expected.len(),
        form.chaos_seconds()
    );
    drop(replicas);
    ensure!(wrong.is_empty(), "rollouts ended wrongly: {wrong:?}");
    ensure!(
        failed_rollbacks == 0,
        "{failed_rollbacks} rollbacks did not succeed"
    );
    ensure!(twice.is_empty(), "operations issued twice: {twice:?}");
    db.drop_database().await?;
    Ok(())
}

/// A PostgreSQL cluster of the harness's own (under `target/`, or the temporary directory when
/// run as `postgres`), so restarting it disturbs no one.
struct PrivateCluster {
    directory: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl PrivateCluster {
    fn pg(&self, binary: &str, args: &[&str]) -> Result<()> {
        let path = support::postgres_binary(binary).with_context(|| format!("no {binary}"))?;
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        };
        let output = command.args(args).output()?;
        ensure!(
            output.status.success(),
            "{binary} {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    }

    fn create() -> Result<Self> {
        let as_postgres = Command::new("id")
            .arg("-u")
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
            .unwrap_or(false);
        // Run as `postgres` (we are root), the cluster must sit where that user can reach it:
        // a checkout may live under a directory only root may enter (`mktemp -d` makes 0700
        // ones), so then it goes under the system's temporary directory instead.
        let base = if as_postgres {
            std::env::temp_dir().join("shipgate-harness")
        } else {
            support::workspace_root().join("target/shipgate-harness")
        };
        let directory = base.join(format!("pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&directory);
        std::fs::create_dir_all(&directory)?;
        if as_postgres {
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&directory)
                .status()?;
        }
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            listener.local_addr()?.port()
        };
        let cluster = PrivateCluster {
            directory,
            port,
            as_postgres,
        };
        let data = cluster.directory.to_string_lossy().to_string();
        cluster.pg(
            "initdb",
            &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"],
        )?;
        cluster.start()?;
        Ok(cluster)
    }

    fn start(&self) -> Result<()> {
        let data = self.directory.to_string_lossy().to_string();
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k /tmp -c fsync=off",
            self.port
        );
        let log = self
            .directory
            .join("server.log")
            .to_string_lossy()
            .to_string();
        self.pg(
            "pg_ctl",
            &["-D", &data, "-o", &options, "-l", &log, "-w", "start"],
        )
    }

    fn stop(&self) -> Result<()> {
        let data = self.directory.to_string_lossy().to_string();
        self.pg("pg_ctl", &["-D", &data, "-m", "fast", "-w", "stop"])
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = self.stop();
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

/// The database goes away under a running replica for a few seconds and comes back.
async fn database_restart(binary: &Path, form: Form) -> Result<()> {
    let cluster = PrivateCluster::create()?;
    let url = cluster.url();
    let mut server = Server::start(
        &binary.to_string_lossy(),
        &url,
        &replica_env("restart-a", &[]),
    )?;
    let environments = match form {
        Form::Short => 10,
        Form::Long => 40,
    };
    let plan = r#"
      - name: one
        deploy: [api]
        gates: [ { soak: 2s } ]
      - name: two
        deploy: [web]
        gates: [ { soak: 2s } ]
"#;
    let names = fleet::apply(&server, 1, environments, "200ms", plan).await?;
    let ids = fleet::roll_out(&server, &names, environments, "1.0.0").await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.stop()?;
    let down = Duration::from_secs(5);
    tokio::time::sleep(down).await;
    ensure!(
        server.is_running(),
        "the replica exited while the database was down"
    );
    cluster.start()?;
    let back = chrono::Utc::now();
    let back_instant = Instant::now();
    // Work resumes: the first engine write after the database returned.
    let pool = sqlx::PgPool::connect(&url).await?;
    let resumed = loop {
        let first: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
            "select min(at) from events where at > $1 and actor_kind = 'engine'",
        )
        .bind(back)
        .fetch_one(&pool)
        .await?;
        if let Some(first) = first {
            break (first - back).to_std().unwrap_or_default();
        }
        ensure!(
            back_instant.elapsed() < Duration::from_secs(60),
            "no engine work within 60 s of the database's return"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let started = Instant::now();
    loop {
        let unfinished: i64 = sqlx::query_scalar(
            "select count(*) from rollouts where state not in ('succeeded', 'failed', 'cancelled', 'superseded', 'rolled_back', 'rollback_failed')",
        )
        .fetch_one(&pool)
        .await?;
        if unfinished == 0 {
            break;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(120),
            "{unfinished} rollouts unfinished two minutes after the database returned"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let succeeded: i64 =
        sqlx::query_scalar("select count(*) from rollouts where state = 'succeeded'")
            .fetch_one(&pool)
            .await?;
    let (ready, _) = server.get("/readyz").await?;
    println!(
        "[database restart] down {} s; engine work resumed {:.0} ms after the database returned; {succeeded}/{} succeeded; /readyz {ready}",
        down.as_secs(),
        ms(resumed),
        ids.len()
    );
    ensure!(
        server.is_running(),
        "the replica exited after the database returned"
    );
    ensure!(
        resumed < Duration::from_secs(10),
        "work resumed only {resumed:?} after the database returned"
    );
    ensure!(
        succeeded as usize == ids.len(),
        "{succeeded}/{} rollouts succeeded",
        ids.len()
    );
    ensure!(
        ready == 200,
        "/readyz answered {ready} after the database returned"
    );
    pool.close().await;
    drop(server);
    drop(cluster);
    Ok(())
}

/// What the fake platform saw.
#[derive(Default)]
struct Platform {
    /// POSTs per idempotency key (every attempt, faulted or not).
    attempts: HashMap<String, u32>,
    /// POSTs accepted (not faulted) per key: more than one is an operation issued twice.
    performed: HashMap<String, u32>,
    /// Calls answered with a fault, by kind.
    faults: HashMap<&'static str, u32>,
    /// Every call.
    calls: u32,
}

/// A fault for this call, or none: 30 % 5xx, 10 % 429 with Retry-After, `hang` never answered.
fn fault(platform: &Mutex<Platform>, hang: f64) -> Option<&'static str> {
    let roll: f64 = rand::thread_rng().gen();
    let mut platform = platform.lock().expect("lock");
    platform.calls += 1;
    // Every 25th call times out for certain, so even a short storm has some.
    let kind = if platform.calls % 25 == 7 {
        Some("timeout")
    } else if roll < 0.30 {
        Some("5xx")
    } else if roll < 0.40 {
        Some("429")
    } else if roll < 0.40 + hang {
        Some("timeout")
    } else {
        None
    };
    if let Some(kind) = kind {
        *platform.faults.entry(kind).or_default() += 1;
    }
    kind
}

async fn faulted(kind: &'static str) -> axum::response::Response {
    use axum::response::IntoResponse;
    match kind {
        "5xx" => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "message": "injected 503" })),
        )
            .into_response(),
        "429" => (
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1")],
            axum::Json(json!({ "message": "injected 429" })),
        )
            .into_response(),
        _ => {
            // Past the adapter's call timeout (30 s): the client gives up first.
            tokio::time::sleep(Duration::from_secs(35)).await;
            axum::http::StatusCode::GATEWAY_TIMEOUT.into_response()
        }
    }
}

async fn fake_platform(hang: f64) -> Result<(String, Arc<Mutex<Platform>>)> {
    use axum::extract::{Path as UrlPath, State};
    use axum::response::IntoResponse;
    let platform = Arc::new(Mutex::new(Platform::default()));
    let deploy = move |State(platform): State<Arc<Mutex<Platform>>>,
                       UrlPath(key): UrlPath<String>| async move {
        *platform
            .lock()
            .expect("lock")
            .attempts
            .entry(key.clone())
            .or_default() += 1;
        if let Some(kind) = fault(&platform, hang) {
            return faulted(kind).await;
        }
        // Every accepted POST counts: a second one for a key means the engine issued an
        // operation again after the platform had taken it.
        *platform
            .lock()
            .expect("lock")
            .performed
            .entry(key.clone())
            .or_default() += 1;
        (
            axum::http::StatusCode::ACCEPTED,
            axum::Json(json!({ "id": key, "status": "running" })),
        )
            .into_response()
    };
    let status = move |State(platform): State<Arc<Mutex<Platform>>>,
                       UrlPath(key): UrlPath<String>| async move {
        if let Some(kind) = fault(&platform, hang) {
            return faulted(kind).await;
        }
        let known = platform.lock().expect("lock").performed.contains_key(&key);
        if known {
            axum::Json(json!({ "id": key, "status": "succeeded" })).into_response()
        } else {
            (
                axum::http::StatusCode::NOT_FOUND,
                axum::Json(json!({ "message": "no such deployment" })),
            )
                .into_response()
        }
    };
    let app = axum::Router::new()
        .route("/deploy/{key}", axum::routing::post(deploy))
        .route("/status/{key}", axum::routing::get(status))
        .with_state(Arc::clone(&platform));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((url, platform))
}

/// Rollouts through a platform that fails often and in every way.
async fn fault_storm(binary: &Path, form: Form) -> Result<()> {
    let hang = 0.02;
    let (platform_url, platform) = fake_platform(hang).await?;
    let db = TestDb::new().await?;
    let server = Server::start(
        &binary.to_string_lossy(),
        &db.url,
        &replica_env("storm-a", &[]),
    )?;
    let environments = form.storm_rollouts();
    let mut yaml = format!(
        "app: storm\ncomponents: [web, api]\nenvironments:\n  - name: e0\n    targets: &targets\n      web: {{ provider: http, deploy_url: \"{platform_url}/deploy/{{id}}\", status_url: \"{platform_url}/status/{{id}}\" }}\n      api: {{ provider: http, deploy_url: \"{platform_url}/deploy/{{id}}\", status_url: \"{platform_url}/status/{{id}}\" }}\n    plan: &plan\n      - name: backend\n        deploy: [api]\n        on_failure: fail\n      - name: web\n        deploy: [web]\n        on_failure: fail\n"
    );
    for index in 1..environments {
        yaml.push_str(&format!(
            "  - name: e{index}\n    targets: *targets\n    plan: *plan\n"
        ));
    }
    let (status, body) = server.apply("storm", &yaml).await?;
    ensure!(status == 201, "apply: {status} {body}");
    let started = Instant::now();
    let ids = fleet::roll_out(&server, &["storm".to_owned()], environments, "1.0.0").await?;
    wait_finished(&db, Duration::from_secs(300)).await?;
    let elapsed = started.elapsed();
    let states: Vec<(String, i64)> =
        sqlx::query_as("select state::text, count(*) from rollouts group by 1 order by 1")
            .fetch_all(&db.pool)
            .await?;
    let step_attempts: i32 = sqlx::query_scalar("select coalesce(max(attempt), 0) from step_runs")
        .fetch_one(&db.pool)
        .await?;
    drop(server);
    let (operations, max_attempts, redone, calls, faults) = {
        let platform = platform.lock().expect("lock");
        (
            platform.performed.len(),
            platform.attempts.values().copied().max().unwrap_or(0),
            platform.performed.values().filter(|&&n| n > 1).count(),
            platform.calls,
            format!("{:?}", platform.faults),
        )
    };
    println!(
        "[fault storm] {} rollouts in {:.0} s: {states:?}; {} platform calls, faults {:?}; {operations} operations, \
         at most {max_attempts} POSTs for one operation, step attempts ≤ {step_attempts}",
        ids.len(),
        elapsed.as_secs_f64(),
        calls,
        faults,
    );
    ensure!(
        states == vec![("succeeded".to_owned(), ids.len() as i64)],
        "not every rollout succeeded: {states:?}"
    );
    ensure!(redone == 0, "{redone} operations were carried out twice");
    ensure!(
        operations == ids.len() * 2,
        "{operations} operations for {} deploys",
        ids.len() * 2
    );
    ensure!(
        max_attempts <= 30,
        "one operation was POSTed {max_attempts} times: retries are not bounded"
    );
    db.drop_database().await?;
    Ok(())
}

/// Mixed API reads and webhook pushes at a fixed rate.
async fn load(binary: &Path, form: Form) -> Result<()> {
    let db = TestDb::new().await?;
    let server = Server::start(
        &binary.to_string_lossy(),
        &db.url,
        &replica_env("load-a", &[]),
    )?;
    let (status, body) = server
        .apply(
            "hello",
            &bench::webhook_config("hello", "Codertocat/Hello-World"),
        )
        .await?;
    ensure!(status == 201, "apply: {status} {body}");
    let (status, body) = server
        .apply(
            "shop",
            &fleet::config("shop", 4, "50ms", fleet::INSTANT_PLAN),
        )
        .await?;
    ensure!(status == 201, "apply: {status} {body}");
    let ids = fleet::roll_out(&server, &["shop".to_owned()], 4, "1.0.0").await?;
    let base = server.url.clone();
    let run: u32 = rand::random();
    let paths: Vec<String> = ids
        .iter()
        .map(|id| format!("/api/v1/rollouts/{id}"))
        .chain([
            "/api/v1/apps/shop/environments/e0".to_owned(),
            "/api/v1/apps/shop/releases".to_owned(),
            "/api/v1/rollouts".to_owned(),
            "/api/v1/events".to_owned(),
        ])
        .collect();
    let make: MakeRequest = Arc::new(move |client, _, n| {
        if n % 5 == 4 {
            bench::push_request(client, &format!("{base}/hooks/github"), run, (0, n), None)
        } else {
            let path = paths.choose(&mut rand::thread_rng()).expect("paths");
            client
                .get(format!("{base}{path}"))
                .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        }
    });
    let rate = 50.0;
    let result = support::fixed_rate(rate, Duration::from_secs(form.load_seconds()), make).await;
    println!(
        "[load] {} s at {rate:.0} req/s (1 in 5 a webhook push): {} ok, {} errors, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        form.load_seconds(),
        result.ok,
        result.errors,
        ms(result.quantile(0.5)),
        ms(result.quantile(0.99)),
        ms(result.latencies.last().copied().unwrap_or_default()),
    );
    let value: Value = json!(result.error_samples);
    drop(server);
    ensure!(result.errors == 0, "{} errors, e.g. {value}", result.errors);
    db.drop_database().await?;
    Ok(())
}
