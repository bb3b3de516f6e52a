//! Environment policies, enforced wherever a rollout starts: the promotion rule (a release
//! enters production only after it succeeded and soaked in staging) and freeze windows (which
//! block people, automation or rollbacks as they say, unless an admin overrides them with a
//! reason). Driven through the real binary over HTTP, the CLI and signed webhooks.

use std::time::Duration;

use serde_json::{json, Value};
use shipgate_testkit::{eventually, Server, TestDb, ADMIN_TOKEN};

const BINARY: &str = env!("CARGO_BIN_EXE_shipgate");
const SECRET: &str = "policies-webhook-secret-0123456789";
const LONG: Duration = Duration::from_secs(60);

/// `staging` deploys pushes to `main` (versions `*-broken` fail there); `production` takes
/// releases under `promotion` (a YAML line, or nothing) and deploys with `latency`.
fn config(promotion: &str, latency: &str) -> String {
    format!(
        r#"
app: shop
repository: acme/shop
webhook_secret: "{SECRET}"
components: [web]
environments:
  - name: staging
    auto_deploy: {{ branch: main }}
    targets:
      web: {{ provider: simulated, latency: 50ms, fail_deploy: "*-broken" }}
    plan: &plan
      - name: all
        deploy: [web]
  - name: production
    {promotion}
    targets:
      web: {{ provider: simulated, latency: {latency} }}
    plan: *plan
"#
    )
}

async fn start(promotion: &str, latency: &str) -> (TestDb, Server) {
    let db = TestDb::new().await.unwrap();
    let server = Server::start(BINARY, &db.url, &[]).unwrap();
    let (status, body) = server
        .apply("shop", &config(promotion, latency))
        .await
        .unwrap();
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
    assert!(status == 201 || status == 200, "release {version}: {body}");
}

/// POSTs a rollout of `version` into `environment` as the admin: (status, body).
async fn roll_out(server: &Server, environment: &str, version: &str) -> (u16, Value) {
    server
        .post(
            &format!("/api/v1/apps/shop/environments/{environment}/rollouts"),
            &json!({ "release": version }),
        )
        .await
        .unwrap()
}

/// Deploys `version` to `environment` and waits until it succeeded.
async fn ship(server: &Server, environment: &str, version: &str) -> Value {
    release(server, version).await;
    let (status, body) = roll_out(server, environment, version).await;
    assert_eq!(status, 201, "{version} into {environment}: {body}");
    let done = server
        .wait_finished(body["id"].as_str().unwrap(), LONG)
        .await
        .unwrap();
    assert_eq!(done["state"], "succeeded", "{done}");
    done
}

fn detail(body: &Value) -> &str {
    body["detail"].as_str().unwrap_or_default()
}

/// Inserts a freeze window as the dashboard's freeze page stores one.
struct Freeze<'a> {
    name: &'a str,
    environment: Option<&'a str>,
    /// `None`: a one-off window from a minute ago to an hour from now.
    weekly: Option<(Value, &'a str)>,
    blocks_manual: bool,
    blocks_automation: bool,
    allows_rollback: bool,
}

impl Freeze<'_> {
    async fn insert(&self, db: &TestDb) {
        let (kind, weekly, zone) = match &self.weekly {
            Some((weekly, zone)) => ("weekly", Some(weekly.clone()), *zone),
            None => ("one_off", None, "UTC"),
        };
        sqlx::query(
            "insert into freeze_windows (id, app_id, environment_id, name, kind, starts_at, ends_at,
                                         weekly, time_zone, blocks_manual, blocks_automation,
                                         allows_rollback, reason, created_by)
             select gen_random_uuid(), a.id, e.id, $2, $3,
                    case when $3 = 'one_off' then now() - interval '1 minute' end,
                    case when $3 = 'one_off' then now() + interval '1 hour' end,
                    $4, $5, $6, $7, $8, 'release week', 'user:ops'
               from apps a left join environments e on e.app_id = a.id and e.name = $1
              where a.name = 'shop'",
        )
        .bind(self.environment)
        .bind(self.name)
        .bind(kind)
        .bind(weekly)
        .bind(zone)
        .bind(self.blocks_manual)
        .bind(self.blocks_automation)
        .bind(self.allows_rollback)
        .execute(&db.pool)
        .await
        .unwrap();
    }
}

