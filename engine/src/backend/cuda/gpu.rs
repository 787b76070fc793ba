//! The device handle the CUDA backend works through: its context, its one stream and cuBLAS on
//! that stream, with every driver and cuBLAS failure turned into [`EngineError::CudaDriver`]
//! naming the call.
//!
//! Everything the backend does on the device goes on the one stream, in order, so no buffer needs
//! an event between its writer and its readers; cudarc's per-buffer event tracking is switched
//! off for that reason. Kernels and cuBLAS take raw device addresses ([`DevPtr`]): a forward pass
//! reads and writes sub-ranges of the same buffers (the q, k and v columns of one fused row),
//! which borrowed views cannot express, and the offsets are computed and bounds-checked on the
//! host ([`DevPtr::at`]).

use std::marker::PhantomData;
use std::sync::Arc;

use cudarc::cublas::CudaBlas;
use cudarc::driver::{
    CudaContext, CudaSlice, CudaStream, DevicePtr, DeviceRepr, ValidAsZeroBits, sys,
};

use crate::error::{EngineError, Result};

/// The device address of element `0` of a buffer of `len` elements of `T`.
#[derive(Debug)]
pub struct DevPtr<T> {
    address: u64,
    len: usize,
    element: PhantomData<T>,
}

impl<T> Clone for DevPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for DevPtr<T> {}

impl<T> DevPtr<T> {
    /// The address of a buffer of `len` elements at `address`.
    pub fn new(address: u64, len: usize) -> Self {
        Self {
            address,
            len,
            element: PhantomData,
        }
    }

    /// The part of the buffer from element `offset` on.
    ///
    /// Panics when `offset` is past the buffer: every offset follows from shapes the backend
    /// checked, so one past the end is a bug in the backend, not an input error.
    pub fn at(self, offset: usize) -> Self {
        assert!(
            offset <= self.len,
            "device offset {offset} past a buffer of {} elements",
            self.len
        );
        Self::new(
            self.address + (offset * size_of::<T>()) as u64,
            self.len - offset,
        )
    }

    /// The raw address, as a kernel argument or a cuBLAS pointer.
    pub fn address(&self) -> u64 {
        self.address
    }

    /// Elements from here to the end of the buffer.
    pub fn len(&self) -> usize {
        self.len
    }
}

/// The context, stream and cuBLAS handle of one device.
pub struct Gpu {
    pub ordinal: usize,
    pub context: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub blas: CudaBlas,
}

impl Gpu {
    /// Opens a stream and cuBLAS on `context`'s device.
    pub fn new(ordinal: usize, context: Arc<CudaContext>) -> Result<Self> {
        // SAFETY: every operation of the backend runs on the one stream created here, in
        // order, so cudarc's events between streams are never needed.
        unsafe { context.disable_event_tracking() };
        let stream = context
            .new_stream()
            .map_err(driver_error(ordinal, "cuStreamCreate"))?;
        let blas = CudaBlas::new(stream.clone()).map_err(|error| EngineError::CudaDriver {
            ordinal,
            call: "cublasCreate",
            message: error.to_string(),
        })?;
        Ok(Self {
            ordinal,
            context,
            stream,
            blas,
        })
    }

    /// Binds the context to the calling thread (the engine loop may not be the thread that
    /// built the backend).
    pub fn bind(&self) -> Result<()> {
        self.context
            .bind_to_thread()
            .map_err(driver_error(self.ordinal, "cuCtxSetCurrent"))
    }

