//! The Heroku adapter against a fake Platform API: builds followed through the release phase,
//! failed builds and release phases, rate limits, 500 storms, timeouts, Heroku's own rollback,
//! config vars, one-off dynos, drift, and finding an operation again by its natural key.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use shipgate_domain::config::TargetSpec;
use shipgate_domain::provider::ProviderKind;
use shipgate_providers::heroku::Heroku;
use shipgate_providers::http::RetryPolicy;
use shipgate_providers::{OperationStatus, Provider, ProviderError, StepRequest, TargetContext};
use shipgate_testkit::fakes::heroku::{FakeHeroku, APP};

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

fn target(base: &str, app: &str) -> TargetSpec {
    let mut settings = Map::new();
    settings.insert("app".into(), json!(app));
    settings.insert("api_url".into(), json!(base));
    TargetSpec {
        provider: ProviderKind::Heroku,
        settings,
        credential: Some("heroku".into()),
        health: None,
    }
}

fn context(target: &TargetSpec) -> TargetContext<'_> {
    TargetContext {
        app: "shop",
        environment: "production",
        component: "api",
        target,
        credential: Some("heroku-api-token"),
    }
}

fn deploy(version: &str) -> StepRequest {
    StepRequest::Deploy {
        version: version.into(),
        artifact: json!(format!("https://example.com/src-{version}.tgz")),
    }
}

async fn settle(
    provider: &Heroku,
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
    panic!("the operation never settled");
}

async fn succeeded(provider: &Heroku, context: &TargetContext<'_>, reference: &str) -> Value {
    match settle(provider, context, reference).await {
        OperationStatus::Succeeded(result) => result,
        other => panic!("expected success, got {other:?}"),
    }
}

