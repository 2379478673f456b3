//! The REST API (PROTOCOL.md A1, DESIGN.md "REST beyond login"), documented
//! with paperclip, plus the operational endpoints and the API docs.

pub mod account;
pub mod attachments;
pub mod auth;
pub mod blocks;
pub mod body;
pub mod client;
pub mod contacts;
pub mod docs;
pub mod groups;
pub mod health;
pub mod messages;
pub mod push;
pub mod query;
pub mod search;
pub mod throttle;
pub mod users;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, StatusCode};
use actix_web::middleware::{ErrorHandlerResponse, Next};
use actix_web::{HttpResponse, ResponseError};
use paperclip::actix::web;
use paperclip::v2::models::{DefaultApiRaw, Info, Tag};

use crate::chat::protocol::NUL_REFUSED;
use crate::chat::store;
use crate::error::ApiError;
use crate::state::AppState;

/// A 405 naming the methods a resource does allow (RFC 9110 requires `Allow`).
fn method_not_allowed(
    allow: &'static str,
) -> impl Fn() -> std::future::Ready<HttpResponse> + Clone {
    move || {
        let mut response = ApiError::MethodNotAllowed.error_response();
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static(allow));
        std::future::ready(response)
    }
}

/// The documented routes. (Long on purpose: one table of every REST route,
/// read top to bottom, is what a newcomer looks for.)
pub fn routes(cfg: &mut web::ServiceConfig) {
    let post = || actix_web::web::to(method_not_allowed("POST"));
    let get = || actix_web::web::to(method_not_allowed("GET"));
    cfg.service(
        web::resource("/api/login/")
            .route(web::post().to(auth::login))
            .default_service(post()),
    )
    .service(
        web::resource("/api/login")
            .route(web::post().to(auth::login))
            .default_service(post()),
    )
    .service(
        web::resource("/api/register/")
            .route(web::post().to(auth::register))
            .default_service(post()),
    )
    .service(
        web::resource("/api/me/")
            .route(web::get().to(account::me))
            .default_service(get()),
    )
    .service(
        web::resource("/api/logout/")
            .route(web::post().to(account::sign_out))
            .default_service(post()),
    )
    .service(
        web::resource("/api/logout/everywhere/")
            .route(web::post().to(account::sign_out_everywhere))
            .default_service(post()),
    )
    .service(
        web::resource("/api/password/")
            .route(web::post().to(account::change_password))
            .default_service(post()),
    )
    .service(
        web::resource("/api/users/")
            .app_data(query::named::<users::UserQuery>())
            .route(web::get().to(users::list_users))
            .default_service(get()),
    )
    .service(
        web::resource("/api/contacts/")
            .route(web::get().to(contacts::list_contacts))
            .route(web::post().to(contacts::add_contact))
            .default_service(actix_web::web::to(method_not_allowed("GET, POST"))),
    )
    .service(
        web::resource("/api/contacts/{id}/")
            .route(web::get().to(contacts::get_contact))
            .default_service(get()),
    )
    .service(
        web::resource("/api/contacts/{id}/messages/")
            .app_data(query::named::<contacts::HistoryParams>())
            .route(web::get().to(contacts::messages))
            .default_service(get()),
    )
    .service(
        web::resource("/api/groups/")
            .route(web::get().to(groups::list_groups))
            .route(web::post().to(groups::create_group))
            .default_service(actix_web::web::to(method_not_allowed("GET, POST"))),
    )
    .service(
        web::resource("/api/groups/{id}/")
            .route(web::get().to(groups::get_group))
            .route(web::patch().to(groups::rename_group))
            .default_service(actix_web::web::to(method_not_allowed("GET, PATCH"))),
    )
    .service(
        web::resource("/api/groups/{id}/members/")
            .route(web::post().to(groups::add_members))
            .default_service(post()),
    )
    .service(
        web::resource("/api/groups/{id}/members/{user_id}/")
            .route(web::delete().to(groups::remove_member))
            .default_service(actix_web::web::to(method_not_allowed("DELETE"))),
    )
    .service(
        web::resource("/api/messages/{id}/")
            .route(web::patch().to(messages::edit_message))
            .route(web::delete().to(messages::delete_message))
            .default_service(actix_web::web::to(method_not_allowed("PATCH, DELETE"))),
    )
    .service(
        web::resource("/api/messages/{id}/reactions/")
            .app_data(query::named::<messages::EmojiChoice>())
            .route(web::post().to(messages::add_reaction))
            .route(web::delete().to(messages::remove_reaction))
            .default_service(actix_web::web::to(method_not_allowed("POST, DELETE"))),
    )
    .service(
        web::resource("/api/attachments/")
            .app_data(query::named::<attachments::UploadParams>())
            .route(web::post().to(attachments::upload))
            .default_service(post()),
    )
    .service(
        web::resource("/api/attachments/{id}/")
            .app_data(query::named::<attachments::TokenParam>())
            .route(web::get().to(attachments::download))
            .default_service(get()),
    )
    .service(
        web::resource("/api/attachments/{id}/thumbnail/")
            .app_data(query::named::<attachments::TokenParam>())
            .route(web::get().to(attachments::thumbnail))
            .default_service(get()),
    )
    .service(
        web::resource("/api/search/")
            .app_data(query::named::<search::SearchParams>())
            .route(web::get().to(search::search))
            .default_service(get()),
    )
    .service(
        web::resource("/api/push/key/")
            .route(web::get().to(push::key))
            .default_service(get()),
    )
    .service(
        web::resource("/api/push/subscriptions/")
            .route(web::post().to(push::subscribe))
            .route(web::delete().to(push::unsubscribe))
            .default_service(actix_web::web::to(method_not_allowed("POST, DELETE"))),
    )
    .service(
        web::resource("/api/blocks/")
            .route(web::get().to(blocks::list_blocks))
            .route(web::post().to(blocks::block_user))
            .default_service(actix_web::web::to(method_not_allowed("GET, POST"))),
    )
    .service(
        web::resource("/api/blocks/{user_id}/")
            .route(web::delete().to(blocks::unblock_user))
            .default_service(actix_web::web::to(method_not_allowed("DELETE"))),
    )
    .service(
        web::resource("/api/invitations/")
            .route(web::get().to(groups::list_invitations))
            .default_service(get()),
    )
    .service(
        web::resource("/api/invitations/{id}/accept/")
            .route(web::post().to(groups::accept_invitation))
            .default_service(post()),
    )
    .service(
        web::resource("/api/invitations/{id}/decline/")
            .route(web::post().to(groups::decline_invitation))
            .default_service(post()),
    )
    .service(
        web::resource("/healthz")
            .route(web::get().to(health::healthz))
            .default_service(get()),
    )
    .service(
        web::resource("/readyz")
            .route(web::get().to(health::readyz))
            .default_service(get()),
    );
}

