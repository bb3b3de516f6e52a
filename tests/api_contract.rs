//! What CI relies on from the API, over the real binary: `Idempotency-Key` on POSTs, and waiting
//! for a rollout's verdict by long-poll or by server-sent events.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use shipgate_testkit::{Server, TestDb, ADMIN_TOKEN};

const BINARY: &str = env!("CARGO_BIN_EXE_shipgate");

/// Versions ending in `-sick` turn unhealthy, and the health gate then rolls them back.
const CONFIG: &str = r#"
app: shop
components: [web]
environments:
  - name: staging
    targets:
      web: { provider: simulated, latency: 100ms, unhealthy: "*-sick" }
    plan:
      - name: web
        deploy: [web]
        gates:
          - health: { components: [web], interval: 200ms, timeout: 1s, failures: 2, successes: 2 }
        on_failure: rollback
"#;

async fn start() -> (TestDb, Server) {
    let db = TestDb::new().await.unwrap();
    let server = Server::start(BINARY, &db.url, &[]).unwrap();
    let (status, body) = server.apply("shop", CONFIG).await.unwrap();
    assert_eq!(status, 201, "{body}");
    (db, server)
}

async fn release(server: &Server, version: &str) {
    let (status, body) = server
        .post(
            "/api/v1/apps/shop/releases",
            &json!({ "version": version, "artifacts": { "web": format!("web:{version}") } }),
        )
        .await
        .unwrap();
    assert!(status == 201 || status == 200, "{status} {body}");
}

async fn post_with_key(
    server: &Server,
    token: &str,
    path: &str,
    key: &str,
    body: &Value,
) -> (u16, Option<String>, Value) {
    let response = reqwest::Client::new()
        .post(server.at(path))
        .bearer_auth(token)
        .header("idempotency-key", key)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let replayed = response
        .headers()
        .get("idempotent-replayed")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, replayed, response.json().await.unwrap())
}

async fn count(db: &TestDb, table: &str) -> i64 {
    sqlx::query_scalar(&format!("select count(*) from {table}"))
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn an_idempotency_key_replays_the_first_answer_and_refuses_another_body() {
    let (db, server) = start().await;
    release(&server, "1.0.0").await;
    let path = "/api/v1/apps/shop/environments/staging/rollouts";
    let body = json!({ "release": "1.0.0" });

    let (status, replayed, first) =
        post_with_key(&server, ADMIN_TOKEN, path, "deploy-run-41", &body).await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(replayed, None);
    // A CI job retrying after a lost answer gets the same rollout, not a second one.
    let (status, replayed, again) =
        post_with_key(&server, ADMIN_TOKEN, path, "deploy-run-41", &body).await;
    assert_eq!(status, 201, "{again}");
    assert_eq!(replayed.as_deref(), Some("true"));
    assert_eq!(again["id"], first["id"]);
    assert_eq!(count(&db, "rollouts").await, 1);

    // The same key with another body is a client bug: 422, and nothing runs.
    release(&server, "1.0.1").await;
    let (status, _, problem) = post_with_key(
        &server,
        ADMIN_TOKEN,
        path,
        "deploy-run-41",
        &json!({ "release": "1.0.1" }),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("Idempotency-Key"),
        "{problem}"
    );
    assert_eq!(count(&db, "rollouts").await, 1);

    // Keys belong to the credential: another token's same key runs on its own.
    let (status, minted) = server
        .post(
            "/api/v1/tokens",
            &json!({ "name": "ci", "scopes": ["deploy"] }),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{minted}");
    let token = minted["token"].as_str().unwrap();
    let (status, replayed, other) = post_with_key(
        &server,
        token,
        "/api/v1/apps/shop/releases",
        "deploy-run-41",
        &json!({ "version": "1.0.2", "artifacts": { "web": "web:1.0.2" } }),
    )
    .await;
    assert_eq!(status, 201, "{other}");
    assert_eq!(replayed, None);
    assert_eq!(other["version"], "1.0.2");

    db.drop_database().await.unwrap();
}

/// Reads server-sent events until the stream ends or `limit` passes: (event, data) pairs.
async fn read_events(server: &Server, path: &str, limit: Duration) -> Vec<(String, Value)> {
    let response = reqwest::Client::new()
        .get(server.at(path))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    while let Ok(Some(chunk)) = tokio::time::timeout_at(deadline, stream.next()).await {
        buffer.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut name = String::from("message");
            let mut data = String::new();
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event:") {
                    name = value.trim().to_owned();
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push_str(value.trim_start());
                }
            }
            if !data.is_empty() {
                events.push((name, serde_json::from_str(&data).unwrap_or(Value::Null)));
            }
        }
    }
    events
}

