//! Per-request sampling parameters and their validation.
//!
//! Defaults and ranges follow vLLM's `SamplingParams` (and the OpenAI API they mirror), so a
//! request that vLLM accepts means the same thing here. A request's raw values are checked once by
//! [`SamplingParams::validate`]; everything after that may assume they are in range.

use crate::error::{EngineError, Result};

/// The most alternatives a caller may ask for per token (OpenAI's and vLLM's default cap).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// Temperatures below this decode greedily (vLLM's `_SAMPLING_EPS`): dividing by them would
/// overflow the scaled logits.
pub const GREEDY_TEMPERATURE: f32 = 1e-5;

/// How one sequence turns logits into tokens.
///
/// The default is vLLM's: plain sampling from the model's distribution (temperature 1, every
/// filter off, every penalty neutral), unseeded. Temperature 0 selects greedy decoding.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Divides the logits before sampling; `0` (anything below [`GREEDY_TEMPERATURE`]) means
    /// greedy (argmax). Range: finite, `>= 0`.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (ties at the boundary are kept); `0` disables.
    pub top_k: u32,
    /// Keep the smallest set of most likely tokens whose mass reaches `top_p`. Range `(0, 1]`;
    /// `1` disables.
    pub top_p: f32,
    /// Drop tokens whose probability is below `min_p` times the most likely one's. Range `[0, 1]`;
    /// `0` disables.
    pub min_p: f32,
    /// HF/CTRL repetition penalty on every token seen in the prompt or the output: positive logits
    /// are divided by it, negative ones multiplied. Range `> 0`; `1` is neutral.
    pub repetition_penalty: f32,
    /// Subtracted once from the logit of every token already generated. Range `[-2, 2]`.
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per time it was generated. Range `[-2, 2]`.
    pub frequency_penalty: f32,
    /// Seeds this sequence's own random stream; `None` draws a seed from the OS.
    pub seed: Option<u64>,
    /// Return this many most likely alternatives with each token (`0`: the chosen token's log
    /// probability only); `None` computes no log probability at all. At most
    /// [`MAX_TOP_LOGPROBS`].
    pub logprobs: Option<usize>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
            logprobs: None,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding (temperature 0) with every other field at its default.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// True when the next token is the argmax (temperature below [`GREEDY_TEMPERATURE`]); such
    /// a sequence draws no random numbers.
    pub fn is_greedy(&self) -> bool {
        self.temperature < GREEDY_TEMPERATURE
    }

    /// True when any penalty differs from its neutral value.
    pub fn has_penalties(&self) -> bool {
        self.repetition_penalty != 1.0
            || self.presence_penalty != 0.0
            || self.frequency_penalty != 0.0
    }

    /// Checks every field against its allowed range.
    ///
    /// Fails with [`EngineError::InvalidParameter`] naming the first bad field, its allowed range
    /// and the value given.
    pub fn validate(&self) -> Result<()> {
        let t = self.temperature;
        check(
            t.is_finite() && t >= 0.0,
            "temperature",
            "a finite number >= 0",
            t,
        )?;
        let p = self.top_p;
        check(p > 0.0 && p <= 1.0, "top_p", "in (0, 1]", p)?;
        let m = self.min_p;
        check((0.0..=1.0).contains(&m), "min_p", "in [0, 1]", m)?;
        let r = self.repetition_penalty;
        check(
            r.is_finite() && r > 0.0,
            "repetition_penalty",
            "a finite number > 0",
            r,
        )?;
        let pp = self.presence_penalty;
        check(
            (-2.0..=2.0).contains(&pp),
            "presence_penalty",
            "in [-2, 2]",
            pp,
        )?;
        let fp = self.frequency_penalty;
        check(
            (-2.0..=2.0).contains(&fp),
            "frequency_penalty",
            "in [-2, 2]",
            fp,
        )?;
        if let Some(n) = self.logprobs
            && n > MAX_TOP_LOGPROBS
        {
            return Err(EngineError::InvalidParameter {
                field: "logprobs",
                message: format!("must be at most {MAX_TOP_LOGPROBS}, got {n}"),
            });
        }
        Ok(())
    }
}

/// `Ok` when `ok`, else an error saying `field` must be `range` and got `value`. NaN fails every
/// range because every comparison with it is false.
fn check(ok: bool, field: &'static str, range: &str, value: f32) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(EngineError::InvalidParameter {
            field,
            message: format!("must be {range}, got {value}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected_field(params: SamplingParams) -> (&'static str, String) {
        match params.validate() {
            Err(EngineError::InvalidParameter { field, message }) => (field, message),
            other => panic!("expected InvalidParameter, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid_and_match_vllm() {
        let d = SamplingParams::default();
        d.validate().unwrap();
        assert_eq!(d.temperature, 1.0);
        assert_eq!((d.top_k, d.top_p, d.min_p), (0, 1.0, 0.0));
        assert!(!d.has_penalties());
        assert!(!d.is_greedy());
        assert!(SamplingParams::greedy().is_greedy());
        let tiny = SamplingParams {
            temperature: 1e-6,
            ..d
        };
        assert!(tiny.is_greedy());
    }

    #[test]
    fn each_out_of_range_field_is_named_with_range_and_value() {
        let base = SamplingParams::default;
        let cases: Vec<(SamplingParams, &str, &str)> = vec![
            (
                SamplingParams {
                    temperature: -0.5,
                    ..base()
                },
                "temperature",
                "-0.5",
            ),
            (
                SamplingParams {
                    temperature: f32::NAN,
                    ..base()
                },
                "temperature",
                "NaN",
            ),
            (
                SamplingParams {
                    temperature: f32::INFINITY,
                    ..base()
                },
                "temperature",
                "inf",
            ),
            (
                SamplingParams {
                    top_p: 0.0,
                    ..base()
                },
                "top_p",
                "(0, 1]",
            ),
            (
                SamplingParams {
                    top_p: 1.5,
                    ..base()
                },
                "top_p",
                "1.5",
            ),
            (
                SamplingParams {
                    min_p: -0.1,
                    ..base()
                },
                "min_p",
                "[0, 1]",
            ),
            (
                SamplingParams {
                    min_p: 1.1,
                    ..base()
                },
                "min_p",
                "1.1",
            ),
            (
                SamplingParams {
                    repetition_penalty: 0.0,
                    ..base()
                },
                "repetition_penalty",
                "> 0",
            ),
            (
                SamplingParams {
                    presence_penalty: 2.5,
                    ..base()
                },
                "presence_penalty",
                "[-2, 2]",
            ),
            (
                SamplingParams {
                    frequency_penalty: -3.0,
                    ..base()
                },
                "frequency_penalty",
                "-3",
            ),
            (
                SamplingParams {
                    logprobs: Some(21),
                    ..base()
                },
                "logprobs",
                "at most 20, got 21",
            ),
        ];
        for (params, field, fragment) in cases {
            let (got_field, message) = rejected_field(params);
            assert_eq!(got_field, field);
            assert!(
                message.contains(fragment),
                "{field}: `{message}` lacks `{fragment}`"
            );
        }
    }

    #[test]
    fn boundary_values_are_accepted() {
        let ok = [
            SamplingParams {
                top_p: 1.0,
                min_p: 1.0,
                ..SamplingParams::greedy()
            },
            SamplingParams {
                presence_penalty: -2.0,
                frequency_penalty: 2.0,
                ..Default::default()
            },
            SamplingParams {
                logprobs: Some(MAX_TOP_LOGPROBS),
                top_k: u32::MAX,
                ..Default::default()
            },
        ];
        for params in ok {
            params.validate().unwrap();
        }
    }
}
