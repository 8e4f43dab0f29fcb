//! Notebook parameters as papermill handles them: `-p NAME VALUE` typed (True/False, None, an
//! integer, a float, else a string; `-r` keeps a string), rendered as source code in the
//! kernel's language, and injected as a code cell tagged `injected-parameters` right after
//! the cell tagged `parameters` (or in place of an earlier injected cell, or first when the
//! notebook has no `parameters` cell).
//!
//! The rendering follows papermill 2.6's translators, so the injected cell reads the same:
//! a `# Parameters` comment, then `name = value` lines. Strings are double-quoted with
//! Python's `unicode_escape` rules (backslash, \t \n \r, other control and Latin-1 characters
//! as \xhh, the rest of Unicode as \uhhhh / \Uhhhhhhhh) and `"` escaped; floats as Python's
//! `repr` writes them. One deliberate difference: papermill writes R's non-finite floats as
//! Python spells them (`inf`, `nan`: errors in R); here they are `Inf`, `-Inf`, `NaN`.
//! Names are checked to be identifiers, so a parameter cannot smuggle code into the cell.

use serde_json::{Value, json};

use super::notebook::{Notebook, has_tag, new_code_cell};

/// A parameter's value, typed.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    /// A string.
    Str(String),
    /// An integer, in canonical decimal (any size, as Python's int).
    Int(String),
    /// A float.
    Float(f64),
    /// True / False.
    Bool(bool),
    /// None.
    None,
}

/// A named, typed parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    /// The variable name.
    pub name: String,
    /// Its value.
    pub value: ParamValue,
}

/// A language the parameters can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    /// Python (also PySpark kernels).
    Python,
    /// R (also SparkR kernels).
    R,
}

impl Language {
    /// The language for a kernel language name (case-insensitive), if supported.
    pub fn from_name(name: &str) -> Option<Language> {
        match name.to_ascii_lowercase().as_str() {
            "python" | "python3" | "pyspark" => Some(Language::Python),
            "r" | "sparkr" => Some(Language::R),
            _ => None,
        }
    }
}

/// Types `value` as papermill's command line does.
pub fn resolve_type(value: &str) -> ParamValue {
    match value {
        "True" => return ParamValue::Bool(true),
        "False" => return ParamValue::Bool(false),
        "None" => return ParamValue::None,
        _ => {}
    }
    if let Some(i) = python_int(value) {
        return ParamValue::Int(i);
    }
    if let Some(f) = python_float(value) {
        return ParamValue::Float(f);
    }
    ParamValue::Str(value.to_owned())
}

/// Builds the parameters from `-p` and `-r` pairs (flattened), checking the names; a name
/// given twice keeps its last value, in its first place (as a Python dict does).
pub fn from_pairs(typed: &[String], raw: &[String]) -> Result<Vec<Param>, String> {
    let mut out: Vec<Param> = Vec::new();
    let pairs = typed
        .chunks(2)
        .map(|p| (p, true))
        .chain(raw.chunks(2).map(|p| (p, false)));
    for (pair, resolve) in pairs {
        let [name, value] = pair else {
            return Err("-p/-r need a NAME and a VALUE".into());
        };
        check_name(name)?;
        let value = if resolve {
            resolve_type(value)
        } else {
            ParamValue::Str(value.clone())
        };
        match out.iter_mut().find(|p| &p.name == name) {
            Some(p) => p.value = value,
            None => out.push(Param {
                name: name.clone(),
                value,
            }),
        }
    }
    Ok(out)
}

/// Longest parameter name.
const MAX_NAME: usize = 256;

fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "parameter name {name:?} is not a variable name: use ASCII letters, digits, '_' (and '.' for R), not starting with a digit, at most {MAX_NAME} characters"
        ))
    }
}

