//! The notebook document: nbformat 4 read from a file, checked, and written back the way
//! nbformat writes it.
//!
//! The document stays a `serde_json::Value`, so every field, known or not (widgets state,
//! extensions' metadata, attachments), is written back verbatim; only the cells' outputs,
//! execution counts and execution metadata change. Output is what nbformat's own writer
//! produces: keys sorted, one-space indent, non-ASCII kept, multi-line strings (sources, text
//! outputs, `text/*` data) split into lists of lines, a final newline, so a notebook run here
//! diffs cleanly against one run by papermill or saved by JupyterLab.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

/// Largest notebook read (a bound against reading a device or a huge file by mistake).
pub const MAX_NOTEBOOK_BYTES: u64 = 512 * 1024 * 1024;

/// Why a notebook cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum NotebookError {
    /// The file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The notebook.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Larger than [`MAX_NOTEBOOK_BYTES`].
    #[error("{} is larger than {MAX_NOTEBOOK_BYTES} bytes; is it a notebook?", path.display())]
    TooLarge {
        /// The notebook.
        path: PathBuf,
    },
    /// Not JSON.
    #[error("{} is not JSON ({source}); give an .ipynb file", path.display())]
    NotJson {
        /// The notebook.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
    /// JSON, but not nbformat 4.
    #[error("{} is not an nbformat 4 notebook: {what} (open and save it in JupyterLab, or run `jupyter nbconvert --to notebook` to upgrade it)", path.display())]
    Shape {
        /// The notebook.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The output cannot be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The output path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// An nbformat 4 notebook.
#[derive(Debug, Clone)]
pub struct Notebook {
    doc: Map<String, Value>,
}

impl Notebook {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Notebook, NotebookError> {
        let read = |source| NotebookError::Read {
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read)?;
        if meta.len() > MAX_NOTEBOOK_BYTES {
            return Err(NotebookError::TooLarge {
                path: path.to_owned(),
            });
        }
        let bytes = std::fs::read(path).map_err(read)?;
        let doc: Value =
            serde_json::from_slice(&bytes).map_err(|source| NotebookError::NotJson {
                path: path.to_owned(),
                source,
            })?;
        Notebook::from_value(doc).map_err(|what| NotebookError::Shape {
            path: path.to_owned(),
            what,
        })
    }

    /// Checks a parsed document; the error says what is wrong.
    pub fn from_value(doc: Value) -> Result<Notebook, String> {
        let Value::Object(doc) = doc else {
            return Err("the top level is not an object".into());
        };
        match doc.get("nbformat").and_then(Value::as_u64) {
            Some(4) => {}
            Some(v) => return Err(format!("nbformat is {v}, only 4 is supported")),
            None => return Err("no `nbformat` number".into()),
        }
        if !doc.get("metadata").is_some_and(Value::is_object) {
            return Err("no `metadata` object".into());
        }
        let Some(cells) = doc.get("cells").and_then(Value::as_array) else {
            return Err("no `cells` list".into());
        };
        for (i, cell) in cells.iter().enumerate() {
            let n = i + 1;
            let Some(c) = cell.as_object() else {
                return Err(format!("cell {n} is not an object"));
            };
            match c.get("cell_type").and_then(Value::as_str) {
                Some("code" | "markdown" | "raw") => {}
                other => return Err(format!("cell {n} has cell_type {other:?}")),
            }
            match c.get("source") {
                Some(Value::String(_)) => {}
                Some(Value::Array(lines)) if lines.iter().all(Value::is_string) => {}
                _ => {
                    return Err(format!(
                        "cell {n} has no `source` string or list of strings"
                    ));
                }
            }
            if c.get("metadata").is_some_and(|m| !m.is_object()) {
                return Err(format!("cell {n} has a `metadata` that is not an object"));
            }
        }
        Ok(Notebook { doc })
    }

    /// The whole document.
    pub fn doc(&self) -> &Map<String, Value> {
        &self.doc
    }

    /// The notebook-level metadata.
    pub fn metadata_mut(&mut self) -> &mut Map<String, Value> {
        object_field(&mut self.doc, "metadata")
    }

    /// The number of cells.
    pub fn len(&self) -> usize {
        self.cells().len()
    }

    /// True with no cells.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cells.
    pub fn cells(&self) -> &[Value] {
        self.doc
            .get("cells")
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice)
    }

    /// Cell `i` (0-based) as an object; checked at load, so present.
    pub fn cell_mut(&mut self, i: usize) -> &mut Map<String, Value> {
        let cells = self.doc.get_mut("cells").and_then(Value::as_array_mut);
        cells
            .and_then(|c| c.get_mut(i))
            .and_then(Value::as_object_mut)
            .expect("cells are checked at load")
    }

    /// Inserts `cell` at `index`.
    pub fn insert_cell(&mut self, index: usize, cell: Value) {
        if let Some(cells) = self.doc.get_mut("cells").and_then(Value::as_array_mut) {
            cells.insert(index.min(cells.len()), cell);
        }
    }

    /// Removes cell `index`.
    pub fn remove_cell(&mut self, index: usize) {
        if let Some(cells) = self.doc.get_mut("cells").and_then(Value::as_array_mut)
            && index < cells.len()
        {
            cells.remove(index);
        }
    }

    /// Replaces cell `index`.
    pub fn replace_cell(&mut self, index: usize, cell: Value) {
        if let Some(slot) = self
            .doc
            .get_mut("cells")
            .and_then(Value::as_array_mut)
            .and_then(|c| c.get_mut(index))
        {
            *slot = cell;
        }
    }

    /// True if cells carry ids (nbformat 4.5 and later), so new cells need one.
    pub fn wants_cell_ids(&self) -> bool {
        self.doc
            .get("nbformat_minor")
            .and_then(Value::as_u64)
            .is_some_and(|m| m >= 5)
    }

    /// `metadata.kernelspec.name`.
    pub fn kernel_name(&self) -> Option<&str> {
        self.doc
            .get("metadata")?
            .get("kernelspec")?
            .get("name")?
            .as_str()
    }

    /// The language, as papermill finds it: `metadata.kernelspec.language`, else
    /// `metadata.language_info.name`.
    pub fn language(&self) -> Option<&str> {
        let m = self.doc.get("metadata")?;
        m.get("kernelspec")
            .and_then(|k| k.get("language"))
            .and_then(Value::as_str)
            .or_else(|| m.get("language_info")?.get("name")?.as_str())
    }

    /// The notebook as nbformat writes it.
    pub fn to_nbformat_json(&self) -> String {
        let mut doc = Value::Object(self.doc.clone());
        split_multiline(&mut doc);
        let mut out = Vec::new();
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b" ");
        let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
        serde::Serialize::serialize(&doc, &mut ser).expect("a Value always serializes");
        let mut s = String::from_utf8(out).expect("serde_json writes UTF-8");
        s.push('\n');
        s
    }

    /// Writes the notebook to `path`: a temporary file next to it, then a rename, so a reader
    /// never sees half a notebook and a failed write keeps the previous file.
    pub fn save(&self, path: &Path) -> Result<(), NotebookError> {
        let err = |source| NotebookError::Write {
            path: path.to_owned(),
            source,
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "notebook".into());
        // A new file of a random name (create_new): a link planted in a shared directory is
        // never followed.
        let tmp = path.with_file_name(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            f.write_all(self.to_nbformat_json().as_bytes())?;
            f.sync_all()
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(err(e));
        }
        std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            err(e)
        })
    }
}

