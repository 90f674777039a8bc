//! Each checkpoint family exactly as its own reference: transformers' `CLIPTokenizer` for
//! transformers-layout CLIP checkpoints, each family's treatment of transparent images, and
//! transformers' DINO image processors (fixtures from `tools/reference/gen_family.py` and
//! `tools/reference/gen_tokenizer.py`).
//!
//! Tolerances: token ids are exact. Pixels are compared as uint8 before normalisation and must
//! be identical (the resize is Pillow's own fixed-point arithmetic, `src/image/resize.rs`;
//! compositing onto white and open_clip's premultiplied resize are exact too), also where the
//! alpha is small, where open_clip's division by the resized alpha would magnify any error.
//! Normalised floats must then equal the reference's wherever the uint8 values agree (1e-6).

use crate::common;

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;

use serde_json::Value;
use vista::clip::pipeline::tokenizer_for;
use vista::clip::tokenizer::{builtin_tokenizer_json, ClipTokenizer, HfTokenizer, TextTokenizer};
use vista::dino::preprocess::Mode;
use vista::dino::DinoPreprocess;
use vista::image::{load_image, AlphaRule, ClipPreprocess, CropRounding, DecodeOptions, Decoded, Filter, RgbImage};
use vista::weights::clip::ClipFamily;

fn dir() -> PathBuf {
    common::fixtures().join("family")
}

fn tok_dir() -> PathBuf {
    common::fixtures().join("tokenizer")
}

/// Golden tensors by name: (shape, values in f32, uint8 ones converted).
type Goldens = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// The golden tensors.
fn golden() -> &'static Goldens {
    static G: std::sync::OnceLock<Goldens> = std::sync::OnceLock::new();
    G.get_or_init(|| {
        let path = dir().join("golden.safetensors");
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
        st.tensors()
            .into_iter()
            .map(|(name, t)| {
                let values = match t.dtype() {
                    safetensors::Dtype::U8 => t.data().iter().map(|&v| f32::from(v)).collect(),
                    safetensors::Dtype::F32 => {
                        t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
                    }
                    d => panic!("{name}: unexpected dtype {d:?}"),
                };
                (name, (t.shape().to_vec(), values))
            })
            .collect()
    })
}

fn gold(name: &str) -> &'static [f32] {
    &golden().get(name).unwrap_or_else(|| panic!("golden tensor {name} missing")).1
}

fn image(name: &str) -> Decoded {
    load_image(dir().join(name), &DecodeOptions::default()).unwrap()
}

const IMAGES: [&str; 4] = ["rgba_233x157", "la_61x90", "palette_trns_80x50", "photo_640x427"];
const CLIP_SIZES: [u32; 2] = [224, 33];

// ---------------------------------------------------------------------------------------------
// Tokenizer
// ---------------------------------------------------------------------------------------------

fn hf_cases() -> Vec<(String, Vec<u32>)> {
    let path = tok_dir().join("hf_clip_tokenizer.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(v["reference"].as_str().unwrap().starts_with("transformers.CLIPTokenizer"));
    v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let ids = c["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
            (c["text"].as_str().unwrap().to_string(), ids)
        })
        .collect()
}

/// The reference's tokenizer.json, unpacked into a temporary folder.
fn reference_tokenizer_json() -> (tempfile::TempDir, PathBuf) {
    let gz = std::fs::read(tok_dir().join("hf_tokenizer.json.gz")).unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(&gz[..]).read_to_string(&mut text).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("tokenizer.json");
    std::fs::write(&path, text).unwrap();
    (tmp, path)
}

fn check_ids(name: &str, tok: &TextTokenizer) {
    let cases = hf_cases();
    assert!(cases.len() > 200, "{} cases", cases.len());
    let bad: Vec<_> = cases
        .iter()
        .filter_map(|(text, want)| {
            let got = tok.tokenize(text, 77).unwrap();
            (&got != want).then(|| format!("{text:?}\n  transformers {want:?}\n  vista        {got:?}"))
        })
        .collect();
    assert!(bad.is_empty(), "{name}: {} of {} cases differ:\n{}", bad.len(), cases.len(), bad.join("\n"));
}

#[test]
fn transformers_tokenizer_json_gives_the_reference_ids() {
    let (_tmp, path) = reference_tokenizer_json();
    check_ids("tokenizer.json", &tokenizer_for(ClipFamily::HuggingFace, Some(&path)).unwrap());
}

#[test]
fn transformers_rules_without_a_tokenizer_json_give_the_reference_ids() {
    let tok = tokenizer_for(ClipFamily::HuggingFace, None).unwrap();
    assert!(matches!(tok, TextTokenizer::Transformers(_)));
    check_ids("built-in vocabulary", &tok);
    // The built-in one is the reference's file, part for part.
    let (_tmp, path) = reference_tokenizer_json();
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let ours = builtin_tokenizer_json().unwrap();
    for key in ["added_tokens", "normalizer", "pre_tokenizer", "post_processor", "decoder"] {
        assert_eq!(ours[key], reference[key], "tokenizer.json `{key}`");
    }
    for key in ["type", "unk_token", "end_of_word_suffix", "continuing_subword_prefix", "fuse_unk", "vocab", "merges"] {
        assert_eq!(ours["model"][key], reference["model"][key], "tokenizer.json model `{key}`");
    }
}

