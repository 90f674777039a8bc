//! The routes. Every `/v1` handler answers JSON (errors too, see [`crate::error`]); the
//! middleware checks the API key, takes an in-flight permit (429 when none is left) and records
//! the request for `/metrics`.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use vista::apps::classify::Templates;
use vista::apps::query::{self, Term};
use vista::sam::{Point, Prompts};

use crate::error::{ApiError, ApiResult};
use crate::page;
use crate::AppState;

type S = State<Arc<AppState>>;

/// The router over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/v1/search", get(search))
        .route("/v1/embed", post(embed))
        .route("/v1/classify", post(classify))
        .route("/v1/segment", post(segment))
        .route("/v1/features", post(features))
        .route("/v1/images/{id}", get(image))
        .route("/v1/thumb/{id}", get(thumb))
        .route("/v1/library", get(library))
        .route("/v1/dupes", get(dupes))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(state.clone(), admit))
        .layer(DefaultBodyLimit::max(state.limits.body_bytes));
    Router::new()
        .route("/", get(|| async { page::html() }))
        .route("/app.js", get(|| async { page::js() }))
        .route("/style.css", get(|| async { page::css() }))
        .route("/health", get(health))
        .merge(api)
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(middleware::from_fn_with_state(state.clone(), record))
        .with_state(state)
}

/// Records every answered request (route template, status, latency).
async fn record(State(state): S, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |m| m.as_str()).to_string();
    let t = Instant::now();
    let r = next.run(req).await;
    state.metrics.record(&route, r.status().as_u16(), t.elapsed());
    r
}

/// The API key (when one is set), then an in-flight permit held until the response is made.
async fn admit(State(state): S, req: Request, next: Next) -> Response {
    if let Some(key) = state.api_key.as_deref().filter(|k| !k.is_empty()) {
        if !presented_key(req.headers(), req.uri().query())
            .is_some_and(|k| constant_time_eq(k.as_bytes(), key.as_bytes()))
        {
            return ApiError::unauthorized().into_response();
        }
    }
    let Ok(_permit) = state.in_flight.clone().try_acquire_owned() else {
        return ApiError::busy(format!("{} requests in flight already; retry shortly", state.limits.max_in_flight))
            .into_response();
    };
    next.run(req).await
}

/// The key from `Authorization: Bearer`, `X-API-Key`, or a `key=` query parameter (for
/// `<img src>`, which cannot send headers).
fn presented_key(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    if let Some(v) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        if let Some(k) = v.strip_prefix("Bearer ") {
            return Some(k.trim().to_string());
        }
    }
    if let Some(v) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(v.trim().to_string());
    }
    form_urlencoded::parse(query?.as_bytes()).find(|(k, _)| k == "key").map(|(_, v)| v.into_owned())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A JSON body, its rejection (malformed, wrong type, too large) as a typed error.
fn body<T>(b: Result<Json<T>, JsonRejection>) -> ApiResult<T> {
    match b {
        Ok(Json(v)) => Ok(v),
        Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::too_large(r.body_text())),
        Err(r) if r.status() == StatusCode::UNPROCESSABLE_ENTITY => Err(ApiError::invalid(r.body_text())),
        Err(r) => Err(ApiError::bad_request(r.body_text())),
    }
}

/// Awaits `f` within the request timeout.
async fn timed<T>(state: &AppState, f: impl std::future::Future<Output = ApiResult<T>>) -> ApiResult<T> {
    tokio::time::timeout(state.limits.timeout, f)
        .await
        .unwrap_or_else(|_| Err(ApiError::timeout(state.limits.timeout.as_secs_f64())))
}

fn clip(state: &AppState) -> ApiResult<&crate::Clip> {
    state.clip.as_ref().ok_or_else(|| ApiError::unavailable("no CLIP model is loaded (vista serve --model)"))
}

fn decode_b64(field: &str, s: &str) -> ApiResult<Vec<u8>> {
    let s = s.split_once(";base64,").map_or(s, |(_, data)| data);
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|e| ApiError::bad_request(format!("`{field}` is not base64: {e}")))
}

/// Reads an indexed image's bytes off the async runtime.
async fn read_indexed(state: &Arc<AppState>, id: &str) -> ApiResult<(Vec<u8>, String)> {
    let path = state.library().path_of(id)?;
    let name = path.display().to_string();
    let bytes = tokio::task::spawn_blocking(move || std::fs::read(&path))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::not_found(format!("image `{id}`: {e}")))?;
    Ok((bytes, name))
}

