//! The process configuration: one struct, parsed once at start-up from flags and environment
//! variables. No other module reads the environment (except `apply`, whose job is to resolve
//! `${VAR}` references where it runs). Secrets are redacted in `Debug`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

/// Settings of the server (`serve`, `demo`, `migrate`).
#[derive(Args, Clone)]
pub struct ServerConfig {
    /// Postgres URL. Unset: the local server on 127.0.0.1:5432 (database `shipgate`, created if
    /// missing), else a private cluster started under the data directory.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// Address to serve on.
    #[arg(long, env = "SHIPGATE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Where a private database, a generated master key and other local state live.
    #[arg(long, env = "SHIPGATE_DATA_DIR", default_value = ".shipgate")]
    pub data_dir: PathBuf,

    /// Bootstrap admin bearer token (the demo generates one when unset).
    #[arg(long, env = "SHIPGATE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Key that encrypts stored credentials: 32 bytes as base64 or 64 hex digits. Unset or
    /// empty: a key generated once and kept in the data directory.
    #[arg(long, env = "SHIPGATE_MASTER_KEY", hide_env_values = true)]
    pub master_key: Option<String>,

    /// Earlier master keys, comma-separated, still accepted for decryption during a rotation.
    #[arg(long, env = "SHIPGATE_PREVIOUS_MASTER_KEYS", hide_env_values = true)]
    pub previous_master_keys: Option<String>,

    /// This replica's name in leases and the audit log (default: host name and process id).
    #[arg(long, env = "SHIPGATE_REPLICA")]
    pub replica: Option<String>,

    /// Rollouts one replica drives at once.
    #[arg(long, env = "SHIPGATE_WORKERS", default_value_t = 32)]
    pub workers: usize,

    /// Time between polls of a running provider operation.
    #[arg(long, env = "SHIPGATE_STEP_POLL_INTERVAL", default_value = "2s")]
    pub step_poll_interval: shipgate_domain::Span,

    /// A provider operation not finished after this long fails.
    #[arg(long, env = "SHIPGATE_STEP_TIMEOUT", default_value = "15m")]
    pub step_timeout: shipgate_domain::Span,

    /// How long an engine claim lasts without a heartbeat (a crashed replica's rollouts are
    /// picked up after this).
    #[arg(long, env = "SHIPGATE_LEASE", default_value = "15s")]
    pub lease: shipgate_domain::Span,

    /// How often platforms are asked what they serve, to notice drift (`0s`: never).
    #[arg(long, env = "SHIPGATE_DRIFT_INTERVAL", default_value = "60s")]
    pub drift_interval: shipgate_domain::Span,

    /// Database connections this replica may open.
    #[arg(long, env = "SHIPGATE_DB_CONNECTIONS", default_value_t = 20)]
    pub db_connections: u32,

    /// Log format: `text` or `json`.
    #[arg(long, env = "SHIPGATE_LOG_FORMAT", default_value = "text")]
    pub log_format: String,

    /// Requests per minute from one client address (429 beyond it).
    #[arg(long, env = "SHIPGATE_RATE_LIMIT_PER_CLIENT", default_value_t = 3000)]
    pub rate_limit_per_client: u32,

    /// Requests per minute with one bearer token (429 beyond it).
    #[arg(long, env = "SHIPGATE_RATE_LIMIT_PER_TOKEN", default_value_t = 1200)]
    pub rate_limit_per_token: u32,

    /// Sign-in attempts per minute from one client address.
    #[arg(long, env = "SHIPGATE_RATE_LIMIT_SIGN_IN", default_value_t = 10)]
    pub rate_limit_sign_in: u32,

    /// Origins (comma-separated) whose browser pages may call the API. Unset: CORS off.
    #[arg(long, env = "SHIPGATE_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,

    /// Serve `/metrics` without a token (for a scraper on a private network).
    #[arg(long, env = "SHIPGATE_METRICS_PUBLIC", default_value_t = false)]
    pub metrics_public: bool,

    /// Serve `GET /api/v1/rollouts/{id}` and `GET /api/v1/apps/{app}/environments/{env}` from
    /// memory while nothing they show changed (kept exact by the NOTIFY of every change; `false`
    /// reads the database every time).
    #[arg(long, env = "SHIPGATE_ROLLOUT_CACHE", default_value_t = true, action = clap::ArgAction::Set)]
    pub rollout_cache: bool,

    /// The dashboard's public base URL (`https://shipgate.example.com`), for links to rollout
    /// pages in notifications; without it, notifications carry no link.
    #[arg(long, env = "SHIPGATE_PUBLIC_URL")]
    pub public_url: Option<String>,
}

impl ServerConfig {
    /// The HTTP surface's settings.
    pub fn http_settings(&self) -> shipgate_server::HttpSettings {
        shipgate_server::HttpSettings {
            rate_limits: shipgate_server::limits::RateLimits {
                per_client: self.rate_limit_per_client.max(1),
                per_token: self.rate_limit_per_token.max(1),
                sign_in: self.rate_limit_sign_in.max(1),
            },
            cors_origins: self
                .cors_origins
                .iter()
                .map(|origin| origin.trim().to_owned())
                .filter(|origin| !origin.is_empty())
                .collect(),
            metrics_public: self.metrics_public,
            rollout_cache: self.rollout_cache,
        }
    }
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |value: &Option<String>| value.as_ref().map(|_| "***");
        formatter
            .debug_struct("ServerConfig")
            .field(
                "database_url",
                &self.database_url.as_ref().map(|url| redact_url(url)),
            )
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("admin_token", &redacted(&self.admin_token))
            .field("master_key", &redacted(&self.master_key))
            .field(
                "previous_master_keys",
                &redacted(&self.previous_master_keys),
            )
            .field("replica", &self.replica)
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

/// A database URL with its password hidden.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Where the CLI talks to, and as whom.
#[derive(Args, Clone)]
pub struct ClientConfig {
    /// Shipgate's URL.
    #[arg(long, env = "SHIPGATE_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Bearer token.
    #[arg(long, env = "SHIPGATE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn database_passwords_never_show() {
        assert_eq!(
            redact_url("postgres://shipgate:hunter2@db:5432/shipgate"),
            "postgres://shipgate:***@db:5432/shipgate"
        );
        assert_eq!(
            redact_url("postgres://db/shipgate"),
            "postgres://db/shipgate"
        );
    }
}
