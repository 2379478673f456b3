//! Logging through `tracing`: human-readable or JSON lines, filtered by
//! `RUST_LOG` (default `info`, or `debug` with `DEBUG=1`).

use std::pin::Pin;
use std::task::{Context, Poll};

use actix_web::body::{BodySize, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::web::Bytes;
use actix_web::Error;
use futures_util::future::LocalBoxFuture;
use tracing::{Instrument, Span};
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber; a second call (tests) is a no-op.
pub fn init(format: LogFormat, debug: bool) {
    let default = if debug { "debug" } else { "info" };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{default},sqlx=warn,sea_orm=warn")));
    // A line when a span closes: one per HTTP request (method, route, status,
    // time; a WebSocket's as it is upgraded) and one per WebSocket session
    // (its client's address, its user, its lifetime).
    // Colours only for a person at a terminal, never into a file or a
    // log collector.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_span_events(FmtSpan::CLOSE)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

/// The span of every HTTP request, as middleware (`from_fn`): opened as
/// the request comes in (`request_span`), ended with its outcome
/// (`record_outcome`), and entered while the handler runs and while the
/// body streams, so a line logged meanwhile names its request. Not while
/// a WebSocket's body streams: that body is the whole connection (every
/// frame written to it), whose session has a span of its own, and
/// entering the request's span at each write cost a 1,000-member group's
/// fan-out 6-10 % of the server's CPU (BENCHMARKS.md).
///
/// Its future is boxed: as the outermost middleware's, it would be held
/// inline in each connection's task, which an upgraded connection keeps
/// for its whole life; inline it made every idle WebSocket 0.3 KiB
/// larger (BENCHMARKS.md, "A fifty-second machine").
pub fn request_spans<B: MessageBody + 'static>(
    request: ServiceRequest,
    next: Next<B>,
) -> LocalBoxFuture<'static, Result<ServiceResponse<SpannedBody<B>>, Error>> {
    Box::pin(async move {
        let span = request_span(&request);
        let handled = span.in_scope(|| next.call(request));
        let outcome = handled.instrument(span.clone()).await;
        record_outcome(&span, &outcome);
        outcome.map(|response| {
            let upgraded = response.status() == StatusCode::SWITCHING_PROTOCOLS;
            let span = (!upgraded).then_some(span);
            response.map_body(|_, body| SpannedBody { body, span })
        })
    })
}

pin_project_lite::pin_project! {
    /// A response body, polled in its request's span if it has one.
    pub struct SpannedBody<B> {
        #[pin]
        body: B,
        span: Option<Span>,
    }
}

impl<B: MessageBody> MessageBody for SpannedBody<B> {
    type Error = B::Error;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.project();
        match this.span {
            Some(span) => span.in_scope(|| this.body.poll_next(cx)),
            None => this.body.poll_next(cx),
        }
    }
}

/// A request's span, with OpenTelemetry's field names: its method,
/// route, target (the secrets a URL can carry, `?token=` of the WebSocket,
/// redacted) and the peer's own address (a forwarded one is the client's
/// to forge); the status and any error once answered. Short on purpose,
/// one line per request at INFO: no user agent (often 150 characters).
/// The id ties the line to any error logged under it.
fn request_span(request: &ServiceRequest) -> Span {
    let target = request
        .uri()
        .path_and_query()
        .map_or_else(String::new, |p| redact_target(p.as_str()));
    tracing::info_span!(
        "HTTP request",
        http.method = %request.method(),
        http.route = %request.match_pattern().unwrap_or_else(|| "default".into()),
        http.target = %target,
        http.client_ip = %request.peer_addr().map(|a| a.ip().to_string()).unwrap_or_default(),
        http.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        request_id = %crate::error::new_error_id(),
        exception.message = tracing::field::Empty,
        exception.details = tracing::field::Empty,
    )
}

/// The answer's status into the span, and an error's text and detail if
/// the answer is one (a client's error is still `otel.status_code` OK).
fn record_outcome<B>(span: &Span, outcome: &Result<ServiceResponse<B>, Error>) {
    let (status, error) = match outcome {
        Ok(response) => (
            response.status(),
            response.response().error().map(Error::as_response_error),
        ),
        Err(error) => {
            let error = error.as_response_error();
            (error.status_code(), Some(error))
        }
    };
    span.record("http.status_code", status.as_u16());
    if let Some(error) = error {
        span.record("exception.message", tracing::field::display(error));
        span.record("exception.details", tracing::field::debug(error));
    }
    let failed = error.is_some() && !status.is_client_error();
    span.record("otel.status_code", if failed { "ERROR" } else { "OK" });
}

/// Query parameters whose values never reach a log.
const SECRET_PARAMETERS: &[&str] = &["token", "access_token", "password", "secret"];

/// A path and query with the values of secret parameters replaced.
pub fn redact_target(target: &str) -> String {
    let Some((path, query)) = target.split_once('?') else {
        return target.to_string();
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if is_secret_parameter(key) => format!("{key}=[redacted]"),
            _ => pair.to_string(),
        })
        .collect();
    format!("{path}?{}", query.join("&"))
}

/// Whether a raw query key names a secret once decoded (`%74oken` is
/// `token`, and a server that decoded it would read it as one).
fn is_secret_parameter(raw_key: &str) -> bool {
    let decoded = serde_urlencoded::from_str::<Vec<(String, String)>>(raw_key)
        .ok()
        .and_then(|pairs| pairs.into_iter().next())
        .map_or_else(|| raw_key.to_string(), |(key, _)| key);
    SECRET_PARAMETERS.contains(&decoded.to_ascii_lowercase().as_str())
}

#[cfg(test)]
mod tests {
    use super::redact_target;

    #[test]
    fn tokens_in_urls_are_redacted() {
        assert_eq!(
            redact_target("/chat?token=eyJ.abc.def"),
            "/chat?token=[redacted]"
        );
        assert_eq!(
            redact_target("/chat/?x=1&TOKEN=s&y=2"),
            "/chat/?x=1&TOKEN=[redacted]&y=2"
        );
        assert_eq!(
            redact_target("/chat?%74oken=eyJ.abc.def&x=1"),
            "/chat?%74oken=[redacted]&x=1"
        );
        assert_eq!(redact_target("/api/users/?page=2"), "/api/users/?page=2");
        assert_eq!(redact_target("/healthz"), "/healthz");
    }
}
