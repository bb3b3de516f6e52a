//! End-to-end tests: the real `shipgate` binary, started on port 0 against a database of its
//! own, driven over HTTP the way CI and people drive it.

use std::time::Duration;

use serde_json::{json, Value};
use shipgate_testkit::{eventually, Server, TestDb, ADMIN_TOKEN};

const BINARY: &str = env!("CARGO_BIN_EXE_shipgate");

/// Two environments, a three-phase plan, simulated targets where `*-sick` versions turn
/// unhealthy and `*-broken` ones fail to deploy.
fn shop_config(app: &str, latency: &str) -> String {
    format!(
        r#"
app: {app}
repository: acme/{app}
components: [web, api, worker]
environments:
  - name: staging
    targets: &targets
      web:    {{ provider: simulated, latency: {latency}, fail_deploy: "*-broken", unhealthy: "*-sick" }}
      api:    {{ provider: simulated, latency: {latency}, fail_deploy: "*-broken", unhealthy: "*-sick" }}
      worker: {{ provider: simulated, latency: {latency}, fail_deploy: "*-broken", unhealthy: "*-sick" }}
    plan: &plan
      - name: backend
        deploy: [api, worker]
        gates:
          - health: {{ components: [api, worker], interval: 300ms, timeout: 1s, failures: 2, successes: 2 }}
        on_failure: rollback
      - name: web
        deploy: [web]
        gates:
          - health: {{ components: [web], interval: 300ms, timeout: 1s, failures: 2, successes: 1 }}
        on_failure: rollback
      - name: flag
        config: {{ api: {{ ENABLE_OCR: "true" }} }}
        gates: [ {{ soak: 300ms }} ]
        on_failure: rollback
  - name: production
    targets: *targets
    plan: *plan
"#
    )
}

fn release(version: &str) -> Value {
    json!({
        "version": version,
        "git_sha": "0123456789abcdef0123456789abcdef01234567",
        "artifacts": {
            "web": format!("registry.example/shop/web:{version}"),
            "api": format!("registry.example/shop/api:{version}"),
            "worker": format!("registry.example/shop/worker:{version}"),
        }
    })
}

async fn deploy(server: &Server, app: &str, environment: &str, version: &str) -> String {
    let (status, body) = server
        .post(&format!("/api/v1/apps/{app}/releases"), &release(version))
        .await
        .unwrap();
    assert!(
        status == 201 || status == 200,
        "release {version}: {status} {body}"
    );
    let (status, body) = server
        .post(
            &format!("/api/v1/apps/{app}/environments/{environment}/rollouts"),
            &json!({ "release": version }),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "rollout of {version}: {body}");
    body["id"].as_str().unwrap().to_owned()
}

