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

async fn status(server: &Server, environment: &str) -> Value {
    let (status, body) = server
        .get(&format!("/api/v1/apps/shop/environments/{environment}"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

/// Reads `environment`'s status on `server` until `seen` holds; returns how long that took from
/// `since`.
async fn until_status(
    server: &Server,
    environment: &str,
    what: &str,
    since: Instant,
    seen: impl Fn(&Value) -> bool,
) -> Duration {
    eventually(Duration::from_secs(15), what, || async {
        Ok(seen(&status(server, environment).await).then_some(()))
    })
    .await
    .unwrap();
    since.elapsed()
}

#[tokio::test]
async fn a_cached_environment_status_follows_rollouts_settings_and_drift_on_every_replica() {
    let db = TestDb::new().await.unwrap();
    // Replica one watches for drift often; replica two only serves reads.
    let one = Server::start(BINARY, &db.url, &[("SHIPGATE_DRIFT_INTERVAL", "300ms")]).unwrap();
    let two = Server::start(BINARY, &db.url, &[]).unwrap();
    let (status_code, body) = one.apply("shop", CONFIG).await.unwrap();
    assert_eq!(status_code, 201, "{body}");

    // Replica two caches staging with nothing in flight, twice the same answer.
    let idle = status(&two, "staging").await;
    assert!(idle["in_flight"].is_null(), "{idle}");
    assert_eq!(idle, status(&two, "staging").await);

    // A rollout started through replica one shows on replica two well within the cache's
    // 10 s bound, and in the reads of replica one at once.
    let started = Instant::now();
    let id = waiting(&one).await;
    assert_eq!(status(&one, "staging").await["in_flight"]["id"], id);
    let took = until_status(
        &two,
        "staging",
        "the rollout on replica two",
        started,
        |s| s["in_flight"]["id"] == id.as_str(),
    )
    .await;
    assert!(took < Duration::from_secs(5), "{took:?}");

    // New settings applied through replica one (a policy) reach replica two's cached status.
    let with_policy = CONFIG.replace(
        "  - name: production\n",
        "  - name: production\n    promotion: { from: staging }\n",
    );
    let _ = status(&two, "production").await;
    let applied = Instant::now();
    let (status_code, body) = one.apply("shop", &with_policy).await.unwrap();
    assert!(status_code == 200 || status_code == 201, "{body}");
    let took = until_status(
        &two,
        "production",
        "the policy on replica two",
        applied,
        |s| s["policy"]["promotion"]["from"] == "staging",
    )
    .await;
    assert!(took < Duration::from_secs(5), "{took:?}");

    // Drift is looked for once nothing is in flight: the approval gate is skipped.
    let (status_code, body) = one
        .post(
            &format!("/api/v1/rollouts/{id}/skip-gate"),
            &json!({ "comment": "drift next" }),
        )
        .await
        .unwrap();
    assert_eq!(status_code, 200, "{body}");
    one.wait_finished(&id, Duration::from_secs(30))
        .await
        .unwrap();

    // Drift: the platform serves another build. Replica two's entry is fresh (a write request
    // emptied its cache just before the read), so only the observation's NOTIFY can make it
    // show the drift before the 10 s bound.
    let (status_code, body) = two
        .post(
            "/api/v1/apps/shop/environments/staging/auto-deploy/resume",
            &json!({}),
        )
        .await
        .unwrap();
    assert!(status_code < 300, "{status_code} {body}");
    let cached_at = Instant::now();
    let before = status(&two, "staging").await;
    assert_eq!(before["live"][0]["drifted"], false, "{before}");
    sqlx::query(
        "insert into simulated_operations (id, target, natural_key, kind, version, request, outcome, ready_at, issued_by)
         values (gen_random_uuid(), 'shop/staging/web', 'outside', 'deploy', '0.9.0-hotfix', '{}', 'succeeded', now(), 'a person')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let took = until_status(
        &two,
        "staging",
        "the drift on replica two",
        cached_at,
        |s| s["live"][0]["drifted"] == true,
    )
    .await;
    assert!(took < Duration::from_secs(5), "{took:?}");
    drop((one, two));
    db.drop_database().await.unwrap();
}
