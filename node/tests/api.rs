//! The HTTP API on a real listener (port 0): uploads, presence, downloads in context, errors
//! with their codes, health, metrics, graceful shutdown; and the routes match docs/API.md.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use mirage_format::{Algorithm, Digest};
use mirage_node::api::ROUTES;

/// (tag, payload) frames of a download.
fn parse(body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < body.len() {
        let tag = body[pos];
        let len = u32::from_be_bytes(body[pos + 1..pos + 5].try_into().unwrap()) as usize;
        out.push((tag, body[pos + 5..pos + 5 + len].to_vec()));
        pos += 5 + len;
    }
    out
}

/// Serves `store` on a port the OS picks until the test ends; returns its base URL.
async fn serve(store: mirage_node::Store) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(mirage_node::api::run(
        listener,
        store,
        None,
        std::future::pending(),
    ));
    base
}

/// A new store with its first admin, served on a port the OS picks by the returned runtime
/// (for as long as it lives): (its directory, the runtime, the base URL, the admin's token).
fn served_with_admin() -> (tempfile::TempDir, tokio::runtime::Runtime, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let token = mirage_node::api::bootstrap_admin(&store).unwrap().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let base = rt.block_on(serve(store));
    (dir, rt, base, token)
}

#[test]
fn items_round_trip_over_http_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let token = mirage_node::api::bootstrap_admin(&store).unwrap().unwrap();
        assert_eq!(mirage_node::api::bootstrap_admin(&store).unwrap(), None);
        let server = tokio::spawn(mirage_node::api::run(listener, store, None, async {
            let _ = stopped.await;
        }));
        // No token, or a wrong one: 401 and nothing else.
        for auth in [None, Some("Bearer mrg_0000"), Some("Basic YWRtaW46eA==")] {
            let mut rq = reqwest::Client::new().post(format!("{base}/v1/items/has"));
            if let Some(a) = auth {
                rq = rq.header("authorization", a);
            }
            let r = rq
                .json(&serde_json::json!({"digests": []}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 401);
            let e: serde_json::Value = r.json().await.unwrap();
            assert_eq!(e["error"]["code"], "unauthorized");
        }
        let http = http_client(&token);
        let alg = Algorithm::Sha256;
        let blobs: Vec<_> = (0..30).map(|i| blob(alg, i)).collect();
        let tree = tree_of(alg, &blobs.iter().collect::<Vec<_>>());
        // A parent without its children is refused (closure), and says so.
        let r = http
            .post(format!("{base}/v1/items"))
            .body(frames(&[tree.bytes()]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 409);
        let e: serde_json::Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "missing_references");
        // Children then parent, in one streamed upload.
        let r = upload_children_then(&http, &base, &blobs, &tree).await;
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(
            (v["items"].as_u64(), v["new"].as_u64()),
            (Some(31), Some(31))
        );
        // Presence.
        let absent = Digest::of(alg, b"absent").unwrap();
        let r = post_json(
            &http,
            format!("{base}/v1/items/has"),
            &serde_json::json!({"digests": [tree.digest(), absent]}),
        )
        .await;
        assert_eq!(r["present"], serde_json::json!([true, false]));
        // Download in the tree's context: every item, verified by the client's own hash.
        let mut want: Vec<Digest> = blobs.iter().map(|b| b.digest()).collect();
        want.push(absent);
        let body = http
            .post(format!("{base}/v1/items/get"))
            .json(&serde_json::json!({"digests": want, "context": tree.digest()}))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let got = parse(&body);
        let items: Vec<Digest> = got
            .iter()
            .filter(|(t, _)| *t == 0)
            .map(|(_, b)| Digest::of(alg, b).unwrap())
            .collect();
        assert_eq!(items.len(), 30);
        for b in &blobs {
            assert!(items.contains(&b.digest()));
        }
        let missing: Vec<String> = got
            .iter()
            .filter(|(t, _)| *t == 1)
            .map(|(_, b)| String::from_utf8(b.clone()).unwrap())
            .collect();
        assert_eq!(missing, vec![absent.to_text()]);
        // Bad input: a malformed digest, an incomplete frame, an oversized frame.
        let r = http
            .post(format!("{base}/v1/items/has"))
            .json(&serde_json::json!({"digests": ["sha256:zz"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let e: serde_json::Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "bad_digest");
        for body in [vec![0, 0, 1, 0, 7], u32::MAX.to_be_bytes().to_vec()] {
            let r = http
                .post(format!("{base}/v1/items"))
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 400);
            let e: serde_json::Value = r.json().await.unwrap();
            assert_eq!(e["error"]["code"], "bad_frame");
        }
        // Health, readiness, metrics.
        for (path, want) in [("/healthz", "ok\n"), ("/readyz", "ready\n")] {
            let r = http.get(format!("{base}{path}")).send().await.unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.text().await.unwrap(), want);
        }
        let m = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for line in [
            "mirage_items_put_total 31",
            "mirage_items_new_total 31",
            "mirage_items_served_total 30",
            "mirage_store_items 31",
        ] {
            assert!(m.lines().any(|l| l == line), "{line} missing in\n{m}");
        }
        // Graceful shutdown.
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
        assert!(http.get(format!("{base}/healthz")).send().await.is_err());
    });
}

