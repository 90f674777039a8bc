//! Segment everything on images the reference cannot hold: a 12,000 × 9,000 photo (the
//! reference up-samples `points_per_batch × 3` logit planes at full size at once: 64 × 3 × 108 M
//! floats, 83 GB) and a 1 × 5,000 strip (the reference resizes it to 0 rows and fails). The test
//! re-runs itself in a child process of the test binary (only this test, one thread), so the peak
//! RSS it measures is its own, not that of the other tests running beside it.
//!
//! Bound: vista holds the image (324 MB of RGB), one input-size plane and one column per worker
//! thread, and the survivors' RLEs; the test requires the peak RSS to stay under the image plus
//! 400 MB.

use std::path::Path;
use std::sync::Arc;

use vista::apps::segment::everything::{AmgOptions, AutomaticMaskGenerator};
use vista::image::RgbImage;
use vista::sam::loader::{self, LoadOptions};
use vista::sam::Predictor;

fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

const CHILD: &str = "VISTA_AMG_LARGE_CHILD";

#[test]
fn huge_photo_and_thin_strip_stay_bounded() {
    if std::env::var_os(CHILD).is_some() {
        return bounded_run();
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["amg_large::huge_photo_and_thin_strip_stay_bounded", "--exact", "--test-threads=1", "--nocapture"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the child run failed:\n{text}");
    assert!(text.contains("1 passed"), "the child ran no test:\n{text}");
    eprintln!("{}", text.lines().filter(|l| l.contains("peak RSS")).collect::<Vec<_>>().join("\n"));
}

fn bounded_run() {
    let weights = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sam/vit_official/sam_vit_tiny.pth");
    let files = loader::resolve(weights.to_str().unwrap()).unwrap();
    let predictor = Predictor::new(Arc::new(loader::load(&files, &LoadOptions::default()).unwrap().model));
    // Relaxed filters so that every candidate mask is up-sampled to full size.
    let options = AmgOptions {
        points_per_side: Some(2),
        pred_iou_thresh: 0.0,
        stability_score_thresh: 0.0,
        box_nms_thresh: 1.0,
        ..AmgOptions::default()
    };
    let generator = AutomaticMaskGenerator::new(predictor, options).unwrap();

    let strip = RgbImage::from_fn(5000, 1, |x, _| ::image::Rgb([(x % 256) as u8, (x / 20 % 256) as u8, 90]));
    let masks = generator.generate(&strip).unwrap();
    assert!(!masks.is_empty());
    for m in &masks {
        assert_eq!((m.rle.height(), m.rle.width()), (1, 5000));
    }

    let (w, h) = (12_000u32, 9_000u32);
    let image = RgbImage::from_fn(w, h, |x, y| {
        let inside = (x as f32 - 4000.0).powi(2) + (y as f32 - 5000.0).powi(2) < 3000f32.powi(2);
        if inside {
            ::image::Rgb([220, 40, 30])
        } else {
            ::image::Rgb([(x / 50 % 256) as u8, (y / 40 % 256) as u8, 160])
        }
    });
    let before = peak_rss_bytes();
    let masks = generator.generate(&image).unwrap();
    assert_eq!(masks.len(), 12, "2 x 2 points x 3 masks, nothing filtered");
    for m in &masks {
        assert_eq!((m.rle.height(), m.rle.width()), (h, w));
        assert!(m.area() <= u64::from(w) * u64::from(h));
    }
    if let (Some(_), Some(peak)) = (before, peak_rss_bytes()) {
        let image_bytes = u64::from(w) * u64::from(h) * 3;
        eprintln!("peak RSS {} MB (image {} MB)", peak >> 20, image_bytes >> 20);
        assert!(peak < image_bytes + (400 << 20), "peak RSS {} MB", peak >> 20);
    }
}
