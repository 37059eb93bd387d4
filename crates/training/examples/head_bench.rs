//! Benchmark program behind `cargo xtask bench head`: trains the seed's dense head (8192 -> 256
//! relu -> dropout 0.5 -> 1) with Keras RMSprop on seeded random features, as `train-head` does,
//! and prints one JSON line with the wall time of each run.
//!
//! `cargo run --release -p training --example head_bench -- --samples 2000 --epochs 30 --runs 3`

use std::time::Instant;

use tch::{Device, Kind, Tensor, nn};
use training::{DenseHead, FeatureSet, HeadFit, HeadSpec, OptimizerSpec, fit_head};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    cpu_runtime::init();
    let (samples, width, epochs, runs) =
        (arg("--samples", 2000), arg("--width", 8192), arg("--epochs", 30), arg("--runs", 3));
    tch::manual_seed(0);
    let xs = Tensor::rand([samples as i64, width as i64], (Kind::Float, Device::Cpu));
    let labels = Tensor::arange(samples as i64, (Kind::Int64, Device::Cpu)).remainder(2);
    let val = FeatureSet { passes: vec![xs.narrow(0, 0, 200)], labels: labels.narrow(0, 0, 200) };
    let train = FeatureSet { passes: vec![xs], labels };
    let mut seconds = Vec::new();
    for run in 0..runs {
        tch::manual_seed(run as i64);
        let vs = nn::VarStore::new(Device::Cpu);
        let head = DenseHead::new(&vs.root(), HeadSpec::seed(width as i64, 2));
        let config = HeadFit {
            epochs,
            batch_size: 20,
            seed: run as u64,
            early_stopping_patience: None,
            restore_best: false,
        };
        let started = Instant::now();
        fit_head((&head, &vs), OptimizerSpec::rmsprop(2e-5), (&train, &val), &config, |_| Ok(()))
            .expect("training runs");
        seconds.push(started.elapsed().as_secs_f64());
    }
    println!(
        "{}",
        serde_json::json!({ "samples": samples, "width": width, "epochs": epochs, "seconds": seconds })
    );
}
