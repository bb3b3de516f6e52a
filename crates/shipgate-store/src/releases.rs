//! Releases: immutable bundles of one artifact per component, created idempotently on version.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use crate::events::Actor;
use crate::StoreError;

/// What a caller gives to create a release.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRelease {
    /// Version label, unique per app (`1.4.0`, `a1b2c3d`).
    pub version: String,
    /// Git commit.
    #[serde(default)]
    pub git_sha: Option<String>,
    /// Git ref (`refs/heads/main`).
    #[serde(default)]
    pub git_ref: Option<String>,
    /// One artifact per component: a string (image digest, slug id, git ref) or an object.
    pub artifacts: BTreeMap<String, Value>,
    /// Config snapshot carried with the release.
    #[serde(default)]
    pub config: BTreeMap<String, Value>,
    /// Free text (commit message, changelog).
    #[serde(default)]
    pub notes: Option<String>,
    /// Rolling back past this release needs care (irreversible migrations).
    #[serde(default)]
    pub forward_only: bool,
    /// When the commit was made, for lead-time figures.
    #[serde(default)]
    pub committed_at: Option<DateTime<Utc>>,
}

/// A stored release.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Release {
    /// Id.
    pub id: Uuid,
    /// Version label.
    pub version: String,
    /// Git commit.
    pub git_sha: Option<String>,
    /// Git ref.
    pub git_ref: Option<String>,
    /// Artifacts by component.
    pub artifacts: Value,
    /// Config snapshot.
    pub config: Value,
    /// Notes.
    pub notes: Option<String>,
    /// Forward-only.
    pub forward_only: bool,
    /// Who created it.
    pub created_by: String,
    /// How (`api`, `cli`, `webhook`, `demo`).
    pub source: String,
    /// When the commit was made.
    pub committed_at: Option<DateTime<Utc>>,
    /// Quarantined (known bad): automation never deploys it until a person clears it.
    pub quarantined_at: Option<DateTime<Utc>>,
    /// Why.
    pub quarantine_reason: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
}

impl Release {
    /// The artifact of a component.
    pub fn artifact(&self, component: &str) -> Option<&Value> {
        self.artifacts.get(component)
    }
}

const COLUMNS: &str =
    "id, version, git_sha, git_ref, artifacts, config, notes, forward_only, created_by,
                       source, committed_at, quarantined_at, quarantine_reason, created_at";

/// Whether `create` made the release or found the same one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Created {
    /// A new release.
    New,
    /// The same version with the same content existed.
    Existing,
}

