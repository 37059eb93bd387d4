//! What the report says about a run's settings: the Settings list and the name of the base it
//! transferred (also for a compared run, from its `pipeline.resolved.toml`).

use std::collections::BTreeMap;
use std::path::Path;

use super::config::{Config, FineTuneMode};
use super::layers::Derived;

/// What the run transfers, for the report: its own pretrained base or ImageNet VGG16.
pub(super) fn base_label(config: &Config) -> String {
    match (&config.pretrain, &config.run.weights) {
        (p, _) if p.enabled && p.use_as_base => {
            format!("small convnet pretrained on {}", p.data.display())
        }
        (_, Some(w)) => format!("the conv base in {}", w.display()),
        (_, None) => "ImageNet VGG16".into(),
    }
}

/// The resolved settings, one line each, for the report's Settings section.
pub(super) fn summary(
    config: &Config,
    derived: &Derived,
    weights: &Path,
) -> BTreeMap<String, String> {
    let mut summary = BTreeMap::from([
        ("data".into(), config.run.data.display().to_string()),
        ("weights".into(), weights.display().to_string()),
        ("device".into(), config.run.device.clone()),
        ("input size".into(), format!("{0}x{0}", config.extract.input_size)),
        ("layer".into(), config.extract.layer.clone()),
        ("precision".into(), config.extract.precision.clone()),
        ("augmented passes".into(), config.extract.augment_passes.to_string()),
        (
            "head".into(),
            format!(
                "{} epochs, {} lr {}, batch {}",
                config.head.epochs, config.head.optimizer, config.head.lr, config.head.batch_size
            ),
        ),
    ]);
    let (p, s) = (&config.pretrain, &config.scratch);
    for (key, enabled, arch, width, epochs, lr, augment, data) in [
        (
            "pretrain",
            p.enabled,
            &p.arch,
            p.width,
            p.epochs,
            p.lr,
            p.augment,
            p.data.display().to_string(),
        ),
        (
            "from scratch",
            s.enabled,
            &s.arch,
            s.width,
            s.epochs,
            s.lr,
            s.augment,
            "the run's data".into(),
        ),
    ] {
        if enabled {
            let width = if width == 1.0 { String::new() } else { format!(" width {width}") };
            summary.insert(
                key.into(),
                format!(
                    "{arch}{width} on {data}, {epochs} epochs, rmsprop lr {lr}, augmentation {augment}"
                ),
            );
        }
    }
    let f = &config.fine_tune;
    if f.enabled {
        let start = if f.from_head {
            "from the head stage's weights".to_owned()
        } else {
            format!("after {} head epochs", f.head_epochs)
        };
        let mode = match (f.mode, &derived.trunk_layer) {
            (FineTuneMode::CachedTrunk, Some(trunk)) => {
                format!("cached trunk ({} augmented passes of {trunk})", f.trunk_passes)
            }
            (FineTuneMode::CachedTrunk, None) => {
                format!("cached trunk ({} augmented passes)", f.trunk_passes)
            }
            (FineTuneMode::Plain, _) => "plain (trunk run on every augmented batch)".to_owned(),
        };
        summary.insert(
            "fine-tune".into(),
            format!(
                "from {} up, {} epochs of {} steps, batch {}, rmsprop lr {}, {start}, {mode}",
                f.unfreeze_from, f.epochs, f.steps_per_epoch, f.batch_size, f.lr
            ),
        );
    }
    summary
}