/// Ranges of query parameters, which paperclip cannot carry from the types
/// into the spec: (parameter, minimum, maximum).
const QUERY_RANGES: &[(&str, f64, Option<f64>)] = &[
    ("limit", 1.0, Some(store::MAX_HISTORY_PAGE as f64)),
    ("page", 1.0, Some(users::MAX_PAGE as f64)),
    ("page_size", 1.0, Some(users::MAX_PAGE_SIZE as f64)),
];

/// Required body fields. They are `Option`s in the request types so that a
/// missing one gets DRF's field-keyed message instead of a parse error.
const REQUIRED_FIELDS: &[(&str, &[&str])] = &[
    ("LoginRequest", &["username", "password"]),
    ("RegisterRequest", &["username", "password"]),
    ("PasswordChange", &["old_password", "new_password"]),
    ("NewContact", &["username"]),
    ("NewGroup", &["title"]),
    ("GroupTitle", &["title"]),
    ("NewMembers", &["members"]),
];

/// What the server accepts of body fields beyond their type, which
/// paperclip cannot carry into the spec: (definition, field, constraint,
/// value). Only rules the server enforces on the raw value are listed: the
/// names and email are trimmed first, so a length there would be a promise
/// the server does not keep.
const FIELD_RULES: &[(&str, &str, &str, u64)] = &[
    ("RegisterRequest", "password", "minLength", 8),
    ("RegisterRequest", "password", "maxLength", 1024),
    ("PasswordChange", "new_password", "minLength", 8),
    ("PasswordChange", "new_password", "maxLength", 1024),
];

