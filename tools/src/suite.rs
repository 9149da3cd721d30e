//! The five tools of the RecThinker suite: user-side (user_profile, user_history),
//! collaborative (similar_users) and item-side (item_info, item_relations); the standard
//! registry adds our sixth, `rank_candidates` (`rank_tool.rs`).

use crate::registry::{Args, Registry, Tool};
use crate::world::{EpisodeView, World};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};

/// The standard registry: the paper's five tools and `rank_candidates`, observations capped
/// at `max_chars`.
pub fn standard(max_chars: usize) -> Registry {
    let mut tools = paper_tools();
    tools.push(Box::new(crate::rank_tool::RankCandidates));
    Registry::new(tools, max_chars)
}

/// The paper's five tools only.
pub fn paper(max_chars: usize) -> Registry {
    Registry::new(paper_tools(), max_chars)
}

fn paper_tools() -> Vec<Box<dyn Tool>> {
    vec![
        Box::new(UserProfile),
        Box::new(UserHistory),
        Box::new(SimilarUsers),
        Box::new(ItemInfo),
        Box::new(ItemRelations),
    ]
}

/// Where an item stands for this episode: "candidate 3", "in history (rated 4)" or nothing.
fn tag(ep: &EpisodeView, item: u32) -> String {
    if let Some(i) = ep.candidates.iter().position(|&c| c == item) {
        return format!("candidate {}", i + 1);
    }
    if let Some(e) = ep.history.iter().rev().find(|e| e.item == item) {
        return format!("in history, rated {}", e.rating);
    }
    String::new()
}

/// The item named by `candidate` (1-based) or `item_id` (raw id).
fn resolve(w: &World, ep: &EpisodeView, args: &Args) -> Result<(u32, String), String> {
    if let Some(c) = args.get("candidate").and_then(Value::as_i64) {
        let n = ep.candidates.len() as i64;
        if c < 1 || c > n {
            return Err(format!("candidate must be between 1 and {n}, got {c}"));
        }
        return Ok((ep.candidates[c as usize - 1], format!("Candidate {c}")));
    }
    if let Some(id) = args.get("item_id").and_then(Value::as_str) {
        return match w.item_by_raw_id.get(id) {
            Some(&i) => Ok((i, format!("Item {id}"))),
            None => Err(format!(
                "unknown item_id \"{}\"",
                crate::registry::cut(id, 40)
            )),
        };
    }
    Err("give \"candidate\" (1-based index) or \"item_id\"".into())
}

fn item_ref_schema(extra: Value) -> Value {
    let mut props = json!({
        "candidate": {"type": "integer", "minimum": 1, "maximum": 10, "description": "1-based index in the candidate list"},
        "item_id": {"type": "string", "description": "raw item id"}
    });
    if let (Some(p), Some(e)) = (props.as_object_mut(), extra.as_object()) {
        p.extend(e.clone());
    }
    json!({"type": "object", "properties": props, "required": []})
}

pub struct UserProfile;

impl Tool for UserProfile {
    fn name(&self) -> &'static str {
        "user_profile"
    }
    fn description(&self) -> &'static str {
        "Who the user is: demographics where known, how many items they rated and how, and their favourite genres or categories."
    }
    fn parameters(&self) -> Value {
        json!({"type": "object", "properties": {}, "required": []})
    }
    fn call(&self, w: &World, ep: &EpisodeView, _: &Args) -> Result<String, String> {
        let user = &w.data.users[ep.user as usize];
        let m = &user.meta;
        let mut parts = Vec::new();
        for (k, v) in [
            ("age", &m.age),
            ("gender", &m.gender),
            ("occupation", &m.occupation),
        ] {
            if let Some(v) = v {
                parts.push(format!("{k} {v}"));
            }
        }
        let mut out = format!("User {}", user.raw_id);
        if !parts.is_empty() {
            out.push_str(&format!(": {}", parts.join(", ")));
        }
        let h = ep.history;
        if h.is_empty() {
            out.push_str(". No interactions before now.");
            return Ok(out);
        }
        let mean = h.iter().map(|e| e.rating as f64).sum::<f64>() / h.len() as f64;
        let mut hist: BTreeMap<i64, usize> = BTreeMap::new();
        for e in h {
            *hist.entry(e.rating.round() as i64).or_default() += 1;
        }
        let dist: Vec<String> = hist.iter().rev().map(|(r, n)| format!("{r}:{n}")).collect();
        out.push_str(&format!(
            ".\nHistory: {} interactions, mean rating {mean:.2} (ratings {}).",
            h.len(),
            dist.join(" ")
        ));
        let mut genres: HashMap<&str, (usize, f64)> = HashMap::new();
        for e in h {
            for g in &w.data.items[e.item as usize].meta.categories {
                let s = genres.entry(g.as_str()).or_default();
                s.0 += 1;
                s.1 += e.rating as f64;
            }
        }
        let mut genres: Vec<(&str, (usize, f64))> = genres.into_iter().collect();
        genres.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.0.cmp(b.0)));
        if !genres.is_empty() {
            let top: Vec<String> = genres
                .iter()
                .take(6)
                .map(|(g, (n, s))| format!("{g} ({n}, mean {:.1})", s / *n as f64))
                .collect();
            out.push_str(&format!(
                "\nFavourite genres/categories (count, mean rating): {}.",
                top.join(", ")
            ));
        }
        let recent: Vec<String> = h
            .iter()
            .rev()
            .take(3)
            .map(|e| format!("{} ({})", w.title(e.item), e.rating))
            .collect();
        out.push_str(&format!("\nMost recent: {}.", recent.join("; ")));
        Ok(out)
    }
}

