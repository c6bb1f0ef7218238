//! Training checkpoints: the trained weights, the optimizer's moments and the loop's state,
//! written so that a kill at any moment leaves the previous checkpoint usable.
//!
//! ```text
//! <out>/checkpoints/step-000120/{weights.safetensors, optimizer.safetensors, state.json}
//! <out>/checkpoints/latest        "step-000120", replaced atomically after the folder is complete
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, Var};
use serde::{de::DeserializeOwned, Serialize};

use super::adamw::AdamW;
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;

pub fn dir(out: &Path) -> PathBuf {
    out.join("checkpoints")
}

/// The folder of the newest complete checkpoint, if any.
pub fn latest(out: &Path) -> Result<Option<PathBuf>> {
    let pointer = dir(out).join("latest");
    match std::fs::read_to_string(&pointer) {
        Ok(name) => {
            let path = dir(out).join(name.trim());
            if path.join("state.json").exists() {
                Ok(Some(path))
            } else {
                Err(Error::Training(format!(
                    "{} points to {}, which is incomplete",
                    pointer.display(),
                    path.display()
                )))
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(&pointer, e)),
    }
}

/// Writes a checkpoint of `step` and makes it the latest; older ones are removed after.
pub fn save<S: Serialize>(
    out: &Path,
    step: usize,
    params: &[(String, Var)],
    adam: &AdamW,
    state: &S,
) -> Result<PathBuf> {
    let root = dir(out);
    let name = format!("step-{step:06}");
    let tmp = root.join(format!(".{name}.tmp"));
    let done = root.join(&name);
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;

    let weights: HashMap<String, Tensor> = params
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
        .collect();
    candle_core::safetensors::save(&weights, tmp.join("weights.safetensors"))?;
    let mut moments = HashMap::new();
    for ((n, v), (m, s)) in params.iter().zip(adam.m.iter().zip(&adam.v)) {
        let shape = v.as_tensor().shape().clone();
        moments.insert(
            format!("m.{n}"),
            Tensor::from_slice(m, &shape, &Device::Cpu)?,
        );
        moments.insert(
            format!("v.{n}"),
            Tensor::from_slice(s, &shape, &Device::Cpu)?,
        );
    }
    candle_core::safetensors::save(&moments, tmp.join("optimizer.safetensors"))?;
    write_atomic(
        &tmp.join("state.json"),
        serde_json::to_string_pretty(state)
            .expect("state serializes")
            .as_bytes(),
    )?;
    let _ = std::fs::remove_dir_all(&done);
    std::fs::rename(&tmp, &done).map_err(|e| Error::io(&done, e))?;
    write_atomic(&root.join("latest"), name.as_bytes())?;
    // Only now is it safe to drop the older checkpoints.
    if let Ok(entries) = std::fs::read_dir(&root) {
        for e in entries.flatten() {
            let p = e.path();
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with("step-") && n != name {
                let _ = std::fs::remove_dir_all(&p);
            }
        }
    }
    Ok(done)
}

/// The loop state saved in checkpoint folder `path`.
pub fn read_state<S: DeserializeOwned>(path: &Path) -> Result<S> {
    let state_path = path.join("state.json");
    let text = std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::Training(format!("{}: {e}", state_path.display())))
}

/// Restores weights and optimizer moments from checkpoint folder `path`; returns its state.
pub fn load<S: DeserializeOwned>(
    path: &Path,
    params: &[(String, Var)],
    adam: &mut AdamW,
) -> Result<S> {
    let state: S = read_state(path)?;
    let weights = candle_core::safetensors::load(path.join("weights.safetensors"), &Device::Cpu)?;
    let moments = candle_core::safetensors::load(path.join("optimizer.safetensors"), &Device::Cpu)?;
    let get = |map: &HashMap<String, Tensor>, key: &str, like: &Var| -> Result<Tensor> {
        let t = map.get(key).ok_or_else(|| {
            Error::Training(format!("checkpoint {} lacks `{key}`", path.display()))
        })?;
        if t.shape() != like.as_tensor().shape() {
            return Err(Error::Training(format!(
                "checkpoint {}: `{key}` has shape {:?}, the model {:?}",
                path.display(),
                t.dims(),
                like.dims()
            )));
        }
        Ok(t.clone())
    };
    for (i, (n, v)) in params.iter().enumerate() {
        v.set(&get(&weights, n, v)?)?;
        adam.m[i] = get(&moments, &format!("m.{n}"), v)?
            .flatten_all()?
            .to_vec1()?;
        adam.v[i] = get(&moments, &format!("v.{n}"), v)?
            .flatten_all()?
            .to_vec1()?;
    }
    Ok(state)
}
