//! Sharded extraction (`--shard I/N`, `--merge`) on a generated dataset large enough for
//! several chunks per split: shards compute disjoint chunks that together are every chunk; a
//! merge with a shard missing fails listing the missing chunks and the shard to rerun, and
//! after that shard runs it writes the records a single-process run writes, over chunk entries
//! bit-identical to that run's; a rerun with another N computes nothing; a changed image
//! recomputes one chunk; augmented chunks do not depend on their position in the split.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use feature_cache::ExtractionRecord;
use models::{ConvArch, ConvBase};

/// `root/<split>/<class>/<i>.png`: tiny images, each different.
fn make_dataset(root: &Path, train_per_class: u32) {
    for (split, n) in [("train", train_per_class), ("validation", 40)] {
        for (c, class) in ["a", "b"].iter().enumerate() {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                write_image(&dir.join(format!("{i:04}.png")), c as u32, i);
            }
        }
    }
}

fn write_image(path: &Path, class: u32, i: u32) {
    image::RgbImage::from_fn(12, 12, |x, y| {
        image::Rgb([(x * 17 + class * 90) as u8, (y * 13 + i * 7) as u8, ((x + y + i) * 5) as u8])
    })
    .save(path)
    .unwrap();
}

/// Random small-convnet weights from a fixed seed, in our weights format.
fn make_weights(path: &Path) {
    tch::manual_seed(5);
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let base = ConvBase::with_arch(&vs.root(), ConvArch::small_convnet());
    let provenance = models::weights::Provenance {
        preprocessing: models::Preprocessing::Rescale,
        source: "random, tch::manual_seed(5)".into(),
        source_sha256: "0".repeat(64),
        source_format: "test".into(),
    };
    let mut vars: Vec<(String, tch::Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    models::weights::save_conv_base(path, base.arch(), &vars, &provenance).unwrap();
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    data: PathBuf,
    weights: PathBuf,
}

fn fixture(train_per_class: u32) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let data = root.join("data");
    make_dataset(&data, train_per_class);
    let weights = root.join("base.safetensors");
    make_weights(&weights);
    Fixture { _dir: dir, root, data, weights }
}

/// Runs extract-features into `cache` with the stage folder `out` (no scheduler variables).
fn run(f: &Fixture, out: &str, cache: &str, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_extract-features"))
        .args(run_args(f, out, cache))
        .args(extra)
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX")
        .output()
        .unwrap()
}

fn ok(output: Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stderr}");
    stderr
}

fn shard_summary(f: &Fixture, out: &str, i: u32, n: u32) -> serde_json::Value {
    run_folder::read_json(&f.root.join(out).join("shards").join(format!("{i}-of-{n}.json")))
        .unwrap()
}

fn record(f: &Fixture, out: &str) -> ExtractionRecord {
    run_folder::read_json(&f.root.join(out).join(feature_cache::EXTRACTION_FILE)).unwrap()
}

/// Every chunk key of a record's splits, in order.
fn chunk_keys(record: &ExtractionRecord) -> Vec<String> {
    record
        .entries
        .iter()
        .flat_map(|e| feature_cache::verify_split(&record.cache_dir, &e.key).unwrap().chunks)
        .map(|c| c.key)
        .collect()
}

fn entry_files(root: &Path) -> BTreeSet<String> {
    std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| feature_cache::is_key(name))
        .collect()
}

