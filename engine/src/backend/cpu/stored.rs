//! The element types the CPU backend stores f32 numbers in — weight panels (`--dtype`) and the KV
//! pool (`--kv-cache-dtype`) — and the two conversions every kernel relies on: rounding an f32 to
//! the stored type once, when it is written, and widening a stored value back to f32 exactly,
//! before any arithmetic. One home for both, so a bf16 weight and a bf16 key are rounded alike.

use half::bf16;

/// A storage type for f32 numbers: `f32` itself, or `bf16` (the upper 16 bits of an f32).
pub trait Stored: Copy + Send + Sync + 'static {
    /// `v` in this type, rounded to nearest even (exact for f32).
    fn round(v: f32) -> Self;
    /// The stored value as f32, exactly.
    fn widen(self) -> f32;
}

impl Stored for f32 {
    #[inline(always)]
    fn round(v: f32) -> f32 {
        v
    }
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
}

impl Stored for bf16 {
    #[inline(always)]
    fn round(v: f32) -> bf16 {
        bf16::from_f32(v)
    }
    /// The bf16 bits as the upper half of an f32 — what the SIMD kernels do with a 16-bit shift.
    #[inline(always)]
    fn widen(self) -> f32 {
        f32::from_bits(u32::from(self.to_bits()) << 16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even_and_widens_back_exactly() {
        // 1 + 2^-8 is halfway between two bf16 values: ties go to the even one, 1.0.
        assert_eq!(bf16::round(1.0 + 2f32.powi(-8)).widen(), 1.0);
        // 1 + 3·2^-8 is halfway too: the even neighbour is 1 + 2^-6.
        assert_eq!(
            bf16::round(1.0 + 3.0 * 2f32.powi(-8)).widen(),
            1.0 + 2f32.powi(-6)
        );
        for v in [0.0f32, -0.0, 1.5, -0.40625, f32::INFINITY] {
            assert_eq!(
                bf16::round(v).widen().to_bits(),
                v.to_bits(),
                "{v} is a bf16 value"
            );
        }
    }
}
