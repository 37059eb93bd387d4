//! `feature-cache`: inspect and share a feature cache folder (ls, verify, gc, export, import).
//!
//! A cache holds entries (`<root>/<key>/`, each one chunk of a split) and split indexes
//! (`<root>/index/<key>.json`, each listing the chunks of one split in order); the keys in a
//! run's `features.json` are split index keys. Every command takes either kind of key.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use feature_cache::{Cache, CacheError, ChunkIndex, ExtractionRecord, FeatureKey, index_path};

/// Inspect, check, clean and share a feature cache (the folder given to `--cache-dir` of the
/// extraction stage; it may be shared by several people).
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// The cache root folder [default: $TRANSFER_KIT_CACHE_DIR, else
    /// $XDG_CACHE_HOME/transfer-kit/features, else ~/.cache/transfer-kit/features].
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// One line per split index (`index`: key, split, layer, size, pooling, pass, chunks,
    /// rows), then one per entry (`chunk` when an index lists it, else `entry`: key, split,
    /// layer, size, preprocessing, precision, pass, shape). Reads index files and manifests
    /// only. With --remote, the commits of an object store instead (`feature-cache-remote ls`).
    Ls {
        /// List the object store s3://BUCKET/PREFIX instead of the local cache.
        #[arg(long, value_name = "s3://BUCKET/PREFIX")]
        remote: Option<String>,
    },
    /// Check every split index with every chunk it lists, and every byte of every entry; exits
    /// non-zero if anything is missing or corrupt, naming it. With --remote, every commit of an
    /// object store as a pull would (`feature-cache-remote verify`).
    Verify {
        /// Verify the object store s3://BUCKET/PREFIX instead of the local cache.
        #[arg(long, value_name = "s3://BUCKET/PREFIX")]
        remote: Option<String>,
    },
    /// Upload entries and split indexes to an S3-compatible object store: runs
    /// `feature-cache-remote push` with these arguments (`feature-cache push --help` shows
    /// them).
    #[command(disable_help_flag = true)]
    Push {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Download committed entries and split indexes from an S3-compatible object store, each
    /// verified before it lands: runs `feature-cache-remote pull` with these arguments.
    #[command(disable_help_flag = true)]
    Pull {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Remove interrupted writes, corrupt entries and unreadable split indexes; with --keep or
    /// --keep-from, also every split index not kept and every entry that is neither kept nor a
    /// chunk of a kept index.
    Gc {
        /// Split index or entry keys to keep (a kept index keeps its chunks).
        #[arg(long, num_args = 1..)]
        keep: Option<Vec<String>>,
        /// Keep what these runs use: the split indexes (and so the chunks) their
        /// `features.json` records.
        #[arg(long, num_args = 1.., value_name = "FEATURES_JSON")]
        keep_from: Option<Vec<PathBuf>>,
    },
    /// Write split indexes (each with its chunks) and entries to one tar file that `import`
    /// accepts elsewhere.
    Export {
        /// Split index or entry keys to export (as listed by `ls`).
        #[arg(required_unless_present = "from")]
        keys: Vec<String>,
        /// Also export every split of these runs (the split indexes their `features.json`
        /// records).
        #[arg(long, num_args = 1.., value_name = "FEATURES_JSON")]
        from: Vec<PathBuf>,
        /// Output bundle file.
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Add the entries and split indexes of a bundle, after verifying every digest in it and
    /// that every chunk of every index is in the bundle or the cache (nothing is added
    /// otherwise).
    Import { bundle: PathBuf },
    /// Test hook: write one synthetic entry slowly, so a harness can kill the writer mid-write.
    #[command(hide = true)]
    DebugWrite {
        #[arg(long, default_value_t = 64)]
        rows: u64,
        #[arg(long, default_value_t = 0)]
        sleep_us: u64,
    },
}

/// The program that talks to object stores (crate `feature-remote`), kept out of this binary
/// so that nothing else links an S3 client.
const REMOTE_PROGRAM: &str = "feature-cache-remote";

/// Replaces this process by `feature-cache-remote [--cache-dir DIR] ARGS...` (exec, git-style),
/// found beside this executable (as cargo builds them) or else on PATH; returns only when it
/// could not be started.
fn run_remote(cache_dir: Option<&Path>, args: Vec<OsString>) -> Result<bool> {
    use std::os::unix::process::CommandExt;
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(REMOTE_PROGRAM)))
        .filter(|p| p.is_file());
    let program = beside.unwrap_or_else(|| PathBuf::from(REMOTE_PROGRAM));
    let mut command = std::process::Command::new(&program);
    if let Some(dir) = cache_dir {
        command.arg("--cache-dir").arg(dir);
    }
    let err = command.args(&args).exec();
    if err.kind() == std::io::ErrorKind::NotFound {
        bail!(
            "{REMOTE_PROGRAM} is neither beside this program nor on PATH: build it with `cargo build -p feature-remote` (it holds the S3 client, which this tool does not link)"
        );
    }
    Err(anyhow::Error::new(err).context(format!("running {}", program.display())))
}

