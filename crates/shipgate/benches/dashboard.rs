//! How long each dashboard page takes to render with a large history: 100,000 releases,
//! 20,000 finished rollouts, 100,000 audit events, plus a few real rollouts with phases,
//! steps and gate checks. Starts the real binary on port 0 against a database of its own,
//! signs in, requests every page repeatedly and prints the first (cold) time and the median,
//! p95 and worst of the following ones.
//! It exits non-zero when a page's p95 is over the budget (20 ms by default;
//! `SHIPGATE_PAGE_BUDGET_MS` changes it), so CI can run it as a check.
//!
//! Run it optimised: `cargo bench -p shipgate --bench dashboard`. With
//! `SHIPGATE_BENCH_KEEP_DB=1` the seeded database is kept (its name is printed) for `EXPLAIN`.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;
use shipgate_testkit::{Server, TestDb, ADMIN_TOKEN};

const BINARY: &str = env!("CARGO_BIN_EXE_shipgate");
const RELEASES: i64 = 100_000;
const ROLLOUTS: i64 = 20_000;
const EVENTS: i64 = 100_000;
const SAMPLES: usize = 30;

const CONFIG: &str = r#"
app: shop
repository: acme/shop
components: [web, api]
environments:
  - name: staging
    targets: &targets
      web: { provider: simulated, latency: 10ms }
      api: { provider: simulated, latency: 10ms }
    plan: &plan
      - name: backend
        deploy: [api]
        gates:
          - health: { components: [api], interval: 100ms, timeout: 1s, failures: 2, successes: 3 }
        on_failure: rollback
      - name: web
        deploy: [web]
        gates: [ { soak: 100ms } ]
        on_failure: rollback
  - name: production
    promotion: { from: staging, soak: 1h }
    targets: *targets
    plan: *plan
"#;

/// Fills the database with a long history, as plain SQL (fast, and no API limits).
async fn seed(db: &TestDb) -> Result<()> {
    let pool = &db.pool;
    sqlx::query(
        "insert into releases (id, app_id, version, git_sha, artifacts, content_hash, created_by, source, created_at, committed_at)
         select gen_random_uuid(), a.id, 'seed-' || n, md5(n::text),
                jsonb_build_object('web', 'web:' || n, 'api', 'api:' || n), md5(n::text), 'token:seed', 'api',
                now() - (($1 - n) * interval '1 minute'), now() - (($1 - n) * interval '1 minute') - interval '2 hours'
           from apps a, generate_series(1, $1) n where a.name = 'shop'",
    )
    .bind(RELEASES)
    .execute(pool)
    .await?;
    sqlx::query(
        "insert into rollouts (id, app_id, environment_id, release_id, kind, state, plan, targets, created_by, trigger,
                               created_at, started_at, finished_at, activated_at)
         select gen_random_uuid(), r.app_id, e.id, r.id, 'deploy',
                (case when n % 10 = 0 then 'failed' else 'succeeded' end)::rollout_state,
                '{\"phases\": []}', '{}', 'token:seed', 'api',
                r.created_at, r.created_at, r.created_at + interval '5 minutes', r.created_at
           from (select id, app_id, created_at, row_number() over (order by created_at desc) as n
                   from releases where version like 'seed-%' order by created_at desc limit $1) r
           join environments e on e.app_id = r.app_id and e.name = case when r.n % 2 = 0 then 'staging' else 'production' end
          where r.n > 10",
    )
    .bind(ROLLOUTS)
    .execute(pool)
    .await?;
    sqlx::query(
        "insert into events (at, app_id, environment_id, actor_kind, actor, action, details)
         select now() - (n * interval '1 second'), e.app_id, e.id, 'token', 'seed',
                (array['rollout.created', 'rollout.succeeded', 'release.created', 'rollout.approved'])[1 + n % 4],
                jsonb_build_object('n', n)
           from environments e, generate_series(1, $1 / 2) n",
    )
    .bind(EVENTS)
    .execute(pool)
    .await?;
    sqlx::query("analyze").execute(pool).await?;
    Ok(())
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

