//! The two model workers: CLIP (texts and images embedded in batches across requests) and SAM
//! (image embeddings kept in a small LRU, so clicks after the first cost only the decoder).

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::oneshot;
use vista::apps::segment::{Mask, Rle, SegmentPipeline};
use vista::clip::ClipPipeline;
use vista::dino::{DinoFeatures, DinoPipeline};
use vista::image::{decode_image, decode_rgb, DecodeOptions};
use vista::sam::{Prompts, Session};

use crate::error::{ApiError, ApiResult};
use crate::worker::{Batching, Worker};

/// A job for the CLIP worker.
pub enum ClipJob {
    /// Texts to embed (normalised), in order.
    Texts { texts: Vec<String>, reply: oneshot::Sender<ApiResult<Vec<Vec<f32>>>> },
    /// An encoded image to embed (normalised); `name` is used in errors.
    Image { bytes: Arc<Vec<u8>>, name: String, reply: oneshot::Sender<ApiResult<Vec<f32>>> },
}

/// The CLIP worker, its decode options and the model id the index was built with.
pub struct Clip {
    /// The queue.
    pub worker: Worker<ClipJob>,
    /// Embedding width.
    pub dim: usize,
    /// The model's logit scale (the inverse temperature of zero-shot classification).
    pub logit_scale: f32,
}

impl Clip {
    /// Starts the worker around a loaded pipeline.
    pub fn start(pipeline: Arc<ClipPipeline>, batching: Batching, decode: DecodeOptions) -> Self {
        let dim = pipeline.model.config().embed_dim;
        let logit_scale = pipeline.model.logit_scale();
        let preprocess = pipeline.preprocess;
        // Images are decoded and resized while the model runs the previous batch.
        let prepare = move |job: ClipJob| match job {
            ClipJob::Texts { texts, reply } => Prepared::Texts { texts, reply },
            ClipJob::Image { bytes, name, reply } => Prepared::Image {
                image: decode_image(&bytes, &name, &decode).map(|img| preprocess.prepare(&img)).map_err(ApiError::from),
                reply,
            },
        };
        let worker = Worker::spawn_pipelined("clip", batching, prepare, move || pipeline, run_clip_batch);
        Self { worker, dim, logit_scale }
    }

    /// Embeds `texts` in the next batch.
    pub async fn texts(&self, texts: Vec<String>) -> ApiResult<Vec<Vec<f32>>> {
        let (reply, rx) = oneshot::channel();
        self.worker.submit(ClipJob::Texts { texts, reply })?;
        rx.await.map_err(|_| ApiError::unavailable("the CLIP worker stopped"))?
    }

    /// Embeds an encoded image in the next batch.
    pub async fn image(&self, bytes: Arc<Vec<u8>>, name: String) -> ApiResult<Vec<f32>> {
        let (reply, rx) = oneshot::channel();
        self.worker.submit(ClipJob::Image { bytes, name, reply })?;
        rx.await.map_err(|_| ApiError::unavailable("the CLIP worker stopped"))?
    }
}

/// A CLIP job after its preparing stage.
enum Prepared {
    Texts { texts: Vec<String>, reply: oneshot::Sender<ApiResult<Vec<Vec<f32>>>> },
    Image { image: ApiResult<vista::image::RgbImage>, reply: oneshot::Sender<ApiResult<Vec<f32>>> },
}