/// The cell's source as one string.
pub fn source_text(cell: &Map<String, Value>) -> String {
    match cell.get("source") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(lines)) => lines.iter().filter_map(Value::as_str).collect(),
        _ => String::new(),
    }
}

/// True if the cell's `metadata.tags` holds `tag`.
pub fn has_tag(cell: &Value, tag: &str) -> bool {
    cell.get("metadata")
        .and_then(|m| m.get("tags"))
        .and_then(Value::as_array)
        .is_some_and(|tags| tags.iter().any(|t| t.as_str() == Some(tag)))
}

/// A new code cell holding `source`, tagged `tags`, as nbformat's `new_code_cell` makes it.
pub fn new_code_cell(source: &str, tags: &[&str], with_id: bool) -> Value {
    let mut cell = json!({
        "cell_type": "code",
        "execution_count": null,
        "metadata": {"tags": tags},
        "outputs": [],
        "source": source,
    });
    if with_id {
        // nbformat's own ids: 8 random hex digits.
        let id = uuid::Uuid::new_v4().simple().to_string();
        cell["id"] = Value::String(id[..8].to_owned());
    }
    cell
}

/// `map[key]` as an object, made one if missing or not an object.
pub fn object_field<'a>(map: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let slot = map.entry(key).or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    slot.as_object_mut().expect("made an object above")
}

