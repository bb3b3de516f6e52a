//! Finding a database with no configuration: `DATABASE_URL` if set; else the local server on
//! 127.0.0.1:5432 (creating database `shipgate` if missing); else a private cluster started
//! under the data directory with the PostgreSQL binaries found on this machine.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};
use tracing::info;

const DATABASE: &str = "shipgate";
const PRIVATE_PORT: u16 = 54329;

/// Returns the URL to use, starting a private cluster if it has to.
pub async fn resolve(configured: Option<&str>, data_dir: &Path) -> Result<String> {
    if let Some(url) = configured.filter(|url| !url.is_empty()) {
        return Ok(url.to_owned());
    }
    for user in ["postgres", "root"] {
        if let Some(url) = try_local(user, 5432).await {
            info!(database = %url, "no DATABASE_URL: using the local PostgreSQL server");
            return Ok(url);
        }
    }
    let url = start_private_cluster(data_dir).await?;
    Ok(url)
}

/// Connects to the `postgres` database as `user` and makes sure `shipgate` exists.
async fn try_local(user: &str, port: u16) -> Option<String> {
    let options = PgConnectOptions::new()
        .host("127.0.0.1")
        .port(port)
        .username(user)
        .database("postgres");
    let mut connection = tokio::time::timeout(Duration::from_secs(3), options.connect())
        .await
        .ok()?
        .ok()?;
    let exists: bool =
        sqlx::query_scalar("select exists(select 1 from pg_database where datname = $1)")
            .bind(DATABASE)
            .fetch_one(&mut connection)
            .await
            .ok()?;
    if !exists {
        // Identifiers cannot be bound; DATABASE is a constant.
        let created = sqlx::query(&format!("create database {DATABASE}"))
            .execute(&mut connection)
            .await;
        if let Err(error) = created {
            // Another replica may have created it meanwhile.
            if !error.to_string().contains("already exists") {
                tracing::warn!(%error, "cannot create the shipgate database");
                return None;
            }
        }
        info!("created database {DATABASE}");
    }
    let _ = connection.close().await;
    Some(format!("postgres://{user}@127.0.0.1:{port}/{DATABASE}"))
}

fn find_binary(name: &str) -> Option<PathBuf> {
    let on_path = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file());
    on_path.or_else(|| {
        let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|entry| entry.ok().map(|e| e.path().join("bin").join(name)))
            .filter(|candidate| candidate.is_file())
            .collect();
        versions.sort();
        versions.pop()
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a PostgreSQL binary, as the `postgres` system user when we are root (PostgreSQL
/// refuses to run as root).
fn run_pg(binary: &Path, args: &[&str], as_postgres: bool) -> Result<()> {
    let mut command = if as_postgres {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(binary);
        command
    } else {
        Command::new(binary)
    };
    // Their chatter belongs with our logs on stderr; stdout carries only what scripts read.
    let status = command
        .args(args)
        .stdout(std::process::Stdio::from(std::io::stderr()))
        .status()
        .with_context(|| format!("running {}", binary.display()))?;
    if !status.success() {
        bail!(
            "{} {} failed with {status}",
            binary.display(),
            args.join(" ")
        );
    }
    Ok(())
}

async fn start_private_cluster(data_dir: &Path) -> Result<String> {
    let (Some(initdb), Some(pg_ctl)) = (find_binary("initdb"), find_binary("pg_ctl")) else {
        bail!(
            "no database: DATABASE_URL is unset, nothing answers on 127.0.0.1:5432, and no PostgreSQL \
             binaries (initdb, pg_ctl) were found to start a private one; install PostgreSQL or set DATABASE_URL"
        );
    };
    let as_postgres = is_root();
    std::fs::create_dir_all(data_dir).context("creating the data directory")?;
    let cluster = data_dir.join("postgres");
    let cluster = std::path::absolute(&cluster).unwrap_or(cluster);
    let cluster_text = cluster.to_string_lossy().to_string();
    if !cluster.join("PG_VERSION").exists() {
        std::fs::create_dir_all(&cluster)?;
        if as_postgres {
            Command::new("chown")
                .args(["-R", "postgres:postgres", &cluster_text])
                .status()?;
        }
        info!(path = %cluster.display(), "initialising a private PostgreSQL cluster");
        run_pg(
            &initdb,
            &[
                "-D",
                &cluster_text,
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
            as_postgres,
        )?;
    }
    let options = format!("-p {PRIVATE_PORT} -c listen_addresses=127.0.0.1 -k /tmp");
    let log = cluster.join("server.log").to_string_lossy().to_string();
    if try_local("postgres", PRIVATE_PORT).await.is_none() {
        run_pg(
            &pg_ctl,
            &[
                "-D",
                &cluster_text,
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "start",
            ],
            as_postgres,
        )?;
    }
    info!(path = %cluster.display(), port = PRIVATE_PORT, "started a private PostgreSQL cluster (stop it with pg_ctl -D <path> stop)");
    try_local("postgres", PRIVATE_PORT)
        .await
        .context("the private PostgreSQL cluster started but does not accept connections")
}
