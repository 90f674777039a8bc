//! `vista serve`: serve the HTTP API and the web page (search, click to segment) until Ctrl-C /
//! SIGTERM — over photo folders indexed in the background meanwhile, or over an index as it is.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use vista::index::{self, IndexDb};
use vista_server::worker::Batching;
use vista_server::{AppState, Clip, Dino, Library, Limits, Sam};

use crate::args::ClipArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Photo folders: served at once and indexed in the background (as `vista index`; search
    /// covers each batch soon after it lands). Without them, the index of --db (or of the
    /// current folder) is served as it is.
    pub dirs: Vec<PathBuf>,
    /// The index database (default: DIR/.vista/index.sqlite of the first folder, or the nearest
    /// index of the current folder).
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// A SAM model for click-to-segment (Hugging Face id, folder or checkpoint file); without
    /// it segmentation is off.
    #[arg(long)]
    pub sam: Option<String>,
    /// A DINO / DINOv2 model for `POST /v1/features` (Hugging Face id, folder or checkpoint).
    #[arg(long)]
    pub dino: Option<String>,
    /// SAM architecture preset (vit_b, vit_l, vit_h, vit_t) instead of the checkpoint's shapes.
    #[arg(long)]
    pub sam_arch: Option<String>,
    /// Address to listen on. Anything but loopback needs --api-key.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port (0: any free one, printed).
    #[arg(long, default_value_t = 7860)]
    pub port: u16,
    /// Require this key on the API (`Authorization: Bearer KEY`).
    #[arg(long, env = "VISTA_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// API requests handled at once; more are refused with 429.
    #[arg(long, default_value_t = 64)]
    pub max_in_flight: usize,
    /// Jobs each model queue holds; more are refused with 429.
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// Seconds a request may take (504 after).
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// Largest request body, MiB.
    #[arg(long, default_value_t = 32)]
    pub max_body_mb: usize,
    #[command(flatten)]
    pub model: ClipArgs,
}

/// `vista serve`.
pub fn run(args: Args) -> Result<ExitCode> {
    let addr = SocketAddr::new(args.host, args.port);
    vista_server::check_exposure(&addr, args.api_key.as_deref())?;
    // Folders to index in the background while serving (the index so far answers meanwhile).
    let mut background = None;
    let (db_path, pipeline, model_id) = if args.dirs.is_empty() {
        let path = match &args.db {
            Some(p) => Some(p.clone()),
            None => index::find_db(&std::env::current_dir()?),
        };
        match path.filter(|p| p.is_file()) {
            Some(path) => {
                let db = IndexDb::open(&path)?;
                let m = db.search_model(args.model.model.as_deref(), args.model.arch.as_deref())?;
                let pipeline = args.model.load_model(&m.id, m.arch.as_deref())?;
                (Some(path), pipeline, m.id)
            }
            None => {
                eprintln!("note: no index (give photo folders or --db): search answers nothing");
                (None, args.model.load()?, String::new())
            }
        }
    } else {
        let roots: Vec<PathBuf> = args
            .dirs
            .iter()
            .map(|d| std::fs::canonicalize(d).with_context(|| format!("{}", d.display())))
            .collect::<Result<_>>()?;
        let path = args.db.clone().unwrap_or_else(|| index::default_db_path(&roots[0]));
        IndexDb::open(&path).with_context(|| format!("opening the index {}", path.display()))?;
        let indexed = args.model.indexed();
        background = Some((roots, indexed.clone()));
        (Some(path), args.model.load()?, indexed.id)
    };
    let library = match &db_path {
        Some(p) => Library::load(p, &model_id).with_context(|| format!("reading the index {}", p.display()))?,
        None => Library::empty(),
    };
    let limits = Limits {
        max_in_flight: args.max_in_flight.max(1),
        queue: args.queue.max(1),
        batch: args.model.batch.max(1),
        timeout: Duration::from_secs(args.timeout.max(1)),
        body_bytes: args.max_body_mb.max(1) << 20,
        max_pixels: args.model.max_pixels.unwrap_or(vista::image::DEFAULT_MAX_PIXELS),
        ..Limits::default()
    };
    let decode = vista::image::DecodeOptions::with_max_pixels(limits.max_pixels);
    let batching = Batching { queue: limits.queue, batch: limits.batch, wait: limits.batch_wait };
    let pipeline = Arc::new(pipeline);
    let clip = Clip::start(pipeline.clone(), batching, decode);
    let sam = match &args.sam {
        Some(model) => {
            let options = vista::sam::LoadOptions {
                arch: args.sam_arch.clone(),
                image_size: None,
                target: args.model.target.target()?,
            };
            let cache = vista::apps::segment::default_cache_dir();
            let p = vista::apps::segment::SegmentPipeline::load(model, &options, Some(&cache))
                .with_context(|| format!("loading SAM model `{model}`"))?;
            Some(Sam::start(p, limits.sam_lru, limits.queue, decode))
        }
        None => None,
    };
    let dino = match &args.dino {
        Some(model) => {
            let options = vista::dino::LoadOptions { target: args.model.target.target()?, ..Default::default() };
            let p = vista::dino::DinoPipeline::load(model, &options)
                .with_context(|| format!("loading DINO model `{model}`"))?;
            Some(Dino::start(p, batching, decode))
        }
        None => None,
    };
    let images = library.photos.len();
    let mut state = AppState::new(Some(clip), sam, library, limits, args.api_key.clone());
    if let Some(d) = dino {
        state = state.with_dino(d);
    }
    let state = Arc::new(state);
    if let (Some((roots, model)), Some(db)) = (background, db_path.clone()) {
        eprintln!("indexing {} in the background (the page shows progress; search covers what is done)", db.display());
        vista_server::start_indexing(
            state.clone(),
            pipeline,
            db,
            roots,
            model,
            args.model.batch,
            Duration::from_secs(2),
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(vista_server::serve(addr, state, |bound| {
        eprintln!("serving {images} indexed images on http://{bound}/ (Ctrl-C to stop)");
    }))?;
    Ok(ExitCode::SUCCESS)
}
