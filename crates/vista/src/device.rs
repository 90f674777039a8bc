//! Compute device selection ([`select`], [`Target`]: device and precision) and process set-up.

use candle_core::{DType, Device};

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
    flush_denormals();
    pin_thread_count();
}

/// Fixes the thread count for the process by setting `RAYON_NUM_THREADS` when the user has not.
///
/// candle works out its default (the physical cores) again on every call that asks — each
/// matrix product, each of vista's split kernels — and on Linux that reads and parses
/// `/proc/cpuinfo`: 63,535 reads in one DINO ResNet-50 training step of 64 images (`strace`),
/// about a quarter of the step's time (9.0 s per step with the variable set, 11.8 s without).
/// With the variable set both candle and rayon read it instead; the value is candle's own
/// default, so nothing else changes. Call before threads start (it writes the environment).
pub fn pin_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = candle_core::utils::get_num_threads();
        // Called at start-up from `init_process`, before any other thread exists that could
        // read the environment concurrently.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}

/// Sets flush-to-zero and denormals-are-zero (MXCSR FTZ | DAZ) on the calling thread, which
/// threads it starts afterwards inherit (the rayon and candle pools are started later, from it):
/// subnormal numbers (below 1.2e-38) are read and written as 0. A GEMM that meets them takes a
/// microcode assist per operation; in training, softmax backward makes them from tiny
/// probabilities times small gradients (a CLIP training step: 1.0 s with them, 0.87 s without).
/// TensorFlow sets the same bits on its CPU threads. `VISTA_KEEP_DENORMALS=1` leaves them.
pub fn flush_denormals() {
    #[cfg(target_arch = "x86_64")]
    if std::env::var_os("VISTA_KEEP_DENORMALS").is_none() {
        #[allow(deprecated)]
        // SAFETY: only sets the FTZ and DAZ bits of this thread's floating-point control register.
        unsafe {
            std::arch::x86_64::_mm_setcsr(std::arch::x86_64::_mm_getcsr() | 0x8040)
        };
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
            let device = Device::new_cuda(ordinal.unwrap_or(0))?;
            // A tuning, not a requirement: a device without memory pools runs as it is.
            #[cfg(feature = "cuda")]
            let _ = cuda::keep_freed_memory(&device);
            Ok(device)
        }
        other => Err(Error::arg("device", format!("unknown device `{other}` (cpu, cuda, cuda:N)"))),
    }
}

/// Where a model runs and in what precision: weights are cast to `dtype` when they are loaded
/// and activations run in it (LayerNorm and softmax accumulate in f32 inside candle's kernels);
/// what a pipeline returns is f32 whatever the dtype. [`Default`] is f32 on the CPU, the only
/// combination that takes vista's fused CPU kernels; other dtypes on the CPU run the portable
/// candle-op paths.
#[derive(Debug, Clone)]
pub struct Target {
    /// The device the weights live on and the forward passes run on.
    pub device: Device,
    /// The dtype of the weights and activations (`F32`, `BF16` or `F16`).
    pub dtype: DType,
}

impl Default for Target {
    fn default() -> Self {
        Self { device: Device::Cpu, dtype: DType::F32 }
    }
}

impl From<&Device> for Target {
    /// f32 on `device`.
    fn from(device: &Device) -> Self {
        Self { device: device.clone(), dtype: DType::F32 }
    }
}

impl Target {
    /// A target from what a user gives: a device name ([`select`]) and a dtype name
    /// ([`parse_dtype`]).
    pub fn parse(device: &str, dtype: &str) -> Result<Self> {
        Ok(Self { device: select(device)?, dtype: parse_dtype(dtype)? })
    }
}

/// A floating-point dtype by name: `f32` (`float32`), `bf16` (`bfloat16`), `f16` (`float16`,
/// `half`).
pub fn parse_dtype(name: &str) -> Result<DType> {
    match name.to_ascii_lowercase().as_str() {
        "f32" | "float32" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f16" | "float16" | "half" => Ok(DType::F16),
        other => Err(Error::arg("dtype", format!("unknown dtype `{other}` (f32, bf16, f16)"))),
    }
}

/// CUDA memory: candle allocates with `cuMemAllocAsync` from the device's default memory pool.
#[cfg(feature = "cuda")]
pub mod cuda {
    use candle_core::cuda_backend::cudarc::driver::sys;
    use candle_core::Device;

    use crate::{Error, Result};

    fn default_pool(device: &Device) -> Result<sys::CUmemoryPool> {
        let dev = device.as_cuda_device()?;
        let stream = dev.cuda_stream();
        let ctx = stream.context();
        ctx.bind_to_thread().map_err(candle_core::Error::wrap)?;
        let mut pool = std::ptr::null_mut();
        // SAFETY: a valid device handle and an out-pointer for the pool.
        unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()).result() }
            .map_err(candle_core::Error::wrap)?;
        Ok(pool)
    }

    fn attr(device: &Device, attr: sys::CUmemPool_attribute, set: Option<u64>) -> Result<u64> {
        let pool = default_pool(device)?;
        let mut v: u64 = set.unwrap_or(0);
        let p = &mut v as *mut u64 as *mut std::ffi::c_void;
        // SAFETY: every attribute used here is a 64-bit value.
        let r = unsafe {
            match set {
                Some(_) => sys::cuMemPoolSetAttribute(pool, attr, p),
                None => sys::cuMemPoolGetAttribute(pool, attr, p),
            }
        };
        r.result().map_err(|e| Error::arg("device", format!("CUDA memory pool: {e:?}")))?;
        Ok(v)
    }

    /// Keeps memory freed by tensors in the pool instead of returning it to the driver at every
    /// synchronisation (the pool's default release threshold is 0), so that the next forward pass
    /// reuses it, as PyTorch's caching allocator does. Called by [`super::select`].
    pub fn keep_freed_memory(device: &Device) -> Result<()> {
        attr(device, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, Some(u64::MAX)).map(|_| ())
    }

    /// Restarts the count behind [`peak_bytes`].
    pub fn reset_peak(device: &Device) -> Result<()> {
        attr(device, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH, Some(0)).map(|_| ())
    }

    /// The most bytes of device memory that tensors held at once since [`reset_peak`] (the
    /// pool's used-memory high-water mark; what `torch.cuda.max_memory_allocated` reports).
    pub fn peak_bytes(device: &Device) -> Result<u64> {
        attr(device, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH, None)
    }

    /// `(free, total)` bytes on the device, as the driver reports them.
    pub fn mem_info(device: &Device) -> Result<(usize, usize)> {
        let dev = device.as_cuda_device()?;
        let stream = dev.cuda_stream();
        Ok(stream.context().mem_get_info().map_err(candle_core::Error::wrap)?)
    }
}
