#![no_main]
//! PyTorch zip-pickle checkpoints (`torch.save`) on arbitrary bytes, as `.pth` files. vista turns
//! a panic of candle's pickle reader into an error (`read_tensors` catches it); libfuzzer-sys's
//! panic hook would abort on a caught panic too, so this target installs a quiet hook: a panic
//! that escapes `read_tensors` still aborts through libfuzzer-sys's own `catch_unwind`.
mod common;
use std::sync::Once;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    let p = common::scratch("m.pth", data);
    let _ = vista::weights::formats::read_tensors(&p, None, &candle_core::Device::Cpu);
    let _ = vista::weights::formats::read_tensors(&p, Some("teacher"), &candle_core::Device::Cpu);
});