#[test]
fn shards_merge_into_the_single_process_cache_and_reruns_compute_nothing() {
    let f = fixture(150);
    ok(run(&f, "single", "single-cache", &[]));
    let single = record(&f, "single");
    let chunks = chunk_keys(&single);
    assert!(chunks.len() >= 4, "{} chunks: too few to shard", chunks.len());
    // The plan alone (what a remote pull fetches) names exactly these keys and writes nothing.
    let plan = run(&f, "plan", "plan-cache", &["--plan-only"]);
    assert!(plan.status.success(), "{}", String::from_utf8_lossy(&plan.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    let indexes: Vec<String> = single.entries.iter().map(|e| e.key.clone()).collect();
    assert_eq!(plan["indexes"], serde_json::json!(indexes));
    assert_eq!(plan["chunks"], serde_json::json!(chunks));
    assert!(!f.root.join("plan").exists());
    assert!(entry_files(&f.root.join("plan-cache")).is_empty());

    // Shards 0 and 1 of 3; shard 2 "failed". Shards write only their summary.
    let mut assigned = 0;
    for i in [0, 1] {
        ok(run(&f, "sharded", "cache", &["--shard", &format!("{i}/3")]));
        assigned += shard_summary(&f, "sharded", i, 3)["chunks"].as_u64().unwrap();
    }
    assert!(!f.root.join("sharded/features.json").exists());
    assert!(!f.root.join("sharded/stage.json").exists());
    let merge = run(&f, "sharded", "cache", &["--merge", "--shards", "3"]);
    let stderr = String::from_utf8_lossy(&merge.stderr);
    assert!(!merge.status.success(), "a merge with a shard missing must fail: {stderr}");
    assert!(stderr.contains("rerun shards: 2 "), "{stderr}");
    let missing: Vec<&str> = stderr.lines().filter(|l| l.starts_with("missing: ")).collect();
    assert_eq!(missing.len() as u64, chunks.len() as u64 - assigned, "{stderr}");
    assert!(missing.iter().all(|l| l.ends_with("shard 2/3")), "{stderr}");
    assert!(!f.root.join("sharded/features.json").exists(), "a failed merge writes no record");
    assert!(!f.root.join("cache/index").exists(), "a failed merge publishes no index");

    // The resubmitted shard takes its index from the scheduler; then the merge succeeds.
    let out = Command::new(env!("CARGO_BIN_EXE_extract-features"))
        .args(run_args(&f, "sharded", "cache"))
        .args(["--shard", "auto/3"])
        .env("SLURM_ARRAY_TASK_ID", "2")
        .env_remove("JOB_COMPLETION_INDEX")
        .output()
        .unwrap();
    ok(out);
    let last = shard_summary(&f, "sharded", 2, 3);
    assert_eq!(assigned + last["chunks"].as_u64().unwrap(), chunks.len() as u64);
    assert_eq!(last["found"], 0, "shards compute disjoint chunks");
    ok(run(&f, "sharded", "cache", &["--merge", "--shards", "3"]));
    let merged = record(&f, "sharded");
    let split_keys = |r: &ExtractionRecord| {
        r.entries
            .iter()
            .map(|e| (e.split.clone(), e.pass, e.key.clone(), e.rows))
            .collect::<Vec<_>>()
    };
    assert_eq!(split_keys(&merged), split_keys(&single));
    assert_eq!(chunk_keys(&merged), chunks);
    for stage_file in ["config.json", "classes.json", "stage.json"] {
        assert!(f.root.join("sharded").join(stage_file).is_file(), "{stage_file}");
    }
    run_folder::StageRecord::read(&f.root.join("sharded")).unwrap();
    // Bit-identical chunk entries, and no others.
    assert_eq!(entry_files(&f.root.join("cache")), entry_files(&f.root.join("single-cache")));
    for key in &chunks {
        for file in [feature_cache::FEATURES, feature_cache::LABELS] {
            assert_eq!(
                std::fs::read(f.root.join("cache").join(key).join(file)).unwrap(),
                std::fs::read(f.root.join("single-cache").join(key).join(file)).unwrap(),
                "{key}/{file}"
            );
        }
    }

    // Another N reuses every chunk.
    for i in 0..2 {
        ok(run(&f, "again", "cache", &["--shard", &format!("{i}/2")]));
        let s = shard_summary(&f, "again", i, 2);
        assert_eq!((s["computed"].as_u64(), s["derived"].as_u64()), (Some(0), Some(0)), "{s}");
    }

    // One changed training image: one plain and one augmented chunk are recomputed.
    write_image(&f.data.join("train/b/0100.png"), 0, 999);
    let stderr = ok(run(&f, "changed", "cache", &[]));
    assert!(stderr.contains(&format!("({} from cache, 2 computed", chunks.len() - 2)), "{stderr}");
}

/// The arguments every run here shares: two splits, one augmented pass, a small convnet cut.
fn run_args(f: &Fixture, out: &str, cache: &str) -> Vec<String> {
    let mut args: Vec<String> = [
        "--data",
        f.data.to_str().unwrap(),
        "--weights",
        f.weights.to_str().unwrap(),
        "--out",
        f.root.join(out).to_str().unwrap(),
        "--cache-dir",
        f.root.join(cache).to_str().unwrap(),
    ]
    .map(str::to_owned)
    .to_vec();
    args.extend(
        [
            "--splits",
            "train,validation",
            "--input-size",
            "36",
            "--device",
            "cpu",
            "--batch-size",
            "16",
            "--augment-passes",
            "1",
            "--layer",
            "max_pooling2d_3",
        ]
        .map(str::to_owned),
    );
    args
}

/// An image's augmented features depend on the image, not on where it sits: after images are
/// added to the split, chunks untouched by the change keep their keys and their bytes.
#[test]
fn augmented_chunks_do_not_depend_on_their_position() {
    let f = fixture(150);
    ok(run(&f, "before", "cache", &["--splits", "train"]));
    let before = record(&f, "before");
    let pass_chunks = |r: &ExtractionRecord| {
        let e = r.passes("train")[0];
        feature_cache::verify_split(&r.cache_dir, &e.key).unwrap().chunks
    };
    let old = pass_chunks(&before);
    // Images added at the start of the split shift every position after them.
    for i in 0..5 {
        write_image(&f.data.join(format!("train/a/0000-{i}.png")), 1, 500 + i);
    }
    let stderr = ok(run(&f, "after", "cache", &["--splits", "train"]));
    let new = pass_chunks(&record(&f, "after"));
    let kept: Vec<_> = new.iter().filter(|c| old.contains(c)).collect();
    assert_eq!(kept.len(), old.len() - 1, "only the first chunk changes: {stderr}");
    assert!(stderr.contains("2 computed"), "one plain and one augmented chunk: {stderr}");
}

#[test]
fn shard_arguments_are_checked() {
    let f = fixture(3);
    for (args, wanted) in [
        (&["--shard", "3/3"][..], "the index must be below 3"),
        (&["--shard", "1/0"], "N must be at least 1"),
        (&["--shard", "x/2"], "not a number or auto"),
        (&["--shard", "auto/2"], "neither SLURM_ARRAY_TASK_ID nor JOB_COMPLETION_INDEX is set"),
        (&["--shards", "2"], "--merge"),
        (&["--merge", "--shards", "0"], "invalid value '0'"),
        (&["--shard", "0/2", "--merge"], "cannot be used with"),
    ] {
        let out = run(&f, "x", "cache", args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr.contains(wanted), "{args:?}: {stderr}");
    }
    // An array submitted as 1-4 instead of 0-3: the message names the variable and the fix.
    let out = Command::new(env!("CARGO_BIN_EXE_extract-features"))
        .args(run_args(&f, "x", "cache"))
        .args(["--shard", "auto/4"])
        .env("SLURM_ARRAY_TASK_ID", "4")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("SLURM_ARRAY_TASK_ID=4 is not below 4"), "{stderr}");
    assert!(stderr.contains("must run from 0 to 3"), "{stderr}");
}

/// A merge computes nothing, so it runs where the shards' `--device cuda` has no GPU (a merge
/// job of the emitted Slurm script, which asks for none); and a merge that does not skip bad
/// images says so when the shards did.
#[test]
fn a_merge_needs_no_gpu_and_names_the_bad_image_policy() {
    let f = fixture(3);
    std::fs::write(f.data.join("train/a/0000b.png"), b"not a png").unwrap();
    let skip = ["--skip-bad-images", "--max-bad-fraction", "0.5"];
    ok(run(&f, "s", "cache", &[&["--shard", "0/1"], &skip[..]].concat()));
    let mut on_cuda = run_args(&f, "s", "cache");
    let device = on_cuda.iter().position(|a| a == "--device").unwrap();
    on_cuda[device + 1] = "cuda".into();
    let merged = Command::new(env!("CARGO_BIN_EXE_extract-features"))
        .args(on_cuda)
        .arg("--merge")
        .args(skip)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&merged.stderr);
    assert!(merged.status.success(), "{stderr}");
    let strict = run(&f, "s", "cache", &["--merge"]);
    let stderr = String::from_utf8_lossy(&strict.stderr);
    assert!(!strict.status.success());
    assert!(stderr.contains("merge with --skip-bad-images"), "{stderr}");
}

