//! Layer names and input sizes, checked before any stage runs, and the settings derived from
//! the base's layers (`trunk_layer`: the layer just below `unfreeze_from`).
//!
//! xtask cannot link the models crate (it links libtorch), so the layer tables come from the
//! release `vgg16-layers --json` (models' own binary, built with the stages): for the base's
//! weights file, or, for a base this run pretrains and that has no file yet, for
//! `--arch <[pretrain] arch>`; likewise for `[scratch] arch`. The tables are read first
//! ([`tables`]), then the config is checked against them ([`check`], pure, tested on tables the
//! binary printed, kept in `testdata/`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use super::config::{Config, FineTuneMode, Settings};
use super::runner::Tools;
use crate::stage_args::{StageArgs, Vgg16Layers};

/// `vgg16-layers --json`: a conv base's layers at one input size.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct LayerTable {
    /// As a weights file records it (`vgg16_conv_base`, `small_convnet`).
    pub architecture: String,
    /// Input to output.
    pub layers: Vec<TableLayer>,
}

/// One row of a [`LayerTable`].
#[derive(Debug, Clone, Deserialize)]
pub(super) struct TableLayer {
    /// Keras name.
    pub name: String,
    /// torchvision names that select it too (`features.N`).
    pub aliases: Vec<String>,
    /// `[H, W, C]`, or `None` when the input is too small to reach it.
    pub output: Option<[i64; 3]>,
    /// The smallest square input that reaches it.
    pub min_input: i64,
}

impl LayerTable {
    /// Position of the layer `name` selects (a Keras name in any case, or a torchvision name),
    /// as the stage binaries resolve it.
    fn find(&self, name: &str) -> Option<usize> {
        let name = name.trim();
        self.layers
            .iter()
            .position(|l| l.name.eq_ignore_ascii_case(name) || l.aliases.iter().any(|a| a == name))
    }

    fn names(&self) -> String {
        self.layers.iter().map(|l| l.name.as_str()).collect::<Vec<_>>().join(", ")
    }

    fn last(&self) -> &TableLayer {
        self.layers.last().expect("vgg16-layers lists at least one layer")
    }
}

/// A conv base, as `vgg16-layers` is told about it.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Base {
    /// The base in this weights file.
    Weights(PathBuf),
    /// The base `pretrain --arch arch --width width` trains.
    Arch { arch: String, width: f64 },
}

/// The layer tables a run's settings are checked against.
#[derive(Debug, Clone)]
pub(super) struct Tables {
    /// The base that is transferred (extracted, fine-tuned).
    pub base: LayerTable,
    /// `[pretrain]`'s network, when it is enabled.
    pub pretrain: Option<LayerTable>,
    /// `[scratch]`'s network, when it is enabled.
    pub scratch: Option<LayerTable>,
}

/// Settings that follow from others and the base's layers.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Derived {
    /// The last frozen layer, whose output the cached-trunk mode caches: the one just below
    /// `unfreeze_from`. `None` unless fine-tuning in cached-trunk mode.
    pub trunk_layer: Option<String>,
    /// Set when the tables could not be read (`--status`, which builds nothing, before the
    /// first build): why. The derived settings are then unknown.
    pub unknown: Option<String>,
}

impl Derived {
    /// Nothing could be derived, for `why`.
    pub fn unknown(why: String) -> Self {
        Self { trunk_layer: None, unknown: Some(why) }
    }
}

/// The bases of a run: the transferred one (this run's pretrained base, or `weights`; demo
/// weights not fetched yet are VGG16's), and those of `[pretrain]` and `[scratch]`.
pub(super) fn bases(config: &Config, weights: &Path) -> (Base, Option<Base>, Option<Base>) {
    let (p, s) = (&config.pretrain, &config.scratch);
    let pretrain = Base::Arch { arch: p.arch.clone(), width: p.width };
    let base = if p.enabled && p.use_as_base {
        pretrain.clone()
    } else if config.run.weights.is_none() && !weights.exists() {
        // The demo weights (`cargo xtask weights`) are ImageNet VGG16.
        Base::Arch { arch: "vgg16".into(), width: 1.0 }
    } else {
        Base::Weights(weights.to_owned())
    };
    let scratch = Base::Arch { arch: s.arch.clone(), width: s.width };
    (base, p.enabled.then_some(pretrain), s.enabled.then_some(scratch))
}

