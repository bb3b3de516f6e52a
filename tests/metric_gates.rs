//! End-to-end tests of Prometheus gates against a real Prometheus (Debian's `prometheus`, see
//! `.ci/install-prometheus.sh`): an in-process test app serves `/metrics` with an error rate the
//! test controls, Prometheus scrapes it every second, and the real `shipgate` binary gates
//! rollouts on a PromQL error-rate query.

use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};
use shipgate_testkit::{eventually, Server, TestDb};

const BINARY: &str = env!("CARGO_BIN_EXE_shipgate");
const PROMETHEUS: &str = "/usr/bin/prometheus";
const ERROR_RATE: &str =
    r#"sum(rate(http_requests_total{code="500"}[10s])) / sum(rate(http_requests_total[10s]))"#;
const MISSING_METRIC: &str = "sum(rate(shipgate_test_metric_nobody_exports_total[10s]))";

/// The test app's request counters, whether it answers every fifth request with a 500, and
/// whether requests take 3 s (recorded in its latency histogram; nothing actually waits).
#[derive(Default)]
struct Traffic {
    ok: AtomicU64,
    errors: AtomicU64,
    failing: AtomicBool,
    slow: AtomicBool,
    slow_requests: AtomicU64,
}

async fn work(State(traffic): State<Arc<Traffic>>) -> StatusCode {
    let served = traffic.ok.load(Ordering::Relaxed) + traffic.errors.load(Ordering::Relaxed);
    if traffic.failing.load(Ordering::Relaxed) && served % 5 == 0 {
        traffic.errors.fetch_add(1, Ordering::Relaxed);
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        traffic.ok.fetch_add(1, Ordering::Relaxed);
        if traffic.slow.load(Ordering::Relaxed) {
            traffic.slow_requests.fetch_add(1, Ordering::Relaxed);
        }
        StatusCode::OK
    }
}

/// Both series are always exported (a zero 500 counter included), so a healthy app's error
/// rate is 0 rather than no data. Fast requests take 50 ms, slow ones 3 s.
async fn metrics(State(traffic): State<Arc<Traffic>>) -> String {
    let ok = traffic.ok.load(Ordering::Relaxed);
    let errors = traffic.errors.load(Ordering::Relaxed);
    let total = ok + errors;
    let slow = traffic.slow_requests.load(Ordering::Relaxed);
    let fast = total - slow;
    format!(
        "# HELP http_requests_total Requests served, by status.\n\
         # TYPE http_requests_total counter\n\
         http_requests_total{{code=\"200\"}} {ok}\n\
         http_requests_total{{code=\"500\"}} {errors}\n\
         # HELP http_request_duration_seconds Request durations.\n\
         # TYPE http_request_duration_seconds histogram\n\
         http_request_duration_seconds_bucket{{le=\"0.1\"}} {fast}\n\
         http_request_duration_seconds_bucket{{le=\"1\"}} {fast}\n\
         http_request_duration_seconds_bucket{{le=\"2.5\"}} {fast}\n\
         http_request_duration_seconds_bucket{{le=\"5\"}} {total}\n\
         http_request_duration_seconds_bucket{{le=\"+Inf\"}} {total}\n\
         http_request_duration_seconds_sum {}\n\
         http_request_duration_seconds_count {total}\n",
        fast as f64 * 0.05 + slow as f64 * 3.0,
    )
}

/// Starts the test app on port 0 and a task sending it about 50 requests a second.
async fn start_test_app(traffic: Arc<Traffic>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/work", get(work))
        .route("/metrics", get(metrics))
        .with_state(traffic);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let url = format!("http://{address}");
    let work_url = format!("{url}/work");
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut ticks = tokio::time::interval(Duration::from_millis(20));
        loop {
            ticks.tick().await;
            let _ = client.get(&work_url).send().await;
        }
    });
    url
}

