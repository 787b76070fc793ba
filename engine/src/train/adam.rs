//! Adam (Kingma & Ba), the paper's optimiser, written out so its moments can be checkpointed and
//! resumed exactly (and so the trainer needs nothing beyond candle-core). Optional clipping of the
//! global gradient norm keeps early steps, when the KL loss is largest, from overshooting.

use std::collections::HashMap;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};

use crate::error::{EngineError, Result};

/// Adam's hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamOptions {
    pub learning_rate: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub epsilon: f64,
    /// Scale gradients down so their global L2 norm is at most this; `None` disables.
    pub max_grad_norm: Option<f64>,
}

impl Default for AdamOptions {
    /// The paper's learning rate for Llama models (1e-3) with PyTorch's Adam defaults.
    fn default() -> Self {
        Self {
            learning_rate: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            max_grad_norm: Some(1.0),
        }
    }
}

/// Adam's state for a fixed, named list of variables.
pub struct Adam {
    options: AdamOptions,
    step: u64,
    /// First and second moments, by variable name.
    moments: HashMap<String, (Tensor, Tensor)>,
}

impl Adam {
    /// Fresh state (zero moments, step 0) for `vars`.
    pub fn new(vars: &[(String, &Var)], options: AdamOptions) -> Result<Self> {
        let moments = vars
            .iter()
            .map(|(name, var)| {
                let zeros = var.as_tensor().zeros_like()?;
                Ok((name.clone(), (zeros.clone(), zeros)))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            options,
            step: 0,
            moments,
        })
    }

    /// Updates taken so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Applies one update from `grads`; a variable without a gradient (unused by the loss, e.g.
    /// the last layer's MLP adapters) is left alone. Returns the global gradient norm before
    /// clipping.
    pub fn step(&mut self, vars: &[(String, &Var)], grads: &GradStore) -> Result<f64> {
        let mut squared = 0.0;
        for (_, var) in vars {
            if let Some(g) = grads.get(var.as_tensor()) {
                squared += g
                    .sqr()?
                    .sum_all()?
                    .to_dtype(DType::F64)?
                    .to_scalar::<f64>()?;
            }
        }
        let norm = squared.sqrt();
        let clip = match self.options.max_grad_norm {
            Some(max) if norm > max => max / norm,
            _ => 1.0,
        };
        self.step += 1;
        let o = self.options;
        let t = self.step as i32;
        let step_size = o.learning_rate / (1.0 - o.beta1.powi(t));
        let v_correction = 1.0 - o.beta2.powi(t);
        for (name, var) in vars {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let g = (g * clip)?;
            let (m, v) = self
                .moments
                .get_mut(name)
                .expect("moments exist for every var");
            *m = ((&*m * o.beta1)? + (&g * (1.0 - o.beta1))?)?;
            *v = ((&*v * o.beta2)? + (g.sqr()? * (1.0 - o.beta2))?)?;
            let denom = ((&*v / v_correction)?.sqrt()? + o.epsilon)?;
            let update = ((&*m / &denom)? * step_size)?;
            var.set(&(var.as_tensor() - update)?)?;
        }
        Ok(norm)
    }

    /// Writes the step count and moments to `path` (safetensors).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for (name, (m, v)) in &self.moments {
            tensors.insert(format!("m.{name}"), m.clone());
            tensors.insert(format!("v.{name}"), v.clone());
        }
        tensors.insert(
            "step".into(),
            Tensor::new(&[self.step as f64], &Device::Cpu)?,
        );
        candle_core::safetensors::save(&tensors, path).map_err(|e| tensor_file_error(path, e))
    }

    /// Reads state written by [`Self::save`] for the same variables.
    ///
    /// Fails naming the file when it cannot be read or lacks a variable's moments.
    pub fn load(path: &Path, vars: &[(String, &Var)], options: AdamOptions) -> Result<Self> {
        let mut tensors = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| tensor_file_error(path, e))?;
        let mut take = |name: String, like: &Var| -> Result<Tensor> {
            let t = tensors
                .remove(&name)
                .ok_or_else(|| EngineError::MissingTensor {
                    path: path.to_path_buf(),
                    tensor: name.clone(),
                })?;
            if t.dims() != like.dims() {
                return Err(EngineError::TensorShape {
                    path: path.to_path_buf(),
                    tensor: name,
                    expected: like.dims().to_vec(),
                    actual: t.dims().to_vec(),
                });
            }
            Ok(t.to_dtype(like.dtype())?)
        };
        let mut moments = HashMap::new();
        for (name, var) in vars {
            let m = take(format!("m.{name}"), var)?;
            let v = take(format!("v.{name}"), var)?;
            moments.insert(name.clone(), (m, v));
        }
        let step = tensors
            .remove("step")
            .ok_or_else(|| EngineError::MissingTensor {
                path: path.to_path_buf(),
                tensor: "step".into(),
            })?
            .to_vec1::<f64>()?
            .first()
            .copied()
            .unwrap_or(0.0) as u64;
        Ok(Self {
            options,
            step,
            moments,
        })
    }
}

fn tensor_file_error(path: &Path, e: candle_core::Error) -> EngineError {
    EngineError::Safetensors {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}