/// Reads the tables of the run's bases with `table` (one call per distinct base).
pub(super) fn tables(
    config: &Config,
    weights: &Path,
    mut table: impl FnMut(&Base) -> Result<LayerTable>,
) -> Result<Tables> {
    let (base, pretrain, scratch) = bases(config, weights);
    let base_table = table(&base)?;
    let mut other = |b: Option<Base>| -> Result<Option<LayerTable>> {
        match b {
            None => Ok(None),
            Some(b) if b == base => Ok(Some(base_table.clone())),
            Some(b) => table(&b).map(Some),
        }
    };
    let pretrain = other(pretrain)?;
    let scratch = other(scratch)?;
    Ok(Tables { base: base_table, pretrain, scratch })
}

/// The table of `base` at `input_size`, from the release `vgg16-layers --json`.
pub(super) fn from_binary(tools: &Tools, base: &Base, input_size: u32) -> Result<LayerTable> {
    let args = match base {
        Base::Weights(w) => {
            Vgg16Layers { input_size, weights: Some(w.clone()), arch: None, width: None }
        }
        Base::Arch { arch, width } => Vgg16Layers {
            input_size,
            weights: None,
            arch: Some(arch.clone()),
            width: (*width != 1.0).then_some(*width),
        },
    };
    let binary = tools.release.join(Vgg16Layers::BINARY);
    let mut cmd = Command::new(&binary);
    cmd.args(args.to_args()).env("NO_COLOR", "1");
    tools.torch.configure(&mut cmd);
    let shown = format!("{} {}", binary.display(), args.to_strings().join(" "));
    let out = cmd.output().with_context(|| format!("starting {shown}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let why = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or_default();
        bail!("{shown} failed ({}): {why}", out.status);
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("{shown} printed no layer table"))
}

/// Checks the layer names and the input size of `settings` against `tables`, naming the
/// setting and the config file, and derives the trunk layer.
pub(super) fn check(settings: &Settings, tables: &Tables) -> Result<Derived> {
    let (c, file) = (&settings.config, settings.file.display());
    let base = &tables.base;
    let arch = &base.architecture;
    let size = c.extract.input_size;
    let too_small = |what: &str, layer: &TableLayer| {
        format!(
            "{file}: [extract] input_size = {size} is too small for {what}: {} needs at least \
             {min}x{min}",
            layer.name,
            min = layer.min_input
        )
    };

    let Some(extract) = base.find(&c.extract.layer) else {
        bail!(
            "{file}: [extract] layer = {:?}: {arch} has no such layer (its layers: {})",
            c.extract.layer,
            base.names()
        );
    };
    if base.layers[extract].output.is_none() {
        bail!(too_small(&format!("extracting from {arch}"), &base.layers[extract]));
    }

    let mut derived = Derived::default();
    let f = &c.fine_tune;
    if f.enabled {
        let Some(from) = base.find(&f.unfreeze_from) else {
            bail!(
                "{file}: [fine_tune] unfreeze_from = {:?}: {arch} has no such layer (its layers: \
                 {})",
                f.unfreeze_from,
                base.names()
            );
        };
        if base.last().output.is_none() {
            bail!(too_small(&format!("fine-tuning {arch}"), base.last()));
        }
        // Fine-tuning runs the whole base, so a head it starts from must take the last
        // layer's features, unpooled.
        if f.from_head && (extract != base.layers.len() - 1 || c.extract.pooling != "none") {
            bail!(
                "{file}: [fine_tune] from_head = true starts fine-tuning from the head trained on [extract] layer = {:?} with pooling = {:?}, but fine-tuning runs {arch} up to its last layer {:?} without pooling: extract {:?} with pooling \"none\", or set from_head = false",
                c.extract.layer,
                c.extract.pooling,
                base.last().name,
                base.last().name
            );
        }
        if f.mode == FineTuneMode::CachedTrunk {
            if from == 0 {
                bail!(
                    "{file}: [fine_tune] unfreeze_from = {:?} is the first layer of {arch}: no \
                     layer below it stays frozen, so there is no trunk to cache (mode = \"plain\")",
                    f.unfreeze_from
                );
            }
            derived.trunk_layer = Some(base.layers[from - 1].name.clone());
        }
    }
    if let Some(old) = &f.trunk_layer {
        legacy_trunk_layer(settings, old, base, derived.trunk_layer.as_deref())?;
    }

    for (section, arch_setting, table) in [
        ("pretrain", &c.pretrain.arch, &tables.pretrain),
        ("scratch", &c.scratch.arch, &tables.scratch),
    ] {
        if let Some(table) = table
            && table.last().output.is_none()
        {
            bail!(too_small(&format!("[{section}] arch = {arch_setting:?}"), table.last()));
        }
    }
    Ok(derived)
}

/// `trunk_layer` in a config written before it was derived: a warning when it names the
/// derived layer (or is unused), an error when it names another.
fn legacy_trunk_layer(
    settings: &Settings,
    old: &str,
    base: &LayerTable,
    derived: Option<&str>,
) -> Result<()> {
    let file = settings.file.display();
    let unfreeze_from = &settings.config.fine_tune.unfreeze_from;
    match derived {
        Some(derived) if base.find(old) != base.find(derived) => bail!(
            "{file}: [fine_tune] trunk_layer = {old:?}, but the trunk layer is derived now, as \
             the layer just below unfreeze_from = {unfreeze_from:?}, which is {derived:?}: \
             remove trunk_layer (a trunk at another layer would leave layers that neither train \
             nor come from the cache)"
        ),
        Some(derived) => eprintln!(
            "warning: {file}: [fine_tune] trunk_layer is derived now (the layer just below \
             unfreeze_from = {unfreeze_from:?}: {derived}); remove the setting"
        ),
        None => eprintln!(
            "warning: {file}: [fine_tune] trunk_layer is derived now (the layer just below \
             unfreeze_from) and unused here; remove the setting"
        ),
    }
    Ok(())
}

/// A table `vgg16-layers --json` printed, kept in `testdata/` (`vgg16-64.json`: VGG16 at 64;
/// `small-convnet-48.json`: `--arch small-convnet --input-size 48`; and so on).
#[cfg(test)]
pub(super) fn fixture_table(name: &str) -> LayerTable {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/pipeline/testdata").join(name);
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str) -> LayerTable {
        fixture_table(name)
    }

    fn settings(toml: &str) -> Settings {
        Settings { config: toml::from_str(toml).unwrap(), file: "my.toml".into() }
    }

    fn vgg16(size: &str) -> Tables {
        let t = table(&format!("vgg16-{size}.json"));
        Tables { base: t, pretrain: None, scratch: Some(table("small-convnet-48.json")) }
    }

    fn check_err(toml: &str, tables: &Tables, expect: &[&str]) {
        let err = check(&settings(toml), tables).unwrap_err().to_string();
        for e in expect {
            assert!(err.contains(e), "{e:?} not in: {err}");
        }
    }

    #[test]
    fn a_head_for_another_layer_cannot_start_the_fine_tuning() {
        check_err(
            "[extract]\nlayer = \"block4_pool\"",
            &vgg16("64"),
            &["my.toml: [fine_tune] from_head = true", "\"block4_pool\"", "\"block5_pool\""],
        );
        check_err(
            "[extract]\npooling = \"avg\"",
            &vgg16("64"),
            &["my.toml: [fine_tune] from_head = true", "pooling = \"avg\""],
        );
        check(
            &settings("[extract]\nlayer = \"block4_pool\"\n[fine_tune]\nfrom_head = false"),
            &vgg16("64"),
        )
        .unwrap();
    }

    #[test]
    fn the_trunk_layer_is_the_one_below_unfreeze_from() {
        let derived = check(&settings(""), &vgg16("64")).unwrap();
        assert_eq!(derived.trunk_layer.as_deref(), Some("block4_pool"));
        let derived =
            check(&settings("[fine_tune]\nunfreeze_from = \"block5_conv2\""), &vgg16("64"))
                .unwrap();
        assert_eq!(derived.trunk_layer.as_deref(), Some("block5_conv1"));
        // The torchvision spelling and any case select the same layer, as in the stages.
        let derived =
            check(&settings("[fine_tune]\nunfreeze_from = \"features.24\""), &vgg16("64")).unwrap();
        assert_eq!(derived.trunk_layer.as_deref(), Some("block4_pool"));
        let upper = "[extract]\nlayer = \"BLOCK4_POOL\"\n[fine_tune]\nfrom_head = false";
        let derived = check(&settings(upper), &vgg16("64")).unwrap();
        assert_eq!(derived.trunk_layer.as_deref(), Some("block4_pool"));
        let plain = "[fine_tune]\nmode = \"plain\"";
        assert_eq!(check(&settings(plain), &vgg16("64")).unwrap(), Derived::default());
    }

    #[test]
    fn unknown_layers_are_named_with_the_setting_and_the_file() {
        let t = vgg16("64");
        check_err(
            "[extract]\nlayer = \"block9_pool\"",
            &t,
            &["my.toml: [extract] layer = \"block9_pool\"", "vgg16_conv_base", "block5_pool"],
        );
        check_err(
            "[fine_tune]\nunfreeze_from = \"block6_conv1\"",
            &t,
            &["my.toml: [fine_tune] unfreeze_from = \"block6_conv1\""],
        );
        check_err(
            "[fine_tune]\nunfreeze_from = \"block1_conv1\"",
            &t,
            &["is the first layer", "mode = \"plain\""],
        );
        // Off, fine-tuning's layer is not looked at.
        check(&settings("[fine_tune]\nenabled = false\nunfreeze_from = \"x\""), &t).unwrap();
    }

    #[test]
    fn inputs_too_small_for_the_pools_fail_before_any_stage() {
        check_err(
            "[extract]\ninput_size = 16",
            &vgg16("16"),
            &["my.toml: [extract] input_size = 16", "block5_pool needs at least 32x32"],
        );
        // The small convnet's valid convolutions need 46: too much for 40, in [scratch] too.
        let small = Tables {
            base: table("small-convnet-40.json"),
            pretrain: Some(table("small-convnet-40.json")),
            scratch: None,
        };
        check_err(
            "[extract]\ninput_size = 40\nlayer = \"max_pooling2d_3\"\n[fine_tune]\nenabled = false",
            &small,
            &[
                "[extract] input_size = 40",
                "[pretrain] arch",
                "max_pooling2d_4 needs at least 46x46",
            ],
        );
        let scratch_too_small =
            Tables { scratch: Some(table("small-convnet-40.json")), ..vgg16("64") };
        check_err(
            "",
            &scratch_too_small,
            &["[scratch] arch = \"small-convnet\"", "needs at least 46x46"],
        );
    }

    #[test]
    fn homework_checks_against_the_base_it_pretrains() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../homework.toml");
        let config = super::super::config::read(&path).unwrap();
        let (base, pretrain, scratch) = bases(&config, Path::new("/nonexistent/base"));
        let small = Base::Arch { arch: "small-convnet".into(), width: 1.0 };
        assert_eq!(
            (&base, pretrain.as_ref(), scratch.as_ref()),
            (&small, Some(&small), Some(&small))
        );
        let mut calls = 0;
        let tables = tables(&config, Path::new("/nonexistent/base"), |_| {
            calls += 1;
            Ok(table("small-convnet-48.json"))
        })
        .unwrap();
        assert_eq!(calls, 1, "one table for one base");
        let settings = Settings { config, file: path };
        // homework.toml still names trunk_layer = max_pooling2d_2 for plain mode: a warning.
        assert_eq!(check(&settings, &tables).unwrap(), Derived::default());
    }

    #[test]
    fn a_legacy_trunk_layer_is_refused_only_when_it_differs() {
        let t = vgg16("64");
        let same = "[fine_tune]\ntrunk_layer = \"block4_pool\"";
        assert_eq!(check(&settings(same), &t).unwrap().trunk_layer.as_deref(), Some("block4_pool"));
        let alias = "[fine_tune]\ntrunk_layer = \"features.23\"";
        assert!(check(&settings(alias), &t).is_ok());
        check_err(
            "[fine_tune]\ntrunk_layer = \"block3_pool\"",
            &t,
            &["my.toml: [fine_tune] trunk_layer = \"block3_pool\"", "derived", "\"block4_pool\""],
        );
    }

    #[test]
    fn demo_weights_not_fetched_yet_are_vgg16() {
        let config = Config::default();
        let (base, ..) = bases(&config, Path::new("/nonexistent/demo.safetensors"));
        assert_eq!(base, Base::Arch { arch: "vgg16".into(), width: 1.0 });
        let mut config = Config::default();
        config.run.weights = Some("/nonexistent/mine.safetensors".into());
        let (base, ..) = bases(&config, Path::new("/nonexistent/mine.safetensors"));
        assert_eq!(base, Base::Weights("/nonexistent/mine.safetensors".into()));
    }
}