async fn health(State(state): S) -> Json<Value> {
    let lib = state.library();
    Json(json!({
        "status": "ok",
        "clip": state.clip.is_some(),
        "sam": state.sam.is_some(),
        "dino": state.dino.is_some(),
        "images": lib.photos.len(),
        "model": lib.model,
        "indexing": state.indexing(),
    }))
}

async fn metrics(State(state): S) -> impl IntoResponse {
    let mut depth = Vec::new();
    let mut batches = Vec::new();
    let mut jobs = Vec::new();
    let clip = state.clip.as_ref().map(|c| (c.worker.name(), c.worker.depth(), c.worker.batch_stats()));
    let sam = state.sam.as_ref().map(|s| (s.worker.name(), s.worker.depth(), s.worker.batch_stats()));
    let dino = state.dino.as_ref().map(|s| (s.worker.name(), s.worker.depth(), s.worker.batch_stats()));
    for (name, d, (b, j)) in [clip, sam, dino].into_iter().flatten() {
        depth.push((format!("{{worker=\"{name}\"}}"), d as f64));
        batches.push((format!("{{worker=\"{name}\"}}"), b as f64));
        jobs.push((format!("{{worker=\"{name}\"}}"), j as f64));
    }
    let in_flight = state.limits.max_in_flight - state.in_flight.available_permits().min(state.limits.max_in_flight);
    let text = state.metrics.render(&[
        ("vista_queue_depth", "Jobs waiting in a model queue.", depth),
        ("vista_batches_total", "Batches a model worker ran (a counter).", batches),
        ("vista_batched_jobs_total", "Jobs in those batches (a counter): jobs / batches = mean batch size.", jobs),
        ("vista_in_flight", "API requests being handled (this one included).", vec![(String::new(), in_flight as f64)]),
        ("vista_images", "Indexed images served.", vec![(String::new(), state.library().photos.len() as f64)]),
    ]);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

#[derive(Deserialize)]
struct SearchQuery {
    /// Text terms: `red saree -kurta 2:gold border` (a term starts at `-`, `+` or `W:`).
    #[serde(default)]
    q: String,
    /// An indexed image to search like (`ID` or `W:ID`).
    image: Option<String>,
    #[serde(default = "default_top")]
    top: usize,
    threshold: Option<f32>,
    /// Only files below this folder (inside the indexed roots).
    under: Option<String>,
    /// `default`, `imagenet80` or `none`.
    templates: Option<String>,
}

fn default_top() -> usize {
    40
}

/// `default`, `imagenet80` or `none`.
fn templates_of(arg: Option<&str>) -> ApiResult<Templates> {
    match arg {
        None | Some("default") => Ok(Templates::Default),
        Some("imagenet80") => Ok(Templates::ImageNet80),
        Some("none") => Ok(Templates::None),
        Some(other) => Err(ApiError::bad_request(format!("templates `{other}`: default, imagenet80 or none"))),
    }
}

/// Each text through the templates, its prompts' embeddings averaged and renormalised (as
/// zero-shot classification builds its class weights), all prompts in one CLIP job.
async fn prompt_means(state: &AppState, texts: &[&str], templates: &Templates) -> ApiResult<Vec<Vec<f32>>> {
    let filled: Vec<Vec<String>> = texts.iter().map(|t| templates.fill(t)).collect();
    let rows = timed(state, clip(state)?.texts(filled.iter().flatten().cloned().collect())).await?;
    let mut at = 0;
    let mut out = Vec::with_capacity(filled.len());
    for p in &filled {
        let mut mean = vec![0f32; rows.first().map_or(0, Vec::len)];
        for r in &rows[at..at + p.len()] {
            for (m, v) in mean.iter_mut().zip(r) {
                *m += v;
            }
        }
        at += p.len();
        let norm = mean.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        out.push(mean.into_iter().map(|v| v / norm).collect());
    }
    Ok(out)
}

/// Splits a query line into terms: a new term starts at a word beginning with `-`, `+` or a
/// weight `W:`; commas also separate terms.
pub fn split_terms(q: &str) -> Vec<String> {
    let mut terms: Vec<String> = Vec::new();
    for part in q.split(',') {
        let mut current = String::new();
        for word in part.split_whitespace() {
            let starts_term = word.starts_with(['-', '+'])
                || word.split_once(':').is_some_and(|(w, _)| !w.is_empty() && w.parse::<f32>().is_ok());
            if starts_term && !current.is_empty() {
                terms.push(std::mem::take(&mut current));
            }
            if !current.is_empty() {
                current.push(' ');
            }
            current.push_str(word);
        }
        if !current.is_empty() {
            terms.push(current);
        }
    }
    terms
}

async fn search(State(state): S, Query(q): Query<SearchQuery>) -> ApiResult<Json<Value>> {
    let lib = state.library();
    let lib = lib.as_ref();
    let terms: Vec<Term> = split_terms(&q.q).iter().map(|t| query::parse_text(t)).collect::<vista::Result<_>>()?;
    let mut parts: Vec<(f32, Vec<f32>)> = Vec::new();
    if let Some(img) = &q.image {
        let (weight, id) = match img.split_once(':') {
            Some((w, id)) => (w.parse::<f32>().map_err(|_| ApiError::bad_request(format!("image weight `{w}`")))?, id),
            None => (1.0, img.as_str()),
        };
        parts.push((weight, lib.vectors.row(lib.index_of(id)?)));
    }
    if terms.is_empty() && parts.is_empty() {
        return Err(ApiError::bad_request("give `q` (text terms), `image` (an indexed id), or both"));
    }
    if !terms.is_empty() {
        let templates = templates_of(q.templates.as_deref())?;
        let texts: Vec<&str> = terms
            .iter()
            .filter_map(|t| match t {
                Term::Text { text, .. } => Some(text.as_str()),
                Term::Image { .. } => None,
            })
            .collect();
        let means = prompt_means(&state, &texts, &templates).await?;
        let weights = terms.iter().filter_map(|t| match t {
            Term::Text { weight, .. } => Some(*weight),
            Term::Image { .. } => None,
        });
        parts.extend(weights.zip(means));
    }
    let query = query::combine(&parts)?;
    if lib.vectors.is_empty() {
        return Ok(Json(json!({ "results": [] })));
    }
    if query.len() != lib.vectors.dim() {
        return Err(ApiError::internal(format!(
            "the index holds {}-d vectors, the model gives {}-d: re-index",
            lib.vectors.dim(),
            query.len()
        )));
    }
    let under = match &q.under {
        Some(u) => {
            let c = std::fs::canonicalize(u).map_err(|_| ApiError::not_found(format!("under: no folder `{u}`")))?;
            if !lib.roots.iter().any(|r| c.starts_with(r)) {
                return Err(ApiError::not_found(format!("under: `{u}` is not inside the indexed folders")));
            }
            Some(c)
        }
        None => None,
    };
    let allow = under.as_ref().map(|u| move |i: usize| lib.photos[i].path.starts_with(u));
    let hits = lib.vectors.top_k(
        &query,
        q.top.min(1000),
        q.threshold,
        allow.as_ref().map(|f| f as &(dyn Fn(usize) -> bool + Sync)),
    );
    let results: Vec<Value> = hits
        .iter()
        .map(|h| {
            let p = &lib.photos[h.index];
            json!({ "id": p.id, "path": p.path, "score": h.score })
        })
        .collect();
    Ok(Json(json!({ "results": results })))
}

#[derive(Deserialize)]
struct DupesQuery {
    /// Cosine similarity from which two images are near-duplicates (default: the model's, as
    /// `vista dupes`).
    threshold: Option<f32>,
}

/// Groups of near-duplicate indexed images, largest first.
async fn dupes(State(state): S, Query(q): Query<DupesQuery>) -> ApiResult<Json<Value>> {
    let threshold = q.threshold.unwrap_or(vista::apps::dupes::VIT_B_32_THRESHOLD);
    if !(-1.0..=1.0).contains(&threshold) {
        return Err(ApiError::bad_request(format!("threshold {threshold}: a cosine similarity in [-1, 1]")));
    }
    let lib = state.library();
    let snapshot = lib.clone();
    let groups =
        tokio::task::spawn_blocking(move || vista::index::vectors::near_duplicate_groups(&snapshot.vectors, threshold))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
    let groups: Vec<Value> = groups
        .iter()
        .map(|g| Value::Array(g.iter().map(|&i| json!({"id": lib.photos[i].id, "path": lib.photos[i].path})).collect()))
        .collect();
    Ok(Json(json!({ "threshold": threshold, "groups": groups })))
}

async fn library(State(state): S) -> Json<Value> {
    let lib = state.library();
    Json(json!({
        "images": lib.photos.len(),
        "model": lib.model,
        "roots": lib.roots,
    }))
}

/// The image file of an id, as stored.
async fn image(State(state): S, Path(id): Path<String>) -> ApiResult<Response> {
    let (bytes, _) = read_indexed(&state, &id).await?;
    let mime = image::guess_format(&bytes).map(|f| f.to_mime_type()).unwrap_or("application/octet-stream");
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static(mime))], bytes).into_response())
}

