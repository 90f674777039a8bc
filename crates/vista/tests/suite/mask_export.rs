//! Mask exports (vista::apps::masks): COCO RLE byte-for-byte against pycocotools
//! (tests/fixtures/rle/cases.json, made by tools/reference/gen_rle.py), RLE round-trip
//! properties, polygons and the overlay.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use serde_json::Value;
use vista::apps::segment::overlay::{mask_color, overlay};
use vista::apps::segment::{Mask, PolygonOptions, Rle};
use vista::image::RgbImage;
use vista::Error;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rle")
}

fn golden() -> Value {
    let path = fixtures().join("cases.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn u32_of(v: &Value) -> u32 {
    u32::try_from(v.as_u64().unwrap()).unwrap()
}

/// A mask from the fixture's hex bit string (row-major, MSB first, numpy.packbits order).
fn mask_from_bits(case: &Value) -> Mask {
    let (h, w) = (u32_of(&case["height"]), u32_of(&case["width"]));
    let hex = case["bits"].as_str().unwrap();
    let bytes: Vec<u8> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
    let bits: Vec<bool> = (0..(w * h) as usize).map(|i| bytes[i / 8] & (0x80 >> (i % 8)) != 0).collect();
    Mask::from_bools(w, h, &bits).unwrap()
}

fn bbox_of(case: &Value) -> [u32; 4] {
    let b: Vec<u32> = case["bbox"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let f = v.as_f64().unwrap();
            assert_eq!(f.fract(), 0.0);
            f as u32
        })
        .collect();
    b.try_into().unwrap()
}

fn tmp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vista-masks-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn iou(a: &Mask, b: &Mask) -> f64 {
    assert_eq!((a.width(), a.height()), (b.width(), b.height()));
    let inter = a.data().iter().zip(b.data()).filter(|(&x, &y)| x && y).count();
    let union = a.data().iter().zip(b.data()).filter(|(&x, &y)| x || y).count();
    inter as f64 / union.max(1) as f64
}

fn disk(w: u32, h: u32, cx: f64, cy: f64, r: f64) -> Mask {
    Mask::from_fn(w, h, |x, y| (x as f64 - cx).powi(2) + (y as f64 - cy).powi(2) <= r * r).unwrap()
}

fn rect(w: u32, h: u32, x0: u32, y0: u32, x1: u32, y1: u32) -> Mask {
    Mask::from_fn(w, h, |x, y| (x0..x1).contains(&x) && (y0..y1).contains(&y)).unwrap()
}

// ------------------------------------------------------------------------------------------
// pycocotools goldens
// ------------------------------------------------------------------------------------------

#[test]
fn rle_matches_pycocotools() {
    let g = golden();
    let cases = g["cases"].as_array().unwrap();
    assert!(cases.len() >= 12);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let mask = mask_from_bits(case);
        let (h, w) = (u32_of(&case["size"][0]), u32_of(&case["size"][1]));
        assert_eq!((mask.height(), mask.width()), (h, w), "{name}");
        let counts = case["counts"].as_str().unwrap();

        let rle = Rle::encode(&mask);
        assert_eq!(rle.to_string_counts(), counts, "{name}: encode");
        assert_eq!(rle.to_json_string(), case["json"].as_str().unwrap(), "{name}: json text");
        let expected_json: Value = serde_json::from_str(case["json"].as_str().unwrap()).unwrap();
        assert_eq!(rle.to_json(), expected_json, "{name}: json value");

        let area = case["area"].as_u64().unwrap();
        let bbox = bbox_of(case);
        assert_eq!(rle.area(), area, "{name}: rle area");
        assert_eq!(mask.area(), area, "{name}: mask area");
        assert_eq!(rle.bbox(), bbox, "{name}: rle bbox");
        assert_eq!(mask.bbox(), bbox, "{name}: mask bbox");

        let parsed = Rle::from_string_counts(counts, h, w).unwrap();
        assert_eq!(parsed, rle, "{name}: from_string_counts");
        assert_eq!(parsed.decode(), mask, "{name}: decode");
        assert_eq!(Rle::from_json(&expected_json).unwrap(), rle, "{name}: from_json");

        if let Some(runs) = case.get("uncompressed") {
            let runs: Vec<u32> = runs.as_array().unwrap().iter().map(u32_of).collect();
            assert_eq!(rle.counts(), &runs[..], "{name}: counts");
            let unc = serde_json::json!({"size": [h, w], "counts": runs});
            assert_eq!(Rle::from_json(&unc).unwrap(), rle, "{name}: uncompressed reader");
            assert_eq!(rle.to_json_uncompressed(), unc, "{name}: uncompressed writer");
        }
    }
}