async fn run() -> Result<bool> {
    let budget = Duration::from_millis(
        std::env::var("SHIPGATE_PAGE_BUDGET_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20),
    );
    let db = TestDb::new().await?;
    let server = Server::start(BINARY, &db.url, &[])?;
    let (status, body) = server.apply("shop", CONFIG).await?;
    if status != 201 {
        bail!("apply: {status} {body}");
    }
    let started = Instant::now();
    seed(&db).await.context("seeding")?;
    eprintln!(
        "seeded {RELEASES} releases, {ROLLOUTS} rollouts, {EVENTS} events in {:?}",
        started.elapsed()
    );
    // A few real rollouts, with phases, steps and gate checks, and a rollback.
    let mut last = String::new();
    for version in ["1.0.0", "1.1.0"] {
        server
            .post(
                "/api/v1/apps/shop/releases",
                &json!({ "version": version, "artifacts": { "web": version, "api": version } }),
            )
            .await?;
        let (_, body) = server
            .post(
                "/api/v1/apps/shop/environments/staging/rollouts",
                &json!({ "release": version }),
            )
            .await?;
        last = body["id"].as_str().context("no rollout id")?.to_owned();
        server.wait_finished(&last, Duration::from_secs(60)).await?;
    }
    let (_, body) = server
        .post(
            "/api/v1/apps/shop/environments/staging/rollback",
            &json!({ "reason": "benchmark" }),
        )
        .await?;
    let rollback = body["id"].as_str().context("no rollback id")?.to_owned();
    server
        .wait_finished(&rollback, Duration::from_secs(60))
        .await?;

    let browser = reqwest::Client::builder().cookie_store(true).build()?;
    let signed_in = browser
        .post(server.at("/login"))
        .form(&[("token", ADMIN_TOKEN)])
        .send()
        .await?;
    if !signed_in.status().is_success() {
        bail!("sign-in answered {}", signed_in.status());
    }
    let pages = [
        "/".to_owned(),
        "/apps/shop".to_owned(),
        "/apps/shop/releases".to_owned(),
        "/apps/shop/rollbacks".to_owned(),
        format!("/apps/shop/rollbacks/{rollback}"),
        format!("/rollouts/{last}"),
        format!("/rollouts/{rollback}"),
        "/apps/shop/environments/staging/config".to_owned(),
        "/apps/shop/freezes".to_owned(),
        "/apps/shop/deliveries".to_owned(),
        "/apps/shop/metrics".to_owned(),
        "/apps/shop/metrics?days=365".to_owned(),
        "/audit".to_owned(),
        "/audit?app=shop&action=rollout.".to_owned(),
        "/audit?actor=nobody".to_owned(),
        "/access".to_owned(),
    ];
    println!(
        "{:<48} {:>9} {:>9} {:>9} {:>9}",
        "page", "first", "median", "p95", "max"
    );
    let mut within = true;
    for page in &pages {
        let mut times = Vec::with_capacity(SAMPLES);
        let mut first = Duration::ZERO;
        for round in 0..SAMPLES + 3 {
            let started = Instant::now();
            let response = browser.get(server.at(page)).send().await?;
            let status = response.status();
            let _ = response.bytes().await?;
            if !status.is_success() {
                bail!("{page} answered {status}");
            }
            if round == 0 {
                first = started.elapsed();
            } else if round >= 3 {
                times.push(started.elapsed());
            }
        }
        times.sort();
        let p95 = percentile(&times, 0.95);
        let over = p95 > budget;
        within &= !over;
        println!(
            "{:<48} {:>7.2}ms {:>7.2}ms {:>7.2}ms {:>7.2}ms{}",
            page,
            first.as_secs_f64() * 1000.0,
            percentile(&times, 0.5).as_secs_f64() * 1000.0,
            p95.as_secs_f64() * 1000.0,
            times.last().copied().unwrap_or_default().as_secs_f64() * 1000.0,
            if over { "  OVER BUDGET" } else { "" }
        );
    }
    drop(server);
    if std::env::var_os("SHIPGATE_BENCH_KEEP_DB").is_some() {
        eprintln!("kept the database {} for EXPLAIN", db.name);
    } else {
        db.drop_database().await?;
    }
    Ok(within)
}

#[tokio::main]
async fn main() -> Result<()> {
    // `cargo test --benches` runs benches with `--bench` absent: only build them then.
    if !std::env::args().any(|arg| arg == "--bench") {
        return Ok(());
    }
    if run().await? {
        Ok(())
    } else {
        bail!("a page's p95 is over the budget")
    }
}
