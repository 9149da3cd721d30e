//! Value checks of the synth, SFT and RL configs, run when a config is loaded: a value of
//! the right type but out of its domain (0 steps, a top_p of 2, an unknown device) is an
//! error naming the key (`[agent] top_p = 2: must be in (0, 1]`) before any work starts,
//! not a panic or a silent no-op hours later. Types and unknown keys are serde's business
//! (`deny_unknown_fields`), and `config::load` names the key of those errors too.

use crate::losses::GrpoLossConfig;
use crate::optim::OptimConfig;
use crate::rl::RlConfig;
use crate::sft::SftConfig;
use crate::synth::SynthConfig;
use crate::teachers::model::ModelTeacherConfig;
use crate::teachers::openai::OpenAiConfig;
use lm::lora::LoraConfig;
use reward::RewardConfig;
use rollout::AgentConfig;

/// A config whose values can be checked; `Err` names the key (dotted, from the file's root).
pub trait Validate {
    fn validate(&self) -> Result<(), String>;
}

/// One failed rule: `key = value: why`.
fn fail(key: &str, value: impl std::fmt::Display, why: &str) -> Result<(), String> {
    Err(format!("`{key}` = {value}: {why}"))
}

fn at_least(key: &str, value: usize, min: usize) -> Result<(), String> {
    if value < min {
        return fail(key, value, &format!("must be at least {min}"));
    }
    Ok(())
}

/// A finite number in [lo, hi] (`open_lo`: (lo, hi]).
fn number(key: &str, value: f64, lo: f64, hi: f64, open_lo: bool) -> Result<(), String> {
    let ok = value.is_finite() && value <= hi && if open_lo { value > lo } else { value >= lo };
    if !ok {
        let range = match (open_lo, hi.is_finite()) {
            (true, true) => format!("must be in ({lo}, {hi}]"),
            (false, true) => format!("must be in [{lo}, {hi}]"),
            (true, false) => format!("must be a finite number above {lo}"),
            (false, false) => format!("must be a finite number of at least {lo}"),
        };
        return fail(key, value, &range);
    }
    Ok(())
}

fn one_of(key: &str, value: &str, allowed: &[&str]) -> Result<(), String> {
    if !allowed.contains(&value) {
        return fail(
            key,
            format!("{value:?}"),
            &format!("expected one of {allowed:?}"),
        );
    }
    Ok(())
}

fn device(key: &str, value: &str) -> Result<(), String> {
    let ok = value == "cpu"
        || value == "cuda"
        || value
            .strip_prefix("cuda:")
            .is_some_and(|i| i.parse::<usize>().is_ok());
    if !ok {
        return fail(key, format!("{value:?}"), "expected cpu, cuda or cuda:N");
    }
    Ok(())
}

fn dtype(key: &str, value: &str) -> Result<(), String> {
    one_of(
        key,
        value,
        &["f32", "float32", "bf16", "bfloat16", "f16", "float16"],
    )
}

fn agent(table: &str, a: &AgentConfig) -> Result<(), String> {
    let k = |name: &str| format!("{table}.{name}");
    at_least(&k("max_new_tokens"), a.max_new_tokens, 1)?;
    at_least(&k("max_context"), a.max_context, 2)?;
    at_least(&k("tool_max_chars"), a.tool_max_chars, 1)?;
    number(&k("temperature"), a.temperature, 0.0, f64::INFINITY, false)?;
    number(&k("top_p"), a.top_p, 0.0, 1.0, true)
}

fn lora(l: &Option<LoraConfig>) -> Result<(), String> {
    let Some(l) = l else { return Ok(()) };
    if l.rank < 1 {
        return fail("lora.rank", l.rank, "must be at least 1");
    }
    number("lora.alpha", l.alpha, 0.0, f64::INFINITY, true)?;
    if l.target_modules.is_empty() {
        return fail("lora.target_modules", "[]", "name at least one module");
    }
    for m in &l.target_modules {
        one_of("lora.target_modules", m, &lm::lora::MODULES)?;
    }
    Ok(())
}

/// `optim.nonfinite` (`stop` | `skip`) is an enum: serde refuses any other value, naming
/// the key and the allowed values (`trainer/tests/configs.rs`).
fn optim(o: &OptimConfig) -> Result<(), String> {
    number("optim.lr", o.lr, 0.0, f64::INFINITY, true)?;
    number(
        "optim.weight_decay",
        o.weight_decay,
        0.0,
        f64::INFINITY,
        false,
    )?;
    number("optim.beta1", o.beta1, 0.0, 1.0, false)?;
    number("optim.beta2", o.beta2, 0.0, 1.0, false)?;
    for (key, b) in [("optim.beta1", o.beta1), ("optim.beta2", o.beta2)] {
        if b >= 1.0 {
            return fail(key, b, "must be below 1");
        }
    }
    number("optim.eps", o.eps, 0.0, f64::INFINITY, true)?;
    number("optim.min_lr_ratio", o.min_lr_ratio, 0.0, 1.0, false)?;
    number(
        "optim.max_grad_norm",
        o.max_grad_norm,
        0.0,
        f64::INFINITY,
        false,
    )
}

fn eval(every: usize, users: usize, has_data: bool, agent_cfg: &AgentConfig) -> Result<(), String> {
    if every > 0 && !has_data {
        return fail(
            "eval_every",
            every,
            "needs `eval_data` (the prepared HDF5 file)",
        );
    }
    at_least("eval_users", users, 1)?;
    agent("eval_agent", agent_cfg)
}