/// An example conversation id for the `{id}` paths (a missing one: 404), so
/// that conformance tools exercise them.
const EXAMPLE_CONVERSATION: &str = "6f1c1a4e-8b0b-4c55-9d2a-0d9d3b2f4e11";

/// Where a version of the spec keeps what the refinements touch.
struct Dialect {
    /// The JSON pointer of the schema definitions.
    schemas: &'static str,
    /// How a field says it may be null.
    nullable: &'static str,
    /// Whether a parameter's type rules sit in its `schema` (3.0) or on it (2.0).
    parameter_schema: bool,
    /// How a parameter names its example.
    example: &'static str,
}

const SWAGGER2: Dialect = Dialect {
    schemas: "/definitions",
    nullable: "x-nullable",
    parameter_schema: false,
    example: "x-example",
};

const OPENAPI3: Dialect = Dialect {
    schemas: "/components/schemas",
    nullable: "nullable",
    parameter_schema: true,
    example: "example",
};

/// Adds to the generated (Swagger 2.0) spec what paperclip cannot express.
pub fn refine_spec(spec: &mut serde_json::Value) {
    refine(spec, &SWAGGER2);
}

/// The same API as OpenAPI 3.0: paperclip converts the Swagger 2.0 spec,
/// and the refinements, which the conversion drops, are made again in 3.0's
/// terms (`nullable`, parameter schemas).
pub fn openapi3(swagger2: &serde_json::Value) -> Result<serde_json::Value, serde_json::Error> {
    let raw: DefaultApiRaw = serde_json::from_value(swagger2.clone())?;
    let mut spec = serde_json::to_value(paperclip_core::v3::openapiv2_to_v3(raw))?;
    refine(&mut spec, &OPENAPI3);
    Ok(spec)
}

fn refine(spec: &mut serde_json::Value, dialect: &Dialect) {
    let schemas = dialect.schemas;
    mark_optional_nullable(spec, dialect.nullable);
    for (definition, fields) in REQUIRED_FIELDS {
        if let Some(schema) = spec.pointer_mut(&format!("{schemas}/{definition}")) {
            schema["required"] = serde_json::json!(fields);
            for field in *fields {
                if let Some(property) = schema.pointer_mut(&format!("/properties/{field}")) {
                    if let Some(property) = property.as_object_mut() {
                        property.remove(dialect.nullable);
                    }
                    if property["type"] == "string" {
                        property["minLength"] = serde_json::json!(1);
                    }
                }
            }
        }
    }
    for (definition, field, constraint, value) in FIELD_RULES {
        let pointer = format!("{schemas}/{definition}/properties/{field}");
        if let Some(property) = spec.pointer_mut(&pointer) {
            property[*constraint] = serde_json::json!(value);
        }
    }
    document_file_answers(spec, dialect);
    let Some(paths) = spec.get_mut("paths").and_then(|p| p.as_object_mut()) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        // `{id}` names a message under /api/messages/, a conversation elsewhere.
        let message = path.starts_with("/api/messages/");
        let operations = item
            .as_object_mut()
            .into_iter()
            .flat_map(|p| p.values_mut());
        for operation in operations {
            let Some(parameters) = operation
                .get_mut("parameters")
                .and_then(|p| p.as_array_mut())
            else {
                continue;
            };
            for parameter in parameters.iter_mut() {
                refine_parameter(parameter, message, dialect);
            }
        }
    }
}

