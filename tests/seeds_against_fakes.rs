//! The seed examples run end to end: the real `shipgate` binary drives the class-chat runbook
//! (Vercel + two Heroku apps, examples/class-chat.yaml) and the rag-chatbot runbook (a Cloud Run
//! canary, examples/rag-chatbot.yaml) against local fakes of the platforms, a local health
//! server and a local Prometheus, all served from the test process.
//!
//! The configs keep the examples' phase structure; they differ only where a test needs it:
//! every `api_url` points at a fake, apps / projects / services are the fakes' names,
//! credentials are literal tokens (the server receives resolved configs), health URLs point at
//! the local health server, and gate timings are short (300ms intervals, 2 failures, 300ms holds).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::bail;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde_json::{json, Value};
use shipgate_testkit::fakes::cloudrun::FakeCloudRun;
use shipgate_testkit::fakes::heroku::{self, FakeHeroku};
use shipgate_testkit::fakes::vercel::{self, FakeVercel};
use shipgate_testkit::fakes::{serve, CallLog};
use shipgate_testkit::{eventually, Server, TestDb};

const BINARY: &str = env!("CARGO_BIN_EXE_shipgate");
const LIMIT: Duration = Duration::from_secs(40);
const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

// ---------------------------------------------------------------------------------------------
// Shared helpers.

/// A local Prometheus: `POST /api/v1/query` answers a one-sample vector whose value the test
/// computes from the query. Returns its base URL and the queries it received.
async fn fake_prometheus(value: impl Fn(&str) -> f64 + Send + Sync + 'static) -> (String, CallLog) {
    let calls = CallLog::default();
    let log = calls.clone();
    let value = Arc::new(value);
    let router = Router::new().route(
        "/api/v1/query",
        post(move |Form(form): Form<HashMap<String, String>>| {
            let (value, log) = (value.clone(), log.clone());
            async move {
                let query = form.get("query").cloned().unwrap_or_default();
                log.record("POST", "/api/v1/query", json!({ "query": query }));
                let sample = value(&query);
                let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
                Json(json!({
                    "status": "success",
                    "data": {
                        "resultType": "vector",
                        "result": [{ "metric": {}, "value": [now, sample.to_string()] }],
                    },
                }))
            }
        }),
    );
    (serve(router).await, calls)
}