/// A Prometheus child process with its own data directory; killed and cleaned up on drop.
struct Prometheus {
    url: String,
    child: Child,
    directory: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (`host:port`) every second and waits until ready.
    async fn start(target: &str) -> Prometheus {
        let directory = std::env::temp_dir().join(format!(
            "shipgate-prometheus-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(directory.join("data")).unwrap();
        let config = directory.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: test-app\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        // A free port: bound, read and released (Prometheus cannot report a port 0 choice).
        let port = StdListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(directory.join("prometheus.log")).unwrap();
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                directory.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| {
                panic!("starting {PROMETHEUS} (run .ci/install-prometheus.sh): {error}")
            });
        let prometheus = Prometheus {
            url: format!("http://127.0.0.1:{port}"),
            child,
            directory,
        };
        let client = reqwest::Client::new();
        let ready = format!("{}/-/ready", prometheus.url);
        eventually(Duration::from_secs(30), "Prometheus ready", || async {
            let answer = client.get(&ready).send().await;
            Ok(answer.is_ok_and(|r| r.status().is_success()).then_some(()))
        })
        .await
        .unwrap();
        prometheus
    }

    /// The first sample of an instant query, if any.
    async fn value(&self, query: &str) -> Option<f64> {
        let body: Value = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", query)])
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        body["data"]["result"][0]["value"][1]
            .as_str()?
            .parse()
            .ok()
            .filter(|value: &f64| !value.is_nan())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // The child's own pid, never a process group.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

/// The test app with its traffic, a Prometheus scraping it, and the real binary with the app
/// `app` applied from `config(app, prometheus_url)`.
struct Setup {
    traffic: Arc<Traffic>,
    prometheus: Prometheus,
    db: TestDb,
    server: Server,
}

impl Setup {
    /// Starts everything once `ready` (a query the gates use) has a value: two scrapes with
    /// traffic between them before a rate exists.
    async fn start(app: &str, ready: &str, config: fn(&str, &str) -> String) -> Setup {
        let traffic = Arc::new(Traffic::default());
        let app_url = start_test_app(traffic.clone()).await;
        let prometheus = Prometheus::start(app_url.trim_start_matches("http://")).await;
        eventually(Duration::from_secs(30), "a scraped value", || async {
            Ok(prometheus.value(ready).await)
        })
        .await
        .unwrap();
        let db = TestDb::new().await.unwrap();
        let server = Server::start(BINARY, &db.url, &[]).unwrap();
        let (status, body) = server
            .apply(app, &config(app, &prometheus.url))
            .await
            .unwrap();
        assert_eq!(status, 201, "{body}");
        Setup {
            traffic,
            prometheus,
            db,
            server,
        }
    }
}

/// `production` gates on the error rate (rolled back on failure); `blind` gates on a metric
/// nobody exports.
fn config(app: &str, prometheus: &str) -> String {
    format!(
        r#"
app: {app}
components: [web]
prometheus_url: {prometheus}
environments:
  - name: production
    targets:
      web: {{ provider: simulated, latency: 50ms }}
    plan:
      - name: canary
        deploy: [web]
        gates:
          - prometheus: {{ query: '{ERROR_RATE}', below: 0.01, interval: 1s, for: 3s, failures: 3, deadline: 60s }}
        on_failure: rollback
  - name: blind
    targets:
      web: {{ provider: simulated, latency: 50ms }}
    plan:
      - name: canary
        deploy: [web]
        gates:
          - prometheus: {{ query: '{MISSING_METRIC}', below: 0.01, interval: 1s, for: 3s, failures: 3, deadline: 60s }}
        on_failure: rollback
"#
    )
}

async fn deploy(server: &Server, app: &str, environment: &str, version: &str) -> String {
    let release = json!({
        "version": version,
        "git_sha": "0123456789abcdef0123456789abcdef01234567",
        "artifacts": { "web": format!("registry.example/{app}/web:{version}") },
    });
    let (status, body) = server
        .post(&format!("/api/v1/apps/{app}/releases"), &release)
        .await
        .unwrap();
    assert!(status == 201 || status == 200, "release {version}: {body}");
    let (status, body) = server
        .post(
            &format!("/api/v1/apps/{app}/environments/{environment}/rollouts"),
            &json!({ "release": version }),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "rollout of {version}: {body}");
    body["id"].as_str().unwrap().to_owned()
}

/// A field of every check the rollout's first gate recorded (a JSON pointer into the check).
fn of_checks(rollout: &Value, pointer: &str) -> Vec<String> {
    rollout["phases"][0]["gates"][0]["checks"]
        .as_array()
        .map(|checks| {
            checks
                .iter()
                .map(|check| {
                    check
                        .pointer(pointer)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The verdicts the rollout's first gate recorded.
fn verdicts(rollout: &Value) -> Vec<String> {
    of_checks(rollout, "/verdict")
}

#[tokio::test]
async fn a_prometheus_error_rate_gate_promotes_healthy_traffic_rolls_back_errors_and_pauses_without_data(
) {
    let started = Instant::now();
    let Setup {
        traffic,
        prometheus,
        db,
        server,
    } = Setup::start("metered", ERROR_RATE, config).await;

    // No data: the gate is inconclusive and the rollout pauses, while the healthy one runs.
    let blind = deploy(&server, "metered", "blind", "1.0.0").await;
    // Healthy traffic: the error rate stays 0 for the whole `for` span and the release goes out.
    let healthy = deploy(&server, "metered", "production", "1.0.0").await;
    let done = server
        .wait_finished(&healthy, Duration::from_secs(40))
        .await
        .unwrap();
    assert_eq!(done["state"], "succeeded", "{done}");
    let checks = verdicts(&done);
    assert!(
        checks.len() >= 4 && checks.iter().all(|verdict| verdict == "pass"),
        "four passing queries cover `for: 3s`: {checks:?}"
    );

    let paused = eventually(
        Duration::from_secs(20),
        "the blind rollout paused",
        || async {
            let (_, body) = server.get(&format!("/api/v1/rollouts/{blind}")).await?;
            Ok((body["state"] == "paused").then_some(body))
        },
    )
    .await
    .unwrap();
    let reason = paused["state_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("inconclusive") && reason.contains(MISSING_METRIC),
        "the pause names the inconclusive gate: {paused}"
    );
    assert_eq!(verdicts(&paused), ["inconclusive"], "{paused}");
    assert_eq!(paused["phases"][0]["state"], "verifying", "{paused}");

    // Errors: every fifth request fails (20%) while the gate runs; three failing queries in a
    // row roll the release back to 1.0.0.
    traffic.failing.store(true, Ordering::Relaxed);
    eventually(Duration::from_secs(20), "the error rate seen", || async {
        Ok(prometheus
            .value(ERROR_RATE)
            .await
            .filter(|rate| *rate > 0.05))
    })
    .await
    .unwrap();
    let failing = deploy(&server, "metered", "production", "1.1.0").await;
    let done = server
        .wait_finished(&failing, Duration::from_secs(40))
        .await
        .unwrap();
    traffic.failing.store(false, Ordering::Relaxed);
    assert_eq!(done["state"], "rolled_back", "{done}");
    let reason = done["verdict"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("gate prometheus")
            && reason.contains(ERROR_RATE)
            && reason.contains("3 failed rounds of 3 (limit 3)"),
        "the verdict names the failing gate: {done}"
    );
    assert_eq!(verdicts(&done), ["fail", "fail", "fail"], "{done}");
    let rollback = server
        .wait_finished(
            done["rolled_back_by"].as_str().expect("a rollback"),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert_eq!(
        (rollback["state"].as_str(), rollback["release"].as_str()),
        (Some("succeeded"), Some("1.0.0")),
        "{rollback}"
    );

    // The blind rollout never passed: still paused, with nothing but its inconclusive check.
    let (_, still) = server
        .get(&format!("/api/v1/rollouts/{blind}"))
        .await
        .unwrap();
    assert_eq!(still["state"], "paused", "{still}");
    assert!(!verdicts(&still).iter().any(|verdict| verdict == "pass"));

    drop(server);
    db.drop_database().await.unwrap();
    drop(prometheus);
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "took {:?}",
        started.elapsed()
    );
}

/// The built-in templates, a round count, a minimum sample count and the consecutive-error
/// limit, each in its own environment.
fn template_config(app: &str, prometheus: &str) -> String {
    let rounds = "interval: 1s, window: 10s, selector: 'job=\"test-app\"'";
    format!(
        r#"
app: {app}
components: [web]
prometheus_url: {prometheus}
environments:
  - name: errors
    targets: &targets
      web: {{ provider: simulated, latency: 50ms }}
    plan:
      - name: canary
        deploy: [web]
        gates:
          - prometheus: {{ template: error_rate, {rounds}, count: 3, failures: 2, min_samples: 20 }}
        on_failure: rollback
  - name: latency
    targets: *targets
    plan:
      - name: canary
        deploy: [web]
        gates:
          - prometheus: {{ template: p95_latency, {rounds}, count: 2 }}
        on_failure: rollback
  - name: starved
    targets: *targets
    plan:
      - name: canary
        deploy: [web]
        gates:
          - prometheus: {{ template: error_rate, {rounds}, min_samples: 1000000, deadline: 4s }}
        on_failure: rollback
  - name: unreachable
    targets: *targets
    plan:
      - name: canary
        deploy: [web]
        gates:
          - prometheus: {{ url: "http://127.0.0.1:9", template: error_rate, {rounds}, consecutive_errors: 2 }}
        on_failure: rollback
"#
    )
}

async fn paused(server: &Server, id: &str) -> Value {
    eventually(Duration::from_secs(30), "the rollout paused", || async {
        let (_, body) = server.get(&format!("/api/v1/rollouts/{id}")).await?;
        Ok((body["state"] == "paused").then_some(body))
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn built_in_templates_count_rounds_wait_for_enough_samples_and_tolerate_a_few_errors() {
    let p95 =
        "histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket[10s])))";
    let Setup {
        traffic,
        prometheus,
        db,
        server,
    } = Setup::start("templated", p95, template_config).await;

    // The error-rate template with enough traffic: exactly three rounds, each passing with the
    // sample count behind it, and the release goes out.
    let starved = deploy(&server, "templated", "starved", "1.0.0").await;
    let unreachable = deploy(&server, "templated", "unreachable", "1.0.0").await;
    let healthy = deploy(&server, "templated", "errors", "1.0.0").await;
    let fast = deploy(&server, "templated", "latency", "1.0.0").await;
    let done = server
        .wait_finished(&healthy, Duration::from_secs(40))
        .await
        .unwrap();
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(verdicts(&done), ["pass", "pass", "pass"], "{done}");
    assert!(
        of_checks(&done, "/detail/summary")
            .iter()
            .all(|summary| summary.contains("(needs < 0.01) from") && summary.contains("samples")),
        "{:?}",
        of_checks(&done, "/detail/summary")
    );
    let gate = &done["phases"][0]["gates"][0]["description"];
    assert!(
        gate.as_str().unwrap().contains(r#"code=~"5..""#),
        "the template's query is shown: {gate}"
    );

    // Too little traffic for a million samples: rounds count for nothing and at the deadline
    // the gate pauses for a person, saying why, never passing.
    let starved = paused(&server, &starved).await;
    let reason = starved["state_reason"].as_str().unwrap_or_default();
    assert!(reason.contains("not enough traffic"), "{starved}");
    assert!(!verdicts(&starved).iter().any(|v| v == "pass"), "{starved}");

    // Prometheus unreachable: two errors in a row pause it.
    let unreachable = paused(&server, &unreachable).await;
    let reason = unreachable["state_reason"].as_str().unwrap_or_default();
    assert!(reason.contains("2 query errors in a row"), "{unreachable}");

    // Slow requests: the p95 template sees about 4.9 s against its 2 s limit and rolls back
    // to the release that passed it while requests were fast.
    let fast = server
        .wait_finished(&fast, Duration::from_secs(40))
        .await
        .unwrap();
    assert_eq!(fast["state"], "succeeded", "{fast}");
    assert_eq!(verdicts(&fast), ["pass", "pass"], "{fast}");
    traffic.slow.store(true, Ordering::Relaxed);
    eventually(Duration::from_secs(20), "the slow p95 seen", || async {
        Ok(prometheus.value(p95).await.filter(|p95| *p95 > 2.5))
    })
    .await
    .unwrap();
    let slow = deploy(&server, "templated", "latency", "1.1.0").await;
    let done = server
        .wait_finished(&slow, Duration::from_secs(40))
        .await
        .unwrap();
    traffic.slow.store(false, Ordering::Relaxed);
    assert_eq!(done["state"], "rolled_back", "{done}");
    let reason = done["verdict"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("1 failed round") && reason.contains("(needs < 2)"),
        "{done}"
    );

    drop(server);
    db.drop_database().await.unwrap();
    drop(prometheus);
}
