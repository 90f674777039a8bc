//! `vista segment` and `vista sam encode` on the tiny official SAM fixture.

use crate::common;

use common::{fixtures, stderr, stdout, tmpdir, vista, vista_ok};

fn sam() -> String {
    fixtures().join("sam/vit_official/sam_vit_tiny.pth").display().to_string()
}

fn photo(dir: &std::path::Path, name: &str, w: u32, h: u32) -> std::path::PathBuf {
    let p = dir.join(name);
    vista::image::RgbImage::from_fn(w, h, |x, y| vista::image::Rgb([(x * 9 % 256) as u8, (y * 5 % 256) as u8, 90]))
        .save(&p)
        .unwrap();
    p
}

#[test]
fn segment_writes_every_format_and_the_rle_decodes_to_the_png() {
    let dir = tmpdir("segment");
    let img = photo(&dir, "shop.png", 50, 37);
    let out = dir.join("out");
    let cache = dir.join("cache");
    let (img_s, out_s, cache_s, model) = (img.to_str().unwrap(), out.to_str().unwrap(), cache.to_str().unwrap(), sam());
    // The photo segmented with `prompts` into `out`, through the embedding cache: the JSON report.
    let segment = |prompts: &[&str]| -> serde_json::Value {
        let mut args = vec!["segment", img_s, "--model", &model];
        args.extend_from_slice(prompts);
        args.extend_from_slice(&["-o", out_s, "--cache-dir", cache_s, "--json"]);
        serde_json::from_slice(&vista_ok(&args).stdout).unwrap()
    };
    let doc = segment(&[
        "--point",
        "10.5,12",
        "--point",
        "30,20,neg",
        "--box",
        "2,3,40,30",
        "--box",
        "0,0,50,37",
        "--multimask",
        "-f",
        "png,coco-rle,polygon,overlay",
    ]);
    let masks = doc["masks"].as_array().unwrap();
    assert_eq!(masks.len(), 6, "2 boxes x 3 masks");
    assert_eq!(doc["cached_embedding"], false);
    let coco: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("shop.coco.json")).unwrap()).unwrap();
    let anns = coco["annotations"].as_array().unwrap();
    assert_eq!(anns.len(), 6);
    for (m, ann) in masks.iter().zip(anns) {
        let png = vista::apps::segment::Mask::from_png(m["png"].as_str().unwrap()).unwrap();
        let rle = vista::apps::segment::Rle::from_json(&ann["segmentation"]).unwrap();
        assert_eq!(rle.decode(), png, "RLE and PNG of mask {m}");
        assert_eq!(ann["area"].as_u64().unwrap(), png.area());
        assert!(m["score"].is_f64());
    }
    let polys: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("shop.polygons.json")).unwrap()).unwrap();
    assert_eq!(polys["annotations"].as_array().unwrap().len(), 6);
    let overlay = vista::image::load_rgb(out.join("shop.overlay.png"), &Default::default()).unwrap();
    assert_eq!((overlay.width(), overlay.height()), (50, 37));

    // Refining with the written low-res logits; the embedding now comes from the cache.
    let low = out.join("shop.lowres.npy");
    let doc = segment(&["--point", "10.5,12", "--mask-input", low.to_str().unwrap()]);
    assert_eq!(doc["cached_embedding"], true);
    assert_eq!(doc["masks"].as_array().unwrap().len(), 1);
    // An array of the right plane shape but no plane is an error, not a panic.
    let (shape, _) = vista::data::npy::read_f32(&low).unwrap();
    let empty = out.join("empty.lowres.npy");
    vista::data::npy::write_f32(&empty, &[], &[0, shape[shape.len() - 2], shape[shape.len() - 1]]).unwrap();
    let o = vista(&[
        "segment",
        img_s,
        "--model",
        &model,
        "--point",
        "1,1",
        "--mask-input",
        empty.to_str().unwrap(),
        "--no-cache",
    ]);
    assert!(!o.status.success() && stderr(&o).contains("holds no"), "{}", stderr(&o));
    // A PNG mask works as a mask input too.
    let png = out.join("shop.set0.mask1.png");
    let o = vista_ok(&[
        "segment",
        img_s,
        "--model",
        &model,
        "--mask-input",
        png.to_str().unwrap(),
        "-o",
        out_s,
        "--no-cache",
    ]);
    assert!(stdout(&o).contains("mask 0: score"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn segment_errors_name_the_argument() {
    let dir = tmpdir("segment-errors");
    let img = photo(&dir, "a.png", 50, 37);
    let model = sam();
    let run = |extra: &[&str]| {
        let mut args =
            vec!["segment", img.to_str().unwrap(), "--model", &model, "--no-cache", "-o", dir.to_str().unwrap()];
        args.extend_from_slice(extra);
        vista(&args)
    };
    let o = run(&["--point", "60,5"]);
    assert!(!o.status.success() && stderr(&o).contains("outside the 50x37 image"), "{}", stderr(&o));
    let o = run(&["--box", "1,2,3"]);
    assert!(
        !o.status.success() && stderr(&o).contains("'1,2,3' for '--box") && stderr(&o).contains("expected 4"),
        "{}",
        stderr(&o)
    );
    let o = run(&["--point", "1,2,maybe"]);
    assert!(!o.status.success() && stderr(&o).contains("maybe"), "{}", stderr(&o));
    let o = run(&[]);
    assert!(!o.status.success() && stderr(&o).contains("nothing to segment"), "{}", stderr(&o));
    std::fs::write(dir.join("bad.png"), b"not a png").unwrap();
    let o =
        vista(&["segment", dir.join("bad.png").to_str().unwrap(), "--model", &model, "--point", "1,1", "--no-cache"]);
    assert!(!o.status.success() && stderr(&o).contains("bad.png"), "{}", stderr(&o));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn sam_encode_fills_the_cache_skips_bad_files_and_resumes() {
    let dir = tmpdir("sam-encode");
    let photos = dir.join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    for i in 0..3 {
        photo(&photos, &format!("p{i}.png"), 40 + i, 30);
    }
    std::fs::write(photos.join("broken.jpg"), b"\xff\xd8 truncated").unwrap();
    let cache = dir.join("cache");
    let model = sam();
    let args = ["sam", "encode", photos.to_str().unwrap(), "--model", &model, "--cache-dir", cache.to_str().unwrap()];
    let o = vista(&args);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("broken.jpg") && stderr(&o).contains("3 encoded"), "{}", stderr(&o));
    let o = vista(&args);
    assert!(stderr(&o).contains("0 encoded, 3 already cached, 1 skipped"), "{}", stderr(&o));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn segment_everything_writes_masks_png_overlay_and_equals_the_library() {
    let dir = tmpdir("segment-everything");
    let img = photo(&dir, "shop.png", 60, 45);
    let out = dir.join("out");
    let model = sam();
    let args = [
        "segment",
        img.to_str().unwrap(),
        "--everything",
        "--points-per-side",
        "4",
        "--pred-iou-thresh",
        "0",
        "--stability-score-thresh",
        "0",
        "--box-nms-thresh",
        "1",
        "--model",
        &model,
        "--no-cache",
        "-o",
        out.to_str().unwrap(),
        "-f",
        "png,coco-rle,overlay",
        "--json",
    ];
    let doc: serde_json::Value = serde_json::from_slice(&vista_ok(&args).stdout).unwrap();
    let masks = doc["masks"].as_array().unwrap();
    assert_eq!(masks.len(), 48, "4 x 4 points x 3 masks, nothing filtered");
    let pngs = doc["pngs"].as_array().unwrap();
    assert_eq!(pngs.len(), masks.len());
    // The written RLE, the PNG and the library's result are the same masks.
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(doc["outputs"]["coco"].as_str().unwrap()).unwrap()).unwrap();
    let anns = file["annotations"].as_array().unwrap();
    assert_eq!(anns.len(), masks.len());
    let image = vista::image::load_rgb(&img, &Default::default()).unwrap();
    let files = vista::sam::loader::resolve(&model).unwrap();
    let predictor = vista::sam::Predictor::new(std::sync::Arc::new(
        vista::sam::loader::load(&files, &Default::default()).unwrap().model,
    ));
    let options = vista::apps::segment::AmgOptions {
        points_per_side: Some(4),
        pred_iou_thresh: 0.0,
        stability_score_thresh: 0.0,
        box_nms_thresh: 1.0,
        ..Default::default()
    };
    let lib = vista::apps::segment::AutomaticMaskGenerator::new(predictor, options).unwrap().generate(&image).unwrap();
    for (i, (ann, png)) in anns.iter().zip(pngs).enumerate() {
        let rle = vista::apps::segment::Rle::from_json(&ann["segmentation"]).unwrap();
        assert_eq!(rle, lib[i].rle, "mask {i}");
        let png = vista::apps::segment::Mask::from_png(png.as_str().unwrap()).unwrap();
        assert_eq!(png, rle.decode(), "mask {i}");
        assert_eq!(ann["id"], i + 1);
        for key in ["area", "bbox", "predicted_iou", "point_coords", "stability_score", "crop_box"] {
            assert!(!ann[key].is_null(), "{key}");
        }
    }
    // Region crops for region features: the box, background outside the mask.
    let m = lib.iter().find(|m| m.area() > 0).unwrap();
    let region = m.region(&image, Some([0, 0, 0])).unwrap();
    let b = m.bbox();
    assert_eq!((region.width() as i64, region.height() as i64), (b[2] + 1, b[3] + 1));
    let mask = m.mask();
    for (x, y, px) in region.enumerate_pixels() {
        let (ix, iy) = (b[0] as u32 + x, b[1] as u32 + y);
        let want = if mask.get(ix, iy) { *image.get_pixel(ix, iy) } else { vista::image::Rgb([0, 0, 0]) };
        assert_eq!(*px, want);
    }
    let overlay = ::image::open(doc["outputs"]["overlay"].as_str().unwrap()).unwrap();
    assert_eq!((overlay.width(), overlay.height()), (60, 45));
    // Prompts and --everything exclude each other.
    let o = vista(&["segment", img.to_str().unwrap(), "--everything", "--point", "3,3", "--model", &model]);
    assert!(!o.status.success() && stderr(&o).contains("--everything"), "{}", stderr(&o));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn sam_auto_writes_one_document_per_image_skips_bad_files_and_resumes() {
    let dir = tmpdir("sam-auto");
    let photos = dir.join("photos");
    std::fs::create_dir_all(photos.join("sub")).unwrap();
    photo(&photos, "a.png", 40, 30);
    photo(&photos.join("sub"), "b.png", 33, 50);
    std::fs::write(photos.join("broken.jpg"), b"\xff\xd8 truncated").unwrap();
    let out = dir.join("masks");
    let model = sam();
    let args = [
        "sam",
        "auto",
        photos.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--points-per-side",
        "3",
        "--pred-iou-thresh",
        "0",
        "--stability-score-thresh",
        "0",
        "--model",
        &model,
        "--no-cache",
    ];
    let o = vista(&args);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("broken.jpg") && stderr(&o).contains("2 segmented"), "{}", stderr(&o));
    for (rel, (w, h)) in [("a.png.json", (40, 30)), ("sub/b.png.json", (33, 50))] {
        let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join(rel)).unwrap()).unwrap();
        assert_eq!((doc["image"]["width"].as_u64(), doc["image"]["height"].as_u64()), (Some(w), Some(h)));
        let anns = doc["annotations"].as_array().unwrap();
        assert!(!anns.is_empty(), "{rel}");
        for a in anns {
            let rle = vista::apps::segment::Rle::from_json(&a["segmentation"]).unwrap();
            assert_eq!((rle.width(), rle.height()), (w as u32, h as u32));
            assert_eq!(a["area"].as_u64(), Some(rle.area()));
        }
    }
    assert!(!out.join("broken.jpg.json").exists());
    let o = vista(&args);
    assert!(stderr(&o).contains("0 segmented (0 masks), 2 already done, 1 skipped"), "{}", stderr(&o));
    std::fs::remove_dir_all(dir).unwrap();
}
