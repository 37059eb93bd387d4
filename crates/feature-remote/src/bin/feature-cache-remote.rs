//! `feature-cache-remote`: push, pull, list and verify a feature cache's entries and split
//! indexes in an S3-compatible object store. `feature-cache push|pull|ls --remote|verify
//! --remote` runs this program (found beside it, else on PATH), so the S3 client stays out of
//! the `feature-cache` binary.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args as ClapArgs, Parser, Subcommand};
use feature_cache::{Cache, ExtractionRecord, index_path};
use feature_remote::{Kind, PushOutcome, Remote, RemoteError, RemoteUrl, Transfer};

/// Share a feature cache through an S3-compatible object store. Credentials, region and
/// endpoint come from the standard AWS environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
/// AWS_SESSION_TOKEN, AWS_REGION, AWS_ENDPOINT_URL (another store than AWS S3), AWS_ALLOW_HTTP=true
/// (a plain-HTTP endpoint, e.g. on loopback); what it leaves unset comes from the profile
/// AWS_PROFILE (else default) of ~/.aws/credentials and ~/.aws/config.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// The local cache root folder [default: $TRANSFER_KIT_CACHE_DIR, else
    /// $XDG_CACHE_HOME/transfer-kit/features, else ~/.cache/transfer-kit/features].
    #[arg(long, global = true)]
    cache_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(ClapArgs)]
struct RemoteArg {
    /// The store, s3://BUCKET/PREFIX.
    #[arg(long, value_name = "s3://BUCKET/PREFIX")]
    remote: String,
    /// Transfers in flight at once.
    #[arg(long, default_value_t = 8, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    jobs: usize,
}

#[derive(ClapArgs)]
struct Keys {
    /// Entry or split index keys (as `feature-cache ls` lists them); an index moves with all
    /// its chunks.
    #[arg(required_unless_present = "from")]
    keys: Vec<String>,
    /// Also every split of these runs (the split indexes their `features.json` records).
    #[arg(long, num_args = 1.., value_name = "FEATURES_JSON")]
    from: Vec<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Upload entries and split indexes (verified first): data objects, then one create-once
    /// commit per key. A key someone committed first keeps their commit (reported as `kept`).
    Push {
        #[command(flatten)]
        remote: RemoteArg,
        #[command(flatten)]
        keys: Keys,
    },
    /// Download committed entries and split indexes; every digest and every entry is checked
    /// in a staging folder before anything is published in the cache.
    Pull {
        #[command(flatten)]
        remote: RemoteArg,
        #[command(flatten)]
        keys: Keys,
    },
    /// One line per commit in the store: split indexes (chunk count), then entries (`chunk`
    /// when a committed index lists them), with size and writer. Reads commit objects only.
    Ls {
        #[command(flatten)]
        remote: RemoteArg,
    },
    /// Check every commit (or those of KEY..., with the chunks of indexes) as a pull would,
    /// downloading into a staging folder of the cache that is removed afterwards; exits
    /// non-zero naming each key that would not pull.
    Verify {
        #[command(flatten)]
        remote: RemoteArg,
        /// Only these keys (default: every commit).
        keys: Vec<String>,
    },
}

fn main() -> std::process::ExitCode {
    cli_support::main(|| run(Args::parse()))
}

fn connect(arg: &RemoteArg) -> Result<Remote> {
    let url: RemoteUrl = arg.remote.parse()?;
    let transfer = Transfer { concurrency: arg.jobs.max(1), ..Transfer::default() };
    Ok(Remote::connect(&url, transfer)?)
}

