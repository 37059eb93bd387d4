//! Finds libtorch, or installs it, and describes the environment that builds tch crates against it.
//!
//! libtorch comes from the PyPI `torch` wheel (DESIGN.md §2): tch 0.24.0 is built for PyTorch
//! 2.11.0 and nothing else. Lookup order:
//! 1. `LIBTORCH`, if set, checked for the right version;
//! 2. the venv this module installed earlier, under the per-user cache folder
//!    (`$TRANSFER_KIT_TORCH_VENV`, else `$XDG_CACHE_HOME/transfer-kit/torch-2.11.0`, else
//!    `~/.cache/transfer-kit/torch-2.11.0`);
//! 3. otherwise it creates that venv with `python3 -m venv` and `pip install torch==2.11.0`.
//!
//! Two bootstraps at once (two terminals, CI beside a developer) are serialised by an exclusive
//! lock on `<venv>.lock`, and the venv is built under a temporary name and renamed into place only
//! once torch imports with the right version, so a killed install never passes for a finished one.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The PyTorch release that `tch = "=0.24.0"` is built against.
pub const TORCH_VERSION: &str = "2.11.0";

/// Python packages installed beside torch: the reference scripts (parity tests, benchmarks)
/// need numpy and scipy, and PIL for the reference data path.
const REFERENCE_PACKAGES: &[&str] = &["numpy", "scipy", "pillow"];

/// Written into a finished venv; its presence (with the right version inside) means "complete".
const MARKER: &str = "transfer-kit-torch-version";

/// A usable libtorch: the `torch` package folder (holds `lib/` and `include/`) and, when we
/// installed it, the venv's Python for reference scripts.
#[derive(Debug, Clone)]
pub struct Libtorch {
    pub torch_dir: PathBuf,
    pub python: Option<PathBuf>,
}

impl Libtorch {
    /// Environment variables that make cargo build tch against this libtorch.
    ///
    /// `LIBTORCH` (not `LIBTORCH_USE_PYTORCH`) so builds do not start Python each time;
    /// torch 2.11 wheels use the C++11 ABI, torch-sys's default.
    pub fn env(&self) -> Vec<(&'static str, OsString)> {
        vec![("LIBTORCH", self.torch_dir.clone().into_os_string())]
    }

    pub fn configure(&self, cmd: &mut Command) {
        for (key, value) in self.env() {
            cmd.env(key, value);
        }
        // `LIBTORCH_USE_PYTORCH` from the user's shell would take precedence in torch-sys.
        cmd.env_remove("LIBTORCH_USE_PYTORCH");
        if let Some(python) = &self.python {
            cmd.env("TRANSFER_KIT_PYTHON", python);
        }
    }
}

/// Returns a libtorch of the right version, installing it if there is none.
pub fn ensure() -> Result<Libtorch> {
    match find()? {
        Some(found) => Ok(found),
        None => bootstrap(&venv_dir()?),
    }
}

/// The libtorch `ensure` would use, without installing one: `LIBTORCH` (version-checked), else
/// a finished venv; `None` when there is neither.
pub fn find() -> Result<Option<Libtorch>> {
    if let Some(dir) = std::env::var_os("LIBTORCH").filter(|v| !v.is_empty()) {
        let torch_dir = PathBuf::from(dir);
        check_user_libtorch(&torch_dir)?;
        tracing::info!(path = %torch_dir.display(), "using libtorch from LIBTORCH");
        return Ok(Some(Libtorch { torch_dir, python: None }));
    }
    finished_venv(&venv_dir()?)
}

/// Where the bootstrapped venv lives.
pub fn venv_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("TRANSFER_KIT_TORCH_VENV").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let cache = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let home =
                std::env::var_os("HOME").context("neither XDG_CACHE_HOME nor HOME is set")?;
            PathBuf::from(home).join(".cache")
        }
    };
    Ok(cache.join("transfer-kit").join(format!("torch-{TORCH_VERSION}")))
}

