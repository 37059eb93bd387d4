//! `--device auto|cpu|cuda|cuda:N`: parsing and resolving to a `tch::Device`.

use std::fmt;
use std::str::FromStr;

use crate::ModelError;

/// A device as the user names it. `Auto` picks the first CUDA device when libtorch sees one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, ModelError> {
        let unknown = || ModelError::UnknownDevice { given: s.to_owned() };
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            other => {
                let index = other.strip_prefix("cuda:").ok_or_else(unknown)?;
                index.parse().map(Self::Cuda).map_err(|_| unknown())
            }
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl DeviceChoice {
    /// The tch device for this choice; an explicit CUDA device that does not exist is an error,
    /// never a silent fall-back to the CPU.
    pub fn resolve(self) -> Result<tch::Device, ModelError> {
        let available = if tch::Cuda::is_available() { tch::Cuda::device_count() } else { 0 };
        let device = match self {
            Self::Cpu => tch::Device::Cpu,
            Self::Auto if available > 0 => tch::Device::Cuda(0),
            Self::Auto => tch::Device::Cpu,
            Self::Cuda(i) if (i as i64) < available => tch::Device::Cuda(i),
            Self::Cuda(_) => {
                return Err(ModelError::CudaUnavailable { given: self.to_string(), available });
            }
        };
        tracing::info!(requested = %self, ?device, cuda_devices = available, "device chosen");
        Ok(device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expect: Option<DeviceChoice>) {
        assert_eq!(input.parse::<DeviceChoice>().ok(), expect, "{input}");
    }

    #[test]
    fn parses_every_spelling() {
        check("auto", Some(DeviceChoice::Auto));
        check("CPU", Some(DeviceChoice::Cpu));
        check("cuda", Some(DeviceChoice::Cuda(0)));
        check("cuda:3", Some(DeviceChoice::Cuda(3)));
        check("cuda:", None);
        check("cuda:x", None);
        check("gpu", None);
    }

    #[test]
    fn display_round_trips() {
        for d in [DeviceChoice::Auto, DeviceChoice::Cpu, DeviceChoice::Cuda(2)] {
            check(&d.to_string(), Some(d));
        }
    }

    #[test]
    fn cpu_always_resolves_and_missing_cuda_is_an_error() {
        assert_eq!(DeviceChoice::Cpu.resolve().unwrap(), tch::Device::Cpu);
        let count = if tch::Cuda::is_available() { tch::Cuda::device_count() } else { 0 };
        let err = DeviceChoice::Cuda(count as usize).resolve().unwrap_err();
        assert!(err.to_string().contains(&format!("cuda:{count}")), "{err}");
    }
}