#[test]
fn the_two_families_tokenize_differently_where_their_references_do() {
    let oc = TextTokenizer::OpenClip(std::sync::Arc::new(ClipTokenizer::new().unwrap()));
    let hf = TextTokenizer::Transformers(std::sync::Arc::new(HfTokenizer::openai().unwrap()));
    for text in ["Tom &amp;amp; Jerry", "\u{fb01} ligature", "a <|endoftext|> token", "\u{201c}curly quotes\u{201d}"] {
        assert_ne!(oc.tokenize(text, 77).unwrap(), hf.tokenize(text, 77).unwrap(), "{text:?}");
    }
    // ...and alike on plain text, up to the padding (open_clip pads with 0, transformers with
    // <|endoftext|>).
    let (a, b) = (oc.tokenize("a photo of a dog", 77).unwrap(), hf.tokenize("a photo of a dog", 77).unwrap());
    assert_eq!(a[..7], b[..7]);
    assert_eq!((a[7], b[7]), (0, 49407));
    assert_eq!(hf.decode(&b[1..6]).unwrap(), "a photo of a dog");
}

#[test]
fn a_bad_tokenizer_json_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("tokenizer.json");
    std::fs::write(&path, "{\"model\": 3}").unwrap();
    let err = HfTokenizer::from_file(&path).unwrap_err().to_string();
    assert!(err.contains("tokenizer.json"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Transparency
// ---------------------------------------------------------------------------------------------

/// Our uint8 crop vs the reference's, `[S, S, 3]` both: identical; `alpha` (the reference's
/// resized alpha) reports the pixels of alpha < 64 apart.
fn compare_u8(what: &str, ours: &RgbImage, reference: &[f32], alpha: Option<&[f32]>) {
    let ours: Vec<f32> = ours.as_raw().iter().map(|&v| f32::from(v)).collect();
    assert_eq!(ours.len(), reference.len(), "{what}: size");
    let mut same = 0usize;
    let mut worst = 0f32;
    let mut worst_masked = 0f32;
    for (i, (a, b)) in ours.iter().zip(reference).enumerate() {
        let d = (a - b).abs();
        same += usize::from(d == 0.0);
        match alpha {
            Some(al) if al[i / 3] < 64.0 => worst_masked = worst_masked.max(d),
            _ => worst = worst.max(d),
        }
    }
    let frac = same as f64 / ours.len() as f64;
    assert!(
        worst == 0.0 && worst_masked == 0.0,
        "{what}: max |diff| {worst} ({worst_masked} where alpha < 64), {:.3} % identical",
        frac * 100.0
    );
    eprintln!("{what}: {:.3} % identical, max {worst}, max where alpha < 64: {worst_masked}", frac * 100.0);
}

/// Normalised planar floats of `ours` equal `reference` (`[3, S, S]`) wherever the uint8 values
/// agree with `reference_u8` (`[S, S, 3]`).
fn compare_normalised(what: &str, p: &ClipPreprocess, ours: &RgbImage, reference: &[f32], reference_u8: &[f32]) {
    let s = p.size as usize;
    let mut planar = vec![0f32; 3 * s * s];
    p.normalize_into(ours, &mut planar).unwrap();
    let mut checked = 0;
    for y in 0..s {
        for x in 0..s {
            for c in 0..3 {
                let hwc = (y * s + x) * 3 + c;
                if f32::from(ours.as_raw()[hwc]) == reference_u8[hwc] {
                    let chw = c * s * s + y * s + x;
                    let d = (planar[chw] - reference[chw]).abs();
                    assert!(d <= 1e-6, "{what}: value ({c},{y},{x}) normalised {} vs {}", planar[chw], reference[chw]);
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 0, "{what}: nothing compared");
}

#[test]
fn open_clip_resizes_transparent_images_premultiplied() {
    for img in ["rgba_233x157", "la_61x90", "photo_640x427"] {
        let decoded = image(&format!("{img}.png"));
        for s in CLIP_SIZES {
            let p = ClipPreprocess::openai(s);
            assert_eq!(p.alpha, AlphaRule::Premultiplied);
            let ours = p.prepare(&decoded);
            let what = format!("open_clip {img} at {s}");
            let alpha = golden().get(&format!("openclip_alpha/{img}/{s}")).map(|g| g.1.as_slice());
            compare_u8(&what, &ours, gold(&format!("openclip_u8/{img}/{s}")), alpha);
            if let Some((_, floats)) = golden().get(&format!("openclip/{img}/{s}")) {
                compare_normalised(&what, &p, &ours, floats, gold(&format!("openclip_u8/{img}/{s}")));
            }
        }
    }
}

#[test]
fn transformers_composites_transparent_images_onto_white() {
    for img in IMAGES {
        let decoded = image(&format!("{img}.png"));
        for s in CLIP_SIZES {
            let p = ClipPreprocess::hugging_face(s);
            let ours = p.prepare(&decoded);
            let what = format!("transformers {img} at {s}");
            compare_u8(&what, &ours, gold(&format!("hf_u8/{img}/{s}")), None);
            if let Some((_, floats)) = golden().get(&format!("hf/{img}/{s}")) {
                compare_normalised(&what, &p, &ours, floats, gold(&format!("hf_u8/{img}/{s}")));
            }
        }
    }
}

#[test]
fn the_families_differ_on_transparent_pixels() {
    // A guard on the fixtures: were both references alike here, the tests above could not tell
    // the rules apart.
    let (oc, hf) = (gold("openclip_u8/rgba_233x157/224"), gold("hf_u8/rgba_233x157/224"));
    let mean = oc.iter().zip(hf).map(|(a, b)| (a - b).abs()).sum::<f32>() / oc.len() as f32;
    assert!(mean > 20.0, "mean |open_clip - transformers| = {mean}");
    let decoded = image("rgba_233x157.png");
    assert!(matches!(decoded, Decoded::Rgba { alpha_channel: true, .. }));
    assert!(matches!(image("palette_trns_80x50.png"), Decoded::Rgba { alpha_channel: false, .. }));
    assert!(matches!(image("photo_640x427.png"), Decoded::Rgb(_)));
}

// ---------------------------------------------------------------------------------------------
// DINO preprocessing
// ---------------------------------------------------------------------------------------------

/// The 8-bit image `p` gives the model for `decoded` against the reference's (`[224, 224, 3]`,
/// recovered exactly from its normalised output by the generator).
fn compare_dino(what: &str, p: &DinoPreprocess, decoded: &Decoded, reference: &[f32]) {
    let prepared = p.prepare(&p.flatten(decoded), 14).unwrap();
    assert_eq!(prepared.dimensions(), (224, 224), "{what}");
    compare_u8(what, &prepared, reference, None);
}

#[test]
fn transformers_dino_checkpoints_follow_their_processor_config() {
    let v2 = DinoPreprocess::from_hf_processor(&dir().join("dinov2_preprocessor_config.json")).unwrap();
    assert_eq!(v2.mode, Mode::Eval { resize_shortest: 256, crop: 224 });
    assert_eq!((v2.crop, v2.alpha, v2.filter), (CropRounding::Floor, AlphaRule::OverWhite, Filter::Bicubic));
    let vit = DinoPreprocess::from_hf_processor(&dir().join("dino_vit_preprocessor_config.json")).unwrap();
    assert_eq!(vit.mode, Mode::Fixed { width: 224, height: 224 });
    assert_eq!(vit.filter, Filter::Bilinear);
    let official = DinoPreprocess::eval();
    assert_eq!((official.crop, official.alpha), (CropRounding::Torchvision, AlphaRule::Drop));
    for img in IMAGES {
        let decoded = image(&format!("{img}.png"));
        compare_dino(&format!("dinov2 processor {img}"), &v2, &decoded, gold(&format!("dinov2_hf/{img}")));
        // transformers' ViTImageProcessor does not convert to RGB and refuses transparent images
        // (the manifest lists them); vista composites them onto white, as the DINOv2 processor.
        if let Some((_, g)) = golden().get(&format!("dino_vit_hf/{img}")) {
            compare_dino(&format!("dino-vit processor {img}"), &vit, &decoded, g);
        }
        compare_dino(&format!("official {img}"), &official, &decoded, gold(&format!("dino_official/{img}")));
    }
    assert!(golden().contains_key("dino_vit_hf/photo_640x427"));
    // The 640x427 photo: 383x256 after the resize, a 159-pixel margin that transformers floors
    // to 79 and torchvision rounds to 80. Each rule matches its own reference only.
    let photo = image("photo_640x427.png");
    let crossed = std::panic::catch_unwind(|| {
        compare_dino("official rule vs the transformers reference", &official, &photo, gold("dinov2_hf/photo_640x427"))
    });
    assert!(crossed.is_err(), "a one-pixel crop shift went unnoticed");
}

#[test]
fn unsupported_processor_settings_are_errors_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    for (json, needle) in [
        (
            r#"{"size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224}, "do_center_crop": true, "resample": 1}"#,
            "resample",
        ),
        (r#"{"size": {"shortest_edge": 256}, "do_center_crop": false}"#, "centre crop"),
        (r#"{"size": {"longest_edge": 256}}"#, "size"),
        (r#"{"size": 224, "image_mean": [0.5, 0.5]}"#, "image_mean"),
    ] {
        let path = tmp.path().join("preprocessor_config.json");
        std::fs::write(&path, json).unwrap();
        let err = DinoPreprocess::from_hf_processor(&path).unwrap_err().to_string();
        assert!(err.contains("preprocessor_config.json") && err.contains(needle), "{json}: {err}");
    }
}
