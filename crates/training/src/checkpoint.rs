//! Crash-safe training checkpoints: named tensors (weights, optimizer state) in safetensors plus
//! a JSON state (epoch, step, RNG seed and counters, history), committed by a small pointer file.
//!
//! A checkpoint *slot* (`latest`, `best`, ...) in a folder is three kinds of files:
//! - `<slot>-<seq>.safetensors` and `<slot>-<seq>.json`: one version, never rewritten;
//! - `<slot>.json`: the pointer, naming the current version's two files and their sha256.
//!
//! A save writes the new version's files (each atomically: temp file, fsync, rename), then
//! replaces the pointer the same way, fsyncs the folder, and only then removes older versions.
//! So a kill at any moment leaves the pointer on a complete, digest-checked version (the previous
//! one until the new pointer lands), and a failed save leaves the previous checkpoint loadable.
//! Loading trusts nothing: a missing pointer means "no checkpoint", and a pointer whose files are
//! missing, truncated or altered is an error naming the file, never a silent partial load.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::Tensor;

use crate::{TrainError, tensors_io};

/// Version of the pointer format.
pub const FORMAT_VERSION: u32 = 1;

/// `<slot>.json`: which version of a slot is current.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pointer {
    pub format_version: u32,
    pub slot: String,
    /// Version number, increasing with every save of the slot.
    pub seq: u64,
    /// File names (in the checkpoint folder) and their sha256.
    pub tensors: String,
    pub tensors_sha256: String,
    pub state: String,
    pub state_sha256: String,
}

/// A checkpoint read back: tensors (float32, CPU, sorted by name), the metadata stored with them,
/// and the caller's state.
#[derive(Debug)]
pub struct Checkpoint<S> {
    pub seq: u64,
    pub tensors: Vec<(String, Tensor)>,
    pub metadata: HashMap<String, String>,
    pub state: S,
}

/// A folder of checkpoint slots.
#[derive(Debug, Clone)]
pub struct CheckpointDir {
    dir: PathBuf,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io { path: path.to_owned(), source }
}

fn bad(path: &Path, reason: impl Into<String>) -> TrainError {
    TrainError::Weights { path: path.to_owned(), reason: reason.into() }
}