/// The CLI's `deploy`, as CI runs it.
async fn cli_deploy(server: &Server, environment: &str, version: &str) -> (Option<i32>, String) {
    let output = tokio::process::Command::new(BINARY)
        .args([
            "deploy",
            "--app",
            "shop",
            "--env",
            environment,
            "--release",
            version,
        ])
        .env("SHIPGATE_URL", &server.url)
        .env("SHIPGATE_TOKEN", ADMIN_TOKEN)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_release_enters_production_only_after_it_succeeded_and_soaked_in_staging() {
    let (db, server) = start("promotion: { from: staging, soak: 5s }", "50ms").await;

    // Not yet in staging: refused over the API and the CLI, saying where it must succeed.
    release(&server, "1.0.0").await;
    let (status, body) = roll_out(&server, "production", "1.0.0").await;
    assert_eq!(status, 422, "{body}");
    assert!(
        detail(&body).contains("must succeed in staging before it may enter production"),
        "{body}"
    );
    let (code, stderr) = cli_deploy(&server, "production", "1.0.0").await;
    assert_eq!(code, Some(6), "{stderr}");
    assert!(stderr.contains("must succeed in staging"), "{stderr}");

    // A release that failed in staging has not succeeded there.
    release(&server, "1.1.0-broken").await;
    let (status, body) = roll_out(&server, "staging", "1.1.0-broken").await;
    assert_eq!(status, 201, "{body}");
    let failed = server
        .wait_finished(body["id"].as_str().unwrap(), LONG)
        .await
        .unwrap();
    assert_ne!(failed["state"], "succeeded", "{failed}");
    let (status, body) = roll_out(&server, "production", "1.1.0-broken").await;
    assert_eq!(status, 422, "{body}");
    assert!(detail(&body).contains("must succeed in staging"), "{body}");

    // Succeeded in staging, but still soaking: refused with what is left.
    ship(&server, "staging", "1.0.0").await;
    let (status, body) = roll_out(&server, "production", "1.0.0").await;
    assert_eq!(status, 422, "{body}");
    assert!(
        detail(&body).contains("must soak there for 5s") && detail(&body).contains("left"),
        "{body}"
    );

    // Once soaked, it goes in.
    let id = eventually(Duration::from_secs(20), "the soak to end", || async {
        let (status, body) = roll_out(&server, "production", "1.0.0").await;
        match status {
            201 => Ok(Some(body["id"].as_str().unwrap().to_owned())),
            422 => Ok(None),
            other => panic!("{other}: {body}"),
        }
    })
    .await
    .unwrap();
    let done = server.wait_finished(&id, LONG).await.unwrap();
    assert_eq!(done["state"], "succeeded", "{done}");
    let (_, production) = server
        .get("/api/v1/apps/shop/environments/production")
        .await
        .unwrap();
    assert_eq!(production["current_release"], "1.0.0");
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn during_a_freeze_a_rollback_of_production_runs_but_a_deploy_is_refused_naming_the_window() {
    let (db, server) = start("", "50ms").await;
    ship(&server, "production", "1.0.0").await;
    ship(&server, "production", "1.1.0").await;
    Freeze {
        name: "year-end freeze",
        environment: Some("production"),
        weekly: None,
        blocks_manual: true,
        blocks_automation: true,
        allows_rollback: true,
    }
    .insert(&db)
    .await;

    release(&server, "1.2.0").await;
    let (status, body) = roll_out(&server, "production", "1.2.0").await;
    assert_eq!(status, 422, "{body}");
    assert!(
        detail(&body).contains("frozen by the freeze window “year-end freeze” (release week)"),
        "{body}"
    );
    let (code, stderr) = cli_deploy(&server, "production", "1.2.0").await;
    assert_eq!(code, Some(6), "{stderr}");
    assert!(stderr.contains("year-end freeze"), "{stderr}");
    // The window covers production only.
    ship(&server, "staging", "1.2.0").await;

    // A rollback still runs.
    let (status, body) = server
        .post(
            "/api/v1/apps/shop/environments/production/rollback",
            &json!({ "reason": "checkout errors" }),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    let done = server
        .wait_finished(body["id"].as_str().unwrap(), LONG)
        .await
        .unwrap();
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["release"], "1.0.0");

    // A window that does not allow rollbacks stops them too.
    sqlx::query("update freeze_windows set allows_rollback = false")
        .execute(&db.pool)
        .await
        .unwrap();
    let (status, body) = server
        .post(
            "/api/v1/apps/shop/environments/production/rollback",
            &json!({ "reason": "again", "to_release": "1.1.0" }),
        )
        .await
        .unwrap();
    assert_eq!(status, 422, "{body}");
    assert!(
        detail(&body).contains("“year-end freeze”") && detail(&body).contains("rollbacks"),
        "{body}"
    );
    let (_, production) = server
        .get("/api/v1/apps/shop/environments/production")
        .await
        .unwrap();
    assert_eq!(production["current_release"], "1.0.0");
    db.drop_database().await.unwrap();
}

fn sign(body: &[u8]) -> String {
    shipgate_testkit::hmac_sha256(SECRET, body)
}

/// CI announces a build of `main` through the signed generic hook: (status, body).
async fn announce(server: &Server, delivery: &str, version: &str) -> (u16, Value) {
    let body = json!({
        "version": version, "git_ref": "refs/heads/main",
        "artifacts": { "web": format!("web:{version}") },
    })
    .to_string()
    .into_bytes();
    let response = reqwest::Client::new()
        .post(server.at("/hooks/generic/shop"))
        .header("content-type", "application/json")
        .header("x-shipgate-delivery", delivery)
        .header("x-shipgate-signature", sign(&body))
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_weekly_freeze_holds_pushes_only_when_it_blocks_automation() {
    let (db, server) = start("", "50ms").await;
    // Every day, all day, in Berlin: on whenever the test runs.
    Freeze {
        name: "people-only freeze",
        environment: None,
        weekly: Some((
            json!({ "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                    "start": "00:00", "end": "24:00" }),
            "Europe/Berlin",
        )),
        blocks_manual: true,
        blocks_automation: false,
        allows_rollback: true,
    }
    .insert(&db)
    .await;

    // A push still deploys; a person's deploy does not.
    let (status, body) = announce(&server, "ci-1", "2.0.0").await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["verdict"], "deployed", "{body}");
    let done = server
        .wait_finished(body["rollouts"][0].as_str().unwrap(), LONG)
        .await
        .unwrap();
    assert_eq!(done["state"], "succeeded", "{done}");
    let (status, body) = roll_out(&server, "production", "2.0.0").await;
    assert_eq!(status, 422, "{body}");
    assert!(detail(&body).contains("“people-only freeze”"), "{body}");

    // Once the window blocks automation too, the next push makes its release and deploys
    // nothing, saying why.
    sqlx::query("update freeze_windows set blocks_automation = true")
        .execute(&db.pool)
        .await
        .unwrap();
    let (status, body) = announce(&server, "ci-2", "2.1.0").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["verdict"], "refused", "{body}");
    assert_eq!(body["rollouts"], json!([]));
    let reason = body["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("“people-only freeze”") && reason.contains("automatic rollouts"),
        "{body}"
    );
    let (_, staging) = server
        .get("/api/v1/apps/shop/environments/staging")
        .await
        .unwrap();
    assert_eq!(staging["current_release"], "2.0.0");
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn an_admin_overrides_a_freeze_with_a_reason_that_is_audited_and_a_deployer_may_not() {
    let (db, server) = start("", "50ms").await;
    Freeze {
        name: "launch freeze",
        environment: Some("production"),
        weekly: None,
        blocks_manual: true,
        blocks_automation: true,
        allows_rollback: true,
    }
    .insert(&db)
    .await;
    release(&server, "3.0.0").await;
    let (status, body) = server
        .post(
            "/api/v1/tokens",
            &json!({ "name": "ci", "scopes": ["deploy"] }),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    let deployer = body["token"].as_str().unwrap().to_owned();
    let path = "/api/v1/apps/shop/environments/production/rollouts";
    let overriding = json!({ "release": "3.0.0", "override_freeze": { "reason": "security fix" } });

    // A deploy token may not override.
    let response = reqwest::Client::new()
        .post(server.at(path))
        .bearer_auth(&deployer)
        .json(&overriding)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
    let body: Value = response.json().await.unwrap();
    assert!(detail(&body).contains("admin"), "{body}");

    // An admin must say why.
    let (status, body) = server
        .post(
            path,
            &json!({ "release": "3.0.0", "override_freeze": { "reason": " " } }),
        )
        .await
        .unwrap();
    assert_eq!(status, 422, "{body}");

    // An admin with a reason gets through, and the audit log says who, why and which window.
    let (status, body) = server.post(path, &overriding).await.unwrap();
    assert_eq!(status, 201, "{body}");
    let done = server
        .wait_finished(body["id"].as_str().unwrap(), LONG)
        .await
        .unwrap();
    assert_eq!(done["state"], "succeeded", "{done}");
    let (_, events) = server.get("/api/v1/events?app=shop").await.unwrap();
    let overridden: Vec<&Value> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| event["action"] == "freeze.overridden")
        .collect();
    assert_eq!(overridden.len(), 1, "{events}");
    assert_eq!(overridden[0]["details"]["reason"], "security fix");
    assert_eq!(
        overridden[0]["details"]["windows"],
        json!(["launch freeze"])
    );
    assert_eq!(overridden[0]["rollout_id"], body["id"]);
    assert_eq!(overridden[0]["environment"], "production");

    // The window still holds for everyone else.
    release(&server, "3.0.1").await;
    let (status, body) = roll_out(&server, "production", "3.0.1").await;
    assert_eq!(status, 422, "{body}");
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn two_promotions_racing_for_production_leave_one_running_and_one_queued() {
    let (db, server) = start("promotion: { from: staging, soak: 1s }", "1500ms").await;
    ship(&server, "staging", "4.0.0").await;
    ship(&server, "staging", "4.1.0").await;
    // Let the one-second soak pass.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let (first, second) = tokio::join!(
        roll_out(&server, "production", "4.0.0"),
        roll_out(&server, "production", "4.1.0"),
    );
    assert_eq!(first.0, 201, "{}", first.1);
    assert_eq!(second.0, 201, "{}", second.1);
    let mut states = [
        first.1["state"].as_str().unwrap(),
        second.1["state"].as_str().unwrap(),
    ];
    states.sort_unstable();
    assert_eq!(
        states,
        ["in_progress", "queued"],
        "{} {}",
        first.1,
        second.1
    );
    let (_, production) = server
        .get("/api/v1/apps/shop/environments/production")
        .await
        .unwrap();
    assert_eq!(
        production["queued"].as_array().unwrap().len(),
        1,
        "{production}"
    );

    // The queued one runs after the first has finished, never alongside it.
    let (running, queued) = if first.1["state"] == "queued" {
        (&second.1, &first.1)
    } else {
        (&first.1, &second.1)
    };
    let running = server
        .wait_finished(running["id"].as_str().unwrap(), LONG)
        .await
        .unwrap();
    let queued = server
        .wait_finished(queued["id"].as_str().unwrap(), LONG)
        .await
        .unwrap();
    assert_eq!(running["state"], "succeeded", "{running}");
    assert_eq!(queued["state"], "succeeded", "{queued}");
    let time = |value: &Value| {
        value
            .as_str()
            .unwrap()
            .parse::<chrono::DateTime<chrono::Utc>>()
            .unwrap()
    };
    assert!(
        time(&queued["started_at"]) >= time(&running["finished_at"]),
        "{running} {queued}"
    );
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn rolling_back_a_forward_only_release_asks_for_confirmation_and_records_it() {
    let (db, server) = start("", "50ms").await;
    ship(&server, "staging", "1.0.0").await;
    // 2.0.0 ran a migration the older release cannot undo.
    let (status, body) = server
        .post(
            "/api/v1/apps/shop/releases",
            &json!({ "version": "2.0.0", "artifacts": { "web": "web:2.0.0" },
                     "forward_only": true }),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    let (status, body) = roll_out(&server, "staging", "2.0.0").await;
    assert_eq!(status, 201, "{body}");
    let done = server
        .wait_finished(body["id"].as_str().unwrap(), LONG)
        .await
        .unwrap();
    assert_eq!(done["state"], "succeeded", "{done}");

    let path = "/api/v1/apps/shop/environments/staging/rollback";
    let (status, problem) = server
        .post(path, &json!({ "reason": "checkout errors" }))
        .await
        .unwrap();
    assert_eq!(status, 422, "{problem}");
    assert!(
        detail(&problem).contains("2.0.0 is forward_only"),
        "{problem}"
    );
    assert!(
        detail(&problem).contains("confirm_forward_only"),
        "{problem}"
    );
    let (_, rollbacks) = server
        .get("/api/v1/apps/shop/environments/staging/rollbacks")
        .await
        .unwrap();
    assert_eq!(
        rollbacks["items"].as_array().map(Vec::len),
        Some(0),
        "{rollbacks}"
    );

    let (status, rollback) = server
        .post(
            path,
            &json!({ "reason": "checkout errors", "confirm_forward_only": true }),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{rollback}");
    let id = rollback["id"].as_str().unwrap();
    let finished = server.wait_finished(id, LONG).await.unwrap();
    assert_eq!(finished["state"], "succeeded", "{finished}");
    assert_eq!(finished["release"], "1.0.0");
    let (_, events) = server
        .get(&format!("/api/v1/events?rollout={id}"))
        .await
        .unwrap();
    let started = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|event| event["action"] == "rollback.started")
        .expect("a rollback.started event");
    assert_eq!(
        started["details"]["forward_only_release"], "2.0.0",
        "{started}"
    );
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn a_migration_job_with_a_down_step_is_undone_first_when_its_release_is_rolled_back() {
    let db = TestDb::new().await.unwrap();
    let server = Server::start(BINARY, &db.url, &[]).unwrap();
    let config = r#"
app: shop
components: [web]
environments:
  - name: staging
    targets:
      web: { provider: simulated, latency: 50ms, unhealthy: "*-sick" }
    plan:
      - name: migrate
        job: { component: web, command: "bin/migrate up", down: "bin/migrate down" }
      - name: web
        deploy: [web]
        gates:
          - health: { interval: 200ms, timeout: 1s, failures: 2 }
        on_failure: rollback
"#;
    let (status, body) = server.apply("shop", config).await.unwrap();
    assert_eq!(status, 201, "{body}");
    ship(&server, "staging", "1.0.0").await;
    release(&server, "1.1.0-sick").await;
    let (status, body) = roll_out(&server, "staging", "1.1.0-sick").await;
    assert_eq!(status, 201, "{body}");
    let sick = server
        .wait_finished(body["id"].as_str().unwrap(), LONG)
        .await
        .unwrap();
    assert_eq!(sick["state"], "rolled_back", "{sick}");
    let rollback = server
        .wait_finished(sick["rolled_back_by"].as_str().unwrap(), LONG)
        .await
        .unwrap();
    assert_eq!(rollback["state"], "succeeded", "{rollback}");
    let steps: Vec<(String, String)> = rollback["phases"][0]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|step| {
            (
                step["kind"].as_str().unwrap().to_owned(),
                step["description"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("job".to_owned(), "run `bin/migrate down` on web".to_owned()),
            ("rollback".to_owned(), "roll back web".to_owned()),
        ],
        "the down migration runs before the old code returns: {rollback}"
    );
    db.drop_database().await.unwrap();
}
