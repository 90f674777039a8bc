#![no_main]
//! `.npy` reading (the SAM `--mask-input` and feature files).
mod common;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let p = common::scratch("a.npy", data);
    let _ = vista::data::npy::read_f32(&p);
});
