//! A head trained on features streamed by row ([`StreamedSet`] over [`FeatureRows`] read from a
//! file with `pread`, as train-head reads the feature cache) ends bit-identical to the same
//! seeded head trained on the same features held in memory: same weights bit for bit, same
//! history, same evaluation; and no read ever asks for more than one batch of rows.

use std::cell::Cell;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;

use tch::{Device, Kind, Tensor, nn};
use training::fit_loop::BoxError;
use training::{
    DenseHead, FeatureRows, FeatureSet, Features, HeadFit, HeadSpec, OptimizerSpec, StreamedSet,
    evaluate_features, fit_head, tensors_io,
};

/// See `head_training.rs`: seeded libtorch runs in this file are serialised.
static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    TORCH_RNG.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Rows of float32 in a file, read on demand (one `pread` per row), counting what is asked.
struct FileRows {
    file: File,
    rows: u64,
    row_shape: Vec<i64>,
    row_len: usize,
    /// The most rows one call asked for, and the rows read in all.
    widest: Cell<usize>,
    read: Cell<u64>,
}

impl FileRows {
    fn write(dir: &std::path::Path, name: &str, xs: &Tensor) -> Self {
        let xs = xs.to_kind(Kind::Float).contiguous();
        let floats = Vec::<f32>::try_from(xs.flatten(0, -1)).unwrap();
        let path = dir.join(name);
        let mut file = File::create(&path).unwrap();
        for x in &floats {
            file.write_all(&x.to_le_bytes()).unwrap();
        }
        let size = xs.size();
        Self {
            file: File::open(&path).unwrap(),
            rows: size[0] as u64,
            row_shape: size[1..].to_vec(),
            row_len: size[1..].iter().product::<i64>() as usize,
            widest: Cell::new(0),
            read: Cell::new(0),
        }
    }

    fn read_row(&self, row: u64, out: &mut [f32]) -> Result<(), BoxError> {
        if row >= self.rows {
            return Err(format!("row {row} of {}", self.rows).into());
        }
        let mut bytes = vec![0u8; self.row_len * 4];
        self.file.read_exact_at(&mut bytes, row * self.row_len as u64 * 4)?;
        for (x, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
            *x = f32::from_le_bytes(b.try_into().unwrap());
        }
        Ok(())
    }

    fn count(&self, rows: usize) {
        self.widest.set(self.widest.get().max(rows));
        self.read.set(self.read.get() + rows as u64);
    }
}

impl FeatureRows for FileRows {
    fn rows(&self) -> u64 {
        self.rows
    }

    fn row_shape(&self) -> Vec<i64> {
        self.row_shape.clone()
    }

    fn gather(&self, rows: &[u64], out: &mut [f32]) -> Result<(), BoxError> {
        self.count(rows.len());
        assert_eq!(out.len(), rows.len() * self.row_len);
        for (&row, out) in rows.iter().zip(out.chunks_exact_mut(self.row_len)) {
            self.read_row(row, out)?;
        }
        Ok(())
    }

    fn read_range(&self, start: u64, len: u64, out: &mut [f32]) -> Result<(), BoxError> {
        self.count(len as usize);
        for (row, out) in (start..start + len).zip(out.chunks_exact_mut(self.row_len)) {
            self.read_row(row, out)?;
        }
        Ok(())
    }
}

/// Gaussian blobs in 2x2x2 dimensions, `classes` alternating.
fn blobs(n: i64, seed: i64, classes: i64) -> (Tensor, Tensor) {
    tch::manual_seed(seed);
    let labels = Tensor::arange(n, (Kind::Int64, Device::Cpu)).remainder(classes);
    let centres = Tensor::randn([classes, 8], (Kind::Float, Device::Cpu)) * 2.0;
    let xs =
        centres.index_select(0, &labels) + Tensor::randn([n, 8], (Kind::Float, Device::Cpu)) * 0.5;
    (xs.reshape([n, 2, 2, 2]), labels)
}

struct Run {
    history: Vec<training::EpochRecord>,
    weights: Vec<(String, Tensor)>,
    kept_epoch: usize,
    predictions: Vec<i64>,
    val_loss: f64,
}

fn train<'a>(
    train_set: impl Into<Features<'a>>,
    val: impl Into<Features<'a>> + Copy,
    classes: usize,
    early_stopping: Option<usize>,
) -> Run {
    tch::manual_seed(11);
    let vs = nn::VarStore::new(Device::Cpu);
    let head =
        DenseHead::new(&vs.root(), HeadSpec { input_width: 8, hidden: 16, dropout: 0.5, classes });
    let config = HeadFit {
        epochs: 6,
        batch_size: 7,
        seed: 3,
        early_stopping_patience: early_stopping,
        restore_best: early_stopping.is_some(),
    };
    let fitted =
        fit_head((&head, &vs), OptimizerSpec::rmsprop(1e-2), (train_set, val), &config, |_| Ok(()))
            .unwrap();
    let eval = evaluate_features(&head, val, 7).unwrap();
    let mut history = fitted.state.history;
    history.iter_mut().for_each(|r| r.seconds = 0.0);
    Run {
        history,
        weights: tensors_io::named_variables(&vs).into_iter().map(|(n, t)| (n, t.copy())).collect(),
        kept_epoch: fitted.kept_epoch,
        predictions: eval.predictions,
        val_loss: eval.loss,
    }
}

