//! CLIP preprocessing parity with torchvision / Pillow (and Hugging Face's CLIPImageProcessor).
//!
//! Goldens: tools/reference/gen_preprocess.py → tests/fixtures/preprocess/ (see its manifest).
//! Every uint8 value must equal the reference's: the resampler is Pillow's fixed-point
//! convolution (22-bit coefficients, the same rounding, the same pass order), not an
//! approximation of it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Device;
use serde_json::Value;
use vista::image::{
    load_rgb, resize_exact, resize_region, ClipPreprocess, CropRounding, DecodeOptions, Filter, Region, RgbImage,
    OPENAI_CLIP_MEAN, OPENAI_CLIP_STD,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/preprocess")
}

fn manifest() -> Value {
    let text = std::fs::read_to_string(fixtures().join("manifest.json")).expect("manifest.json");
    serde_json::from_str(&text).expect("manifest json")
}

struct Golden {
    shape: Vec<usize>,
    u8: Vec<u8>,
    f32: Vec<f32>,
}

/// "golden/x.safetensors:name"
fn golden(spec: &str) -> Golden {
    let (file, name) = spec.split_once(':').expect("file:tensor");
    let bytes = std::fs::read(fixtures().join(file)).expect(file);
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let t = st.tensor(name).unwrap_or_else(|_| panic!("{spec} missing"));
    let shape = t.shape().to_vec();
    match t.dtype() {
        safetensors::Dtype::U8 => Golden { shape, u8: t.data().to_vec(), f32: vec![] },
        safetensors::Dtype::F32 => Golden {
            shape,
            u8: vec![],
            f32: t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        },
        d => panic!("{spec}: unexpected dtype {d:?}"),
    }
}

fn load(name: &str) -> RgbImage {
    load_rgb(fixtures().join(name), &DecodeOptions::default()).expect(name)
}

/// HWC image → CHW bytes, to compare with the [3, H, W] goldens.
fn chw(img: &RgbImage) -> Vec<u8> {
    let (w, h) = img.dimensions();
    let n = (w * h) as usize;
    let mut out = vec![0u8; 3 * n];
    for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * n + i] = px[c];
        }
    }
    out
}

#[derive(Default, Debug, Clone, Copy)]
struct Stats {
    n: usize,
    exact: usize,
    within1: usize,
    max: u8,
}

impl Stats {
    fn of(ours: &[u8], reference: &[u8]) -> Stats {
        assert_eq!(ours.len(), reference.len());
        let mut s = Stats { n: ours.len(), ..Default::default() };
        for (a, b) in ours.iter().zip(reference) {
            let d = a.abs_diff(*b);
            s.exact += (d == 0) as usize;
            s.within1 += (d <= 1) as usize;
            s.max = s.max.max(d);
        }
        s
    }
    fn add(&mut self, o: Stats) {
        self.n += o.n;
        self.exact += o.exact;
        self.within1 += o.within1;
        self.max = self.max.max(o.max);
    }
    fn line(&self) -> String {
        format!(
            "{:>7} values, exact {:>8.4} %, within 1 {:>8.4} %, max diff {}",
            self.n,
            100.0 * self.exact as f64 / self.n as f64,
            100.0 * self.within1 as f64 / self.n as f64,
            self.max
        )
    }
    fn ok(&self) -> bool {
        self.exact == self.n
    }
}

fn rounding(s: &str) -> CropRounding {
    match s {
        "torchvision" => CropRounding::Torchvision,
        "floor" => CropRounding::Floor,
        _ => panic!("unknown crop rounding {s}"),
    }
}

fn preprocess_for(case: &Value) -> ClipPreprocess {
    ClipPreprocess {
        size: case["size"].as_u64().unwrap() as u32,
        resize_shortest: case["resize_shortest"].as_u64().unwrap() as u32,
        crop: rounding(case["crop"].as_str().unwrap()),
        ..ClipPreprocess::openai(224)
    }
}

