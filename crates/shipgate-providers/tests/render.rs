//! The Render adapter against a fake Render API: deploys of commits and images followed to
//! `live`, failed builds and pre-deploys, rate limits, a 500 storm, timeouts, Render's own
//! rollback with its autodeploy warning, env vars, and drift.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use shipgate_domain::config::TargetSpec;
use shipgate_domain::provider::ProviderKind;
use shipgate_providers::http::RetryPolicy;
use shipgate_providers::render::Render;
use shipgate_providers::{OperationStatus, Provider, ProviderError, StepRequest, TargetContext};
use shipgate_testkit::fakes::render::{FakeRender, SERVICE_ID};

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

fn target(api: &str) -> TargetSpec {
    let mut settings = Map::new();
    settings.insert("service_id".into(), json!(SERVICE_ID));
    settings.insert("api_url".into(), json!(api));
    TargetSpec {
        provider: ProviderKind::Render,
        settings,
        credential: Some("render".into()),
        health: None,
    }
}

fn context(target: &TargetSpec) -> TargetContext<'_> {
    TargetContext {
        app: "shop",
        environment: "production",
        component: "api",
        target,
        credential: Some("rnd_secret_key"),
    }
}

fn deploy(version: &str, artifact: Value) -> StepRequest {
    StepRequest::Deploy {
        version: version.into(),
        artifact,
    }
}