fn main() -> ExitCode {
    cli_support::init_logging();
    cli_support::exit_code(
        run(Args::parse()).map(|ok| if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }),
    )
}

fn run(args: Args) -> Result<bool> {
    // The object store commands belong to `feature-cache-remote`, which holds the S3 client.
    let remote_args: Option<Vec<OsString>> = match &args.command {
        Cmd::Push { args } => {
            Some([OsString::from("push")].into_iter().chain(args.clone()).collect())
        }
        Cmd::Pull { args } => {
            Some([OsString::from("pull")].into_iter().chain(args.clone()).collect())
        }
        Cmd::Ls { remote: Some(r) } => Some(["ls", "--remote", r].map(OsString::from).to_vec()),
        Cmd::Verify { remote: Some(r) } => {
            Some(["verify", "--remote", r].map(OsString::from).to_vec())
        }
        _ => None,
    };
    if let Some(remote_args) = remote_args {
        return run_remote(args.cache_dir.as_deref(), remote_args);
    }
    let root = args.cache_dir.unwrap_or_else(feature_cache::default_cache_dir);
    let cache = Cache::open(&root).with_context(|| format!("opening cache {}", root.display()))?;
    match args.command {
        Cmd::Ls { .. } => {
            ls(&cache)?;
            Ok(true)
        }
        Cmd::Verify { .. } => verify(&cache),
        Cmd::Push { .. } | Cmd::Pull { .. } => unreachable!("run by feature-cache-remote above"),
        Cmd::Gc { keep, keep_from } => {
            let keep = kept_keys(&cache, keep, keep_from)?;
            for path in cache.gc(keep.as_deref())? {
                println!("removed {}", path.display());
            }
            Ok(true)
        }
        Cmd::Export { mut keys, from, out } => {
            for record in &from {
                keys.extend(record_keys(&cache, record, false)?);
            }
            let mut seen = BTreeSet::new();
            keys.retain(|k| seen.insert(k.clone()));
            feature_cache::export(&cache, &keys, &out)?;
            let indexes = keys.iter().filter(|k| is_index(&cache, k)).count();
            eprintln!(
                "exported {indexes} split indexes (with their chunks) and {} entries to {}",
                keys.len() - indexes,
                out.display()
            );
            Ok(true)
        }
        Cmd::Import { bundle } => {
            let keys = feature_cache::import(&cache, &bundle)?;
            let mut indexes = 0;
            for key in &keys {
                if is_index(&cache, key) {
                    indexes += 1;
                    println!("index  {key}");
                } else {
                    println!("entry  {key}");
                }
            }
            eprintln!(
                "imported {} entries and {indexes} split indexes from {}",
                keys.len() - indexes,
                bundle.display()
            );
            Ok(true)
        }
        Cmd::DebugWrite { rows, sleep_us } => {
            let key = synthetic_key(rows);
            let mut writer = cache.writer(key, "feature-cache debug-write", rows, &[2, 3])?;
            for i in 0..rows {
                writer.append(&[i as f32; 6], &[(i % 2) as i32])?;
                std::thread::sleep(std::time::Duration::from_micros(sleep_us));
            }
            println!("{}", writer.finish()?.display());
            Ok(true)
        }
    }
}

fn is_index(cache: &Cache, key: &str) -> bool {
    index_path(cache.root(), key).is_file()
}

/// `plain`, or `aug pass P seed S`.
fn pass(key: &FeatureKey) -> String {
    key.augmentation
        .as_ref()
        .map_or("plain".to_owned(), |a| format!("aug pass {} seed {}", a.pass, a.seed))
}

fn ls(cache: &Cache) -> Result<()> {
    let mut chunks = BTreeSet::new();
    for key in cache.index_keys()? {
        match ChunkIndex::read(&index_path(cache.root(), &key)) {
            Ok(index) => {
                let s = &index.settings;
                println!(
                    "index  {key}  {:<10} {:<12} {}x{} pooling {:<8} {:<18} {} chunks {} rows",
                    s.dataset.split,
                    s.layer,
                    s.input_size[0],
                    s.input_size[1],
                    s.pooling,
                    pass(s),
                    index.chunks.len(),
                    index.rows()
                );
                chunks.extend(index.chunks.into_iter().map(|c| c.key));
            }
            Err(_) => println!("index  {key}  (unreadable split index: run verify)"),
        }
    }
    for key in cache.keys()? {
        let kind = if chunks.contains(&key) { "chunk" } else { "entry" };
        let manifest_path = cache.entry_dir(&key).join(feature_cache::MANIFEST);
        match std::fs::read(&manifest_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<feature_cache::Manifest>(&b).ok())
        {
            Some(m) => {
                let c = &m.components;
                println!(
                    "{kind}  {key}  {:<10} {:<12} {}x{} {:<8} {:<8} {:<18} {:?}",
                    c.dataset.split,
                    c.layer,
                    c.input_size[0],
                    c.input_size[1],
                    c.preprocessing,
                    c.precision,
                    pass(c),
                    m.feature_shape
                );
            }
            None => println!("{kind}  {key}  (unreadable manifest: run verify)"),
        }
    }
    Ok(())
}

