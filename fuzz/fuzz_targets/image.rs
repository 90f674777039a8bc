#![no_main]
//! Image decoding (every format the `image` crate reads here), then CLIP's preprocessing under
//! each transparency rule.
use libfuzzer_sys::fuzz_target;
use vista::image::{decode_image, AlphaRule, ClipPreprocess, DecodeOptions};

fuzz_target!(|data: &[u8]| {
    let options = DecodeOptions::with_max_pixels(1 << 22);
    if let Ok(img) = decode_image(data, "fuzz", &options) {
        for alpha in [AlphaRule::Premultiplied, AlphaRule::OverWhite, AlphaRule::Drop] {
            let p = ClipPreprocess { alpha, ..ClipPreprocess::openai(16) };
            let out = p.prepare(&img);
            assert_eq!(out.dimensions(), (16, 16));
        }
    }
});