async fn failed(provider: &Heroku, context: &TargetContext<'_>, reference: &str) -> String {
    match settle(provider, context, reference).await {
        OperationStatus::Failed(message) => message,
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// Deploys a version from source and waits for it; returns the step's result.
async fn deployed(provider: &Heroku, context: &TargetContext<'_>, version: &str) -> Value {
    let submitted = provider
        .submit(context, &deploy(version), &format!("key-{version}"))
        .await
        .unwrap();
    succeeded(provider, context, &submitted.reference).await
}

#[tokio::test]
async fn a_source_build_is_followed_through_its_release_phase_to_success() {
    let (fake, base) = FakeHeroku::start().await;
    let provider = Heroku::new(policy());
    assert_eq!(provider.kind(), ProviderKind::Heroku);
    let target = target(&base, APP);
    let context = context(&target);

    let submitted = provider
        .submit(&context, &deploy("1.0.0"), "rollout-1:0:0:1")
        .await
        .unwrap();
    assert!(submitted.reference.starts_with("build:"), "{submitted:?}");
    assert_eq!(submitted.status, OperationStatus::Running);

    let builds = fake.calls.matching("POST", &format!("/apps/{APP}/builds"));
    assert_eq!(builds.len(), 1);
    let blob = &builds[0].2["source_blob"];
    assert_eq!(blob["url"], "https://example.com/src-1.0.0.tgz");
    assert_eq!(blob["version"], "1.0.0");
    assert_eq!(
        blob["version_description"],
        "shipgate rollout-1:0:0:1: deploy 1.0.0"
    );

    let result = succeeded(&provider, &context, &submitted.reference).await;
    assert_eq!(result["build"]["source_version"], "1.0.0");
    assert_eq!(result["release"]["status"], "succeeded");
    // The build was followed to its release, and the release through its release phase (it was
    // seen `pending` at least once before it succeeded).
    let release_id = result["release"]["id"].as_str().unwrap();
    let release_polls = fake
        .calls
        .matching("GET", &format!("/apps/{APP}/releases/{release_id}"))
        .len();
    assert!(release_polls >= 2, "{release_polls} polls of the release");
    let current = fake.current_release().unwrap();
    assert_eq!(current["id"], result["release"]["id"]);
    assert_eq!(current["version"], 2);
}

#[tokio::test]
async fn a_slug_artifact_is_released_without_a_build() {
    let (fake, base) = FakeHeroku::start().await;
    let provider = Heroku::new(policy());
    let target = target(&base, APP);
    let context = context(&target);
    let slug = fake.add_slug("1.5.0");

    let request = StepRequest::Deploy {
        version: "1.5.0".into(),
        artifact: json!({ "slug": slug }),
    };
    let submitted = provider.submit(&context, &request, "k-slug").await.unwrap();
    assert!(submitted.reference.starts_with("release:"), "{submitted:?}");
    let result = succeeded(&provider, &context, &submitted.reference).await;
    assert_eq!(result["release"]["slug"], json!(slug));
    let posts = fake
        .calls
        .matching("POST", &format!("/apps/{APP}/releases"));
    assert_eq!(posts[0].2["slug"], json!(slug));
    assert_eq!(posts[0].2["description"], "shipgate k-slug: deploy 1.5.0");
    assert_eq!(fake.builds(), 0);
    let live = provider.live(&context).await.unwrap();
    assert_eq!(live.version.as_deref(), Some("1.5.0"));
}

#[tokio::test]
async fn a_failed_build_fails_the_step_with_a_reason() {
    let (fake, base) = FakeHeroku::start().await;
    fake.failing_builds.lock().unwrap().push("2.0.0".into());
    let provider = Heroku::new(policy());
    let target = target(&base, APP);
    let context = context(&target);

    let submitted = provider
        .submit(&context, &deploy("2.0.0"), "k-2")
        .await
        .unwrap();
    let message = failed(&provider, &context, &submitted.reference).await;
    assert!(
        message.contains("build") && message.contains("failed"),
        "{message}"
    );
    assert_eq!(fake.releases().len(), 1, "a failed build makes no release");
}

#[tokio::test]
async fn a_failed_release_phase_fails_the_step_and_says_so() {
    let (fake, base) = FakeHeroku::start().await;
    let provider = Heroku::new(policy());
    let target = target(&base, APP);
    let context = context(&target);
    deployed(&provider, &context, "1.0.0").await;
    fake.failing_release_phase
        .lock()
        .unwrap()
        .push("3.0.0".into());

    let submitted = provider
        .submit(&context, &deploy("3.0.0"), "k-3")
        .await
        .unwrap();
    let message = failed(&provider, &context, &submitted.reference).await;
    assert!(message.contains("release phase"), "{message}");
    assert!(message.contains("v3"), "names the release: {message}");
    let live = provider.live(&context).await.unwrap();
    assert_eq!(
        live.version.as_deref(),
        Some("1.0.0"),
        "the failed release never went live"
    );
}

#[tokio::test]
async fn rate_limits_are_waited_out_and_5xx_storms_become_retryable_errors() {
    let (fake, base) = FakeHeroku::start().await;
    let provider = Heroku::new(policy());
    let target = target(&base, APP);
    let context = context(&target);

    fake.chaos.rate_limit(1, 1);
    let started = Instant::now();
    provider
        .submit(&context, &deploy("1.0.0"), "k-429")
        .await
        .expect("a 429 is waited out");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "Retry-After was honoured"
    );
    assert_eq!(fake.builds(), 1);

    fake.chaos.rate_limit(1, 60);
    match provider.submit(&context, &deploy("1.0.0"), "k-long").await {
        Err(ProviderError::RateLimited(wait)) => assert_eq!(wait, Duration::from_secs(60)),
        other => panic!("a long wait goes back to the engine: {other:?}"),
    }
    fake.chaos.rate_limit(0, 0);

    // Reads are retried through a couple of 500s.
    let submitted = provider
        .submit(&context, &deploy("1.1.0"), "k-reads")
        .await
        .unwrap();
    fake.chaos.fail(2);
    provider
        .poll(&context, &submitted.reference)
        .await
        .expect("two 500s are retried through");

    // A storm: reads give up after the policy's attempts, as a retryable error.
    fake.chaos.fail(50);
    let before = fake.chaos.requests.load(Ordering::SeqCst);
    match provider.poll(&context, &submitted.reference).await {
        Err(ProviderError::Transient(message)) => {
            assert!(message.contains("500"), "{message}");
            assert!(message.contains("internal_server_error"), "{message}");
        }
        other => panic!("a storm is retryable later: {other:?}"),
    }
    let after = fake.chaos.requests.load(Ordering::SeqCst);
    assert_eq!(after - before, 3, "retries are bounded by the policy");

    // A create is sent once: a 5xx may hide a build Heroku started, so the engine asks `find`
    // before it submits again.
    let before = fake.chaos.requests.load(Ordering::SeqCst);
    match provider.submit(&context, &deploy("1.2.0"), "k-storm").await {
        Err(ProviderError::Transient(message)) => assert!(message.contains("500"), "{message}"),
        other => panic!("a storm is retryable later: {other:?}"),
    }
    let after = fake.chaos.requests.load(Ordering::SeqCst);
    assert_eq!(after - before, 1, "a create is not repeated blindly");
    fake.chaos.fail(0);
    assert_eq!(provider.find(&context, "k-storm").await.unwrap(), None);
    assert_eq!(fake.builds(), 2, "no build was started during the storm");
}

#[tokio::test]
async fn a_heroku_that_does_not_answer_in_time_is_a_retryable_error() {
    let (fake, base) = FakeHeroku::start().await;
    let provider = Heroku::new(policy());
    let target = target(&base, APP);
    let context = context(&target);

    fake.chaos.delay(Duration::from_secs(2));
    match provider.submit(&context, &deploy("1.0.0"), "k-slow").await {
        Err(ProviderError::Transient(message)) => {
            assert!(message.contains("did not answer"), "{message}")
        }
        other => panic!("a timeout is retryable later: {other:?}"),
    }
}

#[tokio::test]
async fn refusals_carry_heroku_s_message_and_id() {
    let (_fake, base) = FakeHeroku::start().await;
    let provider = Heroku::new(policy());

    let missing = target(&base, "no-such-app");
    match provider
        .submit(&context(&missing), &deploy("1.0.0"), "k")
        .await
    {
        Err(ProviderError::Permanent(message)) => {
            assert!(
                message.contains("Couldn't find that app. (not_found)"),
                "{message}"
            )
        }
        other => panic!("an unknown app is permanent: {other:?}"),
    }

    let target = target(&base, APP);
    let mut anonymous = context(&target);
    anonymous.credential = None;
    assert!(matches!(
        provider.submit(&anonymous, &deploy("1.0.0"), "k").await,
        Err(ProviderError::Permanent(message)) if message.contains("credential")
    ));

    let traffic = StepRequest::Traffic {
        version: "1.0.0".into(),
        percent: 10,
    };
    assert!(matches!(
        provider.submit(&context(&target), &traffic, "k").await,
        Err(ProviderError::Permanent(message)) if message.contains("traffic")
    ));

    let artifact = StepRequest::Deploy {
        version: "1.0.0".into(),
        artifact: json!(42),
    };
    assert!(matches!(
        provider.submit(&context(&target), &artifact, "k").await,
        Err(ProviderError::Permanent(message)) if message.contains("artifact")
    ));
}

#[tokio::test]
async fn rollback_uses_heroku_s_own_rollback_to_the_release_returned_to() {
    let (fake, base) = FakeHeroku::start().await;
    let provider = Heroku::new(policy());
    let target = target(&base, APP);
    let context = context(&target);
    let v1 = deployed(&provider, &context, "1.0.0").await;
    let v2 = deployed(&provider, &context, "2.0.0").await;
    let v1_release = v1["release"]["id"].as_str().unwrap().to_owned();
    let v1_slug = v1["release"]["slug"].clone();
    assert_ne!(v1_slug, v2["release"]["slug"]);

    let rollback = StepRequest::Rollback {
        version: "1.0.0".into(),
        artifact: json!("https://example.com/src-1.0.0.tgz"),
        from_ref: Some(format!("release:{}", v2["release"]["id"].as_str().unwrap())),
        to_ref: Some(format!("release:{v1_release}")),
    };
    let submitted = provider
        .submit(&context, &rollback, "k-rollback")
        .await
        .unwrap();
    assert!(
        submitted.reference.starts_with("rollback:release:"),
        "{submitted:?}"
    );
    let posts = fake
        .calls
        .matching("POST", &format!("/apps/{APP}/releases"));
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].2, json!({ "release": v1_release }));
    assert_eq!(fake.builds(), 2, "nothing was rebuilt");

    let result = succeeded(&provider, &context, &submitted.reference).await;
    let note = result["note"].as_str().unwrap();
    assert!(
        note.contains("add-ons") && note.contains("database"),
        "{note}"
    );
    assert_eq!(result["addons"], json!(["heroku-postgresql:essential-0"]));

    // The live release is a new, higher version serving the old slug.
    let current = fake.current_release().unwrap();
    assert_eq!(current["slug"]["id"], v1_slug);
    assert!(current["version"].as_u64() > v2["release"]["version"].as_u64());
    assert_ne!(current["id"], json!(v1_release));
    let live = provider.live(&context).await.unwrap();
    assert_eq!(
        live.reference,
        Some(format!("release:{}", current["id"].as_str().unwrap()))
    );
    assert_eq!(live.version.as_deref(), Some("1.0.0"));

    // Submitted again after a crash (here naming the build that made v1): adopted, not redone.
    let build_ref = format!("build:{}", v1["build"]["id"].as_str().unwrap());
    let again = StepRequest::Rollback {
        version: "1.0.0".into(),
        artifact: json!("https://example.com/src-1.0.0.tgz"),
        from_ref: None,
        to_ref: Some(build_ref),
    };
    let adopted = provider
        .submit(&context, &again, "k-rollback")
        .await
        .unwrap();
    assert_eq!(adopted.reference, submitted.reference);
    assert_eq!(
        fake.calls
            .matching("POST", &format!("/apps/{APP}/releases"))
            .len(),
        1
    );
}

