//! The simulated platform: latency and failure injection per target (version patterns that
//! fail to deploy, turn unhealthy or fail to roll back), so the whole flow runs with no outside
//! service. Its operations live in Postgres (`simulated_operations`), so a restarted Shipgate
//! finds what it started and tests can count exactly how many deploys were issued.

use async_trait::async_trait;
use serde_json::{json, Value};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use shipgate_domain::pattern::glob_matches;
use shipgate_domain::provider::ProviderKind;
use shipgate_domain::Span;

use crate::{
    HealthReading, LiveState, OperationStatus, Provider, ProviderError, StepRequest, Submitted,
    TargetContext,
};

/// The simulated platform.
pub struct Simulated {
    pool: PgPool,
    replica: String,
}

impl Simulated {
    /// A simulator keeping its operations in `pool`; `replica` is recorded on each operation.
    pub fn new(pool: PgPool, replica: impl Into<String>) -> Self {
        Simulated {
            pool,
            replica: replica.into(),
        }
    }
}

fn target_key(target: &TargetContext<'_>) -> String {
    format!("{}/{}/{}", target.app, target.environment, target.component)
}

fn setting<'a>(target: &'a TargetContext<'_>, key: &str) -> Option<&'a str> {
    target.target.settings.get(key).and_then(Value::as_str)
}

fn transient(error: sqlx::Error) -> ProviderError {
    ProviderError::Transient(format!("simulator store: {error}"))
}

fn status_of(outcome: &str, detail: Option<String>, ready: bool) -> OperationStatus {
    match (ready, outcome) {
        (false, _) => OperationStatus::Running,
        (true, "succeeded") => OperationStatus::Succeeded(json!({ "detail": detail })),
        (true, _) => OperationStatus::Failed(detail.unwrap_or_else(|| "failed".into())),
    }
}

#[async_trait]
impl Provider for Simulated {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Simulated
    }

    async fn submit(
        &self,
        target: &TargetContext<'_>,
        request: &StepRequest,
        natural_key: &str,
    ) -> Result<Submitted, ProviderError> {
        let latency: Span = setting(target, "latency")
            .and_then(|text| text.parse().ok())
            .unwrap_or(Span::secs(1));
        let matches =
            |key: &str, text: &str| setting(target, key).is_some_and(|p| glob_matches(p, text));
        let (kind, version, artifact, failure) = match request {
            StepRequest::Deploy { version, artifact } => (
                "deploy",
                Some(version.as_str()),
                Some(artifact),
                matches("fail_deploy", version)
                    .then(|| format!("build of {version} failed (injected)")),
            ),
            StepRequest::Rollback {
                version, artifact, ..
            } => (
                "rollback",
                Some(version.as_str()),
                Some(artifact),
                matches("fail_rollback", version)
                    .then(|| format!("rollback to {version} failed (injected)")),
            ),
            StepRequest::Traffic { version, .. } => ("traffic", Some(version.as_str()), None, None),
            StepRequest::Config { vars } => (
                "config",
                None,
                None,
                vars.keys()
                    .find(|key| matches("fail_config", key))
                    .map(|key| format!("setting {key} failed (injected)")),
            ),
            StepRequest::Job { version, command } => (
                "job",
                Some(version.as_str()),
                None,
                matches("fail_deploy", version)
                    .then(|| format!("job `{command}` exited 1 (injected)")),
            ),
        };
        let id = Uuid::now_v7();
        let artifact_text = artifact.map(|a| match a {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        });
        let detail = failure.clone().unwrap_or_else(|| format!("{kind} done"));
        sqlx::query(
            "insert into simulated_operations (id, target, natural_key, kind, version, artifact, request,
                                               outcome, detail, ready_at, issued_by)
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, now() + make_interval(secs => $10), $11)",
        )
        .bind(id)
        .bind(target_key(target))
        .bind(natural_key)
        .bind(kind)
        .bind(version)
        .bind(artifact_text)
        .bind(serde_json::to_value(request).unwrap_or(Value::Null))
        .bind(if failure.is_some() { "failed" } else { "succeeded" })
        .bind(detail)
        .bind(latency.as_millis() as f64 / 1000.0)
        .bind(&self.replica)
        .execute(&self.pool)
        .await
        .map_err(transient)?;
        Ok(Submitted {
            reference: id.to_string(),
            status: OperationStatus::Running,
        })
    }

    async fn find(
        &self,
        target: &TargetContext<'_>,
        natural_key: &str,
    ) -> Result<Option<Submitted>, ProviderError> {
        let row = sqlx::query(
            "select id, outcome, detail, ready_at <= now() as ready from simulated_operations
              where target = $1 and natural_key = $2 order by created_at limit 1",
        )
        .bind(target_key(target))
        .bind(natural_key)
        .fetch_optional(&self.pool)
        .await
        .map_err(transient)?;
        Ok(row.map(|row| Submitted {
            reference: row.get::<Uuid, _>("id").to_string(),
            status: status_of(row.get("outcome"), row.get("detail"), row.get("ready")),
        }))
    }

    async fn poll(
        &self,
        _target: &TargetContext<'_>,
        reference: &str,
    ) -> Result<OperationStatus, ProviderError> {
        let id: Uuid = reference.parse().map_err(|_| {
            ProviderError::Permanent(format!("`{reference}` is not a simulated operation"))
        })?;
        let row = sqlx::query(
            "select outcome, detail, ready_at <= now() as ready from simulated_operations where id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(transient)?
        .ok_or_else(|| ProviderError::Permanent(format!("operation {reference} does not exist")))?;
        Ok(status_of(
            row.get("outcome"),
            row.get("detail"),
            row.get("ready"),
        ))
    }

    async fn live(&self, target: &TargetContext<'_>) -> Result<LiveState, ProviderError> {
        let row = sqlx::query(
            "select id, version from simulated_operations
              where target = $1 and kind in ('deploy', 'rollback') and outcome = 'succeeded' and ready_at <= now()
              order by ready_at desc limit 1",
        )
        .bind(target_key(target))
        .fetch_optional(&self.pool)
        .await
        .map_err(transient)?;
        Ok(LiveState {
            reference: row.as_ref().map(|r| r.get::<Uuid, _>("id").to_string()),
            version: row.and_then(|r| r.get("version")),
            detail: Value::Null,
        })
    }

    async fn health(
        &self,
        target: &TargetContext<'_>,
    ) -> Option<Result<HealthReading, ProviderError>> {
        let live = sqlx::query_scalar::<_, Option<String>>(
            "select version from simulated_operations
              where target = $1 and kind in ('deploy', 'rollback') and outcome = 'succeeded' and ready_at <= now()
              order by ready_at desc limit 1",
        )
        .bind(target_key(target))
        .fetch_optional(&self.pool)
        .await;
        Some(match live {
            Err(error) => Err(transient(error)),
            Ok(None) | Ok(Some(None)) => Ok(HealthReading {
                healthy: false,
                summary: "nothing is deployed".into(),
            }),
            Ok(Some(Some(version))) => {
                let sick = setting(target, "unhealthy").is_some_and(|p| glob_matches(p, &version));
                Ok(HealthReading {
                    healthy: !sick,
                    summary: if sick {
                        format!("{version} answers 503 (injected)")
                    } else {
                        format!("{version} answers 200")
                    },
                })
            }
        })
    }
}
