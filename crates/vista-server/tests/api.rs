//! The API in process (tower's `oneshot`, no socket) over a real index of generated photos, the
//! tiny CLIP and SAM fixtures: every endpoint, every error code, the 429 path, body and pixel
//! limits, API keys, and paths that try to leave the indexed folders. One test also serves on a
//! real localhost socket.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use base64::Engine;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;
use vista::index::{IndexDb, IndexOptions, IndexedModel, ScanOptions};
use vista_server::worker::Batching;
use vista_server::{AppState, Clip, Library, Limits, Sam};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../vista/tests/fixtures")
}

fn clip_model() -> String {
    fixtures().join("clip/openclip_e2e").display().to_string()
}

/// Photos in `root` (plus one outside it, reached through a link inside), indexed.
struct Photos {
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    root: PathBuf,
    db: PathBuf,
    model: String,
}

fn photos() -> Photos {
    let root_dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(root_dir.path()).unwrap();
    std::fs::create_dir_all(root.join("trip")).unwrap();
    let colours = [("red", [220u8, 20, 20]), ("green", [20, 200, 40]), ("blue", [20, 40, 220])];
    for (i, (name, rgb)) in colours.iter().enumerate() {
        let img = image::RgbImage::from_fn(64, 48, |x, y| {
            // A square object in the middle on a grey ground.
            if (16..48).contains(&x) && (12..36).contains(&y) {
                image::Rgb(*rgb)
            } else {
                image::Rgb([120 + i as u8, 120, 120])
            }
        });
        let dir = if i == 2 { root.join("trip") } else { root.clone() };
        img.save(dir.join(format!("{name}.png"))).unwrap();
    }
    let secret = outside.path().join("secret.png");
    image::RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3])).save(&secret).unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(&secret, root.join("link.png")).unwrap();
    let db_path = root.join(".vista/index.sqlite");
    let mut db = IndexDb::open(&db_path).unwrap();
    let pipeline = vista::clip::ClipPipeline::load(&clip_model(), None, vista::device::Target::default()).unwrap();
    let model = IndexedModel { id: vista::index::model_id(&clip_model()), arch: None };
    vista::index::update(
        &pipeline,
        &model,
        &mut db,
        std::slice::from_ref(&root),
        &ScanOptions::default(),
        &IndexOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    Photos { _dirs: (root_dir, outside), root, db: db_path, model: model.id }
}

fn state(p: &Photos, limits: Limits, api_key: Option<&str>, with_sam: bool) -> Arc<AppState> {
    let library = Library::load(&p.db, &p.model).unwrap();
    let decode = vista::image::DecodeOptions::with_max_pixels(limits.max_pixels);
    let pipeline = vista::clip::ClipPipeline::load(&clip_model(), None, vista::device::Target::default()).unwrap();
    let batching = Batching { queue: limits.queue, batch: limits.batch, wait: limits.batch_wait };
    let clip = Clip::start(Arc::new(pipeline), batching, decode);
    let sam = with_sam.then(|| {
        let weights = fixtures().join("sam/vit_official/sam_vit_tiny.pth");
        let pipeline =
            vista::apps::segment::SegmentPipeline::load(weights.to_str().unwrap(), &Default::default(), None).unwrap();
        Sam::start(pipeline, limits.sam_lru, limits.queue, decode)
    });
    let dino = {
        let weights = fixtures().join("dino/v1_hf");
        let pipeline =
            vista::dino::DinoPipeline::load(weights.to_str().unwrap(), &vista::dino::LoadOptions::default()).unwrap();
        vista_server::Dino::start(pipeline, Batching { queue: limits.queue, batch: 4, wait: limits.batch_wait }, decode)
    };
    Arc::new(AppState::new(Some(clip), sam, library, limits, api_key.map(String::from)).with_dino(dino))
}

async fn call(state: &Arc<AppState>, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let r = vista_server::app(state.clone()).oneshot(req).await.unwrap();
    let (parts, body) = r.into_parts();
    (parts.status, parts.headers, body.collect().await.unwrap().to_bytes().to_vec())
}

