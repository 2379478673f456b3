//! Attachments over REST (PROTOCOL.md B9): upload a file, read it back
//! (whole or a byte range), and its thumbnail. The rules are the
//! `attachments` module's; here, HTTP: statuses, and the headers that keep
//! a file from running as part of this site.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};
use futures_util::StreamExt;
use paperclip::actix::{api_v2_operation, web, Apiv2Schema, CreatedJson};
use serde::Deserialize;

use entity::attachment;

use crate::attachments::{ByteRange, ThumbnailError, Upload, UploadError};
use crate::auth::AuthUser;
use crate::chat::protocol::{AttachmentInfo, UserId};
use crate::chat::store;
use crate::error::ApiError;
use crate::state::AppState;

/// The file's name.
#[derive(Debug, Deserialize, Apiv2Schema)]
pub struct UploadParams {
    /// Its name as shown to others (a path is cut to its last part).
    pub name: Option<String>,
}

/// A token in the query, for `<img src>` and links, which send no header.
#[derive(Debug, Deserialize, Apiv2Schema)]
pub struct TokenParam {
    /// The token from POST /api/login/, when there is no `Authorization` header.
    pub token: Option<String>,
}

/// What a stored file may be shown as: images the bytes confirmed
/// inline; everything else only downloaded, and never run (the CSP's
/// `sandbox` keeps an HTML or SVG file from running scripts even when
/// opened directly).
const FILE_POLICY: &str = "default-src 'none'; img-src 'self'; media-src 'self'; sandbox";

/// Upload a file (the request body, streamed; `Content-Type` as a hint)
/// for a message of one's own; 413 beyond `MAX_ATTACHMENT_BYTES`, 429 past
/// the quota of unsent uploads. Send it with `message` `attachments`.
#[api_v2_operation(tags(Attachments))]
pub async fn upload(
    state: web::Data<AppState>,
    user: AuthUser,
    req: HttpRequest,
    params: web::Query<UploadParams>,
    body: web::Payload,
) -> Result<CreatedJson<AttachmentInfo>, ApiError> {
    let me = UserId(user.0.id);
    let attachments = &state.attachments;
    attachments
        .uploads
        .take(me)
        .map_err(ApiError::TooManyRequests)?;
    let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    let length = match header(header::CONTENT_LENGTH) {
        None => None,
        Some(n) => Some(
            n.trim()
                .parse::<u64>()
                .map_err(|_| ApiError::BadRequest("invalid Content-Length".into()))?,
        ),
    };
    let upload = Upload {
        name: params.into_inner().name.unwrap_or_default(),
        declared_type: header(header::CONTENT_TYPE).map(str::to_owned),
        length,
    };
    let stall = std::time::Duration::from_secs(state.settings.server.body_read_timeout_seconds);
    let body = body
        .into_inner()
        .map(|chunk| chunk.map_err(|e| e.to_string()));
    let stored = attachments
        .receive(&state.db, me, upload, body, stall)
        .await
        .map_err(|e| match e {
            UploadError::TooLarge(_) => ApiError::PayloadTooLarge,
            UploadError::Empty => ApiError::BadRequest("The file is empty.".into()),
            UploadError::Quota(text) => ApiError::Throttled(text),
            UploadError::Timeout => ApiError::BodyTimeout,
            UploadError::Body(text) => ApiError::BadRequest(format!("Upload interrupted: {text}")),
            e => ApiError::internal("storing an upload", e),
        })?;
    Ok(CreatedJson(store::attachment_info(&stored)))
}

/// The attachment id in a path: a uuid, or no file at all (404).
fn attachment_id(id: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::parse_str(id).map_err(|_| ApiError::NotFound)
}

/// The file `id` names, if the caller (`Authorization: Bearer`, or
/// `?token=`) may read it; else 404 (401 without a valid token).
async fn readable(
    state: &AppState,
    req: &HttpRequest,
    id: &str,
    token: Option<String>,
) -> Result<attachment::Model, ApiError> {
    let user = crate::auth::authenticate_request(state, req, token).await?;
    state
        .attachments
        .readable(&state.db, UserId(user.0.id), attachment_id(id)?)
        .await?
        .ok_or(ApiError::NotFound)
}

/// The headers of every answer about one version of a file, and whether
/// the client has that version already (304).
fn answer_for(req: &HttpRequest, etag: String) -> (actix_web::HttpResponseBuilder, bool) {
    let mut response = HttpResponse::Ok();
    file_headers(&mut response, &etag);
    (response, not_modified(req, &etag))
}