pub struct UserHistory;

impl Tool for UserHistory {
    fn name(&self) -> &'static str {
        "user_history"
    }
    fn description(&self) -> &'static str {
        "The user's past interactions with ratings, optionally filtered by genre/category or title keyword."
    }
    fn parameters(&self) -> Value {
        json!({"type": "object", "properties": {
            "genre": {"type": "string", "description": "keep items of this genre or category"},
            "keyword": {"type": "string", "description": "keep items whose title contains this text"},
            "min_rating": {"type": "number", "description": "keep items rated at least this"},
            "order": {"type": "string", "enum": ["recent", "oldest", "highest_rated", "lowest_rated"], "description": "default recent"},
            "limit": {"type": "integer", "minimum": 1, "maximum": 50, "description": "default 10"}
        }, "required": []})
    }
    fn call(&self, w: &World, ep: &EpisodeView, args: &Args) -> Result<String, String> {
        let genre = args
            .get("genre")
            .and_then(Value::as_str)
            .map(str::to_lowercase);
        let keyword = args
            .get("keyword")
            .and_then(Value::as_str)
            .map(str::to_lowercase);
        let min_rating = args.get("min_rating").and_then(Value::as_f64);
        let limit = args.get("limit").and_then(Value::as_i64).unwrap_or(10) as usize;
        let mut rows: Vec<(usize, &datasets::Event)> = ep
            .history
            .iter()
            .enumerate()
            .filter(|(_, e)| {
                let m = &w.data.items[e.item as usize].meta;
                genre.as_ref().is_none_or(|g| {
                    m.categories
                        .iter()
                        .any(|c| c.to_lowercase().contains(g.as_str()))
                }) && keyword
                    .as_ref()
                    .is_none_or(|k| m.title.to_lowercase().contains(k.as_str()))
                    && min_rating.is_none_or(|r| e.rating as f64 >= r)
            })
            .collect();
        match args
            .get("order")
            .and_then(Value::as_str)
            .unwrap_or("recent")
        {
            "oldest" => {}
            "highest_rated" => {
                rows.sort_by(|a, b| b.1.rating.total_cmp(&a.1.rating).then(b.0.cmp(&a.0)))
            }
            "lowest_rated" => {
                rows.sort_by(|a, b| a.1.rating.total_cmp(&b.1.rating).then(b.0.cmp(&a.0)))
            }
            _ => rows.reverse(),
        }
        let total = rows.len();
        if total == 0 {
            return Ok("No matching items in the user's history.".into());
        }
        let lines: Vec<String> = rows
            .iter()
            .take(limit)
            .map(|(_, e)| format!("- {} — rated {}", w.item_line(e.item, 4), e.rating))
            .collect();
        Ok(format!(
            "{} of {} matching items:\n{}",
            lines.len(),
            total,
            lines.join("\n")
        ))
    }
}

pub struct SimilarUsers;

