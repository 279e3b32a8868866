//! Errors as the gateway answers them: the gRPC status mapped to an HTTP
//! status by grpc-gateway's table, and a JSON body with the code, message,
//! machine-readable reason (google.rpc.ErrorInfo) and field violations
//! (google.rpc.BadRequest) decoded from the status details.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tonic::Code;
use tonic_types::StatusExt;

/// An error answer of the gateway.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: Code,
    pub message: String,
    pub reason: Option<String>,
    /// (field, description)
    pub violations: Vec<(String, String)>,
    pub retry_after: Option<u64>,
    /// Overrides the HTTP status of `code` (413, 405).
    pub http: Option<StatusCode>,
}

/// grpc-gateway's gRPC → HTTP status table.
pub fn http_status(code: Code) -> StatusCode {
    let n = match code {
        Code::Ok => 200,
        Code::Cancelled => 499,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
        Code::DeadlineExceeded => 504,
        Code::NotFound => 404,
        Code::AlreadyExists | Code::Aborted => 409,
        Code::PermissionDenied => 403,
        Code::Unauthenticated => 401,
        Code::ResourceExhausted => 429,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
        Code::Unknown | Code::Internal | Code::DataLoss => 500,
    };
    StatusCode::from_u16(n).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// The canonical upper-case name of a code (`INVALID_ARGUMENT`).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            reason: None,
            violations: Vec::new(),
            retry_after: None,
            http: None,
        }
    }

    pub fn invalid(field: impl Into<String>, why: impl Into<String>) -> Self {
        let why = why.into();
        let mut e = Self::new(Code::InvalidArgument, format!("invalid request: {why}"));
        e.reason = Some("INVALID_ARGUMENT".into());
        e.violations.push((field.into(), why));
        e
    }

    pub fn unauthenticated(why: impl Into<String>) -> Self {
        let mut e = Self::new(Code::Unauthenticated, why);
        e.reason = Some("UNAUTHENTICATED".into());
        e
    }

    /// The one refusal: the same whether or not the object exists.
    pub fn denied() -> Self {
        let mut e = Self::new(
            Code::PermissionDenied,
            "the caller may not perform this call on this resource",
        );
        e.reason = Some("PERMISSION_DENIED".into());
        e
    }

    pub fn unavailable(service: &str) -> Self {
        let mut e = Self::new(
            Code::Unavailable,
            format!("the {service} service is unavailable; retry later"),
        );
        e.reason = Some("UNAVAILABLE".into());
        e
    }

    pub fn not_found_route() -> Self {
        Self::new(Code::NotFound, "no such route")
    }

    #[must_use]
    pub fn with_http(mut self, status: StatusCode) -> Self {
        self.http = Some(status);
        self
    }

    /// Decodes an upstream status with its rich details.
    pub fn from_status(status: &tonic::Status) -> Self {
        let mut e = Self::new(status.code(), status.message());
        if let Some(info) = status.get_details_error_info() {
            e.reason = Some(info.reason);
        }
        if let Some(br) = status.get_details_bad_request() {
            e.violations = br
                .field_violations
                .into_iter()
                .map(|v| (v.field, v.description))
                .collect();
        }
        if matches!(
            status.code(),
            Code::Unknown | Code::Internal | Code::DataLoss
        ) && e.message.is_empty()
        {
            e.message = "internal error".into();
        }
        e
    }

    pub fn status(&self) -> StatusCode {
        self.http.unwrap_or_else(|| http_status(self.code))
    }

    /// The JSON body (see the `Error` schema of the OpenAPI document).
    pub fn body(&self, request_id: Option<&str>) -> serde_json::Value {
        let mut body = json!({
            "code": code_name(self.code),
            "message": self.message,
        });
        if let Some(r) = &self.reason {
            body["reason"] = json!(r);
        }
        if !self.violations.is_empty() {
            body["fieldViolations"] = self
                .violations
                .iter()
                .map(|(f, d)| json!({"field": f, "description": d}))
                .collect();
        }
        if let Some(id) = request_id {
            body["requestId"] = json!(id);
        }
        body
    }

    pub fn into_response_with(self, request_id: Option<&str>) -> Response {
        let mut resp = (self.status(), Json(self.body(request_id))).into_response();
        if let Some(secs) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        if self.code == Code::Unauthenticated {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }

    /// The same error as a gRPC status (for gRPC and gRPC-Web callers),
    /// with `retry-after` in its metadata when set.
    pub fn to_status(&self) -> tonic::Status {
        let mut md = tonic::metadata::MetadataMap::new();
        if let Some(secs) = self.retry_after
            && let Ok(v) = secs.to_string().parse()
        {
            md.insert("retry-after", v);
        }
        tonic::Status::with_metadata(self.code, self.message.clone(), md)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.into_response_with(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_gateway_table() {
        assert_eq!(http_status(Code::InvalidArgument).as_u16(), 400);
        assert_eq!(http_status(Code::FailedPrecondition).as_u16(), 400);
        assert_eq!(http_status(Code::NotFound).as_u16(), 404);
        assert_eq!(http_status(Code::AlreadyExists).as_u16(), 409);
        assert_eq!(http_status(Code::PermissionDenied).as_u16(), 403);
        assert_eq!(http_status(Code::Unauthenticated).as_u16(), 401);
        assert_eq!(http_status(Code::ResourceExhausted).as_u16(), 429);
        assert_eq!(http_status(Code::Cancelled).as_u16(), 499);
        assert_eq!(http_status(Code::DeadlineExceeded).as_u16(), 504);
        assert_eq!(http_status(Code::Unimplemented).as_u16(), 501);
        assert_eq!(http_status(Code::Unavailable).as_u16(), 503);
        assert_eq!(http_status(Code::DataLoss).as_u16(), 500);
    }

    #[test]
    fn details_are_decoded_into_the_body() {
        use tonic_types::{ErrorDetails, FieldViolation};
        let details = ErrorDetails::with_bad_request(vec![FieldViolation::new(
            "purchase.amount",
            "must be positive",
        )]);
        let mut details = details;
        details.set_error_info("INVALID_ARGUMENT", "loyalty.dev", []);
        let status =
            tonic::Status::with_error_details(Code::InvalidArgument, "invalid request", details);
        let e = ApiError::from_status(&status);
        let body = e.body(Some("r1"));
        assert_eq!(e.status().as_u16(), 400);
        assert_eq!(body["code"], "INVALID_ARGUMENT");
        assert_eq!(body["reason"], "INVALID_ARGUMENT");
        assert_eq!(body["fieldViolations"][0]["field"], "purchase.amount");
        assert_eq!(body["requestId"], "r1");
    }
}
