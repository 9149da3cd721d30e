//! Rotary position embeddings, computed as HF does (frequencies in f32, cast to the model dtype).

use crate::config::{ModelConfig, RopeScaling};
use tch::{Device, Kind, Tensor};

pub struct Rope {
    inv_freq: Tensor,
}

impl Rope {
    pub fn new(cfg: &ModelConfig, device: Device) -> Self {
        let dim = cfg.head_dim;
        let mut inv: Vec<f64> = (0..dim / 2)
            .map(|i| 1.0 / cfg.rope_theta.powf((2 * i) as f64 / dim as f64))
            .collect();
        match cfg.rope_scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => inv.iter_mut().for_each(|f| *f /= factor),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old_ctx,
            } => {
                let low_wavelen = old_ctx / low_freq_factor;
                let high_wavelen = old_ctx / high_freq_factor;
                for f in inv.iter_mut() {
                    let wavelen = 2.0 * std::f64::consts::PI / *f;
                    if wavelen > low_wavelen {
                        *f /= factor;
                    } else if wavelen >= high_wavelen {
                        let smooth = (old_ctx / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        *f = (1.0 - smooth) * *f / factor + smooth * *f;
                    }
                }
            }
        }
        let inv32: Vec<f32> = inv.iter().map(|&f| f as f32).collect();
        Self {
            inv_freq: Tensor::from_slice(&inv32).to_device(device),
        }
    }

    /// cos and sin for integer `positions` [B, S], shaped [B, 1, S, D] in `kind`.
    pub fn cos_sin(&self, positions: &Tensor, kind: Kind) -> (Tensor, Tensor) {
        let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * self.inv_freq.view([1, 1, -1]);
        let emb = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(1);
        (emb.cos().to_kind(kind), emb.sin().to_kind(kind))
    }

    /// x * cos + rotate_half(x) * sin, for x [B, H, S, D].
    pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
        let half = x.size()[3] / 2;
        let x1 = x.narrow(3, 0, half);
        let x2 = x.narrow(3, half, half);
        let rotated = Tensor::cat(&[&(-x2), &x1], 3);
        x * cos + rotated * sin
    }
}
