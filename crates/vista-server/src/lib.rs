//! `vista serve`: an HTTP API and a web page over vista's photo index (CLIP search) and SAM
//! (click to segment), on axum. The library (`vista`) stays synchronous: each model runs on its
//! own OS thread behind a bounded queue ([`worker`]), and the async handlers only parse, queue,
//! await and answer.
//!
//! Limits, all refusing rather than queueing without bound: at most `max_in_flight` API
//! requests at once (more get 429 with `Retry-After`), each model queue bounded (429 when
//! full), a body limit (413), the decoder's pixel limit (413), a per-request timeout (504).
//! The server binds 127.0.0.1 unless told otherwise, and then only with an API key. Files are
//! served by id only, from the index's roots ([`library`]).

pub mod error;
pub mod library;
pub mod metrics;
pub mod models;
mod page;
pub mod routes;
pub mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use tokio::sync::Semaphore;

pub use error::{ApiError, ApiResult};
pub use library::Library;
pub use models::{Clip, Dino, Sam};

/// What the server allows.
#[derive(Debug, Clone)]
pub struct Limits {
    /// API requests handled at once; one more gets 429.
    pub max_in_flight: usize,
    /// Jobs a model queue holds; one more gets 429.
    pub queue: usize,
    /// Texts or images per CLIP batch.
    pub batch: usize,
    /// How long a CLIP batch waits for company after its first job.
    pub batch_wait: Duration,
    /// Request body size limit in bytes (413 over it).
    pub body_bytes: usize,
    /// Decoded image size limit in pixels (413 over it).
    pub max_pixels: u64,
    /// Time a request may take (504 after it).
    pub timeout: Duration,
    /// SAM image sessions kept in memory (each its embedding, 4 MiB for the released models, and
    /// once prompted the decoder's prepared first layer, 10 MiB more).
    pub sam_lru: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_in_flight: 64,
            queue: 64,
            batch: 32,
            batch_wait: Duration::from_millis(5),
            body_bytes: 32 << 20,
            max_pixels: vista::image::DEFAULT_MAX_PIXELS,
            timeout: Duration::from_secs(120),
            sam_lru: 8,
        }
    }
}

/// An encoded thumbnail by (image id, size).
pub type Thumb = ((String, u32), Arc<Vec<u8>>);

/// Everything a handler reaches.
pub struct AppState {
    /// The CLIP worker (search, embed, classify), if loaded.
    pub clip: Option<Clip>,
    /// The SAM worker (segment), if loaded.
    pub sam: Option<Sam>,
    /// The DINO worker (features), if loaded.
    pub dino: Option<Dino>,
    /// The indexed photos: a snapshot replaced as indexing lands batches.
    library: std::sync::RwLock<Arc<Library>>,
    /// The background indexing run, if one was started.
    indexing: std::sync::Mutex<Option<IndexingStatus>>,
    /// The limits.
    pub limits: Limits,
    /// Required on API routes when set.
    pub api_key: Option<String>,
    /// Permits for API requests in flight.
    pub in_flight: Arc<Semaphore>,
    /// Counters for `/metrics`.
    pub metrics: metrics::Metrics,
    /// Encoded thumbnails by (id, size), most recent last.
    pub thumbs: std::sync::Mutex<std::collections::VecDeque<Thumb>>,
}

impl AppState {
    /// A state around loaded parts.
    pub fn new(
        clip: Option<Clip>,
        sam: Option<Sam>,
        library: Library,
        limits: Limits,
        api_key: Option<String>,
    ) -> Self {
        Self {
            clip,
            sam,
            dino: None,
            library: std::sync::RwLock::new(Arc::new(library)),
            indexing: std::sync::Mutex::new(None),
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight.max(1))),
            limits,
            api_key,
            metrics: metrics::Metrics::default(),
            thumbs: std::sync::Mutex::new(std::collections::VecDeque::new()),
        }
    }

    /// With a DINO worker for `/v1/features`.
    pub fn with_dino(mut self, dino: Dino) -> Self {
        self.dino = Some(dino);
        self
    }

    /// The photos as indexed now.
    pub fn library(&self) -> Arc<Library> {
        self.library.read().expect("library lock").clone()
    }

    /// Replaces the photos (requests in flight keep the snapshot they took).
    pub fn set_library(&self, library: Library) {
        *self.library.write().expect("library lock") = Arc::new(library);
    }

    /// Where the background indexing run stands (`None`: none was started).
    pub fn indexing(&self) -> Option<IndexingStatus> {
        self.indexing.lock().expect("indexing lock").clone()
    }

    fn update_indexing(&self, f: impl FnOnce(&mut IndexingStatus)) {
        f(self.indexing.lock().expect("indexing lock").get_or_insert_with(IndexingStatus::default));
    }

    /// The decode options every uploaded or indexed image is read with.
    pub fn decode(&self) -> vista::image::DecodeOptions {
        vista::image::DecodeOptions::with_max_pixels(self.limits.max_pixels)
    }
}

