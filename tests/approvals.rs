//! End-to-end tests that try to break an environment's approvals: the same approver twice,
//! self-approval, approvers racing each other, roles without the right, a rejection without a
//! comment and a request that expires. Approvers are API tokens; a token's name is who it is.

use std::time::Duration;

use serde_json::{json, Value};
use shipgate_testkit::{Server, TestDb};

const BINARY: &str = env!("CARGO_BIN_EXE_shipgate");

/// `production` needs two approvers, `trusted` lets whoever started a rollout approve it, and
/// `hurried` gives its approvers two seconds.
const CONFIG: &str = r#"
app: gated
components: [web]
environments:
  - name: production
    approvals: { required: 2, timeout: 10m }
    targets: &targets
      web: { provider: simulated, latency: 50ms }
    plan: &plan
      - name: all
        deploy: [web]
  - name: trusted
    approvals: { required: 1, allow_self_approval: true }
    targets: *targets
    plan: *plan
  - name: hurried
    approvals: { required: 2, timeout: 2s }
    targets: *targets
    plan: *plan
"#;

/// Mints an API token with the bootstrap admin token.
async fn token(server: &Server, name: &str, scopes: &[&str]) -> String {
    let (status, body) = server
        .post("/api/v1/tokens", &json!({ "name": name, "scopes": scopes }))
        .await
        .unwrap();
    assert_eq!(status, 201, "token {name}: {body}");
    body["token"].as_str().unwrap().to_owned()
}

/// POSTs JSON as `token`.
async fn post_as(server: &Server, token: &str, path: &str, body: &Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(server.at(path))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap();
    (
        response.status().as_u16(),
        response.json().await.unwrap_or(Value::Null),
    )
}

/// Records a release and has `starter` start its rollout into `environment`.
async fn start(server: &Server, starter: &str, environment: &str, version: &str) -> String {
    let (status, body) = server
        .post(
            "/api/v1/apps/gated/releases",
            &json!({
                "version": version,
                "git_sha": "0123456789abcdef0123456789abcdef01234567",
                "artifacts": { "web": format!("registry.example/gated/web:{version}") },
            }),
        )
        .await
        .unwrap();
    assert!(status == 201 || status == 200, "release {version}: {body}");
    let (status, body) = post_as(
        server,
        starter,
        &format!("/api/v1/apps/gated/environments/{environment}/rollouts"),
        &json!({ "release": version }),
    )
    .await;
    assert_eq!(status, 201, "rollout of {version}: {body}");
    assert_eq!(body["state"], "pending_approval", "{body}");
    body["id"].as_str().unwrap().to_owned()
}

async fn approve(server: &Server, token: &str, rollout: &str) -> (u16, Value) {
    post_as(
        server,
        token,
        &format!("/api/v1/rollouts/{rollout}/approve"),
        &json!({ "comment": "looks good" }),
    )
    .await
}

async fn state(server: &Server, rollout: &str) -> String {
    let (_, body) = server
        .get(&format!("/api/v1/rollouts/{rollout}"))
        .await
        .unwrap();
    body["state"].as_str().unwrap().to_owned()
}

