//! Apps, components, environments, targets and credentials: applying a config document and
//! reading it back.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use shipgate_domain::config::{AppSpec, AppliedDocument, EnvironmentSpec, Policy, TargetSpec};
use shipgate_domain::plan::Plan;

use crate::crypto::SecretBox;
use crate::events::{self, Actor, Scope};
use crate::StoreError;

/// What applying a document changed.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ApplyOutcome {
    /// The app did not exist before.
    pub created: bool,
    /// One line per change (`environment staging: plan changed`); empty when nothing changed.
    pub changes: Vec<String>,
}

/// Applies a validated document in one transaction: creates or updates the app, its
/// components, environments, targets and credentials. Removed components and environments are
/// retired (kept for history), never deleted.
pub async fn apply(
    pool: &PgPool,
    document: &AppliedDocument,
    secrets: &SecretBox,
    actor: &Actor,
) -> Result<ApplyOutcome, StoreError> {
    let spec = &document.spec;
    let mut tx = pool.begin().await?;
    // Serialise concurrent applies of the same app.
    sqlx::query("select pg_advisory_xact_lock(hashtext('shipgate-apply:' || $1))")
        .bind(&spec.app)
        .execute(&mut *tx)
        .await?;

    let config = serde_json::to_value(spec)?;
    let hash = hex_digest(config.to_string().as_bytes());
    // The app's row is locked before its environments' (the lock order of `line`), whether or
    // not this apply rewrites it: a start holds the app's row `for share` while it waits for its
    // environment.
    let existing =
        sqlx::query("select id, config, config_hash from apps where name = $1 for no key update")
            .bind(&spec.app)
            .fetch_optional(&mut *tx)
            .await?;
    let mut outcome = ApplyOutcome::default();
    let app_id = match existing {
        None => {
            let id = Uuid::now_v7();
            sqlx::query(
                "insert into apps (id, name, repository, config, config_hash) values ($1, $2, $3, $4, $5)",
            )
            .bind(id)
            .bind(&spec.app)
            .bind(&spec.repository)
            .bind(&config)
            .bind(&hash)
            .execute(&mut *tx)
            .await?;
            outcome.created = true;
            outcome.changes.push(format!("app {} created", spec.app));
            id
        }
        Some(row) => {
            let id: Uuid = row.get("id");
            let old_hash: String = row.get("config_hash");
            if old_hash != hash {
                let old: AppSpec = serde_json::from_value(row.get("config"))?;
                describe_changes(&old, spec, &mut outcome.changes);
                sqlx::query(
                    "update apps set repository = $2, config = $3, config_hash = $4, updated_at = now() where id = $1",
                )
                .bind(id)
                .bind(&spec.repository)
                .bind(&config)
                .bind(&hash)
                .execute(&mut *tx)
                .await?;
            }
            id
        }
    };

    let components = sync_components(&mut tx, app_id, spec).await?;
    sync_environments(&mut tx, app_id, spec, &components).await?;
    sync_credentials(&mut tx, app_id, document, secrets, &mut outcome).await?;
    crate::notifications::sync_channels(&mut tx, app_id, document, secrets, &mut outcome).await?;
    if let Some(secret) = &document.webhook_secret {
        let (sealed, key_id): (Option<Vec<u8>>, Option<String>) = sqlx::query_as(
            "select webhook_secret_ciphertext, webhook_secret_key_id from apps where id = $1",
        )
        .bind(app_id)
        .fetch_one(&mut *tx)
        .await?;
        // Re-seal a secret held under an older key (or of unknown key), so rotation completes.
        let same = match (&sealed, &key_id) {
            (Some(sealed), Some(key_id)) => {
                key_id == secrets.key_id()
                    && secrets.open(key_id, sealed).ok().as_deref() == Some(secret.expose())
            }
            _ => false,
        };
        if !same {
            let changed = match &sealed {
                Some(sealed) => {
                    let key_id = key_id.as_deref().unwrap_or(secrets.key_id());
                    secrets.open(key_id, sealed).ok().as_deref() != Some(secret.expose())
                }
                None => true,
            };
            sqlx::query(
                "update apps set webhook_secret_ciphertext = $2, webhook_secret_key_id = $3 where id = $1",
            )
            .bind(app_id)
            .bind(secrets.seal(secret.expose())?)
            .bind(secrets.key_id())
            .execute(&mut *tx)
            .await?;
            if changed {
                outcome.changes.push("webhook secret updated".to_owned());
            }
        }
    }

    if !outcome.changes.is_empty() {
        events::record(
            &mut *tx,
            Scope {
                app_id: Some(app_id),
                ..Scope::default()
            },
            actor,
            if outcome.created {
                "app.created"
            } else {
                "app.updated"
            },
            json!({ "changes": outcome.changes }),
        )
        .await?;
    }
    crate::rollouts::notify_environments(&mut tx).await?;
    tx.commit().await?;
    Ok(outcome)
}

