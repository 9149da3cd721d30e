//! The common in-memory form every reader produces: raw ids as strings, metadata as found.

use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq)]
pub struct Interaction {
    pub user: String,
    pub item: String,
    pub rating: f32,
    /// Seconds since the epoch.
    pub timestamp: i64,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ItemMeta {
    pub title: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub year: Option<i32>,
    /// Genres (MovieLens) or categories (Amazon).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub categories: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub brand: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub price: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub description: Option<String>,
    /// Raw item ids (Amazon `also_buy` / `bought_together`).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub also_buy: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub also_view: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UserMeta {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub age: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub gender: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub occupation: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub zip: Option<String>,
}

/// One knowledge-graph fact about an item: (item raw id, relation, entity id).
#[derive(Debug, Clone, PartialEq)]
pub struct KgFact {
    pub item: String,
    pub relation: String,
    pub entity: String,
}

#[derive(Debug, Default)]
pub struct RawDataset {
    pub name: String,
    pub interactions: Vec<Interaction>,
    pub items: HashMap<String, ItemMeta>,
    pub users: HashMap<String, UserMeta>,
    pub kg: Vec<KgFact>,
}

/// "Title (1995)" -> ("Title", Some(1995)).
pub fn split_title_year(title: &str) -> (String, Option<i32>) {
    let t = title.trim();
    if let Some(open) = t.rfind('(') {
        let inner = &t[open + 1..];
        if let Some(year) = inner
            .strip_suffix(')')
            .and_then(|y| y.trim().parse::<i32>().ok())
        {
            if (1800..=2100).contains(&year) {
                return (t[..open].trim().to_string(), Some(year));
            }
        }
    }
    (t.to_string(), None)
}

/// Bytes as latin-1 (MovieLens files are latin-1, not UTF-8).
pub fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| b as char).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn title_year() {
        assert_eq!(
            super::split_title_year("Toy Story (1995)"),
            ("Toy Story".into(), Some(1995))
        );
        assert_eq!(
            super::split_title_year(
                "City of Lost Children, The (Cité des enfants perdus, La) (1995)"
            )
            .1,
            Some(1995)
        );
        assert_eq!(super::split_title_year("Heat"), ("Heat".into(), None));
    }
}
