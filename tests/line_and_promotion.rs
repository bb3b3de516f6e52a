//! "Stop the line" (pause every rollout in flight of an app at once, start nothing new until the
//! line resumes, still allow rollbacks) and automatic promotion (a release that soaked in
//! staging enters production on its own, once, even with several replicas). Driven through
//! the real binary over HTTP.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use shipgate_testkit::{eventually, Server, TestDb, ADMIN_TOKEN};

const BINARY: &str = env!("CARGO_BIN_EXE_shipgate");
const LONG: Duration = Duration::from_secs(60);

/// Four environments whose rollouts hold for a soak of a few seconds, long enough to stop the
/// line while they are in flight.
const LINE_CONFIG: &str = r#"
app: shop
repository: acme/shop
components: [web]
environments:
  - name: staging
    targets: &targets
      web: { provider: simulated, latency: 50ms }
    plan: &plan
      - name: all
        deploy: [web]
        gates: [ { soak: 4s } ]
  - name: production
    targets: *targets
    plan: *plan
  - name: qa
    targets: *targets
    plan: *plan
  - name: demo
    targets: *targets
    plan: *plan
"#;

async fn release(server: &Server, version: &str) {
    let (status, body) = server
        .post(
            "/api/v1/apps/shop/releases",
            &json!({ "version": version, "artifacts": { "web": format!("web:{version}") } }),
        )
        .await
        .unwrap();
    assert!(status == 201 || status == 200, "release {version}: {body}");
}

/// Starts a rollout as the admin: (status, body).
async fn roll_out(server: &Server, environment: &str, version: &str) -> (u16, Value) {
    server
        .post(
            &format!("/api/v1/apps/shop/environments/{environment}/rollouts"),
            &json!({ "release": version }),
        )
        .await
        .unwrap()
}

async fn started(server: &Server, environment: &str, version: &str) -> String {
    let (status, body) = roll_out(server, environment, version).await;
    assert_eq!(status, 201, "{version} into {environment}: {body}");
    body["id"].as_str().unwrap().to_owned()
}