async fn settle(
    provider: &Render,
    context: &TargetContext<'_>,
    reference: &str,
) -> OperationStatus {
    for _ in 0..200 {
        let status = provider.poll(context, reference).await.unwrap();
        if status != OperationStatus::Running {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the deploy never settled");
}

async fn deploy_to_live(
    provider: &Render,
    context: &TargetContext<'_>,
    artifact: Value,
    key: &str,
) -> (String, Value) {
    let submitted = provider
        .submit(context, &deploy("1.0.0", artifact), key)
        .await
        .unwrap();
    match settle(provider, context, &submitted.reference).await {
        OperationStatus::Succeeded(result) => (submitted.reference, result),
        other => panic!("expected the deploy to go live, got {other:?}"),
    }
}

fn failure(status: OperationStatus) -> String {
    match status {
        OperationStatus::Failed(message) => message,
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn deploying_a_commit_follows_the_deploy_to_live_and_supersedes_the_previous_one() {
    let (fake, api) = FakeRender::start().await;
    let provider = Render::new(policy());
    assert_eq!(provider.kind(), ProviderKind::Render);
    let target = target(&api);
    let context = context(&target);

    let submitted = provider
        .submit(&context, &deploy("1.0.0", json!("a1b2c3d")), "key-1")
        .await
        .unwrap();
    assert!(submitted.reference.starts_with("dep-"));
    assert_eq!(submitted.status, OperationStatus::Running);
    let posts = fake
        .calls
        .matching("POST", &format!("/services/{SERVICE_ID}/deploys"));
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].2, json!({ "commitId": "a1b2c3d" }));

    let OperationStatus::Succeeded(result) =
        settle(&provider, &context, &submitted.reference).await
    else {
        panic!("the deploy went live");
    };
    assert_eq!(result["status"], "live");
    assert_eq!(result["commit"], "a1b2c3d");
    assert_eq!(result["deploy_id"], json!(submitted.reference));
    assert!(
        result.get("warning").is_none(),
        "a plain deploy has no rollback warning"
    );

    let (second, _) = deploy_to_live(&provider, &context, json!("e4f5a6b"), "key-2").await;
    match provider.poll(&context, &submitted.reference).await.unwrap() {
        OperationStatus::Succeeded(result) => {
            assert_eq!(result["status"], "deactivated");
            assert!(result["note"].as_str().unwrap().contains("superseded"));
        }
        other => panic!("a superseded deploy still succeeded: {other:?}"),
    }
    let live = provider.live(&context).await.unwrap();
    assert_eq!(live.reference.as_deref(), Some(second.as_str()));
    assert_eq!(live.version.as_deref(), Some("e4f5a6b"));
}

#[tokio::test]
async fn deploying_an_image_sends_its_reference_as_image_url() {
    let (fake, api) = FakeRender::start().await;
    let provider = Render::new(policy());
    let target = target(&api);
    let context = context(&target);

    let (_, result) = deploy_to_live(
        &provider,
        &context,
        json!("docker.io/org/app:1.2.0"),
        "key-1",
    )
    .await;
    assert_eq!(result["image"], "docker.io/org/app:1.2.0");
    let (_, result) = deploy_to_live(
        &provider,
        &context,
        json!({ "imageUrl": "ghcr.io/org/app:1.3.0" }),
        "key-2",
    )
    .await;
    assert_eq!(result["image"], "ghcr.io/org/app:1.3.0");
    let sha = "0123456789abcdef0123456789abcdef01234567";
    deploy_to_live(&provider, &context, json!({ "commitId": sha }), "key-3").await;

    let bodies: Vec<Value> = fake
        .calls
        .matching("POST", &format!("/services/{SERVICE_ID}/deploys"))
        .into_iter()
        .map(|(_, _, body)| body)
        .collect();
    assert_eq!(
        bodies,
        vec![
            json!({ "imageUrl": "docker.io/org/app:1.2.0" }),
            json!({ "imageUrl": "ghcr.io/org/app:1.3.0" }),
            json!({ "commitId": sha }),
        ]
    );
    let live = provider.live(&context).await.unwrap();
    assert_eq!(live.version.as_deref(), Some(sha));
}

#[tokio::test]
async fn a_failed_build_is_reported_as_a_failure() {
    let (fake, api) = FakeRender::start().await;
    fake.failing_builds.lock().unwrap().insert("badc0de".into());
    let provider = Render::new(policy());
    let target = target(&api);
    let context = context(&target);

    let submitted = provider
        .submit(&context, &deploy("2.0.0", json!("badc0de")), "key-1")
        .await
        .unwrap();
    let message = failure(settle(&provider, &context, &submitted.reference).await);
    assert!(message.contains("the build failed"), "{message}");
    assert!(message.contains("badc0de"), "{message}");
}

#[tokio::test]
async fn a_failed_pre_deploy_command_is_reported_as_a_failure() {
    let (fake, api) = FakeRender::start().await;
    fake.failing_pre_deploys
        .lock()
        .unwrap()
        .insert("org/app:migrate-broken".into());
    let provider = Render::new(policy());
    let target = target(&api);
    let context = context(&target);

    let submitted = provider
        .submit(
            &context,
            &deploy("2.0.0", json!("org/app:migrate-broken")),
            "key-1",
        )
        .await
        .unwrap();
    let message = failure(settle(&provider, &context, &submitted.reference).await);
    assert!(message.contains("pre-deploy command failed"), "{message}");
}

#[tokio::test]
async fn a_rate_limit_is_waited_out_and_a_long_one_is_handed_back() {
    let (fake, api) = FakeRender::start().await;
    let provider = Render::new(policy());
    let target = target(&api);
    let context = context(&target);

    // The fake's 429s carry Render's headers.
    fake.chaos.rate_limit(1, 1);
    let raw = reqwest::get(format!("{api}/services/{SERVICE_ID}/deploys"))
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 429);
    for header in [
        "ratelimit-limit",
        "ratelimit-remaining",
        "ratelimit-reset",
        "retry-after",
    ] {
        assert!(raw.headers().contains_key(header), "{header}");
    }

    fake.chaos.rate_limit(1, 1);
    let started = Instant::now();
    provider
        .submit(&context, &deploy("1.0.0", json!("a1b2c3d")), "key-1")
        .await
        .expect("the deploy goes through after the wait");
    assert!(started.elapsed() >= Duration::from_millis(900));

    fake.chaos.rate_limit(1, 60);
    match provider
        .submit(&context, &deploy("1.0.0", json!("a1b2c3d")), "key-2")
        .await
    {
        Err(ProviderError::RateLimited(wait)) => assert_eq!(wait, Duration::from_secs(60)),
        other => panic!("a long wait goes back to the engine: {other:?}"),
    }
}

#[tokio::test]
async fn a_500_storm_is_retried_on_reads_but_a_create_is_never_sent_twice() {
    let (fake, api) = FakeRender::start().await;
    let provider = Render::new(policy());
    let target = target(&api);
    let context = context(&target);

    // Reads are retried a bounded number of times, then reported as transient.
    fake.chaos.fail(2);
    provider.poll(&context, "dep-missing").await.ok();
    fake.chaos.fail(50);
    let before = fake.chaos.requests.load(Ordering::SeqCst);
    match provider.poll(&context, "dep-missing").await {
        Err(ProviderError::Transient(message)) => assert!(message.contains("500"), "{message}"),
        other => panic!("a storm is retryable later: {other:?}"),
    }
    let after = fake.chaos.requests.load(Ordering::SeqCst);
    assert_eq!(after - before, 3, "retries are bounded by the policy");

    // A create that meets a 500 may have been carried out: it is not repeated blind (the engine
    // asks the platform by natural key before it submits again).
    let before = fake.chaos.requests.load(Ordering::SeqCst);
    match provider
        .submit(&context, &deploy("1.0.0", json!("a1b2c3d")), "key-storm")
        .await
    {
        Err(ProviderError::Transient(message)) => assert!(message.contains("500"), "{message}"),
        other => panic!("a failed create is retryable later: {other:?}"),
    }
    let after = fake.chaos.requests.load(Ordering::SeqCst);
    assert_eq!(after - before, 1, "the create was sent once");
    fake.chaos.fail(0);
    provider
        .submit(&context, &deploy("1.0.0", json!("a1b2c3d")), "key-after")
        .await
        .expect("once the platform answers again, the create goes through");
}

#[tokio::test]
async fn a_slow_api_times_out_as_a_transient_error() {
    let (fake, api) = FakeRender::start().await;
    let provider = Render::new(policy());
    let target = target(&api);
    let context = context(&target);

    fake.chaos.delay(Duration::from_secs(2));
    match provider.poll(&context, "dep-anything").await {
        Err(ProviderError::Transient(message)) => {
            assert!(message.contains("did not answer"), "{message}")
        }
        other => panic!("a timeout is retryable later: {other:?}"),
    }
}

#[tokio::test]
async fn rollback_issues_renders_own_rollback_to_the_deploy_and_warns_that_autodeploy_stays_on() {
    let (fake, api) = FakeRender::start().await;
    let provider = Render::new(policy());
    let target = target(&api);
    let context = context(&target);

    let (good, _) = deploy_to_live(&provider, &context, json!("900d000"), "key-1").await;
    let (bad, _) = deploy_to_live(&provider, &context, json!("bad0000"), "key-2").await;

    let rollback = StepRequest::Rollback {
        version: "1.0.0".into(),
        artifact: json!("900d000"),
        from_ref: Some(bad.clone()),
        to_ref: Some(good.clone()),
    };
    let submitted = provider.submit(&context, &rollback, "key-3").await.unwrap();
    let calls = fake
        .calls
        .matching("POST", &format!("/services/{SERVICE_ID}/rollback"));
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].2, json!({ "deployId": good }));
    assert_ne!(
        submitted.reference, good,
        "Render's rollback is a new deploy"
    );

    let OperationStatus::Succeeded(result) =
        settle(&provider, &context, &submitted.reference).await
    else {
        panic!("the rollback went live");
    };
    assert_eq!(result["trigger"], "rollback");
    assert_eq!(result["commit"], "900d000");
    let warning = result["warning"].as_str().expect("a warning");
    assert!(warning.contains("autodeploy"), "{warning}");
    assert!(warning.contains("next push"), "{warning}");

    // A fresh adapter (a restarted engine) still sees the warning: it comes from the trigger.
    let OperationStatus::Succeeded(result) = Render::new(policy())
        .poll(&context, &submitted.reference)
        .await
        .unwrap()
    else {
        panic!("still live");
    };
    assert!(result["warning"].is_string());

    let live = provider.live(&context).await.unwrap();
    assert_eq!(live.version.as_deref(), Some("900d000"));
    assert_eq!(live.reference, Some(submitted.reference));
    assert!(live.detail["warning"].is_string());
}