#[tokio::test]
async fn rollback_without_a_known_release_redeploys_the_previous_artifact() {
    let (fake, base) = FakeHeroku::start().await;
    let provider = Heroku::new(policy());
    let target = target(&base, APP);
    let context = context(&target);
    deployed(&provider, &context, "1.0.0").await;
    deployed(&provider, &context, "2.0.0").await;

    let rollback = StepRequest::Rollback {
        version: "1.0.0".into(),
        artifact: json!("https://example.com/src-1.0.0.tgz"),
        from_ref: None,
        to_ref: None,
    };
    let submitted = provider.submit(&context, &rollback, "k-rb").await.unwrap();
    assert!(
        submitted.reference.starts_with("redeploy:build:"),
        "{submitted:?}"
    );
    let builds = fake.calls.matching("POST", &format!("/apps/{APP}/builds"));
    assert_eq!(builds.len(), 3);
    assert_eq!(builds[2].2["source_blob"]["version"], "1.0.0");
    let result = succeeded(&provider, &context, &submitted.reference).await;
    assert!(
        result["note"].as_str().unwrap().contains("config vars"),
        "{result}"
    );
    assert_eq!(
        provider.live(&context).await.unwrap().version.as_deref(),
        Some("1.0.0")
    );
}

#[tokio::test]
async fn config_vars_are_set_and_unset_and_their_release_is_followed() {
    let (fake, base) = FakeHeroku::start().await;
    let provider = Heroku::new(policy());
    let target = target(&base, APP);
    let context = context(&target);
    deployed(&provider, &context, "1.0.0").await;

    let set = StepRequest::Config {
        vars: [
            ("FEATURE_X".to_owned(), Some("on".to_owned())),
            ("LOG_LEVEL".to_owned(), Some("debug".to_owned())),
        ]
        .into_iter()
        .collect(),
    };
    let submitted = provider.submit(&context, &set, "k-config-1").await.unwrap();
    assert!(submitted.reference.starts_with("config:"), "{submitted:?}");
    let result = match submitted.status {
        OperationStatus::Succeeded(result) => result,
        _ => succeeded(&provider, &context, &submitted.reference).await,
    };
    assert_eq!(
        result["config_keys"],
        json!(["FEATURE_X", "LOG_LEVEL"]),
        "{result}"
    );
    assert_eq!(fake.config_vars()["FEATURE_X"], "on");

    let unset = StepRequest::Config {
        vars: [("FEATURE_X".to_owned(), None)].into_iter().collect(),
    };
    let submitted = provider
        .submit(&context, &unset, "k-config-2")
        .await
        .unwrap();
    if submitted.status == OperationStatus::Running {
        succeeded(&provider, &context, &submitted.reference).await;
    }
    let patches = fake
        .calls
        .matching("PATCH", &format!("/apps/{APP}/config-vars"));
    assert_eq!(patches[1].2, json!({ "FEATURE_X": null }));
    let config = fake.config_vars();
    assert!(!config.contains_key("FEATURE_X"));
    assert_eq!(config["LOG_LEVEL"], "debug");
    // Config changes make releases; the code stays the same.
    assert_eq!(
        provider.live(&context).await.unwrap().version.as_deref(),
        Some("1.0.0")
    );
}