#[derive(Deserialize)]
struct ThumbQuery {
    #[serde(default = "default_thumb")]
    size: u32,
}

fn default_thumb() -> u32 {
    256
}

/// A JPEG thumbnail (longest side `size`, 16–1024), kept in a small in-memory cache.
async fn thumb(State(state): S, Path(id): Path<String>, Query(q): Query<ThumbQuery>) -> ApiResult<Response> {
    let size = q.size.clamp(16, 1024);
    let key = (id.clone(), size);
    let hit = state.thumbs.lock().expect("thumb cache").iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone());
    let jpeg = match hit {
        Some(j) => j,
        None => {
            let (bytes, name) = read_indexed(&state, &id).await?;
            let decode = state.decode();
            let jpeg = tokio::task::spawn_blocking(move || -> ApiResult<Vec<u8>> {
                let img = vista::image::decode_rgb(&bytes, &name, &decode)?;
                let (w, h) = scaled(img.width(), img.height(), size);
                let t = if img.dimensions() == (w, h) { img } else { image::imageops::thumbnail(&img, w, h) };
                let mut out = Vec::new();
                image::DynamicImage::ImageRgb8(t)
                    .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Jpeg)
                    .map_err(|e| ApiError::internal(format!("encoding a thumbnail: {e}")))?;
                Ok(out)
            })
            .await
            .map_err(|e| ApiError::internal(e.to_string()))??;
            let jpeg = Arc::new(jpeg);
            let mut cache = state.thumbs.lock().expect("thumb cache");
            cache.push_back((key, jpeg.clone()));
            while cache.len() > 2048 {
                cache.pop_front();
            }
            jpeg
        }
    };
    Ok(([(header::CONTENT_TYPE, "image/jpeg")], jpeg.as_ref().clone()).into_response())
}