#[test]
fn resize_crop_matches_torchvision_pillow() {
    let m = manifest();
    let mut failures = vec![];
    let mut total = Stats::default();
    let mut photos = Stats::default();
    let mut images: BTreeMap<String, RgbImage> = BTreeMap::new();
    for case in m["preprocess_cases"].as_array().unwrap() {
        let image = case["image"].as_str().unwrap();
        let img = images.entry(image.to_string()).or_insert_with(|| load(image));
        let p = preprocess_for(case);
        // the geometry first
        let (w, h) = img.dimensions();
        let resized: Vec<u64> = case["resized"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        assert_eq!(p.resized_size(w, h), (resized[0] as u32, resized[1] as u32), "{case}");
        let lt: Vec<i64> = case["crop_left_top"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        assert_eq!(p.crop_offset(w, h), (lt[0], lt[1]), "{case}");

        let g = golden(case["tensor"].as_str().unwrap());
        assert_eq!(g.shape, vec![3, p.size as usize, p.size as usize]);
        let out = p.resize_crop(img);
        assert_eq!(out.dimensions(), (p.size, p.size));
        let s = Stats::of(&chw(&out), &g.u8);
        println!("{:<45} {}", case["tensor"].as_str().unwrap(), s.line());
        total.add(s);
        if !image.starts_with("synth") {
            photos.add(s);
        }
        if !s.ok() {
            failures.push(format!("{}: {}", case["tensor"], s.line()));
        }
    }
    println!("{:<45} {}", "photos", photos.line());
    println!("{:<45} {}", "all preprocess cases", total.line());
    assert!(failures.is_empty(), "parity failures:\n{}", failures.join("\n"));
}

#[test]
fn resize_exact_matches_pillow() {
    let m = manifest();
    let mut failures = vec![];
    for case in m["resize_cases"].as_array().unwrap() {
        let img = load(case["image"].as_str().unwrap());
        let (w, h) = (case["width"].as_u64().unwrap() as u32, case["height"].as_u64().unwrap() as u32);
        let filter = match case["filter"].as_str().unwrap() {
            "bicubic" => Filter::Bicubic,
            "bilinear" => Filter::Bilinear,
            f => panic!("filter {f}"),
        };
        let g = golden(case["tensor"].as_str().unwrap());
        let out = resize_exact(&img, w, h, filter).unwrap();
        let s = Stats::of(&chw(&out), &g.u8);
        println!("{:<45} {}", case["tensor"].as_str().unwrap(), s.line());
        if !s.ok() {
            failures.push(format!("{}: {}", case["tensor"], s.line()));
        }
    }
    assert!(failures.is_empty(), "parity failures:\n{}", failures.join("\n"));
}

/// The float path: to_tensor on the decoded image against open_clip's / HF's own float output,
/// and normalize_into on the reference uint8 crop (which isolates ToTensor + Normalize).
#[test]
fn to_tensor_matches_reference_floats() {
    let m = manifest();
    for case in m["float_cases"].as_array().unwrap() {
        let img = load(case["image"].as_str().unwrap());
        let p = preprocess_for(case);
        assert_eq!(p.mean, OPENAI_CLIP_MEAN);
        assert_eq!(p.std, OPENAI_CLIP_STD);
        let g = golden(case["tensor"].as_str().unwrap());
        let s = p.size as usize;
        assert_eq!(g.shape, vec![3, s, s]);

        let t = p.to_tensor(std::slice::from_ref(&img), &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[1, 3, s, s]);
        let ours: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let diffs: Vec<f32> = ours.iter().zip(&g.f32).map(|(a, b)| (a - b).abs()).collect();
        let max = diffs.iter().cloned().fold(0f32, f32::max);
        let close = diffs.iter().filter(|d| **d <= 1e-5).count();
        println!(
            "{:<45} max |diff| {max:.3e}, {:.3} % within 1e-5",
            case["tensor"].as_str().unwrap(),
            100.0 * close as f64 / diffs.len() as f64
        );
        // The same uint8 crop; HF normalises in float64 (1 ulp).
        assert!(max <= 1e-6, "{case}: max diff {max}");

        // normalize_into on the reference's own uint8 crop
        let u8_spec = format!(
            "{}:r{s}_c{s}_{}",
            case["tensor"].as_str().unwrap().split(':').next().unwrap(),
            case["crop"].as_str().unwrap()
        );
        let gu8 = golden(&u8_spec);
        let n = s * s;
        let hwc: Vec<u8> = (0..n).flat_map(|i| (0..3).map(move |c| (c, i))).map(|(c, i)| gu8.u8[c * n + i]).collect();
        let crop = RgbImage::from_raw(s as u32, s as u32, hwc).unwrap();
        let mut buf = vec![0f32; 3 * n];
        p.normalize_into(&crop, &mut buf).unwrap();
        let max = buf.iter().zip(&g.f32).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        println!("{:<45} normalize_into on the reference crop: max |diff| {max:.3e}", u8_spec);
        // open_clip computes in f32 exactly as we do (0); HF rescales in float64 first (1 ulp)
        assert!(max <= 1e-6, "{u8_spec}: normalize_into max diff {max}");
    }
}

#[test]
fn batch_is_per_image_and_planar() {
    let a = load("synth_portrait_23x37.png");
    let b = load("synth_landscape_301x199.png");
    let p = ClipPreprocess::openai(32);
    let t = p.to_tensor(&[a.clone(), b.clone(), a.clone()], &Device::Cpu).unwrap();
    assert_eq!(t.dims(), &[3, 3, 32, 32]);
    let all: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    for (i, img) in [&a, &b, &a].into_iter().enumerate() {
        let mut one = vec![0f32; 3 * 32 * 32];
        p.normalize_into(&p.resize_crop(img), &mut one).unwrap();
        assert_eq!(&all[i * one.len()..(i + 1) * one.len()], &one[..], "image {i}");
    }
    // channel-planar: plane 0 of image 1 is the red channel
    let crop = p.resize_crop(&b);
    let red0 = (crop.get_pixel(0, 0)[0] as f32 / 255.0 - OPENAI_CLIP_MEAN[0]) / OPENAI_CLIP_STD[0];
    assert_eq!(all[3 * 32 * 32], red0);
    assert!(p.to_tensor(&[RgbImage::new(0, 5)], &Device::Cpu).is_err());
    assert!(ClipPreprocess { size: 0, ..p }.to_tensor(&[a], &Device::Cpu).is_err());
}

/// Computing only a region gives exactly the pixels of resizing everything and cropping (each
/// output position's taps do not depend on the others).
#[test]
fn resize_region_equals_crop_of_full_resize() {
    let img = load("synth_landscape_301x199.png");
    let mut all = Stats::default();
    for (fw, fh, filter) in [
        (338, 224, Filter::Bicubic),
        (150, 400, Filter::Bilinear),
        (301, 97, Filter::Bicubic),
        (64, 199, Filter::Bicubic),
        (280, 40, Filter::Bicubic),  // vertical pass first
        (350, 60, Filter::Bilinear), // vertical first, horizontal upscale
    ] {
        let full = resize_exact(&img, fw, fh, filter).unwrap();
        for r in [
            Region { x: 0, y: 0, width: fw, height: fh },
            Region { x: 7, y: 3, width: fw / 2, height: fh / 3 },
            Region { x: fw - 5, y: fh - 9, width: 5, height: 9 },
            Region { x: 1, y: 0, width: fw - 1, height: 1 },
        ] {
            let part = resize_region(&img, fw, fh, r, filter).unwrap();
            let expected = ::image::imageops::crop_imm(&full, r.x, r.y, r.width, r.height).to_image();
            let s = Stats::of(part.as_raw(), expected.as_raw());
            assert_eq!(s.exact, s.n, "{fw}x{fh} {filter:?} {r:?}: {}", s.line());
            all.add(s);
        }
    }
    println!("resize_region vs crop of resize_exact: {}", all.line());
    // same size: identity
    assert!(resize_exact(&img, 301, 199, Filter::Bicubic).unwrap() == img);
    assert!(resize_exact(&img, 0, 5, Filter::Bicubic).is_err());
    assert!(resize_region(&img, 10, 10, Region { x: 5, y: 0, width: 6, height: 1 }, Filter::Bicubic).is_err());
}