fn run(args: Args) -> Result<()> {
    let root = args.cache_dir.unwrap_or_else(feature_cache::default_cache_dir);
    let cache = Cache::open(&root).with_context(|| format!("opening cache {}", root.display()))?;
    match args.command {
        Cmd::Push { remote, keys } => {
            let keys = all_keys(keys, |record| record_keys(&cache, record))?;
            let remote = connect(&remote)?;
            let start = Instant::now();
            let lines = remote
                .push(&cache, &keys)
                .with_context(|| format!("pushing to {}", remote.url()))?;
            let (mut committed, mut kept, mut sent) = (0, 0, 0);
            for line in &lines {
                sent += line.sent;
                let kind = kind_word(line.kind, line.is_chunk);
                match &line.outcome {
                    PushOutcome::Committed => {
                        committed += 1;
                        println!("committed  {kind:<5}  {}", line.key);
                    }
                    PushOutcome::KeptExisting { writer, differs } => {
                        kept += 1;
                        let same = if differs.is_empty() {
                            "same bytes as ours".to_owned()
                        } else {
                            format!("its {} differ from ours (theirs stays)", differs.join(", "))
                        };
                        println!(
                            "kept       {kind:<5}  {}  committed earlier by {writer}; {same}",
                            line.key
                        );
                    }
                }
            }
            eprintln!(
                "pushed to {}: {committed} committed, {kept} kept existing; {}",
                remote.url(),
                rate(sent, start)
            );
            Ok(())
        }
        Cmd::Pull { remote, keys } => {
            let keys = all_keys(keys, pull_record_keys)?;
            let remote = connect(&remote)?;
            let start = Instant::now();
            let lines = remote.pull(&cache, &keys).with_context(|| {
                format!("pulling from {} into {}", remote.url(), root.display())
            })?;
            let mut received = 0;
            let mut pulled = 0;
            for line in &lines {
                received += line.received;
                let kind = kind_word(line.kind, false);
                if line.downloaded {
                    pulled += 1;
                    let chunks = match line.kind {
                        Kind::Index => {
                            let n = line.chunks_downloaded;
                            format!("  ({n} chunk{} downloaded)", if n == 1 { "" } else { "s" })
                        }
                        Kind::Entry => String::new(),
                    };
                    println!("pulled   {kind:<5}  {}{chunks}", line.key);
                } else {
                    println!("present  {kind:<5}  {}", line.key);
                }
            }
            eprintln!(
                "pulled from {} into {}: {pulled} downloaded, {} already present; {}",
                remote.url(),
                root.display(),
                lines.len() - pulled,
                rate(received, start)
            );
            Ok(())
        }
        Cmd::Ls { remote } => {
            let remote = connect(&remote)?;
            let statuses = remote.list(None)?;
            if statuses.is_empty() {
                // Most often a mistyped bucket or prefix: say so rather than print nothing.
                eprintln!("no commits under {}", remote.url());
            }
            let chunks: BTreeSet<&String> = statuses
                .iter()
                .filter_map(|s| s.result.as_ref().ok())
                .flat_map(|c| &c.chunks)
                .collect();
            let mut order: Vec<_> = statuses.iter().collect();
            order.sort_by_key(|s| {
                (s.result.as_ref().map_or(2, |c| (c.kind == Kind::Entry) as u8), &s.key)
            });
            for status in order {
                match &status.result {
                    Ok(c) => {
                        let kind = kind_word(c.kind, chunks.contains(&status.key));
                        let extra = match c.kind {
                            Kind::Index => format!("{} chunks  ", c.chunks.len()),
                            Kind::Entry => String::new(),
                        };
                        println!(
                            "{kind:<5}  {}  {extra}{} bytes  by {}",
                            status.key,
                            c.bytes(),
                            c.writer
                        );
                    }
                    Err(err) => println!("?      {}  (unreadable commit: {err})", status.key),
                }
            }
            Ok(())
        }
        Cmd::Verify { remote, keys } => {
            let remote = connect(&remote)?;
            let statuses = remote.verify(&cache, (!keys.is_empty()).then_some(keys.as_slice()))?;
            let mut bad = 0;
            for status in &statuses {
                match &status.result {
                    Ok(c) => println!("ok       {:<5}  {}", kind_word(c.kind, false), status.key),
                    Err(err) => {
                        bad += 1;
                        let word = match err {
                            RemoteError::NotCommitted { .. } | RemoteError::MissingData { .. } => {
                                "MISSING"
                            }
                            RemoteError::Store { .. } | RemoteError::Io { .. } => "ERROR",
                            _ => "CORRUPT",
                        };
                        println!("{word:<8} {}  {err}", status.key);
                    }
                }
            }
            eprintln!(
                "{} commits in {} checked: {}",
                statuses.len(),
                remote.url(),
                if bad == 0 { "all verify".to_owned() } else { format!("{bad} do not verify") }
            );
            if bad > 0 {
                bail!("{bad} committed keys in {} do not verify", remote.url());
            }
            Ok(())
        }
    }
}

/// `entry`, `chunk` (an entry a split index lists) or `index`.
fn kind_word(kind: Kind, is_chunk: bool) -> &'static str {
    match (kind, is_chunk) {
        (Kind::Index, _) => "index",
        (Kind::Entry, true) => "chunk",
        (Kind::Entry, false) => "entry",
    }
}

/// `N bytes in T s (R MB/s)`.
fn rate(bytes: u64, start: Instant) -> String {
    let secs = start.elapsed().as_secs_f64();
    format!("{bytes} bytes moved in {secs:.2} s ({:.1} MB/s)", bytes as f64 / 1e6 / secs.max(1e-9))
}

/// The keys given, then those of each `--from` record, each once, in order.
fn all_keys(keys: Keys, from_record: impl Fn(&Path) -> Result<Vec<String>>) -> Result<Vec<String>> {
    let mut all = keys.keys;
    for record in &keys.from {
        all.extend(from_record(record)?);
    }
    let mut seen = BTreeSet::new();
    all.retain(|k| seen.insert(k.clone()));
    Ok(all)
}

/// The split index keys of the run record `path`, each checked to be in `cache` (else this is
/// likely not the cache the run used: the error names the record's). A split the run kept in a
/// private cache of its own folder is refused: push it with `--cache-dir` that cache.
fn record_keys(cache: &Cache, path: &Path) -> Result<Vec<String>> {
    let record = read_record(path)?;
    let mut keys = Vec::new();
    for e in &record.entries {
        let what =
            format!("split index {} (the {} features of {})", e.key, e.split, path.display());
        if let Some(private) = e.cache_dir.as_deref().filter(|d| !same_dir(d, cache.root())) {
            bail!(
                "{what} lives in the run's private cache {}: push it with --cache-dir {0}",
                private.display()
            );
        }
        if !feature_cache::is_key(&e.key) || !index_path(cache.root(), &e.key).is_file() {
            bail!(
                "{what}: no such split index in {}; the record names the cache {} (pass it as --cache-dir)",
                cache.root().display(),
                record.cache_dir.display()
            );
        }
        keys.push(e.key.clone());
    }
    Ok(keys)
}

/// The split index keys of the run record `path` (pulled whatever the local cache holds).
fn pull_record_keys(path: &Path) -> Result<Vec<String>> {
    Ok(read_record(path)?.entries.into_iter().map(|e| e.key).collect())
}

fn read_record(path: &Path) -> Result<ExtractionRecord> {
    run_folder::read_json(path)
        .with_context(|| format!("reading the extraction record {}", path.display()))
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}
