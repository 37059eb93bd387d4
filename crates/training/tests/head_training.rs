//! The dense head trained on synthetic cached features: it learns, it is deterministic to the
//! byte, it refuses features of the wrong width and non-finite losses, early stopping restores the
//! best epoch, and augmented passes are drawn per sample.

use std::collections::HashMap;

use tch::{Device, Kind, Tensor, nn};
use training::{
    DenseHead, FeatureSet, HeadFit, HeadSpec, OptimizerSpec, TrainError, evaluate, fit_head,
    tensors_io,
};

/// libtorch's random generator (weight init, dropout) is global to the process, and tests run on
/// parallel threads; concurrent ops also split float reductions differently. Every test in this
/// file holds this lock for its whole body, so seeded runs are exact.
static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    TORCH_RNG.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Two Gaussian blobs in 2x2x2 = 8 dimensions, classes 0/1 alternating; `seed` picks the draw.
fn blobs(n: i64, seed: i64, classes: i64) -> FeatureSet {
    tch::manual_seed(seed);
    let labels = Tensor::arange(n, (Kind::Int64, Device::Cpu)).remainder(classes);
    let centres = Tensor::randn([classes, 8], (Kind::Float, Device::Cpu)) * 2.0;
    let xs =
        centres.index_select(0, &labels) + Tensor::randn([n, 8], (Kind::Float, Device::Cpu)) * 0.5;
    FeatureSet { passes: vec![xs.reshape([n, 2, 2, 2])], labels }
}

struct Run {
    history: Vec<training::EpochRecord>,
    weights: Vec<(String, Tensor)>,
    val_acc: f64,
}

fn train(
    train_set: &FeatureSet,
    val: &FeatureSet,
    classes: usize,
    seed: u64,
    epochs: usize,
    es: Option<usize>,
) -> Result<Run, TrainError> {
    tch::manual_seed(seed as i64);
    let vs = nn::VarStore::new(Device::Cpu);
    let head =
        DenseHead::new(&vs.root(), HeadSpec { input_width: 8, hidden: 16, dropout: 0.5, classes });
    let config = HeadFit {
        epochs,
        batch_size: 20,
        seed,
        early_stopping_patience: es,
        restore_best: es.is_some(),
    };
    let history = fit_head(
        (&head, &vs),
        OptimizerSpec::rmsprop(1e-2),
        (train_set, val),
        &config,
        |_| Ok(()),
    )?
    .state
    .history;
    let val_acc = evaluate(&head, &val.passes[0], &val.labels, 20)?.acc;
    let weights =
        tensors_io::named_variables(&vs).into_iter().map(|(n, t)| (n, t.copy())).collect();
    Ok(Run { history, weights, val_acc })
}

#[test]
fn learns_separable_features_binary_and_categorical() {
    let _guard = rng_lock();
    for classes in [2usize, 3] {
        let run = train(
            &blobs(200, 1, classes as i64),
            &blobs(100, 1, classes as i64),
            classes,
            0,
            15,
            None,
        )
        .unwrap();
        assert!(run.val_acc > 0.9, "{classes} classes: val acc {}", run.val_acc);
        assert!(run.history.last().unwrap().loss < run.history[0].loss);
    }
}

#[test]
fn same_seed_gives_byte_identical_weights_and_history() {
    let _guard = rng_lock();
    let (t, v) = (blobs(100, 2, 2), blobs(40, 3, 2));
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    let mut csvs = Vec::new();
    for i in 0..2 {
        let run = train(&t, &v, 2, 5, 4, None).unwrap();
        let path = dir.path().join(format!("w{i}.safetensors"));
        tensors_io::save(&path, &run.weights, &HashMap::new()).unwrap();
        files.push(std::fs::read(&path).unwrap());
        let mut h = run.history.clone();
        h.iter_mut().for_each(|r| r.seconds = 0.0);
        csvs.push(training::history_csv(&h));
    }
    assert_eq!(files[0], files[1]);
    assert_eq!(csvs[0], csvs[1]);
    let other = train(&t, &v, 2, 6, 4, None).unwrap();
    let path = dir.path().join("other.safetensors");
    tensors_io::save(&path, &other.weights, &HashMap::new()).unwrap();
    assert_ne!(std::fs::read(&path).unwrap(), files[0], "a different seed must change the weights");
}

