//! What every scenario shares: finding the `shipgate` binary, starting it with benchmark
//! settings, load generation (closed loop at a fixed concurrency, or open loop at a fixed rate),
//! percentiles, process memory from `/proc`, pgbench, and the machine's description.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use shipgate_testkit::{Server, TestDb};
use tokio::sync::Mutex;

/// Where the workspace lives (this crate is `crates/shipgate-bench`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("the crate sits two levels below the workspace")
        .to_path_buf()
}

/// The `shipgate` binary: `SHIPGATE_BINARY`, else `target/release/shipgate` when `release`,
/// else the newer of `target/debug/shipgate` and `target/release/shipgate`; built with cargo
/// when it is missing.
pub fn shipgate_binary(release: bool) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("SHIPGATE_BINARY") {
        return Ok(PathBuf::from(path));
    }
    let target = workspace_root().join("target");
    let profiles: &[&str] = if release {
        &["release"]
    } else {
        &["debug", "release"]
    };
    let newest = profiles
        .iter()
        .map(|profile| target.join(profile).join("shipgate"))
        .filter_map(|candidate| {
            let modified = std::fs::metadata(&candidate).ok()?.modified().ok()?;
            Some((modified, candidate))
        })
        .max();
    if let Some((_, candidate)) = newest {
        return Ok(candidate);
    }
    let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    build.args(["build", "-p", "shipgate"]);
    if release {
        build.arg("--release");
    }
    let status = build
        .current_dir(workspace_root())
        .status()
        .context("running cargo build -p shipgate")?;
    if !status.success() {
        bail!("cargo build -p shipgate failed");
    }
    let built = target
        .join(if release { "release" } else { "debug" })
        .join("shipgate");
    Ok(built)
}

/// Settings every benchmark server gets: limits out of the way (the load is ours), fast polls.
pub fn server_env<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![
        ("SHIPGATE_RATE_LIMIT_PER_CLIENT", "100000000"),
        ("SHIPGATE_RATE_LIMIT_PER_TOKEN", "100000000"),
        ("SHIPGATE_DB_CONNECTIONS", "20"),
        ("SHIPGATE_STEP_POLL_INTERVAL", "50ms"),
        ("SHIPGATE_DRIFT_INTERVAL", "0s"),
        ("SHIPGATE_LEASE", "5s"),
        ("RUST_LOG", "error"),
    ];
    env.extend_from_slice(extra);
    env
}

/// A fresh database and the real binary serving it.
pub async fn start(binary: &Path, extra: &[(&str, &str)]) -> Result<(TestDb, Server)> {
    let db = TestDb::new().await?;
    let server = Server::start(&binary.to_string_lossy(), &db.url, &server_env(extra))?;
    Ok((db, server))
}