/// A finished venv at `venv`, or `None` if there is none. A venv whose marker names another
/// version is an error rather than silently rebuilt: the user may depend on it.
fn finished_venv(venv: &Path) -> Result<Option<Libtorch>> {
    let marker = venv.join(MARKER);
    let version = match fs::read_to_string(&marker) {
        Ok(v) => v.trim().to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", marker.display())),
    };
    if version != TORCH_VERSION {
        bail!(
            "{} holds torch {version}, but tch 0.24.0 needs torch {TORCH_VERSION}: remove that \
             folder or point TRANSFER_KIT_TORCH_VENV elsewhere",
            venv.display()
        );
    }
    let python = venv.join("bin").join("python");
    let torch_dir = site_packages(venv)?.join("torch");
    if !torch_dir.join("lib").is_dir() {
        bail!("{} is marked complete but has no torch/lib; remove it to reinstall", venv.display());
    }
    Ok(Some(Libtorch { torch_dir, python: Some(python) }))
}

fn site_packages(venv: &Path) -> Result<PathBuf> {
    let lib = venv.join("lib");
    let entries = fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))?;
    for entry in entries {
        let path = entry?.path().join("site-packages");
        if path.is_dir() {
            return Ok(path);
        }
    }
    bail!("no lib/python*/site-packages in {}", venv.display())
}