/// The answers of the file endpoints (B9), which paperclip cannot see in
/// a handler that builds its response: the bytes (any type), a range of
/// them, not modified, and a range past the end.
fn document_file_answers(spec: &mut serde_json::Value, dialect: &Dialect) {
    let bytes = |description: &str| match dialect.parameter_schema {
        true => serde_json::json!({"description": description, "content": {
            "*/*": {"schema": {"type": "string", "format": "binary"}}}}),
        false => serde_json::json!({"description": description, "schema": {"type": "file"}}),
    };
    let answers = [
        ("200", bytes("The file (or its thumbnail)")),
        ("206", bytes("The range asked for (`Range: bytes=…`)")),
        (
            "304",
            serde_json::json!({"description": "Not modified (`If-None-Match`)"}),
        ),
        (
            "416",
            serde_json::json!({"description": "The range is past the end of the file"}),
        ),
    ];
    for path in ["/api/attachments/{id}/", "/api/attachments/{id}/thumbnail/"] {
        let pointer = format!("/paths/{}/get/responses", path.replace('/', "~1"));
        if let Some(responses) = spec.pointer_mut(&pointer).and_then(|r| r.as_object_mut()) {
            for (status, answer) in &answers {
                let thumbnail_range =
                    path.ends_with("thumbnail/") && matches!(*status, "206" | "416");
                if !thumbnail_range {
                    responses.insert(status.to_string(), answer.clone());
                }
            }
        }
    }
}

/// A path's `{id}`: a conversation's uuid, or a message's integer id (the
/// handlers take any text and answer 404 for one that names nothing); a
/// query parameter's range.
fn refine_parameter(parameter: &mut serde_json::Value, message: bool, dialect: &Dialect) {
    let id = parameter["in"] == "path" && parameter["name"] == "id";
    let range = QUERY_RANGES
        .iter()
        .find(|(name, _, _)| parameter["in"] == "query" && parameter["name"] == *name);
    if id {
        parameter[dialect.example] = if message {
            serde_json::json!(1)
        } else {
            serde_json::json!(EXAMPLE_CONVERSATION)
        };
    }
    let rules = if dialect.parameter_schema {
        &mut parameter["schema"]
    } else {
        parameter
    };
    if id && message {
        rules["type"] = serde_json::json!("integer");
        rules["format"] = serde_json::json!("int64");
    } else if id {
        rules["format"] = serde_json::json!("uuid");
    }
    if let Some((_, min, max)) = range {
        rules["minimum"] = serde_json::json!(min);
        if let Some(max) = max {
            rules["maximum"] = serde_json::json!(max);
        }
    }
}

