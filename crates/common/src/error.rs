//! The one error type every service handler returns, and its single mapping
//! to `tonic::Status` with `google.rpc` details: `ErrorInfo` (domain
//! `loyalty.dev`, a stable reason from `loyalty.common.v1.ErrorReason`) on
//! every error, `BadRequest` field violations on invalid input.

use std::collections::HashMap;

use loyalty_proto::common::ErrorReason;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// `ErrorInfo.domain` of every error the platform returns.
pub const ERROR_DOMAIN: &str = "loyalty.dev";

/// One invalid field: its path in the request (`member.phone`,
/// `lines[2].amount`) and what is wrong with it, in words a caller can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// Collects field violations while a request is validated, so that the
/// caller learns about every bad field at once.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// Records the error of a parse, keeping the parsed value when valid.
    pub fn check<T, E: std::fmt::Display>(
        &mut self,
        field: &str,
        parsed: Result<T, E>,
    ) -> Option<T> {
        match parsed {
            Ok(v) => Some(v),
            Err(e) => {
                self.add(field, e.to_string());
                None
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(())` when nothing was recorded, else `InvalidArgument`.
    pub fn finish(self) -> Result<(), ServiceError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ServiceError::InvalidArgument(self.0))
        }
    }
}

/// What went wrong in a call, in terms a caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("invalid request: {}", describe(.0))]
    InvalidArgument(Vec<FieldViolation>),
    #[error("{resource} {id} not found")]
    NotFound { resource: &'static str, id: String },
    #[error("a {resource} with this {field} already exists")]
    AlreadyExists {
        resource: &'static str,
        field: String,
    },
    #[error("{message}")]
    FailedPrecondition {
        reason: ErrorReason,
        message: String,
    },
    #[error("idempotency key {key:?} was already used with different parameters")]
    IdempotencyKeyReused { key: String },
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Unavailable(String),
    /// Anything unexpected. The source is logged, never sent to the caller.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

fn describe(v: &[FieldViolation]) -> String {
    v.iter()
        .map(|f| format!("{}: {}", f.field, f.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl ServiceError {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    pub fn not_found(resource: &'static str, id: impl Into<String>) -> Self {
        Self::NotFound {
            resource,
            id: id.into(),
        }
    }

    pub fn precondition(message: impl Into<String>) -> Self {
        Self::FailedPrecondition {
            reason: ErrorReason::FailedPrecondition,
            message: message.into(),
        }
    }

    pub fn internal(err: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Internal(err.into())
    }

    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::NotFound { .. } => Code::NotFound,
            Self::AlreadyExists { .. } => Code::AlreadyExists,
            Self::FailedPrecondition { .. } | Self::IdempotencyKeyReused { .. } => {
                Code::FailedPrecondition
            }
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::Conflict(_) => Code::Aborted,
            Self::ResourceExhausted(_) => Code::ResourceExhausted,
            Self::Unavailable(_) => Code::Unavailable,
            Self::Internal(_) => Code::Internal,
        }
    }

    pub fn reason(&self) -> ErrorReason {
        match self {
            Self::InvalidArgument(_) => ErrorReason::InvalidArgument,
            Self::NotFound { .. } => ErrorReason::NotFound,
            Self::AlreadyExists { .. } => ErrorReason::AlreadyExists,
            Self::FailedPrecondition { reason, .. } => *reason,
            Self::IdempotencyKeyReused { .. } => ErrorReason::IdempotencyKeyReused,
            Self::Unauthenticated(_) => ErrorReason::Unauthenticated,
            Self::PermissionDenied(_) => ErrorReason::PermissionDenied,
            Self::Conflict(_) => ErrorReason::Conflict,
            Self::ResourceExhausted(_) => ErrorReason::ResourceExhausted,
            Self::Unavailable(_) => ErrorReason::Unavailable,
            Self::Internal(_) => ErrorReason::Internal,
        }
    }
}

/// Stable reason string: the enum value name without its prefix
/// (`ERROR_REASON_NOT_FOUND` → `NOT_FOUND`).
pub fn reason_str(reason: ErrorReason) -> &'static str {
    reason
        .as_str_name()
        .strip_prefix("ERROR_REASON_")
        .unwrap_or("UNSPECIFIED")
}

/// A status travels in HTTP/2 headers, whose total size peers cap (16 KiB
/// by default), and its message is percent-encoded there (a non-ASCII byte
/// takes three): a status over the cap never arrives, the caller sees a
/// protocol error. So a status carries at most this many violations, each
/// field and description and the message cut to these many bytes.
const MAX_VIOLATIONS: usize = 20;
const MAX_FIELD_BYTES: usize = 100;
const MAX_DESCRIPTION_BYTES: usize = 150;
const MAX_MESSAGE_BYTES: usize = 1024;

/// `s` cut to at most `max` bytes on a character boundary, `…` marking a cut.
fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl From<ServiceError> for Status {
    fn from(err: ServiceError) -> Self {
        let mut details = ErrorDetails::new();
        let mut metadata = HashMap::new();
        let mut message = err.to_string();
        match &err {
            ServiceError::InvalidArgument(violations) => {
                let kept: Vec<FieldViolation> = violations
                    .iter()
                    .take(MAX_VIOLATIONS)
                    .map(|v| {
                        FieldViolation::new(
                            clip(&v.field, MAX_FIELD_BYTES),
                            clip(&v.description, MAX_DESCRIPTION_BYTES),
                        )
                    })
                    .collect();
                for v in &kept {
                    details.add_bad_request_violation(v.field.clone(), v.description.clone());
                }
                let more = violations.len() - kept.len();
                message = if more > 0 {
                    format!("invalid request: {}; and {more} more", describe(&kept))
                } else {
                    format!("invalid request: {}", describe(&kept))
                };
            }
            ServiceError::NotFound { resource, .. } => {
                metadata.insert("resource".to_owned(), (*resource).to_owned());
            }
            ServiceError::AlreadyExists { resource, field } => {
                metadata.insert("resource".to_owned(), (*resource).to_owned());
                metadata.insert("field".to_owned(), field.clone());
                details.add_bad_request_violation(
                    field.clone(),
                    format!("a {resource} with this {field} already exists"),
                );
            }
            ServiceError::Internal(source) => {
                // The caller gets a stable message; the cause stays in our logs.
                tracing::error!(error = %source, "internal error");
            }
            _ => {}
        }
        details.set_error_info(reason_str(err.reason()), ERROR_DOMAIN, metadata);
        Status::with_error_details(err.code(), clip(&message, MAX_MESSAGE_BYTES), details)
    }
}

impl From<sqlx::Error> for ServiceError {
    fn from(err: sqlx::Error) -> Self {
        match err {
            sqlx::Error::PoolTimedOut => {
                Self::Unavailable("database busy: no connection available".into())
            }
            other => Self::Internal(Box::new(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_carries_every_field_violation() {
        let mut v = Violations::new();
        v.add("phone", "not an E.164 number");
        v.add("birthday", "is in the future");
        let status: Status = v.finish().unwrap_err().into();
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let bad = details.bad_request().expect("BadRequest detail");
        let fields: Vec<_> = bad
            .field_violations
            .iter()
            .map(|f| f.field.as_str())
            .collect();
        assert_eq!(fields, ["phone", "birthday"]);
        assert_eq!(bad.field_violations[0].description, "not an E.164 number");
        let info = details.error_info().expect("ErrorInfo detail");
        assert_eq!(info.reason, "INVALID_ARGUMENT");
        assert_eq!(info.domain, ERROR_DOMAIN);
        assert!(status.message().contains("phone: not an E.164 number"));
    }

    #[test]
    fn huge_invalid_input_still_fits_in_a_status() {
        let mut v = Violations::new();
        for i in 0..500 {
            v.add(
                format!("tiers[{i}].code{}", "\u{10437}".repeat(100)),
                "é".repeat(1000),
            );
        }
        let status: Status = v.finish().unwrap_err().into();
        let details = status.get_error_details();
        let bad = details.bad_request().unwrap();
        assert_eq!(bad.field_violations.len(), MAX_VIOLATIONS);
        assert!(bad.field_violations[0].field.starts_with("tiers[0].code"));
        assert!(bad.field_violations[0].field.len() <= MAX_FIELD_BYTES);
        assert!(bad.field_violations[0].description.len() <= MAX_DESCRIPTION_BYTES);
        assert!(bad.field_violations[0].description.ends_with('…'));
        assert!(status.message().len() <= MAX_MESSAGE_BYTES);
        // the whole status, as headers, stays well under a peer's 16 KiB
        let mut headers = tonic::metadata::MetadataMap::new().into_headers();
        status.add_header(&mut headers).unwrap();
        let size: usize = headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 32)
            .sum();
        assert!(size < 12 * 1024, "{size}");
        let status: Status = ServiceError::not_found("member", "x".repeat(100_000)).into();
        assert!(status.message().len() <= MAX_MESSAGE_BYTES);
        assert!(status.message().starts_with("member xxx"));
    }

    #[test]
    fn already_exists_names_the_field() {
        let status: Status = ServiceError::AlreadyExists {
            resource: "member",
            field: "email".into(),
        }
        .into();
        assert_eq!(status.code(), Code::AlreadyExists);
        let details = status.get_error_details();
        assert_eq!(details.error_info().unwrap().metadata["field"], "email");
        assert_eq!(
            details.bad_request().unwrap().field_violations[0].field,
            "email"
        );
    }

    #[test]
    fn internal_errors_do_not_leak_their_cause() {
        let status: Status = ServiceError::internal("password=hunter2 in connection string").into();
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("hunter2"));
        assert_eq!(
            status.get_error_details().error_info().unwrap().reason,
            "INTERNAL"
        );
    }

    #[test]
    fn each_error_maps_to_its_grpc_code() {
        let cases = [
            (ServiceError::not_found("member", "m1"), Code::NotFound),
            (
                ServiceError::precondition("closed"),
                Code::FailedPrecondition,
            ),
            (
                ServiceError::IdempotencyKeyReused { key: "k".into() },
                Code::FailedPrecondition,
            ),
            (
                ServiceError::Unauthenticated("x".into()),
                Code::Unauthenticated,
            ),
            (
                ServiceError::PermissionDenied("x".into()),
                Code::PermissionDenied,
            ),
            (ServiceError::Conflict("x".into()), Code::Aborted),
            (
                ServiceError::ResourceExhausted("x".into()),
                Code::ResourceExhausted,
            ),
            (ServiceError::Unavailable("x".into()), Code::Unavailable),
        ];
        for (err, code) in cases {
            let reason = reason_str(err.reason());
            let status: Status = err.into();
            assert_eq!(status.code(), code);
            assert_eq!(
                status.get_error_details().error_info().unwrap().reason,
                reason
            );
        }
    }
}
