#![no_main]
//! COCO RLE: compressed counts strings and JSON decode; what decodes re-encodes to itself.
use libfuzzer_sys::fuzz_target;
use vista::apps::segment::Rle;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let h = u32::from(u16::from_le_bytes([data[0], data[1]]));
    let w = u32::from(u16::from_le_bytes([data[2], data[3]]));
    let text = String::from_utf8_lossy(&data[4..]);
    if let Ok(rle) = Rle::from_string_counts(&text, h, w) {
        let mask = rle.decode();
        let again = Rle::encode(&mask);
        assert_eq!(again.decode(), mask);
        assert_eq!(Rle::from_string_counts(&again.to_string_counts(), h, w).unwrap(), again);
        let _ = rle.bbox();
        let _ = rle.area();
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&data[4..]) {
        let _ = Rle::from_json(&v).map(|r| r.decode());
    }
});
