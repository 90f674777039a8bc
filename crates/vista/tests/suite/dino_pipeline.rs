//! `apps::dino_pipeline` on the tiny committed DINO fixtures: DINO's eval preprocessing against
//! torchvision's crops, features of files against the backbone on the same pixels, batching
//! and per-file errors, attention maps and their threshold, the rendered picture, feature
//! files and the dataset-feature cache.

use crate::common;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use common::{fixtures, load_golden};
use vista::apps::attention::{
    panel_grid, render_attention, threshold_attention, threshold_masks, RenderOptions, Upsample,
};
use vista::apps::features::save_features_safetensors;
use vista::data::dataset::LabelledSet;
use vista::dino::pipeline::FEATURES_FORMAT;
use vista::dino::LoadOptions;
use vista::dino::{DinoPipeline, DinoPreprocess};
use vista::eval::{dataset_features, FeatureCache};
use vista::image::{load_rgb, DecodeOptions, Rgb, RgbImage};

/// DINOv2 with 4 registers, SwiGLU, 4 heads, patch 7 (transformers format with config.json).
fn v2_reg() -> DinoPipeline {
    let p = fixtures().join("dino/v2_hf_reg4_swiglu/model.safetensors");
    DinoPipeline::load(p.to_str().unwrap(), &LoadOptions::default()).unwrap()
}

/// DINO ViT with 2 heads, patch 8 (official `.pth`; the head count is not in the file).
fn v1() -> DinoPipeline {
    let p = fixtures().join("dino/v1_official/dino_vit_tiny_pretrain.pth");
    DinoPipeline::load(p.to_str().unwrap(), &LoadOptions { num_heads: Some(2), ..Default::default() }).unwrap()
}

fn photo_path(stem: &str) -> PathBuf {
    fixtures().join("preprocess").join(format!("{stem}.png"))
}

