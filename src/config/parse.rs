//! The first pass over the file: TOML syntax, then the shape of every table (unknown keys and
//! wrong types), reported all at once with key paths, lines and, for a misspelt key, the closest
//! valid name.
//!
//! serde stops at the first error, so each error is recorded with the key it points at (found
//! by its position in the parsed document), that key is removed, and the document deserialized
//! again, until it fits `RawConfig`. Validation of the values (`Validator`) then runs on what is
//! left, and its issues under a removed key are dropped (the key's own problem is already
//! listed).

use std::fmt::Write as _;
use std::ops::Range;

use serde::Deserialize as _;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::ConfigIssue;
use super::raw::RawConfig;

/// More problems than this in one file are not worth listing one by one.
const MAX_SHAPE_ERRORS: usize = 100;

/// What the first pass found.
pub(super) struct Shaped {
    pub raw: RawConfig,
    pub issues: Vec<ConfigIssue>,
    /// Keys removed because of their issue (validation issues under them are dropped).
    pub removed: Vec<String>,
}

/// Parses `text`: `Err` with every syntax error (rendered by the TOML parser with line and
/// column), else the raw configuration with every unknown key and wrong type listed.
pub(super) fn shape(text: &str) -> Result<Shaped, String> {
    let (mut doc, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        let mut message = String::new();
        for mut e in errors {
            e.set_input(Some(text));
            let _ = write!(message, "{}", e.to_string().trim_end());
            message.push('\n');
        }
        return Err(message.trim_end().to_owned());
    }
    let mut issues = Vec::new();
    let mut removed = Vec::new();
    loop {
        let error = match RawConfig::deserialize(toml::de::Deserializer::from(doc.clone())) {
            Ok(raw) => {
                // In file order (serde visits keys in its own order).
                issues.sort_by_key(|(pos, _)| *pos);
                let issues = issues.into_iter().map(|(_, issue)| issue).collect();
                return Ok(Shaped {
                    raw,
                    issues,
                    removed,
                });
            }
            Err(e) => e,
        };
        let located = error
            .span()
            .and_then(|span| locate_in_table(doc.get_ref(), &span).map(|path| (span, path)));
        let Some((span, path)) = located.filter(|_| issues.len() < MAX_SHAPE_ERRORS) else {
            // Not tied to a key (or too many): report it as it is and stop here.
            return Err(error.message().to_owned());
        };
        let key = display_path(&path);
        issues.push((
            span.start,
            ConfigIssue {
                key: key.clone(),
                message: describe(error.message(), &span, text),
            },
        ));
        if !remove(doc.get_mut(), &path) {
            return Err(error.message().to_owned());
        }
        removed.push(key);
    }
}

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// `service[0].token.issuer`, as validation names keys.
fn display_path(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => {
                let _ = write!(out, "[{i}]");
            }
        }
    }
    out
}

/// The innermost key whose name or value holds the error's position.
fn locate_in_table(table: &DeTable<'_>, err: &Range<usize>) -> Option<Vec<Seg>> {
    for (k, v) in table {
        let key = Seg::Key(k.get_ref().to_string());
        if k.span().contains(&err.start) {
            return Some(vec![key]);
        }
        if let Some(mut path) = locate_in_value(v, err) {
            path.insert(0, key);
            return Some(path);
        }
    }
    None
}

fn locate_in_value(v: &Spanned<DeValue<'_>>, err: &Range<usize>) -> Option<Vec<Seg>> {
    match v.get_ref() {
        DeValue::Table(t) => {
            if let Some(path) = locate_in_table(t, err) {
                return Some(path);
            }
        }
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                if let Some(mut path) = locate_in_value(item, err) {
                    path.insert(0, Seg::Index(i));
                    return Some(path);
                }
            }
        }
        _ => {}
    }
    let span = v.span();
    (span.start <= err.start && err.end <= span.end && !span.is_empty()).then(Vec::new)
}

/// Removes the entry at `path` (not the root); false if there is none.
fn remove(table: &mut DeTable<'_>, path: &[Seg]) -> bool {
    let Some((Seg::Key(first), rest)) = path.split_first() else {
        return false;
    };
    if rest.is_empty() {
        return table.remove(first.as_str()).is_some();
    }
    table
        .get_mut(first.as_str())
        .is_some_and(|v| remove_in_value(v.get_mut(), rest))
}

