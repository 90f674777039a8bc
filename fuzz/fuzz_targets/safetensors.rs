#![no_main]
//! `read_safetensors` and `read_tensors` on arbitrary bytes: errors, never panics or huge allocations.
mod common;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let p = common::scratch("m.safetensors", data);
    let _ = vista::weights::formats::read_safetensors(&p, &candle_core::Device::Cpu);
    let _ = vista::weights::formats::safetensors_metadata(&p);
});
