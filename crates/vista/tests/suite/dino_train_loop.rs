//! DINO training end to end (`train::dino::run`): a short run on real data learns without
//! collapsing; an interrupted run resumes bit for bit; the exported backbone loads where
//! `vista features` / `vista knn` load models; bad input and a non-finite loss stop cleanly.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use vista::data::dataset::{Item, ItemImage, LabelledSet, Split};
use vista::dino::LoadOptions;
use vista::dino::{DinoPipeline, DinoPreprocess};
use vista::train::dino::{run, CollapseMonitor, DinoTrainConfig, DinoTrainer, Event, RunOptions, StepMetrics};
use vista::weights::formats;

const FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

/// A ViT and head small enough to train in seconds on 28×28 images.
fn tiny_config(epochs: usize) -> DinoTrainConfig {
    let mut c = DinoTrainConfig::preset("vit_tiny").unwrap();
    c.embed_dim = 32;
    c.depth = 2;
    c.num_heads = 2;
    c.patch_size = 4;
    c.global_size = 28;
    c.local_size = 12;
    c.local_crops = 2;
    c.out_dim = 256;
    c.head_hidden = 128;
    c.bottleneck = 32;
    c.epochs = epochs;
    c.warmup_epochs = 1;
    c.batch_size = 32;
    c.lr = 0.004;
    c
}