fn hex_digest(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn describe_changes(old: &AppSpec, new: &AppSpec, changes: &mut Vec<String>) {
    if old.repository != new.repository {
        changes.push("repository changed".to_owned());
    }
    for component in &new.components {
        if !old.components.contains(component) {
            changes.push(format!("component {component} added"));
        }
    }
    for component in &old.components {
        if !new.components.contains(component) {
            changes.push(format!("component {component} retired"));
        }
    }
    let old_envs: BTreeMap<&str, &EnvironmentSpec> = old
        .environments
        .iter()
        .map(|e| (e.name.as_str(), e))
        .collect();
    for (position, environment) in new.environments.iter().enumerate() {
        match old_envs.get(environment.name.as_str()) {
            None => changes.push(format!("environment {} added", environment.name)),
            Some(before) => {
                let name = &environment.name;
                if before.plan != environment.plan {
                    changes.push(format!("environment {name}: plan changed"));
                }
                if before.targets != environment.targets {
                    changes.push(format!("environment {name}: targets changed"));
                }
                if before.policy() != environment.policy() {
                    changes.push(format!("environment {name}: policy changed"));
                }
                let old_position = old.environments.iter().position(|e| e.name == *name);
                if old_position != Some(position) {
                    changes.push(format!("environment {name}: moved to position {position}"));
                }
            }
        }
    }
    for environment in &old.environments {
        if !new.environments.iter().any(|e| e.name == environment.name) {
            changes.push(format!("environment {} retired", environment.name));
        }
    }
    if old.notifications != new.notifications {
        changes.push("notification routing changed".to_owned());
    }
}

async fn sync_components(
    tx: &mut PgConnection,
    app_id: Uuid,
    spec: &AppSpec,
) -> Result<BTreeMap<String, Uuid>, StoreError> {
    for (position, name) in spec.components.iter().enumerate() {
        sqlx::query(
            "insert into components (id, app_id, name, position) values ($1, $2, $3, $4)
             on conflict (app_id, name) do update set position = excluded.position, retired_at = null",
        )
        .bind(Uuid::now_v7())
        .bind(app_id)
        .bind(name)
        .bind(position as i32)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(
        "update components set retired_at = now() where app_id = $1 and not (name = any($2)) and retired_at is null",
    )
    .bind(app_id)
    .bind(&spec.components)
    .execute(&mut *tx)
    .await?;
    let rows = sqlx::query("select id, name from components where app_id = $1")
        .bind(app_id)
        .fetch_all(&mut *tx)
        .await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.get("name"), row.get("id")))
        .collect())
}

