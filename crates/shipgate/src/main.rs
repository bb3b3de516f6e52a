//! `shipgate`: the server (`serve`, `demo`), its maintenance (`migrate`, `healthcheck`) and the
//! client commands CI uses (`apply`, `release create`, `deploy --wait`, `rollback`, ...; see
//! [`client`] for them and their exit codes).

mod client;
mod config;
mod database;
mod demo;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use clap::{Parser, Subcommand};
use tokio::sync::watch;
use tracing::{info, warn};

use shipgate_domain::decide::Timing;
use shipgate_engine::notifier::{Notifier, NotifierConfig};
use shipgate_engine::{Engine, EngineConfig};
use shipgate_providers::simulated::Simulated;
use shipgate_providers::Registry;
use shipgate_server::AppState;
use shipgate_store::crypto::{decode_key, SecretBox};

use crate::config::{redact_url, ClientConfig, ServerConfig};

/// Shipgate: a release control plane for apps on hosted platforms.
#[derive(Parser)]
#[command(name = "shipgate", version, about, after_help = client::EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API and dashboard and run engine workers.
    Serve(ServerConfig),
    /// Serve, plus a demo app on simulated providers with releases flowing through.
    Demo(ServerConfig),
    /// Apply pending database migrations and exit.
    Migrate(ServerConfig),
    /// Apply an app config file (YAML or JSON), resolving ${VAR} from this environment.
    Apply {
        /// The config file.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Validate only; send nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        client: ClientConfig,
    },
    #[command(flatten)]
    Client(client::ClientCommand),
    /// API tokens, minted on the server's machine (straight into the database).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Dashboard users, added on the server's machine (straight into the database).
    #[command(subcommand)]
    User(UserCommand),
    /// Exit 0 when the local server answers /healthz (for container health checks).
    Healthcheck {
        /// Address the server listens on.
        #[arg(long, env = "SHIPGATE_LISTEN", default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
    },
}

/// `token ...`.
#[derive(Subcommand)]
enum TokenCommand {
    /// Mint an API token and print it once (Shipgate keeps only its id). The first token of an
    /// installation comes from here; later ones can come from `POST /api/v1/tokens`.
    Create {
        /// What the token is for (shown in listings and the audit log).
        #[arg(long)]
        name: String,
        /// `read`, `deploy`, `approve` or `admin`; repeat or separate with commas.
        #[arg(long = "scope", value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        /// Limit the token to this app.
        #[arg(long)]
        app: Option<String>,
        /// Limit the token to this environment of --app.
        #[arg(long = "env")]
        environment: Option<String>,
        /// Lifetime such as `90d` or `12h` (default 90 days, at most 730 days).
        #[arg(long)]
        expires: Option<String>,
        #[command(flatten)]
        server: ServerConfig,
    },
}

