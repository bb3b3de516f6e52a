//! The Railway adapter against a fake of Railway's public GraphQL API: commit and image
//! deploys, build failures, GraphQL errors at HTTP 200, rate limits, 500 storms, timeouts,
//! native rollback and its fallbacks, variables, drift, and best-effort reconciliation.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use shipgate_domain::config::TargetSpec;
use shipgate_domain::provider::ProviderKind;
use shipgate_providers::http::RetryPolicy;
use shipgate_providers::railway::Railway;
use shipgate_providers::{OperationStatus, Provider, ProviderError, StepRequest, TargetContext};
use shipgate_testkit::fakes::railway::{FakeRailway, TOKEN};

const PROJECT: &str = "project-1";
const ENVIRONMENT: &str = "env-production";
const SERVICE: &str = "svc-api";

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

fn target(url: &str) -> TargetSpec {
    let mut settings = Map::new();
    settings.insert("project_id".into(), json!(PROJECT));
    settings.insert("environment_id".into(), json!(ENVIRONMENT));
    settings.insert("service_id".into(), json!(SERVICE));
    settings.insert("api_url".into(), json!(url));
    TargetSpec {
        provider: ProviderKind::Railway,
        settings,
        credential: Some("railway".into()),
        health: None,
    }
}

fn context<'a>(target: &'a TargetSpec, token: &'a str) -> TargetContext<'a> {
    TargetContext {
        app: "shop",
        environment: "production",
        component: "api",
        target,
        credential: Some(token),
    }
}

fn deploy(version: &str, artifact: Value) -> StepRequest {
    StepRequest::Deploy {
        version: version.into(),
        artifact,
    }
}

async fn settle(
    provider: &Railway,
    context: &TargetContext<'_>,
    reference: &str,
) -> OperationStatus {
    for _ in 0..150 {
        let status = provider.poll(context, reference).await.unwrap();
        if status != OperationStatus::Running {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the deployment never settled");
}

/// Deploys a commit and waits for it to succeed; answers the deployment id.
async fn deployed(provider: &Railway, context: &TargetContext<'_>, commit: &str) -> String {
    let submitted = provider
        .submit(
            context,
            &deploy(commit, json!(commit)),
            &format!("key-{commit}"),
        )
        .await
        .unwrap();
    assert!(matches!(
        settle(provider, context, &submitted.reference).await,
        OperationStatus::Succeeded(_)
    ));
    submitted.reference
}

#[tokio::test]
async fn deploying_a_commit_is_followed_to_success() {
    let (fake, url) = FakeRailway::start().await;
    let provider = Railway::new(policy());
    assert_eq!(provider.kind(), ProviderKind::Railway);
    let target = target(&url);
    let context = context(&target, TOKEN);

    let submitted = provider
        .submit(&context, &deploy("1.0.0", json!("a1b2c3d4")), "key-1")
        .await
        .unwrap();
    assert_eq!(submitted.status, OperationStatus::Running);
    let calls = fake.calls.matching("mutation", "serviceInstanceDeployV2");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].2["commitSha"], json!("a1b2c3d4"));
    assert_eq!(calls[0].2["environmentId"], json!(ENVIRONMENT));
    assert_eq!(calls[0].2["serviceId"], json!(SERVICE));
    match settle(&provider, &context, &submitted.reference).await {
        OperationStatus::Succeeded(detail) => {
            assert_eq!(detail["deployment"], json!(submitted.reference));
            assert_eq!(detail["source"], json!("a1b2c3d4"));
            assert_eq!(detail["url"], json!("svc-api.up.railway.app"));
        }
        other => panic!("expected success, got {other:?}"),
    }
    let live = provider.live(&context).await.unwrap();
    assert_eq!(
        live.reference.as_deref(),
        Some(submitted.reference.as_str())
    );
    assert_eq!(live.version.as_deref(), Some("a1b2c3d4"));
}