#[tokio::test]
async fn waiting_by_long_poll_or_event_stream_ends_with_a_machine_readable_verdict() {
    let (db, server) = start().await;
    release(&server, "1.0.0").await;
    let (status, good) = server
        .post(
            "/api/v1/apps/shop/environments/staging/rollouts",
            &json!({ "release": "1.0.0" }),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{good}");
    let good = good["id"].as_str().unwrap().to_owned();

    // The event stream follows the rollout phase by phase and ends with its verdict.
    let events = read_events(
        &server,
        &format!("/api/v1/rollouts/{good}/events"),
        Duration::from_secs(60),
    )
    .await;
    let (last, verdict) = events.last().expect("some events");
    assert_eq!(last, "verdict", "{events:?}");
    assert_eq!(verdict["outcome"], "succeeded", "{verdict}");
    let states: Vec<&Value> = events
        .iter()
        .filter(|(name, _)| name == "rollout")
        .map(|(_, rollout)| &rollout["phases"][0]["state"])
        .collect();
    assert!(states.len() >= 2, "progress was streamed: {states:?}");
    assert_eq!(*states.last().unwrap(), "succeeded");

    // A sick release: the long-poll answers when it ends, with the reason it was rolled back.
    release(&server, "2.0.0-sick").await;
    let (status, sick) = server
        .post(
            "/api/v1/apps/shop/environments/staging/rollouts",
            &json!({ "release": "2.0.0-sick" }),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{sick}");
    let sick = sick["id"].as_str().unwrap().to_owned();
    let ended = server
        .wait_finished(&sick, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(ended["state"], "rolled_back", "{ended}");
    assert_eq!(ended["verdict"]["outcome"], "rolled_back", "{ended}");
    let reason = ended["verdict"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("health"),
        "the reason names the gate: {ended}"
    );
    assert!(ended["verdict"]["rollback"].is_string(), "{ended}");

    // Asking for events of an ended rollout answers its verdict at once.
    let events = read_events(
        &server,
        &format!("/api/v1/rollouts/{sick}/events"),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(events.last().unwrap().0, "verdict");
    assert_eq!(events.last().unwrap().1["outcome"], "rolled_back");

    // A bad wait is refused naming the parameter.
    let (status, problem) = server
        .get(&format!("/api/v1/rollouts/{sick}?wait=soon"))
        .await
        .unwrap();
    assert_eq!(status, 422, "{problem}");
    assert!(problem.to_string().contains("wait"), "{problem}");
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn a_token_over_its_rate_is_told_when_to_retry_and_cors_stays_off_unless_configured() {
    let db = TestDb::new().await.unwrap();
    let server = Server::start(
        BINARY,
        &db.url,
        &[
            ("SHIPGATE_RATE_LIMIT_PER_TOKEN", "20"),
            ("SHIPGATE_CORS_ORIGINS", "https://ci.example"),
        ],
    )
    .unwrap();
    // A burst of a quarter of the minute's allowance (at least 5) passes, then 429s.
    let mut limited = None;
    for _ in 0..30 {
        let response = reqwest::Client::new()
            .get(server.at("/api/v1/apps"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        if response.status() == 429 {
            limited = Some(response);
            break;
        }
        assert_eq!(response.status(), 200);
    }
    let limited = limited.expect("the token was never limited");
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert!(limited.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/problem+json"));
    // Another credential has its own allowance.
    let (status, _) = reqwest::Client::new()
        .get(server.at("/api/v1/apps"))
        .bearer_auth("not-a-token")
        .send()
        .await
        .map(|r| (r.status().as_u16(), ()))
        .unwrap();
    assert_eq!(status, 401);

    // CORS: the configured origin may call the API from a browser; any other may not.
    let preflight = |origin: &'static str| {
        reqwest::Client::new()
            .request(reqwest::Method::OPTIONS, server.at("/api/v1/apps"))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    let allowed = preflight("https://ci.example").await.unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://ci.example"
    );
    let other = preflight("https://evil.example").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    db.drop_database().await.unwrap();

    // Without SHIPGATE_CORS_ORIGINS, no origin is allowed; pages carry the security headers.
    let db = TestDb::new().await.unwrap();
    let server = Server::start(BINARY, &db.url, &[]).unwrap();
    let response = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, server.at("/api/v1/apps"))
        .header("origin", "https://ci.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert!(response
        .headers()
        .get("access-control-allow-origin")
        .is_none());
    let page = reqwest::get(server.at("/login")).await.unwrap();
    let headers = page.headers();
    assert!(headers["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("script-src 'self'"));
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["x-frame-options"], "DENY");
    db.drop_database().await.unwrap();
}
