//! Provider adapters behind one trait, and the probes gates use (HTTP health checks,
//! Prometheus queries, confirm webhooks).
//!
//! An adapter is told a step's natural key before it acts, and can be asked later whether an
//! operation with that key exists: that is how a restarted engine reconciles instead of
//! deploying twice.

pub mod cloudrun;
pub mod generic;
pub mod heroku;
pub mod http;
pub mod probes;
pub mod railway;
pub mod render;
pub mod simulated;
pub mod vercel;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use serde_json::Value;

use shipgate_domain::config::TargetSpec;
use shipgate_domain::provider::ProviderKind;

/// Where a step acts.
#[derive(Clone, Debug)]
pub struct TargetContext<'a> {
    /// App name.
    pub app: &'a str,
    /// Environment name.
    pub environment: &'a str,
    /// Component name.
    pub component: &'a str,
    /// The target's settings.
    pub target: &'a TargetSpec,
    /// The decrypted credential, if the target names one. Never logged.
    pub credential: Option<&'a str>,
}

/// What a step asks of a provider.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum StepRequest {
    /// Deploy a release's artifact.
    Deploy {
        /// Release version.
        version: String,
        /// The component's artifact in that release.
        artifact: Value,
    },
    /// Return to a release (natively where the platform can).
    Rollback {
        /// Release version returned to.
        version: String,
        /// Its artifact.
        artifact: Value,
        /// The provider reference of what is being undone, if known.
        from_ref: Option<String>,
        /// The provider reference of the operation that deployed the release returned to in
        /// this environment (Heroku release, Vercel deployment, Cloud Run revision, Render or
        /// Railway deploy), for platforms that roll back natively.
        to_ref: Option<String>,
    },
    /// Send a share of traffic to the new version.
    Traffic {
        /// Release version.
        version: String,
        /// Percent.
        percent: u8,
    },
    /// Set or unset config vars.
    Config {
        /// Values; `None` unsets.
        vars: BTreeMap<String, Option<String>>,
    },
    /// Run a one-off job.
    Job {
        /// Release version.
        version: String,
        /// Command.
        command: String,
    },
}

/// How an operation is doing.
#[derive(Clone, Debug, PartialEq)]
pub enum OperationStatus {
    /// Still running.
    Running,
    /// Done; with what the provider reported.
    Succeeded(Value),
    /// Failed; with the provider's reason.
    Failed(String),
}

/// A provider accepted an operation.
#[derive(Clone, Debug, PartialEq)]
pub struct Submitted {
    /// The provider's reference (release id, deployment id, operation name).
    pub reference: String,
    /// Its status when accepted (some operations finish at once).
    pub status: OperationStatus,
}

/// What a platform says is live for a target, for drift detection.
#[derive(Clone, Debug, PartialEq)]
pub struct LiveState {
    /// The platform's reference of what serves (release id, deployment id, revision).
    pub reference: Option<String>,
    /// The version or artifact, when the platform reports one.
    pub version: Option<String>,
    /// Anything else worth showing (traffic split, config).
    pub detail: Value,
}

/// A health reading from a provider's own view (platforms with no health URL, the simulator).
#[derive(Clone, Debug, PartialEq)]
pub struct HealthReading {
    /// Healthy or not.
    pub healthy: bool,
    /// One line for the timeline.
    pub summary: String,
}

/// Why a provider call failed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ProviderError {
    /// Worth retrying later (5xx, timeouts, connection errors).
    #[error("{0} (will retry)")]
    Transient(String),
    /// Rate limited; retry after the given wait.
    #[error("rate limited by the provider; retrying after {0:?}")]
    RateLimited(Duration),
    /// Will not succeed on retry (4xx, bad settings, missing credential).
    #[error("{0}")]
    Permanent(String),
}

/// One platform.
#[async_trait]
pub trait Provider: Send + Sync {
    /// Which platform.
    fn kind(&self) -> ProviderKind;

    /// Starts an operation. `natural_key` identifies it for [`Provider::find`].
    async fn submit(
        &self,
        target: &TargetContext<'_>,
        request: &StepRequest,
        natural_key: &str,
    ) -> Result<Submitted, ProviderError>;

    /// Finds an operation started with `natural_key`, if the provider has one.
    async fn find(
        &self,
        target: &TargetContext<'_>,
        natural_key: &str,
    ) -> Result<Option<Submitted>, ProviderError>;

    /// Asks how an operation is doing.
    async fn poll(
        &self,
        target: &TargetContext<'_>,
        reference: &str,
    ) -> Result<OperationStatus, ProviderError>;

    /// What the platform serves now, to notice drift (a rollback made in the platform's own UI).
    async fn live(&self, _target: &TargetContext<'_>) -> Result<LiveState, ProviderError> {
        Err(ProviderError::Permanent(format!(
            "the {} provider cannot report what is live",
            self.kind()
        )))
    }

    /// The provider's own view of health, for targets without a health URL.
    async fn health(
        &self,
        _target: &TargetContext<'_>,
    ) -> Option<Result<HealthReading, ProviderError>> {
        None
    }
}

/// The adapters this build has, by kind.
#[derive(Clone, Default)]
pub struct Registry {
    adapters: BTreeMap<ProviderKind, Arc<dyn Provider>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry::default()
    }

    /// Adds an adapter.
    pub fn with(mut self, adapter: Arc<dyn Provider>) -> Self {
        self.adapters.insert(adapter.kind(), adapter);
        self
    }

    /// The adapter of a kind.
    pub fn get(&self, kind: ProviderKind) -> Option<Arc<dyn Provider>> {
        self.adapters.get(&kind).cloned()
    }
}