fn split(key: &str, value: &str) -> Result<(), String> {
    one_of(key, value, &["train", "valid", "test"])
}

fn model_teacher(m: &ModelTeacherConfig) -> Result<(), String> {
    at_least("model.samples", m.samples, 1)?;
    at_least("model.batch", m.batch, 1)?;
    device("model.device", &m.device)?;
    dtype("model.dtype", &m.dtype)
}

fn openai(o: &OpenAiConfig) -> Result<(), String> {
    if !(o.base_url.starts_with("http://") || o.base_url.starts_with("https://")) {
        return fail(
            "openai.base_url",
            format!("{:?}", o.base_url),
            "expected an http:// or https:// URL",
        );
    }
    if o.model.trim().is_empty() {
        return fail("openai.model", "\"\"", "name the model");
    }
    at_least("openai.samples", o.samples, 1)?;
    number(
        "openai.temperature",
        o.temperature,
        0.0,
        f64::INFINITY,
        false,
    )?;
    at_least("openai.max_tokens", o.max_tokens, 1)?;
    number("openai.timeout_s", o.timeout_s, 0.0, f64::INFINITY, true)?;
    number("openai.backoff_s", o.backoff_s, 0.0, f64::INFINITY, false)?;
    at_least("openai.concurrency", o.concurrency, 1)
}

impl Validate for SynthConfig {
    fn validate(&self) -> Result<(), String> {
        one_of("teacher", &self.teacher, &["scripted", "model", "openai"])?;
        split("split", &self.split)?;
        if let Some(n) = self.limit_episodes {
            at_least("limit_episodes", n, 1)?;
        }
        number("min_ndcg", self.min_ndcg, 0.0, 1.0, false)?;
        if self.explore_presets && self.teacher != "scripted" {
            return Err(format!(
                "`explore_presets` = true needs teacher = \"scripted\" (the teacher is `{}`)",
                self.teacher
            ));
        }
        agent("agent", &self.agent)?;
        if let Some(m) = &self.model {
            model_teacher(m)?;
        }
        if let Some(o) = &self.openai {
            openai(o)?;
        }
        Ok(())
    }
}

impl Validate for SftConfig {
    fn validate(&self) -> Result<(), String> {
        device("device", &self.device)?;
        dtype("dtype", &self.dtype)?;
        at_least("steps", self.steps, 1)?;
        at_least("batch_size", self.batch_size, 1)?;
        at_least("micro_batch", self.micro_batch, 1)?;
        at_least("max_len", self.max_len, 2)?;
        at_least("save_every", self.save_every, 1)?;
        eval(
            self.eval_every,
            self.eval_users,
            self.eval_data.is_some(),
            &self.eval_agent,
        )?;
        lora(&self.lora)?;
        autocast("autocast", &self.autocast)?;
        optim(&self.optim)
    }
}

/// `autocast` / `rollout_autocast`: off, bf16 or f16 (`lm::autocast::parse`).
fn autocast(key: &str, value: &str) -> Result<(), String> {
    one_of(
        key,
        value,
        &[
            "off", "none", "f32", "float32", "bf16", "bfloat16", "f16", "float16",
        ],
    )
}

fn loss(l: &GrpoLossConfig) -> Result<(), String> {
    number("loss.eps_low", l.eps_low, 0.0, 1.0, false)?;
    if l.eps_low >= 1.0 {
        return fail("loss.eps_low", l.eps_low, "must be below 1");
    }
    number("loss.eps_high", l.eps_high, 0.0, f64::INFINITY, false)?;
    number("loss.beta", l.beta, 0.0, f64::INFINITY, false)?;
    number(
        "loss.dr_grpo_length",
        l.dr_grpo_length,
        0.0,
        f64::INFINITY,
        true,
    )
}

fn reward_cfg(r: &RewardConfig) -> Result<(), String> {
    number("reward.lambda", r.lambda, 0.0, 1.0, false)?;
    number("reward.c", r.c, 0.0, f64::INFINITY, false)?;
    number("reward.mu", r.mu, 0.0, f64::INFINITY, false)?;
    at_least("reward.k", r.k, 1)
}

impl Validate for RlConfig {
    fn validate(&self) -> Result<(), String> {
        device("device", &self.device)?;
        dtype("dtype", &self.dtype)?;
        at_least("steps", self.steps, 1)?;
        at_least("episodes_per_step", self.episodes_per_step, 1)?;
        // One sample per group has no variance: every group would be dropped.
        at_least("group_size", self.group_size, 2)?;
        at_least("inner_epochs", self.inner_epochs, 1)?;
        at_least("micro_batch", self.micro_batch, 1)?;
        at_least("save_every", self.save_every, 1)?;
        eval(self.eval_every, self.eval_users, true, &self.eval_agent)?;
        agent("agent", &self.agent)?;
        lora(&self.lora)?;
        loss(&self.loss)?;
        reward_cfg(&self.reward)?;
        autocast("autocast", &self.autocast)?;
        autocast("rollout_autocast", &self.rollout_autocast)?;
        number(
            "rollout_correction.threshold",
            self.rollout_correction.threshold,
            1.0,
            f64::INFINITY,
            false,
        )?;
        optim(&self.optim)
    }
}