#[test]
fn every_route_is_documented_and_every_documented_route_exists() {
    // Embedded when the test is built (and rebuilt when the file changes), so the binary does
    // not depend on where the tree it was built from lies when it runs.
    let doc = include_str!("../../docs/API.md");
    let documented: Vec<&str> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("### `")?.strip_suffix('`'))
        .collect();
    let mut routes = ROUTES.to_vec();
    routes.sort_unstable();
    let mut documented_sorted = documented.clone();
    documented_sorted.sort_unstable();
    assert_eq!(routes, documented_sorted);
}

/// Every route but health, readiness and metrics refuses a request without credentials, with
/// a wrong token, or with a user token where the cluster secret is needed: 401, and the body
/// says nothing more.
#[test]
fn every_route_refuses_missing_and_wrong_credentials() {
    let (_dir, rt, base, token) = served_with_admin();
    rt.block_on(async {
        let open = ["GET /healthz", "GET /readyz", "GET /metrics"];
        let mut checked = 0;
        for route in ROUTES {
            if open.contains(&route) {
                continue;
            }
            let (method, path) = route.split_once(' ').unwrap();
            let raft = path.starts_with("/v1/raft/");
            for auth in [None, Some("Bearer mrg_wrong".to_string()), Some(format!("Bearer {token}"))] {
                // A valid user token is only wrong on the node-to-node routes.
                if auth.as_deref().is_some_and(|a| a.contains(&token)) && !raft {
                    continue;
                }
                let http = reqwest::Client::new();
                let mut rq = match method {
                    "GET" => http.get(format!("{base}{path}")),
                    _ => http.post(format!("{base}{path}")).json(&serde_json::json!({})),
                };
                if let Some(a) = &auth {
                    rq = rq.header("authorization", a);
                }
                let r = rq.send().await.unwrap();
                assert_eq!(r.status(), 401, "{route} with {auth:?}");
                let body: serde_json::Value = r.json().await.unwrap();
                assert_eq!(
                    body,
                    serde_json::json!({"error": {"code": "unauthorized", "message": "missing or invalid credentials"}}),
                    "{route}"
                );
                checked += 1;
            }
        }
        assert!(checked >= 2 * (ROUTES.len() - open.len()), "{checked}");
    });
}

/// A parent's location table over HTTP: every child, with its kind and where it is.
#[test]
fn location_tables_are_served_for_an_items_children() {
    let (_dir, rt, base, token) = served_with_admin();
    let alg = Algorithm::Sha256;
    let blobs: Vec<_> = (0..12).map(|i| blob(alg, 500 + i)).collect();
    let tree = tree_of(alg, &blobs.iter().collect::<Vec<_>>());
    rt.block_on(async {
        let http = http_client(&token);
        let r = upload_children_then(&http, &base, &blobs, &tree).await;
        assert_eq!(r.status(), 200);
        let v = post_json(
            &http,
            format!("{base}/v1/items/locations"),
            &serde_json::json!({"digest": tree.digest().to_text()}),
        )
        .await;
        let entries = v["entries"].as_array().unwrap();
        assert_eq!(entries.len(), blobs.len(), "{v}");
        for (e, b) in entries.iter().zip(&blobs) {
            assert_eq!(e["digest"], b.digest().to_text());
            assert_eq!(e["kind"], "blob");
            assert_eq!(e["raw_len"].as_u64(), Some(b.bytes().len() as u64));
        }
        // A leaf has no table.
        let v = post_json(
            &http,
            format!("{base}/v1/items/locations"),
            &serde_json::json!({"digest": blobs[0].digest().to_text()}),
        )
        .await;
        assert!(v["entries"].is_null(), "{v}");
    });
}

