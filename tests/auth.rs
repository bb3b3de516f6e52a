//! Authentication and authorization over the real binary: every mutating API route refuses
//! every kind of bad credential with 401 or 403, and a refused request changes nothing.
//!
//! The webhook receivers (`/hooks/...`) authenticate by signature, not by token; their refusals
//! are covered in tests/webhooks.rs.

use std::time::Duration;

use chrono::Utc;
use reqwest::Method;
use serde_json::{json, Value};
use shipgate_server::auth::TokenKeys;
use shipgate_store::crypto::SecretBox;
use shipgate_testkit::{eventually, Server, TestDb, ADMIN_TOKEN};
use uuid::Uuid;

const BINARY: &str = env!("CARGO_BIN_EXE_shipgate");

/// Staging deploys at once; production waits for an approval before it starts.
const CONFIG: &str = r#"
app: shop
components: [web]
environments:
  - name: staging
    targets:
      web: { provider: simulated, latency: 50ms }
    plan:
      - name: web
        deploy: [web]
        gates: [ { soak: 100ms } ]
        on_failure: rollback
  - name: production
    approvals: { required: 1 }
    targets:
      web: { provider: simulated, latency: 50ms }
    plan:
      - name: web
        deploy: [web]
        gates: [ { soak: 100ms } ]
        on_failure: rollback
"#;

/// The keys the test server signs API tokens with (the testkit's master key is all zeros).
fn server_keys() -> TokenKeys {
    TokenKeys::api(&SecretBox::new([0u8; 32], &[]))
}

