//! One error vocabulary for every service: each [`ErrorCode`] maps once to a gRPC code and an
//! HTTP status, so an error means the same thing whichever edge reports it.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    /// Too big: a body, a file, too many images. HTTP 413.
    ResourceExhausted,
    /// Too many requests from one key or client for now; retry later. HTTP 429 with the
    /// same gRPC code as [`ErrorCode::ResourceExhausted`].
    RateLimited,
    /// The request took longer than the gateway allows. HTTP 504.
    DeadlineExceeded,
    /// The client stopped sending its request body. HTTP 408; gRPC DEADLINE_EXCEEDED.
    RequestTimeout,
    Unauthenticated,
    PermissionDenied,
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn grpc(self) -> tonic::Code {
        match self {
            ErrorCode::InvalidArgument => tonic::Code::InvalidArgument,
            ErrorCode::NotFound => tonic::Code::NotFound,
            ErrorCode::AlreadyExists => tonic::Code::AlreadyExists,
            ErrorCode::FailedPrecondition => tonic::Code::FailedPrecondition,
            ErrorCode::ResourceExhausted | ErrorCode::RateLimited => tonic::Code::ResourceExhausted,
            ErrorCode::DeadlineExceeded | ErrorCode::RequestTimeout => {
                tonic::Code::DeadlineExceeded
            }
            ErrorCode::Unauthenticated => tonic::Code::Unauthenticated,
            ErrorCode::PermissionDenied => tonic::Code::PermissionDenied,
            ErrorCode::Unavailable => tonic::Code::Unavailable,
            ErrorCode::Internal => tonic::Code::Internal,
        }
    }

    pub fn http(self) -> http::StatusCode {
        match self {
            ErrorCode::InvalidArgument => http::StatusCode::BAD_REQUEST,
            ErrorCode::NotFound => http::StatusCode::NOT_FOUND,
            ErrorCode::AlreadyExists | ErrorCode::FailedPrecondition => http::StatusCode::CONFLICT,
            ErrorCode::ResourceExhausted => http::StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::RateLimited => http::StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::DeadlineExceeded => http::StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::RequestTimeout => http::StatusCode::REQUEST_TIMEOUT,
            ErrorCode::Unauthenticated => http::StatusCode::UNAUTHORIZED,
            ErrorCode::PermissionDenied => http::StatusCode::FORBIDDEN,
            ErrorCode::Unavailable => http::StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => http::StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The snake_case name in JSON error bodies: `{"error": "...", "code": "not_found"}`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::FailedPrecondition => "failed_precondition",
            ErrorCode::ResourceExhausted => "resource_exhausted",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::DeadlineExceeded => "deadline_exceeded",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// The code a peer's gRPC status means here. Lossy where two codes share a gRPC code
    /// ([`ErrorCode::RateLimited`] comes back as [`ErrorCode::ResourceExhausted`]), and a
    /// peer's deadline stays [`ErrorCode::Unavailable`]: for a caller of the gateway, a slow
    /// internal peer is an outage, not its own request taking too long.
    fn from_grpc(code: tonic::Code) -> Self {
        match code {
            tonic::Code::InvalidArgument | tonic::Code::OutOfRange => ErrorCode::InvalidArgument,
            tonic::Code::NotFound => ErrorCode::NotFound,
            tonic::Code::AlreadyExists => ErrorCode::AlreadyExists,
            tonic::Code::FailedPrecondition | tonic::Code::Aborted => ErrorCode::FailedPrecondition,
            tonic::Code::ResourceExhausted => ErrorCode::ResourceExhausted,
            tonic::Code::Unauthenticated => ErrorCode::Unauthenticated,
            tonic::Code::PermissionDenied => ErrorCode::PermissionDenied,
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                ErrorCode::Unavailable
            }
            _ => ErrorCode::Internal,
        }
    }

    /// Whether retrying the same request later may succeed.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ErrorCode::Unavailable
                | ErrorCode::Internal
                | ErrorCode::RateLimited
                | ErrorCode::DeadlineExceeded
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error any service may return: a code and a lowercase message naming the problem.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
}

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::InvalidArgument, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::NotFound, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::Internal, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::Unavailable, message)
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::ResourceExhausted, message)
    }
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        tonic::Status::new(err.code.grpc(), err.message)
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        Error::new(ErrorCode::from_grpc(status.code()), status.message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_grpc() {
        for code in [
            ErrorCode::InvalidArgument,
            ErrorCode::NotFound,
            ErrorCode::AlreadyExists,
            ErrorCode::FailedPrecondition,
            ErrorCode::ResourceExhausted,
            ErrorCode::Unauthenticated,
            ErrorCode::PermissionDenied,
            ErrorCode::Unavailable,
            ErrorCode::Internal,
        ] {
            let status: tonic::Status = Error::new(code, "x").into();
            assert_eq!(Error::from(status).code, code);
        }
    }

    #[test]
    fn http_statuses_follow_the_design() {
        assert_eq!(ErrorCode::InvalidArgument.http().as_u16(), 400);
        assert_eq!(ErrorCode::NotFound.http().as_u16(), 404);
        assert_eq!(ErrorCode::ResourceExhausted.http().as_u16(), 413);
        assert_eq!(ErrorCode::Unauthenticated.http().as_u16(), 401);
        assert_eq!(ErrorCode::PermissionDenied.http().as_u16(), 403);
        assert_eq!(ErrorCode::RateLimited.http().as_u16(), 429);
        assert_eq!(ErrorCode::Unavailable.http().as_u16(), 503);
        assert_eq!(ErrorCode::DeadlineExceeded.http().as_u16(), 504);
    }

    #[test]
    fn gateway_protection_codes_keep_their_grpc_meaning() {
        assert_eq!(
            ErrorCode::RateLimited.grpc(),
            tonic::Code::ResourceExhausted
        );
        assert_eq!(
            ErrorCode::DeadlineExceeded.grpc(),
            tonic::Code::DeadlineExceeded
        );
        // Through a peer they come back as the codes `from_grpc` documents.
        let back = |code| Error::from(tonic::Status::from(Error::new(code, "x"))).code;
        assert_eq!(back(ErrorCode::RateLimited), ErrorCode::ResourceExhausted);
        assert_eq!(back(ErrorCode::DeadlineExceeded), ErrorCode::Unavailable);
    }
}
