//! The trainable side of a lookahead module: its embeddings and LoRA pairs as candle [`Var`]s,
//! converted from and back to the engine's [`LookaheadModule`] so training starts from (and
//! writes) the very file format inference loads.

use candle_core::{DType, Device, Tensor, Var};

use super::Precision;
use crate::error::Result;
use crate::lookahead::{LayerAdapters, LookaheadModule, LoraPair, Projection};

/// One trainable LoRA pair: `A [rank, in]`, `B [out, rank]` (PEFT layout, as in the file).
pub(crate) struct LoraVars {
    pub a: Var,
    pub b: Var,
}

/// The seven trainable pairs of one decoder layer, in [`Projection::ALL`] order.
pub(crate) struct LayerLora {
    pairs: Vec<LoraVars>,
}

impl LayerLora {
    pub(crate) fn get(&self, projection: Projection) -> &LoraVars {
        let index = Projection::ALL
            .iter()
            .position(|&p| p == projection)
            .expect("ALL lists every projection");
        &self.pairs[index]
    }
}

/// A lookahead module under training.
pub struct TrainableModule {
    /// The module's fixed description (sizes, base model); its tensors are stale while training
    /// runs and are refreshed by [`Self::to_module`].
    template: LookaheadModule,
    pub(crate) embeddings: Var,
    pub(crate) layers: Vec<LayerLora>,
    /// Whether the LoRA pairs train; without them only the embeddings do (the ablation of
    /// an embeddings-only module, whose `B` stays zero so the adapters add nothing).
    train_lora: bool,
}

fn var(data: &[f32], shape: (usize, usize), dtype: DType) -> Result<Var> {
    let t = Tensor::from_vec(data.to_vec(), shape, &Device::Cpu)?.to_dtype(dtype)?;
    Ok(Var::from_tensor(&t)?)
}

fn values(v: &Var) -> Result<Vec<f32>> {
    Ok(v.as_tensor()
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()?)
}

impl TrainableModule {
    /// Starts from `module`'s values in `precision`. With `train_lora` false, every `B` is zeroed and
    /// only the embeddings are handed to the optimiser.
    pub fn new(module: &LookaheadModule, precision: Precision, train_lora: bool) -> Result<Self> {
        let dtype = precision.dtype();
        let embeddings = var(
            &module.embeddings,
            (module.num_tokens, module.hidden_size),
            dtype,
        )?;
        let rank = module.rank;
        let pair = |p: &LoraPair| -> Result<LoraVars> {
            let b = if train_lora {
                p.b.clone()
            } else {
                vec![0.0; p.b.len()]
            };
            Ok(LoraVars {
                a: var(&p.a, (rank, p.in_features), dtype)?,
                b: var(&b, (p.out_features, rank), dtype)?,
            })
        };
        let layers = module
            .layers
            .iter()
            .map(|l| {
                let pairs = Projection::ALL
                    .iter()
                    .map(|&p| pair(l.get(p)))
                    .collect::<Result<_>>()?;
                Ok(LayerLora { pairs })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            template: module.clone(),
            embeddings,
            layers,
            train_lora,
        })
    }

    /// `α / r`.
    pub fn scale(&self) -> f64 {
        self.template.scale() as f64
    }

    /// Lookahead rows.
    pub fn num_tokens(&self) -> usize {
        self.template.num_tokens
    }

    /// The parameters the optimiser updates, each under its tensor name in the module file.
    pub fn trainable(&self) -> Vec<(String, &Var)> {
        let mut vars = vec![("lookahead.embeddings".to_string(), &self.embeddings)];
        if self.train_lora {
            for (l, layer) in self.layers.iter().enumerate() {
                for p in Projection::ALL {
                    let pair = layer.get(p);
                    vars.push((format!("layers.{l}.{}.lora_A", p.name()), &pair.a));
                    vars.push((format!("layers.{l}.{}.lora_B", p.name()), &pair.b));
                }
            }
        }
        vars
    }

    /// The current values as a module ready to save or to run.
    pub fn to_module(&self) -> Result<LookaheadModule> {
        let mut module = self.template.clone();
        module.embeddings = values(&self.embeddings)?;
        for (target, layer) in module.layers.iter_mut().zip(&self.layers) {
            *target = LayerAdapters::try_build(|p| -> Result<LoraPair> {
                let pair = layer.get(p);
                Ok(LoraPair {
                    a: values(&pair.a)?,
                    b: values(&pair.b)?,
                    ..target.get(p).clone()
                })
            })?;
        }
        Ok(module)
    }
}
