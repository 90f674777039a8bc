//! Loading is complete and loud: a checkpoint with any one tensor removed, or any one tensor
//! misshapen, fails with an error that names that tensor (in the file's own spelling) and, for a
//! misshapen one, both shapes. Checked for every tensor of a Hugging Face and an open_clip
//! checkpoint.

use crate::common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use common::fixtures;
use vista::clip::loader;

struct Case {
    dir: PathBuf,
    weights_name: &'static str,
    config_files: &'static [&'static str],
}

fn read(dir: &Path) -> HashMap<String, Tensor> {
    let weights = loader::resolve(dir.to_str().unwrap(), None).unwrap().weights;
    vista::weights::formats::read_tensors(&weights, None, &Device::Cpu).unwrap()
}

fn write_case(case: &Case, tensors: &HashMap<String, Tensor>, out: &Path) {
    std::fs::create_dir_all(out).unwrap();
    for f in case.config_files {
        std::fs::copy(case.dir.join(f), out.join(f)).unwrap();
    }
    candle_core::safetensors::save(tensors, out.join(case.weights_name)).unwrap();
}

fn load_err(dir: &Path) -> String {
    match loader::load_model(dir.to_str().unwrap(), None, &Device::Cpu) {
        Ok(_) => panic!("{}: loaded although a tensor was broken", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn grown(t: &Tensor) -> Tensor {
    // One more row (a scalar becomes a 1-vector): the kind of mismatch a wrong config gives.
    let mut dims = t.dims().to_vec();
    if dims.is_empty() {
        return Tensor::zeros(1, t.dtype(), t.device()).unwrap();
    }
    dims[0] += 1;
    Tensor::zeros(dims, t.dtype(), t.device()).unwrap()
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            dir: fixtures().join("clip/hf_quickgelu"),
            weights_name: "model.safetensors",
            config_files: &["config.json", "preprocessor_config.json"],
        },
        Case {
            dir: fixtures().join("clip/openclip_quickgelu"),
            weights_name: "open_clip_model.safetensors",
            config_files: &["open_clip_config.json"],
        },
    ]
}

#[test]
fn every_removed_or_misshapen_tensor_is_named() {
    let tmp = std::env::temp_dir().join(format!("vista-ckpt-errors-{}", std::process::id()));
    for case in cases() {
        let tensors = read(&case.dir);
        // The unmodified copy loads: the test's own plumbing is sound.
        let ok_dir = tmp.join("ok");
        write_case(&case, &tensors, &ok_dir);
        loader::load_model(ok_dir.to_str().unwrap(), None, &Device::Cpu).unwrap();
        let mut names: Vec<&String> = tensors.keys().collect();
        names.sort();
        assert!(names.len() > 30, "{} tensors only", names.len());
        for name in names {
            let dir = tmp.join("case");
            let _ = std::fs::remove_dir_all(&dir);
            let mut broken = tensors.clone();
            broken.remove(name);
            write_case(&case, &broken, &dir);
            let msg = load_err(&dir);
            assert!(msg.contains(name.as_str()), "removing `{name}` gave: {msg}");

            let _ = std::fs::remove_dir_all(&dir);
            let mut broken = tensors.clone();
            let bad = grown(&tensors[name]);
            let (want, found) = (format!("{:?}", tensors[name].dims()), format!("{:?}", bad.dims()));
            broken.insert(name.clone(), bad);
            write_case(&case, &broken, &dir);
            let msg = load_err(&dir);
            assert!(msg.contains(name.as_str()), "reshaping `{name}` gave: {msg}");
            // Fused q/k/v report the three shapes; other tensors the expected and found shape.
            assert!(msg.contains(&found), "reshaping `{name}` to {found} gave: {msg}");
            if !name.contains("_proj.") || name.contains("out_proj") {
                assert!(msg.contains(&want) || msg.contains("[3"), "reshaping `{name}` (was {want}) gave: {msg}");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn a_checkpoint_of_another_model_is_refused_clearly() {
    let tmp = std::env::temp_dir().join(format!("vista-ckpt-other-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let f = tmp.join("dino.safetensors");
    let mut t = HashMap::new();
    t.insert(
        "blocks.0.attn.qkv.weight".to_string(),
        Tensor::zeros((6, 2), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&t, &f).unwrap();
    let msg = loader::load_model(f.to_str().unwrap(), None, &Device::Cpu).err().unwrap().to_string();
    assert!(msg.contains("not a CLIP checkpoint"), "{msg}");
    let g = tmp.join("garbage.bin");
    std::fs::write(&g, b"hello, not a checkpoint").unwrap();
    let msg = loader::load_model(g.to_str().unwrap(), None, &Device::Cpu).err().unwrap().to_string();
    assert!(msg.contains("garbage.bin") && msg.contains("not a safetensors file"), "{msg}");
    let _ = std::fs::remove_dir_all(&tmp);
}