impl Tool for SimilarUsers {
    fn name(&self) -> &'static str {
        "similar_users"
    }
    fn description(&self) -> &'static str {
        "Users with the most similar tastes (collaborative filtering) and what they liked; with only_candidates, how they rated this episode's candidates."
    }
    fn parameters(&self) -> Value {
        json!({"type": "object", "properties": {
            "k": {"type": "integer", "minimum": 1, "maximum": 20, "description": "how many similar users, default 5"},
            "only_candidates": {"type": "boolean", "description": "report only the candidates they interacted with"}
        }, "required": []})
    }
    fn call(&self, w: &World, ep: &EpisodeView, args: &Args) -> Result<String, String> {
        let k = args.get("k").and_then(Value::as_i64).unwrap_or(5) as usize;
        let neighbors: Vec<(u32, f32)> = ep
            .knowledge
            .models
            .userknn
            .neighbors
            .of(ep.user)
            .take(k)
            .collect();
        if neighbors.is_empty() {
            return Ok("No similar users found.".into());
        }
        if args
            .get("only_candidates")
            .and_then(Value::as_bool)
            .unwrap_or(false)
        {
            let cands: HashSet<u32> = ep.candidates.iter().copied().collect();
            let mut per_cand: BTreeMap<usize, Vec<f32>> = BTreeMap::new();
            for &(v, _) in &neighbors {
                for e in &ep.knowledge.sequences[v as usize] {
                    if cands.contains(&e.item) {
                        let idx = ep.candidates.iter().position(|&c| c == e.item).unwrap_or(0);
                        per_cand.entry(idx).or_default().push(e.rating);
                    }
                }
            }
            if per_cand.is_empty() {
                return Ok(format!(
                    "None of the {} most similar users interacted with any candidate.",
                    neighbors.len()
                ));
            }
            let lines: Vec<String> = per_cand
                .iter()
                .map(|(i, r)| {
                    format!(
                        "- candidate {} {}: {} of {} similar users, mean rating {:.1}",
                        i + 1,
                        w.title(ep.candidates[*i]),
                        r.len(),
                        neighbors.len(),
                        r.iter().sum::<f32>() / r.len() as f32
                    )
                })
                .collect();
            return Ok(format!(
                "Candidates among the {} most similar users' items:\n{}",
                neighbors.len(),
                lines.join("\n")
            ));
        }
        let lines: Vec<String> = neighbors
            .iter()
            .map(|&(v, sim)| {
                let seq = &ep.knowledge.sequences[v as usize];
                let liked: Vec<String> = seq
                    .iter()
                    .rev()
                    .filter(|e| e.rating >= 4.0)
                    .take(5)
                    .map(|e| {
                        let t = tag(ep, e.item);
                        if t.starts_with("candidate") {
                            format!("{} ({t})", w.title(e.item))
                        } else {
                            w.title(e.item)
                        }
                    })
                    .collect();
                format!(
                    "- user {} (similarity {sim:.2}, {} items) liked: {}",
                    w.data.users[v as usize].raw_id,
                    seq.len(),
                    liked.join("; ")
                )
            })
            .collect();
        Ok(format!(
            "{} most similar users:\n{}",
            neighbors.len(),
            lines.join("\n")
        ))
    }
}

pub struct ItemInfo;

impl Tool for ItemInfo {
    fn name(&self) -> &'static str {
        "item_info"
    }
    fn description(&self) -> &'static str {
        "Facts about one item: title, year, genres/categories, brand and price where known, popularity and mean rating."
    }
    fn parameters(&self) -> Value {
        item_ref_schema(json!({}))
    }
    fn call(&self, w: &World, ep: &EpisodeView, args: &Args) -> Result<String, String> {
        let (item, label) = resolve(w, ep, args)?;
        let m = &w.data.items[item as usize].meta;
        let mut out = format!("{label}: {}.", w.title(item));
        if !m.categories.is_empty() {
            out.push_str(&format!(
                "\nGenres/categories: {}.",
                m.categories.join(", ")
            ));
        }
        if let Some(b) = &m.brand {
            out.push_str(&format!("\nBrand: {b}."));
        }
        if let Some(p) = m.price {
            out.push_str(&format!("\nPrice: ${p:.2}."));
        }
        let stats = &ep.knowledge.item_stats;
        let s = &stats[item as usize];
        let rank = 1 + stats.iter().filter(|o| o.count > s.count).count();
        match s.mean_rating() {
            Some(mean) => out.push_str(&format!(
                "\nPopularity: {} interactions (rank {rank} of {}), mean rating {mean:.2}.",
                s.count,
                stats.len()
            )),
            None => out.push_str("\nPopularity: no interactions in the training data."),
        }
        if let Some(d) = &m.description {
            out.push_str(&format!("\nDescription: {}", crate::registry::cut(d, 300)));
        }
        let t = tag(ep, item);
        if !t.is_empty() && !label.starts_with("Candidate") {
            out.push_str(&format!("\n({t})"));
        }
        Ok(out)
    }
}

pub struct ItemRelations;

