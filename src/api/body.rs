//! `JsonOrForm<T>`: a request body given as JSON or as
//! `application/x-www-form-urlencoded` (the web client logs in with a form).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use actix_web::{dev::Payload, http::header, web, FromRequest, HttpRequest};
use paperclip::actix::OperationModifier;
use paperclip::v2::models::{
    DefaultOperationRaw, DefaultSchemaRaw, Either, Parameter, ParameterIn,
};
use paperclip::v2::schema::Apiv2Schema;
use serde::de::DeserializeOwned;

use crate::chat::protocol::{contains_escaped_nul, NUL_REFUSED};
use crate::error::ApiError;

/// Largest body accepted by the JSON/form endpoints.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// `BODY_READ_TIMEOUT_SECONDS`'s default, for an app built without settings.
const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// A body parsed from JSON or a urlencoded form, by its content type.
pub struct JsonOrForm<T>(pub T);

impl<T: DeserializeOwned + 'static> FromRequest for JsonOrForm<T> {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .unwrap_or_default();
        let body = web::Bytes::from_request(req, payload);
        let timeout = req
            .app_data::<web::Data<crate::state::AppState>>()
            .map_or(DEFAULT_BODY_TIMEOUT, |s| {
                Duration::from_secs(s.settings.server.body_read_timeout_seconds)
            });
        Box::pin(async move {
            let body = tokio::time::timeout(timeout, body)
                .await
                .map_err(|_| ApiError::BodyTimeout)?
                .map_err(|e| match e.as_response_error().status_code().as_u16() {
                    413 => ApiError::PayloadTooLarge,
                    _ => ApiError::BadRequest(format!("cannot read the request body: {e}")),
                })?;
            let nul = match content_type.as_str() {
                "application/json" => contains_escaped_nul(&body),
                _ => has_encoded_nul(&body),
            };
            if nul {
                return Err(ApiError::BadRequest(NUL_REFUSED.into()));
            }
            let parsed = match content_type.as_str() {
                "application/json" => serde_json::from_slice(&body)
                    .map_err(|e| ApiError::BadRequest(format!("JSON parse error - {e}")))?,
                "application/x-www-form-urlencoded" => serde_urlencoded::from_bytes(&body)
                    .map_err(|e| ApiError::BadRequest(format!("form parse error - {e}")))?,
                "" => return Err(ApiError::UnsupportedMediaType("(none)".into())),
                other => return Err(ApiError::UnsupportedMediaType(other.to_string())),
            };
            Ok(JsonOrForm(parsed))
        })
    }
}

/// Whether URL-encoded text (a form body, a query string) holds a `%00`.
pub fn has_encoded_nul(text: &[u8]) -> bool {
    text.windows(3).any(|w| w.eq_ignore_ascii_case(b"%00"))
}

impl<T: Apiv2Schema> Apiv2Schema for JsonOrForm<T> {
    fn name() -> Option<String> {
        T::name()
    }

    fn raw_schema() -> DefaultSchemaRaw {
        T::raw_schema()
    }
}

impl<T: Apiv2Schema> OperationModifier for JsonOrForm<T> {
    fn update_parameter(op: &mut DefaultOperationRaw) {
        op.parameters.push(Either::Right(Parameter {
            description: Some(
                "JSON, or an application/x-www-form-urlencoded form with the same fields".into(),
            ),
            in_: ParameterIn::Body,
            name: "body".into(),
            required: true,
            schema: Some({
                let mut def = T::schema_with_ref();
                def.retain_ref();
                def
            }),
            ..Default::default()
        }));
    }
}

/// Field-keyed "This field is required." / "may not be blank." errors, DRF style,
/// for the named required fields that are missing or blank.
pub fn require_fields(fields: &[(&str, Option<&str>)]) -> Result<(), ApiError> {
    let mut errors = BTreeMap::new();
    for (name, value) in fields {
        match value {
            None => {
                errors.insert(
                    name.to_string(),
                    vec!["This field is required.".to_string()],
                );
            }
            Some(v) if v.trim().is_empty() => {
                errors.insert(
                    name.to_string(),
                    vec!["This field may not be blank.".to_string()],
                );
            }
            Some(_) => {}
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Fields(errors))
    }
}
