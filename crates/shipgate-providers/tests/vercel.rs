//! The Vercel adapter against a fake Vercel API: deploys followed to production, failed builds,
//! rate limits, 5xx storms, timeouts, instant rollback, rolling releases, env vars, drift and
//! reconciliation by natural key.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{json, Map};

use shipgate_domain::config::TargetSpec;
use shipgate_domain::provider::ProviderKind;
use shipgate_providers::http::RetryPolicy;
use shipgate_providers::vercel::Vercel;
use shipgate_providers::{
    OperationStatus, Provider, ProviderError, StepRequest, Submitted, TargetContext,
};
use shipgate_testkit::fakes::vercel::{FakeVercel, PROJECT_ID};

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

fn target(base: &str) -> TargetSpec {
    let mut settings = Map::new();
    settings.insert("project_id".into(), json!(PROJECT_ID));
    settings.insert("team_id".into(), json!("team_shipgate"));
    settings.insert("api_url".into(), json!(base));
    TargetSpec {
        provider: ProviderKind::Vercel,
        settings,
        credential: Some("vercel".into()),
        health: None,
    }
}

fn context(target: &TargetSpec) -> TargetContext<'_> {
    TargetContext {
        app: "shop",
        environment: "production",
        component: "web",
        target,
        credential: Some("vercel-token"),
    }
}

fn deploy(version: &str) -> StepRequest {
    StepRequest::Deploy {
        version: version.into(),
        artifact: json!(format!("v{version}")),
    }
}

