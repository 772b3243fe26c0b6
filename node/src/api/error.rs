//! Every error the API returns, mapped to HTTP in one place, with stable codes.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::catalog::CatalogError;
use crate::raft::node::ClusterError;
use crate::store::StoreError;

/// An API error: status, stable code, message. Rendered as
/// `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// Human-readable message.
    pub message: String,
}

impl ApiError {
    /// A 400 with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code,
            message: message.into(),
        }
    }

    /// A 500 `internal`: a worker task of the handler failed (logged here).
    pub fn internal(message: impl Into<String>) -> Self {
        let message = message.into();
        tracing::error!(error = %message, "request failed");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let (status, code) = match &e {
            StoreError::InvalidItem { .. } | StoreError::Digest { .. } => {
                (StatusCode::BAD_REQUEST, "invalid_item")
            }
            StoreError::WrongAlgorithm { .. } => (StatusCode::BAD_REQUEST, "wrong_algorithm"),
            StoreError::MissingReferences { .. } => (StatusCode::CONFLICT, "missing_references"),
            StoreError::Integrity { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "integrity"),
            StoreError::WritesDisabled(_) | StoreError::Closed => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "storage"),
        };
        if status.is_server_error() {
            tracing::error!(error = %e, "request failed");
        }
        ApiError {
            status,
            code,
            message: e.to_string(),
        }
    }
}

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> Self {
        let status = match &e {
            CatalogError::NotFound(_)
            | CatalogError::NoSuchVersion { .. }
            | CatalogError::NoSuchUser(_) => StatusCode::NOT_FOUND,
            CatalogError::Exists(_) | CatalogError::Conflict(_) => StatusCode::CONFLICT,
            CatalogError::Denied(_) => StatusCode::FORBIDDEN,
            CatalogError::Locked { .. } => StatusCode::LOCKED,
            CatalogError::Deleted { .. } => StatusCode::GONE,
            CatalogError::Invalid(_) => StatusCode::BAD_REQUEST,
            CatalogError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::error!(error = %e, "catalog request failed");
        }
        ApiError {
            status,
            code: e.code(),
            message: e.to_string(),
        }
    }
}

impl From<ClusterError> for ApiError {
    fn from(e: ClusterError) -> Self {
        let (status, code) = match &e {
            ClusterError::Catalog(c) => return c.clone().into(),
            ClusterError::NoLeader => (StatusCode::SERVICE_UNAVAILABLE, "no_leader"),
            ClusterError::Refused(_) => (StatusCode::CONFLICT, "refused"),
            ClusterError::Raft(_) => (StatusCode::SERVICE_UNAVAILABLE, "raft"),
        };
        tracing::warn!(error = %e, "catalog group request failed");
        ApiError {
            status,
            code,
            message: e.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        (self.status, axum::Json(body)).into_response()
    }
}