#[tokio::test]
async fn live_reports_a_rollback_made_outside_shipgate() {
    let (fake, base) = FakeHeroku::start().await;
    let provider = Heroku::new(policy());
    let target = target(&base, APP);
    let context = context(&target);
    let v1 = deployed(&provider, &context, "1.0.0").await;
    let v2 = deployed(&provider, &context, "2.0.0").await;

    let live = provider.live(&context).await.unwrap();
    assert_eq!(live.version.as_deref(), Some("2.0.0"));
    assert_eq!(
        live.reference,
        Some(format!("release:{}", v2["release"]["id"].as_str().unwrap()))
    );

    // Someone rolls back in Heroku's dashboard.
    let outside = fake.rollback_outside(v1["release"]["version"].as_u64().unwrap());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let live = provider.live(&context).await.unwrap();
    assert_eq!(live.reference, Some(format!("release:{outside}")));
    assert_eq!(live.version.as_deref(), Some("1.0.0"));
    assert_eq!(
        live.detail["release"]["description"],
        format!("Rollback to v{}", v1["release"]["version"])
    );
}

#[tokio::test]
async fn find_locates_an_operation_by_its_key_after_a_crash() {
    let (fake, base) = FakeHeroku::start().await;
    let provider = Heroku::new(policy());
    let target = target(&base, APP);
    let context = context(&target);
    let key = "0190f0aa-0000-7000-8000-000000000001:0:0:1";

    assert_eq!(provider.find(&context, key).await.unwrap(), None);
    let submitted = provider
        .submit(&context, &deploy("1.0.0"), key)
        .await
        .unwrap();
    // The worker "crashes" here; a new one asks before submitting.
    let found = provider
        .find(&context, key)
        .await
        .unwrap()
        .expect("found by key");
    assert_eq!(found.reference, submitted.reference);
    assert_eq!(fake.builds(), 1, "no second build");
    assert_eq!(
        provider.find(&context, &format!("{key}0")).await.unwrap(),
        None,
        "a longer key is another operation"
    );

    succeeded(&provider, &context, &submitted.reference).await;
    let found = provider.find(&context, key).await.unwrap().unwrap();
    assert!(matches!(found.status, OperationStatus::Succeeded(_)));

    // Slug releases are found by their description.
    let slug = fake.add_slug("1.1.0");
    let request = StepRequest::Deploy {
        version: "1.1.0".into(),
        artifact: json!({ "slug": slug }),
    };
    let submitted = provider.submit(&context, &request, "k-slug").await.unwrap();
    let found = provider.find(&context, "k-slug").await.unwrap().unwrap();
    assert_eq!(found.reference, submitted.reference);
}

