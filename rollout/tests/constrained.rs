//! Structured answers on a real engine: a tiny random model, whose free text is never an
//! answer, writes a full permutation of the candidate indices when its answer is constrained,
//! greedy and sampled, and the constraint leaves rows outside an answer untouched.

use testkit as support;

use lm::constraint::{Constraint, TokenConstraint};
use lm::device::{parse_device, parse_dtype};
use lm::engine::Engine;
use lm::sampling::SamplingParams;
use lm::Policy;
use rollout::constrained::AnswerConstraint;
use rollout::protocol::{parse_answer, ANSWER};
use std::sync::Arc;
use support::*;

/// The answer constraint as if `<answer>` had been sampled just before the turn started.
struct Opened(AnswerConstraint);

impl TokenConstraint for Opened {
    fn active(&self, turn_text: &str) -> bool {
        self.0.active(&format!("{}{turn_text}", ANSWER.0))
    }
    fn allowed(&self, turn_text: &str) -> Vec<i64> {
        self.0.allowed(&format!("{}{turn_text}", ANSWER.0))
    }
}

/// Distinct in-range indices written in an answer's text (before any fill-in of missing ones).
fn listed(body: &str) -> Vec<usize> {
    body.split(|c: char| !c.is_ascii_digit())
        .filter(|t| !t.is_empty())
        .map(|t| t.parse().unwrap())
        .collect()
}

#[test]
fn constrained_answers_are_permutations_and_free_rows_are_untouched() {
    let p = Policy::load(
        &tiny_model("qwen2"),
        parse_device("cpu").unwrap(),
        parse_dtype("f32").unwrap(),
    )
    .unwrap();
    let tokens = AnswerConstraint::tokens_of(&p.tokenizer);
    assert!(tokens.len() >= 11, "answer tokens: {}", tokens.len());
    let n = 10;
    let prompt = p
        .tokenizer
        .encode("Rank the ten candidates, best first.", true)
        .unwrap();
    let params = |temperature: f64, seed: u64, constrained: bool| SamplingParams {
        temperature,
        seed,
        max_new_tokens: 60,
        stop: vec![ANSWER.1.to_string()],
        constraint: constrained
            .then(|| Constraint(Arc::new(Opened(AnswerConstraint::new(n, tokens.clone()))))),
        ..Default::default()
    };
    let mut engine = Engine::new(&p.model, &p.tokenizer);
    let mut rows = Vec::new();
    for (t, seed) in [(0.0, 0), (1.0, 1), (1.0, 2), (1.0, 3), (0.7, 4)] {
        rows.push((
            true,
            engine.add_row(&prompt, params(t, seed, true)).unwrap(),
        ));
    }
    let free = engine.add_row(&prompt, params(0.0, 0, false)).unwrap();
    engine.run().unwrap();
    for (_, id) in rows {
        let row = engine.row(id);
        let body = row.turn_text().to_string();
        let answer = format!("{}{body}", ANSWER.0);
        let order = parse_answer(&answer, n).unwrap_or_else(|e| panic!("{body:?}: {e:?}"));
        let mut written = listed(&body);
        assert_eq!(written.len(), n, "every index written: {body:?}");
        assert_eq!(order, written, "{body:?}");
        written.sort();
        assert_eq!(written, (1..=n).collect::<Vec<_>>());
        assert!(body.ends_with(ANSWER.1), "{body:?}");
        let sampled: Vec<f32> = row
            .logprobs
            .iter()
            .zip(&row.mask)
            .filter(|(_, m)| **m == 1)
            .map(|(l, _)| *l)
            .collect();
        assert!(
            sampled.iter().all(|l| l.is_finite() && *l <= 1e-6),
            "{sampled:?}"
        );
    }
    // The random model left alone writes no answer: the constraint is what made the above.
    let free_text = format!("{}{}", ANSWER.0, engine.row(free).turn_text());
    assert!(parse_answer(&free_text, n).is_err(), "{free_text:?}");
}

#[test]
fn the_answer_constraint_waits_for_an_open_answer() {
    let p = Policy::load(
        &tiny_model("qwen2"),
        parse_device("cpu").unwrap(),
        parse_dtype("f32").unwrap(),
    )
    .unwrap();
    let c = AnswerConstraint::new(10, AnswerConstraint::tokens_of(&p.tokenizer));
    assert!(!c.active("I will call a tool. <tool_call>"));
    assert!(c.active("Ranking now. <answer>3, 1"));
    assert!(!c.active("<answer>3, 1, 2, 4, 5, 6, 7, 8, 9, 10</answer>"));
    let next = c.allowed("<answer>3, 1, 2, 4, 5, 6, 7, 8, 9, 1");
    let texts: Vec<String> = next
        .iter()
        .map(|&t| p.tokenizer.decode(&[t], false).unwrap())
        .collect();
    assert!(
        !texts.is_empty() && texts.iter().all(|t| t.starts_with('0')),
        "{texts:?}"
    );
}