async fn get(state: &Arc<AppState>, uri: &str) -> (StatusCode, Value) {
    let (s, _, b) = call(state, Request::get(uri).body(Body::empty()).unwrap()).await;
    (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

async fn post(state: &Arc<AppState>, uri: &str, body: Value) -> (StatusCode, Value) {
    let req = Request::post(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap();
    let (s, _, b) = call(state, req).await;
    (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

fn b64(path: &Path) -> String {
    base64::engine::general_purpose::STANDARD.encode(std::fs::read(path).unwrap())
}

fn id_of(state: &AppState, name: &str) -> String {
    state
        .library()
        .photos
        .iter()
        .find(|p| p.path.ends_with(name))
        .unwrap_or_else(|| panic!("{name} indexed"))
        .id
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_and_every_error_is_typed_json() {
    let p = photos();
    let st = state(&p, Limits::default(), None, true);
    assert_eq!(st.library().photos.len(), 4, "three photos and the link");

    let (s, h) = get(&st, "/health").await;
    assert_eq!((s, h["images"].clone(), h["sam"].clone()), (StatusCode::OK, json!(4), json!(true)));
    let (s, _, page) = call(&st, Request::get("/").body(Body::empty()).unwrap()).await;
    assert!(s.is_success() && String::from_utf8_lossy(&page).contains("<script src=\"/app.js\">"));

    // Search: text, negative terms, by example, under a folder.
    let (s, r) = get(&st, "/v1/search?q=a%20red%20square%20-green&top=2").await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["results"].as_array().unwrap().len(), 2);
    let red = id_of(&st, "red.png");
    let (s, r) = get(&st, &format!("/v1/search?image={red}&top=1")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(r["results"][0]["id"], red, "an image is its own nearest neighbour");
    assert!((r["results"][0]["score"].as_f64().unwrap() - 1.0).abs() < 1e-2);
    let under = p.root.join("trip");
    let (s, r) = get(&st, &format!("/v1/search?image={red}&under={}", under.display())).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(r["results"].as_array().unwrap().len(), 1);
    assert!(r["results"][0]["path"].as_str().unwrap().ends_with("trip/blue.png"));
    for (uri, status, kind) in [
        ("/v1/search", StatusCode::BAD_REQUEST, "bad_request"),
        ("/v1/search?image=0123", StatusCode::NOT_FOUND, "not_found"),
        ("/v1/search?q=x&under=/etc", StatusCode::NOT_FOUND, "not_found"),
        ("/v1/search?q=x&templates=klingon", StatusCode::BAD_REQUEST, "bad_request"),
        ("/v1/nothing", StatusCode::NOT_FOUND, "not_found"),
    ] {
        let (s, r) = get(&st, uri).await;
        assert_eq!((s, r["error"]["kind"].as_str()), (status, Some(kind)), "{uri}: {r}");
    }

    // Images and thumbnails by id; the link that leads out of the folder is refused.
    let (s, headers, bytes) = call(&st, Request::get(format!("/v1/images/{red}")).body(Body::empty()).unwrap()).await;
    assert_eq!((s, headers[header::CONTENT_TYPE].to_str().unwrap()), (StatusCode::OK, "image/png"));
    assert_eq!(bytes, std::fs::read(p.root.join("red.png")).unwrap());
    let (s, headers, bytes) =
        call(&st, Request::get(format!("/v1/thumb/{red}?size=32")).body(Body::empty()).unwrap()).await;
    assert_eq!((s, headers[header::CONTENT_TYPE].to_str().unwrap()), (StatusCode::OK, "image/jpeg"));
    let thumb = image::load_from_memory(&bytes).unwrap();
    assert_eq!((thumb.width(), thumb.height()), (32, 24));
    let link = id_of(&st, "link.png");
    let (s, r) = get(&st, &format!("/v1/images/{link}")).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "a link out of the indexed folder: {r}");
    for uri in [
        "/v1/images/..%2F..%2F..%2Fetc%2Fpasswd",
        "/v1/images/%2Fetc%2Fpasswd",
        "/v1/thumb/..%2Fsecret.png",
        "/v1/images/../../etc/passwd",
        "/v1/images/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    ] {
        let (s, _, bytes) = call(&st, Request::get(uri).body(Body::empty()).unwrap()).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{uri}");
        assert!(!String::from_utf8_lossy(&bytes).contains("root:"), "{uri} served a file");
    }

    // Embed: texts, an upload, an indexed id; bad input named.
    let img = b64(&p.root.join("red.png"));
    let (s, r) = post(&st, "/v1/embed", json!({"texts": ["a", "b c"], "images": [img], "ids": [red]})).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let dim = r["dim"].as_u64().unwrap() as usize;
    assert_eq!(r["texts"].as_array().unwrap().len(), 2);
    assert_eq!(r["texts"][0].as_array().unwrap().len(), dim);
    let (uploaded, indexed) = (r["images"][0].as_array().unwrap(), r["ids"][0].as_array().unwrap());
    let dot: f64 = uploaded.iter().zip(indexed).map(|(a, b)| a.as_f64().unwrap() * b.as_f64().unwrap()).sum();
    assert!(dot > 0.99, "the upload and its indexed copy embed alike ({dot})");
    for (body, status) in [
        (json!({}), StatusCode::BAD_REQUEST),
        (json!({"images": ["%%%"]}), StatusCode::BAD_REQUEST),
        (
            json!({"images": [base64::engine::general_purpose::STANDARD.encode(b"not an image")]}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (json!({"texts": "not a list"}), StatusCode::UNPROCESSABLE_ENTITY),
    ] {
        let (s, r) = post(&st, "/v1/embed", body.clone()).await;
        assert_eq!(s, status, "{body}: {r}");
        assert!(r["error"]["message"].is_string());
    }
    let req =
        Request::post("/v1/embed").header(header::CONTENT_TYPE, "application/json").body(Body::from("{")).unwrap();
    let (s, _, b) = call(&st, req).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{}", String::from_utf8_lossy(&b));

    // The same as multipart/form-data: text parts and an image file part.
    let boundary = "vista-test-boundary";
    let mut form = Vec::new();
    for (name, value, file) in
        [("text", b"a".to_vec(), false), ("image", std::fs::read(p.root.join("red.png")).unwrap(), true)]
    {
        let disposition = if file {
            format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"red.png\"\r\nContent-Type: image/png")
        } else {
            format!("Content-Disposition: form-data; name=\"{name}\"")
        };
        form.extend(format!("--{boundary}\r\n{disposition}\r\n\r\n").into_bytes());
        form.extend(value);
        form.extend(b"\r\n");
    }
    form.extend(format!("--{boundary}--\r\n").into_bytes());
    let req = Request::post("/v1/embed")
        .header(header::CONTENT_TYPE, format!("multipart/form-data; boundary={boundary}"))
        .body(Body::from(form))
        .unwrap();
    let (s, _, b) = call(&st, req).await;
    let m: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(s, StatusCode::OK, "{m}");
    assert_eq!(m["images"][0], r["images"][0], "multipart and base64 uploads embed alike");

    // Classify.
    let (s, r) = post(&st, "/v1/classify", json!({"id": red, "labels": ["red", "green", "blue"]})).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let total: f64 = r["predictions"].as_array().unwrap().iter().map(|p| p["prob"].as_f64().unwrap()).sum();
    assert!((total - 1.0).abs() < 1e-4);
    // The same probabilities as the library's zero-shot classifier (`vista classify`).
    let pipeline = vista::clip::ClipPipeline::load(&clip_model(), None, vista::device::Target::default()).unwrap();
    let labels: Vec<String> = ["red", "green", "blue"].iter().map(|s| s.to_string()).collect();
    let zs =
        vista::apps::classify::ZeroShotClassifier::new(&pipeline, &labels, &vista::apps::classify::Templates::Default)
            .unwrap();
    let want = zs.classify_one(&pipeline.embed_file(&p.root.join("red.png")).unwrap(), 3).unwrap();
    for w in &want {
        let got = r["predictions"].as_array().unwrap().iter().find(|q| q["label"] == w.label.as_str()).unwrap();
        assert!((got["prob"].as_f64().unwrap() - f64::from(w.prob)).abs() < 1e-4, "{}: {got} vs {}", w.label, w.prob);
    }
    let (s, _) = post(&st, "/v1/classify", json!({"id": red, "labels": ["one"]})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // Segment: a click on the object, then a second click reuses the embedding.
    let (s, r) = post(&st, "/v1/segment", json!({"id": red, "points": [[32, 24, 1]]})).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!((r["width"].clone(), r["height"].clone()), (json!(64), json!(48)));
    let masks = r["masks"].as_array().unwrap();
    assert_eq!(masks.len(), 3, "one click: three candidates, best first");
    assert!(masks[0]["score"].as_f64() >= masks[1]["score"].as_f64());
    assert_eq!(masks[0]["rle"]["size"], json!([48, 64]));
    let png = base64::engine::general_purpose::STANDARD.decode(masks[0]["png"].as_str().unwrap()).unwrap();
    let png = image::load_from_memory(&png).unwrap().to_luma8();
    let inside = png.pixels().filter(|p| p.0[0] == 255).count() as u64;
    assert_eq!(inside, masks[0]["area"].as_u64().unwrap(), "the PNG is the RLE's mask");
    let (s, r) =
        post(&st, "/v1/segment", json!({"id": red, "points": [[32, 24, 1], [2, 2, 0]], "boxes": [[10, 8, 50, 40]]}))
            .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["cached"], true);
    assert_eq!(r["masks"].as_array().unwrap().len(), 1);
    // Refining: the last answer's mask goes back in as SAM's mask input.
    let previous = r["masks"][0]["rle"].clone();
    let small = vista::apps::segment::Rle::encode(&vista::apps::segment::Mask::new(10, 10).unwrap()).to_string_counts();
    let (s, r) = post(&st, "/v1/segment", json!({"id": red, "points": [[32, 24, 1]], "mask": previous})).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let (s, r) = post(
        &st,
        "/v1/segment",
        json!({"id": red, "points": [[32, 24, 1]], "mask": {"size": [10, 10], "counts": small}}),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "a mask of another size: {r}");
    let (s, _) =
        post(&st, "/v1/segment", json!({"id": red, "points": [[32, 24, 1]], "mask": {"size": [48, 64], "counts": 5}}))
            .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "counts of the wrong type");
    let (s, r) = post(&st, "/v1/segment", json!({"image": img, "points": [[5, 5, 1]]})).await;
    assert_eq!(s, StatusCode::OK, "an upload: {r}");
    for (body, status) in [
        (json!({"id": red}), StatusCode::BAD_REQUEST),
        (json!({"id": red, "points": [[1, 1, 7]]}), StatusCode::BAD_REQUEST),
        (json!({"id": red, "boxes": [[9, 9, 1, 1]]}), StatusCode::BAD_REQUEST),
        (json!({"id": red, "points": [[500, 1, 1]]}), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({"points": [[1, 1, 1]]}), StatusCode::BAD_REQUEST),
        (json!({"id": "nope", "points": [[1, 1, 1]]}), StatusCode::NOT_FOUND),
        (json!({"id": link, "points": [[1, 1, 1]]}), StatusCode::NOT_FOUND),
    ] {
        let (s, r) = post(&st, "/v1/segment", body.clone()).await;
        assert_eq!(s, status, "{body}: {r}");
    }

    // DINO features: CLS, and patches on the model's grid; an indexed id and its upload agree.
    let (s, r) = post(&st, "/v1/features", json!({"id": red, "patches": true})).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let dim = r["dim"].as_u64().unwrap() as usize;
    let grid = (r["grid"][0].as_u64().unwrap() * r["grid"][1].as_u64().unwrap()) as usize;
    assert_eq!(r["cls"].as_array().unwrap().len(), dim);
    assert_eq!(r["patches"].as_array().unwrap().len(), grid);
    let (s, u) = post(&st, "/v1/features", json!({"image": img})).await;
    assert_eq!(s, StatusCode::OK, "{u}");
    assert_eq!(u["cls"], r["cls"]);
    assert!(u["patches"].is_null());
    let (s, _) = post(&st, "/v1/features", json!({"patches": true})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // Near-duplicates: at the lowest threshold everything is one group; groups never hold one.
    let (s, r) = get(&st, "/v1/dupes?threshold=-1").await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["groups"].as_array().unwrap().len(), 1);
    assert_eq!(r["groups"][0].as_array().unwrap().len(), 4);
    let (s, r) = get(&st, "/v1/dupes").await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert!(r["groups"].as_array().unwrap().iter().all(|g| g.as_array().unwrap().len() >= 2));
    let (s, _) = get(&st, "/v1/dupes?threshold=7").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // Metrics saw all of it.
    let (s, _, text) = call(&st, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    let text = String::from_utf8(text).unwrap();
    assert_eq!(s, StatusCode::OK);
    assert!(text.contains("vista_requests_total{route=\"/v1/segment\",status=\"200\"} 4"), "{text}");
    assert!(text.contains("vista_queue_depth{worker=\"sam\"} 0"), "{text}");
    assert!(text.contains("vista_failures_total{kind=\"not_found\"}"), "{text}");
    assert!(text.contains("vista_request_seconds_bucket{route=\"/v1/search\",le=\"+Inf\"}"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_refuse_with_429_413_503_504_and_keys_guard_the_api() {
    let p = photos();
    // Full: every permit taken → 429 with Retry-After; freed → served again.
    let st = state(&p, Limits { max_in_flight: 2, ..Limits::default() }, None, false);
    let held = st.in_flight.clone().try_acquire_many_owned(2).unwrap();
    let (s, headers, b) = call(&st, Request::get("/v1/search?q=red").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{}", String::from_utf8_lossy(&b));
    assert_eq!(headers[header::RETRY_AFTER], "1");
    let (s, _) = get(&st, "/health").await;
    assert_eq!(s, StatusCode::OK, "health is never refused");
    drop(held);
    let (s, _) = get(&st, "/v1/search?q=red").await;
    assert_eq!(s, StatusCode::OK, "drained");
    assert_eq!(st.metrics.count_status(429), 1);
    // No SAM loaded → 503.
    let (s, r) = post(&st, "/v1/segment", json!({"id": id_of(&st, "red.png"), "points": [[1, 1, 1]]})).await;
    assert_eq!((s, r["error"]["kind"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable")));

    // Body and pixel limits.
    let st = state(&p, Limits { body_bytes: 2048, max_pixels: 1000, ..Limits::default() }, None, false);
    let (s, r) = post(&st, "/v1/embed", json!({"texts": ["x".repeat(4096)]})).await;
    assert_eq!((s, r["error"]["kind"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("too_large")), "{r}");
    let big = b64(&p.root.join("red.png"));
    assert!(big.len() < 2000);
    let (s, r) = post(&st, "/v1/embed", json!({ "images": [big] })).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "64x48 > 1000 pixels: {r}");

    // Timeout: the work outlives the request.
    let st = state(&p, Limits { timeout: Duration::from_nanos(1), ..Limits::default() }, None, false);
    let (s, r) = post(&st, "/v1/embed", json!({"texts": ["slow"]})).await;
    assert_eq!((s, r["error"]["kind"].as_str()), (StatusCode::GATEWAY_TIMEOUT, Some("timeout")), "{r}");

    // API key.
    let st = state(&p, Limits::default(), Some("s3cret"), false);
    let (s, r) = get(&st, "/v1/search?q=red").await;
    assert_eq!((s, r["error"]["kind"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthorized")));
    let req = Request::get("/v1/search?q=red").header(header::AUTHORIZATION, "Bearer wrong").body(Body::empty());
    assert_eq!(call(&st, req.unwrap()).await.0, StatusCode::UNAUTHORIZED);
    let req = Request::get("/v1/search?q=red").header(header::AUTHORIZATION, "Bearer s3cret").body(Body::empty());
    assert_eq!(call(&st, req.unwrap()).await.0, StatusCode::OK);
    let red = id_of(&st, "red.png");
    assert_eq!(get(&st, &format!("/v1/thumb/{red}?key=s3cret")).await.0, StatusCode::OK);
    assert_eq!(get(&st, "/metrics").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(get(&st, "/health").await.0, StatusCode::OK);

    // Exposure: beyond loopback only with a key.
    let any: std::net::SocketAddr = "0.0.0.0:7860".parse().unwrap();
    assert!(vista_server::check_exposure(&any, None).is_err());
    assert!(vista_server::check_exposure(&any, Some("")).is_err());
    assert!(vista_server::check_exposure(&any, Some("k")).is_ok());
    assert!(vista_server::check_exposure(&"127.0.0.1:7860".parse().unwrap(), None).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_on_a_localhost_socket() {
    use std::io::{Read, Write};
    let p = photos();
    let st = state(&p, Limits::default(), None, false);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(vista_server::serve("127.0.0.1:0".parse().unwrap(), st, move |a| {
        tx.send(a).unwrap();
    }));
    let addr = rx.await.unwrap();
    assert!(addr.ip().is_loopback());
    let text = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
    .await
    .unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"images\":4"), "{text}");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn photos_indexed_in_the_background_become_searchable() {
    let p = photos();
    let st = state(&p, Limits::default(), None, false);
    st.set_library(Library::empty());
    assert_eq!(get(&st, "/v1/search?q=red").await.1["results"], json!([]), "nothing indexed yet");
    // A second folder, indexed while serving.
    let more = p.root.join("more");
    std::fs::create_dir_all(&more).unwrap();
    for i in 0..5u8 {
        image::RgbImage::from_pixel(40, 30, image::Rgb([i * 40, 90, 200 - i * 30]))
            .save(more.join(format!("{i}.png")))
            .unwrap();
    }
    let pipeline =
        Arc::new(vista::clip::ClipPipeline::load(&clip_model(), None, vista::device::Target::default()).unwrap());
    let model = IndexedModel { id: p.model.clone(), arch: None };
    let handle = vista_server::start_indexing(
        st.clone(),
        pipeline,
        p.db.clone(),
        vec![p.root.clone()],
        model,
        2,
        Duration::ZERO,
    );
    tokio::task::spawn_blocking(move || handle.join().unwrap()).await.unwrap();
    let (s, h) = get(&st, "/health").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["indexing"]["running"], false, "{h}");
    assert_eq!(h["indexing"]["embedded"], 5, "only the new photos are embedded: {h}");
    assert_eq!(h["indexing"]["files"], 9);
    assert_eq!(h["images"], 9);
    let (_, r) = get(&st, "/v1/search?q=red&top=100").await;
    assert_eq!(r["results"].as_array().unwrap().len(), 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_down_answers_the_requests_in_flight_first() {
    use std::io::{Read, Write};
    let p = photos();
    // A large upload, so the segment request is still running when the shutdown comes.
    let big = p.root.join("big.png");
    image::RgbImage::from_fn(4000, 3000, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 90])).save(&big).unwrap();
    let body = serde_json::to_vec(&json!({"image": b64(&big), "points": [[2000, 1500, 1]]})).unwrap();
    let st = state(&p, Limits::default(), None, true);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(vista_server::serve_until(
        "127.0.0.1:0".parse().unwrap(),
        st.clone(),
        move |a| ready_tx.send(a).unwrap(),
        async {
            let _ = stop_rx.await;
        },
    ));
    let addr = ready_rx.await.unwrap();
    let client = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let head = format!(
            "POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(&body).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    });
    // Wait until the request is being handled, then ask the server to stop.
    for _ in 0..500 {
        if st.limits.max_in_flight - st.in_flight.available_permits() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(st.limits.max_in_flight - st.in_flight.available_permits() > 0, "the request is in flight");
    stop_tx.send(()).unwrap();
    let answer = client.await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "answered before stopping: {}", &answer[..answer.len().min(200)]);
    tokio::time::timeout(Duration::from_secs(30), server).await.expect("the server stops").unwrap().unwrap();
    assert!(std::net::TcpStream::connect(addr).is_err(), "no longer accepting");
}
