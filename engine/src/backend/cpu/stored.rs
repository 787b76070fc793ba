//! The element types the CPU backend stores f32 numbers in — weight panels (`--dtype`) and the KV
//! pool (`--kv-cache-dtype`: f32, bf16 or FP8 E4M3) — and the two conversions every kernel relies
//! on: rounding an f32 to the stored type once, when it is written, and widening a stored value
//! back to f32 exactly, before any arithmetic. One home for both, so a bf16 weight and a bf16 key
//! are rounded alike.

use half::bf16;

/// A storage type for f32 numbers: `f32` itself, `bf16` (the upper 16 bits of an f32) or
/// [`E4m3`] (8 bits).
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

/// An OCP FP8 E4M3 number ("e4m3fn", torch's `float8_e4m3fn`): sign, 4 exponent bits of bias 7,
/// 3 mantissa bits; no infinities, `0x7F`/`0xFF` are NaN, the largest finite magnitude is 448
/// (`0x7E`) and the smallest subnormal 2^-9. The KV pool stores `x / scale` in it, with a
/// per-(layer, KV head) scale (see [`super::kv_cache`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(transparent)]
pub struct E4m3(pub u8);

impl E4m3 {
    /// The largest finite magnitude; larger ones saturate to it when rounded.
    pub const MAX: f32 = 448.0;
    /// The smallest normal magnitude, 2^-6.
    const MIN_NORMAL: f32 = 1.0 / 64.0;
    /// The spacing of the subnormals, 2^-9.
    const SUBNORMAL_STEP: f32 = 1.0 / 512.0;

    /// The f32 bits of the code's value, from its fields: a normal code is `(1 + m/8)·2^(e−7)`,
    /// i.e. f32 exponent `e + 120` over the mantissa `m`; a subnormal one is `m·2^-9`,
    /// normalised by the position `p` of `m`'s top bit.
    const fn widened_bits(code: u8) -> u32 {
        let sign = ((code & 0x80) as u32) << 24;
        let magnitude = (code & 0x7F) as u32;
        let (e, m) = (magnitude >> 3, magnitude & 7);
        if magnitude == 0x7F {
            f32::NAN.to_bits()
        } else if magnitude == 0 {
            sign
        } else if e == 0 {
            let p = 31 - m.leading_zeros();
            sign | ((p + 118) << 23) | ((m & !(1 << p)) << (23 - p))
        } else {
            sign | ((e + 120) << 23) | (m << 20)
        }
    }
}

/// Every E4M3 code's value as f32: what [`Stored::widen`] looks up.
static E4M3_VALUES: [f32; 256] = {
    let mut table = [0.0f32; 256];
    let mut code = 0;
    while code < 256 {
        table[code] = f32::from_bits(E4m3::widened_bits(code as u8));
        code += 1;
    }
    table
};

impl Stored for E4m3 {
    /// Rounds to nearest even, saturating finite and infinite magnitudes above 448 to ±448 (as
    /// vLLM clamps before converting); NaN stays NaN (`0x7F`), as torch converts it, so a NaN
    /// key poisons attention as it would in an f32 pool instead of hiding as ±448.
    #[inline]
    fn round(v: f32) -> E4m3 {
        let sign = ((v.to_bits() >> 24) & 0x80) as u8;
        if v.is_nan() {
            return E4m3(0x7F);
        }
        let a = v.abs();
        // The spacing of E4M3 values around `a`: 2^-9 below the smallest normal 2^-6, else
        // 2^(exponent − 3). Both divisions by it are exact (powers of two, no underflow).
        let exponent = (a.to_bits() >> 23) as i32 - 127;
        let quantum = if a < Self::MIN_NORMAL {
            Self::SUBNORMAL_STEP
        } else {
            f32::from_bits(((exponent - 3 + 127) as u32) << 23)
        };
        let rounded = ((a / quantum).round_ties_even() * quantum).min(Self::MAX);
        let magnitude = if rounded < Self::MIN_NORMAL {
            (rounded / Self::SUBNORMAL_STEP) as u8
        } else {
            let bits = rounded.to_bits();
            ((((bits >> 23) - 120) << 3) | ((bits >> 20) & 7)) as u8
        };
        E4m3(sign | magnitude)
    }