fn time(value: &Value) -> chrono::DateTime<chrono::Utc> {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{value} is not a time"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_release_rolls_through_three_phases_and_an_unhealthy_one_is_rolled_back_automatically() {
    let db = TestDb::new().await.unwrap();
    let server = Server::start(BINARY, &db.url, &[]).unwrap();
    let (status, body) = server
        .apply("shop", &shop_config("shop", "200ms"))
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["created"], true);

    // A good release goes through all three phases.
    let good = deploy(&server, "shop", "staging", "1.0.0").await;
    let done = server
        .wait_finished(&good, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(done["state"], "succeeded", "{done}");
    let phases: Vec<&str> = done["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["state"].as_str().unwrap())
        .collect();
    assert_eq!(phases, ["succeeded", "succeeded", "succeeded"]);
    assert!(
        done["phases"][0]["gates"][0]["checks"]
            .as_array()
            .unwrap()
            .len()
            >= 2
    );

    // An unhealthy release fails its health gate and is rolled back on its own.
    let sick = deploy(&server, "shop", "staging", "1.1.0-sick").await;
    let done = server
        .wait_finished(&sick, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(done["state"], "rolled_back", "{done}");
    let rollback_id = done["rolled_back_by"]
        .as_str()
        .expect("linked to its rollback")
        .to_owned();
    let rollback = server
        .wait_finished(&rollback_id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(rollback["state"], "succeeded");
    assert_eq!(rollback["kind"], "rollback");
    assert_eq!(rollback["release"], "1.0.0");
    assert_eq!(rollback["rollback_of"].as_str(), Some(sick.as_str()));

    // The history shows the rollback with its trigger and times, in order.
    let (_, history) = server
        .get("/api/v1/apps/shop/environments/staging/rollbacks")
        .await
        .unwrap();
    let entry = &history["items"][0];
    assert_eq!(entry["trigger"], "gate");
    assert_eq!(entry["from_release"], "1.1.0-sick");
    assert_eq!(entry["to_release"], "1.0.0");
    assert_eq!(entry["outcome"], "restored");
    assert!(
        entry["reason"].as_str().unwrap().contains("health"),
        "{entry}"
    );
    let (detected, requested, restored) = (
        time(&entry["detected_at"]),
        time(&entry["requested_at"]),
        time(&entry["restored_at"]),
    );
    assert!(detected <= requested && requested <= restored, "{entry}");

    // The failed release is quarantined, and auto-deploy is paused with the reason.
    let (_, bad) = server
        .get("/api/v1/apps/shop/releases/1.1.0-sick")
        .await
        .unwrap();
    assert!(bad["quarantined_at"].is_string(), "{bad}");
    let (_, status) = server
        .get("/api/v1/apps/shop/environments/staging")
        .await
        .unwrap();
    assert_eq!(status["current_release"], "1.0.0");
    assert_eq!(status["auto_deploy"]["paused"], true);
    assert!(status["auto_deploy"]["reason"]
        .as_str()
        .unwrap()
        .contains("1.0.0"));
    let live: Vec<&str> = status["live"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["release"].as_str().unwrap())
        .collect();
    assert_eq!(live, ["1.0.0", "1.0.0", "1.0.0"], "{status}");

    // Deploying the quarantined release again is refused.
    let (code, body) = server
        .post(
            "/api/v1/apps/shop/environments/staging/rollouts",
            &json!({ "release": "1.1.0-sick" }),
        )
        .await
        .unwrap();
    assert_eq!(code, 422, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("quarantined"));

    // A release that fails to deploy is rolled back too, to the same known-good release.
    let broken = deploy(&server, "shop", "staging", "1.2.0-broken").await;
    let done = server
        .wait_finished(&broken, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(done["state"], "rolled_back", "{done}");

    // The flag phase's config var is kept, with its history.
    let (_, config) = server
        .get("/api/v1/apps/shop/environments/staging/config")
        .await
        .unwrap();
    assert_eq!(config["values"][0]["key"], "ENABLE_OCR", "{config}");
    assert_eq!(config["values"][0]["value"], "true");
    assert_eq!(config["history"][0]["new_value"], "true");

    // Production is untouched by all of this.
    let (_, production) = server
        .get("/api/v1/apps/shop/environments/production")
        .await
        .unwrap();
    assert!(production["current_release"].is_null());
    drop(server);
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn a_manual_rollback_returns_to_the_previous_release_and_is_recorded() {
    let db = TestDb::new().await.unwrap();
    let server = Server::start(BINARY, &db.url, &[]).unwrap();
    server
        .apply("shop", &shop_config("shop", "100ms"))
        .await
        .unwrap();
    for version in ["2.0.0", "2.1.0"] {
        let id = deploy(&server, "shop", "production", version).await;
        let done = server
            .wait_finished(&id, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(done["state"], "succeeded");
    }
    let (code, body) = server
        .post(
            "/api/v1/apps/shop/environments/production/rollback",
            &json!({}),
        )
        .await
        .unwrap();
    assert_eq!(code, 422, "a rollback needs a reason: {body}");
    assert_eq!(body["errors"][0]["field"], "reason");

    let (code, body) = server
        .post(
            "/api/v1/apps/shop/environments/production/rollback",
            &json!({ "reason": "checkout errors after 2.1.0" }),
        )
        .await
        .unwrap();
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["release"], "2.0.0");
    let done = server
        .wait_finished(body["id"].as_str().unwrap(), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(done["state"], "succeeded");
    let (_, history) = server
        .get("/api/v1/apps/shop/environments/production/rollbacks")
        .await
        .unwrap();
    assert_eq!(history["items"][0]["trigger"], "api");
    assert_eq!(history["items"][0]["reason"], "checkout errors after 2.1.0");
    let (_, status) = server
        .get("/api/v1/apps/shop/environments/production")
        .await
        .unwrap();
    assert_eq!(status["current_release"], "2.0.0");
    drop(server);
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn an_approval_gate_waits_for_a_person_and_pause_resume_and_cancel_work() {
    let db = TestDb::new().await.unwrap();
    let server = Server::start(BINARY, &db.url, &[]).unwrap();
    let config = shop_config("gated", "100ms").replace(
        "gates: [ { soak: 300ms } ]\n        on_failure: rollback",
        "gates: [ { approval: { required: 1 } } ]\n        on_failure: pause",
    );
    let (status, body) = server.apply("gated", &config).await.unwrap();
    assert_eq!(status, 201, "{body}");
    let id = deploy(&server, "gated", "staging", "3.0.0").await;
    let waiting = eventually(Duration::from_secs(60), "the approval gate", || async {
        let (_, body) = server.get(&format!("/api/v1/rollouts/{id}")).await?;
        Ok((body["phases"][2]["state"] == "verifying").then_some(body))
    })
    .await
    .unwrap();
    assert_eq!(waiting["state"], "in_progress");
    // The gate asked for people once, in the audit log (and so on the channels).
    let (_, events) = server
        .get(&format!("/api/v1/events?rollout={id}"))
        .await
        .unwrap();
    let asked: Vec<&Value> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| event["action"] == "phase.approval_requested")
        .collect();
    assert_eq!(asked.len(), 1, "{events}");
    assert_eq!(asked[0]["details"]["required"], 1, "{events}");

    let (code, body) = server
        .post(&format!("/api/v1/rollouts/{id}/reject"), &json!({}))
        .await
        .unwrap();
    assert_eq!(code, 422, "a rejection needs a comment: {body}");
    let (code, body) = server
        .post(&format!("/api/v1/rollouts/{id}/pause"), &json!({}))
        .await
        .unwrap();
    assert_eq!(
        (code, body["state"].as_str()),
        (200, Some("paused")),
        "{body}"
    );
    let (code, body) = server
        .post(&format!("/api/v1/rollouts/{id}/pause"), &json!({}))
        .await
        .unwrap();
    assert_eq!(code, 422, "pausing twice is refused: {body}");
    let (code, _) = server
        .post(&format!("/api/v1/rollouts/{id}/resume"), &json!({}))
        .await
        .unwrap();
    assert_eq!(code, 200);
    let (code, body) = server
        .post(
            &format!("/api/v1/rollouts/{id}/approve"),
            &json!({ "comment": "checklist done" }),
        )
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    let done = server
        .wait_finished(&id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(done["state"], "succeeded");

    // A second rollout is cancelled while it waits.
    let second = deploy(&server, "gated", "staging", "3.1.0").await;
    let (code, body) = server
        .post(&format!("/api/v1/rollouts/{second}/cancel"), &json!({}))
        .await
        .unwrap();
    assert_eq!(
        (code, body["state"].as_str()),
        (200, Some("cancelled")),
        "{body}"
    );
    let (code, _) = server
        .post(&format!("/api/v1/rollouts/{second}/resume"), &json!({}))
        .await
        .unwrap();
    assert_eq!(code, 422, "a cancelled rollout stays cancelled");
    drop(server);
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn rollouts_queue_behind_the_one_that_holds_the_environment() {
    let db = TestDb::new().await.unwrap();
    let server = Server::start(BINARY, &db.url, &[]).unwrap();
    server
        .apply("shop", &shop_config("shop", "100ms"))
        .await
        .unwrap();
    let first = deploy(&server, "shop", "staging", "4.0.0").await;
    let second = deploy(&server, "shop", "staging", "4.1.0").await;
    let (_, body) = server
        .get(&format!("/api/v1/rollouts/{second}"))
        .await
        .unwrap();
    assert_eq!(body["state"], "queued");
    let first = server
        .wait_finished(&first, Duration::from_secs(60))
        .await
        .unwrap();
    let second = server
        .wait_finished(&second, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        (first["state"].as_str(), second["state"].as_str()),
        (Some("succeeded"), Some("succeeded"))
    );
    assert!(
        time(&second["started_at"]) >= time(&first["finished_at"]),
        "one at a time"
    );
    drop(server);
    db.drop_database().await.unwrap();
}

/// Counts the simulated provider's deploys per natural key: every key must appear once.
async fn deploys_issued_twice(db: &TestDb) -> Vec<(String, i64)> {
    sqlx::query_as(
        "select natural_key, count(*) from simulated_operations group by natural_key having count(*) > 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn rollouts_resume_after_kill_9_without_deploying_twice() {
    let db = TestDb::new().await.unwrap();
    let mut server = Server::start(BINARY, &db.url, &[("SHIPGATE_REPLICA", "first")]).unwrap();
    let apps = ["crash-a", "crash-b", "crash-c", "crash-d"];
    let mut rollouts = Vec::new();
    for app in apps {
        server.apply(app, &shop_config(app, "700ms")).await.unwrap();
        for environment in ["staging", "production"] {
            rollouts.push(deploy(&server, app, environment, "5.0.0").await);
        }
    }
    // Kill it while rollouts are mid-phase: provider operations submitted, not finished.
    eventually(Duration::from_secs(30), "operations in flight", || async {
        let in_flight: i64 =
            sqlx::query_scalar("select count(*) from step_runs where state = 'submitted'")
                .fetch_one(&db.pool)
                .await?;
        Ok((in_flight >= 3).then_some(()))
    })
    .await
    .unwrap();
    server.kill9();
    let unfinished: i64 =
        sqlx::query_scalar("select count(*) from rollouts where finished_at is null")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(unfinished > 0, "the kill must land mid-rollout");

    let server = Server::start(BINARY, &db.url, &[("SHIPGATE_REPLICA", "second")]).unwrap();
    for id in &rollouts {
        let done = server
            .wait_finished(id, Duration::from_secs(90))
            .await
            .unwrap();
        assert_eq!(done["state"], "succeeded", "{done}");
    }
    assert_eq!(
        deploys_issued_twice(&db).await,
        vec![],
        "no provider operation was issued twice"
    );
    let deploys: i64 =
        sqlx::query_scalar("select count(*) from simulated_operations where kind = 'deploy'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        deploys,
        rollouts.len() as i64 * 3,
        "exactly one deploy per component per rollout"
    );
    let resumed_by_second: i64 =
        sqlx::query_scalar("select count(*) from events where actor = 'second'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(
        resumed_by_second > 0,
        "the restarted server finished the work"
    );
    drop(server);
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn two_servers_split_the_work_and_never_drive_the_same_rollout_at_once() {
    let db = TestDb::new().await.unwrap();
    let one = Server::start(
        BINARY,
        &db.url,
        &[("SHIPGATE_REPLICA", "one"), ("SHIPGATE_WORKERS", "4")],
    )
    .unwrap();
    let two = Server::start(
        BINARY,
        &db.url,
        &[("SHIPGATE_REPLICA", "two"), ("SHIPGATE_WORKERS", "4")],
    )
    .unwrap();
    let mut rollouts = Vec::new();
    for index in 0..8 {
        let app = format!("split-{index}");
        let server = if index % 2 == 0 { &one } else { &two };
        server
            .apply(&app, &shop_config(&app, "300ms"))
            .await
            .unwrap();
        for environment in ["staging", "production"] {
            rollouts.push(deploy(server, &app, environment, "6.0.0").await);
        }
    }
    for id in &rollouts {
        let done = one
            .wait_finished(id, Duration::from_secs(120))
            .await
            .unwrap();
        assert_eq!(done["state"], "succeeded", "{done}");
    }
    assert_eq!(deploys_issued_twice(&db).await, vec![]);
    let by_replica: Vec<(String, i64)> = sqlx::query_as(
        "select issued_by, count(*) from simulated_operations group by issued_by order by issued_by",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        by_replica.len(),
        2,
        "both replicas drove rollouts: {by_replica:?}"
    );
    // Each step attempt was recorded once: a rollout driven by two workers at once would show
    // a duplicate attempt or a second intent for the same step.
    let duplicated: i64 = sqlx::query_scalar(
        "select count(*) from (select phase_id, step_index from step_runs group by 1, 2 having count(*) > 1) d",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(duplicated, 0);
    drop((one, two));
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn bad_configs_are_refused_naming_the_field_and_nothing_is_half_applied() {
    let db = TestDb::new().await.unwrap();
    let server = Server::start(BINARY, &db.url, &[]).unwrap();
    let good = shop_config("shop", "100ms");
    let cases = [
        (
            good.replace(
                "repository: acme/shop",
                "repository: acme/shop\ncolour: red",
            ),
            "colour",
        ),
        (
            good.replace("failures: 2, successes: 2", "failures: many, successes: 2"),
            "environments[0].plan[0].gates[0].health.failures",
        ),
        (
            good.replace("deploy: [web]", "deploy: [frontend]"),
            "environments[0].plan[1].deploy[0]",
        ),
        (
            good.replacen(
                "web:    { provider: simulated",
                "web:    { provider: netlify",
                1,
            ),
            "environments[0].targets.web.provider",
        ),
        (
            good.replace("[web, api, worker]", "[web, api, worker, api]"),
            "components[3]",
        ),
        (
            good.replace("name: production", "name: staging"),
            "environments[1].name",
        ),
        (
            good.replace("ENABLE_OCR: \"true\"", "ENABLE_OCR: \"${OCR_FLAG}\""),
            "environments[0].plan[2].config.api.ENABLE_OCR",
        ),
    ];
    for (document, field) in &cases {
        let (status, body) = server.apply("shop", document).await.unwrap();
        assert_eq!(status, 422, "{field}: {body}");
        assert_eq!(body["status"], 422);
        let fields: Vec<&str> = body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert!(fields.contains(field), "expected {field} in {fields:?}");
    }
    let (status, _) = server.get("/api/v1/apps/shop").await.unwrap();
    assert_eq!(status, 404, "nothing was applied");

    // A bad update leaves the applied config as it was.
    let (status, _) = server.apply("shop", &good).await.unwrap();
    assert_eq!(status, 201);
    let (status, body) = server.apply("shop", &good).await.unwrap();
    assert_eq!(
        (status, body["changed"].as_bool()),
        (200, Some(false)),
        "applying again changes nothing"
    );
    let (status, _) = server.apply("shop", &cases[2].0).await.unwrap();
    assert_eq!(status, 422);
    let (_, app) = server.get("/api/v1/apps/shop").await.unwrap();
    assert_eq!(
        app["spec"]["environments"][0]["plan"]["phases"][1]["steps"][0]["component"],
        "web"
    );

    // Malformed requests get problem+json too.
    let response = server
        .http
        .post(server.at("/api/v1/apps/shop/releases"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let (status, body) = server
        .post(
            "/api/v1/apps/shop/releases",
            &json!({ "version": "1", "artifacts": { "db": "x" } }),
        )
        .await
        .unwrap();
    assert_eq!(
        (status, body["errors"][0]["field"].as_str()),
        (422, Some("artifacts.db")),
        "{body}"
    );
    drop(server);
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn releases_are_idempotent_on_version_and_immutable() {
    let db = TestDb::new().await.unwrap();
    let server = Server::start(BINARY, &db.url, &[]).unwrap();
    server
        .apply("shop", &shop_config("shop", "100ms"))
        .await
        .unwrap();
    let (first, body) = server
        .post("/api/v1/apps/shop/releases", &release("7.0.0"))
        .await
        .unwrap();
    assert_eq!(first, 201, "{body}");
    let (again, same) = server
        .post("/api/v1/apps/shop/releases", &release("7.0.0"))
        .await
        .unwrap();
    assert_eq!(again, 200);
    assert_eq!(same["id"], body["id"]);
    let mut changed = release("7.0.0");
    changed["artifacts"]["web"] = json!("registry.example/shop/web:other");
    let (conflict, problem) = server
        .post("/api/v1/apps/shop/releases", &changed)
        .await
        .unwrap();
    assert_eq!(conflict, 409, "{problem}");
    drop(server);
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn the_api_needs_the_admin_token_and_readiness_follows_the_database() {
    let db = TestDb::new().await.unwrap();
    let server = Server::start(BINARY, &db.url, &[]).unwrap();
    let anonymous = reqwest::Client::new();
    for (method, path) in [
        ("PUT", "/api/v1/apps/shop"),
        ("GET", "/api/v1/apps"),
        ("POST", "/api/v1/apps/shop/releases"),
        ("POST", "/api/v1/apps/shop/environments/staging/rollouts"),
        ("POST", "/api/v1/apps/shop/environments/staging/rollback"),
        (
            "POST",
            "/api/v1/rollouts/00000000-0000-0000-0000-000000000000/pause",
        ),
        ("GET", "/metrics"),
    ] {
        for token in [None, Some("wrong-token-0123456789")] {
            let mut request = anonymous.request(method.parse().unwrap(), server.at(path));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 401, "{method} {path} with {token:?}");
            assert!(response.headers().contains_key("www-authenticate"));
        }
    }
    let metrics = anonymous
        .get(server.at("/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert!(metrics
        .text()
        .await
        .unwrap()
        .contains("shipgate_rollouts{state=\"in_progress\"}"));
    let dashboard = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = dashboard.get(server.at("/")).send().await.unwrap();
    assert_eq!(
        page.status(),
        303,
        "the dashboard sends strangers to sign in"
    );

    assert_eq!(
        anonymous
            .get(server.at("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let name = db.name.clone();
    db.drop_database().await.unwrap();
    let _ = name;
    eventually(
        Duration::from_secs(20),
        "readyz to report the database gone",
        || async {
            let status = anonymous.get(server.at("/readyz")).send().await?.status();
            Ok((status == 503).then_some(()))
        },
    )
    .await
    .unwrap();
    assert_eq!(
        anonymous
            .get(server.at("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn the_dashboard_signs_in_and_shows_releases_and_rollbacks() {
    let db = TestDb::new().await.unwrap();
    let server = Server::start(BINARY, &db.url, &[]).unwrap();
    server
        .apply("shop", &shop_config("shop", "100ms"))
        .await
        .unwrap();
    let good = deploy(&server, "shop", "staging", "8.0.0").await;
    server
        .wait_finished(&good, Duration::from_secs(60))
        .await
        .unwrap();
    let sick = deploy(&server, "shop", "staging", "8.1.0-sick").await;
    server
        .wait_finished(&sick, Duration::from_secs(60))
        .await
        .unwrap();

    let browser = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let refused = browser
        .post(server.at("/login"))
        .form(&[("token", "nope")])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let signed_in = browser
        .post(server.at("/login"))
        .form(&[("token", ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 303);
    let cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let page = browser.get(server.at("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    for expected in [
        "shop",
        "staging",
        "8.0.0",
        "8.1.0-sick",
        "rolled_back",
        "quarantined",
        "auto-deploy paused",
    ] {
        assert!(html.contains(expected), "the overview shows {expected}");
    }
    let page = browser
        .get(server.at(&format!("/rollouts/{sick}")))
        .send()
        .await
        .unwrap();
    let html = page.text().await.unwrap();
    assert!(
        html.contains("backend") && html.contains("Rolled back by"),
        "the rollout page shows its timeline"
    );
    drop(server);
    db.drop_database().await.unwrap();
}

/// The `${NAME}` references of a config file.
fn variables_in(text: &str) -> Vec<String> {
    text.split("${")
        .skip(1)
        .filter_map(|rest| rest.split_once('}'))
        .map(|(name, _)| name.to_owned())
        .collect()
}

#[tokio::test]
async fn the_cli_applies_every_example_resolving_variables_where_it_runs() {
    let db = TestDb::new().await.unwrap();
    let server = Server::start(BINARY, &db.url, &[]).unwrap();
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");
    let mut applied = 0;
    for entry in std::fs::read_dir(examples).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let output = std::process::Command::new(BINARY)
            .args(["apply", "-f"])
            .arg(&path)
            .env("SHIPGATE_URL", &server.url)
            .env("SHIPGATE_TOKEN", ADMIN_TOKEN)
            .envs(
                variables_in(&std::fs::read_to_string(&path).unwrap())
                    .into_iter()
                    .map(|name| {
                        let value = if name == "PROMETHEUS_URL" {
                            "http://prometheus.test:9090".to_owned()
                        } else {
                            format!("test-{name}")
                        };
                        (name, value)
                    }),
            )
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "{}: {stdout} {stderr}",
            path.display()
        );
        applied += 1;
    }
    assert!(applied >= 5, "every example applied");
    // An unset variable is named by the CLI, with its field, and nothing is sent.
    let output = std::process::Command::new(BINARY)
        .args(["apply", "--dry-run", "-f"])
        .arg(format!("{examples}/class-chat.yaml"))
        .env_remove("HEROKU_API_KEY")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("HEROKU_API_KEY") && stderr.contains("credentials"),
        "{stderr}"
    );
    drop(server);
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn framework_rejections_are_problem_json_too() {
    let db = TestDb::new().await.unwrap();
    let server = Server::start(BINARY, &db.url, &[]).unwrap();
    for (path, status) in [
        ("/api/v1/rollouts?limit=lots", 400),
        ("/api/v1/rollouts/not-a-uuid", 404),
        ("/api/v1/no-such-route", 404),
    ] {
        let response = server.http.get(server.at(path)).send().await.unwrap();
        assert_eq!(response.status(), status, "{path}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{path}"
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], status, "{path}");
    }
    // Just over the limit, so the whole body fits in socket buffers and the answer arrives intact.
    let oversized = "x".repeat(1024 * 1024 + 100);
    let response = server
        .http
        .put(server.at("/api/v1/apps/shop"))
        .header("content-type", "application/yaml")
        .body(oversized)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    drop(server);
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn a_cancelled_or_failed_rollback_leaves_the_undone_rollout_rollback_failed() {
    let db = TestDb::new().await.unwrap();
    let server = Server::start(BINARY, &db.url, &[]).unwrap();
    let config = shop_config("shop", "800ms").replace(
        "unhealthy: \"*-sick\" }\n      api:",
        "unhealthy: \"*-sick\", fail_rollback: \"0.*\" }\n      api:",
    );
    let (status, body) = server.apply("shop", &config).await.unwrap();
    assert_eq!(status, 201, "{body}");

    // A rollback a person cancels: the rollout it was undoing ends rollback_failed.
    let good = deploy(&server, "shop", "staging", "1.0.0").await;
    server
        .wait_finished(&good, Duration::from_secs(60))
        .await
        .unwrap();
    let sick = deploy(&server, "shop", "staging", "1.1.0-sick").await;
    let rollback = eventually(
        Duration::from_secs(60),
        "the automatic rollback",
        || async {
            let (_, body) = server.get(&format!("/api/v1/rollouts/{sick}")).await?;
            Ok(body["rolled_back_by"].as_str().map(str::to_owned))
        },
    )
    .await
    .unwrap();
    let (code, body) = server
        .post(&format!("/api/v1/rollouts/{rollback}/cancel"), &json!({}))
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    let (_, undone) = server
        .get(&format!("/api/v1/rollouts/{sick}"))
        .await
        .unwrap();
    assert_eq!(undone["state"], "rollback_failed", "{undone}");
    let (_, history) = server
        .get("/api/v1/apps/shop/environments/staging/rollbacks")
        .await
        .unwrap();
    assert_eq!(history["items"][0]["outcome"], "failed");

    // The environment is not stuck: a person can roll back again.
    let (code, body) = server
        .post(
            "/api/v1/apps/shop/environments/staging/rollback",
            &json!({ "reason": "finish the rollback", "to_release": "1.0.0" }),
        )
        .await
        .unwrap();
    assert_eq!(code, 201, "{body}");
    let done = server
        .wait_finished(body["id"].as_str().unwrap(), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(done["state"], "succeeded", "{done}");

    // A rollback whose provider call fails: the undone rollout ends rollback_failed too.
    let (code, body) = server
        .post(
            "/api/v1/apps/shop/environments/staging/rollback",
            &json!({ "reason": "try an old one", "to_release": "0.9.0" }),
        )
        .await
        .unwrap();
    assert_eq!(code, 404, "an unknown release is named: {body}");
    server
        .post("/api/v1/apps/shop/releases", &release("0.9.0"))
        .await
        .unwrap();
    let (code, body) = server
        .post(
            "/api/v1/apps/shop/environments/staging/rollback",
            &json!({ "reason": "try an old one", "to_release": "0.9.0" }),
        )
        .await
        .unwrap();
    assert_eq!(code, 201, "{body}");
    let done = server
        .wait_finished(body["id"].as_str().unwrap(), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        done["state"], "failed",
        "the injected rollback failure: {done}"
    );
    let (_, history) = server
        .get("/api/v1/apps/shop/environments/staging/rollbacks")
        .await
        .unwrap();
    assert_eq!(history["items"][0]["outcome"], "failed");
    drop(server);
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn drift_is_noticed_when_the_platform_serves_something_else() {
    let db = TestDb::new().await.unwrap();
    let server = Server::start(BINARY, &db.url, &[("SHIPGATE_DRIFT_INTERVAL", "300ms")]).unwrap();
    server
        .apply("shop", &shop_config("shop", "100ms"))
        .await
        .unwrap();
    let id = deploy(&server, "shop", "staging", "1.0.0").await;
    server
        .wait_finished(&id, Duration::from_secs(60))
        .await
        .unwrap();
    let (_, status) = server
        .get("/api/v1/apps/shop/environments/staging")
        .await
        .unwrap();
    assert!(
        status["live"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["drifted"] == false),
        "{status}"
    );

    // Someone deploys an old build of the API in the platform's own UI.
    sqlx::query(
        "insert into simulated_operations (id, target, natural_key, kind, version, request, outcome, ready_at, issued_by)
         values (gen_random_uuid(), 'shop/staging/api', 'outside', 'deploy', '0.9.0-hotfix', '{}', 'succeeded', now(), 'a person')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let api = eventually(Duration::from_secs(20), "drift to be noticed", || async {
        let (_, status) = server.get("/api/v1/apps/shop/environments/staging").await?;
        let api = status["live"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["component"] == "api")
            .cloned();
        Ok(api.filter(|api| api["drifted"] == true))
    })
    .await
    .unwrap();
    assert_eq!(api["observed_version"], "0.9.0-hotfix");
    assert_eq!(api["release"], "1.0.0");
    let (_, events) = server.get("/api/v1/events?app=shop").await.unwrap();
    let drift: Vec<&Value> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "drift.detected")
        .collect();
    assert_eq!(drift.len(), 1, "one event per change, not per check");
    assert_eq!(drift[0]["details"]["component"], "api");

    // Platforms that report the artifact (a commit, an image) rather than a version are
    // compared with the release's artifact: serving it again is not drift.
    sqlx::query(
        "insert into simulated_operations (id, target, natural_key, kind, version, request, outcome, ready_at, issued_by)
         values (gen_random_uuid(), 'shop/staging/api', 'outside-2', 'deploy', 'registry.example/shop/api:1.0.0', '{}', 'succeeded', now(), 'a person')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    eventually(Duration::from_secs(20), "drift to clear", || async {
        let (_, status) = server.get("/api/v1/apps/shop/environments/staging").await?;
        let api = status["live"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["component"] == "api")
            .cloned();
        Ok(api.filter(|api| {
            api["drifted"] == false && api["observed_version"] == "registry.example/shop/api:1.0.0"
        }))
    })
    .await
    .unwrap();
    drop(server);
    db.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_platform_is_backed_off_and_the_rollout_recovers_when_it_answers() {
    use shipgate_testkit::fakes::generic::FakeDeployEndpoint;
    let (fake, base) = FakeDeployEndpoint::start().await;
    let db = TestDb::new().await.unwrap();
    let server = Server::start(BINARY, &db.url, &[]).unwrap();
    let config = format!(
        r#"
app: hooks
components: [api]
environments:
  - name: production
    targets:
      api: {{ provider: http, deploy_url: "{base}/deploy", status_url: "{base}/status/{{id}}" }}
    plan:
      - {{ name: all, deploy: [api] }}
"#
    );
    let (status, body) = server.apply("hooks", &config).await.unwrap();
    assert_eq!(status, 201, "{body}");
    fake.chaos.fail(10_000);
    let (_, created) = server
        .post(
            "/api/v1/apps/hooks/releases",
            &json!({ "version": "1.0.0", "artifacts": { "api": "image:1" } }),
        )
        .await
        .unwrap();
    assert!(created["id"].is_string(), "{created}");
    let (_, rollout) = server
        .post(
            "/api/v1/apps/hooks/environments/production/rollouts",
            &json!({ "release": "1.0.0" }),
        )
        .await
        .unwrap();
    let id = rollout["id"].as_str().unwrap().to_owned();

    // One call's bounded retries, then the engine waits before trying again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let calls = fake
        .chaos
        .requests
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (1..=4).contains(&calls),
        "one attempt's retries, then a backoff: {calls} requests"
    );
    let (_, waiting) = server.get(&format!("/api/v1/rollouts/{id}")).await.unwrap();
    assert_eq!(waiting["state"], "in_progress");
    assert_eq!(
        waiting["phases"][0]["steps"][0]["state"], "pending",
        "{waiting}"
    );

    // The platform recovers: the rollout finishes, with exactly one operation started there.
    fake.chaos.fail(0);
    let done = server
        .wait_finished(&id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(fake.operations(), 1);
    drop(server);
    db.drop_database().await.unwrap();
}
