//! Test support: a fresh database per test, and the real `shipgate` binary started on port 0
//! and driven over HTTP.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

/// The admin token test servers use.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// The server tests create their databases on (`DATABASE_URL`, else the local server).
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn with_database(url: &str, database: &str) -> String {
    let (base, _) = url.rsplit_once('/').unwrap_or((url, ""));
    format!("{base}/{database}")
}

/// A database of its own for one test, migrated.
pub struct TestDb {
    /// Its name.
    pub name: String,
    /// Its URL.
    pub url: String,
    /// A pool on it.
    pub pool: PgPool,
}

impl TestDb {
    /// Creates and migrates a fresh database.
    pub async fn new() -> Result<Self> {
        let name = format!("shipgate_test_{}", Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&admin_url())
            .await
            .context("connecting to Postgres; is it running? (set DATABASE_URL)")?;
        sqlx::query(&format!("create database {name}"))
            .execute(&mut admin)
            .await?;
        let url = with_database(&admin_url(), &name);
        let pool = shipgate_store::connect(&url, 10).await?;
        shipgate_store::migrate(&pool).await?;
        Ok(TestDb { name, url, pool })
    }

    /// Drops the database (closing every connection to it).
    pub async fn drop_database(self) -> Result<()> {
        self.pool.close().await;
        let mut admin = PgConnection::connect(&admin_url()).await?;
        sqlx::query(&format!(
            "drop database if exists {} with (force)",
            self.name
        ))
        .execute(&mut admin)
        .await?;
        Ok(())
    }
}

/// A running `shipgate serve` process.
pub struct Server {
    /// Base URL (`http://127.0.0.1:PORT`).
    pub url: String,
    child: Child,
    /// HTTP client with the admin token.
    pub http: reqwest::Client,
}

impl Server {
    /// Starts `binary serve` on port 0 against `database_url`, with extra environment.
    pub fn start(binary: &str, database_url: &str, env: &[(&str, &str)]) -> Result<Self> {
        let mut command = Command::new(binary);
        command
            .arg("serve")
            .env("DATABASE_URL", database_url)
            .env("SHIPGATE_LISTEN", "127.0.0.1:0")
            .env("SHIPGATE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("SHIPGATE_MASTER_KEY", "00".repeat(32))
            .env("SHIPGATE_STEP_POLL_INTERVAL", "200ms")
            .env("SHIPGATE_LEASE", "3s")
            .env("SHIPGATE_DB_CONNECTIONS", "8")
            .env(
                "RUST_LOG",
                std::env::var("SHIPGATE_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {binary}"))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                if let Some(url) = line.strip_prefix("shipgate listening on ") {
                    let _ = sender.send(url.to_owned());
                }
            }
        });
        let url = match receiver.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                bail!("the server did not start within 60 s");
            }
        };
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {ADMIN_TOKEN}")
                .parse()
                .expect("valid header"),
        );
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(Duration::from_secs(130))
            .build()?;
        Ok(Server { url, child, http })
    }

    /// `kill -9`: no shutdown, no lease given back.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The server process's id (to read its memory from `/proc`, or to signal it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running (false once it exited or crashed).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Full URL of a path.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// PUTs a YAML config.
    pub async fn apply(&self, app: &str, yaml: &str) -> Result<(u16, Value)> {
        let response = self
            .http
            .put(self.at(&format!("/api/v1/apps/{app}")))
            .header("content-type", "application/yaml")
            .body(yaml.to_owned())
            .send()
            .await?;
        Ok((
            response.status().as_u16(),
            response.json().await.unwrap_or(Value::Null),
        ))
    }

    /// POSTs JSON.
    pub async fn post(&self, path: &str, body: &Value) -> Result<(u16, Value)> {
        let response = self.http.post(self.at(path)).json(body).send().await?;
        Ok((
            response.status().as_u16(),
            response.json().await.unwrap_or(Value::Null),
        ))
    }

    /// GETs JSON.
    pub async fn get(&self, path: &str) -> Result<(u16, Value)> {
        let response = self.http.get(self.at(path)).send().await?;
        Ok((
            response.status().as_u16(),
            response.json().await.unwrap_or(Value::Null),
        ))
    }

    /// Signs in to the dashboard with the login form's fields (`username` and `password`, or
    /// `token`): a client holding the session cookie that does not follow redirects (so a test
    /// sees the 303 an action answers).
    pub async fn sign_in(&self, form: &[(&str, &str)]) -> Result<reqwest::Client> {
        let client = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let response = client.post(self.at("/login")).form(form).send().await?;
        anyhow::ensure!(
            response.status() == 303,
            "signing in answered {}",
            response.status()
        );
        Ok(client)
    }

    /// Long-polls a rollout until it is finished, or fails after `limit`.
    pub async fn wait_finished(&self, rollout: &str, limit: Duration) -> Result<Value> {
        let started = Instant::now();
        loop {
            let (status, body) = self
                .get(&format!("/api/v1/rollouts/{rollout}?wait=10s"))
                .await?;
            if status != 200 {
                bail!("GET rollout answered {status}: {body}");
            }
            if body["finished"] == Value::Bool(true) {
                return Ok(body);
            }
            if started.elapsed() > limit {
                bail!(
                    "rollout {rollout} did not finish within {limit:?}; last seen: {}",
                    body["state"]
                );
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Polls `check` until it returns `Some`, or fails after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if started.elapsed() > limit {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub mod fakes;

/// The CSRF token a dashboard page's forms carry.
pub fn csrf_of(html: &str) -> String {
    let start = html
        .find(r#"name="csrf" value=""#)
        .expect("a form with a CSRF token")
        + r#"name="csrf" value=""#.len();
    html[start..start + html[start..].find('"').unwrap()].to_owned()
}

/// `sha256=<hex>` HMAC-SHA256 of `body` under `secret`: how GitHub, Shipgate's generic hook and
/// its signed notifications sign a body.
///
/// Written apart from `shipgate_engine::notifier::signature` on purpose: tests check Shipgate's
/// signatures against it, so it must not be the code under test.
pub fn hmac_sha256(secret: &str, body: &[u8]) -> String {
    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("sha256={hex}")
}
