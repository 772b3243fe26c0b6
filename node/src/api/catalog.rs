//! Catalog routes: commands (`POST /v1/catalog/command`, several at once with
//! `POST /v1/catalog/commands`) and queries
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

/// Most commands in one `POST /v1/catalog/commands`.
pub const MAX_BATCH: usize = crate::raft::node::MAX_GROUP;

/// Body of `POST /v1/catalog/commands`.
#[derive(Debug, Serialize, Deserialize)]
pub struct CommandBatch {
    /// Applied in this order, each on its own.
    pub commands: Vec<Command>,
}

/// Answer of `POST /v1/catalog/commands`: one per command, in order.
#[derive(Debug, Serialize, Deserialize)]
pub struct BatchAnswer {
    /// What each command answered.
    pub answers: Vec<BatchItem>,
}

/// One command's answer in a batch: what `POST /v1/catalog/command` would have answered.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchItem {
    /// Applied.
    Ok(CommandAnswer),
    /// Refused (nothing changed), with the error code and message the single route gives.
    Error {
        /// Stable error code.
        code: String,
        /// Human-readable message.
        message: String,
    },
}

/// Makes the token of an `add_user` or `set_token` command here: tokens are never chosen by
/// the client, only their hash enters the log. Returns the token to show the caller once.
fn make_token(cmd: &mut Command) -> Option<String> {
    match cmd {
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
    }
}

pub(super) async fn command(
    State(st): State<AppState>,
    Caller(caller, token_sha256): Caller,
    Json(mut cmd): Json<Command>,
) -> Result<Json<CommandAnswer>, ApiError> {
    let token = make_token(&mut cmd);
    let response = submit(&st, caller, Some(token_sha256), cmd).await?;
    Ok(Json(CommandAnswer { response, token }))
}

/// `POST /v1/catalog/commands`: several commands in one request, applied in order as the
/// caller, each answered on its own (a refused command does not stop the next). On a cluster
/// node they travel to the leader together and land in one log entry.
pub(super) async fn commands(
    State(st): State<AppState>,
    Caller(caller, token_sha256): Caller,
    Json(batch): Json<CommandBatch>,
) -> Result<Json<BatchAnswer>, ApiError> {
    let mut cmds = batch.commands;
    if cmds.is_empty() || cmds.len() > MAX_BATCH {
        return Err(ApiError::bad_request(
            "bad_batch",
            format!(
                "a batch holds 1 to {MAX_BATCH} commands, this one {}",
                cmds.len()
            ),
        ));
    }
    let tokens: Vec<Option<String>> = cmds.iter_mut().map(make_token).collect();
    let results: Vec<Result<Response, ApiError>> = match &st.cluster {
        Some(c) => c
            .node
            .write_many_as(&caller, Some(token_sha256), cmds)
            .await?
            .into_iter()
            .map(|r| r.map_err(ApiError::from))
            .collect(),
        None => {
            let store = st.store.clone();
            blocking(move || {
                let catalog = store.catalog();
                cmds.into_iter()
                    .map(|cmd| catalog.submit(&caller, cmd).map_err(ApiError::from))
                    .collect()
            })
            .await?
        }
    };
    let answers = results
        .into_iter()
        .zip(tokens)
        .map(|(r, token)| match r {
            Ok(response) => BatchItem::Ok(CommandAnswer { response, token }),
            Err(e) => BatchItem::Error {
                code: e.code.to_string(),
                message: e.message,
            },
        })
        .collect();
    Ok(Json(BatchAnswer { answers }))
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
