//! Webhook receiver tests: the real `shipgate` binary receives real GitHub payloads (from
//! `@octokit/webhooks-examples`, see `tests/fixtures/github/README.md`) signed as GitHub signs
//! them, and GitLab's documented push payloads, and turns pushes into releases and rollouts.

use std::time::Duration;

use futures::future::join_all;
use serde_json::{json, Value};
use shipgate_testkit::{Server, TestDb};

const BINARY: &str = env!("CARGO_BIN_EXE_shipgate");
const SECRET: &str = "It's a Secret to Everybody";

const PUSH_BRANCH: &str = include_str!("fixtures/github/push-branch.json");
const PUSH_TAG: &str = include_str!("fixtures/github/push-tag.json");
const PUSH_DELETED: &str = include_str!("fixtures/github/push-deleted.json");
const PING: &str = include_str!("fixtures/github/ping.json");
const GITLAB_PUSH: &str = include_str!("fixtures/gitlab/push.json");
const GITLAB_TAG: &str = include_str!("fixtures/gitlab/tag_push.json");

/// The sha of the fixtures' push.
const SHA: &str = "6113728f27ae82c7b1a177c8d03f9e96e0adf246";

/// Staging deploys `master`, production deploys `release/*` only.
fn config(app: &str, repository: &str) -> String {
    format!(
        r#"
app: {app}
repository: {repository}
webhook_secret: "{SECRET}"
components: [web, api]
environments:
  - name: staging
    auto_deploy: {{ branch: master }}
    targets: &targets
      web: {{ provider: simulated, latency: 50ms }}
      api: {{ provider: simulated, latency: 50ms }}
    plan: &plan
      - name: all
        deploy: [api, web]
  - name: production
    auto_deploy: {{ branch: "release/*" }}
    targets: *targets
    plan: *plan
"#
    )
}

fn sign(body: &[u8]) -> String {
    shipgate_testkit::hmac_sha256(SECRET, body)
}

struct Answer {
    status: u16,
    body: Value,
    headers: reqwest::header::HeaderMap,
}

/// POSTs a delivery without credentials, as a Git host does.
async fn post(server: &Server, path: &str, headers: &[(&str, String)], body: Vec<u8>) -> Answer {
    let mut request = reqwest::Client::new().post(server.at(path)).body(body);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.json().await.unwrap_or(Value::Null);
    Answer {
        status,
        body,
        headers,
    }
}

/// A GitHub delivery of `payload`, JSON-encoded, signed.
async fn github(server: &Server, event: &str, delivery: &str, payload: &str) -> Answer {
    let body = payload.as_bytes().to_vec();
    let headers = [
        ("content-type", "application/json".to_owned()),
        ("x-github-event", event.to_owned()),
        ("x-github-delivery", delivery.to_owned()),
        ("x-hub-signature-256", sign(&body)),
        ("user-agent", "GitHub-Hookshot/test".to_owned()),
    ];
    post(server, "/hooks/github", &headers, body).await
}

/// The push fixture moved to another commit, `seconds` after the original.
fn push_of(sha: &str, seconds: i64) -> String {
    let mut push: Value = serde_json::from_str(PUSH_BRANCH).unwrap();
    let time = chrono::DateTime::parse_from_rfc3339("2019-05-15T15:19:25Z").unwrap()
        + chrono::Duration::seconds(seconds);
    push["after"] = json!(sha);
    push["head_commit"]["id"] = json!(sha);
    push["head_commit"]["timestamp"] = json!(time.to_rfc3339());
    push["commits"][0]["id"] = json!(sha);
    push["commits"][0]["timestamp"] = json!(time.to_rfc3339());
    push.to_string()
}

