//! The one error type every service returns. Each `ErrorCode` maps once to a
//! gRPC status code and once to an HTTP status, and travels between the two
//! as a `google.rpc.ErrorInfo` detail (reason + domain + metadata).
use std::{borrow::Cow, collections::BTreeMap, fmt};
use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};

/// What kind of failure this is, independent of transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidArgument,
    Unauthenticated,
    PermissionDenied,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    TooManyRequests,
    PayloadTooLarge,
    /// The request body's media type is not one the call takes.
    UnsupportedMediaType,
    /// The device or peer did not answer in time.
    DeviceTimeout,
    /// The device or peer could not be reached at all.
    DeviceUnreachable,
    /// The device rejected our credentials.
    DeviceAuthRejected,
    /// The device answered with an error of its own (protocol code in metadata).
    DeviceError,
    /// The device is busy with another request; try again shortly.
    DeviceBusy,
    /// The device locked rdm's user out after failed sign-ins; see the wait.
    DeviceLocked,
    /// The device is not connected to the server in front of it (XMiDT, a
    /// controller): nothing was sent to it.
    DeviceOffline,
    /// An ACS, XMiDT or controller in front of the device is down.
    UpstreamUnavailable,
    /// The server in front of the device refused rdm's own credentials (the
    /// caller's token was fine).
    UpstreamAuth,
    /// The device's state is not what the request expected (a test-and-set
    /// whose configuration id no longer matches).
    Conflict,
    Unimplemented,
    /// The route exists with other HTTP methods (REST only).
    MethodNotAllowed,
    Unavailable,
    /// The call ran past its deadline (the server's request timeout or the
    /// caller's `grpc-timeout`).
    DeadlineExceeded,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 24] = [
        Self::InvalidArgument,
        Self::Unauthenticated,
        Self::PermissionDenied,
        Self::NotFound,
        Self::AlreadyExists,
        Self::FailedPrecondition,
        Self::TooManyRequests,
        Self::PayloadTooLarge,
        Self::UnsupportedMediaType,
        Self::DeviceTimeout,
        Self::DeviceUnreachable,
        Self::DeviceAuthRejected,
        Self::DeviceError,
        Self::DeviceBusy,
        Self::DeviceLocked,
        Self::DeviceOffline,
        Self::UpstreamUnavailable,
        Self::UpstreamAuth,
        Self::Conflict,
        Self::Unimplemented,
        Self::MethodNotAllowed,
        Self::Unavailable,
        Self::DeadlineExceeded,
        Self::Internal,
    ];

    /// The `ErrorInfo.reason`, stable and machine-readable.
    pub fn reason(self) -> &'static str {
        match self {
            Self::InvalidArgument => "INVALID_ARGUMENT",
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::PermissionDenied => "PERMISSION_DENIED",
            Self::NotFound => "NOT_FOUND",
            Self::AlreadyExists => "ALREADY_EXISTS",
            Self::FailedPrecondition => "FAILED_PRECONDITION",
            Self::TooManyRequests => "TOO_MANY_REQUESTS",
            Self::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Self::UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            Self::DeviceTimeout => "DEVICE_TIMEOUT",
            Self::DeviceUnreachable => "DEVICE_UNREACHABLE",
            Self::DeviceAuthRejected => "DEVICE_AUTH_REJECTED",
            Self::DeviceError => "DEVICE_ERROR",
            Self::DeviceBusy => "DEVICE_BUSY",
            Self::DeviceLocked => "DEVICE_LOCKED",
            Self::DeviceOffline => "DEVICE_OFFLINE",
            Self::UpstreamUnavailable => "UPSTREAM_UNAVAILABLE",
            Self::UpstreamAuth => "UPSTREAM_AUTH",
            Self::Conflict => "CONFLICT",
            Self::Unimplemented => "UNIMPLEMENTED",
            Self::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            Self::Unavailable => "UNAVAILABLE",
            Self::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Self::Internal => "INTERNAL",
        }
    }

    pub fn from_reason(reason: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.reason() == reason)
    }

    pub fn grpc_code(self) -> Code {
        match self {
            Self::InvalidArgument | Self::UnsupportedMediaType => Code::InvalidArgument,
            Self::Unauthenticated => Code::Unauthenticated,
            Self::PermissionDenied => Code::PermissionDenied,
            Self::NotFound => Code::NotFound,
            Self::AlreadyExists => Code::AlreadyExists,
            Self::FailedPrecondition => Code::FailedPrecondition,
            Self::TooManyRequests | Self::PayloadTooLarge => Code::ResourceExhausted,
            Self::DeviceTimeout | Self::DeadlineExceeded => Code::DeadlineExceeded,
            Self::DeviceUnreachable
            | Self::DeviceBusy
            | Self::DeviceOffline
            | Self::UpstreamUnavailable
            | Self::Unavailable => Code::Unavailable,
            // Retrying before the wait is over cannot help.
            Self::DeviceLocked => Code::ResourceExhausted,
            Self::DeviceAuthRejected => Code::PermissionDenied,
            Self::DeviceError => Code::FailedPrecondition,
            Self::UpstreamAuth => Code::FailedPrecondition,
            Self::Conflict => Code::Aborted,
            Self::Unimplemented | Self::MethodNotAllowed => Code::Unimplemented,
            Self::Internal => Code::Internal,
        }
    }

    pub fn http_status(self) -> u16 {
        match self {
            Self::InvalidArgument => 400,
            Self::Unauthenticated => 401,
            Self::PermissionDenied | Self::DeviceAuthRejected => 403,
            Self::NotFound => 404,
            Self::AlreadyExists | Self::FailedPrecondition | Self::Conflict => 409,
            Self::PayloadTooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::DeviceError => 422,
            Self::TooManyRequests => 429,
            Self::Internal => 500,
            Self::Unimplemented => 501,
            Self::MethodNotAllowed => 405,
            Self::DeviceUnreachable | Self::UpstreamAuth => 502,
            Self::DeviceBusy
            | Self::DeviceLocked
            | Self::DeviceOffline
            | Self::UpstreamUnavailable
            | Self::Unavailable => 503,
            Self::DeviceTimeout | Self::DeadlineExceeded => 504,
        }
    }

    /// The code for a gRPC status that carries no `ErrorInfo` (from a peer
    /// that is not ours, or from tonic itself).
    pub fn from_grpc(code: Code) -> Self {
        match code {
            Code::InvalidArgument | Code::OutOfRange => Self::InvalidArgument,
            Code::Unauthenticated => Self::Unauthenticated,
            Code::PermissionDenied => Self::PermissionDenied,
            Code::NotFound => Self::NotFound,
            Code::AlreadyExists => Self::AlreadyExists,
            Code::Aborted => Self::Conflict,
            Code::FailedPrecondition => Self::FailedPrecondition,
            Code::ResourceExhausted => Self::TooManyRequests,
            Code::DeadlineExceeded => Self::DeadlineExceeded,
            Code::Unimplemented => Self::Unimplemented,
            Code::Unavailable | Code::Cancelled => Self::Unavailable,
            _ => Self::Internal,
        }
    }
}

