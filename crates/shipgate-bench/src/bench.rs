//! The benchmarks behind `docs/BENCHMARKS.md`. Each scenario starts the real (release) binary
//! against a fresh database, measures, and compares with a baseline taken in the same run on the
//! same machine (a bare axum handler, pgbench), so a noisy machine moves both sides together.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;
use shipgate_testkit::{Server, TestDb, ADMIN_TOKEN};

use crate::fleet;
use crate::support::{self, ms, percentile, LoadResult, MakeRequest};

const PUSH: &str = include_str!("../../../tests/fixtures/github/push-branch.json");
const PUSH_SHA: &str = "6113728f27ae82c7b1a177c8d03f9e96e0adf246";
const WEBHOOK_SECRET: &str = "benchmark-webhook-secret";

/// How big a run is.
#[derive(Clone, Copy, Debug)]
pub struct Size {
    /// Seconds of each load window.
    pub seconds: u64,
    /// Rollouts in the engine-throughput scenario.
    pub rollouts: usize,
    /// Rollouts in flight in the scheduler scenario.
    pub scheduled: usize,
    /// The soak of each phase in the scheduler scenario's steady run, in seconds: with
    /// `scheduled` rollouts in flight, rollouts arrive at `scheduled / (3 × soak)` per second.
    pub steady_soak: u64,
    /// Rollouts rolled back in the rollback scenario.
    pub rollbacks: usize,
    /// Whether to run the dashboard benchmark (`cargo bench -p shipgate --bench dashboard`).
    pub dashboard: bool,
}

impl Size {
    /// The figures of the report.
    pub const FULL: Size = Size {
        seconds: 10,
        rollouts: 10_000,
        scheduled: 1_000,
        steady_soak: 15,
        rollbacks: 100,
        dashboard: true,
    };
    /// A smoke run: every scenario, a tenth of the work.
    pub const QUICK: Size = Size {
        seconds: 3,
        rollouts: 1_000,
        scheduled: 200,
        steady_soak: 3,
        rollbacks: 20,
        dashboard: false,
    };
}

/// One figure of the report.
#[derive(Clone, Debug)]
pub struct Figure {
    /// Which scenario (1..7).
    pub scenario: u8,
    /// What was measured.
    pub name: String,
    /// The measurement, formatted.
    pub value: String,
    /// The baseline and the ratio to it, formatted (empty when there is none).
    pub baseline: String,
    /// The target, formatted.
    pub target: String,
    /// Whether the target is met (`None`: no target for this line).
    pub met: Option<bool>,
}

/// Collects figures and prints each as it is measured.
#[derive(Default)]
pub struct Report {
    /// The figures so far.
    pub figures: Vec<Figure>,
    /// Free-form notes (per-page dashboard tables, error samples).
    pub notes: Vec<String>,
}

impl Report {
    fn add(
        &mut self,
        scenario: u8,
        name: impl Into<String>,
        value: impl Into<String>,
        baseline: impl Into<String>,
        target: impl Into<String>,
        met: Option<bool>,
    ) {
        let figure = Figure {
            scenario,
            name: name.into(),
            value: value.into(),
            baseline: baseline.into(),
            target: target.into(),
            met,
        };
        println!(
            "({}) {:<52} {:>22}  {:<34} target {:<22} {}",
            figure.scenario,
            figure.name,
            figure.value,
            figure.baseline,
            figure.target,
            match figure.met {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "",
            }
        );
        self.figures.push(figure);
    }

    fn note(&mut self, text: impl Into<String>) {
        let text = text.into();
        println!("    {}", text.replace('\n', "\n    "));
        self.notes.push(text);
    }
}

fn bearer(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    request.header("authorization", format!("Bearer {ADMIN_TOKEN}"))
}

