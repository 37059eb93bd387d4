//! `feature-cache`: inspect and share a feature cache folder (ls, verify, gc, export, import).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use feature_cache::Cache;

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
    /// One line per entry: key, split, layer, size, shape (reads manifests only).
    Ls,
    /// Check every byte of every entry; exits non-zero if any entry is corrupt.
    Verify,
    /// Remove interrupted writes and corrupt entries (and, with --keep, all entries not listed).
    Gc {
        /// Keys to keep; every other entry is removed.
        #[arg(long, num_args = 1..)]
        keep: Option<Vec<String>>,
    },
    /// Write entries to one tar file that `import` accepts elsewhere.
    Export {
        /// Keys to export (as listed by `ls`).
        #[arg(required = true)]
        keys: Vec<String>,
        /// Output bundle file.
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Add the entries of a bundle, after verifying every digest in it.
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

fn main() -> ExitCode {
    cli_support::init_logging();
    cli_support::exit_code(
        run(Args::parse()).map(|ok| if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }),
    )
}

fn run(args: Args) -> Result<bool> {
    let root = args.cache_dir.unwrap_or_else(feature_cache::default_cache_dir);
    let cache = Cache::open(&root).with_context(|| format!("opening cache {}", root.display()))?;
    match args.command {
        Cmd::Ls => {
            for key in cache.keys()? {
                let manifest_path = cache.entry_dir(&key).join(feature_cache::MANIFEST);
                match std::fs::read(&manifest_path)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<feature_cache::Manifest>(&b).ok())
                {
                    Some(m) => {
                        let c = &m.components;
                        let aug = c.augmentation.as_ref().map_or("plain".to_owned(), |a| {
                            format!("aug pass {} seed {}", a.pass, a.seed)
                        });
                        println!(
                            "{key}  {:<10} {:<12} {}x{} {:<8} {:<8} {aug:<18} {:?}",
                            c.dataset.split,
                            c.layer,
                            c.input_size[0],
                            c.input_size[1],
                            c.preprocessing,
                            c.precision,
                            m.feature_shape
                        );
                    }
                    None => println!("{key}  (unreadable manifest: run verify)"),
                }
            }
            Ok(true)
        }
        Cmd::Verify => {
            let mut ok = true;
            for status in cache.verify_all()? {
                match status.result {
                    Ok(_) => println!("ok       {}", status.key),
                    Err(err) => {
                        ok = false;
                        println!("CORRUPT  {}  {err}", status.key);
                    }
                }
            }
            Ok(ok)
        }
        Cmd::Gc { keep } => {
            for path in cache.gc(keep.as_deref())? {
                println!("removed {}", path.display());
            }
            Ok(true)
        }
        Cmd::Export { keys, out } => {
            feature_cache::export(&cache, &keys, &out)?;
            eprintln!("exported {} entries to {}", keys.len(), out.display());
            Ok(true)
        }
        Cmd::Import { bundle } => {
            let keys = feature_cache::import(&cache, &bundle)?;
            for key in &keys {
                println!("{key}");
            }
            eprintln!("imported {} entries from {}", keys.len(), bundle.display());
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
