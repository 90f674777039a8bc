//! Compute device selection and process set-up.

use candle_core::Device;

use crate::{Error, Result};

/// Tunes glibc's allocator for tensor work; call once at start-up, before threads start.
///
/// Activations of a ViT batch are tens of MB each; by default glibc serves blocks over 128 KiB
/// (adaptively up to 32 MiB) with fresh `mmap`s and returns freed heap top eagerly, so every
/// forward pays page faults and zeroing for the same buffers again. Raising the mmap threshold to
/// its maximum and the trim threshold keeps those pages in the heap for reuse (measured here,
/// `crates/vista/examples/bench_clip.rs`: ViT-B/32 image batch of 32, 838 -> 796 ms). Freed memory
/// is kept rather than returned to the system until the process ends.
pub fn init_process() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called before other threads allocate.
    unsafe {
        // DEFAULT_MMAP_THRESHOLD_MAX on 64-bit glibc: 4 * 1024 * 1024 * sizeof(long).
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 * 1024 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1024 * 1024 * 1024);
    }
}

/// The device to run on: `cpu`, `cuda` or `cuda:N`.
pub fn select(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = s
                .strip_prefix("cuda:")
                .map(|n| n.parse::<usize>())
                .transpose()
                .map_err(|_| Error::arg("device", format!("`{s}`: expected cuda:N with N a GPU number")))?;
            if !cfg!(feature = "cuda") {
                return Err(Error::arg("device", "this build has no CUDA support (build with `--features cuda`)"));
            }
            Ok(Device::new_cuda(ordinal.unwrap_or(0))?)
        }
        other => Err(Error::arg("device", format!("unknown device `{other}` (cpu, cuda, cuda:N)"))),
    }
}
