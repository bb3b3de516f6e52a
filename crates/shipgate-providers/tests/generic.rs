//! The generic `http` provider against a fake deploy endpoint: happy path, failed deploy,
//! rate limits, a 500 storm, timeouts, rollback, and reconciliation by idempotency key.

use std::time::Duration;

use serde_json::{json, Map, Value};

use shipgate_domain::config::TargetSpec;
use shipgate_domain::provider::ProviderKind;
use shipgate_providers::generic::Generic;
use shipgate_providers::http::RetryPolicy;
use shipgate_providers::{OperationStatus, Provider, ProviderError, StepRequest, TargetContext};
use shipgate_testkit::fakes::generic::FakeDeployEndpoint;

/// Fast retries so failure paths finish quickly.
fn policy() -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        call_timeout: Duration::from_millis(500),
        max_inline_wait: Duration::from_secs(2),
    }
}

fn target(base: &str, with_rollback: bool) -> TargetSpec {
    let mut settings = Map::new();
    settings.insert("deploy_url".into(), json!(format!("{base}/deploy")));
    settings.insert("status_url".into(), json!(format!("{base}/status/{{id}}")));
    if with_rollback {
        settings.insert("rollback_url".into(), json!(format!("{base}/rollback")));
    }
    TargetSpec {
        provider: ProviderKind::Http,
        settings,
        credential: None,
        health: None,
    }
}

fn context(target: &TargetSpec) -> TargetContext<'_> {
    TargetContext {
        app: "shop",
        environment: "production",
        component: "api",
        target,
        credential: Some("secret-token"),
    }
}

fn deploy(version: &str) -> StepRequest {
    StepRequest::Deploy {
        version: version.into(),
        artifact: json!(format!("image:{version}")),
    }
}

async fn settle(
    provider: &Generic,
    context: &TargetContext<'_>,
    reference: &str,
) -> OperationStatus {
    for _ in 0..100 {
        let status = provider.poll(context, reference).await.unwrap();
        if status != OperationStatus::Running {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the operation never settled");
}

#[tokio::test]
async fn a_deploy_is_followed_to_success_and_a_failed_one_reports_why() {
    let (fake, base) = FakeDeployEndpoint::start().await;
    fake.failing_versions.lock().unwrap().push("2.0.0".into());
    let provider = Generic::new(policy());
    let target = target(&base, true);
    let context = context(&target);

    let submitted = provider
        .submit(&context, &deploy("1.0.0"), "key-1")
        .await
        .unwrap();
    assert_eq!(submitted.status, OperationStatus::Running);
    assert!(matches!(
        settle(&provider, &context, &submitted.reference).await,
        OperationStatus::Succeeded(_)
    ));

    let submitted = provider
        .submit(&context, &deploy("2.0.0"), "key-2")
        .await
        .unwrap();
    match settle(&provider, &context, &submitted.reference).await {
        OperationStatus::Failed(message) => assert!(message.contains("exited 1"), "{message}"),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn rate_limits_are_waited_out_and_5xx_storms_become_retryable_errors() {
    let (fake, base) = FakeDeployEndpoint::start().await;
    let provider = Generic::new(policy());
    let target = target(&base, true);
    let context = context(&target);

    fake.chaos.rate_limit(1, 1);
    let started = std::time::Instant::now();
    provider
        .submit(&context, &deploy("1.0.0"), "key-429")
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "Retry-After was honoured"
    );

    fake.chaos.rate_limit(1, 60);
    match provider
        .submit(&context, &deploy("1.0.0"), "key-long")
        .await
    {
        Err(ProviderError::RateLimited(wait)) => assert_eq!(wait, Duration::from_secs(60)),
        other => panic!("a long wait goes back to the engine: {other:?}"),
    }

    fake.chaos.fail(2);
    provider
        .submit(&context, &deploy("1.0.0"), "key-500")
        .await
        .expect("two 500s are retried through");

    fake.chaos.fail(50);
    let before = fake
        .chaos
        .requests
        .load(std::sync::atomic::Ordering::SeqCst);
    match provider
        .submit(&context, &deploy("1.0.0"), "key-storm")
        .await
    {
        Err(ProviderError::Transient(message)) => assert!(message.contains("500"), "{message}"),
        other => panic!("a storm is retryable later: {other:?}"),
    }
    let after = fake
        .chaos
        .requests
        .load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(after - before, 3, "retries are bounded by the policy");
    fake.chaos.fail(0);

    fake.chaos.delay(Duration::from_secs(2));
    match provider
        .submit(&context, &deploy("1.0.0"), "key-slow")
        .await
    {
        Err(ProviderError::Transient(message)) => {
            assert!(message.contains("did not answer"), "{message}")
        }
        other => panic!("a timeout is retryable later: {other:?}"),
    }
}

#[tokio::test]
async fn rollback_uses_the_rollback_endpoint_or_redeploys() {
    let (fake, base) = FakeDeployEndpoint::start().await;
    let provider = Generic::new(policy());
    let rollback = StepRequest::Rollback {
        version: "1.0.0".into(),
        artifact: json!("image:1.0.0"),
        from_ref: Some("key-bad".into()),
        to_ref: None,
    };
    let with = target(&base, true);
    provider
        .submit(&context(&with), &rollback, "key-rb-1")
        .await
        .unwrap();
    assert_eq!(fake.calls.matching("POST", "/rollback").len(), 1);
    let without = target(&base, false);
    provider
        .submit(&context(&without), &rollback, "key-rb-2")
        .await
        .unwrap();
    let redeploys = fake.calls.matching("POST", "/deploy");
    assert_eq!(redeploys.len(), 1);
    assert_eq!(
        redeploys[0].2["request"]["artifact"],
        Value::from("image:1.0.0")
    );
}

#[tokio::test]
async fn reconciling_finds_an_operation_by_its_key_instead_of_starting_another() {
    let (fake, base) = FakeDeployEndpoint::start().await;
    let provider = Generic::new(policy());
    let target = target(&base, true);
    let context = context(&target);
    assert_eq!(provider.find(&context, "key-x").await.unwrap(), None);
    provider
        .submit(&context, &deploy("1.0.0"), "key-x")
        .await
        .unwrap();
    let found = provider
        .find(&context, "key-x")
        .await
        .unwrap()
        .expect("found by key");
    assert_eq!(found.reference, "key-x");
    assert_eq!(fake.operations(), 1);
}
