//! Item routes. Uploads and downloads are streams of frames (see `docs/API.md`), never a whole
//! batch in memory: an upload is stored in batches of about 8 MiB as its frames arrive, a
//! download is written out as the store reads it.

use std::sync::atomic::Ordering;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use mirage_format::Digest;
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState, Caller};
use crate::catalog::CatalogError;
use crate::store::ReadOptions;
use axum::http::StatusCode;

const BATCH_BYTES: usize = 8 << 20;
const BATCH_ITEMS: usize = 1024;
/// Largest frame accepted (an item is at most 16 MiB; see `mirage_format::item::MAX_ITEM`).
const MAX_FRAME: usize = mirage_format::item::MAX_ITEM + 1024;

fn parse_digest(t: &str) -> Result<Digest, ApiError> {
    t.parse()
        .map_err(|e| ApiError::bad_request("bad_digest", format!("{t:?}: {e}")))
}

fn parse_digests(texts: &[String]) -> Result<Vec<Digest>, ApiError> {
    texts.iter().map(|t| parse_digest(t)).collect()
}

/// Body of `POST /v1/items/has`.
#[derive(Debug, Deserialize)]
pub(super) struct HasRequest {
    digests: Vec<String>,
}

/// Answer of `POST /v1/items/has`.
#[derive(Debug, Serialize)]
pub(super) struct HasResponse {
    present: Vec<bool>,
}

pub(super) async fn has(
    State(st): State<AppState>,
    _: Caller,
    Json(req): Json<HasRequest>,
) -> Result<Json<HasResponse>, ApiError> {
    let ds = parse_digests(&req.digests)?;
    let store = st.store.clone();
    let present = tokio::task::spawn_blocking(move || store.has_many(&ds))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(Json(HasResponse { present }))
}

/// Answer of `POST /v1/items`.
#[derive(Debug, Default, Serialize)]
pub(super) struct PutResponse {
    items: u64,
    new: u64,
}

/// Stores one batch; an error comes with the number of items stored before it.
async fn store_batch(
    st: &AppState,
    batch: Vec<Vec<u8>>,
    out: &mut PutResponse,
) -> Result<(), (ApiError, u64)> {
    if batch.is_empty() {
        return Ok(());
    }
    let store = st.store.clone();
    let outcomes = tokio::task::spawn_blocking(move || store.put_many(batch))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))
        .and_then(|r| r.map_err(ApiError::from))
        .map_err(|e| (e, out.items))?;
    let new = outcomes.iter().filter(|o| o.new).count() as u64;
    out.items += outcomes.len() as u64;
    out.new += new;
    st.metrics
        .items_put
        .fetch_add(outcomes.len() as u64, Ordering::Relaxed);
    st.metrics.items_new.fetch_add(new, Ordering::Relaxed);
    Ok(())
}

pub(super) async fn put(State(st): State<AppState>, _: Caller, body: Body) -> Response {
    match put_inner(&st, body).await {
        Ok(r) => Json(r).into_response(),
        Err((mut e, stored)) => {
            st.metrics.errors.fetch_add(1, Ordering::Relaxed);
            e.message = format!("{} ({stored} items stored before it)", e.message);
            e.into_response()
        }
    }
}

async fn put_inner(st: &AppState, body: Body) -> Result<PutResponse, (ApiError, u64)> {
    let mut out = PutResponse::default();
    let mut stream = body.into_data_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut batch: Vec<Vec<u8>> = Vec::new();
    let mut batch_bytes = 0usize;
    loop {
        // Take every complete frame out of the buffer.
        let mut pos = 0;
        while buf.len() - pos >= 4 {
            let len =
                u32::from_be_bytes([buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]]) as usize;
            if len > MAX_FRAME {
                return Err((
                    ApiError::bad_request(
                        "bad_frame",
                        format!("frame of {len} bytes exceeds the item limit"),
                    ),
                    out.items,
                ));
            }
            if buf.len() - pos - 4 < len {
                break;
            }
            batch.push(buf[pos + 4..pos + 4 + len].to_vec());
            batch_bytes += len;
            pos += 4 + len;
            if batch_bytes >= BATCH_BYTES || batch.len() >= BATCH_ITEMS {
                store_batch(st, std::mem::take(&mut batch), &mut out).await?;
                batch_bytes = 0;
            }
        }
        buf.drain(..pos);
        match stream.next().await {
            Some(Ok(chunk)) => {
                st.metrics
                    .bytes_in
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                buf.extend_from_slice(&chunk);
            }
            Some(Err(e)) => {
                return Err((ApiError::bad_request("bad_body", e.to_string()), out.items));
            }
            None => break,
        }
    }
    if !buf.is_empty() {
        return Err((
            ApiError::bad_request(
                "bad_frame",
                format!("{} bytes of an incomplete frame at the end", buf.len()),
            ),
            out.items,
        ));
    }
    store_batch(st, batch, &mut out).await?;
    Ok(out)
}

