#![no_main]
//! IDX (MNIST) image + label files: the input is split in two at its first byte's position.
mod common;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else { return };
    let cut = (cut as usize).min(rest.len());
    let (labels, images) = rest.split_at(cut);
    let l = common::scratch("labels-idx1-ubyte", labels);
    let i = common::scratch("images-idx3-ubyte", images);
    let _ = vista::data::LabelledSet::from_idx(&i, &l, Some(64));
    let _ = vista::data::LabelledSet::from_idx(&i, &l, None);
});
