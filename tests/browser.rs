//! Browser tests: the real `shipgate` binary on port 0, driven through the dashboard by a real
//! headless Chromium (Debian's `chromium` and `chromium-driver`; `.ci/install-browser.sh`
//! installs them) over the W3C WebDriver protocol. A person signs in, watches a rollout
//! progress live (the page updates through server-sent events without reloading), approves
//! its gate, rolls it back from the UI and finds the rollback in the history. Every page's
//! screenshot is saved under `target/screenshots/`.
//!
//! The WebDriver client is the handful of commands these tests use, spoken with the `reqwest`
//! the other tests already use.

use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use serde_json::{json, Value};
use shipgate_testkit::{csrf_of, eventually, Server, TestDb};

const BINARY: &str = env!("CARGO_BIN_EXE_shipgate");
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// The W3C name of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn screenshots() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/screenshots")
}

/// A chromedriver process on a free port, stopped when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    async fn start() -> Result<Self> {
        if !Path::new(CHROMEDRIVER).exists() || !Path::new(CHROMIUM).exists() {
            bail!(
                "{CHROMEDRIVER} or {CHROMIUM} is missing: the browser tests need Debian's chromium and \
                 chromium-driver. Install them with `apt-get install -y chromium chromium-driver` \
                 (or run .ci/install-browser.sh)"
            );
        }
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        // In a process group of its own, with the browsers it starts, so that dropping the
        // driver (even while a failed assertion unwinds) stops them all.
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("starting chromedriver")?;
        let driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let http = reqwest::Client::new();
        eventually(
            Duration::from_secs(30),
            "chromedriver to be ready",
            || async {
                let ready = match http.get(format!("{}/status", driver.url)).send().await {
                    Ok(response) => response.json::<Value>().await.ok(),
                    Err(_) => None,
                };
                Ok(ready.filter(|status| status["value"]["ready"] == true))
            },
        )
        .await?;
        Ok(driver)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The whole group: chromedriver and every browser it launched. Not `kill -KILL -PGID`:
        // procps's kill reads a negative id starting with 1 (`-19870`) as `-1`, every process
        // the caller may signal, and took down the whole machine's session.
        let _ = Command::new("pkill")
            .args(["-KILL", "-g", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One browser session.
struct Browser {
    http: reqwest::Client,
    base: String,
    /// Where the Shipgate server listens.
    site: String,
}

impl Browser {
    async fn open(driver: &Driver, site: &str) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?;
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--disable-background-networking", "--disable-extensions", "--no-first-run",
                         "--window-size=1280,1000"]
            }
        }}});
        let answer: Value = http
            .post(format!("{}/session", driver.url))
            .json(&capabilities)
            .send()
            .await?
            .json()
            .await?;
        let id = answer["value"]["sessionId"]
            .as_str()
            .with_context(|| format!("no session from chromedriver: {answer}"))?;
        Ok(Browser {
            base: format!("{}/session/{id}", driver.url),
            http,
            site: site.to_owned(),
        })
    }

    async fn command(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request.send().await?.json().await?;
        if let Some(error) = answer["value"]["error"].as_str() {
            bail!("webdriver {path}: {error}: {}", answer["value"]["message"]);
        }
        Ok(answer["value"].clone())
    }

    async fn go(&self, path: &str) -> Result<()> {
        let url = format!("{}{path}", self.site);
        self.command(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await?;
        Ok(())
    }

    async fn find(&self, css: &str) -> Result<String> {
        let found = self
            .command(
                reqwest::Method::POST,
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await
            .with_context(|| format!("finding `{css}`"))?;
        Ok(found[ELEMENT].as_str().context("no element id")?.to_owned())
    }

    async fn click(&self, css: &str) -> Result<()> {
        let element = self.find(css).await?;
        self.command(
            reqwest::Method::POST,
            &format!("/element/{element}/click"),
            Some(json!({})),
        )
        .await?;
        Ok(())
    }

    /// Clicks a submit button and waits for the page the form leads to.
    async fn submit(&self, css: &str) -> Result<()> {
        self.script("window.__shipgateBeforeSubmit = true; return true")
            .await?;
        self.click(css).await?;
        self.until(
            "the next page",
            Duration::from_secs(20),
            "!window.__shipgateBeforeSubmit && document.readyState === 'complete'",
        )
        .await
    }

    async fn type_into(&self, css: &str, text: &str) -> Result<()> {
        let element = self.find(css).await?;
        self.command(
            reqwest::Method::POST,
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        )
        .await?;
        Ok(())
    }

    async fn script(&self, script: &str) -> Result<Value> {
        self.command(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
        .await
    }

    async fn text(&self) -> Result<String> {
        Ok(self
            .script("return document.body.innerText")
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    async fn path(&self) -> Result<String> {
        Ok(self
            .script("return location.pathname")
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// Saves a screenshot of the whole page (the window grows to the page's height first).
    async fn screenshot(&self, name: &str) -> Result<()> {
        let height = self
            .script("return Math.ceil(document.documentElement.scrollHeight)")
            .await?
            .as_u64()
            .unwrap_or(1000)
            .clamp(600, 6000);
        self.command(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({ "width": 1280, "height": height + 120 })),
        )
        .await?;
        let data = self
            .command(reqwest::Method::GET, "/screenshot", None)
            .await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().context("no screenshot data")?)?;
        std::fs::create_dir_all(screenshots())?;
        std::fs::write(screenshots().join(format!("{name}.png")), png)?;
        Ok(())
    }

    /// Waits until `script` (a JS expression) is truthy, without touching the page.
    async fn until(&self, what: &str, limit: Duration, expression: &str) -> Result<()> {
        let started = Instant::now();
        loop {
            if self.script(&format!("return !!({expression})")).await? == Value::Bool(true) {
                return Ok(());
            }
            if started.elapsed() > limit {
                bail!(
                    "timed out after {limit:?} waiting for {what}; the page says:\n{}",
                    self.text().await.unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    async fn close(self) {
        let _ = self.command(reqwest::Method::DELETE, "", None).await;
    }
}

/// Two environments; staging's last phase waits for a person's approval.
fn config() -> String {
    r#"
app: shop
repository: acme/shop
components: [web, api]
environments:
  - name: staging
    targets: &targets
      web: { provider: simulated, latency: 400ms, unhealthy: "*-sick" }
      api: { provider: simulated, latency: 400ms, unhealthy: "*-sick" }
    plan:
      - name: backend
        deploy: [api]
        gates:
          - health: { components: [api], interval: 300ms, timeout: 1s, failures: 2, successes: 3 }
        on_failure: rollback
      - name: web
        deploy: [web]
        gates:
          - health: { components: [web], interval: 300ms, timeout: 1s, failures: 2, successes: 2 }
        on_failure: rollback
      - name: sign-off
        config: { api: { ENABLE_OCR: "true" } }
        gates: [ { approval: { required: 1 } } ]
        on_failure: pause
  - name: production
    promotion: { from: staging, soak: 1h }
    approvals: { required: 1 }
    targets: *targets
    plan:
      - name: all
        deploy: [api, web]
        gates: [ { soak: 300ms } ]
        on_failure: rollback
"#
    .to_owned()
}

async fn release(server: &Server, version: &str) {
    let (status, body) = server
        .post(
            "/api/v1/apps/shop/releases",
            &json!({ "version": version, "git_sha": "0123456789abcdef0123456789abcdef01234567",
                     "artifacts": { "web": format!("web:{version}"), "api": format!("api:{version}") } }),
        )
        .await
        .unwrap();
    assert!(status == 201 || status == 200, "release {version}: {body}");
}

async fn start(server: &Server, version: &str) -> String {
    release(server, version).await;
    let (status, body) = server
        .post(
            "/api/v1/apps/shop/environments/staging/rollouts",
            &json!({ "release": version }),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_person_watches_a_rollout_live_approves_it_rolls_it_back_and_finds_it_in_the_history() {
    let driver = Driver::start().await.unwrap();
    let db = TestDb::new().await.unwrap();
    let server = Server::start(BINARY, &db.url, &[]).unwrap();
    let (status, body) = server.apply("shop", &config()).await.unwrap();
    assert_eq!(status, 201, "{body}");
    let (status, body) = server
        .post(
            "/api/v1/users",
            &json!({ "username": "ana", "password": "correct horse battery", "role": "approver" }),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");

    // A first release goes live (approved over the API), so there is something to roll back to.
    let first = start(&server, "1.0.0").await;
    eventually(
        Duration::from_secs(60),
        "the first approval gate",
        || async {
            let (_, body) = server.get(&format!("/api/v1/rollouts/{first}")).await?;
            Ok((body["phases"][2]["state"] == "verifying").then_some(()))
        },
    )
    .await
    .unwrap();
    let (status, body) = server
        .post(&format!("/api/v1/rollouts/{first}/approve"), &json!({}))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    server
        .wait_finished(&first, Duration::from_secs(60))
        .await
        .unwrap();

    let browser = Browser::open(&driver, &server.url).await.unwrap();
    let result = async {
        // Sign in.
        browser.go("/login").await?;
        browser.screenshot("01-sign-in").await?;
        browser.type_into("#username", "ana").await?;
        browser.type_into("#password", "correct horse battery").await?;
        browser.submit("form[action='/login'] button[type=submit]").await?;
        browser
            .until("the overview", Duration::from_secs(10), "location.pathname === '/' && document.querySelector('#live-apps')")
            .await?;
        assert!(browser.text().await?.contains("1.0.0"));
        browser.screenshot("02-overview").await?;

        // Watch a rollout progress live: the page is not reloaded (a marker set on it survives)
        // while the timeline moves on through server-sent events.
        let second = start(&server, "2.0.0").await;
        browser.go(&format!("/rollouts/{second}")).await?;
        browser
            .until("live updates to connect", Duration::from_secs(10), "document.documentElement.getAttribute('data-live') === 'on'")
            .await?;
        browser.script("window.__stillTheSamePage = true; return true").await?;
        browser.screenshot("03-rollout-starting").await?;
        browser
            .until(
                "the first phase to succeed, live",
                Duration::from_secs(60),
                "document.querySelector('#live-summary .phases li.phase-succeeded')",
            )
            .await?;
        browser
            .until(
                "the approval gate to open, live",
                Duration::from_secs(60),
                "document.querySelector('#action-approve')",
            )
            .await?;
        assert_eq!(
            browser.script("return window.__stillTheSamePage === true").await?,
            Value::Bool(true),
            "the rollout page updated in place, without a reload"
        );
        browser.screenshot("04-rollout-waiting-for-approval").await?;

        // Approve the gate, with a comment; the confirm step names what will happen.
        browser.click("#action-approve summary").await?;
        let consequence = browser.text().await?;
        assert!(consequence.contains("Approving passes the approval gate of phase “sign-off”"), "{consequence}");
        browser.type_into("#comment-approve", "checked the canary").await?;
        browser.screenshot("05-approve-confirm").await?;
        browser.submit("#action-approve button[type=submit]").await?;
        browser
            .until(
                "the rollout to succeed",
                Duration::from_secs(60),
                "document.querySelector('#rollout-state') && document.querySelector('#rollout-state').dataset.state === 'succeeded'",
            )
            .await?;
        let page = browser.text().await?;
        assert!(page.contains("checked the canary"), "the approval shows with its comment");
        browser.screenshot("06-rollout-succeeded").await?;

        // Roll back from the UI.
        browser.click("#action-rollback summary").await?;
        assert!(browser.text().await?.contains("to 1.0.0 (the last known-good release)"));
        browser.type_into("#rollback-reason", "error rate doubled after 2.0.0").await?;
        browser.screenshot("07-rollback-confirm").await?;
        browser.submit("#action-rollback button[type=submit]").await?;
        browser
            .until("the rollback rollout page", Duration::from_secs(10), &format!("location.pathname.startsWith('/rollouts/') && location.pathname !== '/rollouts/{second}'"))
            .await?;
        browser
            .until(
                "the rollback to finish",
                Duration::from_secs(60),
                "document.querySelector('#rollout-state') && document.querySelector('#rollout-state').dataset.state === 'succeeded'",
            )
            .await?;
        let rollback_path = browser.path().await?;
        browser.screenshot("08-rollback-rollout").await?;

        // Find it in the history, with its reason, and tick the checklist.
        browser.go("/apps/shop/rollbacks").await?;
        let history = browser.text().await?;
        assert!(history.contains("error rate doubled after 2.0.0"), "{history}");
        assert!(history.contains("manual") && history.contains("user:ana"), "{history}");
        browser.screenshot("09-rollback-history").await?;
        let rollback_id = rollback_path.trim_start_matches("/rollouts/").to_owned();
        browser.go(&format!("/apps/shop/rollbacks/{rollback_id}")).await?;
        browser.type_into("#note", "2.0.0 doubled the error rate; rolled back in a minute.").await?;
        browser.submit(&format!("form[action='/apps/shop/rollbacks/{rollback_id}'] button")).await?;
        browser.submit("form[action$='/checklist'] button").await?;
        let checklist = browser.text().await?;
        assert!(checklist.contains("done by user:ana"), "{checklist}");
        let note = browser.script("return document.querySelector('#note').value").await?;
        assert_eq!(note, "2.0.0 doubled the error rate; rolled back in a minute.", "the note was kept");
        browser.screenshot("10-rollback-checklist").await?;

        // Every other page renders, and is kept as a screenshot.
        for (name, path, expect) in [
            ("11-pipeline", "/apps/shop", "Requires: soak in staging until"),
            ("12-releases", "/apps/shop/releases", "quarantined"),
            ("13-config", "/apps/shop/environments/staging/config", "ENABLE_OCR"),
            ("14-freezes", "/apps/shop/freezes", "New freeze window"),
            ("15-deliveries", "/apps/shop/deliveries", "No deliveries yet"),
            ("16-metrics", "/apps/shop/metrics", "Change failure rate"),
            ("17-audit", "/audit?app=shop&action=rollout.", "rollout.approved"),
        ] {
            browser.go(path).await?;
            let text = browser.text().await?;
            assert!(text.contains(expect), "{path} shows {expect}:\n{text}");
            browser.screenshot(name).await?;
        }
        // An approver is not an admin: tokens and users are refused, saying why.
        browser.go("/access").await?;
        assert!(browser.text().await?.contains("admin"));
        browser.screenshot("18-access-refused").await?;
        Ok::<(), anyhow::Error>(())
    }
    .await;
    if result.is_err() {
        let _ = browser.screenshot("failure").await;
    }
    browser.close().await;
    result.unwrap();

    // The admin sees tokens and users.
    let admin = Browser::open(&driver, &server.url).await.unwrap();
    let result = async {
        admin.go("/login").await?;
        admin.click("details summary").await?;
        admin
            .type_into("#token", shipgate_testkit::ADMIN_TOKEN)
            .await?;
        admin.submit("#token ~ button[type=submit]").await?;
        admin
            .until(
                "the overview",
                Duration::from_secs(10),
                "location.pathname === '/'",
            )
            .await?;
        admin.go("/access").await?;
        assert!(admin.text().await?.contains("ana"));
        admin.screenshot("19-access").await?;
        Ok::<(), anyhow::Error>(())
    }
    .await;
    if result.is_err() {
        let _ = admin.screenshot("failure-admin").await;
    }
    admin.close().await;
    result.unwrap();
    drop(server);
    db.drop_database().await.unwrap();
}

/// Needs no browser: the forms' protections, over plain HTTP.
#[tokio::test]
async fn dashboard_actions_need_the_csrf_token_and_the_role_and_refusals_say_why() {
    let db = TestDb::new().await.unwrap();
    let server = Server::start(BINARY, &db.url, &[]).unwrap();
    let (status, body) = server.apply("shop", &config()).await.unwrap();
    assert_eq!(status, 201, "{body}");
    let (status, body) = server
        .post(
            "/api/v1/users",
            &json!({ "username": "vic", "password": "correct horse battery", "role": "viewer" }),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    let id = start(&server, "1.0.0").await;
    let rollout = format!("/rollouts/{id}");

    // A viewer sees the rollout but no actions, and a forged or stale form is refused.
    let viewer = server
        .sign_in(&[("username", "vic"), ("password", "correct horse battery")])
        .await
        .unwrap();
    let page = viewer
        .get(server.at(&rollout))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !page.contains("action-pause") && !page.contains("action-rollback"),
        "no actions for a viewer"
    );
    let csrf = csrf_of(&page);
    let forged = viewer
        .post(server.at(&format!("{rollout}/actions/pause")))
        .form(&[("csrf", "forged"), ("comment", "")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    assert!(forged.text().await.unwrap().contains("The form is stale"));
    let refused = viewer
        .post(server.at(&format!("{rollout}/actions/pause")))
        .form(&[("csrf", csrf.as_str()), ("comment", "")])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    assert!(refused
        .text()
        .await
        .unwrap()
        .contains("needs the `deploy` scope"));

    // An admin pauses it; pausing again is refused by the rollout's state, said on the page.
    let admin = server
        .sign_in(&[("token", shipgate_testkit::ADMIN_TOKEN)])
        .await
        .unwrap();
    let page = admin
        .get(server.at(&rollout))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("Pausing stops shop / staging from starting new steps"),
        "the confirm step names what will happen"
    );
    let csrf = csrf_of(&page);
    let paused = admin
        .post(server.at(&format!("{rollout}/actions/pause")))
        .form(&[("csrf", csrf.as_str()), ("comment", "looking at a graph")])
        .send()
        .await
        .unwrap();
    assert_eq!(paused.status(), 303);
    assert_eq!(paused.headers()["location"], rollout.as_str());
    let again = admin
        .post(server.at(&format!("{rollout}/actions/pause")))
        .form(&[("csrf", csrf.as_str()), ("comment", "")])
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 422);
    let html = again.text().await.unwrap();
    assert!(
        html.contains("Not done:") && html.contains("cannot pause a rollout that is paused"),
        "{html}"
    );
    let (_, body) = server.get(&format!("/api/v1/rollouts/{id}")).await.unwrap();
    assert_eq!(body["state"], "paused");
    let cancel = admin
        .post(server.at(&format!("{rollout}/actions/cancel")))
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 303);
    // Promotion to production is refused until the release has soaked in staging.
    let pipeline = admin
        .get(server.at("/apps/shop"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        pipeline.contains("Requires: succeed in staging first"),
        "{pipeline}"
    );
    let promote = admin
        .post(server.at("/apps/shop/environments/production/deploy"))
        .form(&[("csrf", csrf.as_str()), ("release", "1.0.0")])
        .send()
        .await
        .unwrap();
    assert_eq!(promote.status(), 422);
    assert!(promote
        .text()
        .await
        .unwrap()
        .contains("the policy still requires that it succeed in staging first"));
    drop(server);
    db.drop_database().await.unwrap();
}