/// Python's `int(s)`, canonical: optional sign, digits with single `_` between them.
fn python_int(s: &str) -> Option<String> {
    let t = s.trim();
    let (neg, digits) = match t.as_bytes().first()? {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    if !valid_digit_run(digits) {
        return None;
    }
    let plain: String = digits.chars().filter(|c| *c != '_').collect();
    let trimmed = plain.trim_start_matches('0');
    let body = if trimmed.is_empty() { "0" } else { trimmed };
    Some(if neg && body != "0" {
        format!("-{body}")
    } else {
        body.to_owned()
    })
}

/// Digits, with `_` only between two digits.
fn valid_digit_run(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter().enumerate().all(|(i, c)| {
            c.is_ascii_digit()
                || (*c == b'_'
                    && i > 0
                    && b[i - 1].is_ascii_digit()
                    && b.get(i + 1).is_some_and(u8::is_ascii_digit))
        })
}

/// Python's `float(s)`.
fn python_float(s: &str) -> Option<f64> {
    let t = s.trim();
    let b = t.as_bytes();
    // Underscores only between digits, as Python allows; Rust's parser takes none.
    let underscores_ok = b.iter().enumerate().all(|(i, c)| {
        *c != b'_'
            || (i > 0 && b[i - 1].is_ascii_digit() && b.get(i + 1).is_some_and(u8::is_ascii_digit))
    });
    if !underscores_ok || t.is_empty() {
        return None;
    }
    t.replace('_', "").parse::<f64>().ok()
}

/// `v` as Python's `repr(float)` writes it (shortest round-trip digits; scientific notation
/// below 1e-4 and from 1e16).
pub fn python_float_repr(v: f64) -> String {
    if v == 0.0 {
        return if v.is_sign_negative() { "-0.0" } else { "0.0" }.to_owned();
    }
    let sci = format!("{:e}", v.abs());
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("{:e} writes an integer exponent");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let sign = if v < 0.0 { "-" } else { "" };
    let n = digits.len() as i32;
    let body = if (-4..16).contains(&exp) {
        if exp >= 0 {
            if n <= exp + 1 {
                format!("{digits}{}.0", "0".repeat((exp + 1 - n) as usize))
            } else {
                let (a, b) = digits.split_at((exp + 1) as usize);
                format!("{a}.{b}")
            }
        } else {
            format!("0.{}{digits}", "0".repeat((-exp - 1) as usize))
        }
    } else {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{first}{frac}e{esign}{:02}", exp.abs())
    };
    format!("{sign}{body}")
}

/// A string as papermill quotes it (Python's `unicode_escape`, then `"` escaped).
pub fn escaped_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        let u = c as u32;
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '"' => out.push_str("\\\""),
            _ if u < 0x20 || (0x7f..0x100).contains(&u) => out.push_str(&format!("\\x{u:02x}")),
            _ if u >= 0x10000 => out.push_str(&format!("\\U{u:08x}")),
            _ if u >= 0x100 => out.push_str(&format!("\\u{u:04x}")),
            _ => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One value in `lang`.
pub fn render_value(lang: Language, v: &ParamValue) -> String {
    match (lang, v) {
        (_, ParamValue::Str(s)) => escaped_str(s),
        (_, ParamValue::Int(i)) => i.clone(),
        (Language::Python, ParamValue::Bool(b)) => if *b { "True" } else { "False" }.into(),
        (Language::R, ParamValue::Bool(b)) => if *b { "TRUE" } else { "FALSE" }.into(),
        (Language::Python, ParamValue::None) => "None".into(),
        (Language::R, ParamValue::None) => "NULL".into(),
        (_, ParamValue::Float(f)) if f.is_finite() => python_float_repr(*f),
        (Language::Python, ParamValue::Float(f)) if f.is_nan() => "float('nan')".into(),
        (Language::Python, ParamValue::Float(f)) if *f < 0.0 => "float('-inf')".into(),
        (Language::Python, ParamValue::Float(_)) => "float('inf')".into(),
        (Language::R, ParamValue::Float(f)) if f.is_nan() => "NaN".into(),
        (Language::R, ParamValue::Float(f)) if *f < 0.0 => "-Inf".into(),
        (Language::R, ParamValue::Float(_)) => "Inf".into(),
    }
}

/// The injected cell's source.
pub fn render_cell(lang: Language, params: &[Param]) -> String {
    let mut s = String::from("# Parameters\n");
    for p in params {
        let name = match lang {
            // Leading '_' are not legal in R names; papermill drops them too.
            Language::R => p.name.trim_start_matches('_'),
            Language::Python => &p.name,
        };
        s.push_str(&format!("{name} = {}\n", render_value(lang, &p.value)));
    }
    s
}

/// The parameters as JSON, for `metadata.papermill.parameters`.
pub fn to_json(params: &[Param]) -> Value {
    let mut m = serde_json::Map::new();
    for p in params {
        let v = match &p.value {
            ParamValue::Str(s) => json!(s),
            ParamValue::Int(i) => i
                .parse::<i64>()
                .map(Value::from)
                .unwrap_or_else(|_| json!(i)),
            ParamValue::Float(f) => serde_json::Number::from_f64(*f)
                .map(Value::Number)
                .unwrap_or_else(|| json!(python_float_repr(*f))),
            ParamValue::Bool(b) => json!(b),
            ParamValue::None => Value::Null,
        };
        m.insert(p.name.clone(), v);
    }
    Value::Object(m)
}

/// Injects the parameters cell into `nb` as papermill does; returns its index.
pub fn inject(nb: &mut Notebook, lang: Language, params: &[Param]) -> usize {
    let cell = new_code_cell(
        &render_cell(lang, params),
        &["injected-parameters"],
        nb.wants_cell_ids(),
    );
    let injected = nb
        .cells()
        .iter()
        .position(|c| has_tag(c, "injected-parameters"));
    let tagged = nb.cells().iter().position(|c| has_tag(c, "parameters"));
    match (injected, tagged) {
        (Some(i), _) => {
            nb.replace_cell(i, cell);
            i
        }
        (None, Some(p)) => {
            nb.insert_cell(p + 1, cell);
            p + 1
        }
        (None, None) => {
            nb.insert_cell(0, cell);
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_typed_as_papermill_types_them() {
        assert_eq!(resolve_type("True"), ParamValue::Bool(true));
        assert_eq!(resolve_type("true"), ParamValue::Str("true".into()));
        assert_eq!(resolve_type("None"), ParamValue::None);
        assert_eq!(resolve_type(" 007 "), ParamValue::Int("7".into()));
        assert_eq!(resolve_type("-1_000"), ParamValue::Int("-1000".into()));
        assert_eq!(resolve_type("1__0"), ParamValue::Str("1__0".into()));
        assert_eq!(
            resolve_type("123456789012345678901234567890"),
            ParamValue::Int("123456789012345678901234567890".into())
        );
        assert_eq!(resolve_type("2.5"), ParamValue::Float(2.5));
        assert_eq!(resolve_type("1e3"), ParamValue::Float(1000.0));
        assert!(matches!(resolve_type("nan"), ParamValue::Float(f) if f.is_nan()));
        assert_eq!(
            resolve_type("-Infinity"),
            ParamValue::Float(f64::NEG_INFINITY)
        );
        assert_eq!(resolve_type("abc"), ParamValue::Str("abc".into()));
        assert_eq!(resolve_type(""), ParamValue::Str(String::new()));
    }

    #[test]
    fn floats_read_as_python_repr_writes_them() {
        for (v, s) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (-2.5, "-2.5"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (1.5e-5, "1.5e-05"),
            (0.0001, "0.0001"),
            (123.456, "123.456"),
            (1e300, "1e+300"),
            (-0.0, "-0.0"),
            (5e-324, "5e-324"),
        ] {
            assert_eq!(python_float_repr(v), s, "{v}");
        }
    }

    #[test]
    fn strings_are_escaped_as_unicode_escape_does() {
        assert_eq!(escaped_str("plain"), "\"plain\"");
        assert_eq!(escaped_str("a\"b'c\\"), "\"a\\\"b'c\\\\\"");
        assert_eq!(escaped_str("t\tn\nr\r\x01"), "\"t\\tn\\nr\\r\\x01\"");
        assert_eq!(escaped_str("é€😀"), "\"\\xe9\\u20ac\\U0001f600\"");
    }

    #[test]
    fn cells_render_per_language_and_names_are_checked() {
        let p = from_pairs(
            &[
                "a".into(),
                "1".into(),
                "b".into(),
                "x".into(),
                "a".into(),
                "2.0".into(),
            ],
            &["_c".into(), "True".into()],
        )
        .unwrap();
        assert_eq!(
            render_cell(Language::Python, &p),
            "# Parameters\na = 2.0\nb = \"x\"\n_c = \"True\"\n"
        );
        assert_eq!(
            render_cell(
                Language::R,
                &[
                    Param {
                        name: "_n".into(),
                        value: ParamValue::None
                    },
                    Param {
                        name: "f".into(),
                        value: ParamValue::Bool(false)
                    }
                ]
            ),
            "# Parameters\nn = NULL\nf = FALSE\n"
        );
        let e = from_pairs(&["x=1;import os".into(), "1".into()], &[]).unwrap_err();
        assert!(e.contains("not a variable name"), "{e}");
        assert!(from_pairs(&["1x".into(), "1".into()], &[]).is_err());
    }

    #[test]
    fn the_injected_cell_follows_the_parameters_cell_or_replaces_an_old_one() {
        let cells = |tags: &[&[&str]]| {
            let cells: Vec<Value> = tags
                .iter()
                .map(|t| json!({"cell_type": "code", "source": "", "metadata": {"tags": t}, "outputs": [], "execution_count": null}))
                .collect();
            Notebook::from_value(
                json!({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": cells}),
            )
            .unwrap()
        };
        let p = [Param {
            name: "x".into(),
            value: ParamValue::Int("1".into()),
        }];
        let mut nb = cells(&[&[], &["parameters"], &[]]);
        assert_eq!(inject(&mut nb, Language::Python, &p), 2);
        assert_eq!(nb.len(), 4);
        assert!(has_tag(&nb.cells()[2], "injected-parameters"));
        assert_eq!(nb.cells()[2]["id"].as_str().unwrap().len(), 8);
        let mut nb = cells(&[&["parameters"], &["injected-parameters"], &[]]);
        assert_eq!(inject(&mut nb, Language::Python, &p), 1);
        assert_eq!(nb.len(), 3);
        assert_eq!(nb.cells()[1]["source"], json!("# Parameters\nx = 1\n"));
        let mut nb = cells(&[&[], &[]]);
        assert_eq!(inject(&mut nb, Language::Python, &p), 0);
    }
}