/// `(w, h)` scaled so the longest side is `size` (never up), each side at least 1.
fn scaled(w: u32, h: u32, size: u32) -> (u32, u32) {
    if w.max(h) <= size {
        return (w.max(1), h.max(1));
    }
    let (tw, th) = vista::image::longest_side_size(w, h, size);
    (tw.max(1), th.max(1))
}

#[derive(Deserialize, Default)]
struct EmbedRequest {
    #[serde(default)]
    texts: Vec<String>,
    /// Base64 images (a `data:` URL prefix is accepted).
    #[serde(default)]
    images: Vec<String>,
    /// Indexed image ids.
    #[serde(default)]
    ids: Vec<String>,
}

/// A multipart part's error as a typed error (413 over the body limit).
fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large(e.body_text())
    } else {
        ApiError::bad_request(e.body_text())
    }
}

/// `POST /v1/embed`: JSON (`texts`, base64 `images`, `ids`), or `multipart/form-data` with
/// `text`, `image` (a file) and `id` parts, each repeatable.
async fn embed(State(state): S, req: Request) -> ApiResult<Json<Value>> {
    use axum::extract::FromRequest;
    let multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let (texts, images, ids) = if multipart {
        let mut form = axum::extract::Multipart::from_request(req, &state)
            .await
            .map_err(|e| ApiError::bad_request(e.body_text()))?;
        let (mut texts, mut images, mut ids) = (Vec::new(), Vec::new(), Vec::new());
        while let Some(field) = form.next_field().await.map_err(multipart_error)? {
            let name = field.name().unwrap_or("").to_string();
            match name.as_str() {
                "text" | "texts" => texts.push(field.text().await.map_err(multipart_error)?),
                "image" | "images" => images.push(field.bytes().await.map_err(multipart_error)?.to_vec()),
                "id" | "ids" => ids.push(field.text().await.map_err(multipart_error)?),
                other => return Err(ApiError::bad_request(format!("unknown part `{other}`: text, image or id"))),
            }
        }
        (texts, images, ids)
    } else {
        let req: EmbedRequest = body(Json::from_request(req, &state).await)?;
        let images = req
            .images
            .iter()
            .enumerate()
            .map(|(i, b)| decode_b64(&format!("images[{i}]"), b))
            .collect::<ApiResult<Vec<_>>>()?;
        (req.texts, images, req.ids)
    };
    if texts.is_empty() && images.is_empty() && ids.is_empty() {
        return Err(ApiError::bad_request("give `texts`, `images` (base64) or `ids`"));
    }
    let c = clip(&state)?;
    let texts = if texts.is_empty() { Vec::new() } else { timed(&state, c.texts(texts)).await? };
    let mut embedded = Vec::new();
    for (i, bytes) in images.into_iter().enumerate() {
        embedded.push(timed(&state, c.image(Arc::new(bytes), format!("images[{i}]"))).await?);
    }
    let lib = state.library();
    let ids = ids.iter().map(|id| Ok(lib.vectors.row(lib.index_of(id)?))).collect::<ApiResult<Vec<_>>>()?;
    Ok(Json(json!({ "texts": texts, "images": embedded, "ids": ids, "dim": c.dim })))
}

