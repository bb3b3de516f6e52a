//! `GET /api/v1/rollouts/{id}` is served from memory while nothing changed. These tests try to
//! make it serve something stale or something the caller may not see: a change made on another
//! replica, a change made through this one, a write straight to the database that NOTIFYs, and
//! a token limited to another environment asking for a rollout another caller had cached.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shipgate_testkit::{eventually, Server, TestDb, ADMIN_TOKEN};

const BINARY: &str = env!("CARGO_BIN_EXE_shipgate");

const CONFIG: &str = r#"
app: shop
components: [web]
environments:
  - name: staging
    targets: &targets
      web: { provider: simulated, latency: 50ms }
    plan: &plan
      - name: all
        deploy: [web]
        gates: [ { approval: { required: 1 } } ]
        on_failure: pause
  - name: production
    targets: *targets
    plan: *plan
"#;

async fn rollout(server: &Server, id: &str) -> Value {
    let (status, body) = server.get(&format!("/api/v1/rollouts/{id}")).await.unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

/// Starts 1.0.0 into staging and waits for its approval gate (a rollout that sits still).
async fn waiting(server: &Server) -> String {
    let (status, body) = server
        .post(
            "/api/v1/apps/shop/releases",
            &json!({ "version": "1.0.0", "artifacts": { "web": "web:1.0.0" } }),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    let (status, body) = server
        .post(
            "/api/v1/apps/shop/environments/staging/rollouts",
            &json!({ "release": "1.0.0" }),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    eventually(Duration::from_secs(30), "the approval gate", || async {
        let body = rollout(server, &id).await;
        Ok((body["phases"][0]["state"] == "verifying").then_some(()))
    })
    .await
    .unwrap();
    id
}

#[tokio::test]
async fn a_cached_rollout_changes_at_once_for_writers_and_within_a_notify_for_other_replicas() {
    let db = TestDb::new().await.unwrap();
    let one = Server::start(BINARY, &db.url, &[]).unwrap();
    let two = Server::start(BINARY, &db.url, &[]).unwrap();
    let (status, body) = one.apply("shop", CONFIG).await.unwrap();
    assert_eq!(status, 201, "{body}");
    let id = waiting(&one).await;

    // Both replicas have read (and cached) the waiting rollout.
    let before = rollout(&two, &id).await;
    assert_eq!(
        before,
        rollout(&two, &id).await,
        "nothing changed, same answer"
    );
    assert_eq!(rollout(&one, &id).await["state"], "in_progress");

    // A pause through replica one: its own next read shows it at once.
    let (status, body) = one
        .post(&format!("/api/v1/rollouts/{id}/pause"), &json!({}))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        rollout(&one, &id).await["state"],
        "paused",
        "read your write"
    );
    // Replica two hears it through NOTIFY: well within a second, not the cache's 10 s bound.
    let asked = Instant::now();
    eventually(
        Duration::from_secs(5),
        "replica two sees the pause",
        || async { Ok((rollout(&two, &id).await["state"] == "paused").then_some(())) },
    )
    .await
    .unwrap();
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );

    // A change written straight to the database, as another tool would, with its NOTIFY.
    sqlx::query(
        "update rollouts set state_reason = 'changed by hand', version = version + 1 where id = $1::uuid",
    )
    .bind(&id)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("select pg_notify('shipgate_updates', $1)")
        .bind(&id)
        .execute(&db.pool)
        .await
        .unwrap();
    for server in [&one, &two] {
        eventually(Duration::from_secs(5), "the hand-made change", || async {
            let body = rollout(server, &id).await;
            Ok((body["state_reason"] == "changed by hand").then_some(()))
        })
        .await
        .unwrap();
    }

    // A token limited to production may not read the staging rollout, cached or not.
    let (status, body) = one
        .post(
            "/api/v1/tokens",
            &json!({ "name": "prod-ci", "scopes": ["read"], "app": "shop", "environment": "production" }),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    let limited = body["token"].as_str().unwrap().to_owned();
    for _ in 0..2 {
        let _ = rollout(&one, &id).await;
        let status = reqwest::Client::new()
            .get(one.at(&format!("/api/v1/rollouts/{id}")))
            .bearer_auth(&limited)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 403);
    }
    assert_ne!(limited, ADMIN_TOKEN);
    drop((one, two));
    db.drop_database().await.unwrap();
}
