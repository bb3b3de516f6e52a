//! Notification tests: the real `shipgate` binary delivers rollout and rollback events through
//! its Postgres outbox to a local receiver standing in for Slack and for generic webhooks.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use shipgate_testkit::{Server, TestDb, ADMIN_TOKEN};

const BINARY: &str = env!("CARGO_BIN_EXE_shipgate");
/// The part of the Slack webhook URL that is its credential.
const SLACK_TOKEN: &str = "T0001/B0001/slackcredentialXYZ";
const HOOK_SECRET: &str = "pager-signing-secret";

/// One request the receiver took.
#[derive(Clone, Debug)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
    }
}

/// The endpoints: `/slack/...` and `/hook` answer 200, `/flaky` 500 twice and then 200,
/// `/gone` 404.
#[derive(Clone, Default)]
struct Receiver {
    received: Arc<Mutex<BTreeMap<String, Vec<Received>>>>,
}

impl Receiver {
    async fn start() -> (Self, String) {
        let receiver = Receiver::default();
        let app = Router::new()
            .route("/{*path}", post(take))
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (receiver, format!("http://{address}"))
    }

    fn at(&self, endpoint: &str) -> Vec<Received> {
        self.received
            .lock()
            .unwrap()
            .get(endpoint)
            .cloned()
            .unwrap_or_default()
    }
}

async fn take(
    State(receiver): State<Receiver>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let endpoint = path.split('/').next().unwrap_or_default().to_owned();
    let mut received = receiver.received.lock().unwrap();
    let list = received.entry(endpoint.clone()).or_default();
    list.push(Received { headers, body });
    match endpoint.as_str() {
        "flaky" if list.len() <= 2 => StatusCode::INTERNAL_SERVER_ERROR,
        "gone" => StatusCode::NOT_FOUND,
        _ => StatusCode::OK,
    }
}

fn config(receiver: &str, channels: &str) -> String {
    format!(
        r#"
app: shop
components: [web]
environments:
  - name: staging
    targets: &targets
      web: {{ provider: simulated, latency: 50ms, unhealthy: "*-sick" }}
    plan: &plan
      - name: all
        deploy: [web]
        gates:
          - health: {{ interval: 200ms, timeout: 1s, failures: 2, successes: 1 }}
        on_failure: rollback
  - name: production
    targets: *targets
    plan: *plan
notifications:
{channels}
"#
    )
    .replace("RECEIVER", receiver)
}