fn assert_bit_identical(memory: &Run, streamed: &Run, what: &str) {
    assert_eq!(memory.weights.len(), streamed.weights.len());
    for ((n, a), (m, b)) in memory.weights.iter().zip(&streamed.weights) {
        assert_eq!(n, m);
        let (a, b) = (
            Vec::<f32>::try_from(a.flatten(0, -1)).unwrap(),
            Vec::<f32>::try_from(b.flatten(0, -1)).unwrap(),
        );
        let (a, b): (Vec<u32>, Vec<u32>) =
            (a.iter().map(|x| x.to_bits()).collect(), b.iter().map(|x| x.to_bits()).collect());
        assert_eq!(a, b, "{what}: {n} differs");
    }
    assert_eq!(
        training::history_csv(&memory.history),
        training::history_csv(&streamed.history),
        "{what}"
    );
    for (a, b) in memory.history.iter().zip(&streamed.history) {
        assert_eq!(
            [a.loss, a.acc, a.val_loss, a.val_acc].map(f64::to_bits),
            [b.loss, b.acc, b.val_loss, b.val_acc].map(f64::to_bits),
            "{what}: epoch {}",
            a.epoch
        );
    }
    assert_eq!(memory.kept_epoch, streamed.kept_epoch, "{what}");
    assert_eq!(memory.predictions, streamed.predictions, "{what}");
    assert_eq!(memory.val_loss.to_bits(), streamed.val_loss.to_bits(), "{what}");
}

#[test]
fn streamed_training_is_bit_identical_to_in_memory() {
    let _guard = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    for (classes, passes, early_stopping) in [(2usize, 1usize, None), (3, 3, None), (2, 3, Some(1))]
    {
        let what = format!("{classes} classes, {passes} passes, early stopping {early_stopping:?}");
        // 53 training rows: the last batch of 7 is short.
        let (xs, labels) = blobs(53, 1, classes as i64);
        let train_passes: Vec<Tensor> = (0..passes).map(|p| &xs + 0.25 * p as f64).collect();
        let (val_xs, val_labels) = blobs(23, 2, classes as i64);
        let memory_train = FeatureSet {
            passes: train_passes.iter().map(Tensor::copy).collect(),
            labels: labels.copy(),
        };
        let memory_val = FeatureSet { passes: vec![val_xs.copy()], labels: val_labels.copy() };
        let memory = train(&memory_train, &memory_val, classes, early_stopping);

        let files: Vec<FileRows> = train_passes
            .iter()
            .enumerate()
            .map(|(p, t)| FileRows::write(dir.path(), &format!("{what}-train-{p}"), t))
            .collect();
        let val_file = FileRows::write(dir.path(), &format!("{what}-val"), &val_xs);
        let labels_of = |t: &Tensor| Vec::<i64>::try_from(t).unwrap();
        let streamed_train = StreamedSet::new(
            files.iter().map(|f| f as &dyn FeatureRows).collect(),
            labels_of(&labels),
            Device::Cpu,
        )
        .unwrap();
        let streamed_val =
            StreamedSet::new(vec![&val_file], labels_of(&val_labels), Device::Cpu).unwrap();
        let streamed = train(&streamed_train, &streamed_val, classes, early_stopping);
        assert_bit_identical(&memory, &streamed, &what);

        // Read by row, never more than a batch at a time; every epoch reads N training rows.
        let read: u64 = files.iter().map(|f| f.read.get()).sum();
        assert_eq!(read, 53 * memory.history.len() as u64, "{what}");
        assert!(files.iter().chain([&val_file]).all(|f| f.widest.get() <= 7), "{what}");
        if passes > 1 {
            assert!(files.iter().all(|f| f.read.get() > 0), "{what}: a pass was never drawn");
        }

        // A tensor is rows too: streamed through the trait's tensor implementation, the same.
        let tensor_train = StreamedSet::new(
            train_passes.iter().map(|t| t as &dyn FeatureRows).collect(),
            labels_of(&labels),
            Device::Cpu,
        )
        .unwrap();
        let tensor_val =
            StreamedSet::new(vec![&val_xs], labels_of(&val_labels), Device::Cpu).unwrap();
        assert_bit_identical(
            &memory,
            &train(&tensor_train, &tensor_val, classes, early_stopping),
            &what,
        );
    }
}

#[test]
fn streamed_sets_refuse_passes_that_disagree() {
    let a = Tensor::zeros([4, 2, 2, 2], (Kind::Float, Device::Cpu));
    let b = Tensor::zeros([5, 2, 2, 2], (Kind::Float, Device::Cpu));
    let c = Tensor::zeros([4, 8], (Kind::Float, Device::Cpu));
    assert!(StreamedSet::new(vec![&a, &a], vec![0; 4], Device::Cpu).is_ok());
    for passes in [vec![&a as &dyn FeatureRows, &b], vec![&a, &c], vec![&b], vec![]] {
        let err = StreamedSet::new(passes, vec![0; 4], Device::Cpu).err().expect("refused");
        assert!(matches!(err, training::TrainError::Config(_)), "{err}");
    }
}
