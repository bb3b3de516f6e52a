//! The demo: applies `examples/demo.yaml` (simulated providers) and keeps releases flowing:
//! each new version deploys to staging and, when it succeeds there, is promoted to production.
//! Every third version turns unhealthy and every fifth fails to build, so automatic rollbacks
//! happen on their own.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use anyhow::Result;
use serde_json::json;
use sqlx::PgPool;
use tracing::{info, warn};
use uuid::Uuid;

use shipgate_domain::state::{RolloutKind, RolloutState};
use shipgate_store::crypto::SecretBox;
use shipgate_store::releases::{self, NewRelease};
use shipgate_store::rollouts::{self, NewRollout};
use shipgate_store::{apps, Actor};

const DEMO_CONFIG: &str = include_str!("../../../examples/demo.yaml");
const APP: &str = "demo-shop";

/// Applies the demo app and starts the release loop in the background.
pub async fn start(
    pool: PgPool,
    secrets: SecretBox,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let document = shipgate_domain::config::load(DEMO_CONFIG, &|_| None)?;
    let actor = Actor::system("demo");
    let outcome = apps::apply(&pool, &document, &secrets, &actor).await?;
    info!(app = APP, changes = ?outcome.changes, "demo app applied");
    tokio::spawn(async move {
        tokio::select! {
            _ = stop => {}
            result = release_loop(&pool, &actor) => {
                if let Err(error) = result {
                    warn!(%error, "the demo release loop stopped");
                }
            }
        }
    });
    Ok(())
}

fn version_for(n: u32) -> String {
    match n {
        n if n > 0 && n % 5 == 0 => format!("1.{n}.0-broken"),
        n if n > 0 && n % 3 == 0 => format!("1.{n}.0-sick"),
        n => format!("1.{n}.0"),
    }
}

async fn wait_until_done(pool: &PgPool, id: Uuid) -> Result<RolloutState> {
    loop {
        let (_, state) = rollouts::version(pool, id).await?;
        if state.is_terminal() {
            return Ok(state);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn release_loop(pool: &PgPool, actor: &Actor) -> Result<()> {
    let app = apps::get(pool, APP).await?;
    let existing: i64 = sqlx::query_scalar("select count(*) from releases where app_id = $1")
        .bind(app.id)
        .fetch_one(pool)
        .await?;
    let mut n = existing as u32;
    loop {
        let version = version_for(n);
        n += 1;
        let artifacts: BTreeMap<String, serde_json::Value> = ["web", "api", "worker"]
            .iter()
            .map(|c| {
                (
                    c.to_string(),
                    json!(format!("registry.example/demo-shop/{c}:{version}")),
                )
            })
            .collect();
        let release = NewRelease {
            version: version.clone(),
            git_sha: Some(format!("{:040x}", u128::from(n) * 0x9e37_79b9)),
            git_ref: Some("refs/heads/main".into()),
            artifacts,
            notes: Some(format!("demo release {version}")),
            ..NewRelease::default()
        };
        let (release, _) = releases::create(pool, app.id, &release, actor, "demo").await?;
        for (environment, kind) in [
            ("staging", RolloutKind::Deploy),
            ("production", RolloutKind::Promote),
        ] {
            let environment = apps::environment(pool, APP, environment).await?;
            let id = rollouts::start(
                pool,
                NewRollout {
                    environment: &environment,
                    release: &release,
                    kind,
                    actor,
                    trigger: "demo",
                    override_freeze: None,
                },
            )
            .await?;
            info!(release = %version, environment = %environment.name, rollout.id = %id, "demo rollout started");
            let state = wait_until_done(pool, id).await?;
            if state != RolloutState::Succeeded {
                // Wait for the automatic rollback to finish, then let automation deploy again,
                // as a person would after looking at what happened.
                let detail = rollouts::detail(pool, id).await?;
                if let Some(rollback) = detail.rolled_back_by {
                    wait_until_done(pool, rollback).await?;
                }
                rollouts::resume_auto_deploy(pool, &environment, actor).await?;
                info!(release = %version, state = %state, "demo release did not make it; next one");
                break;
            }
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}