fn options(output: &Path) -> RunOptions {
    RunOptions {
        output: output.to_path_buf(),
        workers: 1,
        prefetch: 2,
        decode: Default::default(),
        save_every: 0,
        save_every_steps: 0,
        knn: None,
        max_epochs: None,
        device: Device::Cpu,
    }
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vista-dino-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Generated grey images: a bright square of a size and place that vary per item.
fn generated_items(n: usize) -> Vec<Item> {
    (0..n)
        .map(|i| {
            let side = 6 + (i % 5) as u32 * 3;
            let (x0, y0) = ((i * 7 % 11) as u32, (i * 5 % 13) as u32);
            let img = image::GrayImage::from_fn(28, 28, |x, y| {
                let inside = x >= x0 && x < x0 + side && y >= y0 && y < y0 + side;
                image::Luma([if inside { 230 } else { (x * 3 + y) as u8 }])
            });
            Item { image: ItemImage::Gray(img), label: i % 5 }
        })
        .collect()
}

fn fashion_mnist(limit: usize) -> Option<LabelledSet> {
    if !Path::new(FASHION_MNIST).is_dir() {
        assert!(
            std::env::var("VISTA_REQUIRE_DATASETS").is_err(),
            "{FASHION_MNIST} is missing: `apt-get install dataset-fashion-mnist` (as .ci/run does)"
        );
        eprintln!("skipped: {FASHION_MNIST} is missing");
        return None;
    }
    Some(LabelledSet::from_idx_dir(Path::new(FASHION_MNIST), Split::Train, Some(limit)).unwrap())
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Trains `config` on `set`, returning every step's metrics and the collapse warnings.
fn train(config: DinoTrainConfig, set: &LabelledSet, name: &str) -> (Vec<StepMetrics>, Vec<String>, PathBuf) {
    let out = tempdir(name);
    let mut steps: Vec<StepMetrics> = Vec::new();
    let mut warnings = Vec::new();
    run(config, set.items.clone(), &options(&out), |e| match e {
        Event::Step(m) => steps.push(m.clone()),
        Event::Collapse(w) => warnings.push(w.to_string()),
        _ => {}
    })
    .unwrap();
    (steps, warnings, out)
}

fn epoch_means(steps: &[StepMetrics], f: impl Fn(&StepMetrics) -> f64) -> Vec<f64> {
    let epochs = steps.iter().map(|m| m.epoch).max().map_or(0, |e| e + 1);
    (0..epochs).map(|e| mean(&steps.iter().filter(|m| m.epoch == e).map(&f).collect::<Vec<_>>())).collect()
}

/// The student learns its objective: with the teacher held fixed (momentum 1), the loss falls
/// epoch after epoch once the centre has settled (the first epoch starts from a zero centre,
/// so its loss is not comparable), and KL(teacher ‖ student) with it.
#[test]
fn a_short_run_on_fashion_mnist_lowers_the_loss() {
    let Some(set) = fashion_mnist(512) else { return };
    let mut config = tiny_config(6);
    config.momentum_teacher = 1.0;
    let (steps, _, out) = train(config, &set, "learn");
    assert_eq!(steps.len(), 6 * 16);
    let loss = epoch_means(&steps, |m| m.loss);
    let kl = epoch_means(&steps, |m| m.kl);
    eprintln!("loss per epoch {loss:.4?}, KL {kl:.4?}");
    assert!(loss[5] < loss[1] - 0.05, "the loss did not fall: {loss:?}");
    assert!(loss.windows(2).skip(1).all(|w| w[1] < w[0] + 0.01), "the loss went up: {loss:?}");
    assert!(kl[5] < 0.8 * kl[1], "the student did not get closer to the teacher: {kl:?}");
    let _ = std::fs::remove_dir_all(&out);
}

/// DINO's own schedule (EMA teacher) on real data: the collapse diagnostics stay healthy — the
/// student still differs from the teacher and the teacher is neither one-hot nor uniform — and
/// the metrics log has every diagnostic of every step.
#[test]
fn a_short_dino_run_on_fashion_mnist_shows_no_collapse() {
    let Some(set) = fashion_mnist(512) else { return };
    let (steps, warnings, out) = train(tiny_config(6), &set, "collapse");
    assert!(warnings.is_empty(), "{warnings:?}");
    let kl = epoch_means(&steps, |m| m.kl);
    let entropy = epoch_means(&steps, |m| m.teacher_entropy);
    let max_entropy = (256f64).ln();
    eprintln!("KL per epoch {kl:.4?}, teacher entropy {entropy:.3?} of {max_entropy:.3}");
    assert!(kl.iter().all(|&k| k > 0.05), "KL(teacher || student) ~ 0: collapse {kl:?}");
    assert!(entropy.iter().all(|&e| e > 0.05 * max_entropy && e < 0.98 * max_entropy), "teacher entropy {entropy:?}");
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let all: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let (lines, epochs): (Vec<_>, Vec<_>) = all.into_iter().partition(|l| l.get("iteration").is_some());
    assert_eq!(lines.len(), steps.len());
    assert_eq!(epochs.len(), 6, "one wall-time line per epoch");
    assert!(epochs.iter().all(|l| l["epoch_seconds"].as_f64().is_some_and(|s| s > 0.0)));
    for key in ["loss", "lr", "wd", "momentum", "teacher_temp", "teacher_entropy", "kl"] {
        assert!(lines.iter().all(|l| l[key].is_number()), "metrics lack {key}");
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// The collapse monitor fires on a student that copies a uniform teacher, and stays quiet on a
/// healthy one.
#[test]
fn the_collapse_monitor_warns_when_kl_vanishes() {
    let step = |kl: f64, entropy: f64| StepMetrics {
        epoch: 0,
        iteration: 0,
        loss: entropy + kl,
        lr: 0.0,
        wd: 0.0,
        momentum: 0.996,
        teacher_temp: 0.04,
        teacher_entropy: entropy,
        kl,
        images: 8,
        seconds: 0.0,
    };
    let mut m = CollapseMonitor::new(5, 1e-3, 256);
    for _ in 0..10 {
        assert!(m.observe(&step(0.3, 4.0)).is_none());
    }
    let mut warned = None;
    for _ in 0..5 {
        warned = m.observe(&step(1e-5, 5.5));
    }
    let w = warned.expect("a vanishing KL must warn");
    assert!(w.contains("collapse") && w.contains("uniform"), "{w}");
    let mut m = CollapseMonitor::new(3, 1e-3, 256);
    let w = (0..3).filter_map(|_| m.observe(&step(1e-5, 0.01))).last().unwrap();
    assert!(w.contains("one dimension dominates"), "{w}");
}

fn tensors_of(path: &Path) -> Vec<(String, Vec<f32>)> {
    let mut v: Vec<(String, Vec<f32>)> = formats::read_tensors(path, None, &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn an_interrupted_run_resumes_bit_for_bit() {
    let items = generated_items(96);
    let config = tiny_config(3);
    let straight = tempdir("straight");
    run(config.clone(), items.clone(), &options(&straight), |_| {}).unwrap();
    // The same run stopped after each epoch and started again, as after a kill between epochs.
    let resumed = tempdir("resumed");
    for _ in 0..3 {
        let opts = RunOptions { max_epochs: Some(1), workers: 2, ..options(&resumed) };
        run(config.clone(), items.clone(), &opts, |_| {}).unwrap();
    }
    let (a, b) =
        (tensors_of(&straight.join("checkpoint.safetensors")), tensors_of(&resumed.join("checkpoint.safetensors")));
    assert_eq!(a.len(), b.len());
    for ((na, va), (nb, vb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert!(va.iter().zip(vb).all(|(x, y)| x.to_bits() == y.to_bits()), "`{na}` differs after resuming");
    }
    let ma = std::fs::read_to_string(straight.join("metrics.jsonl")).unwrap();
    let mb = std::fs::read_to_string(resumed.join("metrics.jsonl")).unwrap();
    let strip = |s: &str| -> Vec<serde_json::Value> {
        s.lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                // Timings differ between runs; everything else must not.
                v.as_object_mut().unwrap().remove("seconds");
                v.as_object_mut().unwrap().remove("epoch_seconds");
                v
            })
            .collect()
    };
    assert_eq!(strip(&ma), strip(&mb), "the metrics of the resumed run differ");
    // A torn last line (a kill while writing) is dropped on resume.
    let torn = tempdir("torn");
    let opts = RunOptions { max_epochs: Some(1), ..options(&torn) };
    run(config.clone(), items.clone(), &opts, |_| {}).unwrap();
    let mut f = std::fs::OpenOptions::new().append(true).open(torn.join("metrics.jsonl")).unwrap();
    std::io::Write::write_all(&mut f, b"{\"epoch\":1,\"iterat").unwrap();
    drop(f);
    run(config.clone(), items.clone(), &options(&torn), |_| {}).unwrap();
    assert_eq!(strip(&std::fs::read_to_string(torn.join("metrics.jsonl")).unwrap()), strip(&ma));
    // Another configuration in the same folder is refused, naming what differs.
    let mut other = config;
    other.lr = 0.001;
    let err =
        run(other, items, &options(&straight), |_| {}).err().expect("a different config must be refused").to_string();
    assert!(err.contains("lr") && err.contains("another configuration"), "{err}");
    for d in [straight, resumed, torn] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn the_exported_backbone_loads_as_a_dino_model_with_the_teachers_features() {
    let items = generated_items(64);
    let out = tempdir("export");
    let trainer = run(tiny_config(1), items.clone(), &options(&out), |_| {}).unwrap();
    let path = out.join("backbone.safetensors");
    let mut loaded = DinoPipeline::load(path.to_str().unwrap(), &LoadOptions::default()).unwrap();
    assert_eq!(loaded.model.vit().unwrap().config.num_heads, 2, "heads come from the file's metadata");
    assert_eq!(loaded.model.vit().unwrap().config, trainer.config.backbone());
    loaded.preprocess = DinoPreprocess::eval_sized(28, 28);
    let teacher = trainer.teacher_pipeline().unwrap();
    let img = items[3].load(&Default::default()).unwrap();
    let a = loaded.features(&img, false).unwrap().cls;
    let b = teacher.features(&img, false).unwrap().cls;
    assert_eq!(a, b);
    // The trainable teacher computes the same CLS token as the inference model.
    let pixels = teacher.preprocess.pixels(&[&teacher.prepare(&img).unwrap()]).unwrap();
    let tokens = trainer.teacher().vit().unwrap().forward(&pixels).unwrap();
    let cls: Vec<f32> = tokens.narrow(1, 0, 1).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let diff = cls.iter().zip(&a).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(diff < 1e-4, "training and inference backbones differ by {diff}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_bad_image_is_skipped_and_the_batch_goes_on() {
    let dir = tempdir("badfile");
    let mut items = generated_items(63);
    std::fs::write(dir.join("broken.png"), b"not a png at all").unwrap();
    items.insert(5, Item { image: ItemImage::File(dir.join("broken.png")), label: 0 });
    let mut skipped = Vec::new();
    let mut images = 0;
    run(tiny_config(1), items, &options(&dir.join("out")), |e| match e {
        Event::Skipped(s) => skipped.extend(s.iter().cloned()),
        Event::Step(m) => images += m.images,
        _ => {}
    })
    .unwrap();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(skipped[0].contains("broken.png"), "the error names the file: {}", skipped[0]);
    assert_eq!(images, 63, "the other images of the batch were trained on");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_non_finite_loss_stops_the_step_and_changes_nothing() {
    let config = tiny_config(2);
    let mut trainer = DinoTrainer::new(config.clone(), 4, &Device::Cpu).unwrap();
    let before: Vec<Vec<f32>> = trainer
        .student()
        .params()
        .iter()
        .map(|p| p.var().as_tensor().flatten_all().unwrap().to_vec1().unwrap())
        .collect();
    let mut crops = Vec::new();
    for k in 0..config.local_crops + 2 {
        let s = if k < 2 { 28 } else { 12 };
        crops.push(Tensor::full(f32::NAN, (4, s, s, 3), &Device::Cpu).unwrap());
    }
    let err = trainer.step(&crops, 0, 0).unwrap_err().to_string();
    assert!(err.contains("loss is NaN") && err.contains("iteration 0"), "{err}");
    let after: Vec<Vec<f32>> = trainer
        .student()
        .params()
        .iter()
        .map(|p| p.var().as_tensor().flatten_all().unwrap().to_vec1().unwrap())
        .collect();
    assert_eq!(before, after, "a failed step must not touch the parameters");
}

#[test]
fn a_checkpoint_with_a_misshapen_tensor_is_refused_naming_it() {
    let out = tempdir("misshapen");
    run(tiny_config(1), generated_items(32), &options(&out), |_| {}).unwrap();
    let path = out.join("checkpoint.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> =
        st.tensors().into_iter().map(|(n, v)| (n, v.shape().to_vec(), v.data().to_vec())).collect();
    let victim = tensors.iter_mut().find(|t| t.0 == "teacher.backbone.norm.weight").unwrap();
    victim.1 = vec![16];
    victim.2.truncate(16 * 4);
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, s, d)| {
            (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d).unwrap())
        })
        .collect();
    std::fs::write(&path, safetensors::serialize(views, meta.metadata().clone()).unwrap()).unwrap();
    let err = DinoTrainer::load(&path, &Device::Cpu).err().expect("must fail").to_string();
    assert!(err.contains("norm.weight") && err.contains("[16]") && err.contains("[32]"), "{err}");
    assert!(err.contains("checkpoint.safetensors"), "the error names the file: {err}");
    let _ = std::fs::remove_dir_all(&out);
}

/// `--optimizer lars` and `sgd` (main_dino.py's choices for convnets): the run trains, its
/// checkpoint holds a momentum buffer per trained tensor (no AdamW moments), and a run stopped
/// after each epoch resumes to the same bits; the recorded configuration names the optimiser.
#[test]
fn lars_and_sgd_runs_resume_bit_for_bit() {
    use vista::train::dino::OptimizerKind;
    let items = generated_items(64);
    for kind in [OptimizerKind::Lars, OptimizerKind::Sgd] {
        let mut config = tiny_config(2);
        config.optimizer = kind;
        config.lr = 0.05;
        let straight = tempdir(&format!("{kind:?}-straight"));
        run(config.clone(), items.clone(), &options(&straight), |_| {}).unwrap();
        let resumed = tempdir(&format!("{kind:?}-resumed"));
        for _ in 0..2 {
            let opts = RunOptions { max_epochs: Some(1), ..options(&resumed) };
            run(config.clone(), items.clone(), &opts, |_| {}).unwrap();
        }
        let (a, b) =
            (tensors_of(&straight.join("checkpoint.safetensors")), tensors_of(&resumed.join("checkpoint.safetensors")));
        assert_eq!(a.len(), b.len(), "{kind:?}");
        let buffers = a.iter().filter(|(n, _)| n.ends_with(".momentum_buffer")).count();
        assert!(buffers > 10, "{kind:?}: {buffers} momentum buffers");
        assert!(!a.iter().any(|(n, _)| n.ends_with(".exp_avg")), "{kind:?}: AdamW state in the checkpoint");
        for ((na, va), (nb, vb)) in a.iter().zip(&b) {
            assert_eq!(na, nb);
            assert!(va.iter().zip(vb).all(|(x, y)| x.to_bits() == y.to_bits()), "{kind:?}: `{na}` differs");
        }
        let json = std::fs::read_to_string(straight.join("checkpoint.json")).unwrap();
        let name = format!("{kind:?}").to_lowercase();
        assert!(json.contains(&format!("\"optimizer\": \"{name}\"")), "{kind:?}: {json}");
        for d in [straight, resumed] {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// `--arch resnet50`'s network (planes / 16 here, to stay fast) trains in the same loop: with the
/// teacher held fixed the loss falls on Fashion-MNIST; a run stopped after each epoch resumes to
/// the same bits (running statistics included); the exported backbone loads as a DINO ResNet
/// whose features equal the trainer's own teacher pipeline.
#[test]
fn a_resnet_trains_resumes_and_exports() {
    use vista::dino::Backbone;
    use vista::train::dino::{OptimizerKind, ResNetDims};
    let thin = ResNetDims { layers: [3, 4, 6, 3], stem: 16, planes: [4, 8, 16, 32] };
    let resnet = |epochs: usize| {
        let mut c = tiny_config(epochs);
        c.arch = "resnet50".into();
        c.resnet = Some(thin);
        c.embed_dim = thin.embed_dim();
        c.drop_path = 0.0;
        c.optimizer = OptimizerKind::Lars;
        c.lr = 0.3;
        c
    };
    let items = generated_items(64);
    // With DINO's plain head, then with BatchNorm in the head (`--use-bn-in-head`, whose running
    // statistics are saved and resumed too).
    let mut last = None;
    for bn_head in [false, true] {
        let config = |epochs| DinoTrainConfig { use_bn_in_head: bn_head, ..resnet(epochs) };
        let straight = tempdir(&format!("resnet-straight-{bn_head}"));
        let trainer = run(config(2), items.clone(), &options(&straight), |_| {}).unwrap();
        let resumed = tempdir(&format!("resnet-resumed-{bn_head}"));
        for _ in 0..2 {
            let opts = RunOptions { max_epochs: Some(1), ..options(&resumed) };
            run(config(2), items.clone(), &opts, |_| {}).unwrap();
        }
        let (a, b) =
            (tensors_of(&straight.join("checkpoint.safetensors")), tensors_of(&resumed.join("checkpoint.safetensors")));
        assert_eq!(a.len(), b.len());
        assert!(a.iter().any(|(n, _)| n == "teacher.backbone.layer4.2.bn3.running_var"), "running statistics saved");
        let head_bn = a.iter().any(|(n, _)| n == "student.head.mlp.4.running_var");
        assert_eq!(head_bn, bn_head, "the head's running statistics saved");
        for ((na, va), (nb, vb)) in a.iter().zip(&b) {
            assert_eq!(na, nb);
            assert!(va.iter().zip(vb).all(|(x, y)| x.to_bits() == y.to_bits()), "`{na}` differs after resuming");
        }
        let _ = std::fs::remove_dir_all(&resumed);
        if let Some((_, old)) = last.replace((trainer, straight)) {
            let _ = std::fs::remove_dir_all(old);
        }
    }
    let (trainer, straight) = last.unwrap();
    let loaded =
        DinoPipeline::load(straight.join("backbone.safetensors").to_str().unwrap(), &LoadOptions::default()).unwrap();
    assert!(matches!(loaded.model, Backbone::ResNet(_)), "exported as a ResNet");
    let teacher = trainer.teacher_pipeline().unwrap();
    let img = items[5].load(&Default::default()).unwrap();
    assert_eq!(loaded.features(&img, false).unwrap().cls, teacher.features(&img, false).unwrap().cls);
    let _ = std::fs::remove_dir_all(straight);

    // Learning: the teacher fixed, the student's loss falls (SGD, DINO's recipe for its ResNet,
    // `--optimizer sgd --weight_decay 1e-4 --weight_decay_end 1e-4`, at a learning rate for 64 steps):
    // after the centre settles (the first epochs), the loss comes down from its peak.
    let Some(set) = fashion_mnist(256) else { return };
    let mut config = resnet(8);
    config.momentum_teacher = 1.0;
    config.optimizer = OptimizerKind::Sgd;
    config.lr = 2.0;
    config.weight_decay = 1e-4;
    config.weight_decay_end = 1e-4;
    let (steps, _, out) = train(config, &set, "resnet-learn");
    let loss = epoch_means(&steps, |m| m.loss);
    eprintln!("ResNet loss per epoch {loss:.4?}");
    let peak = loss[1..].iter().cloned().fold(f64::MIN, f64::max);
    assert!(loss[7] < peak - 0.1, "the loss did not fall: {loss:?}");
    let _ = std::fs::remove_dir_all(&out);
}