/// The bare handler: the same stack's floor (tokio, hyper, axum, a JSON body), nothing else.
pub async fn bare_server() -> Result<()> {
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(|| async {
            axum::Json(
                json!({ "id": "0192f0c4-0000-7000-8000-000000000000", "state": "succeeded" }),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("bare listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

/// Starts `shipgate-bench bare-server` as a process of its own (as the real server is).
struct Bare {
    child: std::process::Child,
    url: String,
}

impl Bare {
    fn start() -> Result<Self> {
        use std::io::{BufRead, BufReader};
        let mut child = std::process::Command::new(std::env::current_exe()?)
            .arg("bare-server")
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let url = line
            .trim()
            .strip_prefix("bare listening on ")
            .context("the bare server did not start")?
            .to_owned();
        Ok(Bare { child, url })
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn describe(result: &LoadResult) -> String {
    format!(
        "{:.0} req/s, p50 {:.2} ms, p99 {:.2} ms",
        result.rate(),
        ms(result.quantile(0.5)),
        ms(result.quantile(0.99))
    )
}

async fn wait_all_finished(db: &TestDb, limit: Duration) -> Result<Duration> {
    let started = Instant::now();
    loop {
        if support::unfinished(db).await? == 0 {
            return Ok(started.elapsed());
        }
        if started.elapsed() > limit {
            bail!(
                "{} rollouts still unfinished after {limit:?}",
                support::unfinished(db).await?
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// (1) API reads and (6, idle) memory.
pub async fn api_reads(binary: &Path, size: Size, report: &mut Report) -> Result<()> {
    let (db, server) = support::start(binary, &[]).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = support::memory_mib(server.pid()).map(|(rss, _)| rss);
    let (status, body) = server
        .apply(
            "shop",
            &fleet::config("shop", 2, "10ms", fleet::INSTANT_PLAN),
        )
        .await?;
    if status != 201 {
        bail!("apply: {status} {body}");
    }
    let ids = fleet::roll_out(&server, &["shop".to_owned()], 2, "1.0.0").await?;
    wait_all_finished(&db, Duration::from_secs(60)).await?;
    let rollout = ids[0].clone();

    let window = Duration::from_secs(size.seconds);
    let warmup = Duration::from_secs(1);
    let bare = Bare::start()?;
    let bare_url = bare.url.clone();
    let bare_result = support::closed_loop(
        64,
        false,
        warmup,
        window,
        Arc::new(move |client, _, _| client.get(&bare_url)),
    )
    .await;
    let bare_rss = support::memory_mib(bare.child.id()).map(|(rss, _)| rss);
    drop(bare);

    let url = server.at(&format!("/api/v1/rollouts/{rollout}"));
    let make: MakeRequest = Arc::new(move |client, _, _| bearer(client.get(&url)));
    let split = support::CpuSplit::start(server.pid());
    let (transactions_before, _) = support::database_activity(&db).await?;
    let rollout_result = support::closed_loop(64, false, warmup, window, make).await;
    let (transactions_after, _) = support::database_activity(&db).await?;
    report.note(format!(
        "GET /api/v1/rollouts/{{id}}: {}; {:.1} database statements per request",
        split.finish(),
        (transactions_after - transactions_before) as f64
            / (rollout_result.ok + rollout_result.errors).max(1) as f64
    ));
    let url = server.at("/api/v1/apps/shop/environments/e0");
    let make: MakeRequest = Arc::new(move |client, _, _| bearer(client.get(&url)));
    let status_result = support::closed_loop(64, false, warmup, window, make).await;
    drop(server);

    // The same read with the rollout cache off: what every read cost before it (the database
    // round trips), measured in this run.
    let uncached_server = Server::start(
        &binary.to_string_lossy(),
        &db.url,
        &support::server_env(&[("SHIPGATE_ROLLOUT_CACHE", "false")]),
    )?;
    let mut uncached_reads = Vec::new();
    for path in [
        format!("/api/v1/rollouts/{rollout}"),
        "/api/v1/apps/shop/environments/e0".to_owned(),
    ] {
        let url = uncached_server.at(&path);
        let make: MakeRequest = Arc::new(move |client, _, _| bearer(client.get(&url)));
        let (transactions_before, _) = support::database_activity(&db).await?;
        let result = support::closed_loop(64, false, warmup, window, make).await;
        let (transactions_after, _) = support::database_activity(&db).await?;
        report.note(format!(
            "GET {path} with SHIPGATE_ROLLOUT_CACHE=false: {:.1} database statements per request",
            (transactions_after - transactions_before) as f64
                / (result.ok + result.errors).max(1) as f64
        ));
        uncached_reads.push(result);
    }
    let [uncached, uncached_status] =
        <[_; 2]>::try_from(uncached_reads).unwrap_or_else(|_| unreachable!("two paths were read"));
    drop(uncached_server);

    for (name, result, judged) in [
        (
            "GET /api/v1/rollouts/{id}, 64 connections",
            &rollout_result,
            true,
        ),
        (
            "GET /api/v1/rollouts/{id}, cache off (before), 64 conn.",
            &uncached,
            false,
        ),
        (
            "GET /api/v1/apps/{app}/environments/{env}, 64 conn.",
            &status_result,
            true,
        ),
        (
            "GET /api/v1/apps/{app}/environments/{env}, cache off (before)",
            &uncached_status,
            false,
        ),
    ] {
        let ratio = result.rate() / bare_result.rate().max(1e-9);
        let p99 = result.quantile(0.99);
        let (rate_target, p99_target) = if judged {
            ("≥ 35% of bare", "p99 ≤ 10 ms")
        } else {
            ("(the same read before the cache)", "")
        };
        report.add(
            1,
            name,
            format!("{:.0} req/s", result.rate()),
            format!(
                "{:.1}% of bare ({:.0} req/s)",
                ratio * 100.0,
                bare_result.rate()
            ),
            rate_target,
            judged.then_some(ratio >= 0.35),
        );
        report.add(
            1,
            format!("  p50 / p99 ({} errors)", result.errors),
            format!("{:.2} / {:.2} ms", ms(result.quantile(0.5)), ms(p99)),
            format!(
                "bare p50 / p99 {:.2} / {:.2} ms",
                ms(bare_result.quantile(0.5)),
                ms(bare_result.quantile(0.99))
            ),
            p99_target,
            judged.then_some(p99 <= Duration::from_millis(10) && result.errors == 0),
        );
        if !result.error_samples.is_empty() {
            report.note(format!("{name}: errors {:?}", result.error_samples));
        }
    }
    report.note(format!("bare handler: {}", describe(&bare_result)));
    support::execute(
        &db,
        &[
            "create table bench_rows (id int primary key, n bigint not null default 0)",
            "insert into bench_rows (id) select generate_series(1, 10000)",
        ],
    )
    .await?;
    let selects = support::run_pgbench(
        &db.url,
        "\\set id random(1, 10000)\nselect n from bench_rows where id = :id;\n",
        20,
        size.seconds as u32,
    )?;
    report.note(format!(
        "the database's ceiling on this machine: pgbench point selects {:.0} tps (20 clients)",
        selects.tps
    ));
    if let Some(idle) = idle {
        report.add(
            6,
            "RSS idle (fresh server, migrated, no apps)",
            format!("{idle:.1} MiB"),
            bare_rss
                .map(|bare| format!("bare axum process {bare:.1} MiB"))
                .unwrap_or_default(),
            "≤ 40 MB",
            Some(idle <= 40.0),
        );
    }
    db.drop_database().await?;
    Ok(())
}

fn sign(body: &[u8]) -> String {
    shipgate_testkit::hmac_sha256(WEBHOOK_SECRET, body)
}

/// The webhook app: pushes to `master` of `repository` deploy to staging.
pub fn webhook_config(app: &str, repository: &str) -> String {
    format!(
        r#"
app: {app}
repository: {repository}
webhook_secret: "{WEBHOOK_SECRET}"
components: [web, api]
environments:
  - name: staging
    auto_deploy: {{ branch: master }}
    targets:
      web: {{ provider: simulated, latency: 10ms }}
      api: {{ provider: simulated, latency: 10ms }}
    plan:
      - name: all
        deploy: [api, web]
"#
    )
}

/// A signed GitHub push of a fresh commit to `url`, from Codertocat/Hello-World or, with
/// `repository`, from Codertocat/Hello-World-<n>.
pub fn push_request(
    client: &reqwest::Client,
    url: &str,
    run: u32,
    (connection, n): (usize, u64),
    repository: Option<usize>,
) -> reqwest::RequestBuilder {
    // Commit ids look random, as Git's do: the receiver names a release by the short sha
    // (7 hex digits) and falls back to longer ones only when that is taken, so ids sharing a
    // prefix would measure the fallback on every delivery. The tail keeps each one unique.
    let sha = format!(
        "{:016x}{run:08x}{connection:08x}{n:08x}",
        scramble(u64::from(run) ^ ((connection as u64) << 32) ^ n.rotate_left(17))
    );
    let mut body = PUSH.replace(PUSH_SHA, &sha);
    if let Some(repository) = repository {
        body = body.replace(
            "\"full_name\": \"Codertocat/Hello-World\"",
            &format!("\"full_name\": \"Codertocat/Hello-World-{repository}\""),
        );
    }
    let body = body.into_bytes();
    client
        .post(url)
        .header("content-type", "application/json")
        .header("x-github-event", "push")
        .header("x-github-delivery", uuid::Uuid::new_v4().to_string())
        .header("x-hub-signature-256", sign(&body))
        .header("user-agent", "GitHub-Hookshot/bench")
        .body(body)
}

/// SplitMix64's finalizer: spreads a counter over all 64 bits.
fn scramble(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

const THREE_INSERTS_SCHEMA: &[&str] = &[
    "create table bench_releases (id uuid primary key, app_id int not null, version text not null,
        git_sha text, artifacts jsonb not null, content_hash text not null, created_at timestamptz not null default now(),
        unique (app_id, version))",
    "create table bench_rollouts (id uuid primary key, release_id uuid not null references bench_releases(id),
        state text not null, plan jsonb not null, created_at timestamptz not null default now())",
    "create table bench_deliveries (id uuid primary key, source text not null, delivery_id text not null,
        payload_digest text not null, release_id uuid references bench_releases(id),
        rollout_id uuid references bench_rollouts(id), received_at timestamptz not null default now(),
        unique (source, delivery_id))",
];

const THREE_INSERTS: &str = r#"
\set key random(1, 9223372036854775806)
begin;
insert into bench_releases (id, app_id, version, git_sha, artifacts, content_hash)
  values (md5(:key || 'release')::uuid, 1, md5(:key || 'version'), md5(random()::text), '{"web": "x", "api": "x"}', md5(random()::text));
insert into bench_rollouts (id, release_id, state, plan)
  values (md5(:key || 'rollout')::uuid, md5(:key || 'release')::uuid, 'queued', '{"phases": [{"name": "all", "steps": []}]}');
insert into bench_deliveries (id, source, delivery_id, payload_digest, release_id, rollout_id)
  values (gen_random_uuid(), 'github', md5(:key || 'delivery'), md5(random()::text), md5(:key || 'release')::uuid, md5(:key || 'rollout')::uuid);
commit;
"#;

/// (2) Webhook ingestion against pgbench's three-insert transaction: pushes to one app (every
/// delivery serialized on its environment, by design), and spread over 16 apps. Ingestion is
/// measured with the engine held off the rollouts it enqueues (the baseline only inserts too);
/// then again with the engine running them, on the same two cores.
pub async fn webhooks(binary: &Path, size: Size, report: &mut Report) -> Result<()> {
    let mut results = Vec::new();
    for (apps, engine) in [(1usize, false), (16, false), (1, true), (16, true)] {
        let (db, server) = support::start(binary, &[]).await?;
        if !engine {
            support::hold_rollouts(&db).await?;
        }
        for index in 0..apps {
            let repository = if apps == 1 {
                "Codertocat/Hello-World".to_owned()
            } else {
                format!("Codertocat/Hello-World-{index}")
            };
            let (status, body) = server
                .apply(
                    &format!("hello{index}"),
                    &webhook_config(&format!("hello{index}"), &repository),
                )
                .await?;
            if status != 201 {
                bail!("apply: {status} {body}");
            }
        }
        let url = server.at("/hooks/github");
        let run: u32 = rand::random();
        let make: MakeRequest = Arc::new(move |client, connection, n| {
            let repository = (apps > 1).then_some(connection % apps);
            push_request(client, &url, run, (connection, n), repository)
        });
        // GitHub delivers from many addresses; the receiver limits each address (1,200/min),
        // so each connection here has an address of its own.
        let split = support::CpuSplit::start(server.pid());
        let result = support::closed_loop(
            64,
            true,
            Duration::from_secs(1),
            Duration::from_secs(size.seconds),
            make,
        )
        .await;
        let cpu = split.finish();
        let deployed: i64 = sqlx::query_scalar(
            "select count(*) from webhook_deliveries d join rollouts r on r.id = d.rollout_id
              where d.verdict = 'deployed'",
        )
        .fetch_one(&db.pool)
        .await?;
        drop(server);
        let label = if engine {
            format!("{apps} app(s), engine running")
        } else {
            format!("{apps} app(s)")
        };
        report.note(format!("webhooks, {label}: {cpu}"));
        results.push((label, engine, result, deployed, db));
    }
    let (_, _, _, _, db) = &results[0];
    support::execute(db, THREE_INSERTS_SCHEMA).await?;
    let baseline = support::run_pgbench(&db.url, THREE_INSERTS, 20, size.seconds as u32)?;
    for (label, engine, result, deployed, db) in results {
        let ratio = result.rate() / baseline.tps.max(1e-9);
        report.add(
            2,
            format!("signed GitHub pushes → release + rollout, {label}"),
            format!("{:.0} deliveries/s", result.rate()),
            format!(
                "{:.1}% of pgbench 3-insert txn ({:.0} tps)",
                ratio * 100.0,
                baseline.tps
            ),
            if engine {
                "(the engine's work on the same cores)"
            } else {
                "≥ 50% of pgbench"
            },
            (!engine).then_some(ratio >= 0.5 && result.errors == 0),
        );
        report.add(
            2,
            format!(
                "  p50 / p99 ({} errors; {deployed} deliveries with a rollout)",
                result.errors
            ),
            format!(
                "{:.2} / {:.2} ms",
                ms(result.quantile(0.5)),
                ms(result.quantile(0.99))
            ),
            format!(
                "pgbench mean latency {:.2} ms",
                ms(baseline.latency_average)
            ),
            "",
            None,
        );
        if !result.error_samples.is_empty() {
            report.note(format!("webhooks: errors {:?}", result.error_samples));
        }
        db.drop_database().await?;
    }
    Ok(())
}

/// Samples the server's memory until told to stop; returns the largest VmRSS seen.
fn sample_memory(
    pid: u32,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<f64>,
) {
    let (stop, mut stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut peak: f64 = 0.0;
        loop {
            if let Some((rss, _)) = support::memory_mib(pid) {
                peak = peak.max(rss);
            }
            tokio::select! {
                _ = &mut stopped => return peak,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    });
    (stop, task)
}

async fn fleet_of(
    server: &Server,
    db: &TestDb,
    rollouts: usize,
    plan: &str,
    latency: &str,
) -> Result<()> {
    let environments = rollouts.min(100);
    let apps = rollouts.div_ceil(environments);
    let names = fleet::apply(server, apps, environments, latency, plan).await?;
    support::hold_rollouts(db).await?;
    let created = Instant::now();
    let ids = fleet::roll_out(server, &names, environments, "1.0.0").await?;
    eprintln!(
        "    created {} held rollouts in {:.1} s",
        ids.len(),
        created.elapsed().as_secs_f64()
    );
    Ok(())
}

/// (3) Engine throughput, (6, 10k) memory, and (4, health) gate → next phase latency.
pub async fn engine(binary: &Path, size: Size, report: &mut Report) -> Result<()> {
    let (db, server) = support::start(binary, &[]).await?;
    fleet_of(&server, &db, size.rollouts, fleet::INSTANT_PLAN, "0ms").await?;
    let (stop, sampler) = sample_memory(server.pid());
    let (transactions_before, writes_before) = support::database_activity(&db).await?;
    let split = support::CpuSplit::start(server.pid());
    support::release_rollouts(&db).await?;
    let elapsed = wait_all_finished(&db, Duration::from_secs(1800)).await?;
    let cpu = split.finish();
    let (transactions_after, writes_after) = support::database_activity(&db).await?;
    let _ = stop.send(());
    let peak_sampled = sampler.await.unwrap_or(0.0);
    let peak_hwm = support::memory_mib(server.pid()).map(|(_, hwm)| hwm);
    let (phases, succeeded): (i64, i64) = sqlx::query_as(
        "select (select count(*) from phases where state = 'succeeded'),
                (select count(*) from rollouts where state = 'succeeded')",
    )
    .fetch_one(&db.pool)
    .await?;
    // pending → running → verifying → succeeded: three transitions per phase.
    let transitions = phases * 3;
    let rate = transitions as f64 / elapsed.as_secs_f64();
    report.note(format!(
        "engine: {cpu}; per phase transition {:.1} database transactions/statements and {:.1} rows written",
        (transactions_after - transactions_before) as f64 / transitions.max(1) as f64,
        (writes_after - writes_before) as f64 / transitions.max(1) as f64,
    ));
    drop(server);

    support::execute(
        &db,
        &[
            "create table bench_rows (id int primary key, n bigint not null default 0)",
            "insert into bench_rows (id) select generate_series(1, 10000)",
        ],
    )
    .await?;
    let baseline = support::run_pgbench(
        &db.url,
        "\\set id random(1, 10000)\nupdate bench_rows set n = n + 1 where id = :id;\n",
        20,
        size.seconds as u32,
    )?;
    report.add(
        3,
        format!(
            "{} rollouts × 3 phases, simulated, instant gates",
            size.rollouts
        ),
        format!("{rate:.0} transitions/s"),
        format!(
            "{:.1}% of pgbench 1-row updates ({:.0} tps)",
            rate / baseline.tps * 100.0,
            baseline.tps
        ),
        "≥ 2,000 transitions/s",
        Some(rate >= 2000.0 && succeeded as usize == size.rollouts),
    );
    report.add(
        3,
        format!(
            "  wall time; {succeeded}/{} succeeded, {phases} phases",
            size.rollouts
        ),
        format!("{:.1} s", elapsed.as_secs_f64()),
        format!("{:.0} rollouts/s", succeeded as f64 / elapsed.as_secs_f64()),
        "",
        None,
    );
    let peak = peak_hwm.unwrap_or(peak_sampled).max(peak_sampled);
    report.add(
        6,
        format!("peak RSS with {} rollouts in flight", size.rollouts),
        format!("{peak:.1} MiB"),
        "VmHWM of the server process",
        "≤ 200 MB at 10k",
        Some(peak <= 200.0),
    );

    let latencies = durations(&gate_to_next_phase(&db, None).await?);
    report.add(
        4,
        format!(
            "health gate passed → next phase started, {} in flight",
            size.rollouts
        ),
        format!(
            "p50 {:.1} / p99 {:.1} ms",
            ms(percentile(&latencies, 0.5)),
            ms(percentile(&latencies, 0.99))
        ),
        format!("{} transitions", latencies.len()),
        "",
        None,
    );
    db.drop_database().await?;
    Ok(())
}

/// From the moment each gate passed to the start of the next phase, with how many rollouts
/// were in flight (their first phase started, their last not finished) at that start. A soak
/// gate passes `soak` seconds after its phase began verifying.
async fn gate_to_next_phase(db: &TestDb, soak: Option<u64>) -> Result<Vec<(Duration, i64)>> {
    // Counting what is in flight compares every transition with every rollout: only for the
    // scheduler's runs, not the 10k of (3).
    let (passed, in_flight) = match soak {
        Some(_) => (
            "(p.verifying_at + make_interval(secs => $1))",
            "(select count(*) from flight f where f.began <= next.started_at
                 and (f.ended is null or f.ended > next.started_at))",
        ),
        None => (
            "(select max(checked_at) from gate_checks where phase_id = p.id and verdict = 'pass')",
            "0::bigint",
        ),
    };
    let query = format!(
        "with flight as (select rollout_id, min(started_at) as began, max(finished_at) as ended
                           from phases group by rollout_id),
              next as (select extract(epoch from (n.started_at - {passed}))::float8 as seconds,
                              n.started_at
                         from phases p join phases n
                           on n.rollout_id = p.rollout_id and n.position = p.position + 1
                        where p.verifying_at is not null and n.started_at is not null)
         select next.seconds, {in_flight} from next where next.seconds is not null"
    );
    let mut latencies: Vec<(Duration, i64)> = sqlx::query_as::<_, (f64, i64)>(&query)
        .bind(soak.unwrap_or(0) as f64)
        .fetch_all(&db.pool)
        .await?
        .into_iter()
        .map(|(seconds, in_flight)| (Duration::from_secs_f64(seconds.max(0.0)), in_flight))
        .collect();
    latencies.sort();
    Ok(latencies)
}

fn durations(latencies: &[(Duration, i64)]) -> Vec<Duration> {
    latencies.iter().map(|(latency, _)| *latency).collect()
}

/// (4) Scheduler latency: a soak ending → the next phase starting, with `size.scheduled`
/// rollouts in flight. Steady: rollouts arrive at a fixed rate, so that many are in flight and
/// their soaks end spread out, as in a busy installation; the target applies here. Burst: all
/// of them released at the same instant, so all their soaks end within milliseconds of each
/// other and the figure is the time to drain the herd at (3)'s rate, not a scheduling delay.
pub async fn scheduler(binary: &Path, size: Size, report: &mut Report) -> Result<()> {
    let (db, server) = support::start(binary, &[]).await?;
    let soak = size.steady_soak;
    let plan = fleet::SOAK_PLAN.replace("soak: 1s", &format!("soak: {soak}s"));
    // Twice the rollouts in flight: the first half fills the pipeline, the second keeps it
    // full while the first drains.
    fleet_of(&server, &db, size.scheduled * 2, &plan, "100ms").await?;
    let rate = size.scheduled as f64 / (3 * soak) as f64;
    eprintln!(
        "    releasing {} rollouts at {rate:.1}/s",
        size.scheduled * 2
    );
    // Once, before the clock: dropping the trigger locks the rollouts table exclusively.
    support::stop_holding(&db).await?;
    let started = Instant::now();
    let mut released = 0u64;
    let mut ticks = tokio::time::interval(Duration::from_millis(100));
    while released < (size.scheduled * 2) as u64 {
        ticks.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate).ceil() as u64;
        if due > released {
            released += support::release_some(&db, Some((due - released) as i64)).await?;
        }
    }
    wait_all_finished(&db, Duration::from_secs(900)).await?;
    drop(server);
    let all = gate_to_next_phase(&db, Some(soak)).await?;
    let peak = all
        .iter()
        .map(|(_, in_flight)| *in_flight)
        .max()
        .unwrap_or(0);
    // The transitions made while at least 90 % of the intended load was in flight.
    let loaded: Vec<Duration> = all
        .iter()
        .filter(|(_, in_flight)| *in_flight as f64 >= 0.9 * size.scheduled as f64)
        .map(|(latency, _)| *latency)
        .collect();
    let p99 = percentile(&loaded, 0.99);
    report.add(
        4,
        format!(
            "soak gate passed → next phase started, steady: {} in flight, {rate:.0} rollouts/s arriving",
            size.scheduled
        ),
        format!(
            "p50 {:.1} / p99 {:.1} ms",
            ms(percentile(&loaded, 0.5)),
            ms(p99)
        ),
        format!(
            "{} transitions with ≥ {} in flight (peak {peak}); max {:.1} ms",
            loaded.len(),
            size.scheduled * 9 / 10,
            ms(loaded.last().copied().unwrap_or_default())
        ),
        "p99 ≤ 50 ms",
        Some(!loaded.is_empty() && p99 <= Duration::from_millis(50)),
    );
    db.drop_database().await?;

    let (db, server) = support::start(binary, &[]).await?;
    fleet_of(&server, &db, size.scheduled, fleet::SOAK_PLAN, "100ms").await?;
    support::release_rollouts(&db).await?;
    wait_all_finished(&db, Duration::from_secs(900)).await?;
    drop(server);
    let latencies = durations(&gate_to_next_phase(&db, Some(1)).await?);
    report.add(
        4,
        format!(
            "  burst: {} released at once, their soaks ending together",
            size.scheduled
        ),
        format!(
            "p50 {:.1} / p99 {:.1} ms",
            ms(percentile(&latencies, 0.5)),
            ms(percentile(&latencies, 0.99))
        ),
        format!(
            "{} transitions; max {:.1} ms; drains at (3)'s rate",
            latencies.len(),
            ms(latencies.last().copied().unwrap_or_default())
        ),
        "",
        None,
    );
    db.drop_database().await?;
    Ok(())
}

/// (5) Time to roll back: first failing probe → the provider's rollback call.
pub async fn rollback(binary: &Path, size: Size, report: &mut Report) -> Result<()> {
    let (db, server) = support::start(binary, &[]).await?;
    let environments = size.rollbacks;
    let names = fleet::apply(&server, 1, environments, "100ms", fleet::ROLLBACK_PLAN).await?;
    fleet::roll_out(&server, &names, environments, "1.0.0").await?;
    wait_all_finished(&db, Duration::from_secs(300)).await?;
    fleet::roll_out(&server, &names, environments, "2.0.0-sick").await?;
    wait_all_finished(&db, Duration::from_secs(300)).await?;
    drop(server);
    let rows: Vec<(f64, f64)> = sqlx::query_as(
        "select extract(epoch from (o.issued - f.first_fail))::float8,
                extract(epoch from (rb.requested_at - f.first_fail))::float8
           from rollouts s
           join lateral (select min(checked_at) as first_fail from gate_checks g
                          where g.rollout_id = s.id and g.verdict = 'fail') f on f.first_fail is not null
           join rollbacks rb on rb.rollback_of = s.id
           join lateral (select min(o.created_at) as issued from step_runs sr
                           join simulated_operations o on o.natural_key = sr.natural_key
                          where sr.rollout_id = rb.rollout_id and sr.kind = 'rollback') o on o.issued is not null
          where s.state = 'rolled_back'",
    )
    .fetch_all(&db.pool)
    .await?;
    let mut to_call: Vec<Duration> = rows
        .iter()
        .map(|(seconds, _)| Duration::from_secs_f64(seconds.max(0.0)))
        .collect();
    to_call.sort();
    let mut to_request: Vec<Duration> = rows
        .iter()
        .map(|(_, seconds)| Duration::from_secs_f64(seconds.max(0.0)))
        .collect();
    to_request.sort();
    let floor = Duration::from_secs(2);
    let p99 = percentile(&to_call, 0.99);
    report.add(
        5,
        format!(
            "first failing probe → provider rollback call ({}/{environments})",
            to_call.len()
        ),
        format!(
            "p50 {:.0} / p99 {:.0} ms",
            ms(percentile(&to_call, 0.5)),
            ms(p99)
        ),
        format!(
            "floor (3 probes 1 s apart) {:.0} ms: p99 {:.2}×",
            ms(floor),
            p99.as_secs_f64() / floor.as_secs_f64()
        ),
        "p99 ≤ 3,300 ms",
        Some(p99 <= Duration::from_millis(3300) && to_call.len() == environments),
    );
    report.add(
        5,
        "  first failing probe → rollback recorded",
        format!(
            "p50 {:.0} / p99 {:.0} ms",
            ms(percentile(&to_request, 0.5)),
            ms(percentile(&to_request, 0.99))
        ),
        "",
        "",
        None,
    );
    db.drop_database().await?;
    Ok(())
}

/// (7) The dashboard benchmark (`crates/shipgate/benches/dashboard.rs`, 100k releases), run as
/// cargo runs it; its table goes into the report.
pub fn dashboard(report: &mut Report) -> Result<()> {
    let output =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["bench", "-p", "shipgate", "--bench", "dashboard"])
            .current_dir(support::workspace_root())
            .stderr(std::process::Stdio::inherit())
            .output()
            .context("running cargo bench -p shipgate --bench dashboard")?;
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let row = |page: &str| -> Option<(f64, f64)> {
        let line = text
            .lines()
            .find(|line| line.split_whitespace().next() == Some(page))?;
        let numbers: Vec<f64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|cell| cell.trim_end_matches("ms").parse().ok())
            .collect();
        Some((*numbers.get(1)?, *numbers.get(2)?))
    };
    let rollout_line = text
        .lines()
        .find(|line| line.starts_with("/rollouts/"))
        .and_then(|line| line.split_whitespace().next())
        .map(str::to_owned);
    for (label, page) in [
        ("overview page (GET /), 100k releases", Some("/".to_owned())),
        (
            "rollout page (GET /rollouts/{id}), 100k releases",
            rollout_line,
        ),
    ] {
        match page.as_deref().and_then(row) {
            Some((median, p95)) => report.add(
                7,
                label,
                format!("median {median:.2} / p95 {p95:.2} ms"),
                "client-side time on loopback",
                "≤ 20 ms",
                Some(p95 <= 20.0),
            ),
            None => report.add(7, label, "not measured", "", "≤ 20 ms", None),
        }
    }
    report.note(format!("dashboard benchmark output:\n{}", text.trim_end()));
    if !output.status.success() {
        report
            .note("the dashboard benchmark exited non-zero (a page over its budget, or an error)");
    }
    Ok(())
}