/// Registers a release and starts a rollout of it; returns the rollout id.
async fn deploy(
    server: &Server,
    app: &str,
    environment: &str,
    version: &str,
    artifacts: Value,
) -> String {
    let (status, body) = server
        .post(
            &format!("/api/v1/apps/{app}/releases"),
            &json!({ "version": version, "git_sha": SHA, "artifacts": artifacts }),
        )
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

/// Waits until the rollout asks for people (the environment's approvals before it starts when
/// `phase` is `None`, else that phase's approval gate) and approves through the API.
async fn approve_when_asked(server: &Server, id: &str, phase: Option<usize>) {
    let what = match phase {
        None => "the environment's approval".to_owned(),
        Some(index) => format!("the approval gate of phase {index}"),
    };
    eventually(LIMIT, &what, || async {
        let (_, body) = server.get(&format!("/api/v1/rollouts/{id}")).await?;
        if body["finished"] == Value::Bool(true) {
            bail!("the rollout finished while waiting for {what}: {body}");
        }
        let waiting = match phase {
            None => body["state"] == "pending_approval",
            Some(index) => {
                body["state"] == "in_progress"
                    && body["current_phase"] == index
                    && body["phases"][index]["state"] == "verifying"
            }
        };
        Ok(waiting.then_some(()))
    })
    .await
    .unwrap();
    let (code, body) = server
        .post(
            &format!("/api/v1/rollouts/{id}/approve"),
            &json!({ "comment": "checklist done" }),
        )
        .await
        .unwrap();
    assert_eq!(code, 200, "approving {what}: {body}");
}

fn phase_states(rollout: &Value) -> Vec<String> {
    rollout["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["state"].as_str().unwrap().to_owned())
        .collect()
}

/// The step attempts of a rollout of one kind for one component.
fn steps(rollout: &Value, kind: &str, component: &str) -> Vec<Value> {
    rollout["phases"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["steps"].as_array().unwrap().iter())
        .filter(|s| s["kind"] == kind && s["component"] == component)
        .cloned()
        .collect()
}

/// Follows a rolled-back rollout to its rollback; returns both, finished.
async fn rolled_back(server: &Server, id: &str) -> (Value, Value) {
    let undone = server.wait_finished(id, LIMIT).await.unwrap();
    assert_eq!(undone["state"], "rolled_back", "{undone}");
    let rollback_id = undone["rolled_back_by"]
        .as_str()
        .expect("linked to its rollback")
        .to_owned();
    let rollback = server.wait_finished(&rollback_id, LIMIT).await.unwrap();
    (undone, rollback)
}

// ---------------------------------------------------------------------------------------------
// class-chat: Vercel frontend, Heroku node-api and python-ai.

/// What a Heroku fake serves: the source version its current release's slug was built from.
fn serving(fake: &FakeHeroku) -> Option<String> {
    let current = fake.current_release()?;
    let slug = current["slug"]["id"].as_str()?;
    fake.slug_version(slug)
}

#[derive(Clone)]
struct ClassChatHealth {
    node: FakeHeroku,
    python: FakeHeroku,
    /// Source versions that answer 503 while they serve.
    sick: Arc<Mutex<Vec<String>>>,
}

impl ClassChatHealth {
    fn answer(&self, fake: &FakeHeroku, healthy_body: Value) -> Response {
        let sick = serving(fake).is_some_and(|v| self.sick.lock().unwrap().contains(&v));
        if sick {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "error": "unavailable" })),
            )
                .into_response()
        } else {
            Json(healthy_body).into_response()
        }
    }
}

/// The node-api's `/api/v1/user/auth-status` and the python-ai's `/openapi.json`, each healthy
/// unless the release its Heroku fake serves is marked sick.
async fn class_chat_health(state: ClassChatHealth) -> String {
    let router = Router::new()
        .route(
            "/node/api/v1/user/auth-status",
            get(|State(s): State<ClassChatHealth>| async move {
                s.answer(&s.node, json!({ "authenticated": false }))
            }),
        )
        .route(
            "/python/openapi.json",
            get(|State(s): State<ClassChatHealth>| async move {
                s.answer(&s.python, json!({ "openapi": "3.1.0" }))
            }),
        )
        .with_state(state);
    serve(router).await
}

struct ClassChatUrls<'a> {
    vercel: &'a str,
    node: &'a str,
    python: &'a str,
    health: &'a str,
    prometheus: &'a str,
}

/// examples/class-chat.yaml, pointed at the fakes, with short gate timings.
fn class_chat_config(urls: &ClassChatUrls<'_>) -> String {
    let ClassChatUrls {
        vercel,
        node,
        python,
        health,
        prometheus,
    } = urls;
    let project = vercel::PROJECT_ID;
    let app = heroku::APP;
    format!(
        r#"
app: class-chat
repository: acme/class-chat
components: [frontend, node-api, python-ai]
credentials:
  heroku: heroku-api-key-for-tests
  vercel: vercel-token-for-tests
prometheus_url: {prometheus}
environments:
  - name: production
    auto_deploy: {{ branch: main }}
    approvals: {{ required: 1, allow_self_approval: false }}
    targets:
      frontend:
        provider: vercel
        project_id: {project}
        api_url: {vercel}
        credential: vercel
      node-api:
        provider: heroku
        app: {app}
        api_url: {node}
        credential: heroku
        health: {{ url: "{health}/node/api/v1/user/auth-status" }}
      python-ai:
        provider: heroku
        app: {app}
        api_url: {python}
        credential: heroku
        health: {{ url: "{health}/python/openapi.json" }}
    plan:
      - name: backend
        deploy: [python-ai, node-api]
        gates:
          - health: {{ components: [python-ai, node-api], interval: 300ms, timeout: 1s, failures: 2 }}
        on_failure: rollback
      - name: frontend
        deploy: [frontend]
        gates:
          - prometheus:
              query: 'sum(rate(http_requests_total{{code=~"5.."}}[5m])) / sum(rate(http_requests_total[5m]))'
              below: 0.01
              interval: 300ms
              for: 300ms
              no_data: inconclusive
        on_failure: rollback
      - name: frontend-checklist
        gates:
          - approval: {{}}
        on_failure: rollback
      - name: ocr
        config: {{ python-ai: {{ ENABLE_OCR: "true" }} }}
        gates:
          - health: {{ components: [python-ai], interval: 300ms, timeout: 1s, failures: 2 }}
          - approval: {{}}
        on_failure: pause
"#
    )
}

