//! The REST and WebSocket routes of the Jupyter Kernel Gateway API.
//!
//! These are the routes Jupyter Server's `--gateway-url` client and Enterprise Gateway's
//! clients call, with EG's status codes and JSON error bodies `{"reason", "message"}`
//! ([`error`]). Handlers only translate between HTTP and the kernel registry
//! ([`crate::kernels`]); request bodies are parsed here by hand so that bad JSON is a JSON
//! 400, not a framework's plain-text rejection. One deliberate difference from EG: an
//! unknown kernelspec name is 404, not 500. [`auth`] stands in front of every route, and
//! [`access`] in front of it, logging every request.

pub mod access;
pub mod auth;
mod delivery;
pub mod error;
mod kernels;
mod request;
mod sessions;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};

use auth::AuthPolicy;
pub use error::ApiError;
pub use request::AppState;

/// Builds the router, with authentication and CORS in front, and the access log in front of
/// those. Every route is under `state.base_url` (Jupyter's `base_url`); any other path is 404.
pub fn router(state: AppState, policy: AuthPolicy) -> Router {
    let base = state.base_url.trim_end_matches('/').to_owned();
    let at = |path: &str| format!("{base}{path}");
    Router::new()
        .route(&at("/api"), get(kernels::api_info))
        .route(&at("/api/"), get(kernels::api_info))
        .route(&at("/api/kernelspecs"), get(kernels::list_specs))
        .route(&at("/api/kernelspecs/{name}"), get(kernels::get_spec))
        .route(
            &at("/kernelspecs/{name}/{*resource}"),
            get(kernels::spec_resource),
        )
        .route(
            &at("/api/kernels"),
            get(kernels::list_kernels).post(kernels::start_kernel),
        )
        .route(
            &at("/api/kernels/{id}"),
            get(kernels::get_kernel).delete(kernels::delete_kernel),
        )
        .route(
            &at("/api/kernels/{id}/interrupt"),
            post(kernels::interrupt_kernel),
        )
        .route(
            &at("/api/kernels/{id}/restart"),
            post(kernels::restart_kernel),
        )
        .route(&at("/api/kernels/{id}/channels"), get(kernels::channels))
        .route(&at("/metrics"), get(kernels::metrics))
        .route(
            &at("/api/sessions"),
            get(sessions::list_sessions).post(sessions::create_session),
        )
        .route(
            &at("/api/sessions/{id}"),
            get(sessions::get_session)
                .patch(sessions::patch_session)
                .delete(sessions::delete_session),
        )
        .fallback(|| async { ApiError::new(axum::http::StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(policy),
            auth::layer,
        ))
        .layer(axum::middleware::from_fn(access::layer))
}
