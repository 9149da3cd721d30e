//! Autocast (`lm::autocast`) on SmolLM2-135M-Instruct: bf16 linear layers give log-probs and
//! LoRA gradients close to f32 (the stated tolerances), leave the weights and the adapters in
//! f32, keep a merged model consistent, and switch off outside their scope.

use testkit as support;

use lm::lora::LoraConfig;
use lm::Policy;
use support::*;
use tch::{Device, Kind, Tensor};

/// The real SmolLM2-135M-Instruct: random tiny weights (extreme logits) exaggerate rounding.
fn policy() -> Policy {
    tch::manual_seed(0);
    Policy::load(&base_model(), Device::Cpu, Kind::Float).unwrap()
}

fn ids(p: &Policy) -> Tensor {
    let text = "Rank these movies for a user who liked Heat and Fargo: 1. Casino 2. Seven 3. Alien";
    Tensor::from_slice(&p.tokenizer.encode(text, true).unwrap()).unsqueeze(0)
}

/// Mean log-prob of each next token: the SFT objective's shape.
fn objective(p: &Policy, ids: &Tensor) -> Tensor {
    let t = ids.size()[1];
    let lp = p.model.forward(ids).log_softmax(-1, Kind::Float);
    lp.narrow(1, 0, t - 1)
        .gather(-1, &ids.narrow(1, 1, t - 1).unsqueeze(-1), false)
        .mean(Kind::Float)
}

#[test]
fn bf16_linears_match_f32_within_tolerance_and_stay_scoped() {
    let p = policy();
    let x = ids(&p);
    let f32_lp = tch::no_grad(|| p.model.forward(&x).log_softmax(-1, Kind::Float));
    let bf_lp = lm::autocast::with(Some(Kind::BFloat16), || {
        assert_eq!(lm::autocast::current(), Some(Kind::BFloat16));
        tch::no_grad(|| p.model.forward(&x).log_softmax(-1, Kind::Float))
    });
    assert_eq!(lm::autocast::current(), None);
    assert_eq!(bf_lp.kind(), Kind::Float);
    // The next token's log-prob (what SFT and GRPO use) and the KL between the two
    // distributions at every position.
    let t = x.size()[1];
    let next = x.narrow(1, 1, t - 1).unsqueeze(-1);
    let pick = |lp: &Tensor| lp.narrow(1, 0, t - 1).gather(-1, &next, false);
    let target_diff = max_abs_diff(&pick(&f32_lp), &pick(&bf_lp));
    let kl = (f32_lp.exp() * (&f32_lp - &bf_lp))
        .sum_dim_intlist(-1, false, Kind::Float)
        .mean(Kind::Float)
        .double_value(&[]);
    eprintln!(
        "max |next-token log-prob f32 - bf16 autocast| = {target_diff:.2e}, mean KL {kl:.2e}"
    );
    assert!(target_diff > 0.0, "autocast changed nothing");
    assert!(target_diff < 0.1, "{target_diff}");
    assert!(kl < 1e-2, "{kl}");
    // Off again: bit-identical to the first f32 pass.
    let again = tch::no_grad(|| p.model.forward(&x).log_softmax(-1, Kind::Float));
    assert_eq!(max_abs_diff(&f32_lp, &again), 0.0);
    for (name, t) in p.model.vs.variables() {
        assert_eq!(t.kind(), Kind::Float, "{name}");
    }
}

#[test]
fn lora_gradients_under_autocast_follow_f32() {
    let mut p = policy();
    p.model
        .add_lora(&LoraConfig {
            rank: 4,
            alpha: 8.0,
            target_modules: vec!["q_proj".into(), "v_proj".into(), "up_proj".into()],
        })
        .unwrap();
    // B starts at 0: give it values so that A's gradient is not 0 either. A and B get fixed
    // values, not draws from libtorch's global generator: tests in this binary run in
    // parallel, and another test seeding it mid-way made the adapters (and the objective's
    // bf16 error, 0.13-0.50%) vary from run to run.
    tch::no_grad(|| {
        for (name, mut t) in p.model.vs.variables() {
            if name.contains("lora_A") || name.contains("lora_B") {
                let scale = if name.contains("lora_B") { 0.02 } else { 0.05 };
                let n = t.numel() as i64;
                let v = (Tensor::arange(n, (Kind::Float, Device::Cpu)) * 0.7331).sin() * scale;
                t.copy_(&v.view(t.size().as_slice()));
            }
        }
    });
    let x = ids(&p);
    let grads = |kind: Option<Kind>| {
        for (_, mut t) in p.model.vs.variables() {
            t.zero_grad();
        }
        let loss = lm::autocast::with(kind, || objective(&p, &x));
        loss.backward();
        let mut vars = p.model.vs.variables().into_iter().collect::<Vec<_>>();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let g: Vec<(String, Tensor)> = vars
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .map(|(n, t)| (n, t.grad().copy()))
            .collect();
        (loss.double_value(&[]), g)
    };
    let (l32, g32) = grads(None);
    let (l16, g16) = grads(Some(Kind::BFloat16));
    eprintln!("objective f32 {l32:.6} bf16 autocast {l16:.6}");
    assert!(
        (l32 - l16).abs() < 0.005 * l32.abs().max(1e-3),
        "{l32} vs {l16}"
    );
    assert_eq!(g32.len(), 2 * 3 * p.model.layers.len());
    let (mut worst, mut sum) = (1.0f64, 0.0);
    for ((n, a), (_, b)) in g32.iter().zip(&g16) {
        assert_eq!(b.kind(), Kind::Float, "{n}");
        let cos = (a * b).sum(Kind::Double).double_value(&[])
            / (a.norm().double_value(&[]) * b.norm().double_value(&[])).max(1e-30);
        worst = worst.min(cos);
        sum += cos;
    }
    let mean = sum / g32.len() as f64;
    eprintln!(
        "cosine(grad f32, grad bf16 autocast) over the adapters: mean {mean:.5}, worst {worst:.5}"
    );
    assert!(mean > 0.98 && worst > 0.9, "{mean} {worst}");
    // Merging folds the adapters in and drops the cached bf16 weights: autocast then
    // computes with the merged weights, not the stale base. Large adapters make the two differ.
    tch::no_grad(|| {
        for (name, mut t) in p.model.vs.variables() {
            if name.contains("lora_B") {
                t.copy_(&(Tensor::randn_like(&t) * 0.5));
            }
        }
    });
    let base = policy();
    let base_lp = tch::no_grad(|| base.model.forward(&x).log_softmax(-1, Kind::Float));
    p.model.merge_lora();
    let merged_f32 = tch::no_grad(|| p.model.forward(&x).log_softmax(-1, Kind::Float));
    let merged_bf16 = lm::autocast::with(Some(Kind::BFloat16), || {
        tch::no_grad(|| p.model.forward(&x).log_softmax(-1, Kind::Float))
    });
    let effect = max_abs_diff(&merged_f32, &base_lp);
    let err = max_abs_diff(&merged_bf16, &merged_f32);
    eprintln!(
        "adapters move log-probs by {effect:.3}; merged under autocast vs merged f32 {err:.3}"
    );
    assert!(
        err < effect / 5.0,
        "autocast after a merge used stale weights? {err} vs {effect}"
    );
}