#[test]
fn wrong_feature_width_fails_before_training() {
    let _guard = rng_lock();
    let t = FeatureSet {
        passes: vec![Tensor::zeros([10, 3, 3], (Kind::Float, Device::Cpu))],
        labels: Tensor::zeros([10], (Kind::Int64, Device::Cpu)),
    };
    let err = train(&t, &blobs(10, 0, 2), 2, 0, 1, None).err().unwrap();
    assert!(
        matches!(
            err,
            TrainError::Model(models::ModelError::WidthMismatch { expected: 8, actual: 9, .. })
        ),
        "{err}"
    );
}

#[test]
fn non_finite_loss_stops_naming_epoch_and_step() {
    let _guard = rng_lock();
    let mut t = blobs(60, 0, 2);
    // Poison one sample: whichever batch draws it has a NaN loss.
    let poisoned = t.passes[0].copy();
    let _ = poisoned.get(17).fill_(f64::NAN);
    t.passes[0] = poisoned;
    let err = train(&t, &blobs(20, 1, 2), 2, 0, 3, None).err().unwrap();
    match err {
        TrainError::NonFinite { epoch, step, .. } => {
            assert!(epoch == 1 && (1..=3).contains(&step), "{epoch} {step}")
        }
        other => panic!("expected NonFinite, got {other}"),
    }
}

#[test]
fn non_finite_weights_are_never_written() {
    let _guard = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.safetensors");
    let t = Tensor::from_slice(&[1.0f32, f32::INFINITY]);
    let err = tensors_io::save(&path, &[("w".into(), t)], &HashMap::new()).unwrap_err().to_string();
    assert!(err.contains("non-finite") && err.contains('w'), "{err}");
    assert!(!path.exists());
}

#[test]
fn saved_weights_round_trip_with_metadata() {
    let _guard = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let meta = HashMap::from([("classes".to_owned(), "[\"a\",\"b\"]".to_owned())]);
    let t = Tensor::from_slice(&[1.5f32, -2.0, 3.0, 4.0]).reshape([2, 2]);
    let digest = tensors_io::save(&path, &[("x.weight".into(), t.shallow_clone())], &meta).unwrap();
    let loaded = tensors_io::load(&path).unwrap();
    assert_eq!(loaded.sha256, digest);
    assert_eq!(loaded.metadata, meta);
    assert!(loaded.tensors[0].1.equal(&t));
}

#[test]
fn early_stopping_restores_the_best_epoch() {
    let _guard = rng_lock();
    // Labels unrelated to the features: validation loss soon rises, so training stops early.
    let mut t = blobs(100, 4, 2);
    t.labels = Tensor::from_slice(&[0i64, 1, 1, 0, 1, 0, 0, 0, 1, 1]).repeat([10]);
    let v = blobs(40, 5, 2);
    let run = train(&t, &v, 2, 0, 40, Some(2)).unwrap();
    assert!(run.history.len() < 40, "did not stop early");
    let best = run.history.iter().map(|r| r.val_loss).fold(f64::INFINITY, f64::min);
    let restored = {
        let vs = nn::VarStore::new(Device::Cpu);
        let head = DenseHead::new(
            &vs.root(),
            HeadSpec { input_width: 8, hidden: 16, dropout: 0.5, classes: 2 },
        );
        tensors_io::copy_into(&vs, &run.weights, std::path::Path::new("memory")).unwrap();
        evaluate(&head, &v.passes[0], &v.labels, 20).unwrap().loss
    };
    assert!((restored - best).abs() < 1e-6, "restored {restored}, best {best}");
}

#[test]
fn augmented_passes_are_drawn_per_sample() {
    let _guard = rng_lock();
    let (t, v) = (blobs(80, 2, 2), blobs(20, 3, 2));
    let single = train(&t, &v, 2, 9, 3, None).unwrap();
    let twin = FeatureSet {
        passes: vec![t.passes[0].copy(), t.passes[0].copy()],
        labels: t.labels.copy(),
    };
    let same = train(&twin, &v, 2, 9, 3, None).unwrap();
    for ((n, a), (_, b)) in single.weights.iter().zip(&same.weights) {
        let diff = (a - b).abs().max().double_value(&[]);
        assert!(
            a.equal(b),
            "{n}: two identical passes must train exactly like one (max diff {diff})"
        );
    }
    let noisy = FeatureSet {
        passes: vec![t.passes[0].copy(), &t.passes[0] + 0.3],
        labels: t.labels.copy(),
    };
    let mixed = train(&noisy, &v, 2, 9, 3, None).unwrap();
    assert!(
        single.weights.iter().zip(&mixed.weights).any(|((_, a), (_, b))| !a.equal(b)),
        "the second pass was never drawn"
    );
}