async fn count(db: &TestDb, table: &str) -> i64 {
    sqlx::query_scalar(&format!("select count(*) from {table}"))
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

async fn start(app: &str, repository: &str) -> (TestDb, Server) {
    let db = TestDb::new().await.unwrap();
    let server = Server::start(BINARY, &db.url, &[]).unwrap();
    let (status, body) = server.apply(app, &config(app, repository)).await.unwrap();
    assert_eq!(status, 201, "{body}");
    (db, server)
}

#[tokio::test]
async fn a_github_push_releases_the_commit_and_deploys_it_where_the_branch_rule_matches() {
    let (db, server) = start("hello", "Codertocat/Hello-World").await;

    // The hook's ping answers 200 and is recorded. (The fixture's ping comes from a fork of
    // the repository the pushes come from; here the hook sits on the app's repository.)
    let mut ping: Value = serde_json::from_str(PING).unwrap();
    ping["repository"]["full_name"] = json!("Codertocat/Hello-World");
    let ping = github(&server, "ping", "ping-1", &ping.to_string()).await;
    assert_eq!(ping.status, 200, "{}", ping.body);
    assert_eq!(ping.body["verdict"], "ignored");

    // A push to master, form-encoded as GitHub sends it when the hook is set up so.
    let form = format!("payload={}", urlencode(PUSH_BRANCH));
    let headers = [
        (
            "content-type",
            "application/x-www-form-urlencoded".to_owned(),
        ),
        ("x-github-event", "push".to_owned()),
        ("x-github-delivery", "push-1".to_owned()),
        ("x-hub-signature-256", sign(form.as_bytes())),
    ];
    let push = post(
        &server,
        "/hooks/github",
        &headers,
        form.clone().into_bytes(),
    )
    .await;
    assert_eq!(push.status, 202, "{}", push.body);
    assert_eq!(push.body["verdict"], "deployed");
    assert_eq!(push.body["release"], "6113728");
    let reason = push.body["reason"].as_str().unwrap();
    assert!(
        reason.contains("production: branch `master` does not match"),
        "{reason}"
    );
    let rollouts = push.body["rollouts"].as_array().unwrap();
    assert_eq!(rollouts.len(), 1);
    let rollout = rollouts[0].as_str().unwrap();
    let done = server
        .wait_finished(rollout, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["environment"], "staging");
    assert_eq!(done["trigger"], "webhook");

    let (_, release) = server
        .get("/api/v1/apps/hello/releases/6113728")
        .await
        .unwrap();
    assert_eq!(release["git_sha"], SHA);
    assert_eq!(release["git_ref"], "refs/heads/master");
    assert_eq!(release["source"], "webhook");
    assert_eq!(release["artifacts"]["web"], SHA);
    assert_eq!(release["artifacts"]["api"], SHA);
    assert!(release["notes"]
        .as_str()
        .unwrap()
        .starts_with("Initial commit\n\nAuthor: Codertocat"));
    assert_eq!(
        release["committed_at"]
            .as_str()
            .unwrap()
            .parse::<chrono::DateTime<chrono::Utc>>()
            .unwrap()
            .to_rfc3339(),
        "2019-05-15T15:19:25+00:00"
    );

    // A redelivery answers 200 with what the first did, and does nothing new.
    let again = post(&server, "/hooks/github", &headers, form.into_bytes()).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body["duplicate"], true);
    assert_eq!(again.body["verdict"], "deployed");
    assert_eq!(again.body["delivery"], push.body["delivery"]);
    assert_eq!(count(&db, "releases").await, 1);
    assert_eq!(count(&db, "rollouts").await, 1);

    // A tag push makes a release and deploys nowhere (no rule has `tags: true`).
    let tag = github(&server, "push", "tag-1", PUSH_TAG).await;
    assert_eq!(tag.status, 202, "{}", tag.body);
    assert_eq!(tag.body["verdict"], "accepted");
    assert_eq!(tag.body["release"], "simple-tag");
    assert_eq!(tag.body["rollouts"], json!([]));
    assert!(tag.body["reason"]
        .as_str()
        .unwrap()
        .contains("staging: tag `simple-tag` does not deploy here"));

    // Deleting a tag or a branch is ignored.
    let deleted = github(&server, "push", "delete-1", PUSH_DELETED).await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    assert_eq!(deleted.body["verdict"], "ignored");
    let mut branch: Value = serde_json::from_str(PUSH_DELETED).unwrap();
    branch["ref"] = json!("refs/heads/master");
    let deleted = github(&server, "push", "delete-2", &branch.to_string()).await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    assert_eq!(deleted.body["verdict"], "ignored");
    assert!(deleted.body["reason"]
        .as_str()
        .unwrap()
        .contains("branch `master` was deleted"));

    // The same commit pushed again under another delivery is already live: nothing new.
    let same = github(&server, "push", "push-2", PUSH_BRANCH).await;
    assert_eq!(same.status, 200, "{}", same.body);
    assert_eq!(same.body["verdict"], "ignored");
    assert!(same.body["reason"]
        .as_str()
        .unwrap()
        .contains("staging: already runs release 6113728"));

    assert_eq!(count(&db, "releases").await, 2);
    assert_eq!(count(&db, "rollouts").await, 1);

    // Every delivery is listed, newest first, a page at a time.
    let (status, page) = server
        .get("/api/v1/apps/hello/deliveries?limit=4")
        .await
        .unwrap();
    assert_eq!(status, 200, "{page}");
    let ids: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["delivery_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["push-2", "delete-2", "delete-1", "tag-1"]);
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, rest) = server
        .get(&format!(
            "/api/v1/apps/hello/deliveries?limit=4&before={cursor}"
        ))
        .await
        .unwrap();
    let first = &rest["items"][0];
    assert_eq!(first["delivery_id"], "push-1");
    assert_eq!(first["source"], "github");
    assert_eq!(first["event"], "push");
    assert_eq!(first["verdict"], "deployed");
    assert_eq!(first["release"], "6113728");
    assert_eq!(first["rollout_id"], rollout);
    assert_eq!(rest["items"][1]["delivery_id"], "ping-1");
    assert_eq!(rest["next_cursor"], Value::Null);

    // Deliveries are not public.
    let anonymous = reqwest::get(server.at("/api/v1/apps/hello/deliveries"))
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    db.drop_database().await.unwrap();
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b' ' => "+".to_owned(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

fn is_problem(answer: &Answer) -> bool {
    answer
        .headers
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"))
}

#[tokio::test]
async fn unsigned_forged_oversized_malformed_and_unknown_deliveries_create_nothing() {
    let (db, server) = start("hello", "Codertocat/Hello-World").await;
    let body = PUSH_BRANCH.as_bytes().to_vec();
    let headers = |signature: Option<String>| {
        let mut headers = vec![
            ("content-type", "application/json".to_owned()),
            ("x-github-event", "push".to_owned()),
            ("x-github-delivery", "d-1".to_owned()),
        ];
        if let Some(signature) = signature {
            headers.push(("x-hub-signature-256", signature));
        }
        headers
    };

    let unsigned = post(&server, "/hooks/github", &headers(None), body.clone()).await;
    assert_eq!(unsigned.status, 401, "{}", unsigned.body);
    assert!(is_problem(&unsigned));

    let forged = sign(b"another body");
    let forged = post(
        &server,
        "/hooks/github",
        &headers(Some(forged)),
        body.clone(),
    )
    .await;
    assert_eq!(forged.status, 401, "{}", forged.body);
    assert!(forged.body["detail"]
        .as_str()
        .unwrap()
        .contains("does not match"));

    let mut big = body.clone();
    big.resize(1024 * 1024 + 1, b' ');
    let oversized = post(&server, "/hooks/github", &headers(Some(sign(&big))), big).await;
    assert_eq!(oversized.status, 413, "{}", oversized.body);
    assert!(is_problem(&oversized));

    let garbage = b"{\"ref\": ".to_vec();
    let malformed = post(
        &server,
        "/hooks/github",
        &headers(Some(sign(&garbage))),
        garbage,
    )
    .await;
    assert_eq!(malformed.status, 400, "{}", malformed.body);
    assert!(is_problem(&malformed));

    let mut elsewhere: Value = serde_json::from_str(PUSH_BRANCH).unwrap();
    elsewhere["repository"]["full_name"] = json!("someone/else");
    let elsewhere = elsewhere.to_string().into_bytes();
    let unknown = post(
        &server,
        "/hooks/github",
        &headers(Some(sign(&elsewhere))),
        elsewhere,
    )
    .await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    let unknown_app = post(
        &server,
        "/hooks/github/nope",
        &headers(Some(sign(&body))),
        body.clone(),
    )
    .await;
    assert_eq!(unknown_app.status, 404, "{}", unknown_app.body);

    let mut no_id = headers(Some(sign(&body)));
    no_id.retain(|(name, _)| *name != "x-github-delivery");
    let no_id = post(&server, "/hooks/github", &no_id, body.clone()).await;
    assert_eq!(no_id.status, 400, "{}", no_id.body);

    assert_eq!(count(&db, "webhook_deliveries").await, 0);
    assert_eq!(count(&db, "releases").await, 0);
    assert_eq!(count(&db, "rollouts").await, 0);

    // A flood from one address is cut off with 429 and Retry-After.
    let unsigned = headers(None);
    let flood =
        join_all((0..400).map(|_| post(&server, "/hooks/github", &unsigned, Vec::new()))).await;
    let limited: Vec<&Answer> = flood.iter().filter(|a| a.status == 429).collect();
    assert!(!limited.is_empty(), "no delivery was rate limited");
    assert!(limited[0].headers.get("retry-after").is_some());
    assert!(is_problem(limited[0]));
    assert!(flood.iter().all(|a| a.status == 429 || a.status == 401));
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn a_push_to_an_environment_whose_auto_deploy_is_paused_is_refused_with_the_reason() {
    let (db, server) = start("hello", "Codertocat/Hello-World").await;
    // A known-good release, deployed by hand.
    let (status, body) = server
        .post(
            "/api/v1/apps/hello/releases",
            &json!({ "version": "1.0.0", "artifacts": { "web": "a", "api": "a" } }),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    let (status, body) = server
        .post(
            "/api/v1/apps/hello/environments/staging/rollouts",
            &json!({ "release": "1.0.0" }),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    let done = server
        .wait_finished(body["id"].as_str().unwrap(), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(done["state"], "succeeded");

    // A push deploys, then a person rolls it back: its release is quarantined and auto-deploy
    // of staging paused.
    let push = github(&server, "push", "push-1", PUSH_BRANCH).await;
    assert_eq!(push.body["verdict"], "deployed", "{}", push.body);
    let rollout = push.body["rollouts"][0].as_str().unwrap();
    let done = server
        .wait_finished(rollout, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(done["state"], "succeeded");
    let (status, body) = server
        .post(
            "/api/v1/apps/hello/environments/staging/rollback",
            &json!({ "reason": "checkout is broken" }),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    server
        .wait_finished(body["id"].as_str().unwrap(), Duration::from_secs(60))
        .await
        .unwrap();

    // The next push makes its release but deploys nothing, and says why.
    let next = github(
        &server,
        "push",
        "push-2",
        &push_of("1111111111111111111111111111111111111111", 60),
    )
    .await;
    assert_eq!(next.status, 200, "{}", next.body);
    assert_eq!(next.body["verdict"], "refused");
    assert_eq!(next.body["release"], "1111111");
    assert_eq!(next.body["rollouts"], json!([]));
    let reason = next.body["reason"].as_str().unwrap();
    assert!(
        reason.contains("staging: auto-deploy is paused") && reason.contains("checkout is broken"),
        "{reason}"
    );
    let (_, page) = server.get("/api/v1/apps/hello/deliveries").await.unwrap();
    assert_eq!(page["items"][0]["verdict"], "refused");
    assert_eq!(page["items"][0]["reason"].as_str(), Some(reason));
    // Only the manual rollout, the push's and the rollback exist.
    assert_eq!(count(&db, "rollouts").await, 3);
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn concurrent_deliveries_make_one_release_per_push_and_none_twice() {
    let (db, server) = start("hello", "Codertocat/Hello-World").await;
    let pushes: Vec<(String, String)> = (1..=100)
        .map(|i| (format!("push-{i}"), push_of(&format!("{i:040x}"), i)))
        .collect();
    let answers = join_all(
        pushes
            .iter()
            .map(|(id, payload)| github(&server, "push", id, payload)),
    )
    .await;
    for answer in &answers {
        assert!(
            answer.status == 200 || answer.status == 202,
            "{} {}",
            answer.status,
            answer.body
        );
        assert_eq!(answer.body["duplicate"], false);
    }
    assert_eq!(count(&db, "releases").await, 100);
    assert_eq!(count(&db, "webhook_deliveries").await, 100);
    let versions: i64 = sqlx::query_scalar("select count(distinct version) from releases")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(versions, 100);
    // Never two rollouts of one release, never two holding the environment.
    let (rollouts, distinct): (i64, i64) =
        sqlx::query_as("select count(*), count(distinct release_id) from rollouts")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(rollouts, distinct);
    let waiting: i64 = sqlx::query_scalar("select count(*) from rollouts where state = 'queued'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(
        waiting <= 1,
        "a newer push supersedes queued ones: {waiting} queued"
    );

    // The same delivery 100 times at once: one release, one delivery, one answer that did it.
    let payload = push_of(&format!("{:040x}", 1000), 1000);
    let answers =
        join_all((0..100).map(|_| github(&server, "push", "redelivered", &payload))).await;
    assert!(answers.iter().all(|a| a.status == 200 || a.status == 202));
    let first: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.body["duplicate"] == false)
        .collect();
    assert_eq!(first.len(), 1);
    assert!(answers
        .iter()
        .all(|a| a.body["delivery"] == first[0].body["delivery"]));
    assert_eq!(count(&db, "releases").await, 101);
    assert_eq!(count(&db, "webhook_deliveries").await, 101);
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn gitlab_push_and_tag_push_hooks_release_and_deploy_with_the_secret_token() {
    let (db, server) = start("diaspora", "mike/diaspora").await;
    let gitlab = |event: &'static str, uuid: &'static str, token: Option<&'static str>| {
        let mut headers = vec![
            ("content-type", "application/json".to_owned()),
            ("x-gitlab-event", event.to_owned()),
            ("x-gitlab-event-uuid", uuid.to_owned()),
            ("x-gitlab-instance", "https://gitlab.example.com".to_owned()),
        ];
        if let Some(token) = token {
            headers.push(("x-gitlab-token", token.to_owned()));
        }
        headers
    };
    let missing = post(
        &server,
        "/hooks/gitlab",
        &gitlab("Push Hook", "u-1", None),
        GITLAB_PUSH.into(),
    )
    .await;
    assert_eq!(missing.status, 401, "{}", missing.body);
    let wrong = post(
        &server,
        "/hooks/gitlab",
        &gitlab("Push Hook", "u-1", Some("guess")),
        GITLAB_PUSH.into(),
    )
    .await;
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert_eq!(count(&db, "webhook_deliveries").await, 0);

    let push = post(
        &server,
        "/hooks/gitlab",
        &gitlab("Push Hook", "u-1", Some(SECRET)),
        GITLAB_PUSH.into(),
    )
    .await;
    assert_eq!(push.status, 202, "{}", push.body);
    assert_eq!(push.body["verdict"], "deployed");
    assert_eq!(push.body["release"], "da15608");
    let rollout = push.body["rollouts"][0].as_str().unwrap();
    let done = server
        .wait_finished(rollout, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(done["state"], "succeeded", "{done}");
    let (_, release) = server
        .get("/api/v1/apps/diaspora/releases/da15608")
        .await
        .unwrap();
    assert_eq!(
        release["notes"],
        "fixed readme\n\nAuthor: GitLab dev user <gitlabdev@dv6700.(none)>"
    );

    let again = post(
        &server,
        "/hooks/gitlab",
        &gitlab("Push Hook", "u-1", Some(SECRET)),
        GITLAB_PUSH.into(),
    )
    .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body["duplicate"], true);

    // The tag fixture is of another project: a hook URL naming the app routes it.
    let tag = post(
        &server,
        "/hooks/gitlab/diaspora",
        &gitlab("Tag Push Hook", "u-2", Some(SECRET)),
        GITLAB_TAG.into(),
    )
    .await;
    assert_eq!(tag.status, 202, "{}", tag.body);
    assert_eq!(tag.body["verdict"], "accepted");
    assert_eq!(tag.body["release"], "v1.0.0");
    assert_eq!(tag.body["rollouts"], json!([]));
    assert_eq!(count(&db, "releases").await, 2);
    assert_eq!(count(&db, "rollouts").await, 1);
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn a_signed_generic_delivery_announces_a_release_built_by_ci() {
    let (db, server) = start("hello", "Codertocat/Hello-World").await;
    let generic = |delivery: &'static str, body: &Value, signature: Option<String>| {
        let body = body.to_string().into_bytes();
        let mut headers = vec![
            ("content-type", "application/json".to_owned()),
            ("x-shipgate-delivery", delivery.to_owned()),
        ];
        headers.push((
            "x-shipgate-signature",
            signature.unwrap_or_else(|| sign(&body)),
        ));
        (headers, body)
    };
    let release = json!({
        "version": "2.0.0", "git_sha": SHA, "git_ref": "refs/heads/master",
        "artifacts": { "web": "registry.example/web@sha256:aa", "api": "registry.example/api@sha256:bb" },
    });
    let (headers, body) = generic("ci-1", &release, Some("sha256=00".into()));
    let forged = post(&server, "/hooks/generic/hello", &headers, body).await;
    assert_eq!(forged.status, 401, "{}", forged.body);

    let (headers, body) = generic("ci-1", &release, None);
    let answer = post(&server, "/hooks/generic/hello", &headers, body).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(answer.body["verdict"], "deployed");
    assert_eq!(answer.body["release"], "2.0.0");
    let (_, stored) = server
        .get("/api/v1/apps/hello/releases/2.0.0")
        .await
        .unwrap();
    assert_eq!(stored["artifacts"]["web"], "registry.example/web@sha256:aa");

    // A release naming a component the app lacks is refused, and the refusal recorded.
    let bad = json!({ "version": "2.0.1", "artifacts": { "db": "x" } });
    let (headers, body) = generic("ci-2", &bad, None);
    let refused = post(&server, "/hooks/generic/hello", &headers, body).await;
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert_eq!(refused.body["errors"][0]["field"], "artifacts.db");
    let (_, page) = server.get("/api/v1/apps/hello/deliveries").await.unwrap();
    assert_eq!(page["items"][0]["delivery_id"], "ci-2");
    assert_eq!(page["items"][0]["verdict"], "refused");
    assert_eq!(count(&db, "releases").await, 1);
    db.drop_database().await.unwrap();
}
