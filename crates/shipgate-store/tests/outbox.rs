//! The notification outbox against a real database: a notification exists if and only if its
//! event committed, it goes only to the channels that route it, concurrent claimers never get
//! the same one, and a lapsed claim is claimed again.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;
use shipgate_store::crypto::SecretBox;
use shipgate_store::events::{self, Scope};
use shipgate_store::notifications;
use shipgate_store::{apps, Actor};
use shipgate_testkit::TestDb;
use sqlx::PgPool;

const CONFIG: &str = r#"
app: shop
components: [api]
environments:
  - name: staging
    targets: { api: { provider: simulated } }
    plan: [ { name: all, deploy: [api] } ]
  - name: production
    targets: { api: { provider: simulated } }
    plan: [ { name: all, deploy: [api] } ]
notifications:
  - name: everything
    webhook: { url: "https://hooks.example/everything", secret: s3cret }
  - name: production-critical
    slack: { webhook_url: "https://hooks.slack.example/T/B/X" }
    environments: [production]
    severity: critical
"#;

async fn scope(pool: &PgPool, environment: &str) -> Scope {
    let environment = apps::environment(pool, "shop", environment).await.unwrap();
    Scope {
        app_id: Some(environment.app_id),
        environment_id: Some(environment.id),
        rollout_id: None,
    }
}

async fn queued(pool: &PgPool) -> Vec<(String, String)> {
    sqlx::query_as("select channel, event from outbox order by id")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_notification_is_queued_with_its_event_and_only_for_the_channels_that_route_it() {
    let db = TestDb::new().await.unwrap();
    let pool = &db.pool;
    let secrets = SecretBox::new([1; 32], &[]);
    let document = shipgate_domain::config::load(CONFIG, &|_| None).unwrap();
    let actor = Actor::system("test");
    apps::apply(pool, &document, &secrets, &actor)
        .await
        .unwrap();
    let staging = scope(pool, "staging").await;
    let production = scope(pool, "production").await;

    // Rolled back with its transaction: nothing queued.
    let mut tx = pool.begin().await.unwrap();
    events::record(&mut *tx, production, &actor, "rollout.failed", json!({}))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert!(queued(pool).await.is_empty());

    // Not an announced event: nothing queued.
    events::record(pool, production, &actor, "phase.started", json!({}))
        .await
        .unwrap();
    assert!(queued(pool).await.is_empty());

    events::record(pool, staging, &actor, "rollout.failed", json!({}))
        .await
        .unwrap();
    events::record(pool, production, &actor, "rollout.succeeded", json!({}))
        .await
        .unwrap();
    events::record(pool, production, &actor, "rollback.restored", json!({}))
        .await
        .unwrap();
    let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
        list.iter()
            .map(|(channel, event)| (channel.to_string(), event.to_string()))
            .collect()
    };
    assert_eq!(
        queued(pool).await,
        pairs(&[
            ("everything", "rollout.failed"),
            ("everything", "rollout.succeeded"),
            ("everything", "rollback.finished"),
            ("production-critical", "rollback.finished"),
        ])
    );

    // The URL is sealed: the database holds no plaintext of it.
    let leaked: i64 = sqlx::query_scalar(
        "select count(*) from notification_channels
          where position('hooks.slack.example' in encode(url_ciphertext, 'escape')) > 0",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(leaked, 0);
    let channel = notifications::open_channel(
        pool,
        &secrets,
        staging.app_id.unwrap(),
        "production-critical",
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(channel.url.expose(), "https://hooks.slack.example/T/B/X");
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn concurrent_claimers_never_share_a_notification_and_a_lapsed_claim_comes_back() {
    let db = TestDb::new().await.unwrap();
    let pool = &db.pool;
    let document = shipgate_domain::config::load(CONFIG, &|_| None).unwrap();
    let actor = Actor::system("test");
    apps::apply(pool, &document, &SecretBox::new([1; 32], &[]), &actor)
        .await
        .unwrap();
    let staging = scope(pool, "staging").await;
    for _ in 0..40 {
        events::record(pool, staging, &actor, "rollout.started", json!({}))
            .await
            .unwrap();
    }
    let lease = Duration::from_secs(60);
    let (a, b, c, d) = tokio::join!(
        notifications::claim(pool, 15, lease),
        notifications::claim(pool, 15, lease),
        notifications::claim(pool, 15, lease),
        notifications::claim(pool, 15, lease),
    );
    let mut seen = HashSet::new();
    for claimed in [a, b, c, d].into_iter().flat_map(Result::unwrap) {
        assert!(
            seen.insert(claimed.id),
            "{} was handed out twice",
            claimed.id
        );
        assert_eq!(claimed.attempts, 1);
    }
    assert_eq!(seen.len(), 40);
    assert!(notifications::claim(pool, 15, lease)
        .await
        .unwrap()
        .is_empty());

    // A worker that died mid-delivery: once its lease lapses, the row is due again.
    sqlx::query("update outbox set next_attempt_at = now() - interval '1 second' where id = $1")
        .bind(*seen.iter().next().unwrap())
        .execute(pool)
        .await
        .unwrap();
    let again = notifications::claim(pool, 15, lease).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempts, 2);
    db.drop_database().await.unwrap();
}