#[derive(Deserialize)]
struct ClassifyRequest {
    labels: Vec<String>,
    image: Option<String>,
    id: Option<String>,
    templates: Option<String>,
}

async fn classify(State(state): S, b: Result<Json<ClassifyRequest>, JsonRejection>) -> ApiResult<Json<Value>> {
    let req = body(b)?;
    if req.labels.len() < 2 {
        return Err(ApiError::bad_request("`labels`: give at least two"));
    }
    let templates = templates_of(req.templates.as_deref())?;
    let c = clip(&state)?;
    let image = match (&req.image, &req.id) {
        (Some(b64), None) => timed(&state, c.image(Arc::new(decode_b64("image", b64)?), "image".into())).await?,
        (None, Some(id)) => {
            let lib = state.library();
            lib.vectors.row(lib.index_of(id)?)
        }
        _ => return Err(ApiError::bad_request("give one of `image` (base64) and `id`")),
    };
    let labels: Vec<&str> = req.labels.iter().map(String::as_str).collect();
    let means = prompt_means(&state, &labels, &templates).await?;
    let logits: Vec<f32> =
        means.iter().map(|m| c.logit_scale * m.iter().zip(&image).map(|(a, b)| a * b).sum::<f32>()).collect();
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let total: f32 = exp.iter().sum();
    let mut out: Vec<(String, f32)> = req.labels.iter().cloned().zip(exp.iter().map(|e| e / total)).collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(Json(json!({ "predictions": out.iter().map(|(l, p)| json!({"label": l, "prob": p})).collect::<Vec<_>>() })))
}

#[derive(Deserialize)]
struct SegmentRequest {
    id: Option<String>,
    image: Option<String>,
    /// `[x, y, label]`: label 1 foreground, 0 background; original pixel coordinates.
    #[serde(default)]
    points: Vec<[f32; 3]>,
    /// `[x0, y0, x1, y1]`.
    #[serde(default)]
    boxes: Vec<[f32; 4]>,
    /// Three candidate masks per prompt (default: when there is a single point).
    multimask: Option<bool>,
    /// A previous mask to refine, as COCO RLE `{"size": [h, w], "counts": "..."}` (e.g. the
    /// last answer's best mask): SAM's mask input.
    mask: Option<RleIn>,
}

#[derive(Deserialize)]
struct RleIn {
    size: [u32; 2],
    counts: String,
}