/// Where a background indexing run stands (`GET /health`'s `indexing`).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct IndexingStatus {
    /// Still going.
    pub running: bool,
    /// Image files found by the scan.
    pub files: usize,
    /// Images the run has to embed.
    pub to_embed: usize,
    /// Images embedded so far (search covers them once the next snapshot lands).
    pub embedded: usize,
    /// Images that failed to decode.
    pub failed: usize,
    /// Why the run stopped, if it failed.
    pub error: Option<String>,
}

/// Indexes `roots` into the database at `db` on a background thread with `pipeline` (shared
/// with the CLIP worker: inference needs no exclusive access), while the server answers from
/// the photos indexed so far: the library snapshot is reloaded at most every `reload` and at
/// the end, so search covers each batch soon after it lands. Progress is in
/// [`AppState::indexing`].
pub fn start_indexing(
    state: Arc<AppState>,
    pipeline: Arc<vista::clip::ClipPipeline>,
    db: std::path::PathBuf,
    roots: Vec<std::path::PathBuf>,
    model: vista::index::IndexedModel,
    batch: usize,
    reload: Duration,
) -> std::thread::JoinHandle<()> {
    state.update_indexing(|s| *s = IndexingStatus { running: true, ..IndexingStatus::default() });
    std::thread::Builder::new()
        .name("vista-indexer".into())
        .spawn(move || {
            let result = (|| -> vista::Result<vista::index::IndexReport> {
                let mut index = vista::index::IndexDb::open(&db)?;
                let opts = vista::index::IndexOptions { batch: batch.max(1), ..Default::default() };
                let mut last = std::time::Instant::now();
                vista::index::update(
                    &pipeline,
                    &model,
                    &mut index,
                    &roots,
                    &vista::index::ScanOptions::default(),
                    &opts,
                    &mut |p| match p {
                        vista::index::Progress::Scanned { files, to_embed } => {
                            state.update_indexing(|s| (s.files, s.to_embed) = (files, to_embed));
                        }
                        vista::index::Progress::Embedded { n } => {
                            state.update_indexing(|s| s.embedded += n);
                            if last.elapsed() >= reload {
                                if let Ok(lib) = Library::load(&db, &model.id) {
                                    state.set_library(lib);
                                }
                                last = std::time::Instant::now();
                            }
                        }
                    },
                )
            })();
            let reloaded = Library::load(&db, &model.id);
            state.update_indexing(|s| {
                s.running = false;
                match &result {
                    Ok(r) => (s.files, s.failed) = (r.files, r.failed),
                    Err(e) => s.error = Some(e.to_string()),
                }
                if let Err(e) = &reloaded {
                    s.error.get_or_insert_with(|| e.to_string());
                }
            });
            if let Ok(lib) = reloaded {
                state.set_library(lib);
            }
        })
        .expect("spawn the indexer thread")
}

/// The application: the page, `/health`, `/metrics` and the `/v1` API.
pub fn app(state: Arc<AppState>) -> axum::Router {
    routes::router(state)
}

/// Refuses an address other than loopback without an API key.
pub fn check_exposure(addr: &SocketAddr, api_key: Option<&str>) -> anyhow::Result<()> {
    if !addr.ip().is_loopback() && api_key.is_none_or(str::is_empty) {
        anyhow::bail!(
            "--host {}: serving beyond this machine needs an API key (--api-key or VISTA_API_KEY)",
            addr.ip()
        );
    }
    Ok(())
}

/// Serves `state` on `addr` until SIGINT or SIGTERM, then finishes the requests in flight.
/// `ready` is called with the bound address (port 0 picks a free one).
pub async fn serve(addr: SocketAddr, state: Arc<AppState>, ready: impl FnOnce(SocketAddr)) -> anyhow::Result<()> {
    serve_until(addr, state, ready, shutdown_signal()).await
}

/// As [`serve`], stopping when `shutdown` completes: no new connections are accepted, the
/// requests in flight are answered, then it returns.
pub async fn serve_until(
    addr: SocketAddr,
    state: Arc<AppState>,
    ready: impl FnOnce(SocketAddr),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    check_exposure(&addr, state.api_key.as_deref())?;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("binding {addr}: {e}"))?;
    ready(listener.local_addr()?);
    axum::serve(listener, app(state)).with_graceful_shutdown(shutdown).await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// A PNG of `img`, base64 (standard alphabet, padded).
pub fn png_base64(img: &image::DynamicImage) -> ApiResult<String> {
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| ApiError::internal(format!("encoding a PNG: {e}")))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(png))
}
