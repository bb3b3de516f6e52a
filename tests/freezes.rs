//! Freeze windows over the API, against the real binary: a window that begins while a rollout
//! runs holds it before its next phase and lets it go when it ends; its beginning and end are
//! announced to the app's channels; a preview says what a window would block before it exists;
//! a rollout an admin started despite a freeze is not held; deleting a window releases what it
//! held at once.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use shipgate_testkit::{csrf_of, eventually, hmac_sha256, Server, TestDb, ADMIN_TOKEN};

const BINARY: &str = env!("CARGO_BIN_EXE_shipgate");
const HOOK_SECRET: &str = "freeze-hook-secret";
const LONG: Duration = Duration::from_secs(60);

/// Two phases: `web` (deployed, then a soak) and `worker`; freeze edges go to `RECEIVER`.
fn config(receiver: &str) -> String {
    format!(
        r#"
app: shop
components: [web, worker]
environments:
  - name: production
    targets:
      web: {{ provider: simulated, latency: 50ms }}
      worker: {{ provider: simulated, latency: 50ms }}
    plan:
      - name: web
        deploy: [web]
        gates:
          - soak: 2s
      - name: worker
        deploy: [worker]
notifications:
  - name: ops
    webhook: {{ url: "{receiver}/hook", secret: "{HOOK_SECRET}" }}
    events: [freeze.began, freeze.ended]
"#
    )
}

/// Takes every POST; answers 200.
#[derive(Clone, Default)]
struct Receiver {
    received: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
}

async fn take(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    receiver.received.lock().unwrap().push((headers, body));
    StatusCode::OK
}

async fn receiver() -> (Receiver, String) {
    let receiver = Receiver::default();
    let app = Router::new()
        .route("/hook", post(take))
        .with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (receiver, format!("http://{address}"))
}

async fn start() -> (TestDb, Server, Receiver) {
    let (receiver, url) = receiver().await;
    let db = TestDb::new().await.unwrap();
    let server = Server::start(BINARY, &db.url, &[]).unwrap();
    let (status, body) = server.apply("shop", &config(&url)).await.unwrap();
    assert_eq!(status, 201, "{body}");
    (db, server, receiver)
}

/// Creates release `version` and starts its rollout to production: (status, body).
async fn roll_out(server: &Server, version: &str, extra: Value) -> (u16, Value) {
    let (status, body) = server
        .post(
            "/api/v1/apps/shop/releases",
            &json!({ "version": version, "artifacts": {
                "web": format!("web:{version}"), "worker": format!("worker:{version}") } }),
        )
        .await
        .unwrap();
    assert!(status == 201 || status == 200, "{body}");
    let mut request = json!({ "release": version });
    if let (Some(request), Some(extra)) = (request.as_object_mut(), extra.as_object()) {
        request.extend(extra.clone());
    }
    server
        .post(
            "/api/v1/apps/shop/environments/production/rollouts",
            &request,
        )
        .await
        .unwrap()
}

