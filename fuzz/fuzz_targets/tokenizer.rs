#![no_main]
//! Both CLIP tokenizers on arbitrary text: exactly 77 ids, start and end tokens in place.
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vista::clip::tokenizer::{ClipTokenizer, HfTokenizer};

fuzz_target!(|data: &[u8]| {
    static OC: OnceLock<ClipTokenizer> = OnceLock::new();
    static HF: OnceLock<HfTokenizer> = OnceLock::new();
    let text = String::from_utf8_lossy(data);
    let oc = OC.get_or_init(|| ClipTokenizer::new().unwrap());
    let ids = oc.tokenize(&text, 77);
    assert_eq!(ids.len(), 77);
    assert_eq!(ids[0], oc.sot_id());
    assert!(ids.contains(&oc.eot_id()));
    let _ = oc.decode(&ids);
    let hf = HF.get_or_init(|| HfTokenizer::openai().unwrap());
    if let Ok(ids) = hf.tokenize(&text, 77) {
        assert_eq!(ids.len(), 77);
        assert_eq!(ids[0], hf.bos_id());
        assert!(ids.contains(&hf.eos_id()));
    }
});
