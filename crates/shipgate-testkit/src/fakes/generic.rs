//! A fake deploy endpoint for the generic `http` provider: `POST /deploy` and `POST /rollback`
//! start an operation (deduplicated on `Idempotency-Key`) that settles after a delay;
//! `GET /status/{id}` reports `running`, `succeeded` or `failed`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{serve, with_chaos, CallLog, Chaos};

struct Operation {
    ready_at: Instant,
    fail: bool,
}

/// The fake's state.
#[derive(Clone, Default)]
pub struct FakeDeployEndpoint {
    operations: Arc<Mutex<HashMap<String, Operation>>>,
    /// Versions whose deploys fail.
    pub failing_versions: Arc<Mutex<Vec<String>>>,
    /// How long an operation runs.
    pub latency: Arc<Mutex<Duration>>,
    /// Calls received.
    pub calls: CallLog,
    /// Failure injection.
    pub chaos: Arc<Chaos>,
}

fn error_body(status: u16, message: &str) -> Value {
    json!({ "error": { "status": status, "message": message } })
}

async fn start(
    State(fake): State<FakeDeployEndpoint>,
    Path(kind): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> impl IntoResponse {
    fake.calls.record("POST", &format!("/{kind}"), body.clone());
    let Some(key) = headers.get("idempotency-key").and_then(|v| v.to_str().ok()) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(error_body(400, "Idempotency-Key is required")),
        );
    };
    let version = body["request"]["version"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let fail = fake.failing_versions.lock().unwrap().contains(&version);
    let latency = *fake.latency.lock().unwrap();
    fake.operations
        .lock()
        .unwrap()
        .entry(key.to_owned())
        .or_insert(Operation {
            ready_at: Instant::now() + latency,
            fail,
        });
    (
        StatusCode::ACCEPTED,
        Json(json!({ "id": key, "status": "running" })),
    )
}

async fn status(
    State(fake): State<FakeDeployEndpoint>,
    Path(id): Path<String>,
) -> impl IntoResponse {
    let operations = fake.operations.lock().unwrap();
    match operations.get(&id) {
        None => (
            StatusCode::NOT_FOUND,
            Json(error_body(404, "no such operation")),
        ),
        Some(op) if Instant::now() < op.ready_at => {
            (StatusCode::OK, Json(json!({ "status": "running" })))
        }
        Some(op) if op.fail => (
            StatusCode::OK,
            Json(json!({ "status": "failed", "message": "build exited 1" })),
        ),
        Some(_) => (StatusCode::OK, Json(json!({ "status": "succeeded" }))),
    }
}

impl FakeDeployEndpoint {
    /// Starts the fake; returns it with its base URL.
    pub async fn start() -> (Self, String) {
        let fake = FakeDeployEndpoint::default();
        *fake.latency.lock().unwrap() = Duration::from_millis(200);
        let router = Router::new()
            .route("/{kind}", post(start))
            .route("/status/{id}", get(status))
            .with_state(fake.clone());
        let url = serve(with_chaos(router, fake.chaos.clone(), error_body)).await;
        (fake, url)
    }

    /// Operations started in all (deduplicated on their key).
    pub fn operations(&self) -> usize {
        self.operations.lock().unwrap().len()
    }
}
