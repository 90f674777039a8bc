//! Scoring frozen features: DINO's weighted k-NN ([`knn`]), linear probes ([`linear_probe`]),
//! the cross-validated comparison of few-shot classifiers ([`fit`]), and the per-dataset
//! feature cache they read ([`features`]). Training evaluates its teacher
//! here too ([`knn_accuracy`]).

pub mod features;
pub mod fit;
pub mod knn;
pub mod linear_probe;

pub use features::{clip_features, dataset_features, pixel_features, DatasetFeatures, FeatureCache, FeatureSource};

use crate::data::LabelledSet;
use crate::dino::pipeline::DinoPipeline;
use crate::Result;

/// DINO's k-NN evaluation of a backbone (`eval_knn.py`: L2-normalised CLS features, weighted
/// vote at temperature `t`): the top-1 accuracy (percent) for `k` neighbours (at most the
/// memory bank's size) on `test` with `train` as the memory bank. Nothing is cached.
pub fn knn_accuracy(pipeline: &DinoPipeline, train: &LabelledSet, test: &LabelledSet, k: usize, t: f32) -> Result<f64> {
    let mut f_train = dataset_features(pipeline, train, 64, None, |_| {})?;
    let mut f_test = dataset_features(pipeline, test, 64, None, |_| {})?;
    let dim = f_train.dim;
    knn::normalize_rows(&mut f_train.features, dim);
    knn::normalize_rows(&mut f_test.features, dim);
    let k = k.min(f_train.len()).max(1);
    let classes = train.classes.len().max(test.classes.len());
    let options = knn::KnnOptions { ks: vec![k], temperature: t, ..knn::KnnOptions::default() };
    let r = knn::knn_classifier(
        &f_train.features,
        &f_train.labels,
        &f_test.features,
        &f_test.labels,
        dim,
        classes,
        &options,
    )?;
    Ok(r[0].top1)
}
