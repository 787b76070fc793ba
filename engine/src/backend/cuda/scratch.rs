//! Device buffers a forward pass reuses from step to step (activations, index arrays, eviction
//! scratch): each grows when a step needs more than it holds and never shrinks, so a warm
//! server allocates nothing per step, as the CPU backend's step buffers do.

use cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};

use super::gpu::{DevPtr, Gpu};
use crate::error::Result;

/// A device buffer of at least the length last asked for.
pub struct Scratch<T> {
    what: &'static str,
    buffer: Option<CudaSlice<T>>,
}

impl<T: DeviceRepr + ValidAsZeroBits> Scratch<T> {
    /// An empty buffer; `what` names it in an out-of-memory error.
    pub fn new(what: &'static str) -> Self {
        Self { what, buffer: None }
    }

    /// The buffer, grown to hold `len` elements if it held fewer (its old contents are then
    /// lost: a step fills what it reads).
    pub fn ensure(&mut self, gpu: &Gpu, len: usize) -> Result<DevPtr<T>> {
        let held = self.buffer.as_ref().map_or(0, CudaSlice::len);
        if self.buffer.is_none() || held < len {
            self.buffer = None;
            self.buffer = Some(gpu.zeros(grown_len(held, len), self.what)?);
        }
        let buffer = self.buffer.as_ref().expect("allocated above");
        Ok(gpu.ptr(buffer))
    }

    /// The buffer, grown to hold `data`, with `data` copied to its start.
    pub fn upload(&mut self, gpu: &Gpu, data: &[T]) -> Result<DevPtr<T>> {
        let ptr = self.ensure(gpu, data.len())?;
        gpu.write(data, self.buffer.as_mut().expect("allocated by ensure"))?;
        Ok(ptr)
    }
}

/// The length a buffer holding `held` elements grows to when `needed` are asked for: at least
/// double, so a batch growing one row at a time reallocates only logarithmically often.
fn grown_len(held: usize, needed: usize) -> usize {
    needed.max(held.saturating_mul(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_grows_to_what_is_needed_and_at_least_doubles() {
        assert_eq!(grown_len(0, 5), 5);
        assert_eq!(grown_len(5, 6), 10);
        assert_eq!(grown_len(5, 100), 100);
        assert_eq!(grown_len(usize::MAX / 2 + 1, usize::MAX), usize::MAX);
    }
}
