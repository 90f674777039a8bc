//! DINO multi-crop augmentation (`vista::image::augment`) against torchvision / Pillow.
//!
//! Goldens: tools/reference/gen_dino_train.py → tests/fixtures/dino_train/ (see its manifest).
//!
//! * Pixel operations (brightness, contrast, saturation, hue, grayscale, solarize, flip, Gaussian
//!   blur, a full ColorJitter with fixed order / factors) on fixed parameters: **exact** against
//!   Pillow (the brief allowed ±1; we reproduce Pillow's uint8 arithmetic).
//! * Full views with fixed parameters: the bicubic resized crop, every pixel operation after it,
//!   the normalisation and so the whole view, exact.
//! * Crop statistics: our `RandomResizedCrop.get_params` against N = 20000 draws of torchvision's
//!   on the same image sizes: two-sample Kolmogorov-Smirnov on a fixed grid of the CDFs of the
//!   area fraction, log aspect ratio and crop centre, `D <= 2.5 sqrt(2 / N)` = 0.025 (α ≈ 1e-5
//!   per comparison; gridding only lowers D), and means within 4.5 σ of their difference.
//! * Probabilities of every random step: binomial counts within ±4 σ.
//! * Reproducibility: same `(seed, index, epoch)` → same bytes, whichever thread; another index
//!   or epoch → other views.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::Value;
use vista::image::augment::{
    adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation, central_crop_fallback, contrast_mean,
    gaussian_blur, hflip, random_resized_crop_params, sample_rng, solarize, to_grayscale, CropBox,
    DataAugmentationDino, DinoAugmentConfig, JitterOp, JitterParams, ViewParams, DEFAULT_RATIO,
};
use vista::image::{load_rgb, DecodeOptions, RgbImage, IMAGENET_MEAN, IMAGENET_STD};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn read_json(name: &str) -> Value {
    let p = fixtures().join("dino_train").join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

enum Data {
    U8(Vec<u8>),
    F32(Vec<f32>),
}

/// All tensors of a safetensors file: name → (shape, data).
fn read_safetensors(name: &str) -> HashMap<String, (Vec<usize>, Data)> {
    let bytes = std::fs::read(fixtures().join("dino_train").join(name)).expect(name);
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    st.tensors()
        .into_iter()
        .map(|(k, t)| {
            let data = match t.dtype() {
                safetensors::Dtype::U8 => Data::U8(t.data().to_vec()),
                safetensors::Dtype::F32 => {
                    Data::F32(t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
                }
                d => panic!("{k}: unexpected dtype {d:?}"),
            };
            (k, (t.shape().to_vec(), data))
        })
        .collect()
}

fn image(t: &HashMap<String, (Vec<usize>, Data)>, key: &str) -> RgbImage {
    let (shape, data) = t.get(key).unwrap_or_else(|| panic!("{key} missing"));
    let Data::U8(d) = data else { panic!("{key}: not u8") };
    assert_eq!(shape.len(), 3, "{key}");
    assert_eq!(shape[2], 3, "{key}");
    RgbImage::from_raw(shape[1] as u32, shape[0] as u32, d.clone()).unwrap()
}

/// (max abs diff, number of differing values).
fn diff(a: &RgbImage, b: &RgbImage) -> (u8, usize) {
    assert_eq!(a.dimensions(), b.dimensions());
    let mut worst = 0u8;
    let mut n = 0;
    for (x, y) in a.as_raw().iter().zip(b.as_raw()) {
        let d = x.abs_diff(*y);
        worst = worst.max(d);
        n += usize::from(d != 0);
    }
    (worst, n)
}

fn f32_of(v: &Value) -> f32 {
    v.as_f64().expect("number") as f32
}

// ---------------------------------------------------------------------------------------------
// Pixel operations against Pillow
// ---------------------------------------------------------------------------------------------

#[test]
fn pixel_operations_match_pillow_exactly() {
    let t = read_safetensors("ops.safetensors");
    let manifest = read_json("manifest.json");
    let params = manifest["ops"]["params"].as_object().unwrap();
    let input = image(&t, "ops_input");
    let mut checked = 0;
    for (key, p) in params {
        let src = match p.get("input") {
            Some(name) => image(&t, name.as_str().unwrap()),
            None => input.clone(),
        };
        let mut ours = src.clone();
        match p["op"].as_str().unwrap() {
            "brightness" => adjust_brightness(&mut ours, f32_of(&p["factor"])),
            "contrast" => adjust_contrast(&mut ours, f32_of(&p["factor"])),
            "saturation" => adjust_saturation(&mut ours, f32_of(&p["factor"])),
            "hue" => adjust_hue(&mut ours, f32_of(&p["factor"])),
            "grayscale" => to_grayscale(&mut ours),
            "solarize" => solarize(&mut ours, p["threshold"].as_u64().unwrap() as u8),
            "hflip" => hflip(&mut ours),
            "blur" => gaussian_blur(&mut ours, f32_of(&p["radius"])),
            "jitter" => {
                let order: Vec<u8> = p["order"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u8).collect();
                JitterParams {
                    order: [0, 1, 2, 3].map(|i| JitterOp::from_index(order[i])),
                    brightness: Some(f32_of(&p["brightness"])),
                    contrast: Some(f32_of(&p["contrast"])),
                    saturation: Some(f32_of(&p["saturation"])),
                    hue: Some(f32_of(&p["hue"])),
                }
                .apply(&mut ours)
            }
            op => panic!("unknown op {op}"),
        }
        let reference = image(&t, key);
        let (max, n) = diff(&ours, &reference);
        assert!(max == 0, "{key} ({p}): {n} values differ from Pillow, max {max}");
        checked += 1;
    }
    assert!(checked >= 30, "only {checked} cases");
    assert_eq!(contrast_mean(&input), manifest["ops"]["contrast_mean"].as_u64().unwrap() as u8);
    println!("{checked} pixel-operation cases identical to Pillow");
}

// ---------------------------------------------------------------------------------------------
// Full views with fixed parameters against torchvision's DINO transforms
// ---------------------------------------------------------------------------------------------

fn view_params(c: &Value) -> ViewParams {
    let crop: Vec<u32> = c["crop"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let jitter = (!c["jitter"].is_null()).then(|| {
        let j = &c["jitter"];
        let order: Vec<u8> = j["order"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u8).collect();
        JitterParams {
            order: [0, 1, 2, 3].map(|i| JitterOp::from_index(order[i])),
            brightness: Some(f32_of(&j["brightness"])),
            contrast: Some(f32_of(&j["contrast"])),
            saturation: Some(f32_of(&j["saturation"])),
            hue: Some(f32_of(&j["hue"])),
        }
    });
    ViewParams {
        size: c["size"].as_u64().unwrap() as u32,
        crop: CropBox { top: crop[0], left: crop[1], height: crop[2], width: crop[3] },
        flip: c["flip"].as_bool().unwrap(),
        jitter,
        grayscale: c["grayscale"].as_bool().unwrap(),
        blur_radius: c["blur"].as_f64().map(|r| r as f32),
        solarize: c["solarize"].as_bool().unwrap(),
    }
}

#[test]
fn views_match_torchvision_on_fixed_parameters() {
    let t = read_safetensors("views.safetensors");
    let manifest = read_json("manifest.json");
    let img = load_rgb(fixtures().join("preprocess/chelsea.png"), &DecodeOptions::default()).unwrap();
    let aug = DataAugmentationDino::new(DinoAugmentConfig::default()).unwrap();
    let cases = manifest["views"]["cases"].as_array().unwrap();
    assert!(cases.len() >= 4);
    for (k, c) in cases.iter().enumerate() {
        let p = view_params(c);
        let resized_ref = image(&t, &format!("case{k}.resized"));
        let u8_ref = image(&t, &format!("case{k}.u8"));
        // 1. the resized crop: Pillow's bicubic, exact.
        let cropped =
            ::image::imageops::crop_imm(&img, p.crop.left, p.crop.top, p.crop.width, p.crop.height).to_image();
        let resized = vista::image::resize_exact(&cropped, p.size, p.size, vista::image::Filter::Bicubic).unwrap();
        let (max_resize, n_resize) = diff(&resized, &resized_ref);
        assert_eq!(max_resize, 0, "case{k}: resized crop: {n_resize} values differ");
        // 2. everything after the resize, from Pillow's resized crop: exact.
        let mut ours = resized_ref.clone();
        p.apply_pixel_ops(&mut ours);
        let (max_ops, n_ops) = diff(&ours, &u8_ref);
        assert_eq!(max_ops, 0, "case{k}: pixel ops after the reference resize: {n_ops} values differ");
        // 3. ToTensor + Normalize: exact, channels-last.
        let view = aug.normalize(&u8_ref);
        let (shape, Data::F32(tensor)) = &t[&format!("case{k}.tensor")] else { panic!("tensor") };
        assert_eq!(shape, &vec![view.height, view.width, 3]);
        let max_norm = view.data.iter().zip(tensor).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(max_norm <= 1e-6, "case{k}: normalisation max diff {max_norm}");
        // 4. end to end.
        let e2e = p.apply(&img).unwrap();
        let (max_e2e, n_e2e) = diff(&e2e, &u8_ref);
        let total = e2e.as_raw().len();
        println!(
            "case{k}: resize {n_resize}/{total} values off (max {max_resize}); end to end {n_e2e}/{total} off \
             (max {max_e2e})"
        );
        assert_eq!(max_e2e, 0, "case{k}: {n_e2e}/{total} values differ end to end");
    }
}

// ---------------------------------------------------------------------------------------------
// RandomResizedCrop statistics against torchvision
// ---------------------------------------------------------------------------------------------

const N_CROPS: usize = 20_000;

fn crop_quantities(b: &CropBox, width: u32, height: u32) -> [f64; 4] {
    let (i, j, h, w) = (b.top as f64, b.left as f64, b.height as f64, b.width as f64);
    [
        h * w / (f64::from(height) * f64::from(width)),
        (w / h).ln(),
        (j + w / 2.0) / f64::from(width),
        (i + h / 2.0) / f64::from(height),
    ]
}

#[test]
fn crop_distribution_matches_torchvision() {
    let g = read_json("crop_stats.json");
    let names = ["area_fraction", "log_ratio", "center_x", "center_y"];
    for (case_idx, c) in g["cases"].as_array().unwrap().iter().enumerate() {
        let name = c["name"].as_str().unwrap();
        let (w, h) = (c["width"].as_u64().unwrap() as u32, c["height"].as_u64().unwrap() as u32);
        let pair = |k: &str| {
            let a = c[k].as_array().unwrap();
            (a[0].as_f64().unwrap(), a[1].as_f64().unwrap())
        };
        let (scale, ratio) = (pair("scale"), pair("ratio"));
        let n_ref = c["n"].as_u64().unwrap() as f64;
        let mut rng = sample_rng(2024, case_idx as u64, 0);
        let boxes: Vec<CropBox> =
            (0..N_CROPS).map(|_| random_resized_crop_params(w, h, scale, ratio, &mut rng)).collect();
        let q: Vec<[f64; 4]> = boxes.iter().map(|b| crop_quantities(b, w, h)).collect();
        let n = N_CROPS as f64;
        let ks_tol = 1.95 * ((n + n_ref) / (n * n_ref)).sqrt();
        let mut report = Vec::new();
        for (qi, qname) in names.iter().enumerate() {
            let s = &c["stats"][*qname];
            let vals: Vec<f64> = q.iter().map(|v| v[qi]).collect();
            // KS on the grid
            let grid: Vec<f64> = s["cdf_grid"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            let cdf: Vec<f64> = s["cdf"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            let mut ks = 0f64;
            for (e, fref) in grid.iter().zip(&cdf) {
                let ours = vals.iter().filter(|v| **v <= *e).count() as f64 / n;
                ks = ks.max((ours - fref).abs());
            }
            assert!(ks <= ks_tol, "{name}.{qname}: KS distance {ks:.4} > {ks_tol:.4}");
            // means
            let mean = vals.iter().sum::<f64>() / n;
            let (mref, sref) = (s["mean"].as_f64().unwrap(), s["std"].as_f64().unwrap());
            let sigma = (sref * sref / n + sref * sref / n_ref).sqrt();
            assert!(
                (mean - mref).abs() <= 4.5 * sigma + 1e-12,
                "{name}.{qname}: mean {mean:.5} vs torchvision {mref:.5} (sigma {sigma:.2e})"
            );
            // support
            let (lo, hi) = (
                vals.iter().cloned().fold(f64::INFINITY, f64::min),
                vals.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
            );
            let (rlo, rhi) = (s["min"].as_f64().unwrap(), s["max"].as_f64().unwrap());
            assert!(lo >= rlo - 0.05 && hi <= rhi + 0.05, "{name}.{qname}: range [{lo}, {hi}] vs [{rlo}, {rhi}]");
            report.push(format!("{qname} KS {ks:.4} mean {mean:.4}/{mref:.4}"));
        }
        // fallback rate (only the tall image falls back often)
        let fb: Vec<u32> =
            c["stats"]["fallback_box"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let fb = CropBox { top: fb[0], left: fb[1], height: fb[2], width: fb[3] };
        assert_eq!(central_crop_fallback(w, h, ratio), fb, "{name}: fallback box");
        let p_ref = c["stats"]["fallback_fraction_upper_bound"].as_f64().unwrap();
        let p_ours = boxes.iter().filter(|b| **b == fb).count() as f64 / n;
        let sigma = ((p_ref * (1.0 - p_ref)).max(1.0 / n) / n * 2.0).sqrt();
        assert!((p_ours - p_ref).abs() <= 4.5 * sigma, "{name}: fallback-box rate {p_ours} vs {p_ref}");
        println!("{name}: {} | fallback {p_ours:.4}/{p_ref:.4} (KS tol {ks_tol:.4})", report.join(", "));
    }
}

#[test]
fn crops_respect_scale_and_ratio_bounds() {
    let mut rng = sample_rng(5, 0, 0);
    let sizes = [(512u32, 512u32), (451, 300), (28, 28), (19, 64), (64, 19), (1, 1), (2, 3), (1000, 7)];
    for &(w, h) in &sizes {
        for scale in [(0.4, 1.0), (0.05, 0.4), (0.08, 1.0)] {
            let fb = central_crop_fallback(w, h, DEFAULT_RATIO);
            for _ in 0..3000 {
                let b = random_resized_crop_params(w, h, scale, DEFAULT_RATIO, &mut rng);
                assert!(b.width >= 1 && b.height >= 1 && b.left + b.width <= w && b.top + b.height <= h, "{b:?}");
                if b == fb {
                    continue; // the fallback (or a draw identical to it)
                }
                // w = round(sqrt(A r)), h = round(sqrt(A / r)) for some A in scale * area, r in ratio.
                let (bw, bh) = (f64::from(b.width), f64::from(b.height));
                let area = f64::from(w) * f64::from(h);
                let (amin, amax) = ((bw - 0.5) * (bh - 0.5), (bw + 0.5) * (bh + 0.5));
                assert!(amax >= scale.0 * area && amin <= scale.1 * area, "{w}x{h} {scale:?}: {b:?} area");
                let (rmin, rmax) = ((bw - 0.5) / (bh + 0.5), (bw + 0.5) / (bh - 0.5).max(1e-9));
                assert!(rmax >= DEFAULT_RATIO.0 && rmin <= DEFAULT_RATIO.1, "{w}x{h}: {b:?} ratio");
            }
        }
    }
}

/// One-sample KS distance of `vals` against the uniform CDF on `[a, b]`.
fn ks_uniform(vals: &mut [f64], a: f64, b: f64) -> f64 {
    vals.sort_by(|x, y| x.partial_cmp(y).unwrap());
    let n = vals.len() as f64;
    let mut d = 0f64;
    for (i, v) in vals.iter().enumerate() {
        let f = ((v - a) / (b - a)).clamp(0.0, 1.0);
        d = d.max((f - i as f64 / n).abs()).max(((i + 1) as f64 / n - f).abs());
    }
    d
}

#[test]
fn aspect_ratio_is_log_uniform_and_area_uniform() {
    // A large image and local scales: every first attempt is accepted, rounding is negligible.
    let (w, h) = (6000u32, 6000u32);
    let mut rng = sample_rng(9, 0, 0);
    let boxes: Vec<CropBox> =
        (0..N_CROPS).map(|_| random_resized_crop_params(w, h, (0.05, 0.4), DEFAULT_RATIO, &mut rng)).collect();
    let mut log_r: Vec<f64> = boxes.iter().map(|b| (f64::from(b.width) / f64::from(b.height)).ln()).collect();
    let mut area: Vec<f64> = boxes.iter().map(|b| f64::from(b.width) * f64::from(b.height) / 36e6).collect();
    let tol = 2.0 / (N_CROPS as f64).sqrt() + 0.002; // α ≈ 3e-4, + rounding of the sides
    let d_ratio = ks_uniform(&mut log_r, DEFAULT_RATIO.0.ln(), DEFAULT_RATIO.1.ln());
    let d_area = ks_uniform(&mut area, 0.05, 0.4);
    println!("log-uniform ratio KS {d_ratio:.4}, uniform area KS {d_area:.4} (tol {tol:.4})");
    assert!(d_ratio <= tol && d_area <= tol);
    // And it is not uniform in the ratio itself (the test can tell the two apart).
    let mut r: Vec<f64> = log_r.iter().map(|v| v.exp()).collect();
    assert!(ks_uniform(&mut r, DEFAULT_RATIO.0, DEFAULT_RATIO.1) > 3.0 * tol);
}

// ---------------------------------------------------------------------------------------------
// Probabilities of the random steps
// ---------------------------------------------------------------------------------------------

fn binomial_ok(name: &str, hits: usize, n: usize, p: f64) {
    let expected = n as f64 * p;
    let sigma = (n as f64 * p * (1.0 - p)).sqrt();
    if p == 0.0 || p == 1.0 {
        assert_eq!(hits as f64, expected, "{name}: {hits}/{n}, p = {p}");
    } else {
        assert!(
            (hits as f64 - expected).abs() <= 4.0 * sigma,
            "{name}: {hits}/{n}, expected {expected:.0} ± {sigma:.1}"
        );
    }
}

#[test]
fn random_steps_have_dino_probabilities() {
    let aug = DataAugmentationDino::new(DinoAugmentConfig::default()).unwrap();
    let n_img = 4000;
    // view kinds: global1, global2, local (8 per image)
    let mut params: [Vec<ViewParams>; 3] = Default::default();
    for i in 0..n_img {
        let v = aug.sample_params(500, 375, &mut sample_rng(1, i, 0));
        assert_eq!(v.len(), 10);
        params[0].push(v[0]);
        params[1].push(v[1]);
        params[2].extend_from_slice(&v[2..]);
    }
    // (flip, jitter, grayscale, blur, solarize) per kind
    let probs = [[0.5, 0.8, 0.2, 1.0, 0.0], [0.5, 0.8, 0.2, 0.1, 0.2], [0.5, 0.8, 0.2, 0.5, 0.0]];
    let mut first_op = [0usize; 4];
    let mut n_jitter = 0;
    let (mut sum_b, mut sum_c, mut sum_s, mut sum_h, mut sum_r, mut n_r) = (0f64, 0f64, 0f64, 0f64, 0f64, 0usize);
    for (kind, ps) in params.iter().enumerate() {
        let n = ps.len();
        let count = |f: &dyn Fn(&ViewParams) -> bool| ps.iter().filter(|p| f(p)).count();
        let name = ["global1", "global2", "local"][kind];
        binomial_ok(&format!("{name} flip"), count(&|p| p.flip), n, probs[kind][0]);
        binomial_ok(&format!("{name} jitter"), count(&|p| p.jitter.is_some()), n, probs[kind][1]);
        binomial_ok(&format!("{name} grayscale"), count(&|p| p.grayscale), n, probs[kind][2]);
        binomial_ok(&format!("{name} blur"), count(&|p| p.blur_radius.is_some()), n, probs[kind][3]);
        binomial_ok(&format!("{name} solarize"), count(&|p| p.solarize), n, probs[kind][4]);
        for p in ps {
            assert_eq!(p.size, if kind < 2 { 224 } else { 96 });
            if let Some(j) = &p.jitter {
                let mut seen = [false; 4];
                for op in j.order {
                    seen[op as usize] = true;
                }
                assert!(seen.iter().all(|s| *s), "{:?} is not a permutation", j.order);
                first_op[j.order[0] as usize] += 1;
                n_jitter += 1;
                let (b, c, s, h) = (j.brightness.unwrap(), j.contrast.unwrap(), j.saturation.unwrap(), j.hue.unwrap());
                assert!((0.6..=1.4).contains(&b) && (0.6..=1.4).contains(&c), "{b} {c}");
                assert!((0.8..=1.2).contains(&s) && (-0.1..=0.1).contains(&h), "{s} {h}");
                sum_b += f64::from(b);
                sum_c += f64::from(c);
                sum_s += f64::from(s);
                sum_h += f64::from(h);
            }
            if let Some(r) = p.blur_radius {
                assert!((0.1..=2.0).contains(&r), "{r}");
                sum_r += f64::from(r);
                n_r += 1;
            }
        }
    }
    for (op, &k) in first_op.iter().enumerate() {
        binomial_ok(&format!("jitter op {op} first"), k, n_jitter, 0.25);
    }
    // Uniform factors: mean within 4 σ (σ of a mean of U(a, b) = (b - a) / sqrt(12 n)).
    let nj = n_jitter as f64;
    let check_mean = |name: &str, sum: f64, n: f64, a: f64, b: f64| {
        let (mean, sigma) = (sum / n, (b - a) / (12.0 * n).sqrt());
        assert!((mean - (a + b) / 2.0).abs() <= 4.0 * sigma, "{name}: mean {mean}");
    };
    check_mean("brightness", sum_b, nj, 0.6, 1.4);
    check_mean("contrast", sum_c, nj, 0.6, 1.4);
    check_mean("saturation", sum_s, nj, 0.8, 1.2);
    check_mean("hue", sum_h, nj, -0.1, 0.1);
    check_mean("blur radius", sum_r, n_r as f64, 0.1, 2.0);
}

#[test]
fn applied_steps_show_in_the_pixels() {
    // The sampled decisions reach the pixels: a view with grayscale has equal channels, a
    // solarized one has no value >= 128 where the unsolarized had >= 128, etc. Checked through
    // apply vs apply_pixel_ops consistency on sampled parameters.
    let img = load_rgb(fixtures().join("preprocess/astronaut.png"), &DecodeOptions::default()).unwrap();
    let aug = DataAugmentationDino::new(DinoAugmentConfig::dino(64, 24, (0.4, 1.0), (0.05, 0.4), 4)).unwrap();
    let mut n_gray = 0;
    for i in 0..200 {
        for p in aug.sample_params(img.width(), img.height(), &mut sample_rng(3, i, 0)) {
            let v = p.apply(&img).unwrap();
            assert_eq!(v.dimensions(), (p.size, p.size));
            if p.grayscale && !p.solarize {
                n_gray += 1;
                assert!(v.pixels().all(|px| px[0] == px[1] && px[1] == px[2]));
            }
        }
    }
    assert!(n_gray > 50);
}

// ---------------------------------------------------------------------------------------------
// Reproducibility, small and greyscale images, output layout
// ---------------------------------------------------------------------------------------------

fn bits(v: &vista::image::augment::Views) -> Vec<u32> {
    v.globals.iter().chain(&v.locals).flat_map(|x| x.data.iter().map(|f| f.to_bits())).collect()
}

#[test]
fn reproducible_per_sample_whatever_the_thread() {
    let img = load_rgb(fixtures().join("preprocess/chelsea.png"), &DecodeOptions::default()).unwrap();
    let aug = DataAugmentationDino::new(DinoAugmentConfig::dino(64, 32, (0.4, 1.0), (0.05, 0.4), 3)).unwrap();
    let a = aug.augment_sample(&img, 42, 7, 3).unwrap();
    let b = aug.augment_sample(&img, 42, 7, 3).unwrap();
    assert_eq!(bits(&a), bits(&b), "same (seed, index, epoch) must give the same bytes");
    assert_ne!(bits(&a), bits(&aug.augment_sample(&img, 42, 8, 3).unwrap()), "another index");
    assert_ne!(bits(&a), bits(&aug.augment_sample(&img, 42, 7, 4).unwrap()), "another epoch");
    assert_ne!(bits(&a), bits(&aug.augment_sample(&img, 43, 7, 3).unwrap()), "another seed");
    // Views within one sample differ too.
    assert_ne!(a.globals[0].data, a.globals[1].data);
    // Parallel (rayon, any order) = sequential.
    let seq: Vec<Vec<u32>> = (0..12).map(|i| bits(&aug.augment_sample(&img, 1, i, 0).unwrap())).collect();
    let par: Vec<Vec<u32>> = (0..12u32)
        .into_par_iter()
        .rev()
        .map(|i| bits(&aug.augment_sample(&img, 1, u64::from(i), 0).unwrap()))
        .collect();
    let par: Vec<Vec<u32>> = par.into_iter().rev().collect();
    assert_eq!(seq, par);
}

#[test]
fn small_and_greyscale_images() {
    // Fashion-MNIST-like: 28x28 greyscale, converted to RGB, views 28 and 12.
    let mut g = ::image::GrayImage::new(28, 28);
    for (x, y, p) in g.enumerate_pixels_mut() {
        p.0 = [((x * 9 + y * 5) % 256) as u8];
    }
    let rgb = ::image::DynamicImage::ImageLuma8(g).to_rgb8();
    let aug = DataAugmentationDino::new(DinoAugmentConfig::dino(28, 12, (0.4, 1.0), (0.05, 0.4), 6)).unwrap();
    for i in 0..50 {
        let (globals, locals) = aug.augment_images(&rgb, &mut sample_rng(0, i, 0)).unwrap();
        assert_eq!((globals.len(), locals.len()), (2, 6));
        for v in &globals {
            assert_eq!(v.dimensions(), (28, 28));
        }
        for v in &locals {
            assert_eq!(v.dimensions(), (12, 12));
        }
        // Every step keeps a grey image grey (hue and saturation are no-ops on it).
        for v in globals.iter().chain(&locals) {
            assert!(v.pixels().all(|p| p[0] == p[1] && p[1] == p[2]), "sample {i}: colour appeared");
        }
        let views = aug.augment(&rgb, &mut sample_rng(0, i, 0)).unwrap();
        assert_eq!(views.globals[0].data.len(), 28 * 28 * 3);
        assert_eq!(views.locals[0].data.len(), 12 * 12 * 3);
    }
    // Degenerate sizes still work.
    for (w, h) in [(1u32, 1u32), (2, 3), (40, 1)] {
        let img = RgbImage::from_pixel(w, h, ::image::Rgb([200, 30, 90]));
        let views = aug.augment(&img, &mut sample_rng(0, 0, 0)).unwrap();
        assert_eq!(views.locals.len(), 6);
    }
    assert!(aug.augment(&RgbImage::new(0, 5), &mut sample_rng(0, 0, 0)).is_err());
}

#[test]
fn output_is_normalised_channels_last() {
    let aug = DataAugmentationDino::new(DinoAugmentConfig::default()).unwrap();
    let img = RgbImage::from_fn(5, 4, |x, y| ::image::Rgb([(x * 50) as u8, (y * 60) as u8, 17]));
    let v = aug.normalize(&img);
    assert_eq!((v.height, v.width, v.data.len()), (4, 5, 60));
    for (x, y, p) in img.enumerate_pixels() {
        for c in 0..3 {
            let expect = (p[c] as f32 / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
            assert_eq!(v.data[((y * 5 + x) * 3) as usize + c], expect);
        }
    }
}

#[test]
fn invalid_configurations_are_errors() {
    let mut c = DinoAugmentConfig::default();
    c.local.scale = (0.5, 0.1);
    assert!(DataAugmentationDino::new(c).is_err());
    let mut c = DinoAugmentConfig::default();
    c.global2.solarize_p = 1.5;
    assert!(DataAugmentationDino::new(c).is_err());
    let mut c = DinoAugmentConfig::default();
    c.global1.jitter.hue = 0.7;
    assert!(DataAugmentationDino::new(c).is_err());
    let mut c = DinoAugmentConfig::default();
    c.local.size = 0;
    assert!(DataAugmentationDino::new(c).is_err());
}

/// Small PNGs for the docs (best compression, adaptive filters).
fn save_png(img: &RgbImage, path: &Path) {
    use ::image::codecs::png::{CompressionType, FilterType, PngEncoder};
    use ::image::ImageEncoder;
    let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    PngEncoder::new_with_quality(file, CompressionType::Best, FilterType::Adaptive)
        .write_image(img.as_raw(), img.width(), img.height(), ::image::ExtendedColorType::Rgb8)
        .unwrap();
}

/// Regenerates the pictures of docs/augmentations.md (default configuration, seed 0, epoch 0,
/// the first image index whose views show solarization and grayscale):
/// `cargo test --release -p vista --test suite -- --ignored render_doc_images --nocapture`.
#[test]
#[ignore]
fn render_doc_images() {
    let img = load_rgb(fixtures().join("preprocess/astronaut.png"), &DecodeOptions::default()).unwrap();
    let aug = DataAugmentationDino::new(DinoAugmentConfig::default()).unwrap();
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/img/augment");
    std::fs::create_dir_all(&out).unwrap();
    let (index, params) = (0u64..)
        .map(|i| (i, aug.sample_params(img.width(), img.height(), &mut sample_rng(0, i, 0))))
        .find(|(_, p)| {
            p[0].jitter.is_some() && p[1].solarize && (p[2].grayscale || p[3].grayscale) && p[2].jitter.is_some()
        })
        .unwrap();
    println!("image index {index}");
    let names = ["global1.png", "global2.png", "local1.png", "local2.png"];
    for (name, p) in names.iter().zip(&params) {
        save_png(&p.apply(&img).unwrap(), &out.join(name));
        println!("{name}: {p:?}");
    }
    let thumb = vista::image::resize_exact(&img, 112, 112, vista::image::Filter::Bicubic).unwrap();
    save_png(&thumb, &out.join("input.png"));
}
