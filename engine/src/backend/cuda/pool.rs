//! The paged KV pool in device memory.
//!
//! Layout: one allocation for keys and one for values, each `[layer][block][kv_head][slot]
//! [head_dim]` bf16 (raw bits). Why:
//! - the `head_dim` values of one entry are contiguous, so the threads of a kernel reading one
//!   key or value row load consecutive addresses (coalesced), and one head's piece of a block is
//!   one contiguous `block_size · head_dim` run;
//! - a layer is one contiguous slab, so a kernel for layer `l` gets the pool's address plus
//!   `l ·` [`DevicePool::layer_len`] and indexes blocks within it the way every kernel file
//!   documents it (`cache_write.cu`);
//! - bf16 halves the bytes of the CPU's f32 pool, and attention widens to f32 exactly in
//!   registers. The CPU pool transposes keys for SIMD broadcasts; a GPU thread group reads whole
//!   rows instead, so the device pool does not.
//!
//! The host keeps the free lists and the scheduler as for the CPU pool: block ids index this
//! pool directly. Blocks are zeroed once when the pool is allocated.

use cudarc::driver::CudaSlice;

use super::gpu::Gpu;
use super::kernels::KvLayer;
use crate::backend::KvGeometry;
use crate::error::Result;

/// Keys and values of every layer, on the device.
pub struct DevicePool {
    geometry: KvGeometry,
    keys: CudaSlice<u16>,
    values: CudaSlice<u16>,
}

impl DevicePool {
    /// Allocates the pool `geometry` describes (its dtype must be bf16, checked by the caller).
    pub fn new(gpu: &Gpu, geometry: KvGeometry) -> Result<Self> {
        let len = geometry.num_layers * layer_len(&geometry);
        Ok(Self {
            geometry,
            keys: gpu.zeros(len, "the KV pool's keys")?,
            values: gpu.zeros(len, "the KV pool's values")?,
        })
    }

    pub fn geometry(&self) -> &KvGeometry {
        &self.geometry
    }

    /// Keys and values of layer `layer`.
    pub fn layer(&self, gpu: &Gpu, layer: usize) -> KvLayer {
        let at = layer * layer_len(&self.geometry);
        KvLayer {
            keys: gpu.ptr(&self.keys).at(at),
            values: gpu.ptr(&self.values).at(at),
        }
    }
}

/// Elements of one layer's keys (or values): `num_blocks · num_kv_heads · block_size ·
/// head_dim`.
pub fn layer_len(geometry: &KvGeometry) -> usize {
    geometry.num_blocks * geometry.num_kv_heads * geometry.block_size * geometry.head_dim
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KvCacheDtype;

    #[test]
    fn the_device_pool_holds_exactly_the_bytes_the_geometry_counts() {
        let geometry = KvGeometry {
            num_layers: 3,
            num_kv_heads: 2,
            head_dim: 8,
            block_size: 16,
            num_blocks: 5,
            dtype: KvCacheDtype::Bf16,
        };
        assert_eq!(layer_len(&geometry), 5 * 2 * 16 * 8);
        // Keys and values, two bytes each, every layer.
        assert_eq!(
            2 * 2 * geometry.num_layers * layer_len(&geometry),
            geometry.total_bytes()
        );
    }
}