async fn approvals_recorded(db: &TestDb, rollout: &str) -> Vec<String> {
    sqlx::query_scalar(
        "select actor from approvals where rollout_id = $1::uuid and decision = 'approve' order by actor",
    )
    .bind(rollout)
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn approvals_count_each_approver_once_refuse_self_approval_and_those_without_the_right() {
    let db = TestDb::new().await.unwrap();
    let server = Server::start(BINARY, &db.url, &[]).unwrap();
    let (status, body) = server.apply("gated", CONFIG).await.unwrap();
    assert_eq!(status, 201, "{body}");
    let bot = token(&server, "release-bot", &["deploy", "approve"]).await;
    let ann = token(&server, "ann", &["approve"]).await;
    let bob = token(&server, "bob", &["approve"]).await;
    let viewer = token(&server, "viewer", &["read"]).await;
    let deployer = token(&server, "deployer", &["deploy"]).await;

    let id = start(&server, &bot, "production", "1.0.0").await;

    // The same approver twice counts once: the second is refused and nothing starts.
    assert_eq!(approve(&server, &ann, &id).await.0, 200);
    let (code, body) = approve(&server, &ann, &id).await;
    assert_eq!(code, 409, "a second approval by ann: {body}");
    assert_eq!(approvals_recorded(&db, &id).await, ["token:ann"]);

    // Whoever started it may not approve it here.
    let (code, body) = approve(&server, &bot, &id).await;
    assert_eq!(code, 422, "self-approval: {body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("does not allow self-approval"),
        "{body}"
    );

    // Neither a viewer nor a deployer may approve.
    for (who, token) in [("viewer", &viewer), ("deployer", &deployer)] {
        let (code, body) = approve(&server, token, &id).await;
        assert_eq!(code, 403, "{who} approving: {body}");
        assert!(
            body["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("needs the `approve` scope"),
            "{body}"
        );
    }

    // A rejection needs a comment, and one without it changes nothing.
    let (code, body) = post_as(
        &server,
        &bob,
        &format!("/api/v1/rollouts/{id}/reject"),
        &json!({ "comment": "  " }),
    )
    .await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["errors"][0]["field"], "comment", "{body}");

    // One approver, however often, is not two: the rollout still waits.
    assert_eq!(approvals_recorded(&db, &id).await, ["token:ann"]);
    assert_eq!(state(&server, &id).await, "pending_approval");

    // A second approver lets it start.
    assert_eq!(approve(&server, &bob, &id).await.0, 200);
    let done = server
        .wait_finished(&id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(done["state"], "succeeded", "{done}");

    // Self-approval is fine where the environment allows it.
    let trusted = start(&server, &bot, "trusted", "1.0.0").await;
    let (code, body) = approve(&server, &bot, &trusted).await;
    assert_eq!(code, 200, "{body}");
    let done = server
        .wait_finished(&trusted, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(done["state"], "succeeded", "{done}");

    drop(server);
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn two_approvers_racing_both_count_once_and_the_rollout_starts() {
    let db = TestDb::new().await.unwrap();
    let server = Server::start(BINARY, &db.url, &[]).unwrap();
    let (status, body) = server.apply("gated", CONFIG).await.unwrap();
    assert_eq!(status, 201, "{body}");
    let bot = token(&server, "release-bot", &["deploy"]).await;
    let ann = token(&server, "ann", &["approve"]).await;
    let bob = token(&server, "bob", &["approve"]).await;

    for version in ["2.0.0", "2.1.0", "2.2.0"] {
        let id = start(&server, &bot, "production", version).await;
        let (by_ann, by_bob, again_by_ann) = tokio::join!(
            approve(&server, &ann, &id),
            approve(&server, &bob, &id),
            approve(&server, &ann, &id),
        );
        assert_eq!(by_bob.0, 200, "{by_bob:?}");
        // Ann's second try is a duplicate (409), or comes after the rollout started (422).
        let mut ann_codes = [by_ann.0, again_by_ann.0];
        ann_codes.sort_unstable();
        assert!(
            ann_codes == [200, 409] || ann_codes == [200, 422],
            "ann counts once: {by_ann:?} {again_by_ann:?}"
        );
        assert_eq!(
            approvals_recorded(&db, &id).await,
            ["token:ann", "token:bob"]
        );
        let done = server
            .wait_finished(&id, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(done["state"], "succeeded", "{done}");
    }

    drop(server);
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn an_approval_request_expires_after_its_timeout_and_the_rollout_says_so() {
    let db = TestDb::new().await.unwrap();
    let server = Server::start(BINARY, &db.url, &[]).unwrap();
    let (status, body) = server.apply("gated", CONFIG).await.unwrap();
    assert_eq!(status, 201, "{body}");
    let bot = token(&server, "release-bot", &["deploy"]).await;
    let ann = token(&server, "ann", &["approve"]).await;

    let id = start(&server, &bot, "hurried", "3.0.0").await;
    assert_eq!(approve(&server, &ann, &id).await.0, 200);
    let done = server
        .wait_finished(&id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(done["state"], "failed", "{done}");
    assert_eq!(
        done["verdict"]["reason"], "approval request expired",
        "{done}"
    );
    assert!(done["started_at"].is_null(), "nothing deployed: {done}");

    // A late approval is refused: the request is closed.
    let bob = token(&server, "bob", &["approve"]).await;
    let (code, body) = approve(&server, &bob, &id).await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(state(&server, &id).await, "failed");

    drop(server);
    db.drop_database().await.unwrap();
}
