//! The Cloud Run adapter against a fake Cloud Run Admin API v2: a deploy makes a named revision
//! at 0% traffic, traffic steps shift requests to it, a rollback is a traffic-only PATCH, env
//! changes make revisions, and rate limits, 500 storms, timeouts, drift and reconciliation by
//! natural key behave.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use shipgate_domain::config::TargetSpec;
use shipgate_domain::provider::ProviderKind;
use shipgate_providers::cloudrun::{label_value, revision_name, CloudRun};
use shipgate_providers::http::RetryPolicy;
use shipgate_providers::{
    OperationStatus, Provider, ProviderError, StepRequest, Submitted, TargetContext,
};
use shipgate_testkit::fakes::cloudrun::FakeCloudRun;

const PROJECT: &str = "acme-prod";
const REGION: &str = "us-central1";
const SERVICE: &str = "api";

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
    settings.insert("project".into(), json!(PROJECT));
    settings.insert("region".into(), json!(REGION));
    settings.insert("service".into(), json!(SERVICE));
    settings.insert("api_url".into(), json!(base));
    TargetSpec {
        provider: ProviderKind::Cloudrun,
        settings,
        credential: Some("gcp".into()),
        health: None,
    }
}

fn context(target: &TargetSpec) -> TargetContext<'_> {
    TargetContext {
        app: "shop",
        environment: "production",
        component: "api",
        target,
        credential: Some("ya29.secret-token"),
    }
}

fn image(version: &str) -> String {
    format!("us-docker.pkg.dev/acme/api/api@sha256:{version}")
}

fn deploy(version: &str) -> StepRequest {
    StepRequest::Deploy {
        version: version.into(),
        artifact: json!(image(version)),
    }
}

fn traffic(version: &str, percent: u8) -> StepRequest {
    StepRequest::Traffic {
        version: version.into(),
        percent,
    }
}

/// A fake with the service seeded; returns the fake, its URL and the first revision's name.
async fn started() -> (FakeCloudRun, String, String) {
    let (fake, base) = FakeCloudRun::start().await;
    *fake.latency.lock().unwrap() = Duration::from_millis(60);
    let first = fake.seed_service(PROJECT, REGION, SERVICE, &image("1.0.0"));
    (fake, base, first)
}