fn bootstrap(venv: &Path) -> Result<Libtorch> {
    let parent = venv.parent().context("venv path has no parent folder")?;
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let lock_path = with_suffix(venv, ".lock");
    let lock = fs::File::create(&lock_path)
        .with_context(|| format!("creating lock file {}", lock_path.display()))?;
    if lock.try_lock().is_err() {
        eprintln!(
            "waiting for another libtorch bootstrap to finish (lock {})",
            lock_path.display()
        );
        lock.lock().with_context(|| format!("locking {}", lock_path.display()))?;
    }
    // Another process may have finished while we waited.
    if let Some(found) = finished_venv(venv)? {
        return Ok(found);
    }
    let tmp = with_suffix(venv, &format!(".tmp-{}", std::process::id()));
    remove_stale_attempts(venv)?;

    let python = std::env::var_os("PYTHON").unwrap_or_else(|| "python3".into());
    eprintln!(
        "bootstrapping libtorch: installing PyPI torch=={TORCH_VERSION} (+ {}) into {}\n\
         this downloads about 4.7 GB (torch with its CUDA libraries) once and takes a few minutes",
        REFERENCE_PACKAGES.join(", "),
        venv.display()
    );
    run(Command::new(&python).arg("-m").arg("venv").arg(&tmp), "python3 -m venv")?;
    let venv_python = tmp.join("bin").join("python");
    run(
        pip_visibly(Command::new(&venv_python).args(["-m", "pip", "install"]))
            .arg(format!("torch=={TORCH_VERSION}"))
            .args(REFERENCE_PACKAGES),
        "pip install torch",
    )?;
    let output = Command::new(&venv_python)
        .args(["-c", "import torch; print(torch.__version__.split('+')[0])"])
        .output()
        .context("running the new venv's python")?;
    let version = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if !output.status.success() || version != TORCH_VERSION {
        bail!(
            "the fresh venv {} does not import torch {TORCH_VERSION} (got {version:?}): {}",
            tmp.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    fs::write(tmp.join(MARKER), format!("{TORCH_VERSION}\n"))?;
    fs::rename(&tmp, venv)
        .with_context(|| format!("renaming {} to {}", tmp.display(), venv.display()))?;
    eprintln!("libtorch ready in {}", venv.display());
    finished_venv(venv)?.context("venv vanished right after it was installed")
}

/// Lets the user watch a long pip command: pip's progress bars on a terminal, otherwise (CI, a
/// log file) pip's line per package ("Collecting", "Downloading ... (530.6 MB)", "Installing")
/// without bars. pip's stdout goes to our stderr, because our stdout is for machine-readable
/// output (`eval "$(cargo xtask libtorch)"`).
pub fn pip_visibly(pip: &mut Command) -> &mut Command {
    use std::io::IsTerminal as _;
    pip.arg("--disable-pip-version-check").stdout(std::io::stderr());
    if !std::io::stderr().is_terminal() {
        pip.args(["--progress-bar", "off"]);
    }
    pip
}

/// Deletes half-built venvs left by killed bootstraps. Only called while holding the lock, so no
/// live bootstrap owns them.
fn remove_stale_attempts(venv: &Path) -> Result<()> {
    let (Some(parent), Some(name)) = (venv.parent(), venv.file_name()) else {
        return Ok(());
    };
    let prefix = format!("{}.tmp-", name.to_string_lossy());
    for entry in fs::read_dir(parent)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            eprintln!("removing an interrupted bootstrap: {}", entry.path().display());
            fs::remove_dir_all(entry.path())
                .with_context(|| format!("removing {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// `torch-2.11.0` + `.lock` (not `Path::with_extension`, which would eat the `.0`).
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd.status().with_context(|| format!("could not start {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Refuses a user-supplied libtorch of another version. A libtorch zip carries `build-version`;
/// a torch wheel folder carries `version.py`. If neither says, torch-sys decides at build time.
fn check_user_libtorch(dir: &Path) -> Result<()> {
    if !dir.join("lib").is_dir() {
        bail!(
            "LIBTORCH={} has no lib/ folder: point it at a libtorch or torch package folder",
            dir.display()
        );
    }
    let version = read_libtorch_version(dir);
    match version {
        Some(v) if v != TORCH_VERSION => bail!(
            "LIBTORCH={} is torch {v}, but tch 0.24.0 needs torch {TORCH_VERSION} \
             (unset LIBTORCH to let xtask install it)",
            dir.display()
        ),
        Some(_) => Ok(()),
        None => {
            tracing::warn!(path = %dir.display(), "cannot tell the libtorch version; torch-sys will check it");
            Ok(())
        }
    }
}

/// The release (`2.11.0`, local suffix like `+cu130` dropped) recorded in a libtorch folder.
fn read_libtorch_version(dir: &Path) -> Option<String> {
    if let Ok(text) = fs::read_to_string(dir.join("build-version")) {
        return Some(release(text.trim()));
    }
    let text = fs::read_to_string(dir.join("version.py")).ok()?;
    text.lines().find_map(|line| {
        let rest = line.strip_prefix("__version__")?.trim_start().strip_prefix('=')?;
        Some(release(rest.trim().trim_matches(|c| c == '\'' || c == '"')))
    })
}

fn release(version: &str) -> String {
    version.split('+').next().unwrap_or(version).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(files: &[(&str, &str)], expect: Option<&str>) {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            fs::write(dir.path().join(name), text).unwrap();
        }
        assert_eq!(read_libtorch_version(dir.path()).as_deref(), expect);
    }

    #[test]
    fn version_from_wheel_version_py() {
        check(
            &[("version.py", "from typing import Optional\n__version__ = '2.11.0+cu130'\n")],
            Some("2.11.0"),
        );
    }

    #[test]
    fn version_from_libtorch_build_version() {
        check(&[("build-version", "2.10.0+cpu\n")], Some("2.10.0"));
    }

    #[test]
    fn version_unknown() {
        check(&[], None);
    }

    #[test]
    fn wrong_user_libtorch_is_refused_naming_the_version() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("lib")).unwrap();
        fs::write(dir.path().join("build-version"), "2.4.0\n").unwrap();
        let err = check_user_libtorch(dir.path()).unwrap_err().to_string();
        assert!(err.contains("2.4.0") && err.contains(TORCH_VERSION), "{err}");
    }

    #[test]
    fn venv_marked_with_another_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(MARKER), "2.3.1\n").unwrap();
        let err = finished_venv(dir.path()).unwrap_err().to_string();
        assert!(err.contains("2.3.1") && err.contains(TORCH_VERSION), "{err}");
        assert!(finished_venv(&dir.path().join("absent")).unwrap().is_none());
    }
}