#[test]
fn polygon_rasterisation_matches_pycocotools() {
    let g = golden();
    for case in g["polygons"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let (h, w) = (u32_of(&case["height"]), u32_of(&case["width"]));
        let polys: Vec<Vec<f64>> = case["polygons"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect())
            .collect();
        let mask = Mask::from_polygons(&polys, w, h).unwrap();
        let rle = Rle::encode(&mask);
        assert_eq!(rle.to_string_counts(), case["counts"].as_str().unwrap(), "{name}");
        assert_eq!(rle.area(), case["area"].as_u64().unwrap(), "{name}");
        assert_eq!(rle.bbox(), bbox_of(case), "{name}");
        // Our polygons of that mask rasterise back to it (these have no holes).
        let again = Mask::from_polygons(&mask.to_polygons(&PolygonOptions::default()), w, h).unwrap();
        assert_eq!(again, mask, "{name}: polygons round trip");
    }
}

// ------------------------------------------------------------------------------------------
// RLE properties and edge cases
// ------------------------------------------------------------------------------------------

fn round_trip(mask: &Mask) {
    let rle = Rle::encode(mask);
    let total: u64 = rle.counts().iter().map(|&c| u64::from(c)).sum();
    assert_eq!(total, u64::from(mask.width()) * u64::from(mask.height()));
    assert!(rle.counts().iter().skip(1).all(|&c| c > 0), "canonical runs: {:?}", rle.counts());
    let s = rle.to_string_counts();
    assert!(s.bytes().all(|b| (48..=111).contains(&b)), "{s}");
    let back = Rle::from_string_counts(&s, mask.height(), mask.width()).unwrap();
    assert_eq!(back, rle);
    assert_eq!(back.decode(), *mask);
    assert_eq!(Rle::from_json(&rle.to_json()).unwrap(), rle);
    assert_eq!(Rle::from_json(&rle.to_json_uncompressed()).unwrap(), rle);
    let text_value: Value = serde_json::from_str(&rle.to_json_string()).unwrap();
    assert_eq!(text_value, rle.to_json());
    assert_eq!(rle.area(), mask.area());
    assert_eq!(rle.bbox(), mask.bbox());
}

#[test]
fn rle_edge_cases() {
    for (w, h) in [(1, 1), (1, 7), (9, 1), (5, 3)] {
        round_trip(&Mask::new(w, h).unwrap());
        round_trip(&Mask::from_fn(w, h, |_, _| true).unwrap());
        round_trip(&Mask::from_fn(w, h, |x, y| x == 0 && y == 0).unwrap());
        round_trip(&Mask::from_fn(w, h, |x, y| x == w - 1 && y == h - 1).unwrap());
        round_trip(&Mask::from_fn(w, h, |x, y| (x + y) % 2 == 0).unwrap());
    }
    round_trip(&Mask::new(0, 0).unwrap());
    round_trip(&Mask::new(4, 0).unwrap());
    assert_eq!(Rle::encode(&Mask::new(3, 0).unwrap()).counts(), &[0]);
    assert_eq!(Rle::encode(&Mask::new(3, 2).unwrap()).counts(), &[6]);
    assert_eq!(Rle::encode(&Mask::from_fn(3, 2, |_, _| true).unwrap()).counts(), &[0, 6]);
    // Column-major: a 2x3 (h x w) mask with its top row set has runs 0,1 | 1,1 | 1,1.
    let top = Mask::from_fn(3, 2, |_, y| y == 0).unwrap();
    assert_eq!(Rle::encode(&top).counts(), &[0, 1, 1, 1, 1, 1, 1]);
    assert_eq!(Rle::encode(&top).bbox(), [0, 0, 3, 1]);
    // Long runs: multi-character groups and negative deltas.
    let big = rect(1000, 900, 100, 0, 900, 900);
    round_trip(&big);
    let mut stripes = Mask::new(700, 700).unwrap();
    for x in (0..700).step_by(3) {
        for y in 0..(x * 7 % 700) {
            stripes.set(x, y, true);
        }
    }
    round_trip(&stripes);
}

