//! `vista segment` and `vista sam encode` on the tiny official SAM fixture.

mod common;

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