impl CheckpointDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn pointer_path(&self, slot: &str) -> PathBuf {
        self.dir.join(format!("{slot}.json"))
    }

    /// For a failed run's message: where the current version of `slot` is (its pointer file),
    /// or that none was written, so the message never names a folder that does not exist.
    pub fn slot_note(&self, slot: &str) -> String {
        match self.pointer(slot) {
            Ok(Some(_)) => format!(
                "the last good checkpoint is kept in {} (--resume continues from it)",
                self.pointer_path(slot).display()
            ),
            Ok(None) => "no checkpoint was written before the failure".to_owned(),
            Err(e) => format!("the checkpoint in {} is unusable ({e})", self.dir.display()),
        }
    }

    /// Saves a new version of `slot` and makes it current; returns its pointer. On error the
    /// slot's previous version stays current and loadable.
    pub fn save<S: Serialize>(
        &self,
        slot: &str,
        tensors: &[(String, Tensor)],
        metadata: &HashMap<String, String>,
        state: &S,
    ) -> Result<Pointer, TrainError> {
        check_slot(slot)?;
        std::fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        // Past every version on disk, pointed to or not (an orphan of a killed save included),
        // so no file a pointer may name is ever rewritten.
        let seq = self.versions(slot)?.into_iter().max().map_or(1, |s| s + 1);
        let tensors_name = format!("{slot}-{seq:08}.safetensors");
        let state_name = format!("{slot}-{seq:08}.json");

        let tensors_sha256 = tensors_io::save(&self.dir.join(&tensors_name), tensors, metadata)?;
        let mut state_bytes = serde_json::to_vec_pretty(state).map_err(|e| {
            bad(&self.dir.join(&state_name), format!("state does not serialise: {e}"))
        })?;
        state_bytes.push(b'\n');
        crate::write_atomic_ctx(&self.dir.join(&state_name), &state_bytes)?;

        let pointer = Pointer {
            format_version: FORMAT_VERSION,
            slot: slot.to_owned(),
            seq,
            tensors: tensors_name,
            tensors_sha256,
            state: state_name,
            state_sha256: hex::encode(Sha256::digest(&state_bytes)),
        };
        let mut pointer_bytes = serde_json::to_vec_pretty(&pointer).expect("pointers serialise");
        pointer_bytes.push(b'\n');
        crate::write_atomic_ctx(&self.pointer_path(slot), &pointer_bytes)?;
        // The rename is durable only once the folder is synced; some platforms cannot open one.
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        self.prune(slot, seq);
        Ok(pointer)
    }

    /// The slot's pointer, `None` when there is none.
    pub fn pointer(&self, slot: &str) -> Result<Option<Pointer>, TrainError> {
        check_slot(slot)?;
        let path = self.pointer_path(slot);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let pointer: Pointer = serde_json::from_slice(&bytes)
            .map_err(|e| bad(&path, format!("damaged checkpoint pointer: {e}")))?;
        if pointer.format_version != FORMAT_VERSION {
            return Err(bad(
                &path,
                format!(
                    "pointer format_version {}, this build reads {FORMAT_VERSION}",
                    pointer.format_version
                ),
            ));
        }
        let expected = (
            format!("{slot}-{:08}.safetensors", pointer.seq),
            format!("{slot}-{:08}.json", pointer.seq),
        );
        if pointer.slot != slot
            || (pointer.tensors.as_str(), pointer.state.as_str())
                != (expected.0.as_str(), expected.1.as_str())
        {
            return Err(bad(
                &path,
                format!(
                    "pointer names {} / {}, expected {} / {}",
                    pointer.tensors, pointer.state, expected.0, expected.1
                ),
            ));
        }
        Ok(Some(pointer))
    }

    /// Loads the current version of `slot`: `None` when the slot has no pointer; an error when
    /// the pointer or a file it names is damaged (digests are checked before anything is parsed).
    pub fn load<S: DeserializeOwned>(
        &self,
        slot: &str,
    ) -> Result<Option<Checkpoint<S>>, TrainError> {
        let Some(pointer) = self.pointer(slot)? else {
            return Ok(None);
        };
        let state_path = self.dir.join(&pointer.state);
        let state_bytes = std::fs::read(&state_path).map_err(io_err(&state_path))?;
        let state_sha = hex::encode(Sha256::digest(&state_bytes));
        if state_sha != pointer.state_sha256 {
            return Err(bad(
                &state_path,
                format!(
                    "sha256 {state_sha}, but {slot}.json expects {}: damaged checkpoint",
                    pointer.state_sha256
                ),
            ));
        }
        let tensors_path = self.dir.join(&pointer.tensors);
        let loaded = tensors_io::load(&tensors_path)?;
        if loaded.sha256 != pointer.tensors_sha256 {
            return Err(bad(
                &tensors_path,
                format!(
                    "sha256 {}, but {slot}.json expects {}: damaged checkpoint",
                    loaded.sha256, pointer.tensors_sha256
                ),
            ));
        }
        let state = serde_json::from_slice(&state_bytes)
            .map_err(|e| bad(&state_path, format!("unreadable state: {e}")))?;
        Ok(Some(Checkpoint {
            seq: pointer.seq,
            tensors: loaded.tensors,
            metadata: loaded.metadata,
            state,
        }))
    }

    /// Removes every checkpoint file of every slot (a fresh run in a folder that held one).
    pub fn clear(&self) -> Result<(), TrainError> {
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&self.dir)(e)),
        }
    }

    /// Version numbers of `slot` present on disk (either file).
    fn versions(&self, slot: &str) -> Result<Vec<u64>, TrainError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&self.dir)(e)),
        };
        let prefix = format!("{slot}-");
        let mut out = Vec::new();
        for entry in entries {
            let name = entry.map_err(io_err(&self.dir))?.file_name();
            let name = name.to_string_lossy();
            let Some(rest) = name.strip_prefix(&prefix) else { continue };
            let digits = rest.strip_suffix(".safetensors").or_else(|| rest.strip_suffix(".json"));
            if let Some(seq) = digits.filter(|d| d.len() == 8).and_then(|d| d.parse().ok()) {
                out.push(seq);
            }
        }
        Ok(out)
    }

    /// Best effort: older versions of `slot` and leftover temp files go; failure only wastes disk.
    fn prune(&self, slot: &str, current: u64) {
        for seq in self.versions(slot).unwrap_or_default() {
            if seq < current {
                for ext in ["safetensors", "json"] {
                    let _ = std::fs::remove_file(self.dir.join(format!("{slot}-{seq:08}.{ext}")));
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
}

/// Serde helpers for `f64` fields of a checkpoint state that must come back bit for bit
/// (`#[serde(with = "training::checkpoint::exact_f64")]`): serde_json's default float parser is
/// not correctly rounded, so a plain `f64` can return one ulp off. The value is written as a
/// string in Rust's shortest round-trip form (`"0.9666666666666667"`, `"NaN"`, `"inf"`), which
/// `str::parse` reads back exactly.
pub mod exact_f64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(|_| serde::de::Error::custom(format!("{text:?} is not a number")))
    }
}

/// Slot names become file names: plain words only.
fn check_slot(slot: &str) -> Result<(), TrainError> {
    if slot.is_empty() || !slot.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(TrainError::Config(format!(
            "checkpoint slot {slot:?}: use letters, digits and '_' only"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct State {
        epoch: usize,
        step: usize,
        #[serde(with = "exact_f64")]
        loss_sum: f64,
    }

    struct Unserialisable;

    impl Serialize for Unserialisable {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("not today"))
        }
    }

    fn check_exact(v: f64) {
        #[derive(Serialize, Deserialize)]
        struct W(#[serde(with = "exact_f64")] f64);
        let back: W = serde_json::from_str(&serde_json::to_string(&W(v)).unwrap()).unwrap();
        assert!(
            back.0.to_bits() == v.to_bits() || (v.is_nan() && back.0.is_nan()),
            "{v:e} came back as {:e}",
            back.0
        );
    }

    #[test]
    fn exact_f64_round_trips_every_bit() {
        // serde_json's default float parser is not correctly rounded: 0.9666666666666667 comes
        // back one ulp off, which is why checkpoint states store floats with `exact_f64`.
        for v in [
            0.1 + 0.2 + 2.0 / 3.0,
            0.9666666666666667,
            1e-300,
            5e-324,
            -0.0,
            123456.789e10,
            f64::MAX,
            f64::INFINITY,
            f64::NAN,
        ] {
            check_exact(v);
        }
        let mut x = 0.123_f64;
        for _ in 0..1000 {
            x = (x * 3.999).fract() + x.sqrt();
            check_exact(x);
        }
    }

    fn tensors(v: f32) -> Vec<(String, Tensor)> {
        vec![
            ("w".to_owned(), Tensor::from_slice(&[v, v + 1.0, v + 2.0]).reshape([3, 1])),
            ("optim.v.w".to_owned(), Tensor::from_slice(&[0.5f32 * v; 3]).reshape([3, 1])),
        ]
    }

    fn state(epoch: usize) -> State {
        // A value that only round-trips exactly if JSON keeps every bit of an f64.
        State { epoch, step: 2, loss_sum: 0.1 + 0.2 + epoch as f64 / 3.0 }
    }

    fn save(dir: &CheckpointDir, slot: &str, v: f32, epoch: usize) -> Result<Pointer, TrainError> {
        let meta = HashMap::from([("kind".to_owned(), "test".to_owned())]);
        dir.save(slot, &tensors(v), &meta, &state(epoch))
    }

    /// Loads `slot` and checks it holds the checkpoint saved with (`v`, `epoch`).
    fn check(dir: &CheckpointDir, slot: &str, v: f32, epoch: usize) {
        let ckpt = dir.load::<State>(slot).unwrap().expect("a checkpoint");
        assert_eq!(ckpt.state, state(epoch));
        assert_eq!(ckpt.metadata["kind"], "test");
        let expect = tensors(v);
        assert_eq!(ckpt.tensors.len(), 2);
        for ((n, t), (en, et)) in ckpt.tensors.iter().zip(expect.iter().rev()) {
            assert_eq!(n, en);
            assert!(t.equal(et), "{n}");
        }
    }

    fn load_err(dir: &CheckpointDir, slot: &str) -> String {
        dir.load::<State>(slot).unwrap_err().to_string()
    }

    #[test]
    fn round_trips_bit_exact_and_keeps_only_the_current_version() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = CheckpointDir::new(tmp.path().join("ckpt"));
        assert!(
            dir.load::<State>("latest").unwrap().is_none(),
            "an empty folder has no checkpoint"
        );
        let p1 = save(&dir, "latest", 1.0, 1).unwrap();
        check(&dir, "latest", 1.0, 1);
        let p2 = save(&dir, "latest", 7.25, 2).unwrap();
        assert_eq!((p1.seq, p2.seq), (1, 2));
        check(&dir, "latest", 7.25, 2);
        let mut names: Vec<String> = std::fs::read_dir(dir.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["latest-00000002.json", "latest-00000002.safetensors", "latest.json"]);
    }

    #[test]
    fn slots_are_independent() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = CheckpointDir::new(tmp.path());
        save(&dir, "latest", 1.0, 1).unwrap();
        save(&dir, "best", 2.0, 5).unwrap();
        save(&dir, "latest", 3.0, 2).unwrap();
        check(&dir, "best", 2.0, 5);
        check(&dir, "latest", 3.0, 2);
        assert!(dir.save("../x", &tensors(1.0), &HashMap::new(), &state(1)).is_err());
    }

    #[test]
    fn files_without_a_pointer_never_load() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = CheckpointDir::new(tmp.path());
        save(&dir, "latest", 1.0, 1).unwrap();
        std::fs::remove_file(dir.pointer_path("latest")).unwrap();
        assert!(dir.load::<State>("latest").unwrap().is_none());
        // The next save does not reuse the orphan's version number.
        assert_eq!(save(&dir, "latest", 2.0, 2).unwrap().seq, 2);
        check(&dir, "latest", 2.0, 2);
    }

    #[test]
    fn truncated_or_altered_files_never_load() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = CheckpointDir::new(tmp.path());
        let p = save(&dir, "latest", 1.0, 1).unwrap();
        let tensors_path = dir.dir().join(&p.tensors);
        let state_path = dir.dir().join(&p.state);
        let good_tensors = std::fs::read(&tensors_path).unwrap();
        let good_state = std::fs::read(&state_path).unwrap();

        // Truncated tensors: still a readable safetensors prefix would be wrong; the digest says so.
        std::fs::write(&tensors_path, &good_tensors[..good_tensors.len() - 4]).unwrap();
        let err = load_err(&dir, "latest");
        assert!(err.contains("latest-00000001.safetensors"), "{err}");
        // One flipped bit in the data, same length: only the digest can tell.
        let mut flipped = good_tensors.clone();
        *flipped.last_mut().unwrap() ^= 1;
        std::fs::write(&tensors_path, &flipped).unwrap();
        let err = load_err(&dir, "latest");
        assert!(
            err.contains("latest-00000001.safetensors") && err.contains("damaged checkpoint"),
            "{err}"
        );
        std::fs::write(&tensors_path, &good_tensors).unwrap();

        std::fs::write(&state_path, good_state.replace_first(b"\"epoch\": 1", b"\"epoch\": 7"))
            .unwrap();
        let err = load_err(&dir, "latest");
        assert!(
            err.contains("latest-00000001.json") && err.contains("damaged checkpoint"),
            "{err}"
        );
        std::fs::remove_file(&state_path).unwrap();
        let err = load_err(&dir, "latest");
        assert!(err.contains("latest-00000001.json"), "{err}");
        std::fs::write(&state_path, &good_state).unwrap();
        check(&dir, "latest", 1.0, 1);

        let pointer = std::fs::read(dir.pointer_path("latest")).unwrap();
        std::fs::write(dir.pointer_path("latest"), &pointer[..pointer.len() / 2]).unwrap();
        let err = load_err(&dir, "latest");
        assert!(err.contains("latest.json") && err.contains("damaged checkpoint pointer"), "{err}");
        // A pointer aimed outside its own files is refused too.
        let evil = String::from_utf8(pointer.clone())
            .unwrap()
            .replace("latest-00000001.json", "../etc.json");
        std::fs::write(dir.pointer_path("latest"), evil).unwrap();
        assert!(load_err(&dir, "latest").contains("pointer names"));
    }

    #[test]
    fn a_failed_save_leaves_the_previous_checkpoint() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = CheckpointDir::new(tmp.path());
        save(&dir, "latest", 1.0, 1).unwrap();
        // Non-finite weights are refused before anything is written.
        let nan = vec![("w".to_owned(), Tensor::from_slice(&[f32::NAN, 0.0, 0.0]).reshape([3, 1]))];
        let err = dir.save("latest", &nan, &HashMap::new(), &state(2)).unwrap_err().to_string();
        assert!(err.contains("non-finite"), "{err}");
        check(&dir, "latest", 1.0, 1);
        // The state cannot be written after the tensors landed: the pointer does not move.
        let err = dir
            .save("latest", &tensors(5.0), &HashMap::new(), &Unserialisable)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("latest-00000002.json") && err.contains("does not serialise"),
            "{err}"
        );
        assert!(dir.dir().join("latest-00000002.safetensors").exists());
        check(&dir, "latest", 1.0, 1);
        // A killed save (a half-written version, no pointer update) changes nothing either.
        std::fs::write(dir.dir().join("latest-00000003.safetensors"), b"partial").unwrap();
        check(&dir, "latest", 1.0, 1);
        let p = save(&dir, "latest", 6.0, 3).unwrap();
        assert_eq!(p.seq, 4, "a save never reuses the version number of an orphan");
        check(&dir, "latest", 6.0, 3);
        assert!(
            !dir.dir().join("latest-00000003.safetensors").exists(),
            "older versions are pruned after a save"
        );
    }

    #[test]
    fn double_tensors_are_stored_as_f32() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = CheckpointDir::new(tmp.path());
        let t = vec![("d".to_owned(), Tensor::from_slice(&[0.5f64, 2.0]).to_kind(Kind::Double))];
        dir.save("s", &t, &HashMap::new(), &state(0)).unwrap();
        let back = dir.load::<State>("s").unwrap().unwrap();
        assert_eq!(back.tensors[0].1.kind(), Kind::Float);
        assert_eq!(Vec::<f32>::try_from(&back.tensors[0].1).unwrap(), [0.5, 2.0]);
    }

    trait ReplaceFirst {
        fn replace_first(&self, from: &[u8], to: &[u8]) -> Vec<u8>;
    }

    impl ReplaceFirst for Vec<u8> {
        fn replace_first(&self, from: &[u8], to: &[u8]) -> Vec<u8> {
            let at = self.windows(from.len()).position(|w| w == from).expect("pattern present");
            [&self[..at], to, &self[at + from.len()..]].concat()
        }
    }
}