/// Marks every property a schema does not require as nullable, wherever
/// the schema sits (a definition, or one paperclip inlined into a
/// response): paperclip leaves out of `required` exactly the `Option`
/// fields, which the server writes as `null` when absent and accepts as
/// `null` in a request. Swagger 2.0 can say so only with `x-nullable`.
fn mark_optional_nullable(value: &mut serde_json::Value, nullable: &str) {
    match value {
        serde_json::Value::Object(object) => {
            let required: Vec<String> = object
                .get("required")
                .and_then(|r| r.as_array())
                .map(|r| {
                    r.iter()
                        .filter_map(|f| f.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            if let Some(properties) = object.get_mut("properties").and_then(|p| p.as_object_mut()) {
                for (name, property) in properties.iter_mut() {
                    if !required.contains(name) && property.get("$ref").is_none() {
                        property[nullable] = serde_json::json!(true);
                    }
                }
            }
            object
                .values_mut()
                .for_each(|v| mark_optional_nullable(v, nullable));
        }
        serde_json::Value::Array(items) => items
            .iter_mut()
            .for_each(|v| mark_optional_nullable(v, nullable)),
        _ => {}
    }
}

/// The spec's header: title, version, tags.
pub fn spec() -> DefaultApiRaw {
    let info = Info {
        title: "Chat server API".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        description: Some(
            "REST side of the chat server. Log in for a token, then open the WebSocket at /chat \
             (see PROTOCOL.md) or call these endpoints with `Authorization: Bearer <token>`."
                .into(),
        ),
        ..Default::default()
    };
    let tags = [
        "Auth",
        "Account",
        "Users",
        "Contacts",
        "Groups",
        "Blocks",
        "Attachments",
        "Push",
        "Operations",
    ]
    .into_iter()
    .map(|name| Tag {
        name: name.into(),
        description: None,
        external_docs: None,
    })
    .collect();
    DefaultApiRaw {
        info,
        tags,
        ..Default::default()
    }
}

/// Any path no route matches.
pub async fn not_found() -> HttpResponse {
    ApiError::NotFound.error_response()
}

/// Gives the bodiless 405 of actix's router the JSON body of every other
/// error; a 405 that already has one (with its `Allow`) passes unchanged.
pub fn json_405<B: MessageBody + 'static>(
    res: ServiceResponse<B>,
) -> actix_web::Result<ErrorHandlerResponse<B>> {
    if res.headers().contains_key(header::ALLOW) {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let (req, _) = res.into_parts();
    let response = ApiError::MethodNotAllowed.error_response();
    Ok(ErrorHandlerResponse::Response(
        ServiceResponse::new(req, response).map_into_right_body(),
    ))
}

/// Paths a load balancer probes by IP address, exempt from the Host check.
const HOST_CHECK_EXEMPT: &[&str] = &["/healthz", "/readyz"];

/// `ALLOWED_HOSTS`: a request for another Host gets a 400, as in Django.
pub async fn check_host<B: MessageBody + 'static>(
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<EitherBody<B>>, actix_web::Error> {
    let allowed = req
        .app_data::<actix_web::web::Data<AppState>>()
        .and_then(|s| s.settings.server.allowed_hosts());
    if let Some(allowed) = allowed {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
            .to_string();
        if !HOST_CHECK_EXEMPT.contains(&req.path()) && !host_allowed(&host, &allowed) {
            let body = serde_json::json!({
                "detail": format!("Invalid HTTP_HOST header: '{host}'. You may need to add it to ALLOWED_HOSTS.")
            });
            let response = HttpResponse::build(StatusCode::BAD_REQUEST).json(body);
            return Ok(req.into_response(response).map_into_right_body());
        }
    }
    Ok(next.call(req).await?.map_into_left_body())
}

/// PROTOCOL.md C2a for query strings: a `%00` anywhere in one (`?search=`,
/// `?q=`) is refused before any handler reads it, as a body's is by
/// `body::JsonOrForm`.
pub async fn refuse_nul_in_query<B: MessageBody + 'static>(
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<EitherBody<B>>, actix_web::Error> {
    if body::has_encoded_nul(req.query_string().as_bytes()) {
        let response = ApiError::BadRequest(NUL_REFUSED.into()).error_response();
        return Ok(req.into_response(response).map_into_right_body());
    }
    Ok(next.call(req).await?.map_into_left_body())
}

/// Counts every REST answer 429 (a rate limit, a budget, a busy server,
/// a refused WebSocket upgrade) in `chat_rate_limited_total`, beside the
/// WebSocket requests refused as `rate_limited`: one place, so no handler
/// can refuse without being counted.
pub async fn count_refusals(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let res = next.call(req).await?;
    if res.status() == StatusCode::TOO_MANY_REQUESTS {
        if let Some(state) = res.request().app_data::<actix_web::web::Data<AppState>>() {
            state.metrics.rate_limited();
        }
    }
    Ok(res)
}

/// Django's rules: exact names, `.example.com` for a domain and its
/// subdomains; the port is ignored.
fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = match host.find(']') {
        Some(end) if host.starts_with('[') => &host[..=end],
        _ => host.split(':').next().unwrap_or(""),
    }
    .to_ascii_lowercase();
    allowed.iter().any(|pattern| {
        let pattern = pattern.to_ascii_lowercase();
        match pattern.strip_prefix('.') {
            Some(domain) => name == domain || name.ends_with(&format!(".{domain}")),
            None => name == pattern,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::host_allowed;

    #[test]
    fn host_patterns() {
        let allowed = vec!["chat.example.com".to_string(), ".example.org".to_string()];
        assert!(host_allowed("chat.example.com", &allowed));
        assert!(host_allowed("chat.example.com:8000", &allowed));
        assert!(host_allowed("example.org", &allowed));
        assert!(host_allowed("a.b.example.org", &allowed));
        assert!(!host_allowed("evil.com", &allowed));
        assert!(!host_allowed("", &allowed));
    }
}