/// A file, to its uploader and to the current members of a conversation it
/// was sent in (404 to anyone else). `Range` for a part (206); images the
/// server recognised inline, anything else as a download.
#[api_v2_operation(tags(Attachments))]
pub async fn download(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    params: web::Query<TokenParam>,
) -> Result<HttpResponse, ApiError> {
    let row = readable(&state, &req, &id, params.into_inner().token).await?;
    let etag = format!("\"{}\"", row.id.simple());
    let (mut response, cached) = answer_for(&req, etag.clone());
    response.insert_header((header::ACCEPT_RANGES, "bytes"));
    if cached {
        return Ok(response.status(StatusCode::NOT_MODIFIED).finish());
    }
    let size = row.size as u64;
    let range = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(ByteRange::parse)
        .filter(|_| if_range_matches(&req, &etag));
    let range = match range.map(|r| r.resolve(size)) {
        Some(None) => {
            response.insert_header((header::CONTENT_RANGE, format!("bytes */{size}")));
            return Ok(response.status(StatusCode::RANGE_NOT_SATISFIABLE).finish());
        }
        Some(Some(range)) => Some(range),
        None => None,
    };
    let opened = state
        .attachments
        .read(&row, range.clone())
        .await
        .map_err(|e| ApiError::internal("reading an attachment", e))?;
    let inline = crate::attachments::is_inline(&row.content_type);
    response.insert_header((header::CONTENT_TYPE, row.content_type.clone()));
    response.insert_header((header::CONTENT_DISPOSITION, disposition(&row.name, inline)));
    let length = match &range {
        Some(r) => {
            response.status(StatusCode::PARTIAL_CONTENT);
            response.insert_header((
                header::CONTENT_RANGE,
                format!("bytes {}-{}/{size}", r.start, r.end - 1),
            ));
            r.end - r.start
        }
        None => size,
    };
    response.no_chunking(length);
    Ok(response.streaming(opened.result.into_stream()))
}

/// An image file's thumbnail (at most 320 px on its longer side, JPEG or
/// PNG), to whoever may read the file; 404 for other files and for images
/// too large to preview.
#[api_v2_operation(tags(Attachments))]
pub async fn thumbnail(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    params: web::Query<TokenParam>,
) -> Result<HttpResponse, ApiError> {
    let row = readable(&state, &req, &id, params.into_inner().token).await?;
    let (mut response, cached) = answer_for(&req, format!("\"{}-320\"", row.id.simple()));
    if cached {
        return Ok(response.status(StatusCode::NOT_MODIFIED).finish());
    }
    let made = match state.attachments.thumbnail(&row).await {
        Ok(made) => made,
        Err(ThumbnailError::NoPreview) => return Err(ApiError::NotFound),
        Err(ThumbnailError::Image(e)) => {
            // A file whose header promised an image it is not, or one that
            // would take more than its bound to decode.
            tracing::info!(attachment = %row.id, error = %e, "no thumbnail");
            return Err(ApiError::NotFound);
        }
        Err(e) => return Err(ApiError::internal("making a thumbnail", e)),
    };
    response.insert_header((header::CONTENT_TYPE, made.content_type));
    response.insert_header((header::CONTENT_DISPOSITION, "inline"));
    Ok(response.body(made.bytes))
}

/// Headers of every file answer: cached by the browser only (a file never
/// changes under its id), never sniffed, framed or run.
fn file_headers(response: &mut actix_web::HttpResponseBuilder, etag: &str) {
    response
        .insert_header((header::ETAG, etag.to_owned()))
        .insert_header((
            header::CACHE_CONTROL,
            "private, max-age=31536000, immutable",
        ))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::CONTENT_SECURITY_POLICY, FILE_POLICY))
        .insert_header((
            header::HeaderName::from_static("cross-origin-resource-policy"),
            "same-origin",
        ));
}

/// Whether `If-None-Match` names this version.
fn not_modified(req: &HttpRequest, etag: &str) -> bool {
    req.headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() == "*" || v.split(',').any(|t| t.trim() == etag))
}

/// `If-Range`: a range is served only for the version it names (an ETag
/// here; a date is not one this server gives, so never matches).
fn if_range_matches(req: &HttpRequest, etag: &str) -> bool {
    match req
        .headers()
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
    {
        None => true,
        Some(v) => v.trim() == etag,
    }
}

/// `Content-Disposition` with the file's name (RFC 6266: an ASCII
/// fallback, and the UTF-8 name percent-encoded).
fn disposition(name: &str, inline: bool) -> HeaderValue {
    let kind = if inline { "inline" } else { "attachment" };
    let ascii: String = name
        .chars()
        .map(|c| match c {
            ' '..='~' if c != '"' && c != '\\' => c,
            _ => '_',
        })
        .collect();
    let encoded: String = name
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    HeaderValue::from_str(&format!(
        "{kind}; filename=\"{ascii}\"; filename*=UTF-8''{encoded}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn dispositions_name_the_file_safely() {
        assert_eq!(
            super::disposition("a \"b\".txt", false),
            "attachment; filename=\"a _b_.txt\"; filename*=UTF-8''a%20%22b%22.txt"
        );
        assert_eq!(
            super::disposition("café.png", true),
            "inline; filename=\"caf_.png\"; filename*=UTF-8''caf%C3%A9.png"
        );
    }
}