async fn sync_environments(
    tx: &mut PgConnection,
    app_id: Uuid,
    spec: &AppSpec,
    components: &BTreeMap<String, Uuid>,
) -> Result<(), StoreError> {
    let names: Vec<String> = spec.environments.iter().map(|e| e.name.clone()).collect();
    for (position, environment) in spec.environments.iter().enumerate() {
        let id: Uuid = sqlx::query_scalar(
            "insert into environments (id, app_id, name, position, plan, policy) values ($1, $2, $3, $4, $5, $6)
             on conflict (app_id, name) do update
                set position = excluded.position, plan = excluded.plan, policy = excluded.policy,
                    retired_at = null,
                    updated_at = case when environments.plan is distinct from excluded.plan
                                        or environments.policy is distinct from excluded.policy
                                      then now() else environments.updated_at end
             returning id",
        )
        .bind(Uuid::now_v7())
        .bind(app_id)
        .bind(&environment.name)
        .bind(position as i32)
        .bind(serde_json::to_value(&environment.plan)?)
        .bind(serde_json::to_value(environment.policy())?)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query("delete from targets where environment_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        for (component, target) in &environment.targets {
            sqlx::query(
                "insert into targets (id, environment_id, component_id, provider, settings, credential_name, health)
                 values ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(Uuid::now_v7())
            .bind(id)
            .bind(components[component])
            .bind(target.provider.as_str())
            .bind(serde_json::Value::Object(target.settings.clone()))
            .bind(&target.credential)
            .bind(target.health.as_ref().map(serde_json::to_value).transpose()?)
            .execute(&mut *tx)
            .await?;
        }
    }
    sqlx::query(
        "update environments set retired_at = now() where app_id = $1 and not (name = any($2)) and retired_at is null",
    )
    .bind(app_id)
    .bind(&names)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn sync_credentials(
    tx: &mut PgConnection,
    app_id: Uuid,
    document: &AppliedDocument,
    secrets: &SecretBox,
    outcome: &mut ApplyOutcome,
) -> Result<(), StoreError> {
    let rows = sqlx::query("select name, key_id, ciphertext from credentials where app_id = $1")
        .bind(app_id)
        .fetch_all(&mut *tx)
        .await?;
    let mut stored: BTreeMap<String, (String, Vec<u8>)> = rows
        .into_iter()
        .map(|row| (row.get("name"), (row.get("key_id"), row.get("ciphertext"))))
        .collect();
    for (name, secret) in &document.credentials {
        let unchanged = match stored.remove(name) {
            Some((key_id, sealed)) => {
                // Re-seal values held under an older key, so rotation completes on apply.
                key_id == secrets.key_id()
                    && secrets.open(&key_id, &sealed).ok().as_deref() == Some(secret.expose())
            }
            None => false,
        };
        if unchanged {
            continue;
        }
        sqlx::query(
            "insert into credentials (id, app_id, name, ciphertext, key_id) values ($1, $2, $3, $4, $5)
             on conflict (app_id, name) do update
                set ciphertext = excluded.ciphertext, key_id = excluded.key_id, updated_at = now()",
        )
        .bind(Uuid::now_v7())
        .bind(app_id)
        .bind(name)
        .bind(secrets.seal(secret.expose())?)
        .bind(secrets.key_id())
        .execute(&mut *tx)
        .await?;
        outcome.changes.push(format!("credential {name} set"));
    }
    for name in stored.keys() {
        sqlx::query("delete from credentials where app_id = $1 and name = $2")
            .bind(app_id)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        outcome.changes.push(format!("credential {name} removed"));
    }
    Ok(())
}

/// An app as stored.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct App {
    /// Id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// The applied config document's spec, as validated: `app`, `repository`, `components`,
    /// `credentials` (names only, never values), `environments` (targets, plans, policies) and
    /// `auto_deploy` rules. Its full shape is the config format described in the README.
    #[schema(value_type = Object)]
    pub spec: AppSpec,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

fn app_from_row(row: sqlx::postgres::PgRow) -> Result<App, StoreError> {
    Ok(App {
        id: row.get("id"),
        name: row.get("name"),
        spec: serde_json::from_value(row.get("config"))?,
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    })
}

/// Reads one app by name.
pub async fn get(pool: &PgPool, name: &str) -> Result<App, StoreError> {
    let row =
        sqlx::query("select id, name, config, created_at, updated_at from apps where name = $1")
            .bind(name)
            .fetch_optional(pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("app `{name}`")))?;
    app_from_row(row)
}

/// Lists apps by name.
pub async fn list(pool: &PgPool) -> Result<Vec<App>, StoreError> {
    sqlx::query("select id, name, config, created_at, updated_at from apps order by name")
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(app_from_row)
        .collect()
}

/// An environment as stored.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Environment {
    /// Id.
    pub id: Uuid,
    /// App id.
    pub app_id: Uuid,
    /// App name.
    pub app: String,
    /// Name.
    pub name: String,
    /// Position in the promotion order.
    pub position: i32,
    /// Current plan: its phases, each deploying components, setting config and running gates.
    #[schema(value_type = Object)]
    pub plan: Plan,
    /// Current policy: approvals, who may approve, freeze windows and similar rules.
    #[schema(value_type = Object)]
    pub policy: Policy,
    /// Why auto-deploy is paused, if it is.
    pub auto_deploy_paused_reason: Option<String>,
    /// Since when.
    pub auto_deploy_paused_at: Option<DateTime<Utc>>,
}

