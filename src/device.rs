//! Which device the model runs on: `--device cpu|cuda|metal|auto`.

use std::str::FromStr;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    Cpu,
    Cuda,
    Metal,
    /// CUDA if this build has it and a GPU is present, then Metal, then CPU.
    #[default]
    Auto,
}

impl FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda),
            "metal" => Ok(Self::Metal),
            "auto" => Ok(Self::Auto),
            _ => Err(format!(
                "unknown device `{s}` (expected cpu, cuda, metal or auto)"
            )),
        }
    }
}

impl DeviceChoice {
    pub fn resolve(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda => Device::new_cuda(0)
                .map_err(|e| Error::DeviceUnavailable("cuda".into(), hint(e, "cuda"))),
            Self::Metal => Device::new_metal(0)
                .map_err(|e| Error::DeviceUnavailable("metal".into(), hint(e, "metal"))),
            Self::Auto => Ok(Device::new_cuda(0)
                .or_else(|_| Device::new_metal(0))
                .unwrap_or(Device::Cpu)),
        }
    }
}

fn hint(e: candle_core::Error, feature: &str) -> String {
    let msg = e.to_string();
    if msg.contains("not compiled") || msg.contains("support") {
        format!("this build has no {feature} support (rebuild with `--features {feature}`)")
    } else {
        msg
    }
}

pub fn describe(device: &Device) -> &'static str {
    match device {
        Device::Cpu => "cpu",
        Device::Cuda(_) => "cuda",
        Device::Metal(_) => "metal",
    }
}