fn run_clip_batch(pipeline: &mut Arc<ClipPipeline>, jobs: Vec<Prepared>) {
    let mut text_jobs = Vec::new();
    let mut crops = Vec::new();
    let mut waiting = Vec::new();
    for j in jobs {
        match j {
            Prepared::Texts { texts, reply } => text_jobs.push((texts, reply)),
            Prepared::Image { image: Ok(img), reply } => {
                crops.push(img);
                waiting.push(reply);
            }
            Prepared::Image { image: Err(e), reply } => {
                let _ = reply.send(Err(e));
            }
        }
    }
    if !text_jobs.is_empty() {
        let all: Vec<&str> = text_jobs.iter().flat_map(|(t, _)| t.iter().map(String::as_str)).collect();
        let result = if all.is_empty() {
            Ok(Vec::new())
        } else {
            pipeline.embed_texts(&all).and_then(|t| Ok(t.to_vec2::<f32>()?)).map_err(ApiError::from)
        };
        let mut at = 0;
        for (texts, reply) in text_jobs {
            let n = texts.len();
            let _ = reply.send(result.clone().map(|rows| rows[at..at + n].to_vec()));
            at += n;
        }
    }
    if !crops.is_empty() {
        let refs: Vec<&vista::image::RgbImage> = crops.iter().collect();
        match pipeline.embed_cropped(&refs) {
            Ok(rows) => {
                for (row, reply) in rows.into_iter().zip(waiting) {
                    let _ = reply.send(Ok(row));
                }
            }
            Err(e) => {
                let e = ApiError::from(e);
                for reply in waiting {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// One mask of a segmentation answer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MaskOut {
    /// COCO RLE: `{"size": [h, w], "counts": "..."}` (compressed string, as pycocotools).
    pub rle: serde_json::Value,
    /// SAM's predicted IoU.
    pub score: f32,
    /// `[x, y, w, h]` (COCO).
    pub bbox: [u32; 4],
    /// Pixels in the mask.
    pub area: u64,
    /// The mask as a PNG (8-bit grey, 255 inside), base64.
    pub png: String,
}

/// A segmentation answer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SegmentOut {
    /// Image width and height.
    pub width: usize,
    /// Image height.
    pub height: usize,
    /// The masks, best first.
    pub masks: Vec<MaskOut>,
    /// True when the image embedding was reused (LRU or disk cache).
    pub cached: bool,
}

/// A job for the SAM worker: encoded image bytes (hashed for the caches) and prompts.
pub struct SegmentJob {
    /// The encoded image.
    pub bytes: Arc<Vec<u8>>,
    /// Its name in errors.
    pub name: String,
    /// Points / boxes.
    pub prompts: Prompts,
    /// A previous mask to refine (SAM's mask input), of the image's size.
    pub mask: Option<Rle>,
    /// The reply.
    pub reply: oneshot::Sender<ApiResult<SegmentOut>>,
}

/// The SAM worker.
pub struct Sam {
    /// The queue.
    pub worker: Worker<SegmentJob>,
}

struct SamState {
    pipeline: SegmentPipeline,
    decode: DecodeOptions,
    /// Most recently used first: (content hash, session, width, height).
    lru: VecDeque<(String, Session, usize, usize)>,
    capacity: usize,
}

impl Sam {
    /// Starts the worker around a loaded pipeline; `lru` image embeddings are kept in memory.
    pub fn start(pipeline: SegmentPipeline, lru: usize, queue: usize, decode: DecodeOptions) -> Self {
        let batching = Batching { queue, batch: 1, wait: std::time::Duration::ZERO };
        let worker = Worker::spawn(
            "sam",
            batching,
            move || SamState { pipeline, decode, lru: VecDeque::new(), capacity: lru.max(1) },
            |state: &mut SamState, jobs: Vec<SegmentJob>| {
                for job in jobs {
                    let out = segment(state, &job.bytes, &job.name, job.prompts, job.mask.as_ref());
                    let _ = job.reply.send(out);
                }
            },
        );
        Self { worker }
    }

    /// Segments in turn.
    pub async fn segment(
        &self,
        bytes: Arc<Vec<u8>>,
        name: String,
        prompts: Prompts,
        mask: Option<Rle>,
    ) -> ApiResult<SegmentOut> {
        let (reply, rx) = oneshot::channel();
        self.worker.submit(SegmentJob { bytes, name, prompts, mask, reply })?;
        rx.await.map_err(|_| ApiError::unavailable("the SAM worker stopped"))?
    }
}

fn segment(
    state: &mut SamState,
    bytes: &[u8],
    name: &str,
    mut prompts: Prompts,
    mask: Option<&Rle>,
) -> ApiResult<SegmentOut> {
    let key = blake3::hash(bytes).to_hex().to_string();
    let (mut cached, hit) = (true, state.lru.iter().position(|e| e.0 == key));
    let entry = match hit {
        Some(i) => state.lru.remove(i).expect("a listed entry"),
        None => {
            let image = decode_rgb(bytes, name, &state.decode)?;
            let (session, from_disk) = state.pipeline.session_for(&key, &image)?;
            cached = from_disk;
            (key, session, image.width() as usize, image.height() as usize)
        }
    };
    let (w, h) = (entry.2, entry.3);
    for p in &prompts.points {
        if !(0.0..=w as f32).contains(&p.x) || !(0.0..=h as f32).contains(&p.y) {
            state.lru.push_front(entry);
            return Err(ApiError::invalid(format!("point ({}, {}) is outside the {w}x{h} image", p.x, p.y)));
        }
    }
    if let Some(m) = mask {
        if (m.width() as usize, m.height() as usize) != (w, h) {
            state.lru.push_front(entry);
            return Err(ApiError::invalid(format!("mask is {}x{}, the image {w}x{h}", m.width(), m.height())));
        }
        match vista::apps::segment::export::mask_input_from_mask(&m.decode(), &entry.1) {
            Ok(input) => prompts.mask_input = Some(input),
            Err(e) => {
                state.lru.push_front(entry);
                return Err(e.into());
            }
        }
    }
    let result = entry.1.predict(&prompts);
    state.lru.push_front(entry);
    state.lru.truncate(state.capacity);
    let pred = result?;
    let mut masks = Vec::new();
    for s in 0..pred.sets {
        let mut order: Vec<usize> = (0..pred.per_set).collect();
        order.sort_by(|a, b| pred.score(s, *b).total_cmp(&pred.score(s, *a)));
        for m in order {
            let data = pred.mask(s, m);
            let mask = Mask::from_u8(pred.width as u32, pred.height as u32, data)?;
            let rle = Rle::encode(&mask);
            let [x0, y0, bw, bh] = rle.bbox();
            masks.push(MaskOut {
                rle: serde_json::json!({"size": [rle.height(), rle.width()], "counts": rle.to_string_counts()}),
                score: pred.score(s, m),
                bbox: [x0, y0, bw, bh],
                area: rle.area(),
                png: crate::png_base64(&image::DynamicImage::ImageLuma8(mask.to_gray_image()))?,
            });
        }
    }
    Ok(SegmentOut { width: w, height: h, masks, cached })
}

/// A job for the DINO worker: an encoded image, and whether the patch tokens are wanted.
pub struct FeaturesJob {
    /// The encoded image.
    pub bytes: Arc<Vec<u8>>,
    /// Its name in errors.
    pub name: String,
    /// Also return the patch tokens.
    pub patches: bool,
    /// The reply.
    pub reply: oneshot::Sender<ApiResult<DinoFeatures>>,
}

/// The DINO worker (CLS and patch features); images of one input size in a batch share a
/// forward pass.
pub struct Dino {
    /// The queue.
    pub worker: Worker<FeaturesJob>,
}

impl Dino {
    /// Starts the worker around a loaded pipeline.
    pub fn start(pipeline: DinoPipeline, batching: Batching, decode: DecodeOptions) -> Self {
        let pipeline = Arc::new(pipeline);
        let preparer = pipeline.clone();
        // Images are decoded and resized while the model runs the previous batch.
        let prepare = move |job: FeaturesJob| {
            let image = decode_image(&job.bytes, &job.name, &decode).and_then(|d| preparer.prepare_decoded(&d));
            (image.map_err(ApiError::from), job)
        };
        Self { worker: Worker::spawn_pipelined("dino", batching, prepare, move || pipeline, run_dino_batch) }
    }

    /// Features of an encoded image, in the next batch.
    pub async fn features(&self, bytes: Arc<Vec<u8>>, name: String, patches: bool) -> ApiResult<DinoFeatures> {
        let (reply, rx) = oneshot::channel();
        self.worker.submit(FeaturesJob { bytes, name, patches, reply })?;
        rx.await.map_err(|_| ApiError::unavailable("the DINO worker stopped"))?
    }
}

fn run_dino_batch(pipeline: &mut Arc<DinoPipeline>, jobs: Vec<(ApiResult<vista::image::RgbImage>, FeaturesJob)>) {
    let mut ready = Vec::new();
    for (image, job) in jobs {
        match image {
            Ok(img) => ready.push((img, job)),
            Err(e) => {
                let _ = job.reply.send(Err(e));
            }
        }
    }
    while !ready.is_empty() {
        let key = (ready[0].0.dimensions(), ready[0].1.patches);
        let (group, rest): (Vec<_>, Vec<_>) = ready.into_iter().partition(|(i, j)| (i.dimensions(), j.patches) == key);
        ready = rest;
        let refs: Vec<&vista::image::RgbImage> = group.iter().map(|(i, _)| i).collect();
        match pipeline.features_of_prepared(&refs, key.1) {
            Ok(features) => {
                for (f, (_, job)) in features.into_iter().zip(group) {
                    let _ = job.reply.send(Ok(f));
                }
            }
            Err(e) => {
                let e = ApiError::from(e);
                for (_, job) in group {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }
}
