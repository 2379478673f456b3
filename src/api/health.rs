//! Liveness, readiness and metrics for operators and load balancers.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use paperclip::actix::{api_v2_errors, api_v2_operation, web, Apiv2Schema};
use serde::Serialize;

use secrecy::ExposeSecret;

use crate::chat::messages::Stats;
use crate::db;
use crate::error::ApiError;
use crate::metrics::ServerCounts;
use crate::state::AppState;

/// How long a readiness probe waits for the database or Redis.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The state of the process and its dependencies.
#[derive(Debug, Serialize, Apiv2Schema)]
pub struct Health {
    /// `ok`; `unavailable` when a dependency is down; `draining` while the
    /// instance is shutting down.
    pub status: String,
    /// `up` or `down` (readiness only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// `up`, `down` or `disabled` (readiness only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<String>,
}

/// The process is alive.
#[api_v2_operation(tags(Operations))]
pub async fn healthz() -> web::Json<Health> {
    web::Json(Health {
        status: "ok".into(),
        database: None,
        redis: None,
    })
}

fn up(ok: bool) -> String {
    if ok { "up" } else { "down" }.to_string()
}

/// A dependency is down: 503 with the same body, naming it.
#[api_v2_errors(code = 503, description = "A dependency is down", schema = "Health")]
#[derive(Debug)]
pub struct NotReady(Health);

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "not ready: database {:?}, redis {:?}",
            self.0.database, self.0.redis
        )
    }
}

impl actix_web::ResponseError for NotReady {
    fn status_code(&self) -> StatusCode {
        StatusCode::SERVICE_UNAVAILABLE
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code()).json(&self.0)
    }
}

/// The database (and Redis, when configured) answer: 200, else 503 naming
/// what is down; 503 `draining` once the instance is shutting down.
#[api_v2_operation(tags(Operations))]
pub async fn readyz(state: web::Data<AppState>) -> Result<web::Json<Health>, NotReady> {
    if state.draining.load(std::sync::atomic::Ordering::Acquire) {
        return Err(NotReady(Health {
            status: "draining".into(),
            database: None,
            redis: None,
        }));
    }
    let database = matches!(
        tokio::time::timeout(PROBE_TIMEOUT, db::ping(&state.db)).await,
        Ok(Ok(()))
    );
    let redis = match &state.redis {
        None => None,
        Some(target) => Some(matches!(
            tokio::time::timeout(PROBE_TIMEOUT, target.ping()).await,
            Ok(Ok(()))
        )),
    };
    let ready = database && redis.unwrap_or(true);
    let body = Health {
        status: if ready { "ok" } else { "unavailable" }.into(),
        database: Some(up(database)),
        redis: Some(redis.map_or_else(|| "disabled".to_string(), up)),
    };
    if ready {
        Ok(web::Json(body))
    } else {
        Err(NotReady(body))
    }
}

/// Prometheus metrics; with `METRICS_TOKEN` set, only for
/// `Authorization: Bearer <METRICS_TOKEN>`.
pub async fn metrics(
    req: actix_web::HttpRequest,
    state: actix_web::web::Data<AppState>,
) -> HttpResponse {
    if let Some(expected) = &state.settings.server.metrics_token {
        let given = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .unwrap_or("");
        // Constant time: the comparison must not tell how much of a guess was right.
        let matches: bool = subtle::ConstantTimeEq::ct_eq(
            given.trim().as_bytes(),
            expected.expose_secret().as_bytes(),
        )
        .into();
        if !matches {
            return actix_web::ResponseError::error_response(&ApiError::Unauthorized(
                "This endpoint needs the metrics token.".into(),
            ));
        }
    }
    let stats = state.server.send(Stats).await.ok();
    let (users, sessions) = stats.map_or((0, 0), |s| (s.users, s.sessions));
    let counts = ServerCounts {
        users,
        sessions,
        roster_ids: state.contact_lists.rosters().ids_kept(),
    };
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(state.metrics.render(counts))
}