fn class_chat_artifacts(version: &str) -> Value {
    json!({
        "frontend": format!("v{version}"),
        "node-api": format!("https://codeload.example/acme/class-chat/node-api-{version}.tar.gz"),
        "python-ai": format!("https://codeload.example/acme/class-chat/python-ai-{version}.tar.gz"),
    })
}

/// Heroku's own rollback calls a fake received: `POST /apps/{app}/releases {"release": …}`.
fn heroku_rollbacks(fake: &FakeHeroku) -> Vec<Value> {
    fake.calls
        .matching("POST", &format!("/apps/{}/releases", heroku::APP))
        .into_iter()
        .map(|(_, _, body)| body)
        .filter(|body| body.get("release").is_some())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn class_chat_ships_through_four_phases_and_a_failed_health_gate_rolls_heroku_back() {
    let (vercel, vercel_url) = FakeVercel::start().await;
    let (node, node_url) = FakeHeroku::start().await;
    let (python, python_url) = FakeHeroku::start().await;
    let sick = Arc::new(Mutex::new(Vec::<String>::new()));
    let health_url = class_chat_health(ClassChatHealth {
        node: node.clone(),
        python: python.clone(),
        sick: sick.clone(),
    })
    .await;
    // The frontend's error rate: well under the 1% threshold.
    let (prometheus_url, queries) = fake_prometheus(|_| 0.002).await;

    let db = TestDb::new().await.unwrap();
    let server = Server::start(BINARY, &db.url, &[]).unwrap();
    let config = class_chat_config(&ClassChatUrls {
        vercel: &vercel_url,
        node: &node_url,
        python: &python_url,
        health: &health_url,
        prometheus: &prometheus_url,
    });
    let (status, body) = server.apply("class-chat", &config).await.unwrap();
    assert_eq!(status, 201, "{body}");

    // A good release: approved to start, then through backend, frontend, the checklist
    // approval and the OCR flag with its approval.
    let good = deploy(
        &server,
        "class-chat",
        "production",
        "1.0.0",
        class_chat_artifacts("1.0.0"),
    )
    .await;
    approve_when_asked(&server, &good, None).await;
    approve_when_asked(&server, &good, Some(2)).await;
    approve_when_asked(&server, &good, Some(3)).await;
    let done = server.wait_finished(&good, LIMIT).await.unwrap();
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(
        phase_states(&done),
        ["succeeded", "succeeded", "succeeded", "succeeded"]
    );

    // Both Heroku apps built the release's tarball and serve it.
    for (fake, component) in [(&node, "node-api"), (&python, "python-ai")] {
        let builds = fake
            .calls
            .matching("POST", &format!("/apps/{}/builds", heroku::APP));
        assert_eq!(builds.len(), 1, "{component}: one build");
        assert_eq!(
            builds[0].2["source_blob"]["url"],
            format!("https://codeload.example/acme/class-chat/{component}-1.0.0.tar.gz")
        );
        assert_eq!(serving(fake).as_deref(), Some("1.0.0"), "{component}");
    }
    // The OCR flag is on, on the Python app only, set with Heroku's config-vars PATCH.
    assert_eq!(
        python.config_vars().get("ENABLE_OCR").map(String::as_str),
        Some("true")
    );
    let patches = python
        .calls
        .matching("PATCH", &format!("/apps/{}/config-vars", heroku::APP));
    assert_eq!(patches.len(), 1, "{patches:?}");
    assert_eq!(patches[0].2, json!({ "ENABLE_OCR": "true" }));
    assert!(!node.config_vars().contains_key("ENABLE_OCR"));
    // Vercel production points at the new deployment, built from the release's git ref.
    let frontend = vercel
        .deployment_of("1.0.0")
        .expect("a deployment of 1.0.0");
    assert_eq!(vercel.production().as_deref(), Some(frontend.as_str()));
    let creates = vercel.calls.matching("POST", "/v13/deployments");
    assert_eq!(creates.len(), 1);
    assert_eq!(creates[0].2["gitSource"]["ref"], "v1.0.0");
    assert_eq!(creates[0].2["target"], "production");
    // The frontend's error-rate gate asked Prometheus.
    assert!(!queries.all().is_empty(), "the Prometheus gate ran");
    let (_, environment) = server
        .get("/api/v1/apps/class-chat/environments/production")
        .await
        .unwrap();
    assert_eq!(environment["current_release"], "1.0.0", "{environment}");
    let live: Vec<&str> = environment["live"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["release"].as_str().unwrap())
        .collect();
    assert_eq!(live, ["1.0.0", "1.0.0", "1.0.0"], "{environment}");
    // The Heroku releases 1.0.0's deploys made: what a rollback returns to.
    let release_of = |component: &str| -> String {
        let deploys = steps(&done, "deploy", component);
        deploys[0]["result"]["release"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{component}'s deploy names its release: {deploys:?}"))
            .to_owned()
    };
    let node_good = release_of("node-api");
    // python-ai's newest 1.0.0 release is the one the OCR flag phase made: a rollback must return
    // to it, or OCR would be switched off.
    let python_good = python
        .current_release()
        .expect("python-ai serves a release")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(
        python_good,
        release_of("python-ai"),
        "the flag made a release of its own"
    );
    let vercel_deployments = vercel.deployments();

    // A bad release: node-api's health endpoint answers 503 while 1.1.0 serves there.
    sick.lock().unwrap().push("1.1.0".into());
    let bad = deploy(
        &server,
        "class-chat",
        "production",
        "1.1.0",
        class_chat_artifacts("1.1.0"),
    )
    .await;
    approve_when_asked(&server, &bad, None).await;
    let (undone, rollback) = rolled_back(&server, &bad).await;
    assert_eq!(
        phase_states(&undone),
        ["failed", "skipped", "skipped", "skipped"],
        "{undone}"
    );
    assert_eq!(rollback["state"], "succeeded", "{rollback}");
    assert_eq!(rollback["kind"], "rollback");
    assert_eq!(rollback["release"], "1.0.0");
    assert_eq!(rollback["rollback_of"].as_str(), Some(bad.as_str()));

    // The rollback used Heroku's own rollback, once on each app the bad release deployed, to
    // the newest release 1.0.0 left there; and both apps serve 1.0.0 again.
    for (fake, component, target) in [
        (&node, "node-api", &node_good),
        (&python, "python-ai", &python_good),
    ] {
        let rollbacks = heroku_rollbacks(fake);
        assert_eq!(rollbacks.len(), 1, "{component}: {rollbacks:?}");
        assert_eq!(rollbacks[0]["release"], json!(target), "{component}");
        assert_eq!(serving(fake).as_deref(), Some("1.0.0"), "{component}");
        let builds = fake
            .calls
            .matching("POST", &format!("/apps/{}/builds", heroku::APP));
        assert_eq!(builds.len(), 2, "{component}: no rebuild for the rollback");
    }
    // The frontend was never touched: production still serves 1.0.0's deployment.
    assert_eq!(vercel.deployments(), vercel_deployments);
    assert_eq!(vercel.production().as_deref(), Some(frontend.as_str()));

    let (_, history) = server
        .get("/api/v1/apps/class-chat/environments/production/rollbacks")
        .await
        .unwrap();
    let entry = &history["items"][0];
    assert_eq!(entry["trigger"], "gate", "{entry}");
    assert_eq!(entry["from_release"], "1.1.0");
    assert_eq!(entry["to_release"], "1.0.0");
    assert_eq!(entry["outcome"], "restored");
    assert!(
        entry["reason"].as_str().unwrap().contains("health"),
        "{entry}"
    );
    let (_, environment) = server
        .get("/api/v1/apps/class-chat/environments/production")
        .await
        .unwrap();
    assert_eq!(environment["current_release"], "1.0.0", "{environment}");
    let (_, release) = server
        .get("/api/v1/apps/class-chat/releases/1.1.0")
        .await
        .unwrap();
    assert!(release["quarantined_at"].is_string(), "{release}");

    // 1.0.0 ran with OCR on; returning to it keeps OCR on. (Heroku's rollback copies the config
    // vars of the release it returns to, so that has to be the newest release 1.0.0 left.)
    // Checked after the database is dropped, so a failure here leaves nothing behind.
    let ocr_after_rollback = python.config_vars().get("ENABLE_OCR").cloned();
    drop(server);
    db.drop_database().await.unwrap();
    assert_eq!(
        ocr_after_rollback.as_deref(),
        Some("true"),
        "the python-ai app lost ENABLE_OCR=true in the rollback to 1.0.0"
    );
}

// ---------------------------------------------------------------------------------------------
// rag-chatbot: a Cloud Run canary, 10 → 50 → 100.

const GCP_PROJECT: &str = "rag-chatbot-prod";
const REGION: &str = "us-central1";
const SERVICE: &str = "rag-chatbot";
const STAGING_SERVICE: &str = "rag-chatbot-staging";
const TRAFFIC: &str = "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION";

fn image(version: &str) -> String {
    format!("us-central1-docker.pkg.dev/{GCP_PROJECT}/rag/api:{version}")
}

/// The FastAPI `/health`: `overall_status: healthy`.
async fn rag_health() -> String {
    let router = Router::new().route(
        "/health",
        get(|| async { Json(json!({ "overall_status": "healthy", "checks": {} })) }),
    );
    serve(router).await
}

/// examples/rag-chatbot.yaml, pointed at the fakes, with short gate timings.
fn rag_config(cloudrun: &str, health: &str, prometheus: &str) -> String {
    format!(
        r#"
app: rag-chatbot
components: [api]
credentials:
  gcp: ya29.token-for-tests
prometheus_url: {prometheus}
environments:
  - name: staging
    auto_deploy: {{ branch: staging }}
    targets:
      api:
        provider: cloudrun
        project: {GCP_PROJECT}
        region: {REGION}
        service: {STAGING_SERVICE}
        api_url: {cloudrun}
        credential: gcp
        health:
          url: "{health}/health"
          json: {{ path: overall_status, equals: healthy }}
    plan:
      - name: deploy
        deploy: [api]
        traffic: {{ component: api, percent: 100 }}
        gates:
          - health: {{ components: [api], interval: 300ms, timeout: 1s, failures: 2 }}
        on_failure: rollback

  - name: production
    auto_deploy: {{ branch: main }}
    targets:
      api:
        provider: cloudrun
        project: {GCP_PROJECT}
        region: {REGION}
        service: {SERVICE}
        api_url: {cloudrun}
        credential: gcp
        health:
          url: "{health}/health"
          json: {{ path: overall_status, equals: healthy }}
    plan:
      - name: canary-10
        deploy: [api]
        traffic: {{ component: api, percent: 10 }}
        gates:
          - health: {{ components: [api], interval: 300ms, timeout: 1s, failures: 2, successes: 2 }}
          - prometheus: &error_rate
              query: 'sum(rate(http_requests_total{{status=~"5.."}}[5m])) / sum(rate(http_requests_total[5m]))'
              below: 0.01
              interval: 300ms
              for: 300ms
              no_data: inconclusive
          - prometheus: &latency_p95
              query: 'histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket[5m])))'
              below: 2.0
              interval: 300ms
              for: 300ms
              no_data: inconclusive
        on_failure: rollback
      - name: canary-50
        traffic: {{ component: api, percent: 50 }}
        gates:
          - health: {{ components: [api], interval: 300ms, timeout: 1s, failures: 2, successes: 2 }}
          - prometheus: *error_rate
          - prometheus: *latency_p95
        on_failure: rollback
      - name: full
        traffic: {{ component: api, percent: 100 }}
        gates:
          - health: {{ components: [api], interval: 300ms, timeout: 1s, failures: 2 }}
          - prometheus: *error_rate
          - prometheus: *latency_p95
        on_failure: rollback
"#
    )
}

/// The percents each `updateMask=traffic` PATCH gave a revision, in order.
fn traffic_given(fake: &FakeCloudRun, revision: &str) -> Vec<i64> {
    let service = format!("/v2/projects/{GCP_PROJECT}/locations/{REGION}/services/{SERVICE}");
    fake.calls
        .matching("PATCH", &service)
        .iter()
        .filter(|(_, path, _)| path.ends_with("?updateMask=traffic"))
        .filter_map(|(_, _, body)| {
            body["traffic"]
                .as_array()?
                .iter()
                .find(|t| {
                    t["revision"]
                        .as_str()
                        .is_some_and(|r| r.ends_with(revision))
                })
                .and_then(|t| t["percent"].as_i64())
        })
        .collect()
}

/// The revision a rollout's deploy step made (`{operation}|{revision}`).
fn deployed_revision(rollout: &Value) -> String {
    let deploys = steps(rollout, "deploy", "api");
    let reference = deploys[0]["provider_ref"].as_str().unwrap();
    reference.rsplit('|').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rag_chatbot_canary_reaches_full_traffic_and_a_failing_canary_goes_back_to_the_old_revision(
) {
    let (cloudrun, cloudrun_url) = FakeCloudRun::start().await;
    let first = cloudrun.seed_service(GCP_PROJECT, REGION, SERVICE, &image("0.9.0"));
    cloudrun.seed_service(GCP_PROJECT, REGION, STAGING_SERVICE, &image("0.9.0"));
    let health_url = rag_health().await;

    // Prometheus: p95 latency 350ms. The error rate is 0.1% until `canary_errors` is on; then
    // revisions outside `known` fail 5% of their requests, so the service-wide error rate is
    // 0.5% with 10% of traffic on the canary (passes) and 2.5% with 50% (fails).
    let canary_errors = Arc::new(AtomicBool::new(false));
    let known = Arc::new(Mutex::new(BTreeSet::<String>::new()));
    let (prometheus_url, queries) = {
        let (cloudrun, canary_errors, known) =
            (cloudrun.clone(), canary_errors.clone(), known.clone());
        fake_prometheus(move |query| {
            if query.contains("histogram_quantile") {
                return 0.35;
            }
            if !canary_errors.load(Ordering::SeqCst) {
                return 0.001;
            }
            let known = known.lock().unwrap();
            let canary: i64 = cloudrun
                .traffic(GCP_PROJECT, REGION, SERVICE)
                .iter()
                .filter(|(revision, _)| !known.contains(revision))
                .map(|(_, percent)| percent)
                .sum();
            0.001 + canary as f64 / 100.0 * 0.05
        })
        .await
    };

    let db = TestDb::new().await.unwrap();
    let server = Server::start(BINARY, &db.url, &[]).unwrap();
    let (status, body) = server
        .apply(
            "rag-chatbot",
            &rag_config(&cloudrun_url, &health_url, &prometheus_url),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");

    // A good release goes 10% → 50% → 100% and ends with all traffic on its revision.
    let good = deploy(
        &server,
        "rag-chatbot",
        "production",
        "1.0.0",
        json!({ "api": image("1.0.0") }),
    )
    .await;
    let done = server.wait_finished(&good, LIMIT).await.unwrap();
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(phase_states(&done), ["succeeded", "succeeded", "succeeded"]);
    let good_revision = deployed_revision(&done);
    assert_ne!(good_revision, first);
    assert_eq!(
        cloudrun.traffic(GCP_PROJECT, REGION, SERVICE),
        vec![(good_revision.clone(), 100)]
    );
    assert_eq!(traffic_given(&cloudrun, &good_revision), [10, 50, 100]);
    let service = cloudrun.service(GCP_PROJECT, REGION, SERVICE).unwrap();
    assert_eq!(
        service["template"]["containers"][0]["image"],
        json!(image("1.0.0"))
    );
    assert!(
        queries
            .all()
            .iter()
            .any(|(_, _, q)| q["query"].as_str().unwrap().contains("histogram_quantile")),
        "the latency gate asked Prometheus"
    );
    // Staging was not touched.
    assert_eq!(
        cloudrun
            .revisions(GCP_PROJECT, REGION, STAGING_SERVICE)
            .len(),
        1
    );

    // A bad release: its canary passes at 10%, fails the error-rate gate at 50%, and all
    // traffic goes back to the good revision with a traffic-only PATCH.
    known
        .lock()
        .unwrap()
        .extend(cloudrun.revisions(GCP_PROJECT, REGION, SERVICE));
    canary_errors.store(true, Ordering::SeqCst);
    let bad = deploy(
        &server,
        "rag-chatbot",
        "production",
        "1.1.0",
        json!({ "api": image("1.1.0") }),
    )
    .await;
    let (undone, rollback) = rolled_back(&server, &bad).await;
    assert_eq!(
        phase_states(&undone),
        ["succeeded", "failed", "skipped"],
        "{undone}"
    );
    assert_eq!(rollback["state"], "succeeded", "{rollback}");
    assert_eq!(rollback["kind"], "rollback");
    assert_eq!(rollback["release"], "1.0.0");
    let bad_revision = deployed_revision(&undone);
    assert_eq!(
        traffic_given(&cloudrun, &bad_revision),
        [10, 50],
        "the canary served 10%, then 50%, never 100%"
    );
    assert_eq!(
        cloudrun.traffic(GCP_PROJECT, REGION, SERVICE),
        vec![(good_revision.clone(), 100)],
        "the previous revision serves everything again"
    );
    // The rollback was a traffic-only PATCH to the previous revision: no new revision.
    let rollback_steps = steps(&rollback, "rollback", "api");
    assert_eq!(rollback_steps.len(), 1, "{rollback}");
    let service_path = format!("/v2/projects/{GCP_PROJECT}/locations/{REGION}/services/{SERVICE}");
    let (_, path, body) = cloudrun
        .calls
        .matching("PATCH", &service_path)
        .pop()
        .unwrap();
    assert!(path.ends_with("?updateMask=traffic"), "{path}");
    assert_eq!(
        body,
        json!({ "traffic": [{ "type": TRAFFIC, "revision": good_revision, "percent": 100 }] }),
        "traffic only"
    );
    assert_eq!(
        cloudrun.revisions(GCP_PROJECT, REGION, SERVICE).len(),
        known.lock().unwrap().len() + 1,
        "only the bad release's own revision was made"
    );
    let service = cloudrun.service(GCP_PROJECT, REGION, SERVICE).unwrap();
    assert_eq!(
        service["template"]["containers"][0]["image"],
        json!(image("1.1.0")),
        "a traffic-only rollback leaves the template as it was"
    );

    let (_, history) = server
        .get("/api/v1/apps/rag-chatbot/environments/production/rollbacks")
        .await
        .unwrap();
    let entry = &history["items"][0];
    assert_eq!(entry["trigger"], "gate", "{entry}");
    assert_eq!(entry["from_release"], "1.1.0");
    assert_eq!(entry["to_release"], "1.0.0");
    assert_eq!(entry["outcome"], "restored");
    let (_, environment) = server
        .get("/api/v1/apps/rag-chatbot/environments/production")
        .await
        .unwrap();
    assert_eq!(environment["current_release"], "1.0.0", "{environment}");

    drop(server);
    db.drop_database().await.unwrap();
}