/// Reads one live (not retired) environment.
pub async fn environment(
    executor: impl sqlx::PgExecutor<'_>,
    app: &str,
    name: &str,
) -> Result<Environment, StoreError> {
    let row = sqlx::query(&format!(
        "{ENVIRONMENT_SELECT} where a.name = $1 and e.name = $2 and e.retired_at is null"
    ))
    .bind(app)
    .bind(name)
    .fetch_optional(executor)
    .await?
    .ok_or_else(|| StoreError::NotFound(format!("environment `{name}` of app `{app}`")))?;
    environment_from_row(&row)
}

/// The app's live environments, in promotion order.
pub async fn environments(
    executor: impl sqlx::PgExecutor<'_>,
    app_id: Uuid,
) -> Result<Vec<Environment>, StoreError> {
    sqlx::query(&format!(
        "{ENVIRONMENT_SELECT} where e.app_id = $1 and e.retired_at is null order by e.position"
    ))
    .bind(app_id)
    .fetch_all(executor)
    .await?
    .iter()
    .map(environment_from_row)
    .collect()
}

const ENVIRONMENT_SELECT: &str =
    "select e.id, e.app_id, a.name as app, e.name, e.position, e.plan, e.policy,
            e.auto_deploy_paused_reason, e.auto_deploy_paused_at
       from environments e join apps a on a.id = e.app_id";

fn environment_from_row(row: &sqlx::postgres::PgRow) -> Result<Environment, StoreError> {
    Ok(Environment {
        id: row.get("id"),
        app_id: row.get("app_id"),
        app: row.get("app"),
        name: row.get("name"),
        position: row.get("position"),
        plan: serde_json::from_value(row.get("plan"))?,
        policy: serde_json::from_value(row.get("policy"))?,
        auto_deploy_paused_reason: row.get("auto_deploy_paused_reason"),
        auto_deploy_paused_at: row.get("auto_deploy_paused_at"),
    })
}

/// The targets of an environment by component name.
pub async fn targets(
    executor: impl sqlx::PgExecutor<'_>,
    environment_id: Uuid,
) -> Result<BTreeMap<String, TargetSpec>, StoreError> {
    let rows = sqlx::query(
        "select c.name, t.provider, t.settings, t.credential_name, t.health
           from targets t join components c on c.id = t.component_id
          where t.environment_id = $1",
    )
    .bind(environment_id)
    .fetch_all(executor)
    .await?;
    rows.into_iter()
        .map(|row| {
            let provider: String = row.get("provider");
            let settings: serde_json::Value = row.get("settings");
            let health: Option<serde_json::Value> = row.get("health");
            Ok((
                row.get("name"),
                TargetSpec {
                    provider: provider.parse().map_err(StoreError::Corrupt)?,
                    settings: settings.as_object().cloned().unwrap_or_default(),
                    credential: row.get("credential_name"),
                    health: health.map(serde_json::from_value).transpose()?,
                },
            ))
        })
        .collect()
}

/// Decrypts a named credential of an app.
pub async fn credential(
    executor: impl sqlx::PgExecutor<'_>,
    secrets: &SecretBox,
    app_id: Uuid,
    name: &str,
) -> Result<String, StoreError> {
    let row =
        sqlx::query("select key_id, ciphertext from credentials where app_id = $1 and name = $2")
            .bind(app_id)
            .bind(name)
            .fetch_optional(executor)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("credential `{name}`")))?;
    secrets.open(row.get("key_id"), &row.get::<Vec<u8>, _>("ciphertext"))
}