/// `MISSING` for something absent (an index's chunk gone), `CORRUPT` for damage, `ERROR` when
/// the cache could not be read.
fn problem(err: &CacheError) -> &'static str {
    match err {
        CacheError::Missing { .. } => "MISSING",
        err if err.is_corruption() => "CORRUPT",
        _ => "ERROR",
    }
}

fn verify(cache: &Cache) -> Result<bool> {
    let mut bad = 0;
    let indexes = cache.verify_indexes()?;
    for status in &indexes {
        match &status.result {
            Ok(index) => println!(
                "ok       index  {}  {} chunks {} rows",
                status.key,
                index.chunks.len(),
                index.rows()
            ),
            Err(err) => {
                bad += 1;
                let what = match err {
                    CacheError::Missing { path } if path != &status.path => "a chunk is gone: ",
                    _ => "",
                };
                println!("{:<8} index  {}  {what}{err}", problem(err), status.key);
            }
        }
    }
    let entries = cache.verify_all()?;
    for status in &entries {
        match &status.result {
            Ok(_) => println!("ok       entry  {}", status.key),
            Err(err) => {
                bad += 1;
                println!("{:<8} entry  {}  {err}", problem(err), status.key);
            }
        }
    }
    eprintln!(
        "{} split indexes and {} entries checked: {}",
        indexes.len(),
        entries.len(),
        if bad == 0 { "all verify".to_owned() } else { format!("{bad} do not verify") }
    );
    Ok(bad == 0)
}

/// What `gc` keeps: `--keep` keys (each must name an index or an entry of the cache, so a typo
/// removes nothing), and the split indexes of every `--keep-from` record; `None` when neither
/// flag is given.
fn kept_keys(
    cache: &Cache,
    keep: Option<Vec<String>>,
    keep_from: Option<Vec<PathBuf>>,
) -> Result<Option<Vec<String>>> {
    if keep.is_none() && keep_from.is_none() {
        return Ok(None);
    }
    let mut kept = Vec::new();
    for key in keep.unwrap_or_default() {
        if !feature_cache::is_key(&key)
            || !(is_index(cache, &key) || cache.entry_dir(&key).is_dir())
        {
            bail!(
                "--keep {key}: no such cache entry or split index in {} (nothing removed)",
                cache.root().display()
            );
        }
        kept.push(key);
    }
    for record in keep_from.unwrap_or_default() {
        kept.extend(record_keys(cache, &record, true)?);
    }
    Ok(Some(kept))
}

/// The split index keys the run record (`features.json`) at `path` names, each checked to be in
/// `cache` (else this is likely not the cache the run used: the error names the record's). A
/// split the run kept in a private cache of its own folder is refused for export (its chunks may
/// lie in two caches; export it with `--cache-dir` that cache), while for gc (`for_gc`) the
/// chunks of it that were found in `cache` are kept.
fn record_keys(cache: &Cache, path: &Path, for_gc: bool) -> Result<Vec<String>> {
    let record: ExtractionRecord = run_folder::read_json(path)
        .with_context(|| format!("reading the extraction record {}", path.display()))?;
    let mut keys = Vec::new();
    for e in &record.entries {
        let what =
            format!("split index {} (the {} features of {})", e.key, e.split, path.display());
        if let Some(private) = e.cache_dir.as_deref().filter(|d| !same_dir(d, cache.root())) {
            if !for_gc {
                bail!(
                    "{what} lives in the run's private cache {}: export it with that folder as the cache directory",
                    private.display()
                );
            }
            if let Ok(index) = ChunkIndex::read(&index_path(private, &e.key)) {
                keys.extend(index.chunks.into_iter().map(|c| c.key));
            }
            continue;
        }
        if !feature_cache::is_key(&e.key) || !is_index(cache, &e.key) {
            bail!(
                "{what}: no such cache entry or split index in {}; the record names the cache {} (pass it as --cache-dir)",
                cache.root().display(),
                record.cache_dir.display()
            );
        }
        keys.push(e.key.clone());
    }
    Ok(keys)
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

fn synthetic_key(rows: u64) -> feature_cache::FeatureKey {
    use feature_cache::{DatasetKey, FORMAT_VERSION, FeatureKey, FileKey};
    FeatureKey {
        format_version: FORMAT_VERSION,
        weights_sha256: "0".repeat(64),
        architecture: "synthetic".into(),
        layer: "none".into(),
        input_size: [2, 3],
        resize: "none".into(),
        preprocessing: "none".into(),
        pooling: "none".into(),
        precision: "f32".into(),
        augmentation: None,
        dataset: DatasetKey {
            split: "debug".into(),
            classes: vec!["a".into(), "b".into()],
            files: (0..rows)
                .map(|i| FileKey {
                    path: format!("{i}.png"),
                    label: (i % 2) as u32,
                    sha256: "0".repeat(64),
                })
                .collect(),
        },
    }
}
