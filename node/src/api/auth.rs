//! Who is calling: a user with a bearer token (`Authorization: Bearer mrg_…`), or another node
//! with the cluster secret. A missing or unknown credential is a 401 that says nothing more;
//! a known user doing what its ACLs forbid gets 403 (or 404 where the catalog hides existence).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};

use super::{ApiError, AppState};
use crate::auth::{same_secret, token_hash};
use crate::raft::network::SECRET_HEADER;

/// An authenticated user: its name and the SHA-256 of the token it presented (a command
/// carries it, and is refused at apply time if the token was replaced meanwhile).
#[derive(Debug, Clone)]
pub struct Caller(pub String, pub String);

/// A request from another node of the cluster.
#[derive(Debug, Clone, Copy)]
pub struct Peer;

pub(super) fn unauthorized() -> ApiError {
    ApiError {
        status: StatusCode::UNAUTHORIZED,
        code: "unauthorized",
        message: "missing or invalid credentials".into(),
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(unauthorized)?;
        let h = token_hash(token);
        let lookup = |h: String| async move {
            if let Some(found) = st.store.catalog().user_by_token_cached(&h) {
                return Ok(found);
            }
            let store = st.store.clone();
            super::blocking(move || store.catalog().user_by_token(&h)).await
        };
        if let Some(u) = lookup(h.clone()).await?? {
            return Ok(Caller(u.name, h));
        }
        // A user added a moment ago may not have reached this node yet: catch up once.
        if let Some(c) = &st.cluster {
            // Without a leader the answer stays 401: an unknown token learns nothing more.
            if c.node.read_barrier().await.is_ok() {
                if let Some(u) = lookup(h.clone()).await?? {
                    return Ok(Caller(u.name, h));
                }
            }
        }
        Err(unauthorized())
    }
}

impl FromRequestParts<AppState> for Peer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, ApiError> {
        let Some(cluster) = &st.cluster else {
            return Err(unauthorized());
        };
        let given = parts
            .headers
            .get(SECRET_HEADER)
            .map(|v| v.as_bytes())
            .ok_or_else(unauthorized)?;
        if same_secret(given, cluster.secret.as_bytes()) {
            Ok(Peer)
        } else {
            Err(unauthorized())
        }
    }
}