#[tokio::test]
async fn rollback_without_a_known_deploy_redeploys_the_previous_artifact_with_the_warning() {
    let (fake, api) = FakeRender::start().await;
    let provider = Render::new(policy());
    let target = target(&api);
    let context = context(&target);

    let rollback = |to_ref: Option<&str>| StepRequest::Rollback {
        version: "1.0.0".into(),
        artifact: json!("900d000"),
        from_ref: None,
        to_ref: to_ref.map(str::to_owned),
    };
    let submitted = provider
        .submit(&context, &rollback(None), "key-1")
        .await
        .unwrap();
    assert!(fake
        .calls
        .matching("POST", &format!("/services/{SERVICE_ID}/rollback"))
        .is_empty());
    let OperationStatus::Succeeded(result) =
        settle(&provider, &context, &submitted.reference).await
    else {
        panic!("the redeploy went live");
    };
    assert_eq!(result["commit"], "900d000");
    assert!(result["warning"].as_str().unwrap().contains("autodeploy"));
    assert!(result["note"].as_str().unwrap().contains("redeployed"));

    // Render does not know the deploy any more: the artifact is redeployed instead.
    let submitted = provider
        .submit(&context, &rollback(Some("dep-gone")), "key-2")
        .await
        .unwrap();
    let OperationStatus::Succeeded(result) =
        settle(&provider, &context, &submitted.reference).await
    else {
        panic!("the redeploy went live");
    };
    let note = result["note"].as_str().unwrap();
    assert!(
        note.contains("dep-gone") && note.contains("deploy not found"),
        "{note}"
    );
    assert_eq!(
        fake.calls
            .matching("POST", &format!("/services/{SERVICE_ID}/deploys"))
            .len(),
        2
    );
}