/// Lines of `s` with their line ends, as Python's `str.splitlines(True)` splits them for
/// nbformat (the ends Python knows: \n, \r\n, \r, \v, \f, \x1c-\x1e, \x85, \u2028, \u2029).
pub fn split_lines(s: &str) -> Vec<Value> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut it = s.char_indices().peekable();
    while let Some((i, c)) = it.next() {
        let end = match c {
            '\r' => match it.peek() {
                Some((_, '\n')) => {
                    it.next();
                    i + 2
                }
                _ => i + 1,
            },
            '\n' | '\x0b' | '\x0c' | '\x1c' | '\x1d' | '\x1e' | '\u{85}' | '\u{2028}'
            | '\u{2029}' => i + c.len_utf8(),
            _ => continue,
        };
        lines.push(Value::String(s[start..end].to_owned()));
        start = end;
    }
    if start < s.len() {
        lines.push(Value::String(s[start..].to_owned()));
    }
    lines
}

/// Mime types nbformat splits into lines besides `text/*`.
const SPLIT_MIMES: [&str; 2] = ["application/javascript", "image/svg+xml"];

/// Splits multi-line strings into lists of lines where nbformat does on write.
fn split_multiline(doc: &mut Value) {
    let Some(cells) = doc.get_mut("cells").and_then(Value::as_array_mut) else {
        return;
    };
    for cell in cells {
        split_string_field(cell, "source");
        let Some(outputs) = cell.get_mut("outputs").and_then(Value::as_array_mut) else {
            continue;
        };
        for out in outputs {
            match out.get("output_type").and_then(Value::as_str) {
                Some("stream") => split_string_field(out, "text"),
                Some("display_data" | "execute_result") => {
                    if let Some(data) = out.get_mut("data").and_then(Value::as_object_mut) {
                        for (mime, v) in data.iter_mut() {
                            if (mime.starts_with("text/") || SPLIT_MIMES.contains(&mime.as_str()))
                                && let Value::String(s) = v
                            {
                                *v = Value::Array(split_lines(s));
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

fn split_string_field(v: &mut Value, key: &str) {
    if let Some(slot) = v.get_mut(key)
        && let Value::String(s) = slot
    {
        *slot = Value::Array(split_lines(s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_as_python_splitlines_keepends() {
        let l = split_lines("a\nb\r\nc\rd");
        assert_eq!(
            l,
            vec![json!("a\n"), json!("b\r\n"), json!("c\r"), json!("d")]
        );
        assert!(split_lines("").is_empty());
        assert_eq!(split_lines("x\n"), vec![json!("x\n")]);
    }

    #[test]
    fn written_as_nbformat_writes_unknown_fields_kept() {
        let nb = Notebook::from_value(json!({
            "nbformat": 4, "nbformat_minor": 5,
            "metadata": {"zz": {"keep": [1, 2]}, "a": "é"},
            "cells": [{"cell_type": "code", "id": "x1", "metadata": {}, "source": "a\nb", "outputs": [
                {"output_type": "stream", "name": "stdout", "text": "1\n2\n"},
                {"output_type": "display_data", "metadata": {}, "data": {"text/plain": "p\nq", "image/png": "iVBO\n", "application/json": {"k": "v\nw"}}}
            ], "execution_count": 1, "unknown": true}]
        }))
        .unwrap();
        let s = nb.to_nbformat_json();
        assert!(s.ends_with("}\n"));
        assert!(s.starts_with("{\n \"cells\": [\n  {\n"), "{s}");
        let back: Value = serde_json::from_str(&s).unwrap();
        let cell = &back["cells"][0];
        assert_eq!(cell["source"], json!(["a\n", "b"]));
        assert_eq!(cell["unknown"], json!(true));
        assert_eq!(cell["outputs"][0]["text"], json!(["1\n", "2\n"]));
        assert_eq!(
            cell["outputs"][1]["data"]["text/plain"],
            json!(["p\n", "q"])
        );
        assert_eq!(cell["outputs"][1]["data"]["image/png"], json!("iVBO\n"));
        assert_eq!(
            cell["outputs"][1]["data"]["application/json"],
            json!({"k": "v\nw"})
        );
        assert_eq!(back["metadata"]["zz"], json!({"keep": [1, 2]}));
        assert!(s.contains("\"é\""));
    }

    #[test]
    fn shapes_that_are_not_nbformat_4_are_refused_with_the_reason() {
        let e =
            Notebook::from_value(json!({"nbformat": 3, "metadata": {}, "cells": []})).unwrap_err();
        assert!(e.contains("only 4"), "{e}");
        let e = Notebook::from_value(
            json!({"nbformat": 4, "metadata": {}, "cells": [{"cell_type": "code", "source": 5}]}),
        )
        .unwrap_err();
        assert!(e.contains("cell 1"), "{e}");
        let e = Notebook::from_value(json!([])).unwrap_err();
        assert!(e.contains("top level"), "{e}");
    }
}
