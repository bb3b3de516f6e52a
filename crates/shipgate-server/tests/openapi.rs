//! The OpenAPI document is the API's contract: it is valid JSON, it is OpenAPI 3.1, it is served
//! without a token, and it lists exactly the operations the router serves, so a route added
//! without documentation (or documentation left behind by a removed route) fails here.
//!
//! The router's paths are read from its `Debug` output (axum has no public listing; a change in
//! that output makes the test find no paths and fail loudly rather than pass vacuously), and
//! which methods each path serves is asked of the router itself: a method it does not serve
//! answers 405. No database is needed: the probes are refused (401, 400) before any query.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use tower::ServiceExt;

use shipgate_server::{app, openapi, AppState, HttpSettings};
use shipgate_store::crypto::SecretBox;

/// Methods probed on every path.
const METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
];

fn router() -> axum::Router {
    // Never connected: every probe is answered before the database would be asked, except
    // `/readyz`, which reports it unavailable.
    let pool = PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy("postgres://nobody@127.0.0.1:1/none")
        .expect("a lazy pool needs no connection");
    let state = AppState::new(
        pool,
        SecretBox::new([7u8; 32], &[]),
        Some("an-admin-token-of-enough-length"),
        None,
        HttpSettings::default(),
    );
    app(state)
}

/// Whether a path belongs to the documented API (the dashboard's pages do not; neither do the
/// bare prefixes axum adds for a nested router's fallback).
fn is_api_path(path: &str) -> bool {
    let nested = |prefix: &str| {
        path.strip_prefix(prefix)
            .is_some_and(|rest| !rest.is_empty())
    };
    nested("/api/v1/") || nested("/hooks/") || matches!(path, "/healthz" | "/readyz" | "/metrics")
}

/// The paths the router matches, from its `Debug` output (`"/api/v1/apps/{app}"`).
fn router_paths(router: &axum::Router) -> BTreeSet<String> {
    let debug = format!("{router:?}");
    debug
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|text| is_api_path(text) && !text.contains("__private__"))
        .map(str::to_owned)
        .collect()
}

/// `/rollouts/{id}` with every parameter filled in.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|segment| {
            if segment.starts_with('{') {
                "x"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

async fn served_operations(router: &axum::Router) -> BTreeSet<(String, String)> {
    let paths = router_paths(router);
    assert!(
        paths.len() > 20,
        "found only {paths:?} in the router's Debug output; has axum changed its format?"
    );
    let mut served = BTreeSet::new();
    for path in paths {
        for method in METHODS {
            let request = Request::builder()
                .method(method.clone())
                .uri(concrete(&path))
                .body(Body::empty())
                .unwrap();
            let response = router.clone().oneshot(request).await.unwrap();
            assert_ne!(
                response.status(),
                StatusCode::NOT_FOUND,
                "{method} {path} is in the router but answered 404"
            );
            if response.status() != StatusCode::METHOD_NOT_ALLOWED {
                served.insert((method.as_str().to_owned(), path.clone()));
            }
        }
    }
    served
}

fn documented_operations(document: &Value) -> BTreeSet<(String, String)> {
    let mut documented = BTreeSet::new();
    for (path, item) in document["paths"].as_object().expect("paths is an object") {
        for method in METHODS {
            if item.get(method.as_str().to_lowercase()).is_some() {
                documented.insert((method.as_str().to_owned(), path.clone()));
            }
        }
    }
    documented
}

#[tokio::test]
async fn the_document_lists_exactly_the_operations_the_router_serves() {
    let router = router();
    let served = served_operations(&router).await;
    let document: Value =
        serde_json::from_str(&openapi::document().to_json().unwrap()).expect("valid JSON");
    let documented = documented_operations(&document);
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty(),
        "routes without OpenAPI documentation (annotate the handler with #[utoipa::path] and \
         list it in openapi.rs): {undocumented:?}"
    );
    assert!(
        unserved.is_empty(),
        "documented operations the router does not serve: {unserved:?}"
    );
}

#[tokio::test]
async fn the_document_is_served_without_a_token_as_openapi_3_1() {
    let response = router()
        .oneshot(Request::get(openapi::PATH).body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let document: Value = serde_json::from_slice(&body).expect("the document is JSON");
    assert!(
        document["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        document["openapi"]
    );
    assert_eq!(document["info"]["title"], "Shipgate");
    assert_eq!(
        document["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}

#[test]
fn every_operation_that_needs_a_token_documents_its_refusals_as_problems() {
    let document: Value = serde_json::from_str(&openapi::document().to_json().unwrap()).unwrap();
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let responses = operation["responses"].as_object().unwrap();
            assert!(
                responses.keys().any(|status| status.starts_with('2')),
                "{method} {path} documents no success"
            );
            let public = operation
                .get("security")
                .and_then(Value::as_array)
                .is_some_and(|requirements| {
                    requirements
                        .iter()
                        .any(|requirement| requirement.as_object().is_some_and(|r| r.is_empty()))
                });
            if !public {
                for status in ["401", "403"] {
                    assert!(
                        responses.contains_key(status),
                        "{method} {path} needs a token but does not document {status}"
                    );
                }
            }
            for (status, response) in responses {
                if status.starts_with('4') {
                    let content = &response["content"];
                    let reference = response.get("$ref").and_then(Value::as_str);
                    assert!(
                        reference.is_some() || content.get("application/problem+json").is_some(),
                        "{method} {path} {status} is not problem+json"
                    );
                }
            }
        }
    }
}