    /// A zeroed buffer of `len` elements; `what` names it in an out-of-memory error.
    pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        len: usize,
        what: &str,
    ) -> Result<CudaSlice<T>> {
        self.stream
            .alloc_zeros(len.max(1))
            .map_err(|error| EngineError::CudaDriver {
                ordinal: self.ordinal,
                call: "cuMemAlloc",
                message: format!("{what} ({} bytes): {error}", len * size_of::<T>()),
            })
    }

    /// A new buffer holding `data`; `what` names it in an error.
    pub fn upload<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        data: &[T],
        what: &str,
    ) -> Result<CudaSlice<T>> {
        let mut buffer = self.zeros(data.len(), what)?;
        self.write(data, &mut buffer)?;
        Ok(buffer)
    }

    /// Copies `data` to the start of `buffer`, which must hold it.
    pub fn write<T: DeviceRepr>(&self, data: &[T], buffer: &mut CudaSlice<T>) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let mut head = buffer.slice_mut(..data.len());
        self.stream
            .memcpy_htod(data, &mut head)
            .map_err(driver_error(self.ordinal, "cuMemcpyHtoDAsync"))
    }

    /// Copies the `out.len()` elements at `from` to the host, waiting for the stream.
    pub fn read<T: DeviceRepr>(&self, from: DevPtr<T>, out: &mut [T]) -> Result<()> {
        assert!(out.len() <= from.len(), "device read past the buffer");
        if out.is_empty() {
            return Ok(());
        }
        self.sync()?;
        // SAFETY: `from` addresses at least `out.len()` live elements of `T` (checked above;
        // its buffer outlives the pass), and the stream is idle, so nothing writes them.
        let result = unsafe { cudarc::driver::result::memcpy_dtoh_sync(out, from.address()) };
        result.map_err(driver_error(self.ordinal, "cuMemcpyDtoH"))
    }

    /// Copies `len` elements from `from` to `to` on the stream.
    pub fn copy<T>(&self, from: DevPtr<T>, to: DevPtr<T>, len: usize) -> Result<()> {
        assert!(
            len <= from.len() && len <= to.len(),
            "device copy past a buffer"
        );
        if len == 0 {
            return Ok(());
        }
        // SAFETY: both ranges lie in live buffers (checked above), ordered on the one stream.
        let result = unsafe {
            cudarc::driver::result::memcpy_dtod_async(
                to.address(),
                from.address(),
                len * size_of::<T>(),
                self.stream.cu_stream(),
            )
        };
        result.map_err(driver_error(self.ordinal, "cuMemcpyDtoDAsync"))
    }

    /// Copies `rows` rows of `width` elements from rows `from_stride` apart at `from` to rows
    /// `to_stride` apart at `to`, on the stream (one strided copy, not one per row).
    pub fn copy_rows<T>(
        &self,
        (from, from_stride): (DevPtr<T>, usize),
        (to, to_stride): (DevPtr<T>, usize),
        width: usize,
        rows: usize,
    ) -> Result<()> {
        if rows == 0 || width == 0 {
            return Ok(());
        }
        let span = |stride: usize| (rows - 1) * stride + width;
        assert!(
            span(from_stride) <= from.len() && span(to_stride) <= to.len(),
            "strided device copy past a buffer"
        );
        let copy = rows_copy::<T>(
            from.address(),
            from_stride,
            to.address(),
            to_stride,
            width,
            rows,
        );
        // SAFETY: both strided ranges lie in live buffers (checked above), ordered on the one
        // stream; the descriptor outlives the call.
        let result = unsafe { sys::cuMemcpy2DAsync_v2(&copy, self.stream.cu_stream()).result() };
        result.map_err(driver_error(self.ordinal, "cuMemcpy2DAsync"))
    }

    /// Waits until the stream has done everything queued on it.
    pub fn sync(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(driver_error(self.ordinal, "cuStreamSynchronize"))
    }

    /// The device address of `buffer`.
    pub fn ptr<T>(&self, buffer: &CudaSlice<T>) -> DevPtr<T> {
        let (address, _unused_event) = buffer.device_ptr(&self.stream);
        DevPtr::new(address, buffer.len())
    }
}

/// The driver's descriptor of a device-to-device copy of `rows` rows of `width` elements of `T`,
/// rows `from_stride` and `to_stride` elements apart.
fn rows_copy<T>(
    from: u64,
    from_stride: usize,
    to: u64,
    to_stride: usize,
    width: usize,
    rows: usize,
) -> sys::CUDA_MEMCPY2D {
    let bytes = size_of::<T>();
    sys::CUDA_MEMCPY2D {
        srcXInBytes: 0,
        srcY: 0,
        srcMemoryType: sys::CUmemorytype::CU_MEMORYTYPE_DEVICE,
        srcHost: std::ptr::null(),
        srcDevice: from,
        srcArray: std::ptr::null_mut(),
        srcPitch: from_stride * bytes,
        dstXInBytes: 0,
        dstY: 0,
        dstMemoryType: sys::CUmemorytype::CU_MEMORYTYPE_DEVICE,
        dstHost: std::ptr::null_mut(),
        dstDevice: to,
        dstArray: std::ptr::null_mut(),
        dstPitch: to_stride * bytes,
        WidthInBytes: width * bytes,
        Height: rows,
    }
}

/// Maps a driver error of `call` on device `ordinal` to [`EngineError::CudaDriver`].
pub fn driver_error<E: std::fmt::Display>(
    ordinal: usize,
    call: &'static str,
) -> impl Fn(E) -> EngineError {
    move |error| EngineError::CudaDriver {
        ordinal,
        call,
        message: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offset_pointer_moves_by_whole_elements_and_shrinks_the_length() {
        let base = DevPtr::<f32>::new(0x1000, 10);
        let moved = base.at(3);
        assert_eq!((moved.address(), moved.len()), (0x1000 + 12, 7));
        assert_eq!(base.at(10).len(), 0);
        let halves = DevPtr::<u16>::new(0x2000, 4).at(2);
        assert_eq!(halves.address(), 0x2004);
    }

    #[test]
    fn a_strided_copy_descriptor_counts_pitches_and_width_in_bytes() {
        let copy = rows_copy::<f32>(0x100, 12, 0x900, 8, 8, 5);
        assert_eq!((copy.srcDevice, copy.dstDevice), (0x100, 0x900));
        assert_eq!(
            (copy.srcPitch, copy.dstPitch, copy.WidthInBytes),
            (48, 32, 32)
        );
        assert_eq!(copy.Height, 5);
        assert_eq!(copy.srcMemoryType, sys::CUmemorytype::CU_MEMORYTYPE_DEVICE);
        assert_eq!(copy.dstMemoryType, sys::CUmemorytype::CU_MEMORYTYPE_DEVICE);
    }

    #[test]
    #[should_panic(expected = "past a buffer of 4 elements")]
    fn an_offset_past_the_buffer_is_a_bug() {
        DevPtr::<f32>::new(0, 4).at(5);
    }
}
