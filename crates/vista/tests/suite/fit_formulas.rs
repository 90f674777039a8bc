//! vista's Tip-Adapter and head blend against the reference formulas (tests/fixtures/fit, made by
//! tools/reference/gen_fit.py in float64 numpy from the Tip-Adapter code's expressions).
//! Tolerance: 1e-5 relative to max(1, |logit|): vista computes in f32 (the logits reach ~100).

use std::path::Path;

use serde_json::Value;
use vista::eval::fit::{tip_adapter_logits, Features, LinearHead};

fn rows(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32))
        .collect()
}

fn close(ours: f32, want: f64, what: &str) {
    let tol = 1e-5 * want.abs().max(1.0);
    assert!((f64::from(ours) - want).abs() <= tol, "{what}: {ours} vs {want}");
}

#[test]
fn tip_adapter_and_blend_equal_the_reference_formulas() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fit/formulas.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for c in doc["cases"].as_array().unwrap() {
        let (d, k) = (c["dim"].as_u64().unwrap() as usize, c["classes"].as_u64().unwrap() as usize);
        let labels: Vec<usize> =
            c["cache_labels"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        let cache = Features::new(d, rows(&c["cache"]), labels, k).unwrap();
        let test_rows = rows(&c["test"]);
        let m = test_rows.len() / d;
        let test = Features::new(d, test_rows, vec![0; m], k).unwrap();
        let zs = LinearHead::zero_shot(&rows(&c["text"]), d);
        let (alpha, beta) = (c["alpha"].as_f64().unwrap() as f32, c["beta"].as_f64().unwrap() as f32);
        let tip = tip_adapter_logits(&zs, &cache, &test, alpha, beta);
        let name = c["name"].as_str().unwrap();
        for (i, row) in c["tip_logits"].as_array().unwrap().iter().enumerate() {
            for (j, want) in row.as_array().unwrap().iter().enumerate() {
                close(tip[i][j], want.as_f64().unwrap(), &format!("{name} tip [{i}, {j}]"));
            }
        }
        let probe = LinearHead {
            weight: rows(&c["probe_weight"]),
            bias: c["probe_bias"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect(),
            dim: d,
        };
        let blend = zs.interpolate(&probe, c["blend_alpha"].as_f64().unwrap() as f32);
        for (i, row) in c["blend_logits"].as_array().unwrap().iter().enumerate() {
            let ours = blend.logits(&test.rows[i * d..(i + 1) * d]);
            for (j, want) in row.as_array().unwrap().iter().enumerate() {
                close(ours[j], want.as_f64().unwrap(), &format!("{name} blend [{i}, {j}]"));
            }
        }
    }
}