async fn settle(
    provider: &Vercel,
    context: &TargetContext<'_>,
    reference: &str,
) -> OperationStatus {
    for _ in 0..200 {
        let status = provider.poll(context, reference).await.unwrap();
        if status != OperationStatus::Running {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    panic!("{reference} never settled");
}

/// Deploys a version and follows it to production.
async fn deployed(provider: &Vercel, context: &TargetContext<'_>, version: &str) -> String {
    let submitted = provider
        .submit(context, &deploy(version), &format!("key-{version}"))
        .await
        .unwrap();
    let status = settle(provider, context, &submitted.reference).await;
    assert!(
        matches!(status, OperationStatus::Succeeded(_)),
        "{version}: {status:?}"
    );
    submitted.reference
}

#[tokio::test]
async fn a_deploy_builds_to_ready_and_serves_production() {
    let (fake, base) = FakeVercel::start().await;
    let provider = Vercel::new(policy());
    let target = target(&base);
    let context = context(&target);
    assert_eq!(provider.kind(), ProviderKind::Vercel);

    let submitted = provider
        .submit(&context, &deploy("1.0.0"), "key-1")
        .await
        .unwrap();
    assert_eq!(submitted.status, OperationStatus::Running);
    assert!(submitted.reference.starts_with("dpl_"));
    match settle(&provider, &context, &submitted.reference).await {
        OperationStatus::Succeeded(result) => {
            assert_eq!(result["deploymentId"], json!(submitted.reference));
            assert_eq!(result["readyState"], json!("READY"));
        }
        other => panic!("expected success, got {other:?}"),
    }
    assert_eq!(fake.production(), Some(submitted.reference.clone()));

    let creates = fake.calls.matching("POST", "/v13/deployments");
    assert_eq!(creates.len(), 1);
    let (_, path, body) = &creates[0];
    assert!(path.contains("forceNew=1"), "{path}");
    assert!(path.contains("teamId=team_shipgate"), "{path}");
    assert_eq!(body["target"], json!("production"));
    assert_eq!(body["project"], json!(PROJECT_ID));
    assert_eq!(
        body["gitSource"],
        json!({"type": "github", "ref": "v1.0.0"})
    );
    assert_eq!(body["meta"]["shipgate_key"], json!("key-1"));
    assert_eq!(body["meta"]["shipgate_version"], json!("1.0.0"));
    assert!(
        fake.calls
            .all()
            .iter()
            .all(|(_, path, _)| path.contains("teamId=team_shipgate")),
        "every call is scoped to the team"
    );
}

#[tokio::test]
async fn a_staged_deployment_is_promoted_and_the_promotion_followed() {
    let (fake, base) = FakeVercel::start().await;
    fake.auto_assign.store(false, Ordering::SeqCst);
    let provider = Vercel::new(policy());
    let target = target(&base);
    let context = context(&target);

    let id = deployed(&provider, &context, "1.0.0").await;
    let promotions = fake
        .calls
        .matching("POST", "/v10/projects/prj_fake/promote/");
    assert_eq!(promotions.len(), 1, "promoted exactly once");
    assert!(promotions[0].1.contains(&id));
    assert_eq!(fake.production(), Some(id));
}

#[tokio::test]
async fn a_failed_build_reports_vercels_error_message() {
    let (fake, base) = FakeVercel::start().await;
    fake.failing_versions.lock().unwrap().push("2.0.0".into());
    let provider = Vercel::new(policy());
    let target = target(&base);
    let context = context(&target);

    let submitted = provider
        .submit(&context, &deploy("2.0.0"), "key-2")
        .await
        .unwrap();
    match settle(&provider, &context, &submitted.reference).await {
        OperationStatus::Failed(message) => {
            assert!(message.contains("exited with 1"), "{message}");
            assert!(message.contains(&submitted.reference), "{message}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    assert_eq!(fake.production(), None, "a failed build never serves");
}

#[tokio::test]
async fn a_rate_limit_is_waited_out_then_the_call_succeeds() {
    let (fake, base) = FakeVercel::start().await;
    let provider = Vercel::new(policy());
    let target = target(&base);
    let context = context(&target);

    fake.chaos.rate_limit(1, 1);
    let started = Instant::now();
    provider
        .submit(&context, &deploy("1.0.0"), "key-429")
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "Retry-After was honoured"
    );
    assert_eq!(fake.deployments(), 1);

    fake.chaos.rate_limit(1, 60);
    match provider
        .submit(&context, &deploy("1.0.0"), "key-long")
        .await
    {
        Err(ProviderError::RateLimited(wait)) => assert_eq!(wait, Duration::from_secs(60)),
        other => panic!("a long wait goes back to the engine: {other:?}"),
    }
}

#[tokio::test]
async fn a_500_storm_is_bounded_and_retryable() {
    let (fake, base) = FakeVercel::start().await;
    let provider = Vercel::new(policy());
    let target = target(&base);
    let context = context(&target);

    // Reads are retried a bounded number of times, then reported as transient.
    fake.chaos.fail(50);
    let before = fake.chaos.requests.load(Ordering::SeqCst);
    match provider.poll(&context, "dpl_missing").await {
        Err(ProviderError::Transient(message)) => {
            assert!(message.contains("500"), "{message}");
            assert!(message.contains("internal_server_error"), "{message}");
        }
        other => panic!("a storm is retryable later: {other:?}"),
    }
    let after = fake.chaos.requests.load(Ordering::SeqCst);
    assert_eq!(after - before, 3, "retries are bounded by the policy");

    // A create (forceNew skips Vercel's deduplication) is never repeated blind after a 500.
    let before = fake.chaos.requests.load(Ordering::SeqCst);
    match provider
        .submit(&context, &deploy("1.0.0"), "key-storm")
        .await
    {
        Err(ProviderError::Transient(message)) => assert!(message.contains("500"), "{message}"),
        other => panic!("a failed create is retryable later: {other:?}"),
    }
    assert_eq!(
        fake.chaos.requests.load(Ordering::SeqCst) - before,
        1,
        "sent once"
    );
    fake.chaos.fail(0);
    assert_eq!(fake.deployments(), 0);
    provider
        .submit(&context, &deploy("1.0.0"), "key-after")
        .await
        .expect("once Vercel answers again, the create goes through");
    assert_eq!(fake.deployments(), 1);
}

#[tokio::test]
async fn a_slow_api_times_out_as_retryable() {
    let (fake, base) = FakeVercel::start().await;
    let provider = Vercel::new(policy());
    let target = target(&base);
    let context = context(&target);

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
async fn errors_are_permanent_with_vercels_message_and_code() {
    let (_fake, base) = FakeVercel::start().await;
    let provider = Vercel::new(policy());
    let mut target = target(&base);
    target
        .settings
        .insert("project_id".into(), json!("prj_missing"));
    let context = context(&target);
    match provider.live(&context).await {
        Err(ProviderError::Permanent(message)) => {
            assert!(
                message.contains("Project not found (not_found)"),
                "{message}"
            )
        }
        other => panic!("expected a permanent error, got {other:?}"),
    }
    let without_token = TargetContext {
        credential: None,
        ..context.clone()
    };
    assert!(matches!(
        provider.submit(&without_token, &deploy("1.0.0"), "k").await,
        Err(ProviderError::Permanent(_))
    ));
}

#[tokio::test]
async fn rollback_uses_vercels_instant_rollback_to_the_earlier_deployment() {
    let (fake, base) = FakeVercel::start().await;
    let provider = Vercel::new(policy());
    let target = target(&base);
    let context = context(&target);

    let first = deployed(&provider, &context, "1.0.0").await;
    let second = deployed(&provider, &context, "2.0.0").await;
    assert_eq!(fake.production(), Some(second.clone()));

    let rollback = StepRequest::Rollback {
        version: "1.0.0".into(),
        artifact: json!("v1.0.0"),
        from_ref: Some(second.clone()),
        to_ref: Some(first.clone()),
    };
    let submitted = provider
        .submit(&context, &rollback, "key-rb")
        .await
        .unwrap();
    assert!(
        matches!(
            settle(&provider, &context, &submitted.reference).await,
            OperationStatus::Succeeded(_)
        ),
        "the rollback succeeds"
    );
    let calls = fake
        .calls
        .matching("POST", "/v1/projects/prj_fake/rollback/");
    assert_eq!(calls.len(), 1);
    assert!(calls[0].1.contains(&first), "{}", calls[0].1);
    assert_eq!(fake.deployments(), 2, "no rebuild");
    assert_eq!(fake.production(), Some(first.clone()));
    let live = provider.live(&context).await.unwrap();
    assert_eq!(live.reference, Some(first.clone()));
    assert_eq!(live.version.as_deref(), Some("1.0.0"));

    // After an instant rollback Vercel stops aliasing new production deployments on its own:
    // the next deploy is promoted.
    let third = deployed(&provider, &context, "3.0.0").await;
    assert_eq!(fake.production(), Some(third));
    assert_eq!(
        fake.calls
            .matching("POST", "/v10/projects/prj_fake/promote/")
            .len(),
        1
    );
}

#[tokio::test]
async fn rollback_without_a_deployment_to_return_to_redeploys_the_artifact() {
    let (fake, base) = FakeVercel::start().await;
    let provider = Vercel::new(policy());
    let target = target(&base);
    let context = context(&target);

    let rollback = StepRequest::Rollback {
        version: "1.0.0".into(),
        artifact: json!("main@0123456789abcdef0123456789abcdef01234567"),
        from_ref: None,
        to_ref: None,
    };
    let submitted = provider
        .submit(&context, &rollback, "key-rb")
        .await
        .unwrap();
    assert!(matches!(
        settle(&provider, &context, &submitted.reference).await,
        OperationStatus::Succeeded(_)
    ));
    let creates = fake.calls.matching("POST", "/v13/deployments");
    assert_eq!(creates.len(), 1);
    assert_eq!(creates[0].2["gitSource"]["ref"], json!("main"));
    assert_eq!(
        creates[0].2["gitSource"]["sha"],
        json!("0123456789abcdef0123456789abcdef01234567")
    );
    assert!(fake.calls.matching("POST", "/v1/projects").is_empty());
    assert_eq!(fake.production(), Some(submitted.reference));
}

#[tokio::test]
async fn a_redeploy_artifact_rebuilds_from_the_existing_deployment() {
    let (fake, base) = FakeVercel::start().await;
    let provider = Vercel::new(policy());
    let target = target(&base);
    let context = context(&target);

    let first = deployed(&provider, &context, "1.0.0").await;
    let redeploy = StepRequest::Deploy {
        version: "1.0.1".into(),
        artifact: json!({ "deploymentId": first }),
    };
    let submitted = provider
        .submit(&context, &redeploy, "key-redeploy")
        .await
        .unwrap();
    assert!(matches!(
        settle(&provider, &context, &submitted.reference).await,
        OperationStatus::Succeeded(_)
    ));
    let creates = fake.calls.matching("POST", "/v13/deployments");
    assert_eq!(creates[1].2["deploymentId"], json!(first));
    assert_eq!(fake.production(), Some(submitted.reference));
}

#[tokio::test]
async fn traffic_shifts_through_the_projects_rolling_release_then_completes() {
    let (fake, base) = FakeVercel::start().await;
    let provider = Vercel::new(policy());
    let target = target(&base);
    let context = context(&target);

    let stable = deployed(&provider, &context, "1.0.0").await;
    // With rolling releases on, Vercel makes the next production deployment a canary.
    fake.rolling_releases.store(true, Ordering::SeqCst);
    let canary = deployed(&provider, &context, "2.0.0").await;
    assert_eq!(fake.production(), Some(stable.clone()));
    assert_eq!(fake.canary(), Some((canary.clone(), 10)));

    let shift = |percent| StepRequest::Traffic {
        version: "2.0.0".into(),
        percent,
    };
    let submitted = provider
        .submit(&context, &shift(25), "key-t25")
        .await
        .unwrap();
    match &submitted.status {
        OperationStatus::Succeeded(result) => assert_eq!(result["percent"], json!(25)),
        other => panic!("expected success, got {other:?}"),
    }
    assert_eq!(fake.canary(), Some((canary.clone(), 25)));
    assert!(matches!(
        provider.poll(&context, &submitted.reference).await.unwrap(),
        OperationStatus::Succeeded(_)
    ));

    // 40% is not a stage: the first stage reaching it is approved.
    provider
        .submit(&context, &shift(40), "key-t40")
        .await
        .unwrap();
    assert_eq!(fake.canary(), Some((canary.clone(), 50)));
    let approvals = fake.calls.matching(
        "POST",
        "/v1/projects/prj_fake/rolling-release/approve-stage",
    );
    assert_eq!(approvals.len(), 2);
    assert_eq!(
        approvals[1].2,
        json!({"nextStageIndex": 2, "canaryDeploymentId": canary})
    );
    assert!(fake
        .calls
        .matching("POST", "/v1/projects/prj_fake/rolling-release/start")
        .is_empty());
    assert_eq!(fake.production(), Some(stable));

    provider
        .submit(&context, &shift(100), "key-t100")
        .await
        .unwrap();
    assert_eq!(
        fake.calls
            .matching("POST", "/v1/projects/prj_fake/rolling-release/complete")
            .len(),
        1
    );
    assert_eq!(fake.production(), Some(canary.clone()));
    assert_eq!(fake.canary(), Some((canary, 100)));
}

#[tokio::test]
async fn traffic_starts_a_rolling_release_for_a_deployment_not_yet_serving() {
    let (fake, base) = FakeVercel::start().await;
    let provider = Vercel::new(policy());
    let target = target(&base);
    let context = context(&target);

    let stable = deployed(&provider, &context, "1.0.0").await;
    // A preview build of 2.0.0 by this target: ready, serving nothing.
    let mut preview = target.clone();
    preview.settings.insert("production".into(), json!(false));
    let preview_context = TargetContext {
        target: &preview,
        ..context.clone()
    };
    let canary = deployed(&provider, &preview_context, "2.0.0").await;
    assert_eq!(fake.production(), Some(stable.clone()));

    let submitted = provider
        .submit(
            &context,
            &StepRequest::Traffic {
                version: "2.0.0".into(),
                percent: 10,
            },
            "key-t10",
        )
        .await
        .unwrap();
    assert!(matches!(submitted.status, OperationStatus::Succeeded(_)));
    let starts = fake
        .calls
        .matching("POST", "/v1/projects/prj_fake/rolling-release/start");
    assert_eq!(starts.len(), 1);
    assert_eq!(starts[0].2["canaryDeploymentId"], json!(canary));
    assert_eq!(fake.canary(), Some((canary, 10)));
    assert_eq!(fake.production(), Some(stable));
}

#[tokio::test]
async fn traffic_to_a_deployment_already_serving_everything_changes_nothing() {
    let (fake, base) = FakeVercel::start().await;
    let provider = Vercel::new(policy());
    let target = target(&base);
    let context = context(&target);

    deployed(&provider, &context, "1.0.0").await;
    let submitted = provider
        .submit(
            &context,
            &StepRequest::Traffic {
                version: "1.0.0".into(),
                percent: 10,
            },
            "key-t10",
        )
        .await
        .unwrap();
    match submitted.status {
        OperationStatus::Succeeded(result) => {
            assert_eq!(result["percent"], json!(100));
            assert!(result["note"]
                .as_str()
                .unwrap()
                .contains("rolling releases"));
        }
        other => panic!("expected success, got {other:?}"),
    }
    assert!(fake
        .calls
        .matching("POST", "/v1/projects/prj_fake/rolling-release")
        .is_empty());
}

#[tokio::test]
async fn env_vars_are_upserted_and_removed_for_the_next_deployment() {
    let (fake, base) = FakeVercel::start().await;
    let provider = Vercel::new(policy());
    let target = target(&base);
    let context = context(&target);

    let mut vars = BTreeMap::new();
    vars.insert(
        "API_URL".to_owned(),
        Some("https://api.example.com".to_owned()),
    );
    vars.insert("FEATURE_X".to_owned(), Some("on".to_owned()));
    let submitted = provider
        .submit(&context, &StepRequest::Config { vars }, "key-env-1")
        .await
        .unwrap();
    match &submitted.status {
        OperationStatus::Succeeded(result) => {
            assert!(result["note"].as_str().unwrap().contains("next deployment"))
        }
        other => panic!("expected success, got {other:?}"),
    }
    let posted = fake.calls.matching("POST", "/v10/projects/prj_fake/env");
    assert!(posted[0].1.contains("upsert=true"), "{}", posted[0].1);
    assert_eq!(
        posted[0].2[0],
        json!({"key": "API_URL", "value": "https://api.example.com",
               "type": "encrypted", "target": ["production"]})
    );
    assert_eq!(fake.env().get("FEATURE_X").map(String::as_str), Some("on"));

    let mut vars = BTreeMap::new();
    vars.insert(
        "API_URL".to_owned(),
        Some("https://v2.example.com".to_owned()),
    );
    vars.insert("FEATURE_X".to_owned(), None);
    vars.insert("NEVER_SET".to_owned(), None);
    provider
        .submit(&context, &StepRequest::Config { vars }, "key-env-2")
        .await
        .unwrap();
    let env = fake.env();
    assert_eq!(env.len(), 1, "{env:?}");
    assert_eq!(env["API_URL"], "https://v2.example.com");
    assert_eq!(
        fake.calls
            .matching("DELETE", "/v9/projects/prj_fake/env/")
            .len(),
        1
    );
}

#[tokio::test]
async fn env_vars_vercel_refuses_fail_the_step_with_its_message() {
    let (fake, base) = FakeVercel::start().await;
    fake.refused_env_keys
        .lock()
        .unwrap()
        .push("VERCEL_URL".into());
    let provider = Vercel::new(policy());
    let target = target(&base);
    let context = context(&target);

    let mut vars = BTreeMap::new();
    vars.insert("VERCEL_URL".to_owned(), Some("x".to_owned()));
    match provider
        .submit(&context, &StepRequest::Config { vars }, "key-env")
        .await
    {
        Err(ProviderError::Permanent(message)) => {
            assert!(message.contains("VERCEL_URL"), "{message}");
            assert!(message.contains("reserved (forbidden)"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn live_reports_production_changed_outside_shipgate() {
    let (fake, base) = FakeVercel::start().await;
    let provider = Vercel::new(policy());
    let target = target(&base);
    let context = context(&target);

    let first = deployed(&provider, &context, "1.0.0").await;
    let second = deployed(&provider, &context, "2.0.0").await;
    let live = provider.live(&context).await.unwrap();
    assert_eq!(live.reference, Some(second));
    assert_eq!(live.version.as_deref(), Some("2.0.0"));

    // Someone rolls back in the Vercel dashboard.
    fake.set_production(&first);
    let live = provider.live(&context).await.unwrap();
    assert_eq!(live.reference, Some(first));
    assert_eq!(live.version.as_deref(), Some("1.0.0"));
    let health = provider.health(&context).await.unwrap().unwrap();
    assert!(health.healthy, "{}", health.summary);
}

#[tokio::test]
async fn find_by_natural_key_adopts_the_deployment_instead_of_creating_another() {
    let (fake, base) = FakeVercel::start().await;
    let provider = Vercel::new(policy());
    let target = target(&base);
    let context = context(&target);

    assert_eq!(provider.find(&context, "key-x").await.unwrap(), None);
    let submitted = provider
        .submit(&context, &deploy("1.0.0"), "key-x")
        .await
        .unwrap();
    provider
        .submit(&context, &deploy("1.0.1"), "key-y")
        .await
        .unwrap();
    let Some(Submitted { reference, .. }) = provider.find(&context, "key-x").await.unwrap() else {
        panic!("found by key");
    };
    assert_eq!(reference, submitted.reference);
    assert_eq!(fake.deployments(), 2, "no second create for key-x");
    assert!(matches!(
        settle(&provider, &context, &reference).await,
        OperationStatus::Succeeded(_)
    ));
    let found = provider.find(&context, "key-x").await.unwrap().unwrap();
    assert!(matches!(found.status, OperationStatus::Succeeded(_)));
    assert_eq!(
        fake.calls
            .all()
            .iter()
            .filter(|(m, p, _)| m == "POST" && p.starts_with("/v13/deployments"))
            .count(),
        2
    );
}

#[tokio::test]
async fn rollback_to_a_deployment_vercel_no_longer_has_redeploys_the_artifact() {
    let (fake, base) = FakeVercel::start().await;
    let provider = Vercel::new(policy());
    let target = target(&base);
    let context = context(&target);

    deployed(&provider, &context, "2.0.0").await;
    let rollback = StepRequest::Rollback {
        version: "1.0.0".into(),
        artifact: json!("v1.0.0"),
        from_ref: None,
        to_ref: Some("rollback:dpl_expired".into()),
    };
    let submitted = provider
        .submit(&context, &rollback, "key-rb")
        .await
        .unwrap();
    assert!(matches!(
        settle(&provider, &context, &submitted.reference).await,
        OperationStatus::Succeeded(_)
    ));
    let tried = fake
        .calls
        .matching("POST", "/v1/projects/prj_fake/rollback/");
    assert_eq!(tried.len(), 1);
    assert!(tried[0].1.contains("dpl_expired"), "{}", tried[0].1);
    assert_eq!(fake.deployments(), 2, "the artifact was built again");
    assert_eq!(fake.production(), Some(submitted.reference));
}

#[tokio::test]
async fn the_fake_takes_rollbacks_on_the_cli_path_too() {
    let (fake, base) = FakeVercel::start().await;
    let provider = Vercel::new(policy());
    let target = target(&base);
    let context = context(&target);
    let first = deployed(&provider, &context, "1.0.0").await;
    deployed(&provider, &context, "2.0.0").await;

    let response = reqwest::Client::new()
        .post(format!("{base}/v9/projects/{PROJECT_ID}/rollback/{first}"))
        .bearer_auth("token")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    assert!(response.text().await.unwrap().is_empty(), "no body");
    assert!(matches!(
        settle(&provider, &context, &format!("rollback:{first}")).await,
        OperationStatus::Succeeded(_)
    ));
    assert_eq!(fake.production(), Some(first));

    let response = reqwest::Client::new()
        .get(format!("{base}/v9/projects/{PROJECT_ID}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403, "a token is required");
}
