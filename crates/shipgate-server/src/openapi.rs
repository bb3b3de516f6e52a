//! The OpenAPI 3.1 document of the HTTP API, generated from the handlers' `#[utoipa::path]`
//! annotations and the types they exchange, and served without a token at
//! `GET /api/v1/openapi.json`. It is the contract: a test checks it lists every route the router
//! serves, and CI runs schemathesis against it (`.ci/schemathesis.sh`).
//!
//! Errors every operation shares are added here rather than on each handler: 401 and 403 on
//! every operation that needs a token, 429 on every rate-limited one, 400 (a malformed path,
//! query or body) and 413 (a body over 1 MiB) where a request carries them.

use std::sync::LazyLock;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, HeaderBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::{access, api, freezes, hooks, notifications, ops, AppState};

/// Where the document is served.
pub const PATH: &str = "/api/v1/openapi.json";

/// The document's skeleton: every operation and the tags that group them.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Shipgate",
        description = "Shipgate's HTTP API: apply app configs, create releases, roll them out through \
                       environments, act on rollouts, roll back, and read everything back. Every \
                       `/api/v1` route except this document needs `Authorization: Bearer <token>` \
                       (an API token, or the bootstrap `SHIPGATE_ADMIN_TOKEN`). Errors are RFC 9457 \
                       `application/problem+json`. Every `POST` accepts an `Idempotency-Key` header.",
    ),
    paths(
        api::list_apps,
        api::apply_app,
        api::get_app,
        api::create_release,
        api::list_releases,
        api::get_release,
        api::environment_status,
        api::start_rollout,
        api::roll_back,
        api::environment_config,
        api::rollback_history,
        api::resume_auto_deploy,
        api::stop_app_line,
        api::resume_app_line,
        api::stop_every_line,
        api::resume_every_line,
        api::list_rollouts,
        api::get_rollout,
        api::rollout_events,
        api::act_on_rollout,
        api::list_events,
        access::list_tokens,
        access::create_token,
        access::revoke_token,
        access::list_users,
        access::create_user,
        access::disable_user,
        hooks::list_deliveries,
        notifications::list_notifications,
        freezes::list_freezes,
        freezes::create_freeze,
        freezes::preview_freeze,
        freezes::delete_freeze,
        hooks::github,
        hooks::github_for_app,
        hooks::gitlab,
        hooks::gitlab_for_app,
        hooks::generic,
        ops::healthz,
        ops::readyz,
        ops::metrics,
        openapi_json,
    ),
    security(("bearer" = [])),
    modifiers(&SharedResponses),
    tags(
        (name = "apps", description = "Apps and their config documents."),
        (name = "releases", description = "Releases: a version with an artifact per component."),
        (name = "environments", description = "What is live in an environment, its config and rollbacks."),
        (name = "rollouts", description = "Rolling releases out, acting on rollouts, rolling back."),
        (name = "events", description = "The audit log."),
        (name = "access", description = "API tokens and dashboard users (admin only)."),
        (name = "webhooks", description = "Git and CI deliveries, verified by signature rather than token."),
        (name = "notifications", description = "Notifications of rollouts and rollbacks to Slack and signed webhooks, and their delivery."),
        (name = "freezes", description = "Freeze windows: when rollouts are refused, and what a window would block."),
        (name = "operations", description = "Liveness, readiness, metrics and this document."),
    ),
)]
pub struct ApiDoc;

/// The document.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// `GET /openapi.json` (nested under `/api/v1`).
pub fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(openapi_json))
}

static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    document()
        .to_pretty_json()
        .expect("the OpenAPI document serializes")
});

/// This document. Needs no token.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "operations",
    summary = "This OpenAPI document",
    security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document.", body = Object)),
)]
async fn openapi_json() -> Response {
    let mut response = DOCUMENT.as_str().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Adds the bearer scheme and the errors operations share (see the module's comment).
struct SharedResponses;

const PROBLEM: &str = "application/problem+json";

fn problem_response(
    description: &str,
    header: Option<(&str, Type, &str)>,
) -> RefOr<utoipa::openapi::Response> {
    let mut response = ResponseBuilder::new().description(description).content(
        PROBLEM,
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("Problem")))
            .build(),
    );
    if let Some((name, kind, about)) = header {
        response = response.header(
            name,
            HeaderBuilder::new()
                .schema(ObjectBuilder::new().schema_type(kind))
                .description(Some(about))
                .build(),
        );
    }
    RefOr::T(response.build())
}

fn operations(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.patch.as_mut(),
    ]
    .into_iter()
    .flatten()
}

impl Modify for SharedResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "An API token (`shipgate token create`, `POST /api/v1/tokens`) or the bootstrap \
                         SHIPGATE_ADMIN_TOKEN.",
                    ))
                    .build(),
            ),
        );
        let shared = [
            (
                "BadRequest",
                problem_response(
                    "Malformed request: a path segment, query parameter or body that cannot be read.",
                    None,
                ),
            ),
            (
                "Unauthorized",
                problem_response(
                    "No token, or a token that is malformed, expired or revoked.",
                    Some((
                        "WWW-Authenticate",
                        Type::String,
                        "`Bearer realm=\"shipgate\"`.",
                    )),
                ),
            ),
            (
                "Forbidden",
                problem_response(
                    "The token lacks the scope this needs, or is limited to another app or environment.",
                    None,
                ),
            ),
            (
                "PayloadTooLarge",
                problem_response("The body is over 1 MiB.", None),
            ),
            (
                "TooManyRequests",
                problem_response(
                    "Rate limited (per address and per token); retry after `Retry-After` seconds.",
                    Some(("Retry-After", Type::Integer, "Seconds to wait.")),
                ),
            ),
        ];
        for (name, response) in shared {
            components.responses.insert(name.to_owned(), response);
        }

        for (path, item) in openapi.paths.paths.iter_mut() {
            let rate_limited = !matches!(path.as_str(), "/healthz" | "/readyz");
            for operation in operations(item) {
                let needs_token = operation.security.is_none();
                let has_input = operation.parameters.as_ref().is_some_and(|p| !p.is_empty())
                    || operation.request_body.is_some();
                let has_body = operation.request_body.is_some();
                let mut add = |status: &str, name: &str| {
                    operation
                        .responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| RefOr::Ref(Ref::from_response_name(name)));
                };
                if has_input {
                    add("400", "BadRequest");
                }
                if needs_token {
                    add("401", "Unauthorized");
                    add("403", "Forbidden");
                }
                if has_body {
                    add("413", "PayloadTooLarge");
                }
                if rate_limited {
                    add("429", "TooManyRequests");
                }
            }
        }
    }
}