/// `user ...`.
#[derive(Subcommand)]
enum UserCommand {
    /// Add a dashboard user. The password is read from standard input (one line), never from
    /// a flag, so it stays out of shell history and process listings.
    Create {
        /// Sign-in name.
        #[arg(long)]
        username: String,
        /// `viewer`, `deployer`, `approver` or `admin`.
        #[arg(long)]
        role: String,
        #[command(flatten)]
        server: ServerConfig,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts");
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(config) => serve(config, false).await,
            Command::Demo(config) => serve(config, true).await,
            Command::Migrate(config) => migrate(config).await,
            Command::Apply {
                file,
                dry_run,
                client,
            } => client::apply(&file, dry_run, &client).await,
            Command::Client(command) => client::run(command).await,
            Command::Token(command) => token_command(command).await,
            Command::User(command) => user_command(command).await,
            Command::Healthcheck { listen } => healthcheck(listen).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => client::report(&error),
    }
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,sqlx=warn,tower_http=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn connect(config: &ServerConfig) -> Result<sqlx::PgPool> {
    let url = database::resolve(config.database_url.as_deref(), &config.data_dir).await?;
    let mut attempt = 0;
    loop {
        match shipgate_store::connect(&url, config.db_connections).await {
            Ok(pool) => {
                info!(database = %redact_url(&url), "connected to the database");
                return Ok(pool);
            }
            Err(error) if attempt < 10 => {
                attempt += 1;
                warn!(%error, attempt, "the database is not answering yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(error) => return Err(error).context("connecting to the database"),
        }
    }
}

async fn migrate(config: ServerConfig) -> Result<()> {
    init_tracing(&config.log_format);
    let pool = connect(&config).await?;
    shipgate_store::migrate(&pool)
        .await
        .context("applying migrations")?;
    info!("migrations applied");
    Ok(())
}

async fn token_command(command: TokenCommand) -> Result<()> {
    let TokenCommand::Create {
        name,
        scopes,
        app,
        environment,
        expires,
        server,
    } = command;
    init_tracing(&server.log_format);
    let pool = connect(&server).await?;
    shipgate_store::migrate(&pool)
        .await
        .context("applying migrations")?;
    let secrets = master_key(&server)?;
    let keys = shipgate_server::auth::TokenKeys::api(&secrets);
    let request = shipgate_server::access::TokenRequest {
        name,
        scopes,
        app,
        environment,
        expires_in: expires,
    };
    let issued = shipgate_server::access::issue_token(
        &pool,
        &keys,
        &request,
        &shipgate_store::events::Actor::system("cli"),
    )
    .await
    .map_err(|error| anyhow::anyhow!("{error}"))?;
    eprintln!(
        "token `{}` (id {}) expires {}; it is shown once, keep it now:",
        issued.record.name,
        issued.record.id,
        issued
            .record
            .expires_at
            .map_or_else(|| "never".to_owned(), |at| at.to_rfc3339())
    );
    println!("{}", issued.token);
    Ok(())
}

async fn user_command(command: UserCommand) -> Result<()> {
    let UserCommand::Create {
        username,
        role,
        server,
    } = command;
    init_tracing(&server.log_format);
    let mut password = String::new();
    std::io::stdin()
        .read_line(&mut password)
        .context("reading the password from standard input")?;
    let password = password.trim_end_matches(['\r', '\n']).to_owned();
    let pool = connect(&server).await?;
    shipgate_store::migrate(&pool)
        .await
        .context("applying migrations")?;
    let user = shipgate_server::access::add_user(
        &pool,
        shipgate_server::access::UserRequest {
            username,
            password,
            role,
        },
        &shipgate_store::events::Actor::system("cli"),
    )
    .await
    .map_err(|error| anyhow::anyhow!("{error}"))?;
    println!("user `{}` added with role {}", user.username, user.role);
    Ok(())
}

/// The master key from the environment, else one generated once and kept (0600) in the data
/// directory.
fn master_key(config: &ServerConfig) -> Result<SecretBox> {
    let previous: Vec<[u8; 32]> = config
        .previous_master_keys
        .as_deref()
        .unwrap_or("")
        .split(',')
        .filter(|key| !key.trim().is_empty())
        .map(|key| decode_key(key).map_err(anyhow::Error::msg))
        .collect::<Result<_>>()
        .context("SHIPGATE_PREVIOUS_MASTER_KEYS")?;
    if let Some(key) = config
        .master_key
        .as_deref()
        .filter(|key| !key.trim().is_empty())
    {
        let key = decode_key(key)
            .map_err(anyhow::Error::msg)
            .context("SHIPGATE_MASTER_KEY")?;
        return Ok(SecretBox::new(key, &previous));
    }
    let path = config.data_dir.join("master.key");
    let key = if path.exists() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        decode_key(&text)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("{}", path.display()))?
    } else {
        let key: [u8; 32] = rand::random();
        write_private(
            &path,
            &base64::engine::general_purpose::STANDARD.encode(key),
        )?;
        warn!(path = %path.display(), "SHIPGATE_MASTER_KEY is unset: generated a master key and kept it there; back it up, or set SHIPGATE_MASTER_KEY");
        key
    };
    Ok(SecretBox::new(key, &previous))
}

fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents.as_bytes())?;
    Ok(())
}

fn replica_name(config: &ServerConfig) -> String {
    config.replica.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        let host = host.trim();
        format!(
            "{}-{}",
            if host.is_empty() { "shipgate" } else { host },
            std::process::id()
        )
    })
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}