async fn state(server: &Server, rollout: &str) -> Value {
    let (status, body) = server
        .get(&format!("/api/v1/rollouts/{rollout}"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

/// POSTs with a bearer token: (status, body).
async fn post_as(server: &Server, token: &str, path: &str, body: &Value) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .post(server.at(path))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn mint(server: &Server, request: Value) -> String {
    let (status, body) = post_as(server, ADMIN_TOKEN, "/api/v1/tokens", &request).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

fn ids(outcome: &Value) -> Vec<String> {
    let mut ids: Vec<String> = outcome["rollouts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rollout| rollout["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn stopping_the_line_pauses_what_runs_refuses_new_starts_and_resumes_exactly_what_it_paused()
{
    let db = TestDb::new().await.unwrap();
    let server = Server::start(BINARY, &db.url, &[]).unwrap();
    let (status, body) = server.apply("shop", LINE_CONFIG).await.unwrap();
    assert_eq!(status, 201, "{body}");

    let (status, body) = server
        .apply("other", &LINE_CONFIG.replace("app: shop", "app: other"))
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    let other_app = mint(
        &server,
        json!({ "name": "other-ci", "scopes": ["deploy"], "app": "other" }),
    )
    .await;
    let shop_staging = mint(
        &server,
        json!({ "name": "staging-ci", "scopes": ["deploy"], "app": "shop", "environment": "staging" }),
    )
    .await;
    let shop = mint(
        &server,
        json!({ "name": "shop-ci", "scopes": ["deploy"], "app": "shop" }),
    )
    .await;

    // v1 runs in demo, so a rollback there has somewhere to return to.
    release(&server, "1.0.0").await;
    let first = started(&server, "demo", "1.0.0").await;
    let done = server.wait_finished(&first, LONG).await.unwrap();
    assert_eq!(done["state"], "succeeded", "{done}");

    // In flight: staging, production and demo; qa's was paused by a person beforehand.
    release(&server, "2.0.0").await;
    release(&server, "2.0.0-demo").await;
    let staging = started(&server, "staging", "2.0.0").await;
    let production = started(&server, "production", "2.0.0").await;
    let demo = started(&server, "demo", "2.0.0-demo").await;
    let qa = started(&server, "qa", "2.0.0").await;
    let (status, body) = server
        .post(&format!("/api/v1/rollouts/{qa}/pause"), &json!({}))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "paused", "{body}");

    // A blank reason is refused; a token for another app may not stop this one's line, nor
    // may one limited to an environment, nor may an app's token stop every line.
    let (status, body) = server
        .post(
            "/api/v1/apps/shop/stop-the-line",
            &json!({ "reason": "  " }),
        )
        .await
        .unwrap();
    assert_eq!(status, 422, "{body}");
    let reason = json!({ "reason": "payments are down" });
    for token in [&other_app, &shop_staging] {
        let (status, body) =
            post_as(&server, token, "/api/v1/apps/shop/stop-the-line", &reason).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    }
    let (status, body) = post_as(&server, &shop, "/api/v1/stop-the-line", &reason).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    // The app's own deploy token stops it: exactly the rollouts in progress pause.
    let (status, stopped) =
        post_as(&server, &shop, "/api/v1/apps/shop/stop-the-line", &reason).await;
    assert_eq!(status, StatusCode::OK, "{stopped}");
    let mut expected = vec![staging.clone(), production.clone(), demo.clone()];
    expected.sort();
    assert_eq!(ids(&stopped), expected, "{stopped}");
    assert_eq!(stopped["reason"], "payments are down");
    for rollout in [&staging, &production, &demo] {
        let body = state(&server, rollout).await;
        assert_eq!(body["state"], "paused", "{body}");
        assert!(
            body["state_reason"]
                .as_str()
                .unwrap_or_default()
                .contains("payments are down"),
            "{body}"
        );
    }
    // Stopping again is harmless: nothing more to pause, the first reason stands.
    let (status, again) = server
        .post(
            "/api/v1/apps/shop/stop-the-line",
            &json!({ "reason": "still down" }),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["rollouts"], json!([]), "{again}");
    assert_eq!(again["reason"], "payments are down", "{again}");

    // Nothing new starts, and the refusal says why.
    release(&server, "3.0.0").await;
    let (status, body) = roll_out(&server, "staging", "3.0.0").await;
    assert_eq!(status, 422, "{body}");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("line") && detail.contains("payments are down"),
        "{body}"
    );

    // A rollback still may: demo returns to v1.
    let (status, rollback) = server
        .post(
            "/api/v1/apps/shop/environments/demo/rollback",
            &json!({ "reason": "the demo build is bad" }),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{rollback}");
    let done = server
        .wait_finished(rollback["id"].as_str().unwrap(), LONG)
        .await
        .unwrap();
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(state(&server, &demo).await["state"], "rolled_back");

    // Resuming resumes exactly what the stop paused and is still paused by it; those finish.
    let (status, resumed) = server
        .post("/api/v1/apps/shop/resume-the-line", &json!({}))
        .await
        .unwrap();
    assert_eq!(status, 200, "{resumed}");
    let mut expected = vec![staging.clone(), production.clone()];
    expected.sort();
    assert_eq!(ids(&resumed), expected, "{resumed}");
    for rollout in [&staging, &production] {
        let done = server.wait_finished(rollout, LONG).await.unwrap();
        assert_eq!(done["state"], "succeeded", "{done}");
    }
    // The rollout a person paused stays paused.
    assert_eq!(state(&server, &qa).await["state"], "paused");

    // Starts work again; the audit log has the stop, the resume and one pause per rollout.
    let fresh = started(&server, "staging", "3.0.0").await;
    let done = server.wait_finished(&fresh, LONG).await.unwrap();
    assert_eq!(done["state"], "succeeded", "{done}");
    let (line_events, line_pauses): (i64, i64) = sqlx::query_as(
        "select count(*) filter (where action in ('line.stopped', 'line.resumed')),
                count(*) filter (where action = 'rollout.pause' and (details ->> 'line_stopped')::boolean)
           from events",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((line_events, line_pauses), (3, 3));

    // The admin stops and resumes every line at once.
    let (status, body) = server
        .post("/api/v1/stop-the-line", &json!({ "reason": "incident 42" }))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, body) = roll_out(&server, "production", "3.0.0").await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("incident 42"),
        "{body}"
    );
    let (status, body) = server
        .post("/api/v1/resume-the-line", &json!({}))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let next = started(&server, "production", "3.0.0").await;
    let done = server.wait_finished(&next, LONG).await.unwrap();
    assert_eq!(done["state"], "succeeded", "{done}");
}

/// A transaction on the test's database, to hold locks with, and its backend's pid.
async fn open_transaction(db: &TestDb) -> (sqlx::Transaction<'static, sqlx::Postgres>, i32) {
    let mut tx = db.pool.begin().await.unwrap();
    let pid = sqlx::query_scalar("select pg_backend_pid()")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    (tx, pid)
}

/// Backends this test's database has waiting for a lock held by the backend `pid`.
async fn blocked_by(db: &TestDb, pid: i32) -> i64 {
    sqlx::query_scalar(
        "select count(*) from pg_stat_activity where $1 = any(pg_blocking_pids(pid))",
    )
    .bind(pid)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

/// Backends of this test's database waiting for any lock.
async fn blocked(db: &TestDb) -> i64 {
    sqlx::query_scalar(
        "select count(*) from pg_stat_activity
          where datname = current_database() and cardinality(pg_blocking_pids(pid)) > 0",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

/// Starts a rollout as the admin from a task of its own: (status, body).
fn spawn_roll_out(
    server: &Server,
    environment: &str,
    version: &str,
) -> tokio::task::JoinHandle<(StatusCode, Value)> {
    let url = server.at(&format!(
        "/api/v1/apps/shop/environments/{environment}/rollouts"
    ));
    let body = json!({ "release": version });
    tokio::spawn(async move {
        let response = reqwest::Client::new()
            .post(url)
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    })
}

/// A start racing a stop of the line never slips in between the stop marking the app and the
/// stop pausing what is in flight: it waits for the stop and is then refused. The stop is held
/// half-way here, its first statement run in a transaction left open, and two starts race it:
/// one through the API, and the engine activating a rollout that queued behind another.
#[tokio::test]
async fn a_start_racing_a_stop_of_the_line_waits_for_the_stop_and_is_refused() {
    let db = TestDb::new().await.unwrap();
    let server = Server::start(BINARY, &db.url, &[]).unwrap();
    let (status, body) = server.apply("shop", LINE_CONFIG).await.unwrap();
    assert_eq!(status, 201, "{body}");
    release(&server, "1.0.0").await;
    release(&server, "2.0.0").await;
    let running = started(&server, "production", "1.0.0").await;
    let queued = started(&server, "production", "2.0.0").await;
    assert_eq!(state(&server, &queued).await["state"], "queued");

    let (mut stop, stop_pid) = open_transaction(&db).await;
    sqlx::query(
        "update apps set line_stopped_at = now(), line_stopped_reason = 'a stop half-way'
          where name = 'shop'",
    )
    .execute(&mut *stop)
    .await
    .unwrap();
    let start = spawn_roll_out(&server, "staging", "1.0.0");
    // The running rollout finishes (nothing it writes waits for the app's row); the engine then
    // activates the queued one, which waits for the stop like the API's start does.
    let done = server.wait_finished(&running, LONG).await.unwrap();
    assert_eq!(done["state"], "succeeded", "{done}");
    eventually(LONG, "the two starts waiting for the stop", || async {
        Ok((blocked_by(&db, stop_pid).await >= 2).then_some(()))
    })
    .await
    .unwrap();
    assert!(
        !start.is_finished(),
        "the API's start went ahead of the stop"
    );

    stop.commit().await.unwrap();
    let (status, body) = start.await.unwrap();
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("a stop half-way"),
        "{body}"
    );
    // The engine gives the rollout back once it has decided (activated, it would drive it on).
    eventually(
        LONG,
        "the engine to give the queued rollout back",
        || async {
            let released: bool =
                sqlx::query_scalar("select lease_owner is null from rollouts where id = $1::uuid")
                    .bind(&queued)
                    .fetch_one(&db.pool)
                    .await?;
            Ok(released.then_some(()))
        },
    )
    .await
    .unwrap();
    assert_eq!(state(&server, &queued).await["state"], "queued");
    let (count,): (i64,) = sqlx::query_as(
        "select count(*) from rollouts r join environments e on e.id = r.environment_id
          where e.name = 'staging'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(count, 0, "a refused start left a rollout behind");

    // Resuming the line lets the rollout that waited in line through.
    let (status, body) = server
        .post("/api/v1/apps/shop/resume-the-line", &json!({}))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let done = server.wait_finished(&queued, LONG).await.unwrap();
    assert_eq!(done["state"], "succeeded", "{done}");
}

/// An apply that changes the config and a start that meet on one app both go through. Both
/// take the app's row before the environment's: a start that held its environment while it
/// waited for the app's row, which the apply had just written, deadlocked with the apply
/// waiting for that environment, and one of them answered 500. Here the start queues for the
/// environment behind a transaction left open, the apply arrives, and the environment is let go.
#[tokio::test]
async fn an_apply_and_a_start_that_meet_on_an_app_both_go_through() {
    let db = TestDb::new().await.unwrap();
    let server = Server::start(BINARY, &db.url, &[]).unwrap();
    let (status, body) = server.apply("shop", LINE_CONFIG).await.unwrap();
    assert_eq!(status, 201, "{body}");
    release(&server, "1.0.0").await;

    let (mut holder, holder_pid) = open_transaction(&db).await;
    sqlx::query(
        "select e.id from environments e join apps a on a.id = e.app_id
          where a.name = 'shop' and e.name = 'staging' for no key update of e",
    )
    .execute(&mut *holder)
    .await
    .unwrap();
    let start = spawn_roll_out(&server, "staging", "1.0.0");
    eventually(LONG, "the start to wait for the environment", || async {
        Ok((blocked_by(&db, holder_pid).await >= 1).then_some(()))
    })
    .await
    .unwrap();

    let url = server.at("/api/v1/apps/shop");
    let changed = LINE_CONFIG.replace("soak: 4s", "soak: 5s");
    let apply = tokio::spawn(async move {
        let response = reqwest::Client::new()
            .put(url)
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/yaml")
            .body(changed)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (
            status,
            response.json::<Value>().await.unwrap_or(Value::Null),
        )
    });
    eventually(LONG, "the apply to wait too", || async {
        Ok((blocked(&db).await >= 2).then_some(()))
    })
    .await
    .unwrap();
    holder.commit().await.unwrap();

    let (status, started) = start.await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{started}");
    let (status, body) = apply.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    let done = server
        .wait_finished(started["id"].as_str().unwrap(), LONG)
        .await
        .unwrap();
    assert_eq!(done["state"], "succeeded", "{done}");
}

/// Staging deploys quickly; production takes what soaked in staging, automatically.
const PROMOTION_CONFIG: &str = r#"
app: shop
repository: acme/shop
components: [web]
environments:
  - name: staging
    targets: &targets
      web: { provider: simulated, latency: 50ms }
    plan: &plan
      - name: all
        deploy: [web]
  - name: production
    promotion: { from: staging, soak: 2s, auto: true }
    targets: *targets
    plan: *plan
"#;

/// Production rollouts of `version`, with their triggers and states.
async fn production_rollouts(db: &TestDb, version: &str) -> Vec<(String, String)> {
    sqlx::query_as(
        "select r.trigger, r.state::text from rollouts r
           join environments e on e.id = r.environment_id
           join releases rel on rel.id = r.release_id
          where e.name = 'production' and rel.version = $1",
    )
    .bind(version)
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_release_that_soaked_in_staging_is_promoted_once_even_with_two_replicas() {
    let db = TestDb::new().await.unwrap();
    let first = Server::start(BINARY, &db.url, &[]).unwrap();
    let second = Server::start(BINARY, &db.url, &[]).unwrap();
    let (status, body) = first.apply("shop", PROMOTION_CONFIG).await.unwrap();
    assert_eq!(status, 201, "{body}");

    release(&first, "1.0.0").await;
    let staging = started(&first, "staging", "1.0.0").await;
    let done = first.wait_finished(&staging, LONG).await.unwrap();
    assert_eq!(done["state"], "succeeded", "{done}");

    // Not before the soak ends.
    assert_eq!(production_rollouts(&db, "1.0.0").await, vec![]);
    eventually(LONG, "production to run 1.0.0", || async {
        let rollouts = production_rollouts(&db, "1.0.0").await;
        Ok(rollouts
            .iter()
            .any(|(_, state)| state == "succeeded")
            .then_some(()))
    })
    .await
    .unwrap();
    // Both replicas kept looking for a few more rounds: still exactly one promotion.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        production_rollouts(&db, "1.0.0").await,
        vec![("auto-promotion".to_owned(), "succeeded".to_owned())]
    );
    let _ = &second;

    // A release quarantined after it succeeded in staging is never promoted.
    release(&first, "2.0.0").await;
    let staging = started(&first, "staging", "2.0.0").await;
    let done = first.wait_finished(&staging, LONG).await.unwrap();
    assert_eq!(done["state"], "succeeded", "{done}");
    sqlx::query(
        "update releases set quarantined_at = now(), quarantine_reason = 'corrupts carts'
          where version = '2.0.0'",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(production_rollouts(&db, "2.0.0").await, vec![]);
}