async fn rollout(server: &Server, id: &str) -> Value {
    let (status, body) = server.get(&format!("/api/v1/rollouts/{id}")).await.unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

/// Waits until the rollout's first phase soaks (its deploy done, the second phase not begun).
async fn soaking(server: &Server, id: &str) {
    eventually(LONG, "the first phase soaking", || async {
        let body = rollout(server, id).await;
        Ok((body["phases"][0]["state"] == "verifying").then_some(()))
    })
    .await
    .unwrap();
}

/// Waits until a freeze window holds the rollout; returns it.
async fn held(server: &Server, id: &str) -> Value {
    eventually(LONG, "the rollout held by the freeze", || async {
        let body = rollout(server, id).await;
        let reason = body["state_reason"].as_str().unwrap_or_default();
        Ok(reason
            .starts_with("held before its next phase")
            .then_some(body))
    })
    .await
    .unwrap()
}

fn window(name: &str, from_now: i64, lasts: i64) -> Value {
    let now = Utc::now();
    json!({
        "name": name,
        "environment": "production",
        "starts_at": now + chrono::Duration::milliseconds(from_now),
        "ends_at": now + chrono::Duration::milliseconds(from_now + lasts),
        "reason": "year-end close",
    })
}

fn at(value: &Value) -> DateTime<Utc> {
    value.as_str().unwrap().parse().unwrap()
}

async fn actions(server: &Server, id: &str) -> Vec<String> {
    let (status, body) = server
        .get(&format!("/api/v1/events?rollout={id}&limit=200"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let mut actions: Vec<String> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["action"].as_str().unwrap().to_owned())
        .collect();
    actions.reverse();
    actions
}

#[tokio::test]
async fn a_freeze_that_begins_mid_rollout_holds_it_before_its_next_phase_until_it_ends() {
    let (db, server, receiver) = start().await;
    let (status, body) = roll_out(&server, "1.0.0", json!({})).await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    soaking(&server, &id).await;

    // The preview, before the window exists: it would hold this rollout, and of the last 30
    // days' rollouts (this one) it would have refused none, since it began before the window.
    let (status, preview) = server
        .post(
            "/api/v1/apps/shop/freeze-windows/preview",
            &window("code freeze", 0, 6_000),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{preview}");
    assert_eq!(preview["on_now"], true, "{preview}");
    assert_eq!(preview["in_flight"][0]["id"], id.as_str(), "{preview}");
    assert_eq!(
        (
            preview["last_30_days_total"].as_i64(),
            preview["last_30_days_blocked"].as_i64()
        ),
        (Some(1), Some(0)),
        "{preview}"
    );
    assert_eq!(
        preview["next"].as_array().map(Vec::len),
        Some(1),
        "{preview}"
    );

    // The window begins while the first phase soaks, for six seconds.
    let (status, created) = server
        .post(
            "/api/v1/apps/shop/freeze-windows",
            &window("code freeze", 0, 6_000),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{created}");
    let ends = at(&created["ends_at"]);

    let holding = held(&server, &id).await;
    let reason = holding["state_reason"].as_str().unwrap();
    assert!(
        reason.contains("“code freeze”") && reason.contains("year-end close"),
        "the hold names the window and its reason: {reason}"
    );
    assert_eq!(holding["state"], "in_progress", "{holding}");
    assert_eq!(holding["phases"][0]["state"], "succeeded", "{holding}");
    assert_eq!(holding["phases"][1]["state"], "pending", "{holding}");

    // A person's new rollout is refused meanwhile, naming the window.
    let (status, refused) = roll_out(&server, "1.1.0", json!({})).await;
    assert_eq!(status, 422, "{refused}");
    assert!(
        refused["detail"].as_str().unwrap().contains("code freeze"),
        "{refused}"
    );

    // When the window ends the rollout goes on by itself: its second phase starts after the end.
    let done = server.wait_finished(&id, LONG).await.unwrap();
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(done["state_reason"].is_null(), "{done}");
    let second = at(&done["phases"][1]["started_at"]);
    assert!(
        second >= ends,
        "phase 2 started {second}, the window ended {ends}"
    );
    let actions = actions(&server, &id).await;
    let held_at = actions.iter().position(|a| a == "rollout.held");
    let lifted_at = actions.iter().position(|a| a == "rollout.hold_lifted");
    assert!(
        matches!((held_at, lifted_at), (Some(h), Some(l)) if h < l),
        "held, then lifted: {actions:?}"
    );
    assert_eq!(
        actions.iter().filter(|a| *a == "rollout.held").count(),
        1,
        "{actions:?}"
    );

    // The window's beginning and end reached the channel, signed, once each.
    let deliveries = eventually(
        Duration::from_secs(30),
        "freeze edges announced",
        || async {
            let received = receiver.received.lock().unwrap().clone();
            Ok((received.len() >= 2).then_some(received))
        },
    )
    .await
    .unwrap();
    let events: Vec<Value> = deliveries
        .iter()
        .map(|(headers, body)| {
            let signature = headers
                .get("x-shipgate-signature")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            assert_eq!(signature, hmac_sha256(HOOK_SECRET, body), "signed");
            serde_json::from_slice(body).unwrap()
        })
        .collect();
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["freeze.began", "freeze.ended"], "{events:#?}");
    assert!(events
        .iter()
        .all(|e| e["window"] == "code freeze" && e["environment"] == "production"));
    assert_eq!(events[0]["severity"], "warning");

    drop(server);
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn an_overridden_freeze_does_not_hold_its_rollout_and_deleting_a_window_releases_held_ones() {
    let (db, server, _receiver) = start().await;
    let (status, created) = server
        .post(
            "/api/v1/apps/shop/freeze-windows",
            &window("launch", -1_000, 3_600_000),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{created}");
    let (status, body) = server
        .get("/api/v1/apps/shop/freeze-windows")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["items"][0]["on_now"], true, "{body}");

    // An admin starts a rollout despite the freeze: both phases run, never held.
    let (status, body) = roll_out(
        &server,
        "1.0.0",
        json!({ "override_freeze": { "reason": "hotfix for the launch" } }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let done = server
        .wait_finished(body["id"].as_str().unwrap(), LONG)
        .await
        .unwrap();
    assert_eq!(done["state"], "succeeded", "{done}");
    let actions = actions(&server, done["id"].as_str().unwrap()).await;
    assert!(!actions.iter().any(|a| a == "rollout.held"), "{actions:?}");

    // Without the window a rollout starts; a new hour-long window holds it; deleting the window
    // lets it go on at once (not at the end of the hour).
    let client = reqwest::Client::new();
    let delete = |id: String| {
        let client = client.clone();
        let url = server.at(&format!("/api/v1/apps/shop/freeze-windows/{id}"));
        async move {
            client
                .delete(url)
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(
        delete(created["id"].as_str().unwrap().to_owned()).await,
        204
    );
    let (status, body) = roll_out(&server, "2.0.0", json!({})).await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    soaking(&server, &id).await;
    let (status, created) = server
        .post(
            "/api/v1/apps/shop/freeze-windows",
            &window("incident", 0, 3_600_000),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{created}");
    held(&server, &id).await;
    let deleted = Instant::now();
    assert_eq!(
        delete(created["id"].as_str().unwrap().to_owned()).await,
        204
    );
    let done = server.wait_finished(&id, LONG).await.unwrap();
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(
        deleted.elapsed() < Duration::from_secs(20),
        "released {:?} after the delete",
        deleted.elapsed()
    );
    assert_eq!(
        delete(created["id"].as_str().unwrap().to_owned()).await,
        404
    );
    // Whether or not the scheduler saw the deleted window begin, its end matches: announced
    // once if its beginning was.
    let (_, events) = server
        .get("/api/v1/events?app=shop&limit=200")
        .await
        .unwrap();
    let edges = |action: &str| {
        events["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == action && e["details"]["window"] == "incident")
            .count()
    };
    assert_eq!(edges("freeze.began"), edges("freeze.ended"), "{events}");
    assert!(edges("freeze.ended") <= 1, "{events}");

    drop(server);
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn bad_windows_are_refused_naming_the_field_and_weekly_ones_list_their_next_occurrences() {
    let (db, server, _receiver) = start().await;
    let cases = [
        (json!({ "name": "x" }), "starts_at"),
        (
            json!({ "name": "x", "starts_at": "2026-12-24T00:00:00Z" }),
            "ends_at",
        ),
        (
            json!({ "name": "x", "starts_at": "2026-12-24T00:00:00Z", "ends_at": "2026-12-23T00:00:00Z" }),
            "end after it starts",
        ),
        (
            json!({ "name": "x", "weekly": "Fri 18:00-Mon 08:00", "time_zone": "Mars/Olympus" }),
            "IANA",
        ),
        (json!({ "name": "x", "weekly": "Friday evening" }), "weekly"),
        (
            json!({ "name": "  ", "weekly": "Fri 18:00-Mon 08:00" }),
            "name",
        ),
        (
            json!({ "name": "x", "weekly": "Fri 18:00-Mon 08:00", "blocks_manual": false, "blocks_automation": false }),
            "block",
        ),
    ];
    for (request, expected) in cases {
        let (status, body) = server
            .post("/api/v1/apps/shop/freeze-windows", &request)
            .await
            .unwrap();
        assert_eq!(status, 422, "{request}: {body}");
        let text = body.to_string();
        assert!(text.contains(expected), "{request}: {body}");
    }
    let (status, body) = server
        .get("/api/v1/apps/shop/freeze-windows")
        .await
        .unwrap();
    assert_eq!(
        (status, body["items"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{body}"
    );

    let (status, created) = server
        .post(
            "/api/v1/apps/shop/freeze-windows",
            &json!({ "name": "weekends", "weekly": "Fri 18:00-Mon 08:00", "time_zone": "Europe/Berlin",
                     "blocks_manual": false }),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["environment"], Value::Null, "app-wide: {created}");
    let (_, body) = server
        .get("/api/v1/apps/shop/freeze-windows")
        .await
        .unwrap();
    let next = body["items"][0]["next"].as_array().unwrap();
    assert_eq!(next.len(), 3, "{body}");
    for occurrence in next {
        let (starts, ends) = (at(&occurrence["starts_at"]), at(&occurrence["ends_at"]));
        assert_eq!(
            starts
                .with_timezone(&chrono_tz::Europe::Berlin)
                .format("%a %H:%M")
                .to_string(),
            "Fri 18:00"
        );
        assert_eq!(
            ends.with_timezone(&chrono_tz::Europe::Berlin)
                .format("%a %H:%M")
                .to_string(),
            "Mon 08:00"
        );
    }
    drop(server);
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn the_dashboard_previews_and_creates_a_weekly_window_in_a_time_zone() {
    let (db, server, _receiver) = start().await;
    let (status, body) = server
        .post(
            "/api/v1/users",
            &json!({ "username": "dee", "password": "correct horse battery", "role": "deployer" }),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    let client = server
        .sign_in(&[("username", "dee"), ("password", "correct horse battery")])
        .await
        .unwrap();
    let page = client
        .get(server.at("/apps/shop/freezes"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = csrf_of(&page);
    let form = |action: &'static str, zone: &'static str| {
        vec![
            ("csrf", csrf.clone()),
            ("action", action.to_owned()),
            ("name", "weekends".to_owned()),
            ("environment", "production".to_owned()),
            ("kind", "weekly".to_owned()),
            ("weekly", "Fri 18:00-Mon 08:00".to_owned()),
            ("time_zone", zone.to_owned()),
            ("reason", "nobody on call".to_owned()),
            ("blocks_automation", "on".to_owned()),
            ("allows_rollback", "on".to_owned()),
        ]
    };

    // The preview lists the next weekends in UTC (17:00 or 16:00 from Berlin, by the season)
    // and keeps the form as filled; nothing is created.
    let response = client
        .post(server.at("/apps/shop/freezes"))
        .form(&form("preview", "Europe/Berlin"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let preview = response.text().await.unwrap();
    assert!(
        preview.contains("Preview: what “weekends” would block"),
        "{preview}"
    );
    assert!(
        preview.contains("weekly Fri 18:00-Mon 08:00 (Europe/Berlin)"),
        "{preview}"
    );
    assert!(
        preview.contains("It blocks automatic rollouts; rollbacks still run"),
        "{preview}"
    );
    assert_eq!(
        preview.matches("<li>Fri ").count(),
        5,
        "five weekends: {preview}"
    );
    assert!(
        preview.contains(r#"value="Europe/Berlin""#),
        "the form is kept"
    );
    let (_, listed) = server
        .get("/api/v1/apps/shop/freeze-windows")
        .await
        .unwrap();
    assert_eq!(
        listed["items"].as_array().map(Vec::len),
        Some(0),
        "{listed}"
    );

    // A zone that does not exist is refused, saying so; then the window is created.
    let response = client
        .post(server.at("/apps/shop/freezes"))
        .form(&form("create", "Europe/Atlantis"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    assert!(response
        .text()
        .await
        .unwrap()
        .contains("not an IANA time zone"));
    let response = client
        .post(server.at("/apps/shop/freezes"))
        .form(&form("create", "Europe/Berlin"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    let (_, listed) = server
        .get("/api/v1/apps/shop/freeze-windows")
        .await
        .unwrap();
    let window = &listed["items"][0];
    assert_eq!(
        (
            window["kind"].as_str(),
            window["time_zone"].as_str(),
            window["blocks_manual"].as_bool(),
            window["blocks_automation"].as_bool(),
            window["created_by"].as_str(),
        ),
        (
            Some("weekly"),
            Some("Europe/Berlin"),
            Some(false),
            Some(true),
            Some("user:dee")
        ),
        "{listed}"
    );
    drop(server);
    db.drop_database().await.unwrap();
}