fn content_hash(release: &NewRelease) -> String {
    let content = json!({
        "git_sha": release.git_sha, "git_ref": release.git_ref, "artifacts": release.artifacts,
        "config": release.config, "notes": release.notes, "forward_only": release.forward_only,
    });
    Sha256::digest(content.to_string().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Checks a release against the app's components.
pub fn check(release: &NewRelease, components: &[String]) -> Result<(), (String, String)> {
    let version = release.version.trim();
    if version.is_empty() || version.len() > 128 || version != release.version {
        return Err((
            "version".into(),
            "must be 1 to 128 characters without surrounding spaces".into(),
        ));
    }
    if version.chars().any(|c| c.is_control() || c == '/') {
        return Err((
            "version".into(),
            "must not contain `/` or control characters".into(),
        ));
    }
    if release.artifacts.is_empty() {
        return Err((
            "artifacts".into(),
            "give at least one component's artifact".into(),
        ));
    }
    for (component, artifact) in &release.artifacts {
        if !components.contains(component) {
            return Err((
                format!("artifacts.{component}"),
                format!(
                    "`{component}` is not a component of this app; known: {}",
                    components.join(", ")
                ),
            ));
        }
        let empty = match artifact {
            Value::String(text) => text.trim().is_empty(),
            Value::Object(map) => map.is_empty(),
            _ => true,
        };
        if empty {
            return Err((
                format!("artifacts.{component}"),
                "must be a non-empty string or object".into(),
            ));
        }
    }
    Ok(())
}

/// Creates a release, idempotent on version: the same content returns the stored one,
/// different content under the same version is a conflict.
pub async fn create(
    pool: &PgPool,
    app_id: Uuid,
    release: &NewRelease,
    actor: &Actor,
    source: &str,
) -> Result<(Release, Created), StoreError> {
    let mut tx = pool.begin().await?;
    let created = create_in(&mut tx, app_id, release, actor, source).await?;
    tx.commit().await?;
    Ok(created)
}

/// [`create`] inside the caller's transaction (a webhook delivery records itself and its
/// release in one). Writes nothing unless the release is new.
pub async fn create_in(
    tx: &mut PgConnection,
    app_id: Uuid,
    release: &NewRelease,
    actor: &Actor,
    source: &str,
) -> Result<(Release, Created), StoreError> {
    if let Some(created) = insert_new(&mut *tx, app_id, release, actor, source).await? {
        return Ok((created, Created::New));
    }
    let (existing_hash,): (String,) =
        sqlx::query_as("select content_hash from releases where app_id = $1 and version = $2")
            .bind(app_id)
            .bind(&release.version)
            .fetch_one(&mut *tx)
            .await?;
    if existing_hash != content_hash(release) {
        return Err(StoreError::Conflict(format!(
            "release {} exists with other content; releases are immutable, so give the new content a new version",
            release.version
        )));
    }
    Ok((
        by_version(&mut *tx, app_id, &release.version).await?,
        Created::Existing,
    ))
}

/// Inserts the release and records its creation; `None` when its version exists (nothing
/// written).
pub async fn insert_new(
    tx: &mut PgConnection,
    app_id: Uuid,
    release: &NewRelease,
    actor: &Actor,
    source: &str,
) -> Result<Option<Release>, StoreError> {
    // The release and its `release.created` event (it announces nothing) in one statement.
    let inserted = sqlx::query_as::<_, Release>(&format!(
        "with created as (
             insert into releases (id, app_id, version, git_sha, git_ref, artifacts, config, notes,
                                   forward_only, content_hash, created_by, source, committed_at)
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
             on conflict (app_id, version) do nothing
             returning {COLUMNS}),
         recorded as (
             insert into events (app_id, actor_kind, actor, action, details)
             select $2, $14, $15, 'release.created',
                    jsonb_build_object('version', created.version, 'source', $12::text)
               from created)
         select * from created"
    ))
    .bind(Uuid::now_v7())
    .bind(app_id)
    .bind(&release.version)
    .bind(&release.git_sha)
    .bind(&release.git_ref)
    .bind(serde_json::to_value(&release.artifacts)?)
    .bind(serde_json::to_value(&release.config)?)
    .bind(&release.notes)
    .bind(release.forward_only)
    .bind(content_hash(release))
    .bind(actor.label())
    .bind(source)
    .bind(release.committed_at)
    .bind(actor.kind)
    .bind(&actor.name)
    .fetch_optional(&mut *tx)
    .await?;
    Ok(inserted)
}

/// Reads a release by version.
pub async fn by_version(
    executor: impl PgExecutor<'_>,
    app_id: Uuid,
    version: &str,
) -> Result<Release, StoreError> {
    sqlx::query_as::<_, Release>(&format!(
        "select {COLUMNS} from releases where app_id = $1 and version = $2"
    ))
    .bind(app_id)
    .bind(version)
    .fetch_optional(executor)
    .await?
    .ok_or_else(|| StoreError::NotFound(format!("release `{version}`")))
}

/// Reads a release by id.
pub async fn by_id(executor: impl PgExecutor<'_>, id: Uuid) -> Result<Release, StoreError> {
    sqlx::query_as::<_, Release>(&format!("select {COLUMNS} from releases where id = $1"))
        .bind(id)
        .fetch_optional(executor)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("release {id}")))
}

/// Releases of an app, newest first; `before` is the id of the last one of the previous page.
pub async fn list(
    pool: &PgPool,
    app_id: Uuid,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Release>, StoreError> {
    Ok(sqlx::query_as::<_, Release>(&format!(
        "select {COLUMNS} from releases
          where app_id = $1 and ($2::uuid is null or id < $2)
          order by id desc limit $3"
    ))
    .bind(app_id)
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Marks a release known-bad (or clears the mark with `reason = None`).
pub async fn set_quarantine(
    executor: impl PgExecutor<'_>,
    release_id: Uuid,
    reason: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query(
        "update releases set quarantined_at = case when $2::text is null then null else coalesce(quarantined_at, now()) end,
                             quarantine_reason = $2
          where id = $1",
    )
    .bind(release_id)
    .bind(reason)
    .execute(executor)
    .await?;
    Ok(())
}