/// Body of `POST /v1/items/get`.
#[derive(Debug, Deserialize)]
pub(super) struct GetRequest {
    digests: Vec<String>,
    /// Read in the context of this item (its location table).
    context: Option<String>,
    /// Read in the context of these items (their location tables together).
    #[serde(default)]
    contexts: Vec<String>,
    /// The image the items belong to (required unless the caller is an admin).
    #[serde(default)]
    image: Option<String>,
    /// Re-hash every item before sending it (the CRC is always checked).
    #[serde(default)]
    verify: bool,
}

/// Frame tags of a download.
const TAG_ITEM: u8 = 0;
const TAG_MISSING: u8 = 1;
const TAG_ERROR: u8 = 2;

fn frame(tag: u8, payload: &[u8]) -> Bytes {
    let mut f = Vec::with_capacity(5 + payload.len());
    f.push(tag);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    Bytes::from(f)
}

/// Refuses unless `caller` may read every digest of `ds`: admins read anything; others only
/// items in the closure of an `image` they may see (`access.rs`).
async fn authorize(
    st: &AppState,
    caller: String,
    image: Option<Digest>,
    ds: Vec<Digest>,
) -> Result<Vec<Digest>, ApiError> {
    let store = st.store.clone();
    let admin = super::blocking(move || -> Result<bool, ApiError> {
        let c = store.catalog();
        if c.user(&caller)?.is_some_and(|u| u.admin) {
            return Ok(true);
        }
        let image = image.ok_or_else(|| ApiError {
            status: StatusCode::FORBIDDEN,
            code: "denied",
            message: "name the image the items belong to (\"image\")".into(),
        })?;
        // The image must be one the catalog records (a named image's version) and the caller
        // may see; any other digest — a subtree of some image, an unnamed upload — is refused
        // like a hidden name, so a digest learned once is no key to an image later hidden.
        match c.image(&image)? {
            Some(rec) if c.may_see(&caller, &rec)? => Ok(false),
            _ => Err(CatalogError::NotFound(image.to_text()).into()),
        }
    })
    .await??;
    let Some(image) = image.filter(|_| !admin) else {
        return Ok(ds);
    };
    let closure = match &st.cluster {
        // A cluster node holds only its partitions: the walk crosses the nodes.
        Some(c) => st
            .closures
            .of_cluster(&c.shard, &image)
            .await
            .map_err(ApiError::internal)?,
        None => {
            let (store, closures) = (st.store.clone(), st.closures.clone());
            super::blocking(move || closures.of(&store, &image)).await??
        }
    };
    if let Some(d) = ds.iter().find(|d| !closure.contains(d)) {
        return Err(ApiError {
            status: StatusCode::FORBIDDEN,
            code: "denied",
            message: format!("{} is not part of image {}", d.to_text(), image.to_text()),
        });
    }
    Ok(ds)
}

pub(super) async fn get(
    State(st): State<AppState>,
    Caller(caller, _): Caller,
    Json(req): Json<GetRequest>,
) -> Result<Response, ApiError> {
    let ds = parse_digests(&req.digests)?;
    let mut contexts = parse_digests(&req.contexts)?;
    contexts.extend(req.context.as_deref().map(parse_digest).transpose()?);
    let image = req.image.as_deref().map(parse_digest).transpose()?;
    let ds = match authorize(&st, caller.clone(), image, ds.clone()).await {
        Ok(ds) => ds,
        // A grant or name made a moment ago may not have reached this node: catch up once.
        Err(e) if st.cluster.is_some() && e.status.is_client_error() => {
            if let Some(c) = &st.cluster {
                c.node.read_barrier().await?;
            }
            authorize(&st, caller, image, ds).await?
        }
        Err(e) => return Err(e),
    };
    Ok(serve(&st, ds, contexts, req.verify, false))
}