async fn deploy(server: &Server, environment: &str, version: &str) -> Value {
    let (status, body) = server
        .post(
            "/api/v1/apps/shop/releases",
            &json!({ "version": version, "artifacts": { "web": format!("web:{version}") } }),
        )
        .await
        .unwrap();
    assert!(status == 201 || status == 200, "{status} {body}");
    let (status, body) = server
        .post(
            &format!("/api/v1/apps/shop/environments/{environment}/rollouts"),
            &json!({ "release": version }),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    server
        .wait_finished(body["id"].as_str().unwrap(), Duration::from_secs(60))
        .await
        .unwrap()
}

/// The app's notifications once `expected` exist and none is pending, oldest first.
async fn settled(server: &Server, expected: usize) -> Vec<Value> {
    let started = std::time::Instant::now();
    loop {
        let (status, body) = server.get("/api/v1/apps/shop/notifications").await.unwrap();
        assert_eq!(status, 200, "{body}");
        let mut items = body["items"].as_array().cloned().unwrap_or_default();
        items.reverse();
        if items.len() == expected && items.iter().all(|item| item["state"] != "pending") {
            return items;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "expected {expected} settled notifications, have {items:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn events_of<'a>(items: &'a [Value], channel: &str) -> Vec<&'a str> {
    items
        .iter()
        .filter(|item| item["channel"] == channel)
        .map(|item| item["event"].as_str().unwrap())
        .collect()
}

fn signature(body: &[u8]) -> String {
    shipgate_testkit::hmac_sha256(HOOK_SECRET, body)
}

/// Starts the binary with its log (at debug level) written to a file, through a shell that
/// execs it, so the test can read what it logged.
fn start_logging(db: &TestDb, log: &std::path::Path) -> Server {
    let wrapper = log.with_extension("sh");
    std::fs::write(
        &wrapper,
        "#!/bin/sh\nexec \"$NOTIFY_TEST_BINARY\" \"$@\" 2>>\"$NOTIFY_TEST_LOG\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    Server::start(
        wrapper.to_str().unwrap(),
        &db.url,
        &[
            ("NOTIFY_TEST_BINARY", BINARY),
            ("NOTIFY_TEST_LOG", log.to_str().unwrap()),
            ("RUST_LOG", "debug"),
            ("SHIPGATE_PUBLIC_URL", "https://shipgate.example.com"),
        ],
    )
    .unwrap()
}

#[tokio::test]
async fn rollouts_and_rollbacks_reach_the_channels_their_environment_and_severity_route_to() {
    let (receiver, base) = Receiver::start().await;
    let db = TestDb::new().await.unwrap();
    let log = std::env::temp_dir().join(format!("shipgate-notify-{}.log", uuid::Uuid::new_v4()));
    let server = start_logging(&db, &log);
    let channels = format!(
        r#"
  - name: team-slack
    slack: {{ webhook_url: "RECEIVER/slack/{SLACK_TOKEN}" }}
    environments: [production]
  - name: pager
    webhook: {{ url: "RECEIVER/hook", secret: "{HOOK_SECRET}" }}
    severity: critical
"#
    );
    let (status, body) = server
        .apply("shop", &config(&base, &channels))
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");

    // Production succeeds, staging succeeds, then production fails its health gate and is
    // rolled back automatically.
    let done = deploy(&server, "production", "1.0.0").await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let done = deploy(&server, "staging", "1.0.0").await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let sick = deploy(&server, "production", "1.1.0-sick").await;
    let rollback = sick["rolled_back_by"]
        .as_str()
        .expect("rolled back")
        .to_owned();
    let rollback = server
        .wait_finished(&rollback, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(rollback["state"], "succeeded", "{rollback}");

    let items = settled(&server, 7).await;
    assert!(
        items
            .iter()
            .all(|item| item["state"] == "delivered" && item["attempts"] == 1),
        "{items:#?}"
    );
    // Slack hears everything of production and nothing of staging; the pager only what is
    // critical, from anywhere.
    assert_eq!(
        events_of(&items, "team-slack"),
        [
            "rollout.started",
            "rollout.succeeded",
            "rollout.started",
            "rollback.started",
            "rollback.finished"
        ]
    );
    assert_eq!(
        events_of(&items, "pager"),
        ["rollback.started", "rollback.finished"]
    );
    assert!(items.iter().all(|item| item["environment"] == "production"));

    // Slack gets Block Kit: a header, the facts, the reason, a context line with a link.
    let slack = receiver.at("slack");
    assert_eq!(slack.len(), 5);
    let failed = slack
        .iter()
        .map(Received::json)
        .find(|message| {
            message["blocks"][0]["text"]["text"]
                .as_str()
                .is_some_and(|text| text.contains("rollback started"))
        })
        .expect("a rollback message");
    assert!(failed["text"].as_str().unwrap().contains("shop"));
    assert_eq!(failed["blocks"][0]["type"], "header");
    assert_eq!(failed["blocks"][1]["type"], "section");
    let facts: Vec<&str> = failed["blocks"][1]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|field| field["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        facts[..3],
        [
            "*App*\nshop",
            "*Environment*\nproduction",
            "*Release*\n1.0.0"
        ]
    );
    assert!(facts[3].starts_with("*State*\n"), "{facts:?}");
    assert_eq!(failed["blocks"][2]["type"], "section");
    assert!(failed["blocks"][2]["text"]["text"]
        .as_str()
        .unwrap()
        .starts_with("*Reason*\n"));
    let context = failed["blocks"][3]["elements"][0]["text"].as_str().unwrap();
    assert!(
        context.contains(&format!(
            "<https://shipgate.example.com/rollouts/{}|View rollout>",
            rollback["id"].as_str().unwrap()
        )),
        "{context}"
    );
    assert!(slack
        .iter()
        .all(|message| message.header("x-shipgate-signature").is_empty()));

    // The pager's JSON is signed over its exact bytes and names its delivery.
    let pager = receiver.at("hook");
    assert_eq!(pager.len(), 2);
    for message in &pager {
        assert_eq!(
            message.header("x-shipgate-signature"),
            signature(&message.body)
        );
        let body = message.json();
        assert_eq!(
            message.header("x-shipgate-delivery"),
            body["id"].to_string()
        );
        assert_eq!(body["app"], "shop");
        assert_eq!(body["environment"], "production");
        assert_eq!(body["severity"], "critical");
    }
    let finished = pager
        .iter()
        .map(Received::json)
        .find(|body| body["event"] == "rollback.finished")
        .unwrap();
    assert_eq!(finished["release"], "1.0.0");
    assert_eq!(finished["rollout_id"], rollback["id"]);

    // The Slack URL and the signing secret are write-only: in no answer, in no log line.
    let mut answers = String::new();
    for path in [
        "/api/v1/apps/shop",
        "/api/v1/apps/shop/notifications",
        "/api/v1/events?app=shop&limit=200",
    ] {
        let (status, body) = server.get(path).await.unwrap();
        assert_eq!(status, 200, "{path}: {body}");
        answers.push_str(&body.to_string());
    }
    // The dashboard's page shows the same, signed in with a session.
    let browser = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let signed_in = browser
        .post(server.at("/login"))
        .form(&[("token", ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 303);
    let page = browser
        .get(server.at("/apps/shop/notifications"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    for expected in ["team-slack", "pager", "rollback.finished", "delivered"] {
        assert!(html.contains(expected), "{expected} missing from the page");
    }
    answers.push_str(&html);
    assert!(answers.contains("team-slack"));
    assert!(!answers.contains(SLACK_TOKEN), "{answers}");
    assert!(!answers.contains(HOOK_SECRET));
    drop(server);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("notification attempted"),
        "the log was captured"
    );
    assert!(
        !logged.contains("slackcredential"),
        "the Slack URL was logged"
    );
    assert!(!logged.contains(HOOK_SECRET));
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(log.with_extension("sh"));
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn a_failing_endpoint_is_retried_with_backoff_and_a_refusing_one_fails_at_once() {
    let (receiver, base) = Receiver::start().await;
    let db = TestDb::new().await.unwrap();
    let server = Server::start(BINARY, &db.url, &[]).unwrap();
    let channels = r#"
  - name: flaky
    webhook: { url: "RECEIVER/flaky" }
    events: [rollout.succeeded]
  - name: gone
    webhook: { url: "RECEIVER/gone" }
    events: [rollout.succeeded]
"#;
    let (status, body) = server
        .apply("shop", &config(&base, channels))
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");

    let done = deploy(&server, "staging", "1.0.0").await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let items = settled(&server, 2).await;

    let flaky = items
        .iter()
        .find(|item| item["channel"] == "flaky")
        .unwrap();
    assert_eq!(flaky["state"], "delivered", "{flaky}");
    assert_eq!(flaky["attempts"], 3, "{flaky}");
    assert_eq!(flaky["last_error"], Value::Null);
    assert!(flaky["delivered_at"].is_string());
    // The same delivery each time, so the endpoint can drop duplicates.
    let attempts = receiver.at("flaky");
    let delivery = flaky["id"].to_string();
    assert_eq!(attempts.len(), 3);
    assert!(attempts
        .iter()
        .all(|attempt| attempt.header("x-shipgate-delivery") == delivery));
    assert!(attempts[0].header("x-shipgate-signature").is_empty());

    let gone = items.iter().find(|item| item["channel"] == "gone").unwrap();
    assert_eq!(gone["state"], "failed", "{gone}");
    assert_eq!(gone["attempts"], 1, "{gone}");
    assert!(
        gone["last_error"]
            .as_str()
            .is_some_and(|error| error.contains("404")),
        "{gone}"
    );
    assert!(gone["failed_at"].is_string());
    assert_eq!(receiver.at("gone").len(), 1);
    drop(server);
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn a_channel_with_a_plain_http_url_or_an_unknown_event_is_refused_naming_the_field() {
    let db = TestDb::new().await.unwrap();
    let server = Server::start(BINARY, &db.url, &[]).unwrap();
    let channels = r#"
  - name: team-slack
    slack: { webhook_url: "http://hooks.slack.example/services/secret-part" }
    events: [rollout.exploded]
    severity: loud
"#;
    let (status, body) = server
        .apply("shop", &config("unused", channels))
        .await
        .unwrap();
    assert_eq!(status, 422, "{body}");
    let text = body.to_string();
    assert!(
        text.contains("notifications[0].slack.webhook_url"),
        "{text}"
    );
    assert!(text.contains("notifications[0].events[0]"), "{text}");
    assert!(text.contains("notifications[0].severity"), "{text}");
    assert!(!text.contains("secret-part"), "{text}");
    drop(server);
    db.drop_database().await.unwrap();
}