#[test]
fn rle_counts_string_quirks() {
    // counts[2] is written as is, deltas against counts[i-2] only from i = 3 (maskApi.c i > 2).
    let rle = Rle::new(1, 9, vec![2, 3, 2, 2]).unwrap();
    // 2 -> '2', 3 -> '3', 2 -> '2' (absolute), 2 - 3 = -1 -> 0x1f -> 'O'.
    assert_eq!(rle.to_string_counts(), "232O");
    // 16 needs two groups (bit 4 is the sign): 0x10 | 0x20 (more) = 48 -> "`", then 0 -> "0".
    assert_eq!(Rle::new(1, 16, vec![16]).unwrap().to_string_counts(), "`0");
    // Value 44 encodes as a backslash, which JSON escapes.
    let rle = Rle::new(1, 493, vec![492, 1]).unwrap();
    assert_eq!(rle.to_string_counts(), "\\?1");
    assert_eq!(rle.to_json_string(), r#"{"size": [1, 493], "counts": "\\?1"}"#);
    // Zero-length runs (non-canonical) are accepted as pycocotools accepts them.
    let odd = Rle::new(2, 2, vec![0, 0, 1, 3]).unwrap();
    // Column-major 0,1,1,1 (pycocotools decodes it to [[0, 1], [1, 1]]).
    assert_eq!(odd.decode().data(), &[false, true, true, true]);
    assert_eq!(Rle::from_string_counts(&odd.to_string_counts(), 2, 2).unwrap(), odd);
    // rleToBbox on non-canonical counts, values from pycocotools 2.0.11 `toBbox(frPyObjects(...))`.
    // (height, width, counts, bbox, area)
    type Case = (u32, u32, &'static [u32], [u32; 4], u64);
    let cases: [Case; 7] = [
        (2, 2, &[0, 0, 1, 3], [0, 0, 2, 2], 3),
        (2, 2, &[1, 0, 3], [2, 2, 4294967295, 4294967295], 0),
        (3, 3, &[2, 0, 1, 6], [1, 0, 2, 3], 6),
        (3, 3, &[1, 1, 0, 1, 6], [0, 1, 1, 2], 2),
        (2, 3, &[0, 0, 6], [3, 2, 4294967294, 4294967295], 0),
        (3, 2, &[6, 0], [2, 3, 4294967295, 4294967294], 0),
        (0, 5, &[0, 0], [5, 0, 4294967292, 1], 0),
    ];
    for (h, w, counts, bbox, area) in cases {
        let rle = Rle::new(h, w, counts.to_vec()).unwrap();
        assert_eq!(rle.bbox(), bbox, "{h}x{w} {counts:?}");
        assert_eq!(rle.area(), area, "{h}x{w} {counts:?}");
    }
}

#[test]
fn rle_rejects_bad_input() {
    let is_arg = |r: vista::Result<Rle>| matches!(r, Err(Error::InvalidArgument { .. }));
    assert!(is_arg(Rle::new(2, 2, vec![1, 2])), "sum short");
    assert!(is_arg(Rle::new(2, 2, vec![1, 2, 3])), "sum long");
    assert!(is_arg(Rle::from_string_counts("12", 2, 2)), "sum short (pycocotools decodes garbage)");
    assert!(is_arg(Rle::from_string_counts("0p", 1, 1)), "character past 'o'");
    assert!(is_arg(Rle::from_string_counts("0 ", 1, 1)), "space");
    assert!(is_arg(Rle::from_string_counts("P", 1, 16)), "truncated group");
    assert!(is_arg(Rle::from_string_counts("O", 1, 1)), "negative count");
    assert!(is_arg(Rle::from_string_counts("PPPPPPPP0", 1, 1)), "too long");
    let j = |v: Value| is_arg(Rle::from_json(&v));
    assert!(j(serde_json::json!({"size": [2], "counts": "4"})));
    assert!(j(serde_json::json!({"size": [2, -2], "counts": "4"})));
    assert!(j(serde_json::json!({"size": [2, 2]})));
    assert!(j(serde_json::json!({"size": [2, 2], "counts": [1, -3]})));
    assert!(j(serde_json::json!({"size": [2, 2], "counts": 4})));
    assert!(Rle::from_json(&serde_json::json!({"size": [2, 2], "counts": [1, 2, 1]})).is_ok());
    assert!(matches!(Mask::from_bools(2, 2, &[true; 3]), Err(Error::InvalidArgument { .. })));
    assert!(matches!(Mask::from_u8(2, 3, &[1; 5]), Err(Error::InvalidArgument { .. })));
}

fn arb_mask() -> impl Strategy<Value = Mask> {
    (1u32..40, 1u32..40, 0u32..=4, any::<bool>()).prop_flat_map(|(w, h, density, first)| {
        let n = (w * h) as usize;
        // density 0 and 4: (almost) all-off / all-on masks; otherwise p = density / 4.
        proptest::collection::vec(0u32..4, n).prop_map(move |r| {
            let mut bits: Vec<bool> = r.iter().map(|&v| v < density).collect();
            bits[0] = first;
            Mask::from_bools(w, h, &bits).unwrap()
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn rle_round_trips(mask in arb_mask()) {
        round_trip(&mask);
    }

    /// Exact polygons (tolerance 0) rasterise back to the mask with its holes filled.
    #[test]
    fn exact_polygons_rasterise_to_filled_mask(mask in arb_mask()) {
        let polys = mask.to_polygons(&PolygonOptions::default());
        for p in &polys {
            prop_assert!(p.len() >= 8 && p.len() % 2 == 0, "{:?}", p);
        }
        let back = Mask::from_polygons(&polys, mask.width(), mask.height()).unwrap();
        prop_assert_eq!(back, mask.fill_holes());
    }

    /// Simplified polygons stay close and always have at least 3 vertices.
    #[test]
    fn simplified_polygons_are_valid(mask in arb_mask(), tol in 0.5f64..4.0) {
        let polys = mask.to_polygons(&PolygonOptions { tolerance: tol, min_area: 0 });
        for p in &polys {
            prop_assert!(p.len() >= 6 && p.len() % 2 == 0);
            prop_assert!(p.chunks(2).all(|v| v[0] >= 0.0 && v[1] >= 0.0
                && v[0] <= f64::from(mask.width()) && v[1] <= f64::from(mask.height())));
        }
    }
}

// ------------------------------------------------------------------------------------------
// Polygons
// ------------------------------------------------------------------------------------------

#[test]
fn rectangle_gives_four_corners() {
    let m = rect(20, 15, 3, 4, 11, 9);
    for tolerance in [0.0, 0.5, 1.0, 3.0] {
        let polys = m.to_polygons(&PolygonOptions { tolerance, min_area: 0 });
        assert_eq!(polys, vec![vec![3.0, 4.0, 11.0, 4.0, 11.0, 9.0, 3.0, 9.0]], "tolerance {tolerance}");
    }
    // A one-pixel mask is a unit square.
    let dot = Mask::from_fn(3, 3, |x, y| x == 2 && y == 2).unwrap();
    assert_eq!(dot.to_polygons(&PolygonOptions::default()), vec![vec![2.0, 2.0, 3.0, 2.0, 3.0, 3.0, 2.0, 3.0]]);
}

#[test]
fn two_blobs_give_two_polygons_and_min_area_drops_small_ones() {
    let big = disk(80, 60, 20.0, 30.0, 12.0);
    let small = rect(80, 60, 50, 10, 70, 40);
    let speck = rect(80, 60, 75, 55, 77, 57);
    let data: Vec<bool> = (0..80 * 60).map(|i| big.data()[i] || small.data()[i] || speck.data()[i]).collect();
    let m = Mask::from_bools(80, 60, &data).unwrap();
    assert_eq!(m.to_polygons(&PolygonOptions { tolerance: 1.0, min_area: 0 }).len(), 3);
    let polys = m.to_polygons(&PolygonOptions { tolerance: 1.0, min_area: 5 });
    assert_eq!(polys.len(), 2);
    // Row-major order of the components' first pixels: the rectangle starts on row 10.
    assert_eq!(&polys[0][..2], &[50.0, 10.0]);
    assert_eq!(polys[0].len(), 8);
}

#[test]
fn disk_polygon_covers_the_disk() {
    for (r, tolerance) in [(10.0, 1.0), (40.0, 1.0), (40.0, 2.0), (100.0, 1.5)] {
        let size = (2.0 * r) as u32 + 20;
        let c = f64::from(size) / 2.0;
        let m = disk(size, size, c, c, r);
        let polys = m.to_polygons(&PolygonOptions { tolerance, min_area: 0 });
        assert_eq!(polys.len(), 1);
        let exact = m.to_polygons(&PolygonOptions::default());
        assert!(polys[0].len() < exact[0].len(), "simplification drops vertices");
        let back = Mask::from_polygons(&polys, size, size).unwrap();
        let score = iou(&back, &m);
        // Measured: r 10 / tol 1: 0.951 (8 vertices of 52); r 40 / tol 1: 0.990 (20 of 196);
        // r 40 / tol 2: 0.984; r 100 / tol 1.5: 0.994.
        let min = if r < 20.0 { 0.94 } else { 0.98 };
        assert!(score > min, "r {r} tolerance {tolerance}: IoU {score}");
    }
}

#[test]
fn holes_are_filled_and_islands_in_holes_omitted() {
    // A ring with an island inside its hole.
    let ring = Mask::from_fn(40, 40, |x, y| {
        let d = (x as f64 - 20.0).hypot(y as f64 - 20.0);
        (10.0..16.0).contains(&d) || d < 3.0
    })
    .unwrap();
    let polys = ring.to_polygons(&PolygonOptions::default());
    assert_eq!(polys.len(), 1, "the island lies in the ring's hole");
    let filled = Mask::from_polygons(&polys, 40, 40).unwrap();
    assert_eq!(filled, ring.fill_holes());
    assert_eq!(filled, disk(40, 40, 20.0, 20.0, 15.999).fill_holes());
    // If the ring is too small to keep, the island is not in a kept component's hole.
    let thin = Mask::from_fn(40, 40, |x, y| {
        let d = (x as f64 - 20.0).hypot(y as f64 - 20.0);
        (15.0..16.0).contains(&d) || d < 10.0
    })
    .unwrap();
    let comps = thin.to_polygons(&PolygonOptions::default()).len();
    assert_eq!(comps, 1);
    let ring_area = thin.area() - disk(40, 40, 20.0, 20.0, 9.999).area();
    let polys = thin.to_polygons(&PolygonOptions { tolerance: 0.0, min_area: ring_area + 1 });
    assert_eq!(polys.len(), 1);
    assert_eq!(Mask::from_polygons(&polys, 40, 40).unwrap(), disk(40, 40, 20.0, 20.0, 9.999));
}

#[test]
fn diagonal_touch_is_one_component() {
    // Two squares touching at a corner: 8-connected, one polygon through that corner twice.
    let m = Mask::from_fn(6, 6, |x, y| (x < 2 && y < 2) || ((2..4).contains(&x) && (2..4).contains(&y))).unwrap();
    let polys = m.to_polygons(&PolygonOptions::default());
    assert_eq!(polys.len(), 1);
    assert_eq!(Mask::from_polygons(&polys, 6, 6).unwrap(), m);
}

// ------------------------------------------------------------------------------------------
// PNG and overlay
// ------------------------------------------------------------------------------------------

#[test]
fn png_round_trip_and_nonzero_reading() {
    let dir = tmp_dir("png");
    let m = disk(33, 21, 12.0, 9.0, 7.0);
    let p = dir.join("m.png");
    m.write_png(&p).unwrap();
    assert_eq!(Mask::from_png(&p).unwrap(), m);
    // 0/1 grey and RGB masks: nonzero anywhere = foreground.
    let g = ::image::GrayImage::from_fn(4, 2, |x, _| ::image::Luma([(x % 2) as u8]));
    g.save(dir.join("g.png")).unwrap();
    let read = Mask::from_png(dir.join("g.png")).unwrap();
    assert_eq!(read.data(), &[false, true, false, true, false, true, false, true]);
    let rgb = RgbImage::from_fn(2, 1, |x, _| ::image::Rgb(if x == 0 { [0, 0, 0] } else { [0, 0, 1] }));
    rgb.save(dir.join("c.png")).unwrap();
    assert_eq!(Mask::from_png(dir.join("c.png")).unwrap().data(), &[false, true]);
    assert!(matches!(Mask::from_png(dir.join("missing.png")), Err(Error::Io { .. })));
    std::fs::write(dir.join("bad.png"), b"not a png").unwrap();
    assert!(matches!(Mask::from_png(dir.join("bad.png")), Err(Error::ImageDecode { .. })));
    assert!(Mask::new(0, 3).unwrap().write_png(dir.join("empty.png")).is_err());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn overlay_draws_masks_points_and_boxes() {
    let (w, h) = (200u32, 150u32);
    let image = RgbImage::from_fn(w, h, |x, y| ::image::Rgb([(x % 256) as u8, (y % 256) as u8, 128]));
    let a = rect(w, h, 20, 20, 80, 80);
    let b = disk(w, h, 140.0, 70.0, 30.0);
    // A low-res mask (half size) is scaled up.
    let c = rect(w / 2, h / 2, 5, 60, 20, 70);
    let out = overlay(&image, &[a, b, c], &[(50.0, 50.0, true), (140.0, 70.0, false)], &[[100.0, 100.0, 190.0, 145.0]]);
    assert_eq!(out.dimensions(), (w, h));
    // Untouched pixel.
    assert_eq!(out.get_pixel(5, 5), image.get_pixel(5, 5));
    // Inside mask 0, away from the outline and the point: 50 % blend.
    let (orig, col) = (image.get_pixel(30, 70).0, mask_color(0));
    let blend: Vec<u8> =
        orig.iter().zip(&col).map(|(&o, &c)| (u16::from(o) + u16::from(c)).div_ceil(2) as u8).collect();
    assert_eq!(&out.get_pixel(30, 70).0[..], &blend[..]);
    // Outline of mask 0: its darkened colour on the boundary pixel.
    let dark = mask_color(0).map(|v| (f32::from(v) * 0.55).round() as u8);
    assert_eq!(out.get_pixel(20, 40).0, dark);
    assert_ne!(out.get_pixel(21, 40).0, dark, "1-px outline below 512 px");
    // Scaled mask 2 covers image rows 120..140, columns 10..40.
    assert_ne!(out.get_pixel(20, 130), image.get_pixel(20, 130));
    assert_eq!(out.get_pixel(20, 110), image.get_pixel(20, 110));
    // Points: green and red centres, white rim.
    let green = out.get_pixel(50, 50).0;
    assert!(green[1] > 150 && green[0] < 100, "{green:?}");
    let red = out.get_pixel(140, 70).0;
    assert!(red[0] > 200 && red[1] < 60, "{red:?}");
    assert_eq!(out.get_pixel(50, 44).0, [255, 255, 255], "rim (radius 5, rim 1.5)");
    // Box: 2-px edges, inside untouched (apart from masks).
    assert_eq!(out.get_pixel(100, 120).0, out.get_pixel(101, 120).0);
    assert_ne!(out.get_pixel(100, 120), image.get_pixel(100, 120));
    assert_eq!(out.get_pixel(150, 120), image.get_pixel(150, 120));
    // Distinct colours.
    let colors: Vec<[u8; 3]> = (0..24).map(mask_color).collect();
    for i in 0..colors.len() {
        for j in 0..i {
            let d: i32 = colors[i].iter().zip(&colors[j]).map(|(&a, &b)| (i32::from(a) - i32::from(b)).abs()).sum();
            assert!(d > 40, "colours {i} and {j} too close: {:?} {:?}", colors[i], colors[j]);
        }
    }
    // Degenerate inputs do not panic.
    let _ = overlay(
        &image,
        &[Mask::new(0, 0).unwrap()],
        &[(f32::NAN, 3.0, true), (-50.0, 1e9, false)],
        &[[f32::INFINITY; 4]],
    );
    let _ = overlay(&RgbImage::new(0, 0), &[Mask::new(3, 3).unwrap()], &[(0.0, 0.0, true)], &[[0.0, 0.0, 5.0, 5.0]]);
    // Something to look at: VISTA_OVERLAY_OUT=dir keeps the picture.
    if let Some(dir) = std::env::var_os("VISTA_OVERLAY_OUT") {
        out.save(Path::new(&dir).join("overlay.png")).unwrap();
        let (w, h) = (640, 480);
        let image = RgbImage::from_fn(w, h, |x, y| ::image::Rgb([(x / 3) as u8, (y / 2) as u8, 90]));
        let masks: Vec<Mask> = (0..6)
            .map(|i| disk(w, h, 80.0 + 95.0 * f64::from(i), 150.0 + 40.0 * f64::from(i % 3), 70.0))
            .chain([Mask::from_fn(64, 64, |x, y| x > 10 && y > 40 && x < 50).unwrap()])
            .collect();
        let big = overlay(&image, &masks, &[(80.0, 150.0, true), (270.0, 230.0, false)], &[[10.0, 60.0, 160.0, 240.0]]);
        big.save(Path::new(&dir).join("overlay_640.png")).unwrap();
    }
}