async fn segment(State(state): S, b: Result<Json<SegmentRequest>, JsonRejection>) -> ApiResult<Json<Value>> {
    let req = body(b)?;
    let sam = state.sam.as_ref().ok_or_else(|| ApiError::unavailable("no SAM model is loaded (vista serve --sam)"))?;
    if req.points.is_empty() && req.boxes.is_empty() {
        return Err(ApiError::bad_request("give `points` ([x, y, label]) and/or `boxes` ([x0, y0, x1, y1])"));
    }
    let mask = match &req.mask {
        Some(m) => Some(
            vista::apps::segment::Rle::from_string_counts(&m.counts, m.size[0], m.size[1])
                .map_err(|e| ApiError::bad_request(format!("mask: {e}")))?,
        ),
        None => None,
    };
    for p in &req.points {
        if !(p[2] == 0.0 || p[2] == 1.0) || !p[0].is_finite() || !p[1].is_finite() {
            return Err(ApiError::bad_request(format!("point {p:?}: [x, y, label] with label 0 or 1")));
        }
    }
    for b in &req.boxes {
        if !b.iter().all(|v| v.is_finite()) || b[2] < b[0] || b[3] < b[1] {
            return Err(ApiError::bad_request(format!("box {b:?}: [x0, y0, x1, y1] with x0 <= x1, y0 <= y1")));
        }
    }
    let (bytes, name) = match (&req.image, &req.id) {
        (Some(b64), None) => (decode_b64("image", b64)?, "image".to_string()),
        (None, Some(id)) => read_indexed(&state, id).await?,
        _ => return Err(ApiError::bad_request("give one of `image` (base64) and `id`")),
    };
    let prompts = Prompts {
        points: req.points.iter().map(|p| Point { x: p[0], y: p[1], positive: p[2] == 1.0 }).collect(),
        boxes: req.boxes.clone(),
        mask_input: None,
        multimask: req.multimask.unwrap_or(req.points.len() == 1 && req.boxes.is_empty()),
        return_logits: false,
    };
    let out = timed(&state, sam.segment(Arc::new(bytes), name, prompts, mask)).await?;
    Ok(Json(serde_json::to_value(out).map_err(|e| ApiError::internal(e.to_string()))?))
}

#[derive(Deserialize)]
struct FeaturesRequest {
    id: Option<String>,
    image: Option<String>,
    /// Also return the patch tokens (`[h·w][C]`, row-major over the grid).
    #[serde(default)]
    patches: bool,
}

/// DINO / DINOv2 features of an image: the CLS token, and the patch tokens when asked.
async fn features(State(state): S, b: Result<Json<FeaturesRequest>, JsonRejection>) -> ApiResult<Json<Value>> {
    let req = body(b)?;
    let dino =
        state.dino.as_ref().ok_or_else(|| ApiError::unavailable("no DINO model is loaded (vista serve --dino)"))?;
    let (bytes, name) = match (&req.image, &req.id) {
        (Some(b64), None) => (decode_b64("image", b64)?, "image".to_string()),
        (None, Some(id)) => read_indexed(&state, id).await?,
        _ => return Err(ApiError::bad_request("give one of `image` (base64) and `id`")),
    };
    let f = timed(&state, dino.features(Arc::new(bytes), name, req.patches)).await?;
    let dim = f.dim();
    let patches: Vec<&[f32]> = if req.patches { f.patches.chunks(dim.max(1)).collect() } else { Vec::new() };
    Ok(Json(json!({
        "cls": f.cls, "dim": dim, "grid": [f.grid.0, f.grid.1], "input_size": [f.input_size.0, f.input_size.1],
        "patches": if req.patches { json!(patches) } else { Value::Null },
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_lines_split_into_terms() {
        assert_eq!(split_terms("red saree -kurta 2:gold border"), vec!["red saree", "-kurta", "2:gold border"]);
        assert_eq!(split_terms("a, b c,+d"), vec!["a", "b c", "+d"]);
        assert_eq!(split_terms("time: 10"), vec!["time: 10"], "a colon after a word is text");
        assert!(split_terms("  ").is_empty());
    }

    #[test]
    fn keys_come_from_headers_or_the_query() {
        let mut h = HeaderMap::new();
        assert_eq!(presented_key(&h, Some("a=1&key=s%20k")), Some("s k".into()));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert_eq!(presented_key(&h, None), Some("abc".into()));
        assert!(
            constant_time_eq(b"abc", b"abc") && !constant_time_eq(b"abc", b"abd") && !constant_time_eq(b"a", b"ab")
        );
    }

    #[test]
    fn thumbnails_keep_the_aspect_and_never_grow() {
        assert_eq!(scaled(4000, 3000, 256), (256, 192));
        assert_eq!(scaled(100, 50, 256), (100, 50));
        assert_eq!(scaled(5000, 1, 256), (256, 1));
    }
}
