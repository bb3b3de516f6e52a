//! The gate probes against small local servers that answer like real health endpoints and a
//! real Prometheus.

use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use shipgate_domain::config::{HealthCheck, JsonCheck};
use shipgate_domain::state::Verdict;
use shipgate_providers::probes;

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{address}")
}

fn check(url: String, json: Option<(&str, Value)>) -> HealthCheck {
    HealthCheck {
        url,
        expect_status: 200,
        json: json.map(|(path, equals)| JsonCheck {
            path: path.into(),
            equals,
        }),
    }
}

#[tokio::test]
async fn health_checks_judge_status_json_fields_timeouts_and_refusals() {
    let base = serve(
        Router::new()
            .route(
                "/healthy",
                get(|| async { Json(json!({ "status": "healthy", "checks": { "db": "ok" } })) }),
            )
            .route(
                "/degraded",
                get(|| async { Json(json!({ "status": "degraded" })) }),
            )
            .route(
                "/down",
                get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "no") }),
            )
            .route("/text", get(|| async { "OK" }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            ),
    )
    .await;
    let client = probes::client();
    let timeout = Duration::from_millis(500);

    let probe = probes::http_health(
        &client,
        &check(
            format!("{base}/healthy"),
            Some(("status", json!("healthy"))),
        ),
        timeout,
    )
    .await;
    assert_eq!(probe.verdict, Verdict::Pass, "{}", probe.summary);
    assert_eq!(probe.value, Some(200.0));

    let probe = probes::http_health(
        &client,
        &check(format!("{base}/healthy"), Some(("checks.db", json!("ok")))),
        timeout,
    )
    .await;
    assert_eq!(probe.verdict, Verdict::Pass, "{}", probe.summary);

    let probe = probes::http_health(
        &client,
        &check(
            format!("{base}/degraded"),
            Some(("status", json!("healthy"))),
        ),
        timeout,
    )
    .await;
    assert_eq!(probe.verdict, Verdict::Fail);
    assert!(probe.summary.contains("degraded"), "{}", probe.summary);

    let probe = probes::http_health(&client, &check(format!("{base}/down"), None), timeout).await;
    assert_eq!((probe.verdict, probe.value), (Verdict::Fail, Some(503.0)));

    let probe = probes::http_health(
        &client,
        &check(format!("{base}/text"), Some(("status", json!("healthy")))),
        timeout,
    )
    .await;
    assert_eq!(
        probe.verdict,
        Verdict::Fail,
        "a JSON check on a text body fails"
    );

    let probe = probes::http_health(&client, &check(format!("{base}/slow"), None), timeout).await;
    assert_eq!(probe.verdict, Verdict::Fail);
    assert!(probe.summary.contains("500ms"), "{}", probe.summary);

    let probe = probes::http_health(
        &client,
        &check("http://127.0.0.1:9/health".into(), None),
        timeout,
    )
    .await;
    assert_eq!(probe.verdict, Verdict::Fail);
    assert!(probe.summary.contains("refused"), "{}", probe.summary);
}

#[tokio::test]
async fn prometheus_values_no_data_and_errors_are_told_apart() {
    async fn query(body: String) -> Json<Value> {
        let query = body.split("query=").nth(1).unwrap_or_default().to_owned();
        Json(match query.as_str() {
            "errors" => json!({ "status": "success", "data": { "resultType": "vector",
                        "result": [ { "metric": {}, "value": [1_700_000_000.0, "0.004"] } ] } }),
            "empty" => {
                json!({ "status": "success", "data": { "resultType": "vector", "result": [] } })
            }
            "nan" => json!({ "status": "success", "data": { "resultType": "vector",
                     "result": [ { "metric": {}, "value": [1_700_000_000.0, "NaN"] } ] } }),
            "scalar" => {
                json!({ "status": "success", "data": { "resultType": "scalar", "result": [1_700_000_000.0, "2"] } })
            }
            _ => {
                json!({ "status": "error", "errorType": "bad_data", "error": "parse error at char 1" })
            }
        })
    }
    let base = serve(Router::new().route("/api/v1/query", post(query))).await;
    let client = probes::client();
    let timeout = Duration::from_secs(2);
    assert_eq!(
        probes::prometheus_value(&client, &base, "errors", timeout).await,
        Ok(Some(0.004))
    );
    assert_eq!(
        probes::prometheus_value(&client, &base, "empty", timeout).await,
        Ok(None)
    );
    assert_eq!(
        probes::prometheus_value(&client, &base, "nan", timeout).await,
        Ok(None)
    );
    assert_eq!(
        probes::prometheus_value(&client, &base, "scalar", timeout).await,
        Ok(Some(2.0))
    );
    let refused = probes::prometheus_value(&client, &base, "broken(", timeout)
        .await
        .unwrap_err();
    assert!(refused.contains("parse error"), "{refused}");
    let unreachable = probes::prometheus_value(&client, "http://127.0.0.1:9", "up", timeout)
        .await
        .unwrap_err();
    assert!(unreachable.contains("unreachable"), "{unreachable}");
}

#[tokio::test]
async fn confirm_webhooks_pass_on_2xx_only() {
    let base = serve(
        Router::new()
            .route("/yes", post(|| async { StatusCode::NO_CONTENT }))
            .route("/no", post(|| async { StatusCode::CONFLICT })),
    )
    .await;
    let client = probes::client();
    let payload = json!({ "release": "1.0.0" });
    let yes = probes::confirm_webhook(
        &client,
        &format!("{base}/yes"),
        &payload,
        Duration::from_secs(2),
    )
    .await;
    let no = probes::confirm_webhook(
        &client,
        &format!("{base}/no"),
        &payload,
        Duration::from_secs(2),
    )
    .await;
    assert_eq!((yes.verdict, no.verdict), (Verdict::Pass, Verdict::Fail));
}