/// A request body: its content type and text.
type Body = (&'static str, String);

fn json_body(value: Value) -> Body {
    ("application/json", value.to_string())
}

async fn send(
    server: &Server,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<&Body>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new().request(method.clone(), server.at(path));
    if method == Method::POST {
        // A refused request must not hold its key either.
        request = request.header("idempotency-key", Uuid::new_v4().to_string());
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some((content_type, text)) = body {
        request = request
            .header("content-type", *content_type)
            .body(text.clone());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Mints a token through the API with the bootstrap admin token.
async fn mint(server: &Server, request: Value) -> (String, String) {
    let (status, body) = send(
        server,
        Method::POST,
        "/api/v1/tokens",
        Some(ADMIN_TOKEN),
        Some(&json_body(request)),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    (
        body["token"].as_str().unwrap().to_owned(),
        body["id"].as_str().unwrap().to_owned(),
    )
}

/// Everything a refused request could have touched, as one string.
async fn fingerprint(db: &TestDb) -> String {
    sqlx::query_scalar(
        "select concat_ws(' / ',
           (select string_agg(a::text, ',' order by a.id) from apps a),
           (select string_agg(e::text, ',' order by e.id) from environments e),
           (select string_agg(r::text, ',' order by r.id) from releases r),
           (select string_agg(concat(r.id, r.state, r.release_id), ',' order by r.id)
              from rollouts r),
           (select string_agg(a::text, ',' order by a.id) from approvals a),
           (select string_agg(r::text, ',' order by r.id) from rollbacks r),
           (select string_agg(concat(t.id, t.scopes, t.revoked_at), ',' order by t.id)
              from api_tokens t),
           (select string_agg(concat(u.id, u.role, u.disabled_at), ',' order by u.id)
              from users u),
           (select string_agg(c::text, ',' order by c::text) from config_values c),
           (select count(*) from idempotency_keys),
           (select count(*) from events))",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

/// One mutating route, called as a test would call it with full rights.
struct Route {
    method: Method,
    path: String,
    body: Option<Body>,
}

fn route(method: Method, path: impl Into<String>, body: Option<Value>) -> Route {
    Route {
        method,
        path: path.into(),
        body: body.map(json_body),
    }
}

#[tokio::test]
async fn every_mutating_route_refuses_every_bad_credential_and_changes_nothing() {
    let db = TestDb::new().await.unwrap();
    let server = Server::start(BINARY, &db.url, &[]).unwrap();
    let (status, body) = server.apply("shop", CONFIG).await.unwrap();
    assert_eq!(status, 201, "{body}");
    let (status, body) = server
        .apply("other", &CONFIG.replace("app: shop", "app: other"))
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
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
    let staging = body["id"].as_str().unwrap().to_owned();
    let done = server
        .wait_finished(&staging, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(done["state"], "succeeded", "{done}");
    // A production rollout parked on its approval: the target of the rollout actions.
    let (status, body) = server
        .post(
            "/api/v1/apps/shop/environments/production/rollouts",
            &json!({ "release": "1.0.0" }),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    let parked = body["id"].as_str().unwrap().to_owned();
    eventually(Duration::from_secs(30), "the approval wait", || async {
        let (_, body) = server.get(&format!("/api/v1/rollouts/{parked}")).await?;
        Ok((body["state"] == "pending_approval").then_some(()))
    })
    .await
    .unwrap();

    // The credentials. Each is refused for its own reason.
    let (read_only, _) = mint(&server, json!({ "name": "reader", "scopes": ["read"] })).await;
    // Deploy and approve rights, but only in shop's staging.
    let (staging_only, _) = mint(
        &server,
        json!({ "name": "staging-ci", "scopes": ["deploy", "approve"], "app": "shop",
                "environment": "staging" }),
    )
    .await;
    // Full rights over another app only, and over another app's staging only.
    let (other_app, _) = mint(
        &server,
        json!({ "name": "other-ci", "scopes": ["deploy", "approve"], "app": "other" }),
    )
    .await;
    let (other_staging, _) = mint(
        &server,
        json!({ "name": "other-staging-ci", "scopes": ["deploy", "approve"], "app": "other",
                "environment": "staging" }),
    )
    .await;
    let (revoked, revoked_id) =
        mint(&server, json!({ "name": "leaked", "scopes": ["admin"] })).await;
    let (status, body) = send(
        &server,
        Method::DELETE,
        &format!("/api/v1/tokens/{revoked_id}"),
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert!(status == 200 || status == 204, "{status} {body}");
    // A live admin token's id, re-signed past its expiry, and re-signed with another key.
    let (_, live_id) = mint(&server, json!({ "name": "admin-ci", "scopes": ["admin"] })).await;
    let live_id: Uuid = live_id.parse().unwrap();
    let expired = server_keys().sign(
        "admin-ci",
        live_id,
        Utc::now() - chrono::Duration::minutes(10),
    );
    let forged = TokenKeys::api(&SecretBox::new([7u8; 32], &[])).sign(
        "admin-ci",
        live_id,
        Utc::now() + chrono::Duration::hours(1),
    );
    let mut tampered =
        server_keys().sign("admin-ci", live_id, Utc::now() + chrono::Duration::hours(1));
    tampered.push('x');

    let release = json!({ "version": "2.0.0", "artifacts": { "web": "web:2.0.0" } });
    let mut routes = vec![
        Route {
            method: Method::PUT,
            path: "/api/v1/apps/shop".into(),
            body: Some((
                "application/yaml",
                CONFIG.replace("soak: 100ms", "soak: 1s"),
            )),
        },
        route(Method::POST, "/api/v1/apps/shop/releases", Some(release)),
        route(
            Method::POST,
            "/api/v1/apps/shop/environments/production/rollouts",
            Some(json!({ "release": "1.0.0" })),
        ),
        route(
            Method::POST,
            "/api/v1/apps/shop/environments/production/rollback",
            Some(json!({ "reason": "test" })),
        ),
        route(
            Method::POST,
            "/api/v1/apps/shop/environments/production/auto-deploy/resume",
            None,
        ),
        route(
            Method::POST,
            "/api/v1/tokens",
            Some(json!({ "name": "x", "scopes": ["admin"] })),
        ),
        route(Method::DELETE, format!("/api/v1/tokens/{live_id}"), None),
        route(
            Method::POST,
            "/api/v1/users",
            Some(
                json!({ "username": "mallory", "password": "correct horse battery", "role": "admin" }),
            ),
        ),
        route(Method::DELETE, "/api/v1/users/alice", None),
    ];
    for action in [
        "pause",
        "resume",
        "cancel",
        "approve",
        "reject",
        "retry",
        "skip-gate",
    ] {
        routes.push(route(
            Method::POST,
            format!("/api/v1/rollouts/{parked}/{action}"),
            Some(json!({ "comment": "no" })),
        ));
    }

    let before = fingerprint(&db).await;
    let mut checked = 0;
    for route in &routes {
        let unauthenticated: [(&str, Option<&str>); 5] = [
            ("no token", None),
            ("expired", Some(&expired)),
            ("bad signature", Some(&forged)),
            ("tampered", Some(&tampered)),
            ("revoked", Some(&revoked)),
        ];
        for (why, token) in unauthenticated {
            let (status, body) = send(
                &server,
                route.method.clone(),
                &route.path,
                token,
                route.body.as_ref(),
            )
            .await;
            assert_eq!(
                status, 401,
                "{} {} with {why}: {body}",
                route.method, route.path
            );
            assert!(body["detail"].as_str().is_some(), "{body}");
            checked += 1;
        }
        // A release belongs to the app, not to an environment: a token limited to one of
        // shop's environments may create one (CI does), so the wrong environment there is one
        // of another app.
        let wrong_environment = if route.path == "/api/v1/apps/shop/releases" {
            ("another app's staging-only token", other_staging.as_str())
        } else {
            ("a staging-only token", staging_only.as_str())
        };
        let forbidden: [(&str, &str); 3] = [
            ("the read scope", &read_only),
            wrong_environment,
            ("another app's token", &other_app),
        ];
        for (why, token) in forbidden {
            let (status, body) = send(
                &server,
                route.method.clone(),
                &route.path,
                Some(token),
                route.body.as_ref(),
            )
            .await;
            assert_eq!(
                status, 403,
                "{} {} with {why}: {body}",
                route.method, route.path
            );
            checked += 1;
        }
        assert_eq!(
            fingerprint(&db).await,
            before,
            "{} {} changed something while refusing",
            route.method,
            route.path
        );
    }
    assert_eq!(checked, routes.len() * 8);

    // The refusals say why.
    let (_, body) = send(
        &server,
        Method::POST,
        "/api/v1/apps/shop/releases",
        Some(&expired),
        Some(&json_body(json!({}))),
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains("expired"),
        "{body}"
    );
    let (_, body) = send(
        &server,
        Method::POST,
        "/api/v1/apps/shop/releases",
        Some(&revoked),
        Some(&json_body(json!({}))),
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains("revoked"),
        "{body}"
    );

    // The same limited tokens do work where they are meant to.
    let (status, body) = send(
        &server,
        Method::GET,
        &format!("/api/v1/rollouts/{parked}"),
        Some(&read_only),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = send(
        &server,
        Method::POST,
        "/api/v1/apps/shop/environments/staging/rollback",
        Some(&staging_only),
        Some(&json_body(
            json!({ "reason": "the staging token may roll staging back" }),
        )),
    )
    .await;
    assert!(
        status == 201 || status == 409 || status == 422,
        "{status} {body}"
    );
    // A staging-only token sees staging's rollouts, not production's.
    let (status, body) = send(
        &server,
        Method::GET,
        "/api/v1/rollouts",
        Some(&staging_only),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let items = body["items"].as_array().unwrap();
    assert!(!items.is_empty());
    assert!(
        items.iter().all(|r| r["environment"] == "staging"),
        "{body}"
    );
    db.drop_database().await.unwrap();
}
