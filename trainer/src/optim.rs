//! AdamW (Loshchilov & Hutter), warmup + cosine schedule and global-norm clipping, written
//! out so that the whole optimizer state can be checkpointed and resumed exactly.

use anyhow::{bail, Result};
use std::collections::BTreeMap;
use tch::{Kind, Tensor};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    pub lr: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub warmup_steps: usize,
    /// Floor of the cosine schedule, as a fraction of `lr`.
    pub min_lr_ratio: f64,
    /// Clip the global gradient norm to this (0: off).
    pub max_grad_norm: f64,
    /// A step whose loss or gradients hold a NaN or an infinity: `stop` the run naming the
    /// step and the tensor, or `skip` the step (no optimizer update; counted as
    /// `skipped_nonfinite` in the metrics). Either way the weights are never touched.
    pub nonfinite: NonFinite,
}

/// What a step with a non-finite loss or gradient does (`[optim] nonfinite`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NonFinite {
    /// Stop the run with an error naming the step and the tensor.
    #[default]
    Stop,
    /// Drop the step's gradients and go on; count it.
    Skip,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: 1e-4,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            warmup_steps: 5,
            min_lr_ratio: 0.1,
            max_grad_norm: 1.0,
            nonfinite: NonFinite::Stop,
        }
    }
}