/// An image replaced while a run is under way (after its digest went into the plan) must not
/// put its new features under its old key: the chunk is refused, nothing of it is published,
/// and a rerun keys the new content.
#[test]
fn an_image_changed_during_extraction_publishes_nothing_under_its_old_key() {
    let f = fixture(300);
    let last = f.data.join("train/b/0299.png");
    let child = Command::new(env!("CARGO_BIN_EXE_extract-features"))
        .args(run_args(&f, "changing", "cache"))
        .args(["--splits", "train"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The plan (every digest) is made before the first chunk's temp folder appears.
    let cache = f.root.join("cache");
    let started = std::time::Instant::now();
    while !std::fs::read_dir(&cache)
        .is_ok_and(|mut d| d.any(|e| e.unwrap().file_name().to_string_lossy().starts_with(".tmp-")))
    {
        assert!(started.elapsed().as_secs() < 60, "no chunk started");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    write_image(&last, 0, 777);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the run must fail: {stderr}");
    assert!(stderr.contains("0299.png: changed while it was being extracted"), "{stderr}");
    // No entry in the cache holds a file whose recorded digest is not its content's now or
    // before the change: every published chunk verifies and lists the digests it was made from.
    let status = Command::new(env!("CARGO_BIN_EXE_extract-features"))
        .args(run_args(&f, "after", "cache"))
        .args(["--splits", "train"])
        .output()
        .unwrap();
    ok(status);
    let record = record(&f, "after");
    let files: Vec<feature_cache::FileKey> = record
        .entries
        .iter()
        .flat_map(|e| {
            let reader = ExtractionRecord::open(
                &feature_cache::Cache::open(&record.cache_dir).unwrap(),
                e,
                Path::new("f"),
            )
            .unwrap();
            reader.files().unwrap()
        })
        .filter(|k| k.path == "b/0299.png")
        .collect();
    let now = run_folder::file_sha256(&last).unwrap().sha256;
    assert!(!files.is_empty() && files.iter().all(|k| k.sha256 == now));
}
