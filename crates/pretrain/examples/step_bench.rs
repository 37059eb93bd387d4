//! Times training steps of the small convnet on random images (batch 20), with the input as the
//! channels-last view `preprocess` gives, as a contiguous NCHW copy, and with channels-last
//! weights: `cargo run --release -p pretrain --example step_bench -- 64`.

use std::time::Instant;

use models::ConvArch;
use pretrain::net::new_model;
use tch::{Device, Kind, Tensor};
use training::{Optimizer, OptimizerSpec};

fn main() -> anyhow::Result<()> {
    let size: i64 = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(64);
    let steps = 10;
    tch::manual_seed(0);
    let classes: Vec<String> = (0..10).map(|c| c.to_string()).collect();
    let arch = ConvArch::small_convnet();
    let net = new_model(&arch, size, &classes, (512, 0.5), Default::default(), Device::Cpu)?;
    let mut opt = Optimizer::new(OptimizerSpec::rmsprop(1e-4), net.trainable());
    let images =
        Tensor::randint(256, [20, size, size, 3], (Kind::Int64, Device::Cpu)).to_kind(Kind::Uint8);
    let labels = Tensor::randint(10, [20], (Kind::Int64, Device::Cpu));
    let mut run = |name: &str, contiguous: bool| -> anyhow::Result<()> {
        let t = Instant::now();
        for _ in 0..steps {
            let xs = models::preprocess(&images, models::Preprocessing::Rescale)?;
            let xs = if contiguous { xs.contiguous() } else { xs };
            opt.zero_grad();
            let logits = net.forward_from_trunk(&xs, true, true)?;
            let loss = training::head::loss(&logits, &labels)?;
            loss.backward();
            opt.step();
        }
        let fwd = Instant::now();
        tch::no_grad(|| -> anyhow::Result<()> {
            for _ in 0..steps {
                let xs = models::preprocess(&images, models::Preprocessing::Rescale)?;
                let xs = if contiguous { xs.contiguous() } else { xs };
                let _ = net.forward_from_trunk(&xs, false, false)?;
            }
            Ok(())
        })?;
        println!(
            "{name}: train step {:.1} ms, forward {:.1} ms (batch 20, {size}x{size})",
            (fwd - t).as_secs_f64() * 1e3 / steps as f64,
            fwd.elapsed().as_secs_f64() * 1e3 / steps as f64
        );
        Ok(())
    };
    run("warm-up", false)?;
    run("channels-last view input", false)?;
    run("contiguous NCHW input", true)?;
    for (_, mut var) in net.trainable() {
        if var.dim() == 4 {
            let nhwc = var.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
            tch::no_grad(|| var.set_data(&nhwc));
        }
    }
    run("channels-last weights + view input", false)?;
    Ok(())
}
