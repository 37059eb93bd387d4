//! Cache keys: every input that changes the features, in clear, hashed into the entry's name.
//!
//! The key is `sha256(DOMAIN || canonical JSON of FeatureKey)`. The canonical JSON is serde's
//! output for these structs (fields in declaration order, no maps with unordered keys, floats in
//! their shortest round-trip form), so two machines computing the same features get the same key,
//! and changing any component changes it. Tool version and timestamps are deliberately not part
//! of the key: they do not change the features.

use serde::{Deserialize, Serialize};

/// Version of the entry layout and key schema; bump it when either changes meaning.
///
/// 2: augmented passes are computed from Keras' unrounded float pixels (1 rounded them to u8),
/// so entries of version 1 are not reused (`verify` refuses their format version; `gc` removes
/// them).
///
/// 3: JPEGs are decoded by libjpeg-turbo's decoder, so their pixels equal Pillow's (2 decoded
/// them with zune-jpeg, up to tens of levels off on chroma-subsampled files); the key holds
/// file digests and settings, not the decoder, so without the bump version 2 entries computed
/// from the old pixels would be reused.
///
/// 4: a split is stored as content-defined chunks, each an entry, listed by a split index
/// (`split.rs`), and augmentation draws are keyed by an image's identity (path and content
/// digest), not its position in the split, so augmented features of version 3 differ under the
/// same settings.
pub const FORMAT_VERSION: u32 = 4;

const DOMAIN: &[u8] = b"transfer-kit feature cache key\n";

/// Everything that determines the features of one cache entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureKey {
    /// [`FORMAT_VERSION`] at the time of writing.
    pub format_version: u32,
    /// sha256 of the weights file the extractor ran (our safetensors).
    pub weights_sha256: String,
    /// Architecture recorded with the weights, e.g. `vgg16_conv_base`.
    pub architecture: String,
    /// Keras layer name the network was cut at, e.g. `block5_pool`.
    pub layer: String,
    /// `[height, width]` the images were resized to.
    pub input_size: [u32; 2],
    /// Resize interpolation and crop, e.g. `nearest` or `bilinear+center-crop`.
    pub resize: String,
    /// `caffe`, `torch` or `rescale`.
    pub preprocessing: String,
    /// `none`, `avg` or `max`.
    pub pooling: String,
    /// Numeric precision of the forward pass (`f32`, `bf16`): it changes the features' values.
    pub precision: String,
    /// `None` for the plain (unaugmented) features.
    pub augmentation: Option<AugmentationKey>,
    /// The split, its classes and every input file.
    pub dataset: DatasetKey,
}

/// Which augmented pass of the data an entry holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AugmentationKey {
    /// The augmentation spec in its canonical JSON form.
    pub spec: serde_json::Value,
    /// Seed of the augmentation stream.
    pub seed: u64,
    /// Pass number, 0-based: pass p uses epoch p of the augmentation stream.
    pub pass: u32,
}

/// The exact inputs: class map and every file's content digest, in dataset order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetKey {
    /// `train`, `validation`, `test`, ...
    pub split: String,
    /// Class names; a file's label is its position here.
    pub classes: Vec<String>,
    /// Every input file, in dataset (row) order.
    pub files: Vec<FileKey>,
}

/// One input image: its path relative to the split folder, its label and its content digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileKey {
    /// Path relative to the split folder, `/`-separated.
    pub path: String,
    /// Class index into [`DatasetKey::classes`].
    pub label: u32,
    /// Lower-case hex sha256 of the file's bytes.
    pub sha256: String,
}

impl FeatureKey {
    /// The entry name: lowercase hex sha256 of the domain tag and the canonical JSON.
    pub fn digest(&self) -> String {
        let json =
            serde_json::to_vec(self).expect("FeatureKey serialises: no maps, no non-string keys");
        run_folder::sha256_hex(&[DOMAIN, &json].concat())
    }
}

/// True for a string that can be an entry name (64 lowercase hex digits), so nothing else in the
/// cache root is mistaken for an entry.
pub fn is_key(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample_key() -> FeatureKey {
        FeatureKey {
            format_version: FORMAT_VERSION,
            weights_sha256: "ab".repeat(32),
            architecture: "vgg16_conv_base".into(),
            layer: "block5_pool".into(),
            input_size: [150, 150],
            resize: "nearest".into(),
            preprocessing: "caffe".into(),
            pooling: "none".into(),
            precision: "f32".into(),
            augmentation: None,
            dataset: DatasetKey {
                split: "train".into(),
                classes: vec!["shirt".into(), "t-shirt_top".into()],
                files: vec![
                    FileKey { path: "shirt/00001.png".into(), label: 0, sha256: "01".repeat(32) },
                    FileKey {
                        path: "t-shirt_top/00002.png".into(),
                        label: 1,
                        sha256: "02".repeat(32),
                    },
                ],
            },
        }
    }

    /// A fixed key must hash to a fixed name on every machine and every build: teammates share
    /// caches by this name. If this changes, bump FORMAT_VERSION.
    #[test]
    fn golden_key() {
        expect_test::expect!["98edb601047a1831d78a43135c2f15125fd2c98f23ed91307d968669626bfa38"]
            .assert_eq(&sample_key().digest());
    }

    #[test]
    fn every_component_changes_the_key() {
        let base = sample_key();
        let mut variants: Vec<FeatureKey> = Vec::new();
        let mut push = |f: &dyn Fn(&mut FeatureKey)| {
            let mut k = base.clone();
            f(&mut k);
            variants.push(k);
        };
        push(&|k| k.format_version += 1);
        push(&|k| k.weights_sha256 = "cd".repeat(32));
        push(&|k| k.architecture = "small_convnet".into());
        push(&|k| k.layer = "block4_pool".into());
        push(&|k| k.input_size = [64, 64]);
        push(&|k| k.input_size = [150, 151]);
        push(&|k| k.resize = "bilinear".into());
        push(&|k| k.preprocessing = "rescale".into());
        push(&|k| k.pooling = "avg".into());
        push(&|k| k.precision = "bf16".into());
        push(&|k| {
            k.augmentation = Some(AugmentationKey {
                spec: serde_json::json!({"rotation_range": 40.0}),
                seed: 1,
                pass: 0,
            })
        });
        push(&|k| k.dataset.split = "validation".into());
        push(&|k| k.dataset.classes.reverse());
        push(&|k| k.dataset.files.reverse());
        push(&|k| k.dataset.files.pop().map(drop).unwrap_or(()));
        push(&|k| k.dataset.files[0].path = "shirt/00003.png".into());
        push(&|k| k.dataset.files[0].label = 1);
        push(&|k| k.dataset.files[0].sha256 = "03".repeat(32));
        let mut seen = std::collections::HashSet::new();
        assert!(seen.insert(base.digest()));
        for (i, k) in variants.iter().enumerate() {
            assert!(seen.insert(k.digest()), "variant {i} did not change the key");
        }
        let aug = |seed, pass| {
            let mut k = base.clone();
            k.augmentation = Some(AugmentationKey {
                spec: serde_json::json!({"rotation_range": 40.0}),
                seed,
                pass,
            });
            k.digest()
        };
        assert_ne!(aug(1, 0), aug(1, 1));
        assert_ne!(aug(1, 0), aug(2, 0));
        assert_eq!(aug(1, 0), aug(1, 0));
    }

    #[test]
    fn key_names_are_recognised() {
        assert!(is_key(&sample_key().digest()));
        assert!(!is_key(".tmp-x"));
        assert!(!is_key(&"A".repeat(64)));
        assert!(!is_key(&"a".repeat(63)));
    }
}