/// Uploads `blobs` then `tree`, in one streamed body.
async fn upload_children_then(
    http: &reqwest::Client,
    base: &str,
    blobs: &[mirage_format::chunking::EncodedItem],
    tree: &mirage_format::chunking::EncodedItem,
) -> reqwest::Response {
    let mut all: Vec<&[u8]> = blobs.iter().map(|b| b.bytes()).collect();
    all.push(tree.bytes());
    http.post(format!("{base}/v1/items"))
        .body(frames(&all))
        .send()
        .await
        .unwrap()
}

/// `POST /v1/catalog/commands` on a standalone node: each command answered in order, a
/// refused one (with the single route's code) not stopping the next; new tokens made by the
/// node; an empty or oversized batch refused as a whole with nothing applied.
#[test]
fn a_batch_of_commands_is_applied_in_order_and_answered_one_by_one() {
    let (_dir, rt, base, token) = served_with_admin();
    rt.block_on(async {
        let http = http_client(&token);
        let url = format!("{base}/v1/catalog/commands");
        let image = |b: &str| format!("sha256:{}", b.repeat(32));
        let v = post_json(
            &http,
            url.clone(),
            &serde_json::json!({"commands": [
                {"op": "checkin", "name": "web", "image": image("b1"), "parent": null},
                {"op": "checkin", "name": "bad:name", "image": image("b2"), "parent": null},
                {"op": "checkin", "name": "web", "image": image("b3"), "parent": null},
                {"op": "add_user", "name": "carol", "admin": false, "token_sha256": "f".repeat(64)},
                {"op": "set_default", "name": "web", "version": 9},
            ]}),
        )
        .await;
        let a = v["answers"].as_array().unwrap();
        assert_eq!(a.len(), 5, "{v}");
        assert_eq!(a[0]["ok"]["version"].as_u64(), Some(1), "{v}");
        assert_eq!(a[1]["error"]["code"].as_str(), Some("invalid"), "{v}");
        assert_eq!(a[2]["ok"]["version"].as_u64(), Some(2), "{v}");
        assert_eq!(a[4]["error"]["code"].as_str(), Some("no_such_version"), "{v}");
        // The node made carol's token (the hash the client sent is ignored), and it works.
        let carol = a[3]["ok"]["token"].as_str().unwrap().to_string();
        let me = post_json(
            &http_client(&carol),
            format!("{base}/v1/catalog/query"),
            &serde_json::json!({"q": "whoami"}),
        )
        .await;
        assert_eq!(me["user"]["name"].as_str(), Some("carol"), "{me}");
        let resolved = post_json(
            &http,
            format!("{base}/v1/catalog/query"),
            &serde_json::json!({"q": "resolve", "reference": "web@2"}),
        )
        .await;
        assert_eq!(resolved["resolved"]["image"].as_str(), Some(image("b3").as_str()));

        // Empty and oversized batches: 400 bad_batch, nothing applied.
        let too_many: Vec<_> = (0..=mirage_node::api::catalog::MAX_BATCH)
            .map(|_| serde_json::json!({"op": "checkin", "name": "big", "image": image("b4"), "parent": null}))
            .collect();
        for commands in [Vec::new(), too_many] {
            let r = http
                .post(url.clone())
                .json(&serde_json::json!({ "commands": commands }))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 400);
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["error"]["code"].as_str(), Some("bad_batch"), "{body}");
        }
        let big = post_json(
            &http,
            format!("{base}/v1/catalog/query"),
            &serde_json::json!({"q": "resolve", "reference": "big"}),
        )
        .await;
        assert_eq!(big["error"]["code"].as_str(), Some("not_found"), "{big}");
    });
}