fn photo(stem: &str) -> RgbImage {
    load_rgb(photo_path(stem), &DecodeOptions::default()).unwrap()
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vista-dino-pipeline-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn eval_preprocessing_matches_torchvision_resize_256_crop_224() {
    let g = load_golden(&fixtures().join("dino/preprocess/golden.safetensors"));
    let pre = DinoPreprocess::eval();
    for stem in ["chelsea", "coffee"] {
        let ours = pre.prepare(&photo(stem), 14).unwrap();
        assert_eq!(ours.dimensions(), (224, 224), "{stem}");
        let reference: Vec<u8> = g[&format!("crop_uint8.{stem}")].flatten_all().unwrap().to_vec1().unwrap();
        let (mut exact, mut max) = (0usize, 0u8);
        for (a, b) in ours.as_raw().iter().zip(&reference) {
            let d = a.abs_diff(*b);
            exact += usize::from(d == 0);
            max = max.max(d);
        }
        let frac = exact as f64 / reference.len() as f64;
        println!("{stem}: {:.4} % identical, max diff {max}", 100.0 * frac);
        assert!(frac >= 0.99 && max <= 1, "{stem}: {:.4} % identical, max diff {max}", 100.0 * frac);

        // Normalisation of the reference crop, channels-last, against torchvision's tensor.
        let crop = RgbImage::from_raw(224, 224, reference).unwrap();
        let pixels = pre.pixels(&[&crop]).unwrap();
        assert_eq!(pixels.dims(), &[1, 224, 224, 3]);
        let corner = pixels.narrow(1, 0, 16).unwrap().narrow(2, 0, 16).unwrap().squeeze(0).unwrap();
        let corner = corner.permute((2, 0, 1)).unwrap().contiguous().unwrap();
        let golden = &g[&format!("normalized_patch.{stem}")];
        assert_eq!(max_diff(&flat(&corner), &flat(golden)), 0.0, "{stem}: normalisation");
    }
}

#[test]
fn features_of_files_equal_the_backbone_on_the_same_pixels() {
    let p = v2_reg();
    let paths = vec![photo_path("chelsea"), photo_path("coffee")];
    let out = p.extract_files(&paths, 2, true, |_| {});
    // The reference pixels: ClipPreprocess's planar tensor, permuted to channels-last.
    let imgs = [photo("chelsea"), photo("coffee")];
    let planar = p.preprocess.clip_preprocess().unwrap().to_tensor(&imgs, &Device::Cpu).unwrap();
    let pixels = planar.permute((0, 2, 3, 1)).unwrap().contiguous().unwrap();
    let reference = p.model.forward(&pixels, false, false).unwrap();
    let cls: Vec<Vec<f32>> = reference.cls().unwrap().to_vec2().unwrap();
    let patches = reference.patches().unwrap();
    let registers = reference.register_tokens().unwrap();
    for (i, r) in out.iter().enumerate() {
        let f = r.features.as_ref().unwrap();
        assert_eq!(r.path, paths[i]);
        assert_eq!(f.grid, (32, 32));
        assert_eq!(f.input_size, (224, 224));
        assert_eq!(f.dim(), 32);
        assert!(max_diff(&f.cls, &cls[i]) <= 1e-6, "cls {i}");
        assert!(max_diff(&f.patches, &flat(&patches.get(i).unwrap())) <= 1e-6, "patches {i}");
        assert_eq!(f.registers.len(), 4 * 32);
        assert!(max_diff(&f.registers, &flat(&registers.get(i).unwrap())) <= 1e-6, "registers {i}");
        // One at a time gives the same.
        let single = p.features_file(&paths[i], true).unwrap();
        assert!(max_diff(&single.cls, &f.cls) <= 1e-4);
        assert!(max_diff(&single.patches, &f.patches) <= 1e-4);
    }
    // CLS only: no patch tokens kept.
    let cls_only = p.extract_files(&paths[..1], 8, false, |_| {});
    let f = cls_only[0].features.as_ref().unwrap();
    assert!(f.patches.is_empty());
    assert!(max_diff(&f.cls, &cls[0]) <= 1e-4);
}

#[test]
fn whole_mode_batches_by_size_and_keeps_errors_in_their_slot() {
    let dir = tmpdir("whole");
    let mut paths = Vec::new();
    for (i, (w, h)) in [(90u32, 60u32), (60, 90), (45, 30), (33, 33)].into_iter().enumerate() {
        let p = dir.join(format!("img{i}.png"));
        RgbImage::from_fn(w, h, |x, y| Rgb([(x * 7 + i as u32 * 40) as u8, (y * 3) as u8, 100])).save(&p).unwrap();
        paths.push(p);
        if i == 1 {
            let bad = dir.join("broken.png");
            std::fs::write(&bad, b"\x89PNG\r\n\x1a\nnot really a png").unwrap();
            paths.push(bad);
        }
    }
    let mut p = v2_reg();
    p.preprocess = DinoPreprocess::whole(Some(64));
    let mut done = 0;
    let out = p.extract_files(&paths, 8, true, |n| done += n);
    assert_eq!(done, paths.len());
    assert_eq!(out.len(), 5);
    let err = out[2].features.as_ref().expect_err("the broken file fails").to_string();
    assert!(err.contains("broken.png"), "{err}");
    // 90x60 -> 64x43 -> 63x42 (9x6 patches of 7); 60x90 -> 42x63; 45x30 -> 64x43 -> 63x42; 33x33 -> 63x63.
    let expected = [Some((6, 9)), Some((9, 6)), None, Some((6, 9)), Some((9, 9))];
    for (r, e) in out.iter().zip(expected) {
        let Some(grid) = e else { continue };
        let f = r.features.as_ref().unwrap();
        assert_eq!(f.grid, grid, "{}", r.path.display());
        assert_eq!(f.input_size, (grid.1 as u32 * 7, grid.0 as u32 * 7));
        assert_eq!(f.patches.len(), grid.0 * grid.1 * 32);
        let single = p.features_file(&r.path, true).unwrap();
        assert!(max_diff(&single.cls, &f.cls) <= 1e-4, "{}", r.path.display());
        assert!(max_diff(&single.patches, &f.patches) <= 1e-4, "{}", r.path.display());
    }
    // Whole mode is a plain bicubic resize to the rounded size.
    let img = load_rgb(&paths[0], &DecodeOptions::default()).unwrap();
    let resized = vista::image::resize_exact(&img, 63, 42, vista::image::Filter::Bicubic).unwrap();
    assert!(p.prepare(&img).unwrap() == resized);
    let by_hand = p.model.forward(&p.preprocess.pixels(&[&resized]).unwrap(), false, false).unwrap();
    assert!(max_diff(&out[0].features.as_ref().unwrap().cls, &flat(&by_hand.cls().unwrap())) <= 1e-4);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn attention_maps_are_the_cls_row_over_patches_and_the_threshold_keeps_the_mass() {
    let mut p = v2_reg();
    p.preprocess = DinoPreprocess::whole(Some(112));
    let img = photo("chelsea");
    let maps = p.attention_maps(&img).unwrap();
    assert_eq!(maps.heads, 4);
    let (h, w) = maps.grid;
    assert_eq!((w * 7, h * 7), (112, 70), "451x300 -> 112x75 -> 112x70");
    assert_eq!(maps.image.dimensions(), (112, 70));
    assert_eq!(maps.maps.len(), 4 * h * w);
    // Against the backbone's attention: row 0 (CLS), columns after CLS and the 4 registers.
    let out = p.model.forward(&p.preprocess.pixels(&[&maps.image]).unwrap(), true, false).unwrap();
    let attn = out.attention.unwrap();
    assert_eq!(attn.dims(), &[1, 4, 1 + 4 + h * w, 1 + 4 + h * w]);
    for head in 0..4 {
        let row = flat(&attn.get(0).unwrap().get(head).unwrap().get(0).unwrap());
        assert_eq!(maps.head(head), &row[5..], "head {head}");
        let sum: f32 = maps.head(head).iter().sum();
        assert!(sum > 0.0 && sum <= 1.0 + 1e-5, "head {head}: {sum}");
    }
    for t in [0.3f32, 0.6, 0.9] {
        let masks = threshold_masks(&maps, t).unwrap();
        assert_eq!(masks.len(), 4);
        for (head, mask) in masks.iter().enumerate() {
            let map = maps.head(head);
            let total: f64 = map.iter().map(|&v| v as f64).sum();
            let kept: Vec<f64> = map.iter().zip(mask).filter(|(_, &k)| k).map(|(&v, _)| v as f64 / total).collect();
            let mass: f64 = kept.iter().sum();
            let smallest = kept.iter().copied().fold(f64::INFINITY, f64::min);
            assert!(mass >= t as f64 - 1e-9, "t {t} head {head}: kept {mass}");
            assert!(mass - smallest < t as f64 + 1e-9, "t {t} head {head}: {mass} without {smallest}");
            // Every kept patch attends at least as much as every dropped one.
            let min_kept = map.iter().zip(mask).filter(|(_, &k)| k).map(|(&v, _)| v).fold(f32::INFINITY, f32::min);
            let max_dropped = map.iter().zip(mask).filter(|(_, &k)| !k).map(|(&v, _)| v).fold(0.0, f32::max);
            assert!(min_kept >= max_dropped, "t {t} head {head}");
        }
    }
    assert!(threshold_masks(&maps, 0.0).is_err());
    assert!(threshold_masks(&maps, 1.5).is_err());
    assert_eq!(threshold_attention(&[0.25; 4], 0.5), vec![false, false, true, true]);
}

#[test]
fn rendered_picture_has_the_image_then_one_panel_per_head() {
    let mut p = v1();
    assert_eq!(p.model.vit().unwrap().config.num_heads, 2);
    p.preprocess = DinoPreprocess::whole(Some(64));
    let maps = p.attention_maps(&photo("coffee")).unwrap();
    assert_eq!(maps.heads, 2);
    let (pw, ph) = maps.image.dimensions();
    for (options, cols) in [
        (RenderOptions::default(), 2),
        (RenderOptions { threshold: Some(0.6), upsample: Upsample::Bilinear, ..Default::default() }, 2),
        (RenderOptions { columns: Some(3), gap: 0, ..Default::default() }, 3),
    ] {
        let pic = render_attention(&maps, &options).unwrap();
        let (c, r) = panel_grid(3, options.columns);
        assert_eq!((c, r), (cols, 3usize.div_ceil(cols)));
        let gap = options.gap;
        assert_eq!(pic.dimensions(), (c as u32 * pw + (c as u32 - 1) * gap, r as u32 * ph + (r as u32 - 1) * gap));
        // Panel 0 is the image the model saw.
        for (x, y, px) in maps.image.enumerate_pixels() {
            assert_eq!(pic.get_pixel(x, y), px);
        }
        // Head panels differ from it.
        for head in 0..2 {
            let panel = head + 1;
            let (x0, y0) = ((panel % c) as u32 * (pw + gap), (panel / c) as u32 * (ph + gap));
            let differs =
                maps.image.enumerate_pixels().filter(|(x, y, px)| pic.get_pixel(x0 + x, y0 + y) != *px).count();
            assert!(differs > 0, "head {head} panel is the plain image");
        }
        if gap > 0 {
            assert_eq!(pic.get_pixel(pw, 0), &Rgb([255, 255, 255]), "gap");
        }
        if c * r > 3 {
            assert_eq!(pic.get_pixel(pic.width() - 1, pic.height() - 1), &Rgb([255, 255, 255]), "empty cell");
        }
    }
    assert!(render_attention(&maps, &RenderOptions { threshold: Some(0.0), ..Default::default() }).is_err());
}

#[test]
fn feature_files_hold_cls_patches_registers_and_names() {
    let mut p = v2_reg();
    p.preprocess = DinoPreprocess::whole(Some(56));
    let dir = tmpdir("save");
    let paths = vec![photo_path("chelsea"), photo_path("synth_portrait_23x37"), photo_path("chelsea")];
    let feats: Vec<_> = p.extract_files(&paths, 4, true, |_| {}).into_iter().map(|r| r.features.unwrap()).collect();
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    let read = |path: &Path| {
        let bytes = std::fs::read(path).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let meta = meta.metadata().clone().unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let shapes: Vec<(String, Vec<usize>)> =
            st.tensors().into_iter().map(|(n, v)| (n.to_string(), v.shape().to_vec())).collect();
        (meta, shapes)
    };
    // chelsea (451x300 -> 56x35) and the 23x37 portrait (-> 35x56) have different grids: one patch
    // tensor per image.
    let path = dir.join("mixed.safetensors");
    save_features_safetensors(&path, &names, &feats, true, true, &[("model", "tiny".into())]).unwrap();
    let (meta, mut shapes) = read(&path);
    shapes.sort();
    assert_eq!(meta["format"], FEATURES_FORMAT);
    assert_eq!(meta["model"], "tiny");
    assert_eq!(serde_json::from_str::<Vec<String>>(&meta["names"]).unwrap(), names);
    let grids: Vec<[usize; 2]> = serde_json::from_str(&meta["grids"]).unwrap();
    assert_eq!(grids, vec![[5, 8], [8, 5], [5, 8]]);
    let want: Vec<(String, Vec<usize>)> = vec![
        ("cls".into(), vec![3, 32]),
        ("patch.0".into(), vec![40, 32]),
        ("patch.1".into(), vec![40, 32]),
        ("patch.2".into(), vec![40, 32]),
        ("registers".into(), vec![3, 4, 32]),
    ];
    assert_eq!(shapes, want);
    // Equal grids: one stacked tensor.
    let path = dir.join("same.safetensors");
    let same = [feats[0].clone(), feats[2].clone()];
    save_features_safetensors(&path, &names[..2], &same, false, true, &[]).unwrap();
    let (_, mut shapes) = read(&path);
    shapes.sort();
    assert_eq!(shapes, vec![("patch".to_string(), vec![2, 40, 32]), ("registers".to_string(), vec![2, 4, 32])]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn dataset_features_are_extracted_once_then_read_from_the_cache() {
    let dir = tmpdir("cache");
    let data = dir.join("data");
    for (class, colour) in [("blue", [20u8, 40, 220]), ("red", [230, 30, 20])] {
        std::fs::create_dir_all(data.join(class)).unwrap();
        for i in 0..3u32 {
            RgbImage::from_fn(24, 20, |x, y| {
                Rgb(colour.map(|c| c.saturating_add(((x * 5 + y * 3 + i * 11) % 30) as u8)))
            })
            .save(data.join(class).join(format!("{i}.png")))
            .unwrap();
        }
    }
    std::fs::write(data.join("red").join("9-broken.jpg"), b"not a jpeg").unwrap();
    let set = LabelledSet::from_dir(&data).unwrap();
    assert_eq!(set.len(), 7);
    let p = v1();
    let cache = dir.join("cache");
    let cache_root = cache;
    let cache = FeatureCache::new(&cache_root);
    assert!(cache.load(&p, &set).is_none());
    let first = dataset_features(&p, &set, 4, Some(&cache), |_| {}).unwrap();
    assert!(!first.from_cache);
    assert_eq!((first.len(), first.dim), (6, 32));
    assert_eq!(first.labels, vec![0, 0, 0, 1, 1, 1]);
    assert_eq!(first.skipped.len(), 1);
    assert!(first.skipped[0].contains("9-broken.jpg"), "{}", first.skipped[0]);
    let file = first.cache.clone().unwrap();
    assert!(file.starts_with(cache_root.join(p.model_key())), "{}", file.display());
    assert!(file.is_file());
    let second = dataset_features(&p, &set, 4, Some(&cache), |_| panic!("extracted again")).unwrap();
    assert!(second.from_cache);
    assert_eq!((&second.features, &second.labels, &second.skipped), (&first.features, &first.labels, &first.skipped));
    // The features are each image's CLS.
    let direct = p.features_file(set.items[4].path().unwrap(), false).unwrap();
    assert!(max_diff(&direct.cls, &first.features[4 * 32..5 * 32]) <= 1e-4);
    // Another preprocessing is another data-set key.
    let mut whole = v1();
    whole.preprocess = DinoPreprocess::whole(None);
    assert_ne!(FeatureCache::dataset_key(&whole, &set), FeatureCache::dataset_key(&p, &set));
    assert!(cache.load(&whole, &set).is_none());
    // Without a cache nothing is written.
    let uncached = dataset_features(&p, &set, 4, None, |_| {}).unwrap();
    assert!(uncached.cache.is_none() && !uncached.from_cache);
    std::fs::remove_dir_all(dir).unwrap();
}