#[tokio::test]
async fn env_vars_are_upserted_and_deleted_and_noted_to_apply_on_the_next_deploy() {
    let (fake, api) = FakeRender::start().await;
    let provider = Render::new(policy());
    let target = target(&api);
    let context = context(&target);

    let vars = BTreeMap::from([
        ("ENABLE_OCR".to_owned(), Some("true".to_owned())),
        ("OLD_FLAG".to_owned(), Some("1".to_owned())),
    ]);
    provider
        .submit(&context, &StepRequest::Config { vars }, "key-1")
        .await
        .unwrap();
    assert_eq!(
        fake.env(SERVICE_ID).get("OLD_FLAG").map(String::as_str),
        Some("1")
    );

    let vars = BTreeMap::from([
        ("ENABLE_OCR".to_owned(), Some("false".to_owned())),
        ("OLD_FLAG".to_owned(), None),
        ("NEVER_SET".to_owned(), None),
    ]);
    let submitted = provider
        .submit(&context, &StepRequest::Config { vars }, "key-2")
        .await
        .unwrap();
    let OperationStatus::Succeeded(result) = &submitted.status else {
        panic!("env changes finish at once: {:?}", submitted.status);
    };
    assert_eq!(result["set"], json!(["ENABLE_OCR"]));
    assert_eq!(result["unset"], json!(["NEVER_SET", "OLD_FLAG"]));
    assert!(result["note"].as_str().unwrap().contains("next deploy"));
    assert!(
        !result.to_string().contains("false"),
        "values are not echoed"
    );
    assert_eq!(
        fake.env(SERVICE_ID),
        BTreeMap::from([("ENABLE_OCR".to_owned(), "false".to_owned())])
    );
    let puts = fake.calls.matching(
        "PUT",
        &format!("/services/{SERVICE_ID}/env-vars/ENABLE_OCR"),
    );
    assert_eq!(puts.last().unwrap().2, json!({ "value": "false" }));
    assert_eq!(
        fake.calls
            .matching("DELETE", &format!("/services/{SERVICE_ID}/env-vars/"))
            .len(),
        2
    );
    assert!(matches!(
        provider.poll(&context, &submitted.reference).await.unwrap(),
        OperationStatus::Succeeded(_)
    ));
}

#[tokio::test]
async fn a_deploy_made_directly_on_render_shows_up_as_drift() {
    let (fake, api) = FakeRender::start().await;
    let provider = Render::new(policy());
    let target = target(&api);
    let context = context(&target);

    let (ours, _) = deploy_to_live(&provider, &context, json!("a1b2c3d"), "key-1").await;
    let theirs = fake.deploy_directly(SERVICE_ID, "f00dfee", "manual");
    let live = provider.live(&context).await.unwrap();
    assert_eq!(
        live.reference.as_deref(),
        Some(ours.as_str()),
        "not live yet"
    );
    assert_eq!(live.detail["newest"]["deploy_id"], json!(theirs));

    tokio::time::sleep(Duration::from_millis(300)).await;
    let live = provider.live(&context).await.unwrap();
    assert_eq!(live.reference.as_deref(), Some(theirs.as_str()));
    assert_eq!(live.version.as_deref(), Some("f00dfee"));
    assert_eq!(live.detail["trigger"], "manual");
}