/// Knowledge-graph relation names as they appear in the data, and what the agent calls them.
const KG_RELATIONS: [(&str, &str); 6] = [
    ("film.film.directed_by", "director"),
    ("film.film.actor", "actor"),
    ("film.film.written_by", "writer"),
    ("film.film.produced_by", "producer"),
    ("film.film.genre", "genre"),
    ("film.film.sequel", "sequel"),
];

impl Tool for ItemRelations {
    fn name(&self) -> &'static str {
        "item_relations"
    }
    fn description(&self) -> &'static str {
        "How one item relates to others: shared director/actor/writer/producer/genre (knowledge graph), items liked together by the same users, and also-bought/brand links where the data has them. Marks candidates and items from the user's history."
    }
    fn parameters(&self) -> Value {
        item_ref_schema(
            json!({"relation": {"type": "string", "enum": ["any", "director", "actor", "writer", "producer", "genre", "sequel", "co_liked", "also_buy", "also_view", "brand"], "description": "default any"}}),
        )
    }
    fn call(&self, w: &World, ep: &EpisodeView, args: &Args) -> Result<String, String> {
        let (item, label) = resolve(w, ep, args)?;
        let want = args
            .get("relation")
            .and_then(Value::as_str)
            .unwrap_or("any");
        let mut sections = Vec::new();
        let relevant = |other: u32| other != item && !tag(ep, other).is_empty();
        // Knowledge graph: items sharing an entity through the same relation.
        for (rel_name, short) in KG_RELATIONS {
            if want != "any" && want != short {
                continue;
            }
            let Some(rel) = w.data.kg.relations.iter().position(|r| r == rel_name) else {
                continue;
            };
            let mut linked: Vec<u32> = w.kg_by_item[item as usize]
                .iter()
                .filter(|(r, _)| *r == rel as u32)
                .flat_map(|(r, e)| w.kg_by_entity.get(&(*r, *e)).into_iter().flatten().copied())
                .filter(|&o| relevant(o))
                .collect();
            linked.sort_unstable();
            linked.dedup();
            if !linked.is_empty() {
                let names: Vec<String> = linked
                    .iter()
                    .take(8)
                    .map(|&o| format!("{} ({})", w.title(o), tag(ep, o)))
                    .collect();
                sections.push(format!("Shares a {short} with: {}", names.join("; ")));
            }
        }
        if want == "any" || want == "co_liked" {
            let co: Vec<String> = ep
                .knowledge
                .models
                .cooc
                .counts
                .of(item)
                .filter(|&(o, _)| relevant(o))
                .take(8)
                .map(|(o, c)| format!("{} ({}, {} users)", w.title(o), tag(ep, o), c as u32))
                .collect();
            let top: Vec<String> = ep
                .knowledge
                .models
                .cooc
                .counts
                .of(item)
                .take(3)
                .map(|(o, c)| format!("{} ({} users)", w.title(o), c as u32))
                .collect();
            if !co.is_empty() {
                sections.push(format!(
                    "Liked together (same users) with: {}",
                    co.join("; ")
                ));
            }
            if !top.is_empty() {
                sections.push(format!(
                    "Most often liked together overall: {}",
                    top.join("; ")
                ));
            }
        }
        for (name, lists) in [("also_buy", &w.also_buy), ("also_view", &w.also_view)] {
            if want == "any" || want == name {
                let linked: Vec<String> = lists[item as usize]
                    .iter()
                    .filter(|&&o| relevant(o))
                    .take(8)
                    .map(|&o| format!("{} ({})", w.title(o), tag(ep, o)))
                    .collect();
                if !linked.is_empty() {
                    sections.push(format!(
                        "{} links: {}",
                        name.replace('_', " "),
                        linked.join("; ")
                    ));
                }
            }
        }
        if want == "any" || want == "brand" {
            if let Some(brand) = &w.data.items[item as usize].meta.brand {
                let same: Vec<String> = ep
                    .candidates
                    .iter()
                    .chain(ep.history.iter().map(|e| &e.item))
                    .copied()
                    .filter(|&o| {
                        relevant(o) && w.data.items[o as usize].meta.brand.as_ref() == Some(brand)
                    })
                    .take(8)
                    .map(|o| format!("{} ({})", w.title(o), tag(ep, o)))
                    .collect();
                if !same.is_empty() {
                    sections.push(format!("Same brand ({brand}): {}", same.join("; ")));
                }
            }
        }
        if sections.is_empty() {
            return Ok(format!(
                "{label} ({}): no {} relations to the candidates or the user's history.",
                w.title(item),
                if want == "any" { "known" } else { want }
            ));
        }
        Ok(format!(
            "{label} ({}):\n{}",
            w.title(item),
            sections.join("\n")
        ))
    }
}
