//! Claims and leases against a real database: concurrent claimers never get the same rollout,
//! a lapsed lease is claimable again, and a worker that lost its lease cannot write.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use shipgate_domain::state::RolloutKind;
use shipgate_store::crypto::SecretBox;
use shipgate_store::engine::{self, Fenced};
use shipgate_store::releases::{self, NewRelease};
use shipgate_store::rollouts::{self, NewRollout};
use shipgate_store::{apps, Actor, StoreError};
use shipgate_testkit::TestDb;
use sqlx::PgPool;
use uuid::Uuid;

/// An app with `count` environments, one rollout started in each.
async fn rollouts_in_flight(pool: &PgPool, count: usize) -> Vec<Uuid> {
    let mut yaml = String::from("app: claims\ncomponents: [api]\nenvironments:\n");
    for index in 0..count {
        yaml.push_str(&format!(
            "  - name: env-{index}\n    targets: {{ api: {{ provider: simulated }} }}\n    plan: [ {{ name: all, deploy: [api] }} ]\n"
        ));
    }
    let document = shipgate_domain::config::load(&yaml, &|_| None).unwrap();
    let actor = Actor::system("test");
    apps::apply(pool, &document, &SecretBox::new([1; 32], &[]), &actor)
        .await
        .unwrap();
    let app = apps::get(pool, "claims").await.unwrap();
    let release = NewRelease {
        version: "1.0.0".into(),
        artifacts: [("api".to_owned(), serde_json::json!("image:1"))].into(),
        ..NewRelease::default()
    };
    let (release, _) = releases::create(pool, app.id, &release, &actor, "test")
        .await
        .unwrap();
    let mut ids = Vec::new();
    for index in 0..count {
        let environment = apps::environment(pool, "claims", &format!("env-{index}"))
            .await
            .unwrap();
        let id = rollouts::start(
            pool,
            NewRollout {
                environment: &environment,
                release: &release,
                kind: RolloutKind::Deploy,
                actor: &actor,
                trigger: "test",
                override_freeze: None,
            },
        )
        .await
        .unwrap();
        ids.push(id);
    }
    ids
}

#[tokio::test]
async fn concurrent_claimers_never_get_the_same_rollout() {
    let db = TestDb::new().await.unwrap();
    let ids = rollouts_in_flight(&db.pool, 40).await;
    let lease = Duration::from_secs(30);
    let (a, b, c, d) = tokio::join!(
        engine::claim_due(&db.pool, "a", lease, 15),
        engine::claim_due(&db.pool, "b", lease, 15),
        engine::claim_due(&db.pool, "c", lease, 15),
        engine::claim_due(&db.pool, "d", lease, 15),
    );
    let claimed: Vec<Uuid> = [a, b, c, d].into_iter().flat_map(Result::unwrap).collect();
    let distinct: HashSet<Uuid> = claimed.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        claimed.len(),
        "a rollout was handed out twice"
    );
    assert_eq!(
        distinct,
        ids.into_iter().collect(),
        "every due rollout was claimed"
    );
    assert!(
        engine::claim_due(&db.pool, "e", lease, 50)
            .await
            .unwrap()
            .is_empty(),
        "leased rollouts are not claimable"
    );
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn a_lapsed_lease_moves_to_another_worker_and_fences_the_first() {
    let db = TestDb::new().await.unwrap();
    let ids = rollouts_in_flight(&db.pool, 1).await;
    let claimed = engine::claim_due(&db.pool, "crashed", Duration::from_millis(200), 10)
        .await
        .unwrap();
    assert_eq!(claimed, ids);
    let loaded = Arc::new(engine::load(&db.pool, ids[0]).await.unwrap());
    tokio::time::sleep(Duration::from_millis(400)).await;
    let taken = engine::claim_due(&db.pool, "survivor", Duration::from_secs(30), 10)
        .await
        .unwrap();
    assert_eq!(taken, ids, "the lapsed lease was claimed by another worker");
    match Fenced::begin(&db.pool, Arc::clone(&loaded), "crashed").await {
        Err(StoreError::Fenced) => {}
        other => panic!(
            "the first worker could still write: {:?}",
            other.map(|_| ())
        ),
    }
    assert!(Fenced::begin(&db.pool, loaded, "survivor").await.is_ok());
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn a_write_based_on_a_stale_read_is_refused() {
    let db = TestDb::new().await.unwrap();
    let ids = rollouts_in_flight(&db.pool, 1).await;
    engine::claim_due(&db.pool, "worker", Duration::from_secs(30), 10)
        .await
        .unwrap();
    let stale = Arc::new(engine::load(&db.pool, ids[0]).await.unwrap());
    rollouts::act(
        &db.pool,
        ids[0],
        rollouts::Action::Pause,
        &Actor::token("admin"),
        None,
    )
    .await
    .unwrap();
    assert!(matches!(
        Fenced::begin(&db.pool, stale, "worker").await,
        Err(StoreError::Fenced)
    ));
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn one_person_counts_once_towards_required_approvals() {
    let db = TestDb::new().await.unwrap();
    let yaml = "app: gated\ncomponents: [api]\nenvironments:\n  - name: production\n    approvals: { required: 2 }\n    targets: { api: { provider: simulated } }\n    plan: [ { name: all, deploy: [api] } ]\n";
    let document = shipgate_domain::config::load(yaml, &|_| None).unwrap();
    let creator = Actor::system("ci");
    apps::apply(&db.pool, &document, &SecretBox::new([1; 32], &[]), &creator)
        .await
        .unwrap();
    let app = apps::get(&db.pool, "gated").await.unwrap();
    let release = NewRelease {
        version: "1.0.0".into(),
        artifacts: [("api".to_owned(), serde_json::json!("image:1"))].into(),
        ..NewRelease::default()
    };
    let (release, _) = releases::create(&db.pool, app.id, &release, &creator, "test")
        .await
        .unwrap();
    let environment = apps::environment(&db.pool, "gated", "production")
        .await
        .unwrap();
    let id = rollouts::start(
        &db.pool,
        NewRollout {
            environment: &environment,
            release: &release,
            kind: RolloutKind::Deploy,
            actor: &creator,
            trigger: "test",
            override_freeze: None,
        },
    )
    .await
    .unwrap();
    let alice = Actor::token("alice");
    rollouts::decide_approval(&db.pool, id, true, &alice, None, false)
        .await
        .unwrap();
    let again = rollouts::decide_approval(&db.pool, id, true, &alice, None, false).await;
    assert!(
        matches!(again, Err(StoreError::Conflict(_))),
        "a second approval by the same person is refused"
    );
    let own = rollouts::decide_approval(&db.pool, id, true, &creator, None, false).await;
    assert!(
        matches!(own, Err(StoreError::Refused(_))),
        "self-approval is refused by default"
    );
    let loaded = engine::load(&db.pool, id).await.unwrap();
    assert_eq!(loaded.view.approval.as_ref().map(|a| a.approvals), Some(1));
    rollouts::decide_approval(&db.pool, id, true, &Actor::token("bob"), None, false)
        .await
        .unwrap();
    let loaded = engine::load(&db.pool, id).await.unwrap();
    assert_eq!(loaded.view.approval.as_ref().map(|a| a.approvals), Some(2));
    db.drop_database().await.unwrap();
}
