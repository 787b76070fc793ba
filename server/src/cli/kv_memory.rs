//! What `--kv-memory-fraction` takes its fraction of: for `--device cpu` the host's available
//! memory (`MemAvailable`), for `--device cuda:N` the device's free memory less the weights the
//! backend is about to upload, read by the device probe at start-up, before the backend is built.
//! The arithmetic is apart from the probes, so it is tested without a GPU.

use anyhow::Context;
use glimpse_engine::backend::Device;
use glimpse_engine::backend::cuda::probe;
use glimpse_server::metrics::DeviceMemory;

/// The GPU's memory for `--device cuda:N` (logged, and exported as metrics by `serve`); `None`
/// for the CPU.
///
/// Fails with the probe's error naming what is missing (driver, device, compute capability).
pub fn probe_device_memory(device: Device) -> anyhow::Result<Option<DeviceMemory>> {
    let Device::Cuda(ordinal) = device else {
        return Ok(None);
    };
    let info = probe::probe(ordinal)?;
    let memory = DeviceMemory {
        free_bytes: info.free_bytes as u64,
        total_bytes: info.total_bytes as u64,
    };
    tracing::info!(
        %device,
        name = %info.name,
        free_bytes = memory.free_bytes,
        total_bytes = memory.total_bytes,
        "device memory"
    );
    Ok(Some(memory))
}

/// The bytes `--kv-memory-fraction` is a fraction of: the device's free memory after
/// `weight_bytes` when `device_memory` is a GPU's, else the host's available memory.
///
/// Fails when /proc/meminfo cannot be read, or when the weights leave nothing of the device's
/// free memory (naming both and the flags that help).
pub fn available_bytes(
    device: Device,
    device_memory: Option<DeviceMemory>,
    weight_bytes: u64,
) -> anyhow::Result<u64> {
    match device_memory {
        Some(memory) => free_after_weights(device, memory, weight_bytes),
        None => host_available_bytes(),
    }
}

/// The device's free bytes less the weights'; an error when nothing is left.
fn free_after_weights(
    device: Device,
    memory: DeviceMemory,
    weight_bytes: u64,
) -> anyhow::Result<u64> {
    memory
        .free_bytes
        .checked_sub(weight_bytes)
        .filter(|&left| left > 0)
        .with_context(|| {
            format!(
                "{device} has {} bytes free and the weights need {weight_bytes}: nothing is left \
                 for the KV cache (--dtype bf16 halves f32 weights; --kv-memory-bytes sets the \
                 pool's size)",
                memory.free_bytes
            )
        })
}

/// `MemAvailable` from /proc/meminfo.
fn host_available_bytes() -> anyhow::Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")
        .context("reading /proc/meminfo (use --kv-memory-bytes)")?;
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .context("no MemAvailable in /proc/meminfo (use --kv-memory-bytes)")
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn h100(free_bytes: u64) -> Option<DeviceMemory> {
        Some(DeviceMemory {
            free_bytes,
            total_bytes: 80 * GIB,
        })
    }

    #[test]
    fn a_gpu_gives_its_free_memory_less_the_weights() {
        let available = available_bytes(Device::Cuda(0), h100(79 * GIB), 3 * GIB).unwrap();
        assert_eq!(available, 76 * GIB);
    }

    #[test]
    fn weights_that_fill_the_gpu_are_refused_naming_both_sizes() {
        for weights in [79 * GIB, 100 * GIB] {
            let error = available_bytes(Device::Cuda(1), h100(79 * GIB), weights)
                .unwrap_err()
                .to_string();
            assert!(
                error.contains(&format!(
                    "cuda:1 has {} bytes free and the weights need {weights}",
                    79 * GIB
                )) && error.contains("--kv-memory-bytes"),
                "{error}"
            );
        }
    }

    #[test]
    fn the_cpu_reads_the_hosts_available_memory() {
        let available = available_bytes(Device::Cpu, None, u64::MAX).unwrap();
        assert!(available > 0);
    }

    #[test]
    fn the_cpu_has_no_device_memory_to_probe() {
        assert_eq!(probe_device_memory(Device::Cpu).unwrap(), None);
    }
}