#[tokio::test]
async fn a_job_runs_in_a_one_off_dyno_and_a_crash_fails_the_step() {
    let (fake, base) = FakeHeroku::start().await;
    fake.failing_commands
        .lock()
        .unwrap()
        .push("rake boom".into());
    let provider = Heroku::new(policy());
    let target = target(&base, APP);
    let context = context(&target);
    deployed(&provider, &context, "1.0.0").await;

    let job = |command: &str| StepRequest::Job {
        version: "1.0.0".into(),
        command: command.into(),
    };
    let submitted = provider
        .submit(&context, &job("rake db:migrate"), "k-job")
        .await
        .unwrap();
    assert!(submitted.reference.starts_with("dyno:"), "{submitted:?}");
    let posts = fake.calls.matching("POST", &format!("/apps/{APP}/dynos"));
    assert_eq!(posts[0].2["command"], "rake db:migrate");
    assert_eq!(posts[0].2["type"], "run");
    assert_eq!(posts[0].2["attach"], false);
    succeeded(&provider, &context, &submitted.reference).await;

    let submitted = provider
        .submit(&context, &job("rake boom"), "k-boom")
        .await
        .unwrap();
    let message = failed(&provider, &context, &submitted.reference).await;
    assert!(message.contains("crashed"), "{message}");
}

#[tokio::test]
async fn health_counts_process_dynos_that_are_up() {
    let (fake, base) = FakeHeroku::start().await;
    let provider = Heroku::new(policy());
    let target = target(&base, APP);
    let context = context(&target);
    let reading = provider.health(&context).await.unwrap().unwrap();
    assert!(reading.healthy, "{reading:?}");
    assert_eq!(reading.summary, "1 of 1 dynos up");

    *fake.web_state.lock().unwrap() = "crashed".into();
    let reading = provider.health(&context).await.unwrap().unwrap();
    assert!(!reading.healthy, "{reading:?}");
    assert_eq!(reading.summary, "0 of 1 dynos up; crashed: web.1");
}
