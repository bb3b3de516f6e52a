//! Generated app configs: many environments sharing one target set and one plan (YAML anchors),
//! so a scenario can have thousands of rollouts in flight at once (one per environment: an
//! environment drives one rollout at a time).

use std::fmt::Write;

use anyhow::{bail, Context, Result};
use serde_json::json;
use shipgate_testkit::Server;

use crate::support::bounded;

/// A three-phase plan whose gates pass at their first check (health of a simulated target
/// that is healthy), the engine's fastest path.
pub const INSTANT_PLAN: &str = r#"
      - name: backend
        deploy: [api]
        gates: [ { health: { components: [api], interval: 1s, timeout: 1s, failures: 1, successes: 1 } } ]
        on_failure: fail
      - name: web
        deploy: [web]
        gates: [ { health: { components: [web], interval: 1s, timeout: 1s, failures: 1, successes: 1 } } ]
        on_failure: fail
      - name: flag
        config: { api: { FEATURE: "on" } }
        gates: [ { health: { components: [api], interval: 1s, timeout: 1s, failures: 1, successes: 1 } } ]
        on_failure: fail
"#;

/// A three-phase plan whose gates are one-second soaks: the engine must wake each rollout
/// when its soak ends.
pub const SOAK_PLAN: &str = r#"
      - name: backend
        deploy: [api]
        gates: [ { soak: 1s } ]
        on_failure: fail
      - name: web
        deploy: [web]
        gates: [ { soak: 1s } ]
        on_failure: fail
      - name: flag
        config: { api: { FEATURE: "on" } }
        gates: [ { soak: 1s } ]
        on_failure: fail
"#;

/// One phase deploying `api`, health-checked every second, rolled back after three failures.
pub const ROLLBACK_PLAN: &str = r#"
      - name: backend
        deploy: [api]
        gates: [ { health: { components: [api], interval: 1s, timeout: 1s, failures: 3, successes: 1 } } ]
        on_failure: rollback
"#;

/// An app `app` with `environments` environments `e0..`, simulated targets for `web` and `api`
/// with `latency`, versions matching `*-sick` unhealthy and `*-broken` failing to deploy.
pub fn config(app: &str, environments: usize, latency: &str, plan: &str) -> String {
    let mut yaml = format!(
        "app: {app}\nrepository: acme/{app}\ncomponents: [web, api]\nenvironments:\n  - name: e0\n    targets: &targets\n      web: {{ provider: simulated, latency: {latency}, unhealthy: \"*-sick\", fail_deploy: \"*-broken\" }}\n      api: {{ provider: simulated, latency: {latency}, unhealthy: \"*-sick\", fail_deploy: \"*-broken\" }}\n    plan: &plan\n{}\n",
        plan.trim_start_matches('\n').trim_end()
    );
    for index in 1..environments {
        let _ = write!(
            yaml,
            "  - name: e{index}\n    targets: *targets\n    plan: *plan\n"
        );
    }
    yaml
}

/// Applies `apps` apps of `environments` environments each (`fleet0`, `fleet1`, ...).
pub async fn apply(
    server: &Server,
    apps: usize,
    environments: usize,
    latency: &str,
    plan: &str,
) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for index in 0..apps {
        let name = format!("fleet{index}");
        let (status, body) = server
            .apply(&name, &config(&name, environments, latency, plan))
            .await?;
        if status != 201 && status != 200 {
            bail!("applying {name}: {status} {body}");
        }
        names.push(name);
    }
    Ok(names)
}

/// Creates release `version` of every app, then one rollout of it in every environment;
/// returns the rollout ids.
pub async fn roll_out(
    server: &Server,
    apps: &[String],
    environments: usize,
    version: &str,
) -> Result<Vec<String>> {
    for app in apps {
        let (status, body) = server
            .post(
                &format!("/api/v1/apps/{app}/releases"),
                &json!({ "version": version, "artifacts": { "web": version, "api": version } }),
            )
            .await?;
        if status != 201 && status != 200 {
            bail!("release {version} of {app}: {status} {body}");
        }
    }
    let mut requests = Vec::new();
    for app in apps {
        for index in 0..environments {
            let path = format!("/api/v1/apps/{app}/environments/e{index}/rollouts");
            requests.push(async move {
                let (status, body) = server.post(&path, &json!({ "release": version })).await?;
                if status != 201 {
                    bail!("{path}: {status} {body}");
                }
                body["id"]
                    .as_str()
                    .map(str::to_owned)
                    .context("no rollout id")
            });
        }
    }
    bounded(32, requests).await.into_iter().collect()
}