/// Linear warmup to `lr`, then cosine decay to `min_lr_ratio * lr` at `total` steps.
pub fn lr_at(cfg: &OptimConfig, step: usize, total: usize) -> f64 {
    if step < cfg.warmup_steps {
        return cfg.lr * (step + 1) as f64 / cfg.warmup_steps as f64;
    }
    let span = total.saturating_sub(cfg.warmup_steps).max(1) as f64;
    let progress = ((step - cfg.warmup_steps) as f64 / span).min(1.0);
    let floor = cfg.lr * cfg.min_lr_ratio;
    floor + (cfg.lr - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

pub struct AdamW {
    pub params: Vec<(String, Tensor)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    pub step: usize,
}

impl AdamW {
    /// Moments are kept in f32 whatever the parameter dtype.
    pub fn new(params: Vec<(String, Tensor)>) -> Self {
        let zeros = |p: &Tensor| Tensor::zeros(p.size(), (Kind::Float, p.device()));
        let m = params.iter().map(|(_, p)| zeros(p)).collect();
        let v = params.iter().map(|(_, p)| zeros(p)).collect();
        Self {
            params,
            m,
            v,
            step: 0,
        }
    }

    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }

    /// The global L2 norm of the gradients, or the name of the first parameter (in name
    /// order) whose gradient holds a NaN or an infinity.
    pub fn grad_norm(&self) -> std::result::Result<f64, String> {
        let _g = tch::no_grad_guard();
        let mut total = 0.0;
        for (name, p) in &self.params {
            let g = p.grad();
            if !g.defined() {
                continue;
            }
            let mut sq = g
                .to_kind(Kind::Float)
                .pow_tensor_scalar(2)
                .sum(Kind::Float)
                .double_value(&[]);
            if !sq.is_finite() {
                // A NaN/inf element, or finite values whose squares overflow f32.
                if g.isfinite().all().int64_value(&[]) == 0 {
                    return Err(name.clone());
                }
                sq = g
                    .to_kind(Kind::Double)
                    .pow_tensor_scalar(2)
                    .sum(Kind::Double)
                    .double_value(&[]);
            }
            total += sq;
        }
        Ok(total.sqrt())
    }

    /// Scales gradients so their global L2 norm is at most `max_norm`; returns the norm
    /// before clipping (NaN when a gradient is not finite: then nothing is scaled).
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        match self.grad_norm() {
            Ok(norm) => {
                self.scale_grads(norm, max_norm);
                norm
            }
            Err(_) => f64::NAN,
        }
    }

    /// Scales gradients of global norm `norm` (from `grad_norm`) down to `max_norm` when
    /// above it (`max_norm` 0: never).
    pub fn scale_grads(&mut self, norm: f64, max_norm: f64) {
        let _g = tch::no_grad_guard();
        if max_norm > 0.0 && norm > max_norm {
            let scale = max_norm / (norm + 1e-6);
            for (_, p) in &self.params {
                let mut g = p.grad();
                if g.defined() {
                    let _ = g.g_mul_scalar_(scale);
                }
            }
        }
    }

    pub fn apply(&mut self, cfg: &OptimConfig, lr: f64) {
        let _g = tch::no_grad_guard();
        self.step += 1;
        let (b1, b2) = (cfg.beta1, cfg.beta2);
        let bc1 = 1.0 - b1.powi(self.step as i32);
        let bc2 = 1.0 - b2.powi(self.step as i32);
        for (k, (_, p)) in self.params.iter_mut().enumerate() {
            let g = p.grad();
            if !g.defined() {
                continue;
            }
            let g = g.to_kind(Kind::Float);
            let m = &mut self.m[k];
            let v = &mut self.v[k];
            let _ = m.g_mul_scalar_(b1).g_add_(&(&g * (1.0 - b1)));
            let _ = v
                .g_mul_scalar_(b2)
                .g_add_(&(g.pow_tensor_scalar(2) * (1.0 - b2)));
            let update = (&*m / bc1) / ((&*v / bc2).sqrt() + cfg.eps);
            let pf = p.to_kind(Kind::Float);
            let new = &pf - (update + &pf * cfg.weight_decay) * lr;
            p.copy_(&new.to_kind(p.kind()));
        }
    }

    /// Moments and step, for checkpoints.
    pub fn state(&self) -> BTreeMap<String, Tensor> {
        let mut s = BTreeMap::new();
        for (k, (name, _)) in self.params.iter().enumerate() {
            s.insert(format!("m.{name}"), self.m[k].shallow_clone());
            s.insert(format!("v.{name}"), self.v[k].shallow_clone());
        }
        s.insert("step".into(), Tensor::from_slice(&[self.step as i64]));
        s
    }

    pub fn load_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<()> {
        let _g = tch::no_grad_guard();
        for (k, (name, _)) in self.params.iter().enumerate() {
            for (prefix, buf) in [("m", &mut self.m[k]), ("v", &mut self.v[k])] {
                let Some(t) = state.get(&format!("{prefix}.{name}")) else {
                    bail!("optimizer state lacks {prefix}.{name}")
                };
                buf.copy_(t);
            }
        }
        self.step = state
            .get("step")
            .map(|t| t.int64_value(&[0]) as usize)
            .unwrap_or(0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        let cfg = OptimConfig {
            lr: 1.0,
            warmup_steps: 4,
            min_lr_ratio: 0.1,
            ..Default::default()
        };
        assert!((lr_at(&cfg, 0, 20) - 0.25).abs() < 1e-12);
        assert!((lr_at(&cfg, 3, 20) - 1.0).abs() < 1e-12);
        assert!((lr_at(&cfg, 4, 20) - 1.0).abs() < 1e-12);
        assert!((lr_at(&cfg, 20, 20) - 0.1).abs() < 1e-12);
        assert!(lr_at(&cfg, 10, 20) < lr_at(&cfg, 8, 20));
    }

    #[test]
    fn adamw_first_step_moves_by_lr_against_the_gradient_sign() {
        let p = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let loss = (&p * Tensor::from_slice(&[3.0f32, -0.5])).sum(Kind::Float);
        loss.backward();
        let mut opt = AdamW::new(vec![("p".into(), p.shallow_clone())]);
        let cfg = OptimConfig {
            weight_decay: 0.0,
            ..Default::default()
        };
        opt.apply(&cfg, 0.1);
        let v: Vec<f32> = Vec::try_from(&p.detach()).unwrap();
        // Bias-corrected first Adam step is lr * sign(g) (up to eps).
        assert!(
            (v[0] - 0.9).abs() < 1e-5 && (v[1] + 1.9).abs() < 1e-5,
            "{v:?}"
        );
    }
}