    /// A table lookup; the SIMD kernels compute the same bits from the code's fields.
    #[inline(always)]
    fn widen(self) -> f32 {
        E4M3_VALUES[self.0 as usize]
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

    /// An E4M3 code's value from the OCP definition, in f64 arithmetic: independent of the bit
    /// assembly the table uses.
    fn e4m3_by_formula(code: u8) -> f64 {
        let sign = if code & 0x80 != 0 { -1.0 } else { 1.0 };
        let (e, m) = (i32::from((code >> 3) & 0xF), f64::from(code & 7));
        match e {
            0 => sign * m / 8.0 * 2f64.powi(-6),
            _ => sign * (1.0 + m / 8.0) * 2f64.powi(e - 7),
        }
    }

    #[test]
    fn every_e4m3_code_widens_to_its_value_and_every_finite_one_round_trips() {
        for code in 0..=255u8 {
            let got = E4m3(code).widen();
            if code & 0x7F == 0x7F {
                assert!(got.is_nan(), "{code:#04x} is NaN");
                continue;
            }
            let want = e4m3_by_formula(code);
            assert_eq!(f64::from(got), want, "{code:#04x}");
            assert_eq!(
                got.is_sign_negative(),
                code & 0x80 != 0,
                "{code:#04x}: sign"
            );
            assert_eq!(E4m3::round(got), E4m3(code), "{code:#04x} round-trips");
        }
        assert_eq!(E4m3(0x7E).widen(), E4m3::MAX);
        assert_eq!(E4m3(0x01).widen(), 2f32.powi(-9), "the smallest subnormal");
        assert_eq!(E4m3(0x08).widen(), 2f32.powi(-6), "the smallest normal");
    }

    /// Between two neighbouring finite codes, the midpoint goes to the code with the even
    /// mantissa and anything nearer one of them to that one; negative values mirror positive ones.
    #[test]
    fn e4m3_rounds_to_nearest_with_ties_to_even() {
        for code in 0..0x7Eu8 {
            let (low, high) = (E4m3(code).widen(), E4m3(code + 1).widen());
            let mid = (low + high) / 2.0;
            assert_eq!(
                f64::from(mid),
                (f64::from(low) + f64::from(high)) / 2.0,
                "exact"
            );
            let even = if code % 2 == 0 { code } else { code + 1 };
            let nudge = (high - low) / 8.0;
            for (v, want) in [(mid, even), (mid - nudge, code), (mid + nudge, code + 1)] {
                assert_eq!(
                    E4m3::round(v),
                    E4m3(want),
                    "{v} between {code:#04x} and next"
                );
                assert_eq!(E4m3::round(-v), E4m3(want | 0x80), "-{v}");
            }
        }
    }

    #[test]
    fn e4m3_subnormals_saturation_and_nan() {
        let step = 2f32.powi(-9);
        assert_eq!(
            E4m3::round(step / 2.0),
            E4m3(0x00),
            "a tie with 0 goes to 0"
        );
        assert_eq!(E4m3::round(step * 0.51), E4m3(0x01));
        assert_eq!(
            E4m3::round(step * 1.5),
            E4m3(0x02),
            "a tie goes to the even code"
        );
        assert_eq!(E4m3::round(step * 7.5), E4m3(0x08), "up into the normals");
        assert_eq!(
            E4m3::round(f32::from_bits(1)),
            E4m3(0x00),
            "an f32 subnormal"
        );
        assert_eq!(
            E4m3::round(-step / 4.0),
            E4m3(0x80),
            "negative zero keeps its sign"
        );
        for (v, code) in [
            (448.0, 0x7E),
            (464.0, 0x7E),
            (465.0, 0x7E),
            (1e30, 0x7E),
            (f32::MAX, 0x7E),
            (f32::INFINITY, 0x7E),
            (-500.0, 0xFE),
            (f32::NEG_INFINITY, 0xFE),
        ] {
            assert_eq!(E4m3::round(v), E4m3(code), "{v} saturates");
        }
        assert_eq!(E4m3::round(f32::NAN), E4m3(0x7F));
        assert!(E4m3::round(-f32::NAN).widen().is_nan());
    }
}