async fn settle(
    provider: &CloudRun,
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

/// Submits a step and follows it to success.
async fn run(
    provider: &CloudRun,
    context: &TargetContext<'_>,
    request: &StepRequest,
    key: &str,
) -> Submitted {
    let submitted = provider.submit(context, request, key).await.unwrap();
    match settle(provider, context, &submitted.reference).await {
        OperationStatus::Succeeded(_) => submitted,
        other => panic!("{request:?} did not succeed: {other:?}"),
    }
}

fn service_path() -> String {
    format!("/v2/projects/{PROJECT}/locations/{REGION}/services/{SERVICE}")
}

fn patches(fake: &FakeCloudRun) -> Vec<(String, String, Value)> {
    fake.calls.matching("PATCH", &service_path())
}

fn keys(body: &Value) -> Vec<String> {
    body.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_deploy_creates_a_named_revision_at_zero_traffic_and_follows_the_operation_to_success() {
    let (fake, base, first) = started().await;
    let provider = CloudRun::new(policy());
    assert_eq!(provider.kind(), ProviderKind::Cloudrun);
    let target = target(&base);
    let context = context(&target);

    let submitted = provider
        .submit(&context, &deploy("2.0.0"), "r1:0:0:1")
        .await
        .unwrap();
    assert_eq!(submitted.status, OperationStatus::Running);
    let revision = revision_name(SERVICE, "r1:0:0:1");
    let (operation, named) = submitted.reference.split_once('|').unwrap();
    assert!(operation.contains("/operations/"), "{operation}");
    assert_eq!(named, revision);

    match settle(&provider, &context, &submitted.reference).await {
        OperationStatus::Succeeded(value) => assert_eq!(value["revision"], json!(revision)),
        other => panic!("expected success, got {other:?}"),
    }

    let patch = &patches(&fake)[0].2;
    assert_eq!(patch["template"]["revision"], json!(revision));
    assert_eq!(
        patch["template"]["containers"][0]["image"],
        json!(image("2.0.0"))
    );
    assert!(
        patch["etag"].is_string(),
        "the whole service goes back with its etag"
    );
    assert_eq!(
        patch["traffic"],
        json!([{ "type": "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION", "revision": first, "percent": 100 }])
    );
    assert_eq!(
        fake.revisions(PROJECT, REGION, SERVICE),
        vec![first.clone(), revision]
    );
    assert_eq!(
        fake.traffic(PROJECT, REGION, SERVICE),
        vec![(first, 100)],
        "the new revision serves nothing until a traffic step"
    );
    let service = fake.service(PROJECT, REGION, SERVICE).unwrap();
    assert_eq!(service["generation"], json!("2"), "int64 as strings");
}

#[tokio::test]
async fn a_revision_that_fails_reports_the_condition_reason_and_keeps_traffic() {
    let (fake, base, first) = started().await;
    fake.failing_images.lock().unwrap().push(image("6.6.6"));
    let provider = CloudRun::new(policy());
    let target = target(&base);
    let context = context(&target);

    let submitted = provider
        .submit(&context, &deploy("6.6.6"), "bad:0:0:1")
        .await
        .unwrap();
    match settle(&provider, &context, &submitted.reference).await {
        OperationStatus::Failed(message) => {
            assert!(message.contains("CONTAINER_MISSING"), "{message}");
            assert!(message.contains("not found"), "{message}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    assert_eq!(fake.traffic(PROJECT, REGION, SERVICE), vec![(first, 100)]);

    // A reconciling engine finds the failed revision and sees the failure too.
    let found = provider.find(&context, "bad:0:0:1").await.unwrap().unwrap();
    assert!(
        matches!(&found.status, OperationStatus::Failed(m) if m.contains("CONTAINER_MISSING")),
        "{found:?}"
    );
}

#[tokio::test]
async fn canary_traffic_steps_of_10_50_and_100_percent_move_requests_without_new_revisions() {
    let (fake, base, first) = started().await;
    let provider = CloudRun::new(policy());
    let target = target(&base);
    let context = context(&target);
    run(&provider, &context, &deploy("2.0.0"), "c:0:0:1").await;
    let new = revision_name(SERVICE, "c:0:0:1");
    let revisions = fake.revisions(PROJECT, REGION, SERVICE).len();

    let step = run(&provider, &context, &traffic("2.0.0", 10), "c:0:1:1").await;
    assert!(step.reference.ends_with(&format!("|{new}")));
    assert_eq!(
        fake.traffic(PROJECT, REGION, SERVICE),
        vec![(new.clone(), 10), (first.clone(), 90)]
    );
    run(&provider, &context, &traffic("2.0.0", 50), "c:1:0:1").await;
    assert_eq!(
        fake.traffic(PROJECT, REGION, SERVICE),
        vec![(new.clone(), 50), (first.clone(), 50)]
    );
    run(&provider, &context, &traffic("2.0.0", 100), "c:2:0:1").await;
    assert_eq!(fake.traffic(PROJECT, REGION, SERVICE), vec![(new, 100)]);

    let patches = patches(&fake);
    assert_eq!(patches.len(), 4);
    for (_, path, body) in &patches[1..] {
        assert!(path.ends_with("?updateMask=traffic"), "{path}");
        assert_eq!(keys(body), vec!["traffic"]);
    }
    assert_eq!(fake.revisions(PROJECT, REGION, SERVICE).len(), revisions);

    // A version never deployed cannot take traffic.
    match provider
        .submit(&context, &traffic("9.9.9", 10), "c:3:0:1")
        .await
    {
        Err(ProviderError::Permanent(message)) => assert!(message.contains("9.9.9"), "{message}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_failing_gate_rolls_back_with_a_traffic_only_patch_to_the_previous_revision() {
    let (fake, base, _) = started().await;
    let provider = CloudRun::new(policy());
    let target = target(&base);
    let context = context(&target);

    // Release 1.1.0 went out fully; 2.0.0 is at 10% when its gate fails.
    let good = run(&provider, &context, &deploy("1.1.0"), "g:0:0:1").await;
    run(&provider, &context, &traffic("1.1.0", 100), "g:0:1:1").await;
    let bad = run(&provider, &context, &deploy("2.0.0"), "b:0:0:1").await;
    run(&provider, &context, &traffic("2.0.0", 10), "b:0:1:1").await;
    let good_revision = revision_name(SERVICE, "g:0:0:1");
    let bad_revision = revision_name(SERVICE, "b:0:0:1");
    assert_eq!(
        fake.traffic(PROJECT, REGION, SERVICE),
        vec![(bad_revision, 10), (good_revision.clone(), 90)]
    );
    let revisions = fake.revisions(PROJECT, REGION, SERVICE).len();
    let before = patches(&fake).len();

    let rollback = StepRequest::Rollback {
        version: "1.1.0".into(),
        artifact: json!(image("1.1.0")),
        from_ref: Some(bad.reference.clone()),
        to_ref: Some(good.reference.clone()),
    };
    let submitted = run(&provider, &context, &rollback, "rb:0:0:1").await;
    assert!(submitted.reference.ends_with(&format!("|{good_revision}")));
    assert_eq!(
        fake.traffic(PROJECT, REGION, SERVICE),
        vec![(good_revision.clone(), 100)]
    );

    let patches = patches(&fake);
    assert_eq!(patches.len(), before + 1, "one PATCH");
    let (_, path, body) = patches.last().unwrap();
    assert!(path.ends_with("?updateMask=traffic"), "{path}");
    assert_eq!(
        body,
        &json!({ "traffic": [{ "type": "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION", "revision": good_revision, "percent": 100 }] }),
        "traffic only"
    );
    assert_eq!(
        fake.revisions(PROJECT, REGION, SERVICE).len(),
        revisions,
        "no new revision"
    );
}

#[tokio::test]
async fn a_rollback_without_a_known_revision_redeploys_the_image_at_full_traffic() {
    let (fake, base, _) = started().await;
    let provider = CloudRun::new(policy());
    let target = target(&base);
    let context = context(&target);
    run(&provider, &context, &deploy("2.0.0"), "d:0:0:1").await;

    let rollback = StepRequest::Rollback {
        version: "1.0.0".into(),
        artifact: json!(image("1.0.0")),
        from_ref: None,
        to_ref: None,
    };
    run(&provider, &context, &rollback, "rb:0:0:1").await;
    let revision = revision_name(SERVICE, "rb:0:0:1");
    assert_eq!(
        fake.traffic(PROJECT, REGION, SERVICE),
        vec![(revision.clone(), 100)]
    );
    let service = fake.service(PROJECT, REGION, SERVICE).unwrap();
    assert_eq!(
        service["template"]["containers"][0]["image"],
        json!(image("1.0.0"))
    );
    assert!(fake.revisions(PROJECT, REGION, SERVICE).contains(&revision));
}

#[tokio::test]
async fn rate_limits_are_waited_out_and_long_ones_go_back_to_the_engine() {
    let (fake, base, _) = started().await;
    let provider = CloudRun::new(policy());
    let target = target(&base);
    let context = context(&target);

    fake.chaos.rate_limit(1, 1);
    let started = Instant::now();
    run(&provider, &context, &deploy("2.0.0"), "rl:0:0:1").await;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "Retry-After was honoured"
    );

    fake.chaos.rate_limit(1, 60);
    match provider
        .submit(&context, &deploy("3.0.0"), "rl:1:0:1")
        .await
    {
        Err(ProviderError::RateLimited(wait)) => assert_eq!(wait, Duration::from_secs(60)),
        other => panic!("a long wait goes back to the engine: {other:?}"),
    }
}

#[tokio::test]
async fn a_500_storm_is_retried_a_bounded_number_of_times_then_is_transient() {
    let (fake, base, _) = started().await;
    let provider = CloudRun::new(policy());
    let target = target(&base);
    let context = context(&target);

    fake.chaos.fail(2);
    run(&provider, &context, &deploy("2.0.0"), "s:0:0:1").await;

    fake.chaos.fail(50);
    let before = fake.chaos.requests.load(Ordering::SeqCst);
    match provider.submit(&context, &deploy("3.0.0"), "s:1:0:1").await {
        Err(ProviderError::Transient(message)) => {
            assert!(message.contains("500"), "{message}");
            assert!(message.contains("INTERNAL"), "{message}");
        }
        other => panic!("a storm is retryable later: {other:?}"),
    }
    let after = fake.chaos.requests.load(Ordering::SeqCst);
    assert_eq!(after - before, 3, "retries are bounded by the policy");
}

#[tokio::test]
async fn a_slow_api_times_out_as_transient() {
    let (fake, base, _) = started().await;
    let provider = CloudRun::new(policy());
    let target = target(&base);
    let context = context(&target);
    fake.chaos.delay(Duration::from_secs(2));
    match provider.submit(&context, &deploy("2.0.0"), "t:0:0:1").await {
        Err(ProviderError::Transient(message)) => {
            assert!(message.contains("did not answer"), "{message}")
        }
        other => panic!("a timeout is retryable later: {other:?}"),
    }
}

#[tokio::test]
async fn google_errors_read_as_message_and_status() {
    let (_fake, base, _) = started().await;
    let provider = CloudRun::new(policy());
    let mut target = target(&base);
    target.settings.insert("service".into(), json!("missing"));
    let context = context(&target);
    match provider.submit(&context, &deploy("2.0.0"), "e:0:0:1").await {
        Err(ProviderError::Permanent(message)) => {
            assert!(message.contains("HTTP 404"), "{message}");
            assert!(message.contains("(NOT_FOUND)"), "{message}");
        }
        other => panic!("expected a permanent error, got {other:?}"),
    }
}

#[tokio::test]
async fn setting_and_unsetting_env_vars_makes_a_new_revision_each_time() {
    let (fake, base, first) = started().await;
    let provider = CloudRun::new(policy());
    let target = target(&base);
    let context = context(&target);

    let vars = BTreeMap::from([
        ("FEATURE_X".to_owned(), Some("on".to_owned())),
        ("LOG_LEVEL".to_owned(), Some("debug".to_owned())),
    ]);
    run(
        &provider,
        &context,
        &StepRequest::Config { vars },
        "v:0:0:1",
    )
    .await;
    let set = revision_name(SERVICE, "v:0:0:1");
    assert_eq!(
        fake.env(PROJECT, REGION, SERVICE, &set),
        vec![
            ("FEATURE_X".to_owned(), "on".to_owned()),
            ("LOG_LEVEL".to_owned(), "debug".to_owned())
        ]
    );
    assert_eq!(
        fake.traffic(PROJECT, REGION, SERVICE),
        vec![(set.clone(), 100)]
    );

    let vars = BTreeMap::from([("LOG_LEVEL".to_owned(), None)]);
    run(
        &provider,
        &context,
        &StepRequest::Config { vars },
        "v:1:0:1",
    )
    .await;
    let unset = revision_name(SERVICE, "v:1:0:1");
    assert_eq!(
        fake.env(PROJECT, REGION, SERVICE, &unset),
        vec![("FEATURE_X".to_owned(), "on".to_owned())]
    );
    assert_eq!(
        fake.revisions(PROJECT, REGION, SERVICE),
        vec![first, set, unset.clone()]
    );
    assert_eq!(fake.traffic(PROJECT, REGION, SERVICE), vec![(unset, 100)]);
}

#[tokio::test]
async fn live_reports_traffic_changed_in_the_console() {
    let (fake, base, first) = started().await;
    let provider = CloudRun::new(policy());
    let target = target(&base);
    let context = context(&target);
    run(&provider, &context, &deploy("2.0.0"), "l:0:0:1").await;
    run(&provider, &context, &traffic("2.0.0", 100), "l:0:1:1").await;
    let new = revision_name(SERVICE, "l:0:0:1");

    let live = provider.live(&context).await.unwrap();
    assert_eq!(live.reference.as_deref(), Some(new.as_str()));
    assert_eq!(live.version.as_deref(), Some("2.0.0"));

    // Someone sends 80% back to the first revision by hand.
    fake.set_traffic(PROJECT, REGION, SERVICE, &[(&first, 80), (&new, 20)]);
    let live = provider.live(&context).await.unwrap();
    assert_eq!(
        live.reference.as_deref(),
        Some(format!("{first}:80,{new}:20").as_str())
    );
    assert_eq!(
        live.detail["traffic"],
        json!([{ "revision": first, "percent": 80 }, { "revision": new, "percent": 20 }])
    );
    assert_eq!(live.version.as_deref(), Some(image("1.0.0").as_str()));
}

#[tokio::test]
async fn find_adopts_the_revision_of_a_natural_key_instead_of_deploying_again() {
    let (fake, base, _) = started().await;
    let provider = CloudRun::new(policy());
    let target = target(&base);
    let context = context(&target);

    assert_eq!(provider.find(&context, "f:0:0:1").await.unwrap(), None);
    provider
        .submit(&context, &deploy("2.0.0"), "f:0:0:1")
        .await
        .unwrap();
    let found = provider
        .find(&context, "f:0:0:1")
        .await
        .unwrap()
        .expect("found by its revision name");
    let revision = revision_name(SERVICE, "f:0:0:1");
    assert_eq!(found.reference, format!("|{revision}"));
    assert!(matches!(
        settle(&provider, &context, &found.reference).await,
        OperationStatus::Succeeded(_)
    ));

    // Submitting the same step again adopts the revision instead of PATCHing twice.
    let again = provider
        .submit(&context, &deploy("2.0.0"), "f:0:0:1")
        .await
        .unwrap();
    assert_eq!(again.reference, format!("|{revision}"));
    assert_eq!(patches(&fake).len(), 1);
    assert_eq!(fake.revisions(PROJECT, REGION, SERVICE).len(), 2);
}

#[test]
fn revision_names_are_stable_lowercase_and_short_enough() {
    let name = revision_name("Api", "0190-aa:1:0:1");
    assert_eq!(name, revision_name("Api", "0190-aa:1:0:1"));
    assert_ne!(name, revision_name("Api", "0190-aa:1:0:2"));
    assert!(name.starts_with("api-sg-"), "{name}");
    assert_eq!(name.len(), "api-sg-".len() + 10);
    assert!(revision_name(&"s".repeat(80), "k").len() <= 63);
    assert_eq!(label_value("1.2.0+Build"), "1-2-0-build");
}

#[tokio::test]
async fn a_rollback_without_to_ref_returns_to_the_revision_that_served_before_the_undone_one() {
    let (fake, base, first) = started().await;
    let provider = CloudRun::new(policy());
    let target = target(&base);
    let context = context(&target);
    // The first revision was not deployed by Shipgate, so no step references it.
    let bad = run(&provider, &context, &deploy("2.0.0"), "p:0:0:1").await;
    run(&provider, &context, &traffic("2.0.0", 50), "p:0:1:1").await;
    let revisions = fake.revisions(PROJECT, REGION, SERVICE).len();

    let rollback = StepRequest::Rollback {
        version: "1.0.0".into(),
        artifact: json!(image("1.0.0")),
        from_ref: Some(bad.reference),
        to_ref: None,
    };
    run(&provider, &context, &rollback, "p:rb:0:1").await;
    assert_eq!(
        fake.traffic(PROJECT, REGION, SERVICE),
        vec![(first.clone(), 100)]
    );
    assert_eq!(fake.revisions(PROJECT, REGION, SERVICE).len(), revisions);
    let (_, path, body) = patches(&fake).pop().unwrap();
    assert!(path.ends_with("?updateMask=traffic"), "{path}");
    assert_eq!(keys(&body), vec!["traffic"]);
}

#[tokio::test]
async fn a_service_changed_between_read_and_write_is_read_again() {
    let (fake, base, _) = started().await;
    let provider = CloudRun::new(policy());
    let target = target(&base);
    let context = context(&target);
    fake.etag_conflicts.store(1, Ordering::SeqCst);
    run(&provider, &context, &deploy("2.0.0"), "x:0:0:1").await;
    assert_eq!(
        patches(&fake).len(),
        2,
        "the conflicting PATCH and the retry"
    );
    assert_eq!(fake.revisions(PROJECT, REGION, SERVICE).len(), 2);
}

#[tokio::test]
async fn a_release_is_found_among_many_revisions_across_pages() {
    let (fake, base, _) = started().await;
    let provider = CloudRun::new(policy());
    let target = target(&base);
    let context = context(&target);
    for (version, key) in [("2.0.0", "m:0"), ("3.0.0", "m:1"), ("4.0.0", "m:2")] {
        run(&provider, &context, &deploy(version), key).await;
    }
    let lists = || {
        fake.calls
            .matching("GET", &service_path())
            .iter()
            .filter(|(_, path, _)| path.ends_with("/revisions"))
            .count()
    };
    let before = lists();
    run(&provider, &context, &traffic("2.0.0", 100), "m:3").await;
    assert_eq!(
        fake.traffic(PROJECT, REGION, SERVICE),
        vec![(revision_name(SERVICE, "m:0"), 100)]
    );
    let pages = lists() - before;
    assert!(pages >= 2, "followed nextPageToken ({pages} pages)");
}

#[tokio::test]
async fn health_is_the_readiness_of_every_revision_serving_traffic() {
    let (fake, base, _) = started().await;
    let provider = CloudRun::new(policy());
    let target = target(&base);
    let context = context(&target);
    run(&provider, &context, &deploy("2.0.0"), "h:0:0:1").await;
    run(&provider, &context, &traffic("2.0.0", 10), "h:0:1:1").await;
    let new = revision_name(SERVICE, "h:0:0:1");

    let reading = provider.health(&context).await.unwrap().unwrap();
    assert!(reading.healthy, "{}", reading.summary);
    assert!(
        reading.summary.contains(&format!("{new} (10%)")),
        "{}",
        reading.summary
    );

    fake.fail_revision(
        PROJECT,
        REGION,
        SERVICE,
        &new,
        "HEALTH_CHECK_CONTAINER_ERROR",
        "The container crashed.",
    );
    let reading = provider.health(&context).await.unwrap().unwrap();
    assert!(!reading.healthy);
    assert!(
        reading.summary.contains("HEALTH_CHECK_CONTAINER_ERROR"),
        "{}",
        reading.summary
    );
}
