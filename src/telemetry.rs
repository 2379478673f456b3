//! Logging through `tracing`: human-readable or JSON lines, filtered by
//! `RUST_LOG` (default `info`, or `debug` with `DEBUG=1`).

use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber; a second call (tests) is a no-op.
pub fn init(format: LogFormat, debug: bool) {
    let default = if debug { "debug" } else { "info" };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{default},sqlx=warn,sea_orm=warn")));
    // A line when a span closes: one per HTTP request (method, route, status,
    // time) and one per WebSocket session (its user and lifetime).
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

/// The span of each HTTP request: tracing-actix-web's fields but the user
/// agent, with the secrets a URL can carry (`?token=` of the WebSocket)
/// redacted, and the peer's own address (a forwarded one is the client's to
/// forge).
pub struct RequestSpan;

impl tracing_actix_web::RootSpanBuilder for RequestSpan {
    fn on_request_start(request: &actix_web::dev::ServiceRequest) -> tracing::Span {
        let target = request
            .uri()
            .path_and_query()
            .map_or_else(String::new, |p| redact_target(p.as_str()));
        // Short on purpose: one line per request at INFO. The user agent
        // (often 150 characters) is left out; the id ties the line to any
        // error logged under it.
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

    fn on_request_end<B: actix_web::body::MessageBody>(
        span: tracing::Span,
        outcome: &Result<actix_web::dev::ServiceResponse<B>, actix_web::Error>,
    ) {
        tracing_actix_web::DefaultRootSpanBuilder::on_request_end(span, outcome);
    }
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
