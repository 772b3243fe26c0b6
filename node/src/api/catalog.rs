//! Catalog routes: commands (`POST /v1/catalog/command`) and queries
//! (`POST /v1/catalog/query`), as the authenticated caller. On a cluster node a command goes
//! through the Raft leader and a query waits for a linearizable read barrier first; on a
//! standalone node both go to the local catalog.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::auth::Caller;
use super::{blocking, ApiError, AppState};
use crate::auth::new_token;
use crate::catalog::{Command, Query, QueryAnswer, Response};

/// Answer of `POST /v1/catalog/command`.
#[derive(Debug, Serialize, Deserialize)]
pub struct CommandAnswer {
    /// What the command answered.
    #[serde(flatten)]
    pub response: Response,
    /// For `add_user` and `set_token`: the new bearer token, shown this once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

pub(super) async fn command(
    State(st): State<AppState>,
    Caller(caller, token_sha256): Caller,
    Json(mut cmd): Json<Command>,
) -> Result<Json<CommandAnswer>, ApiError> {
    // Tokens are made here, never chosen by the client: only their hash enters the log.
    let token = match &mut cmd {
        Command::AddUser { token_sha256, .. } => {
            let (t, h) = new_token();
            *token_sha256 = Some(h);
            Some(t)
        }
        Command::SetToken { token_sha256, .. } => {
            let (t, h) = new_token();
            *token_sha256 = h;
            Some(t)
        }
        _ => None,
    };
    let response = submit(&st, caller, Some(token_sha256), cmd).await?;
    Ok(Json(CommandAnswer { response, token }))
}

/// Applies `cmd` as `caller` on this node's catalog (through Raft on a cluster node).
pub(super) async fn submit(
    st: &AppState,
    caller: String,
    token_sha256: Option<String>,
    cmd: Command,
) -> Result<Response, ApiError> {
    match &st.cluster {
        Some(c) => Ok(c.node.write_as(&caller, token_sha256, cmd).await?),
        None => {
            let store = st.store.clone();
            Ok(blocking(move || store.catalog().submit(&caller, cmd)).await??)
        }
    }
}

pub(super) async fn query(
    State(st): State<AppState>,
    Caller(caller, token_sha256): Caller,
    Json(q): Json<Query>,
) -> Result<Json<QueryAnswer>, ApiError> {
    let recheck = match &st.cluster {
        Some(c) => {
            c.node.read_barrier().await?;
            true
        }
        None => false,
    };
    let store = st.store.clone();
    let answer = blocking(move || {
        // The token was checked against this node's copy before the read barrier: a node
        // that was behind may have known a token replaced meanwhile. Check again, current.
        if recheck {
            let current = store.catalog().user_by_token(&token_sha256)?;
            if current.is_none_or(|u| u.name != caller) {
                return Ok(None);
            }
        }
        store.catalog().query(&caller, &q).map(Some)
    })
    .await??;
    answer.map(Json).ok_or_else(super::auth::unauthorized)
}