#[tokio::test]
async fn deploying_an_image_points_the_service_at_it_then_deploys() {
    let (fake, url) = FakeRailway::start().await;
    let provider = Railway::new(policy());
    let target = target(&url);
    let context = context(&target, TOKEN);

    let image = "ghcr.io/shop/api:1.2.0";
    let submitted = provider
        .submit(
            &context,
            &deploy("1.2.0", json!({ "image": image })),
            "key-img",
        )
        .await
        .unwrap();
    let operations: Vec<String> = fake.calls.all().into_iter().map(|c| c.1).collect();
    assert_eq!(
        operations,
        ["serviceInstanceUpdate", "serviceInstanceDeployV2"],
        "the image is set before deploying"
    );
    let update = &fake.calls.matching("mutation", "serviceInstanceUpdate")[0].2;
    assert_eq!(update["input"]["source"]["image"], json!(image));
    let deploy_call = &fake.calls.matching("mutation", "serviceInstanceDeployV2")[0].2;
    assert_eq!(
        deploy_call["commitSha"],
        Value::Null,
        "no commit for an image"
    );
    assert_eq!(fake.image(ENVIRONMENT, SERVICE).as_deref(), Some(image));
    assert!(matches!(
        settle(&provider, &context, &submitted.reference).await,
        OperationStatus::Succeeded(_)
    ));
    assert_eq!(
        provider.live(&context).await.unwrap().version.as_deref(),
        Some(image)
    );
}