/// An error as a service returns it: a code, a message that says what failed
/// and on what, the domain of the service that raised it and, for bad input,
/// the field at fault.
#[derive(Clone, PartialEq)]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
    pub domain: Cow<'static, str>,
    /// `ErrorInfo.metadata`: `field` for bad input, protocol codes, ...
    pub metadata: BTreeMap<String, String>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            domain: Cow::Borrowed("rdm"),
            metadata: BTreeMap::new(),
        }
    }

    /// Bad input in `field` (its proto name, dotted for nested fields).
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message).with_meta("field", field)
    }

    /// The request field at fault, for bad input.
    pub fn field(&self) -> Option<&str> {
        self.metadata.get("field").map(String::as_str)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthenticated, message)
    }

    pub fn permission_denied(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::PermissionDenied, message)
    }

    /// A failure of ours. The message goes to the log, the caller sees only
    /// that something failed inside (no SQL, paths or secrets in replies).
    pub fn internal(context: &str, err: impl fmt::Display) -> Self {
        tracing::error!(error = %err, "{context}");
        Self::new(ErrorCode::Internal, format!("internal error: {context}"))
    }

    pub fn in_domain(mut self, domain: &'static str) -> Self {
        self.domain = Cow::Borrowed(domain);
        self
    }

    pub fn with_meta(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Reads back an error that crossed gRPC, from its `ErrorInfo` when it
    /// has one.
    pub fn from_status(status: &tonic::Status) -> Self {
        let details = status.get_error_details();
        let Some(info) = details.error_info() else {
            return Self::new(ErrorCode::from_grpc(status.code()), status.message());
        };
        let code = ErrorCode::from_reason(&info.reason)
            .unwrap_or_else(|| ErrorCode::from_grpc(status.code()));
        Self {
            code,
            message: status.message().to_owned(),
            domain: Cow::Owned(info.domain.clone()),
            metadata: info.metadata.clone().into_iter().collect(),
        }
    }

    /// The `application/problem+json` body (RFC 9457) the gateway replies with.
    pub fn problem(&self, request_id: Option<&str>) -> serde_json::Value {
        let mut body = serde_json::json!({
            "type": format!("urn:rdm:error:{}", self.code.reason().to_ascii_lowercase()),
            "title": self.code.reason(),
            "status": self.code.http_status(),
            "detail": self.message,
            "code": self.code.reason(),
            "domain": self.domain,
        });
        // Every ErrorInfo metadata entry (field, protocol codes, ...) as a
        // member, never replacing the standard ones.
        for (key, value) in &self.metadata {
            if body.get(key).is_none() && key != "request_id" {
                body[key.as_str()] = value.as_str().into();
            }
        }
        if let Some(id) = request_id {
            body["request_id"] = id.into();
        }
        body
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.reason(), self.message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        let mut details = ErrorDetails::with_error_info(
            err.code.reason(),
            err.domain.clone(),
            err.metadata
                .clone()
                .into_iter()
                .collect::<std::collections::HashMap<_, _>>(),
        );
        if let Some(field) = err.field() {
            details.add_bad_request_violation(field, err.message.clone());
        }
        tonic::Status::with_error_details(err.code.grpc_code(), err.message, details)
    }
}

impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::RowNotFound => Self::not_found("not found"),
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                Self::new(ErrorCode::AlreadyExists, "already exists")
            }
            sqlx::Error::PoolTimedOut => {
                Self::new(ErrorCode::Unavailable, "database is busy, try again")
            }
            _ => Self::internal("database query failed", err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_survives_a_grpc_round_trip() {
        for code in ErrorCode::ALL {
            let sent = Error::new(code, "boom")
                .in_domain("rdm.test")
                .with_meta("protocol_code", "9005");
            let status = tonic::Status::from(sent.clone());
            assert_eq!(status.code(), code.grpc_code());
            let back = Error::from_status(&status);
            assert_eq!(back.code, code);
            assert_eq!(back.domain, "rdm.test");
            assert_eq!(
                back.metadata.get("protocol_code").map(String::as_str),
                Some("9005")
            );
        }
    }

    #[test]
    fn invalid_argument_names_the_field_in_problem_json() {
        let problem =
            Error::invalid("page_size", "page_size must be at most 1000").problem(Some("r1"));
        assert_eq!(problem["status"], 400);
        assert_eq!(problem["field"], "page_size");
        assert_eq!(problem["request_id"], "r1");
        assert_eq!(problem["code"], "INVALID_ARGUMENT");
    }

    #[test]
    fn every_metadata_entry_is_a_problem_member() {
        let problem = Error::new(ErrorCode::DeviceError, "noAccess at varbind 1")
            .with_meta("snmp_error_status", "noAccess")
            .with_meta("error_index", "1")
            .with_meta("status", "not the HTTP status")
            .problem(None);
        assert_eq!(problem["snmp_error_status"], "noAccess");
        assert_eq!(problem["error_index"], "1");
        assert_eq!(problem["status"], 422, "standard members are kept");
    }

    #[test]
    fn foreign_status_falls_back_to_the_grpc_code() {
        let err = Error::from_status(&tonic::Status::deadline_exceeded("slow"));
        assert_eq!(err.code, ErrorCode::DeadlineExceeded);
        assert_eq!(err.code.http_status(), 504);
    }
}