fn remove_in_value(value: &mut DeValue<'_>, path: &[Seg]) -> bool {
    match (value, path) {
        (DeValue::Table(t), _) => remove(t, path),
        (DeValue::Array(items), [Seg::Index(i), rest @ ..]) => {
            if rest.is_empty() {
                if *i >= items.len() {
                    return false;
                }
                // `DeArray` has no `remove`: rebuild it without the element.
                let all = std::mem::replace(items, std::iter::empty().collect());
                *items = all
                    .into_iter()
                    .enumerate()
                    .filter_map(|(j, item)| (j != *i).then_some(item))
                    .collect();
                return true;
            }
            items
                .get_mut(*i)
                .is_some_and(|item| remove_in_value(item.get_mut(), rest))
        }
        _ => false,
    }
}

/// The operator's message for one serde error at `span`: its line and column, and for an
/// unknown key the closest valid name (or the valid names, when none is close).
fn describe(message: &str, span: &Range<usize>, text: &str) -> String {
    let (line, column) = line_column(text, span.start);
    let at = format!("line {line}, column {column}");
    let Some(rest) = message.strip_prefix("unknown field ") else {
        return format!("{message} ({at})");
    };
    let names = backticked(rest);
    let Some((given, valid)) = names.split_first() else {
        return format!("unknown key ({at})");
    };
    match closest(given, valid) {
        Some(best) => format!("unknown key ({at}); did you mean `{best}`?"),
        None if valid.is_empty() => format!("unknown key ({at}); this table takes no keys"),
        None => format!(
            "unknown key ({at}); valid keys here: {}",
            valid
                .iter()
                .map(|v| format!("`{v}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// 1-based line and column (in characters) of byte `offset`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The names between backticks, in order (serde's "unknown field `x`, expected one of `a`, `b`").
fn backticked(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// The valid name closest to `given`, if it is close enough to be a likely typo: within about a
/// third of its length in edits, or containing it (`timeout` for `scoring_timeout_ms`).
pub(super) fn closest<'a>(given: &str, valid: &[&'a str]) -> Option<&'a str> {
    let given_lower = given.to_ascii_lowercase();
    valid
        .iter()
        .map(|v| (strsim::damerau_levenshtein(&given_lower, v), *v))
        .filter(|(distance, v)| {
            *distance <= (v.len().max(given.len()) / 3).max(1)
                || (given.len() >= 4 && v.contains(given_lower.as_str()))
        })
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_names() {
        let valid = [
            "max_concurrent_requests",
            "max_request_wait_ms",
            "max_queue_length",
            "scoring_timeout_ms",
        ];
        assert_eq!(
            closest("max_concurent_requests", &valid),
            Some("max_concurrent_requests")
        );
        assert_eq!(
            closest("scoring_timout_ms", &valid),
            Some("scoring_timeout_ms")
        );
        assert_eq!(
            closest("Max_Queue_Length", &valid),
            Some("max_queue_length")
        );
        assert_eq!(closest("colour", &valid), None);
    }

    #[test]
    fn every_shape_error_is_found_with_its_path_and_line() {
        let text = "[server]\nlisten = 5\ncompute_typ = \"x\"\n\n[[service]]\nname = \"a\"\nrate_limit = { rps = 3 }\n[[service]]\nname = \"b\"\nscoring_timout_ms = 5\nallow_cidrs = [\"10.0.0.0/8\", 7]\n[service.token]\nlifetime_s = \"long\"\n";
        let shaped = shape(text).expect("valid TOML");
        let got: Vec<String> = shaped.issues.iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            [
                "server.listen: invalid type: integer `5`, expected a string (line 2, column 10)",
                "server.compute_typ: unknown key (line 3, column 1); did you mean `compute_type`?",
                "service[0].rate_limit.rps: unknown key (line 7, column 16); valid keys here: `requests_per_second`, `burst`",
                "service[1].scoring_timout_ms: unknown key (line 10, column 1); did you mean `scoring_timeout_ms`?",
                "service[1].allow_cidrs[1]: invalid type: integer `7`, expected a string (line 11, column 30)",
                "service[1].token.lifetime_s: invalid type: string \"long\", expected u64 (line 13, column 14)",
            ]
        );
        assert_eq!(shaped.raw.services.len(), 2);
        assert_eq!(shaped.removed.len(), 6);
    }

    #[test]
    fn syntax_errors_are_rendered_with_their_position() {
        let err = shape("[server\nlisten = \"x\"\n")
            .err()
            .expect("syntax error");
        assert!(err.contains("line 1"), "{err}");
    }
}
