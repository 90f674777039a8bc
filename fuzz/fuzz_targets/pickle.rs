#![no_main]
//! PyTorch zip-pickle checkpoints (`torch.save`) on arbitrary bytes, as `.pth` files.
mod common;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let p = common::scratch("m.pth", data);
    let _ = vista::weights::formats::read_tensors(&p, None, &candle_core::Device::Cpu);
    let _ = vista::weights::formats::read_tensors(&p, Some("teacher"), &candle_core::Device::Cpu);
});