#[tokio::test]
async fn a_failed_build_is_reported_as_failed() {
    let (fake, url) = FakeRailway::start().await;
    fake.failing_commits.lock().unwrap().push("badc0de1".into());
    let provider = Railway::new(policy());
    let target = target(&url);
    let context = context(&target, TOKEN);

    let submitted = provider
        .submit(&context, &deploy("2.0.0", json!("badc0de1")), "key-bad")
        .await
        .unwrap();
    match settle(&provider, &context, &submitted.reference).await {
        OperationStatus::Failed(message) => {
            assert!(message.contains("FAILED"), "{message}");
            assert!(message.contains(&submitted.reference), "{message}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn every_deployment_status_maps_to_an_outcome() {
    let (fake, url) = FakeRailway::start().await;
    let provider = Railway::new(policy());
    let target = target(&url);
    let context = context(&target, TOKEN);
    let id = fake.deploy_directly(ENVIRONMENT, SERVICE, "abc1234", json!({}));

    for (status, expected) in [
        ("SUCCESS", "succeeded"),
        ("SLEEPING", "succeeded"),
        ("FAILED", "failed"),
        ("CRASHED", "failed"),
        ("QUEUED", "running"),
        ("INITIALIZING", "running"),
        ("WAITING", "running"),
        ("BUILDING", "running"),
        ("DEPLOYING", "running"),
        ("NEEDS_APPROVAL", "running"),
        ("REMOVING", "superseded"),
        ("REMOVED", "superseded"),
        ("SKIPPED", "superseded"),
    ] {
        fake.set_status(&id, status);
        let outcome = provider.poll(&context, &id).await.unwrap();
        let seen = match &outcome {
            OperationStatus::Succeeded(_) => "succeeded",
            OperationStatus::Running => "running",
            OperationStatus::Failed(message) if message.contains("superseded") => "superseded",
            OperationStatus::Failed(_) => "failed",
        };
        assert_eq!(seen, expected, "{status}: {outcome:?}");
    }
}

#[tokio::test]
async fn a_graphql_error_at_http_200_becomes_a_provider_error() {
    let (fake, url) = FakeRailway::start().await;
    let provider = Railway::new(policy());
    let target = target(&url);

    let wrong = context(&target, "not-the-token");
    match provider
        .submit(&wrong, &deploy("1.0.0", json!("a1b2c3d4")), "key-auth")
        .await
    {
        Err(ProviderError::Permanent(message)) => {
            assert!(message.contains("Not Authorized"), "{message}")
        }
        other => panic!("Not Authorized is permanent: {other:?}"),
    }
    assert_eq!(
        fake.chaos.requests.load(Ordering::SeqCst),
        1,
        "a permanent error is not retried"
    );

    let context = context(&target, TOKEN);
    match provider.poll(&context, "no-such-deployment").await {
        Err(ProviderError::Permanent(message)) => {
            assert!(message.contains("Deployment not found"), "{message}")
        }
        other => panic!("an unknown deployment is permanent: {other:?}"),
    }

    fake.fail_next("Rate limit exceeded");
    match provider
        .submit(&context, &deploy("1.0.0", json!("a1b2c3d4")), "key-rl")
        .await
    {
        Err(ProviderError::RateLimited(wait)) => assert!(wait >= Duration::from_secs(1)),
        other => panic!("a rate limit in errors[] is RateLimited: {other:?}"),
    }

    fake.fail_next("Problem processing request");
    match provider
        .submit(&context, &deploy("1.0.0", json!("a1b2c3d4")), "key-500")
        .await
    {
        Err(ProviderError::Transient(message)) => {
            assert!(message.contains("Problem processing request"), "{message}")
        }
        other => panic!("an internal error is retryable: {other:?}"),
    }
    assert!(
        fake.calls
            .matching("mutation", "serviceInstanceDeployV2")
            .len()
            >= 3
    );
    assert!(fake.deployments().is_empty(), "nothing was deployed");
}

#[tokio::test]
async fn a_429_is_waited_out_then_the_call_succeeds() {
    let (fake, url) = FakeRailway::start().await;
    let provider = Railway::new(policy());
    let target = target(&url);
    let context = context(&target, TOKEN);

    fake.chaos.rate_limit(1, 1);
    let started = Instant::now();
    provider
        .submit(&context, &deploy("1.0.0", json!("a1b2c3d4")), "key-429")
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "Retry-After was honoured"
    );
    assert_eq!(fake.deployments().len(), 1);

    fake.chaos.rate_limit(1, 60);
    match provider
        .submit(&context, &deploy("1.0.0", json!("a1b2c3d4")), "key-long")
        .await
    {
        Err(ProviderError::RateLimited(wait)) => assert_eq!(wait, Duration::from_secs(60)),
        other => panic!("a long wait goes back to the engine: {other:?}"),
    }
}

#[tokio::test]
async fn a_500_storm_is_retried_on_reads_but_a_create_is_never_sent_twice() {
    let (fake, url) = FakeRailway::start().await;
    let provider = Railway::new(policy());
    let target = target(&url);
    let context = context(&target, TOKEN);

    // Reads are retried a bounded number of times, then reported as transient.
    fake.chaos.fail(2);
    provider.poll(&context, "some-deployment").await.ok();
    fake.chaos.fail(50);
    let before = fake.chaos.requests.load(Ordering::SeqCst);
    match provider.poll(&context, "some-deployment").await {
        Err(ProviderError::Transient(message)) => assert!(message.contains("500"), "{message}"),
        other => panic!("a storm is retryable later: {other:?}"),
    }
    let after = fake.chaos.requests.load(Ordering::SeqCst);
    assert_eq!(after - before, 3, "retries are bounded by the policy");

    // A create that meets a 500 may have been carried out: it is not repeated blind (the engine
    // asks the platform by natural key before it submits again).
    let before = fake.chaos.requests.load(Ordering::SeqCst);
    match provider
        .submit(&context, &deploy("1.0.0", json!("a1b2c3d4")), "key-storm")
        .await
    {
        Err(ProviderError::Transient(message)) => assert!(message.contains("500"), "{message}"),
        other => panic!("a failed create is retryable later: {other:?}"),
    }
    let after = fake.chaos.requests.load(Ordering::SeqCst);
    assert_eq!(after - before, 1, "the create was sent once");
    fake.chaos.fail(0);
    provider
        .submit(&context, &deploy("1.0.0", json!("a1b2c3d4")), "key-after")
        .await
        .expect("once the platform answers again, the create goes through");
}

#[tokio::test]
async fn a_railway_that_does_not_answer_in_time_is_a_transient_error() {
    let (fake, url) = FakeRailway::start().await;
    let provider = Railway::new(policy());
    let target = target(&url);
    let context = context(&target, TOKEN);

    fake.chaos.delay(Duration::from_secs(2));
    match provider.poll(&context, "some-deployment").await {
        Err(ProviderError::Transient(message)) => {
            assert!(message.contains("did not answer"), "{message}")
        }
        other => panic!("a timeout is retryable later: {other:?}"),
    }
}

#[tokio::test]
async fn rollback_issues_deployment_rollback_with_the_to_ref_id() {
    let (fake, url) = FakeRailway::start().await;
    let provider = Railway::new(policy());
    let target = target(&url);
    let context = context(&target, TOKEN);
    let good = deployed(&provider, &context, "aaaa1111").await;
    let bad = deployed(&provider, &context, "bbbb2222").await;

    let rollback = StepRequest::Rollback {
        version: "1.0.0".into(),
        artifact: json!("aaaa1111"),
        from_ref: Some(bad.clone()),
        to_ref: Some(good.clone()),
    };
    let submitted = provider
        .submit(&context, &rollback, "key-rb")
        .await
        .unwrap();
    let rollbacks = fake.calls.matching("mutation", "deploymentRollback");
    assert_eq!(rollbacks.len(), 1);
    assert_eq!(rollbacks[0].2, json!({ "id": good }));
    assert!(fake
        .calls
        .matching("mutation", "deploymentRedeploy")
        .is_empty());
    assert_ne!(submitted.reference, good, "the new deployment is followed");
    assert_ne!(submitted.reference, bad);
    assert!(matches!(
        settle(&provider, &context, &submitted.reference).await,
        OperationStatus::Succeeded(_)
    ));
    let live = provider.live(&context).await.unwrap();
    assert_eq!(
        live.reference.as_deref(),
        Some(submitted.reference.as_str())
    );
    assert_eq!(live.version.as_deref(), Some("aaaa1111"));
}

#[tokio::test]
async fn rollback_redeploys_the_to_ref_where_railway_forbids_rollback() {
    let (fake, url) = FakeRailway::start().await;
    let provider = Railway::new(policy());
    let target = target(&url);
    let context = context(&target, TOKEN);
    let good = deployed(&provider, &context, "aaaa1111").await;
    let bad = deployed(&provider, &context, "bbbb2222").await;
    fake.no_rollback.store(true, Ordering::SeqCst);

    let rollback = StepRequest::Rollback {
        version: "1.0.0".into(),
        artifact: json!("aaaa1111"),
        from_ref: Some(bad),
        to_ref: Some(good.clone()),
    };
    let submitted = provider
        .submit(&context, &rollback, "key-rb")
        .await
        .unwrap();
    assert!(fake
        .calls
        .matching("mutation", "deploymentRollback")
        .is_empty());
    let redeploys = fake.calls.matching("mutation", "deploymentRedeploy");
    assert_eq!(redeploys.len(), 1);
    assert_eq!(
        redeploys[0].2,
        json!({ "id": good, "usePreviousImageTag": true })
    );
    assert!(matches!(
        settle(&provider, &context, &submitted.reference).await,
        OperationStatus::Succeeded(_)
    ));
    assert_eq!(
        provider.live(&context).await.unwrap().version.as_deref(),
        Some("aaaa1111")
    );
}

#[tokio::test]
async fn rollback_without_a_to_ref_deploys_the_previous_artifact_again() {
    let (fake, url) = FakeRailway::start().await;
    let provider = Railway::new(policy());
    let target = target(&url);
    let context = context(&target, TOKEN);
    deployed(&provider, &context, "bbbb2222").await;

    let rollback = StepRequest::Rollback {
        version: "1.0.0".into(),
        artifact: json!("aaaa1111"),
        from_ref: None,
        to_ref: None,
    };
    let submitted = provider
        .submit(&context, &rollback, "key-rb")
        .await
        .unwrap();
    let deploys = fake.calls.matching("mutation", "serviceInstanceDeployV2");
    assert_eq!(deploys.len(), 2);
    assert_eq!(deploys[1].2["commitSha"], json!("aaaa1111"));
    assert!(matches!(
        settle(&provider, &context, &submitted.reference).await,
        OperationStatus::Succeeded(_)
    ));

    // A to_ref Railway no longer knows is no better than none.
    let rollback = StepRequest::Rollback {
        version: "1.0.0".into(),
        artifact: json!({ "image": "ghcr.io/shop/api:1.0.0" }),
        from_ref: None,
        to_ref: Some("deleted-deployment".into()),
    };
    let submitted = provider
        .submit(&context, &rollback, "key-rb-2")
        .await
        .unwrap();
    assert!(fake
        .calls
        .matching("mutation", "deploymentRollback")
        .is_empty());
    assert_eq!(
        fake.image(ENVIRONMENT, SERVICE).as_deref(),
        Some("ghcr.io/shop/api:1.0.0")
    );
    assert_eq!(
        fake.calls
            .matching("mutation", "serviceInstanceDeployV2")
            .len(),
        3
    );
    assert!(matches!(
        settle(&provider, &context, &submitted.reference).await,
        OperationStatus::Succeeded(_)
    ));
}

#[tokio::test]
async fn variables_are_set_and_deleted_without_a_redeploy() {
    let (fake, url) = FakeRailway::start().await;
    let provider = Railway::new(policy());
    let target = target(&url);
    let context = context(&target, TOKEN);
    deployed(&provider, &context, "aaaa1111").await;
    fake.set_variable(ENVIRONMENT, SERVICE, "OLD_FLAG", "1");
    fake.set_variable(ENVIRONMENT, SERVICE, "KEEP", "yes");

    let vars = BTreeMap::from([
        ("LOG_LEVEL".to_owned(), Some("debug".to_owned())),
        ("FEATURE_X".to_owned(), Some("on".to_owned())),
        ("OLD_FLAG".to_owned(), None),
    ]);
    let submitted = provider
        .submit(&context, &StepRequest::Config { vars }, "key-config")
        .await
        .unwrap();
    match &submitted.status {
        OperationStatus::Succeeded(detail) => {
            assert!(
                detail["note"].as_str().unwrap().contains("next deploy"),
                "{detail}"
            );
            assert_eq!(detail["unset"], json!(["OLD_FLAG"]));
            assert!(
                !detail.to_string().contains("debug"),
                "values are not echoed"
            );
        }
        other => panic!("config is done at once: {other:?}"),
    }
    assert!(matches!(
        provider.poll(&context, &submitted.reference).await.unwrap(),
        OperationStatus::Succeeded(_)
    ));

    let upserts = fake.calls.matching("mutation", "variableCollectionUpsert");
    assert_eq!(upserts.len(), 1);
    let input = &upserts[0].2["input"];
    assert_eq!(input["skipDeploys"], json!(true));
    assert_eq!(input["projectId"], json!(PROJECT));
    assert_eq!(
        input["variables"],
        json!({ "LOG_LEVEL": "debug", "FEATURE_X": "on" })
    );
    let deletes = fake.calls.matching("mutation", "variableDelete");
    assert_eq!(deletes.len(), 1);
    assert_eq!(deletes[0].2["input"]["name"], json!("OLD_FLAG"));

    let stored = fake.variables(ENVIRONMENT, SERVICE);
    assert_eq!(
        stored,
        BTreeMap::from([
            ("FEATURE_X".to_owned(), "on".to_owned()),
            ("KEEP".to_owned(), "yes".to_owned()),
            ("LOG_LEVEL".to_owned(), "debug".to_owned()),
        ])
    );
    assert_eq!(
        fake.deployments().len(),
        1,
        "skipDeploys: nothing redeployed"
    );
}

#[tokio::test]
async fn a_deployment_made_in_railway_shows_up_as_drift() {
    let (fake, url) = FakeRailway::start().await;
    let provider = Railway::new(policy());
    let target = target(&url);
    let context = context(&target, TOKEN);
    let ours = deployed(&provider, &context, "aaaa1111").await;
    assert_eq!(
        provider.live(&context).await.unwrap().reference.as_deref(),
        Some(ours.as_str())
    );

    let theirs = fake.deploy_directly(ENVIRONMENT, SERVICE, "cafe0001", json!({}));
    let live = provider.live(&context).await.unwrap();
    assert_eq!(live.reference.as_deref(), Some(theirs.as_str()));
    assert_eq!(live.version.as_deref(), Some("cafe0001"));
    assert_eq!(live.detail["status"], json!("SUCCESS"));

    let health = provider.health(&context).await.unwrap().unwrap();
    assert!(health.healthy, "{}", health.summary);
    fake.set_status(&theirs, "CRASHED");
    let health = provider.health(&context).await.unwrap().unwrap();
    assert!(!health.healthy);
    assert!(health.summary.contains("CRASHED"), "{}", health.summary);
}

#[tokio::test]
async fn reconciling_adopts_only_a_deployment_whose_meta_carries_the_key() {
    let (fake, url) = FakeRailway::start().await;
    let provider = Railway::new(policy());
    let target = target(&url);
    let context = context(&target, TOKEN);

    assert_eq!(provider.find(&context, "key-1").await.unwrap(), None);
    deployed(&provider, &context, "aaaa1111").await;
    assert_eq!(
        provider.find(&context, "key-aaaa1111").await.unwrap(),
        None,
        "real Railway deployments carry no key, so nothing is adopted"
    );
    let listed = fake.calls.matching("query", "deployments");
    assert_eq!(listed[0].2["first"], json!(5));
    assert_eq!(listed[0].2["input"]["serviceId"], json!(SERVICE));

    let id = fake.deploy_directly(
        ENVIRONMENT,
        SERVICE,
        "bbbb2222",
        json!({ "shipgateKey": "key-2" }),
    );
    let found = provider
        .find(&context, "key-2")
        .await
        .unwrap()
        .expect("found by meta");
    assert_eq!(found.reference, id);
    assert!(matches!(found.status, OperationStatus::Succeeded(_)));
}

#[tokio::test]
async fn traffic_splitting_and_jobs_are_refused() {
    let (fake, url) = FakeRailway::start().await;
    let provider = Railway::new(policy());
    let target = target(&url);
    let context = context(&target, TOKEN);
    let traffic = StepRequest::Traffic {
        version: "1.0.0".into(),
        percent: 10,
    };
    assert!(matches!(
        provider.submit(&context, &traffic, "key-t").await,
        Err(ProviderError::Permanent(_))
    ));
    let job = StepRequest::Job {
        version: "1.0.0".into(),
        command: "migrate".into(),
    };
    assert!(matches!(
        provider.submit(&context, &job, "key-j").await,
        Err(ProviderError::Permanent(_))
    ));
    assert!(fake.calls.all().is_empty());
}

#[tokio::test]
async fn a_target_without_a_credential_or_ids_is_refused_before_calling_railway() {
    let (fake, url) = FakeRailway::start().await;
    let provider = Railway::new(policy());
    let mut target = target(&url);
    let mut context = context(&target, TOKEN);
    context.credential = None;
    assert!(matches!(
        provider.poll(&context, "x").await,
        Err(ProviderError::Permanent(message)) if message.contains("credential")
    ));
    target.settings.remove("service_id");
    let context = self::context(&target, TOKEN);
    assert!(matches!(
        provider.poll(&context, "x").await,
        Err(ProviderError::Permanent(message)) if message.contains("service_id")
    ));
    assert!(fake.calls.all().is_empty());
}