#[tokio::test]
async fn a_202_with_an_empty_body_is_followed_to_the_newest_deploy() {
    let (fake, api) = FakeRender::start().await;
    let provider = Render::new(policy());
    let target = target(&api);
    let context = context(&target);

    fake.accept_with_empty_202.store(1, Ordering::SeqCst);
    let submitted = provider
        .submit(&context, &deploy("1.0.0", json!("a1b2c3d")), "key-1")
        .await
        .unwrap();
    let newest = &fake.deploys(SERVICE_ID)[0];
    assert_eq!(json!(submitted.reference), newest["id"]);
    assert!(matches!(
        settle(&provider, &context, &submitted.reference).await,
        OperationStatus::Succeeded(_)
    ));
}

#[tokio::test]
async fn reconciling_adopts_a_deploy_this_adapter_started_and_finds_nothing_else() {
    let (fake, api) = FakeRender::start().await;
    let provider = Render::new(policy());
    let target = target(&api);
    let context = context(&target);

    assert_eq!(provider.find(&context, "key-1").await.unwrap(), None);
    let submitted = provider
        .submit(&context, &deploy("1.0.0", json!("a1b2c3d")), "key-1")
        .await
        .unwrap();
    let found = provider
        .find(&context, "key-1")
        .await
        .unwrap()
        .expect("found");
    assert_eq!(found.reference, submitted.reference);
    assert_eq!(fake.deploys(SERVICE_ID).len(), 1);
    // Documented limitation: another process cannot tell.
    assert_eq!(
        Render::new(policy()).find(&context, "key-1").await.unwrap(),
        None
    );
}

#[tokio::test]
async fn render_errors_are_reported_with_their_message_and_unsupported_steps_are_refused() {
    let (_fake, api) = FakeRender::start().await;
    let provider = Render::new(policy());
    let mut target = target(&api);
    target
        .settings
        .insert("service_id".into(), json!("srv-unknown"));
    let context = context(&target);
    match provider
        .submit(&context, &deploy("1.0.0", json!("a1b2c3d")), "key-1")
        .await
    {
        Err(ProviderError::Permanent(message)) => {
            assert!(
                message.contains("404") && message.contains("service not found"),
                "{message}"
            )
        }
        other => panic!("an unknown service is permanent: {other:?}"),
    }

    let target = self::target(&api);
    let mut context = self::context(&target);
    let traffic = StepRequest::Traffic {
        version: "1.0.0".into(),
        percent: 10,
    };
    assert!(matches!(
        provider.submit(&context, &traffic, "key-2").await,
        Err(ProviderError::Permanent(_))
    ));
    assert!(matches!(
        provider
            .submit(&context, &deploy("1.0.0", Value::Null), "key-3")
            .await,
        Err(ProviderError::Permanent(_))
    ));
    context.credential = None;
    match provider
        .submit(&context, &deploy("1.0.0", json!("a1b2c3d")), "key-4")
        .await
    {
        Err(ProviderError::Permanent(message)) => assert!(message.contains("API key"), "{message}"),
        other => panic!("no credential is permanent: {other:?}"),
    }
}

#[tokio::test]
async fn the_live_deploy_is_found_even_behind_many_newer_deploys() {
    let (fake, api) = FakeRender::start().await;
    let provider = Render::new(policy());
    let target = target(&api);
    let context = context(&target);

    let (ours, _) = deploy_to_live(&provider, &context, json!("a1b2c3d"), "key-1").await;
    fake.failing_builds.lock().unwrap().insert("bad0000".into());
    for _ in 0..25 {
        fake.deploy_directly(SERVICE_ID, "bad0000", "new_commit");
    }
    let live = provider.live(&context).await.unwrap();
    assert_eq!(live.reference.as_deref(), Some(ours.as_str()));
    assert_eq!(live.version.as_deref(), Some("a1b2c3d"));
    assert_eq!(live.detail["newest"]["commit"], "bad0000");
    assert!(!fake
        .calls
        .all()
        .iter()
        .any(|(_, _, body)| body.to_string().contains("rnd_secret_key")));
}