/// Resident and peak resident memory of a process, in MiB (`VmRSS`, `VmHWM`).
pub fn memory_mib(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<f64> {
        let line = status.lines().find(|line| line.starts_with(name))?;
        let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// The `q` quantile of sorted durations.
pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// Milliseconds, for printing.
pub fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// What a load run measured.
#[derive(Debug, Default)]
pub struct LoadResult {
    /// Requests answered as expected.
    pub ok: u64,
    /// Requests that failed or got an unexpected status (with the first few reasons).
    pub errors: u64,
    /// Some of the errors, for the report.
    pub error_samples: Vec<String>,
    /// Latencies of the successful requests, sorted.
    pub latencies: Vec<Duration>,
    /// Wall time of the measured window.
    pub elapsed: Duration,
}

impl LoadResult {
    /// Successful requests per second.
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// A latency quantile.
    pub fn quantile(&self, q: f64) -> Duration {
        percentile(&self.latencies, q)
    }

    fn merge(&mut self, other: LoadResult) {
        self.ok += other.ok;
        self.errors += other.errors;
        for sample in other.error_samples {
            if self.error_samples.len() < 5 {
                self.error_samples.push(sample);
            }
        }
        self.latencies.extend(other.latencies);
    }
}

/// Builds request number `n` of connection `connection`.
pub type MakeRequest =
    Arc<dyn Fn(&reqwest::Client, usize, u64) -> reqwest::RequestBuilder + Send + Sync>;

/// A client holding one keep-alive connection, as one `wrk` connection does, from `source` (a
/// loopback address of its own, as deliveries from a Git host's many senders) when given.
pub fn connection(source: Option<std::net::IpAddr>) -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .local_address(source)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("a client")
}

async fn send(client: &reqwest::Client, request: reqwest::RequestBuilder) -> Result<(), String> {
    let _ = client;
    match request.send().await {
        Ok(response) => {
            let status = response.status();
            let body = response.bytes().await.map_err(|e| e.to_string())?;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!(
                    "{status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                ))
            }
        }
        Err(error) => Err(error.to_string()),
    }
}

/// Closed loop: `connections` connections each send a request as soon as the previous one is
/// answered, for `warmup` (not counted) and then `duration`. With `distinct_sources`, each
/// connection comes from its own loopback address (127.0.1.n), so per-address limits apply
/// per connection rather than to the whole load.
pub async fn closed_loop(
    connections: usize,
    distinct_sources: bool,
    warmup: Duration,
    duration: Duration,
    make: MakeRequest,
) -> LoadResult {
    let begin = Instant::now() + warmup;
    let end = begin + duration;
    let mut tasks = Vec::new();
    for connection_index in 0..connections {
        let make = Arc::clone(&make);
        tasks.push(tokio::spawn(async move {
            let source = distinct_sources.then(|| {
                std::net::IpAddr::from([
                    127,
                    0,
                    1 + (connection_index / 250) as u8,
                    1 + (connection_index % 250) as u8,
                ])
            });
            let client = connection(source);
            let mut result = LoadResult::default();
            let mut n = 0u64;
            loop {
                let started = Instant::now();
                if started >= end {
                    break;
                }
                let outcome = send(&client, make(&client, connection_index, n)).await;
                n += 1;
                if started < begin {
                    continue;
                }
                match outcome {
                    Ok(()) => {
                        result.ok += 1;
                        result.latencies.push(started.elapsed());
                    }
                    Err(error) => {
                        result.errors += 1;
                        if result.error_samples.len() < 5 {
                            result.error_samples.push(error);
                        }
                    }
                }
            }
            result
        }));
    }
    let mut total = LoadResult::default();
    for task in tasks {
        if let Ok(result) = task.await {
            total.merge(result);
        }
    }
    total.latencies.sort();
    total.elapsed = duration;
    total
}

/// Open loop: requests start at `rate` per second for `duration` whatever the answers do
/// (latency counted from the scheduled start, so queueing shows), over a pool of connections.
pub async fn fixed_rate(rate: f64, duration: Duration, make: MakeRequest) -> LoadResult {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("a client");
    let total = Arc::new(Mutex::new(LoadResult::default()));
    let started = Instant::now();
    let count = (rate * duration.as_secs_f64()) as u64;
    let mut tasks = Vec::with_capacity(count as usize);
    for n in 0..count {
        let due = started + Duration::from_secs_f64(n as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let client = client.clone();
        let make = Arc::clone(&make);
        let total = Arc::clone(&total);
        tasks.push(tokio::spawn(async move {
            let outcome = send(&client, make(&client, 0, n)).await;
            let mut total = total.lock().await;
            match outcome {
                Ok(()) => {
                    total.ok += 1;
                    total.latencies.push(due.elapsed());
                }
                Err(error) => {
                    total.errors += 1;
                    if total.error_samples.len() < 5 {
                        total.error_samples.push(error);
                    }
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let mut total = std::mem::take(&mut *total.lock().await);
    total.latencies.sort();
    total.elapsed = started.elapsed();
    total
}

/// The `pgbench` binary: on `PATH`, else the newest under `/usr/lib/postgresql`.
pub fn pgbench() -> Option<PathBuf> {
    postgres_binary("pgbench")
}

/// A PostgreSQL binary: on `PATH`, else the newest under `/usr/lib/postgresql/*/bin`.
pub fn postgres_binary(name: &str) -> Option<PathBuf> {
    let versioned = || {
        let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|entry| entry.ok().map(|e| e.path().join("bin").join(name)))
            .filter(|candidate| candidate.is_file())
            .collect();
        found.sort();
        found.pop()
    };
    versioned().or_else(|| {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// What pgbench measured.
#[derive(Debug, Clone, Copy)]
pub struct PgbenchResult {
    /// Transactions per second (without the initial connection time).
    pub tps: f64,
    /// Mean latency.
    pub latency_average: Duration,
}

/// Runs a custom pgbench script against `url` with `clients` clients for `seconds`.
pub fn run_pgbench(url: &str, script: &str, clients: u32, seconds: u32) -> Result<PgbenchResult> {
    let binary =
        pgbench().context("pgbench not found (install postgresql-contrib or postgresql)")?;
    let file = std::env::temp_dir().join(format!("shipgate-bench-{}.sql", uuid::Uuid::new_v4()));
    std::fs::write(&file, script)?;
    // The same transport as Shipgate's pool: plain TCP (libpq would negotiate TLS with a
    // server that offers it, sqlx here has no TLS) and prepared statements (sqlx prepares and
    // caches every statement; pgbench's default re-parses each one).
    let output = Command::new(binary)
        .env("PGSSLMODE", "disable")
        .args([
            "-n",
            "-M",
            "prepared",
            "-c",
            &clients.to_string(),
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
            "-f",
            &file.to_string_lossy(),
            url,
        ])
        .output()
        .context("running pgbench")?;
    let _ = std::fs::remove_file(&file);
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    if !output.status.success() {
        bail!(
            "pgbench failed: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let number_after = |prefix: &str| -> Option<f64> {
        let line = text.lines().find(|line| line.contains(prefix))?;
        let rest = &line[line.find(prefix)? + prefix.len()..];
        rest.split_whitespace().next()?.parse().ok()
    };
    let tps = number_after("tps = ").context("no tps in pgbench's output")?;
    let latency = number_after("latency average = ").unwrap_or(0.0);
    Ok(PgbenchResult {
        tps,
        latency_average: Duration::from_secs_f64(latency / 1000.0),
    })
}

/// The machine, for the report: cores, memory, CPU model, kernel.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split(':').nth(1))
                .map(|model| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|line| line.starts_with("MemTotal:"))?;
            let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(format!("{:.0} GiB RAM", kib / 1024.0 / 1024.0))
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|text| text.trim().to_owned())
        .unwrap_or_default();
    let postgres = Command::new(postgres_binary("postgres").unwrap_or_else(|| "postgres".into()))
        .arg("--version")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_default();
    format!("{cores} cores ({cpu}), {memory}, Linux {kernel}, {postgres}")
}

/// Executes SQL statements on the test database, one after another.
pub async fn execute(db: &TestDb, statements: &[&str]) -> Result<()> {
    for statement in statements {
        sqlx::query(statement)
            .execute(&db.pool)
            .await
            .with_context(|| format!("running {statement}"))?;
    }
    Ok(())
}

/// Holds new rollouts away from the engine: every inserted rollout starts leased to nobody
/// until [`release_rollouts`]. Lets a scenario create its whole load before the clock starts.
pub async fn hold_rollouts(db: &TestDb) -> Result<()> {
    execute(
        db,
        &[
            "create or replace function bench_hold() returns trigger language plpgsql as $$
             begin new.lease_owner := 'bench-hold'; new.lease_until := 'infinity'; return new; end $$",
            "create trigger bench_hold before insert on rollouts for each row execute function bench_hold()",
        ],
    )
    .await
}

/// New rollouts are no longer held; those held so far stay held until released.
pub async fn stop_holding(db: &TestDb) -> Result<()> {
    execute(db, &["drop trigger bench_hold on rollouts"]).await
}

/// Hands up to `limit` held rollouts (all of them with `None`), by id, to the engine and wakes
/// the replicas; returns how many it handed over.
pub async fn release_some(db: &TestDb, limit: Option<i64>) -> Result<u64> {
    let released = sqlx::query(
        "update rollouts set lease_owner = null, lease_until = null, next_wake_at = now()
          where id in (select id from rollouts where lease_owner = 'bench-hold'
                        order by id limit $1)",
    )
    .bind(limit)
    .execute(&db.pool)
    .await?
    .rows_affected();
    execute(db, &["notify shipgate_wake"]).await?;
    Ok(released)
}

/// Hands every held rollout to the engine at once and wakes the replicas.
pub async fn release_rollouts(db: &TestDb) -> Result<()> {
    stop_holding(db).await?;
    release_some(db, None).await.map(drop)
}

/// Counts rollouts not yet in a terminal state.
pub async fn unfinished(db: &TestDb) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "select count(*) from rollouts
          where state in ('queued', 'pending_approval', 'in_progress', 'paused', 'rolling_back')",
    )
    .fetch_one(&db.pool)
    .await?)
}

/// Runs `futures` with at most `limit` at once, returning their results in order.
pub async fn bounded<T, F>(limit: usize, futures: Vec<F>) -> Vec<T>
where
    F: std::future::Future<Output = T>,
{
    use futures::stream::StreamExt;
    futures::stream::iter(futures)
        .buffered(limit)
        .collect()
        .await
}

/// CPU seconds (user + system) a process has used, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = &stat[stat.rfind(") ")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let user: f64 = fields.get(11)?.parse().ok()?;
    let system: f64 = fields.get(12)?.parse().ok()?;
    Some((user + system) / 100.0)
}

/// Busy and total CPU seconds of the whole machine so far, from `/proc/stat`.
pub fn machine_cpu_seconds() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let ticks: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|field| field.parse().ok())
        .collect();
    let total: f64 = ticks.iter().sum();
    let idle = ticks.get(3)? + ticks.get(4).unwrap_or(&0.0);
    Some(((total - idle) / 100.0, total / 100.0))
}

/// Where the CPU went while `work` ran: the server process, everything else (Postgres, the
/// load generator, other tenants of the machine), and idle.
pub struct CpuSplit {
    server_before: f64,
    machine_before: (f64, f64),
    pid: u32,
}

impl CpuSplit {
    /// Starts counting.
    pub fn start(pid: u32) -> Self {
        CpuSplit {
            server_before: cpu_seconds(pid).unwrap_or(0.0),
            machine_before: machine_cpu_seconds().unwrap_or((0.0, 0.0)),
            pid,
        }
    }

    /// `server x% / rest y% / idle z%` of the machine's CPU time since [`CpuSplit::start`].
    pub fn finish(&self) -> String {
        let server = cpu_seconds(self.pid).unwrap_or(0.0) - self.server_before;
        let (busy, total) = machine_cpu_seconds().unwrap_or((0.0, 0.0));
        let busy = busy - self.machine_before.0;
        let total = (total - self.machine_before.1).max(1e-9);
        format!(
            "CPU: shipgate {:.0}%, rest (Postgres, load generator, other tenants) {:.0}%, idle {:.0}% of {:.0} core-s",
            server / total * 100.0,
            (busy - server).max(0.0) / total * 100.0,
            (total - busy).max(0.0) / total * 100.0,
            total
        )
    }
}

/// Transactions (each autocommit statement counts as one) and rows written in a database so
/// far, from `pg_stat_database`: a proxy for round trips per unit of work.
pub async fn database_activity(db: &TestDb) -> Result<(i64, i64)> {
    // Statistics are flushed by each backend about once a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    Ok(sqlx::query_as(
        "select xact_commit + xact_rollback, tup_inserted + tup_updated + tup_deleted
           from pg_stat_database where datname = current_database()",
    )
    .fetch_one(&db.pool)
    .await?)
}
