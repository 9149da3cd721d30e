//! Truncated importance sampling of the rollout precision (`algos::RolloutCorrection`) on
//! real engine rollouts of a tiny model: with rollouts and training in the same precision the
//! weights are 1 (which also checks that the engine's log-probs line up with the training
//! forward's, for full rows and shared-prompt groups); with bf16 rollouts they move, stay
//! within the truncation, and change the loss.

use testkit as support;

use lm::engine::Engine;
use lm::sampling::SamplingParams;
use lm::Policy;
use rollout::AgentRow;
use support::*;
use tch::{Device, Kind};
use trainer::algos::{CorrectionMode, RolloutCorrection};
use trainer::losses::GrpoLossConfig;
use trainer::rl_batch::{accumulate_gradients, micro_batches, Fixed, PassStats};

/// Two groups of three sampled continuations (temperature 1), under `rollout` autocast.
fn rollouts(p: &Policy, rollout: Option<Kind>) -> Vec<AgentRow> {
    let prompts = [
        "Rank these movies: Heat, Fargo, Casino",
        "A user who loves Alien",
    ];
    let mut engine = Engine::new(&p.model, &p.tokenizer);
    let mut ids = Vec::new();
    for (e, text) in prompts.iter().enumerate() {
        let prompt = p.tokenizer.encode(text, true).unwrap();
        for s in 0..3 {
            let params = SamplingParams {
                temperature: 1.0,
                max_new_tokens: 6 + 2 * s,
                seed: (10 * e + s) as u64,
                ignore_eos: true,
                ..Default::default()
            };
            ids.push((e, prompt.len(), engine.add_row(&prompt, params).unwrap()));
        }
    }
    lm::autocast::with(rollout, || engine.run()).unwrap();
    ids.into_iter()
        .map(|(episode, prompt_tokens, id)| {
            let r = engine.row(id);
            AgentRow {
                episode,
                sample: 0,
                messages: Vec::new(),
                calls: Vec::new(),
                end: None,
                answer_text: None,
                prompt_tokens,
                generated_tokens: 0,
                forced_tokens: 0,
                seconds: 0.0,
                ids: r.ids.clone(),
                mask: r.mask.clone(),
                logprobs: r.logprobs.clone(),
            }
        })
        .collect()
}

fn pass(p: &Policy, rows: &[AgentRow], share: bool, correction: &RolloutCorrection) -> PassStats {
    let adv = [
        Some(1.0),
        Some(-0.5),
        Some(-0.5),
        Some(0.7),
        Some(-1.0),
        Some(0.3),
    ];
    let on = correction.mode != CorrectionMode::Off;
    let micro = micro_batches(rows, &adv, share, 2, on, Device::Cpu);
    let fixed: Vec<Fixed> = micro
        .iter()
        .map(|_| Fixed {
            old: None,
            reference: None,
        })
        .collect();
    for (_, mut t) in p.model.vs.variables() {
        t.zero_grad();
    }
    accumulate_gradients(
        &p.model,
        &micro,
        &fixed,
        &GrpoLossConfig::default(),
        correction,
    )
}

#[test]
fn tis_weights_are_one_at_equal_precision_and_move_with_bf16_rollouts() {
    let mut p = Policy::load(&tiny_model("qwen2"), Device::Cpu, Kind::Float).unwrap();
    p.model.add_lora(&lm::lora::LoraConfig::default()).unwrap();
    let tis = RolloutCorrection {
        mode: CorrectionMode::TokenTis,
        threshold: 2.0,
    };
    let off = RolloutCorrection {
        mode: CorrectionMode::Off,
        ..tis
    };
    let same = rollouts(&p, None);
    for share in [false, true] {
        let s = pass(&p, &same, share, &tis);
        eprintln!(
            "f32 rollouts, share_prompt {share}: mean weight {:.6}",
            s.is_weight
        );
        assert!((s.is_weight - 1.0).abs() < 1e-3, "{s:?}");
        assert_eq!(s.is_truncated, 0.0);
        let plain = pass(&p, &same, share, &off);
        assert!((s.loss - plain.loss).abs() < 1e-3 * (1.0 + plain.loss.abs()));
        assert_eq!(plain.is_weight, 0.0);
    }
    let low = rollouts(&p, Some(Kind::BFloat16));
    for share in [false, true] {
        let s = pass(&p, &low, share, &tis);
        let plain = pass(&p, &low, share, &off);
        eprintln!(
            "bf16 rollouts, share_prompt {share}: mean weight {:.4}, truncated {:.4}, loss {:.5} vs uncorrected {:.5}",
            s.is_weight, s.is_truncated, s.loss, plain.loss
        );
        assert!(
            (s.is_weight - 1.0).abs() > 1e-4,
            "bf16 rollouts left the weights at 1"
        );
        assert!(s.is_weight > 0.0 && s.is_weight <= 2.0);
        assert!((0.0..=1.0).contains(&s.is_truncated));
        assert!((s.loss - plain.loss).abs() > 1e-7);
    }
}