async fn serve(config: ServerConfig, demo: bool) -> Result<()> {
    init_tracing(&config.log_format);
    let admin_token = match config.admin_token.clone().filter(|t| !t.is_empty()) {
        Some(token) if token.len() < 16 => {
            bail!("SHIPGATE_ADMIN_TOKEN must be at least 16 characters")
        }
        Some(token) => Some(token),
        None if demo => {
            let bytes: [u8; 24] = rand::random();
            Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
        }
        None => None,
    };
    if admin_token.is_none() {
        info!(
            "no SHIPGATE_ADMIN_TOKEN: sign in with tokens from `shipgate token create` \
             and users from `shipgate user create`"
        );
    }
    let pool = connect(&config).await?;
    shipgate_store::migrate(&pool)
        .await
        .context("applying migrations")?;
    let secrets = master_key(&config)?;
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .ok();
    let replica = replica_name(&config);
    let policy = shipgate_providers::http::RetryPolicy::default();
    let providers = Registry::new()
        .with(Arc::new(Simulated::new(pool.clone(), replica.clone())))
        .with(Arc::new(shipgate_providers::generic::Generic::new(policy)))
        .with(Arc::new(shipgate_providers::heroku::Heroku::new(policy)))
        .with(Arc::new(shipgate_providers::vercel::Vercel::new(policy)))
        .with(Arc::new(shipgate_providers::railway::Railway::new(policy)))
        .with(Arc::new(shipgate_providers::cloudrun::CloudRun::new(
            policy,
        )))
        .with(Arc::new(shipgate_providers::render::Render::new(policy)));
    let engine = Engine::new(
        pool.clone(),
        providers,
        secrets.clone(),
        EngineConfig {
            replica: replica.clone(),
            lease: config.lease.to_std(),
            poll_interval: Duration::from_secs(1),
            concurrency: config.workers.max(1),
            timing: Timing {
                poll_interval: config.step_poll_interval,
                step_timeout: config.step_timeout,
            },
            drift_interval: config.drift_interval.to_std(),
        },
    );
    let (stop, stopped) = watch::channel(false);
    let wait_for_stop = |mut receiver: watch::Receiver<bool>| async move {
        let _ = receiver.wait_for(|stop| *stop).await;
    };
    let engine_task = tokio::spawn(Arc::clone(&engine).run(wait_for_stop(stopped.clone())));
    let notifier = Notifier::new(
        pool.clone(),
        secrets.clone(),
        NotifierConfig {
            public_url: config.public_url.clone().filter(|url| !url.is_empty()),
            ..NotifierConfig::default()
        },
    );
    let notifier_task = tokio::spawn(notifier.run(wait_for_stop(stopped.clone())));
    let state = AppState::new(
        pool.clone(),
        secrets.clone(),
        admin_token.as_deref(),
        metrics,
        config.http_settings(),
    );
    tokio::spawn(state.clone().forward_updates());

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let address = listener.local_addr()?;
    // Scripts and tests read this line to find the port (it may have been 0).
    println!("shipgate listening on http://{address}");
    info!(%address, replica = %replica, "serving");
    if demo {
        println!(
            "demo admin token: {}",
            admin_token.as_deref().unwrap_or_default()
        );
        println!("open http://{address}/ and sign in with that token");
        demo::start(
            pool.clone(),
            secrets.clone(),
            wait_for_stop(stopped.clone()),
        )
        .await?;
    }
    let server = axum::serve(
        listener,
        shipgate_server::app(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown_signal().await;
        info!("shutting down");
        let _ = stop.send(true);
    });
    server.await.context("serving HTTP")?;
    let _ = tokio::time::timeout(Duration::from_secs(10), engine_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), notifier_task).await;
    Ok(())
}

async fn healthcheck(listen: std::net::SocketAddr) -> Result<()> {
    let host = if listen.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        listen.ip().to_string()
    };
    let url = format!("http://{host}:{}/healthz", listen.port());
    let response = reqwest::Client::new()
        .get(&url)
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    if !response.status().is_success() {
        bail!("{url} answered {}", response.status());
    }
    Ok(())
}
