//! The `Tool` trait, tool-call parsing and argument checking, and the registry that renders
//! the schemas for the prompt. Every failure becomes an error observation for the agent.

use crate::world::{EpisodeView, World};
use serde_json::{json, Map, Value};

pub type Args = Map<String, Value>;

pub trait Tool: Send + Sync {
    fn name(&self) -> &'static str;
    fn description(&self) -> &'static str;
    /// JSON schema of the arguments (an object schema with `properties` and `required`).
    fn parameters(&self) -> Value;
    /// The observation text, or an error message meant for the agent.
    fn call(&self, world: &World, ep: &EpisodeView, args: &Args) -> Result<String, String>;
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ToolCall {
    pub name: String,
    pub arguments: Value,
}

impl ToolCall {
    pub fn new(name: &str, arguments: Value) -> Self {
        Self {
            name: name.to_string(),
            arguments,
        }
    }

    /// The call as JSON text, `{"name": ..., "arguments": {...}}` (the form `parse` reads).
    pub fn text(&self) -> String {
        json!({"name": self.name, "arguments": self.arguments}).to_string()
    }

    /// Parses `{"name": ..., "arguments": {...}}` (arguments may also be a JSON string).
    pub fn parse(text: &str) -> Result<Self, String> {
        let v: Value = serde_json::from_str(text.trim())
            .map_err(|e| format!("tool call is not valid JSON ({e})"))?;
        let name = v
            .get("name")
            .and_then(Value::as_str)
            .ok_or("tool call needs a string field \"name\"")?;
        let arguments = match v.get("arguments").or_else(|| v.get("parameters")) {
            None | Some(Value::Null) => json!({}),
            Some(Value::String(s)) => serde_json::from_str(s)
                .map_err(|e| format!("\"arguments\" is a string that is not JSON ({e})"))?,
            Some(a) => a.clone(),
        };
        if !arguments.is_object() {
            return Err("\"arguments\" must be a JSON object".into());
        }
        Ok(Self {
            name: name.to_string(),
            arguments,
        })
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Observation {
    pub text: String,
    /// False for malformed calls, unknown tools and bad arguments (a "bad call").
    pub ok: bool,
}

pub struct Registry {
    tools: Vec<Box<dyn Tool>>,
    /// Observations longer than this many characters are cut.
    pub max_chars: usize,
}

impl Registry {
    pub fn new(tools: Vec<Box<dyn Tool>>, max_chars: usize) -> Self {
        Self { tools, max_chars }
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.tools.iter().map(|t| t.name()).collect()
    }

    /// OpenAI-style function schemas, as chat templates and APIs take them.
    pub fn schemas(&self) -> Value {
        Value::Array(
            self.tools
                .iter()
                .map(|t| json!({"type": "function", "function": {"name": t.name(), "description": t.description(), "parameters": t.parameters()}}))
                .collect(),
        )
    }

    /// One line per tool for a system prompt, with compact signatures such as
    /// `user_history(genre?: string, order?: recent|oldest, limit?: 1..50)`.
    pub fn describe(&self) -> String {
        self.tools
            .iter()
            .map(|t| {
                let params = t.parameters();
                let required: Vec<&str> = params["required"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                let args: Vec<String> = params["properties"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(name, spec)| {
                        let ty = match (
                            spec.get("enum").and_then(Value::as_array),
                            spec.get("minimum"),
                            spec.get("maximum"),
                        ) {
                            (Some(e), _, _) => e
                                .iter()
                                .filter_map(Value::as_str)
                                .collect::<Vec<_>>()
                                .join("|"),
                            (None, Some(lo), Some(hi)) => format!("{lo}..{hi}"),
                            _ => spec["type"].as_str().unwrap_or("string").to_string(),
                        };
                        let opt = if required.contains(&name.as_str()) {
                            ""
                        } else {
                            "?"
                        };
                        format!("{name}{opt}: {ty}")
                    })
                    .collect();
                format!("- {}({}): {}", t.name(), args.join(", "), t.description())
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Runs a call given as JSON text.
    pub fn call_text(&self, world: &World, ep: &EpisodeView, text: &str) -> Observation {
        match ToolCall::parse(text) {
            Ok(call) => self.call(world, ep, &call),
            Err(e) => Observation {
                text: format!("Error: {e}. Expected {{\"name\": <tool>, \"arguments\": {{...}}}}."),
                ok: false,
            },
        }
    }

    pub fn call(&self, world: &World, ep: &EpisodeView, call: &ToolCall) -> Observation {
        let Some(tool) = self.tools.iter().find(|t| t.name() == call.name) else {
            return Observation {
                text: format!(
                    "Error: unknown tool \"{}\". Available tools: {}.",
                    cut(&call.name, 60),
                    self.names().join(", ")
                ),
                ok: false,
            };
        };
        let empty = Map::new();
        let args = call.arguments.as_object().unwrap_or(&empty);
        if let Err(e) = check_args(&tool.parameters(), args) {
            return Observation {
                text: format!("Error: {}: {e}", tool.name()),
                ok: false,
            };
        }
        match tool.call(world, ep, args) {
            Ok(text) => Observation {
                text: cut(&text, self.max_chars),
                ok: true,
            },
            Err(e) => Observation {
                text: format!("Error: {}: {e}", tool.name()),
                ok: false,
            },
        }
    }
}

/// Cuts `s` to at most `max` characters, saying so.
pub fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max).collect();
    out.push_str(" …(truncated)");
    out
}

/// Checks arguments against the subset of JSON schema our tools use: known properties,
/// required ones present, types, enums and integer ranges.
fn check_args(schema: &Value, args: &Args) -> Result<(), String> {
    let props = schema
        .get("properties")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for key in args.keys() {
        if !props.contains_key(key) {
            let known: Vec<&String> = props.keys().collect();
            return Err(format!(
                "unknown argument \"{}\" (known: {known:?})",
                cut(key, 40)
            ));
        }
    }
    for req in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if !args.contains_key(req) {
            return Err(format!("missing required argument \"{req}\""));
        }
    }
    for (key, value) in args {
        let spec = &props[key];
        let ty = spec.get("type").and_then(Value::as_str).unwrap_or("string");
        let ok = match ty {
            "integer" => value.as_i64().is_some(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            "string" => value.is_string(),
            _ => true,
        };
        if !ok {
            return Err(format!(
                "argument \"{key}\" must be of type {ty}, got {}",
                cut(&value.to_string(), 40)
            ));
        }
        if let Some(allowed) = spec.get("enum").and_then(Value::as_array) {
            if !allowed.contains(value) {
                return Err(format!(
                    "argument \"{key}\" must be one of {}",
                    Value::Array(allowed.clone())
                ));
            }
        }
        if let Some(n) = value.as_i64() {
            let min = spec.get("minimum").and_then(Value::as_i64);
            let max = spec.get("maximum").and_then(Value::as_i64);
            if min.is_some_and(|m| n < m) || max.is_some_and(|m| n > m) {
                return Err(format!(
                    "argument \"{key}\" = {n} is out of range [{}, {}]",
                    min.unwrap_or(i64::MIN),
                    max.unwrap_or(i64::MAX)
                ));
            }
        }
    }
    Ok(())
}