/// Streams the items `ds` as the store reads them (see `docs/API.md`, `POST /v1/items/get`),
/// counted as served to a client or (`peer`) to another node.
pub(super) fn serve(
    st: &AppState,
    ds: Vec<Digest>,
    contexts: Vec<Digest>,
    verify: bool,
    peer: bool,
) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    let store = st.store.clone();
    let metrics = st.metrics.clone();
    let opts = ReadOptions {
        verify_digest: verify,
        ..Default::default()
    };
    tokio::task::spawn_blocking(move || {
        let r = store.get_many_in(&ds, &contexts, opts, |d, r| {
            let f = match r {
                Ok(bytes) => {
                    let (items, out) = if peer {
                        (&metrics.peer_items_served, &metrics.peer_bytes_out)
                    } else {
                        (&metrics.items_served, &metrics.bytes_out)
                    };
                    items.fetch_add(1, Ordering::Relaxed);
                    out.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    frame(TAG_ITEM, &bytes)
                }
                Err(e) => {
                    let j = serde_json::json!({"digest": d, "code": "integrity", "message": e.to_string()});
                    frame(TAG_ERROR, j.to_string().as_bytes())
                }
            };
            // A client that went away stops being fed; the read finishes quickly.
            let _ = tx.blocking_send(Ok(f));
        });
        match r {
            Ok(stats) => {
                let m = &metrics;
                m.read_table_hits
                    .fetch_add(stats.table_hits, Ordering::Relaxed);
                m.read_index_lookups
                    .fetch_add(stats.index_lookups, Ordering::Relaxed);
                m.read_ops.fetch_add(stats.read_ops, Ordering::Relaxed);
                for m in stats.missing {
                    let _ = tx.blocking_send(Ok(frame(TAG_MISSING, m.to_text().as_bytes())));
                }
            }
            Err(e) => {
                let j = serde_json::json!({"code": "storage", "message": e.to_string()});
                let _ = tx.blocking_send(Ok(frame(TAG_ERROR, j.to_string().as_bytes())));
            }
        }
    });
    let stream = tokio_stream(rx);
    (
        [(header::CONTENT_TYPE, "application/vnd.mirage.frames")],
        Body::from_stream(stream),
    )
        .into_response()
}

fn tokio_stream(
    mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Body of `POST /v1/items/tables`: for each parent, children the node should hold.
#[derive(Debug, Deserialize)]
pub(super) struct TablesRequest {
    tables: Vec<TableRequest>,
}

/// One parent and some of its children.
#[derive(Debug, Deserialize)]
pub(super) struct TableRequest {
    parent: String,
    children: Vec<String>,
}

/// Answer of `POST /v1/items/tables`.
#[derive(Debug, Serialize)]
pub(super) struct TablesResponse {
    /// Entries added (children held and not in their parent's table yet).
    added: u64,
}

/// Records where this node holds children of parents stored elsewhere (see
/// `store/tables.rs`).
pub(super) async fn tables(
    State(st): State<AppState>,
    _: Caller,
    Json(req): Json<TablesRequest>,
) -> Result<Json<TablesResponse>, ApiError> {
    let tables = req
        .tables
        .iter()
        .map(|t| Ok((parse_digest(&t.parent)?, parse_digests(&t.children)?)))
        .collect::<Result<Vec<_>, ApiError>>()?;
    let store = st.store.clone();
    let added = super::blocking(move || store.add_tables(&tables)).await??;
    st.metrics
        .table_entries_added
        .fetch_add(added, Ordering::Relaxed);
    Ok(Json(TablesResponse { added }))
}

/// Body of `POST /v1/items/locations`.
#[derive(Debug, Deserialize)]
pub(super) struct LocationsRequest {
    digest: String,
    #[serde(default)]
    image: Option<String>,
}

/// One child in a location table.
#[derive(Debug, Serialize)]
pub(super) struct LocationEntry {
    digest: Digest,
    kind: &'static str,
    volume: u32,
    offset: u64,
    raw_len: u32,
    stored_len: u32,
}

/// Answer of `POST /v1/items/locations`.
#[derive(Debug, Serialize)]
pub(super) struct LocationsResponse {
    /// `null` when this node keeps no table for the item.
    entries: Option<Vec<LocationEntry>>,
}

pub(super) async fn locations(
    State(st): State<AppState>,
    Caller(caller, _): Caller,
    Json(req): Json<LocationsRequest>,
) -> Result<Json<LocationsResponse>, ApiError> {
    let d = parse_digest(&req.digest)?;
    let image = req.image.as_deref().map(parse_digest).transpose()?;
    authorize(&st, caller, image, vec![d]).await?;
    let store = st.store.clone();
    let table = super::blocking(move || store.location_table(&d)).await??;
    Ok(Json(LocationsResponse {
        entries: table.map(|t| {
            t.entries
                .into_iter()
                .map(|(digest, l)| LocationEntry {
                    digest,
                    kind: l.kind.name(),
                    volume: l.volume,
                    offset: l.offset,
                    raw_len: l.raw_len,
                    stored_len: l.stored_len,
                })
                .collect()
        }),
    }))
}
