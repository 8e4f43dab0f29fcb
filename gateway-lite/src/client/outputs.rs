//! One cell's outputs, built from the kernel's iopub messages as Jupyter clients build them,
//! in nbformat 4 shape.
//!
//! - `stream`: appended to the previous output when that is a stream of the same name
//!   (JupyterLab merges them the same way before it saves; nbclient, and so papermill, keeps
//!   one output per message: same text, fewer entries here).
//! - `display_data` / `execute_result`: `data` and `metadata` kept verbatim (images stay
//!   base64 strings); `transient` is dropped, as nbformat has no place for it; a
//!   `display_id` is remembered, so `update_display_data` replaces those outputs in place, in
//!   the running cell here and in earlier cells through [`Displays`] (as nbclient does).
//! - `error`: `ename`, `evalue`, `traceback`.
//! - `clear_output`: clears now, or, with `wait`, just before the next output.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

/// Most bytes of output kept per cell; past it outputs are dropped and a note says so (a
/// runaway loop printing forever must not exhaust the client's memory).
pub const MAX_CELL_OUTPUT_BYTES: usize = 256 * 1024 * 1024;

/// An `update_display_data`: new data and metadata for every output of a display id.
#[derive(Debug, Clone, PartialEq)]
pub struct DisplayUpdate {
    /// The display id.
    pub id: String,
    /// The new `data`.
    pub data: Value,
    /// The new `metadata`.
    pub metadata: Value,
}

impl DisplayUpdate {
    /// Puts the new data and metadata into `output`.
    pub fn apply_to(&self, output: &mut Value) {
        output["data"] = self.data.clone();
        output["metadata"] = self.metadata.clone();
    }
}

/// Where each display id's outputs are in the notebook: (cell index, output index).
#[derive(Debug, Default)]
pub struct Displays {
    map: HashMap<String, Vec<(usize, usize)>>,
}

impl Displays {
    /// Records the display ids of cell `cell`'s outputs (replacing what it had).
    pub fn record(&mut self, cell: usize, outputs: &CellOutputs) {
        for places in self.map.values_mut() {
            places.retain(|(c, _)| *c != cell);
        }
        for (id, indices) in &outputs.displays {
            let places = self.map.entry(id.clone()).or_default();
            places.extend(indices.iter().map(|i| (cell, *i)));
        }
    }

    /// The places of `id` outside cell `except`.
    pub fn places(&self, id: &str, except: usize) -> Vec<(usize, usize)> {
        self.map
            .get(id)
            .map(|p| p.iter().copied().filter(|(c, _)| *c != except).collect())
            .unwrap_or_default()
    }
}

/// The outputs of the running cell.
#[derive(Debug)]
pub struct CellOutputs {
    updates: Vec<DisplayUpdate>,
    outputs: Vec<Value>,
    limit: usize,
    bytes: usize,
    truncated: bool,
    clear_before_next: bool,
    displays: HashMap<String, Vec<usize>>,
    /// The first error output's (ename, evalue, traceback).
    error: Option<(String, String, Vec<String>)>,
}

impl Default for CellOutputs {
    fn default() -> Self {
        CellOutputs::with_limit(MAX_CELL_OUTPUT_BYTES)
    }
}

impl CellOutputs {
    /// Outputs kept up to `limit` bytes.
    pub fn with_limit(limit: usize) -> CellOutputs {
        CellOutputs {
            outputs: Vec::new(),
            updates: Vec::new(),
            limit,
            bytes: 0,
            truncated: false,
            clear_before_next: false,
            displays: HashMap::new(),
            error: None,
        }
    }

    /// Takes one iopub message of the cell.
    pub fn handle(&mut self, msg_type: &str, content: &Value) {
        if matches!(
            msg_type,
            "stream" | "display_data" | "execute_result" | "update_display_data"
        ) {
            let size = match content.get("text") {
                Some(Value::String(t)) => t.len(),
                _ => content.get("data").map_or(0, |d| d.to_string().len()),
            };
            self.bytes = self.bytes.saturating_add(size);
            if self.bytes > self.limit {
                if !self.truncated {
                    self.truncated = true;
                    self.outputs.push(json!({
                        "output_type": "stream",
                        "name": "stderr",
                        "text": format!("[gateway-lite run: this cell's output passed {} bytes; the rest was dropped]\n", self.limit),
                    }));
                }
                return;
            }
        }
        let display_id = content
            .get("transient")
            .and_then(|t| t.get("display_id"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        match msg_type {
            "clear_output" => {
                if content.get("wait").and_then(Value::as_bool) == Some(true) {
                    self.clear_before_next = true;
                } else {
                    self.clear();
                }
            }
            "update_display_data" => {
                let Some(id) = display_id else { return };
                let update = DisplayUpdate {
                    id,
                    data: content.get("data").cloned().unwrap_or_else(|| json!({})),
                    metadata: content
                        .get("metadata")
                        .cloned()
                        .unwrap_or_else(|| json!({})),
                };
                let indices = self.displays.get(&update.id).cloned().unwrap_or_default();
                for i in indices {
                    if let Some(out) = self.outputs.get_mut(i) {
                        update.apply_to(out);
                    }
                }
                self.updates.push(update);
            }
            "stream" => {
                let name = content
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("stdout");
                let text = content.get("text").and_then(Value::as_str).unwrap_or("");
                self.before_output();
                if let Some(last) = self.outputs.last_mut()
                    && last["output_type"] == "stream"
                    && last["name"] == name
                {
                    let merged = format!("{}{text}", last["text"].as_str().unwrap_or(""));
                    last["text"] = Value::String(merged);
                    return;
                }
                self.outputs
                    .push(json!({"output_type": "stream", "name": name, "text": text}));
            }
            "display_data" | "execute_result" => {
                self.before_output();
                let mut out = Map::new();
                out.insert("output_type".into(), json!(msg_type));
                out.insert(
                    "data".into(),
                    content.get("data").cloned().unwrap_or_else(|| json!({})),
                );
                out.insert(
                    "metadata".into(),
                    content
                        .get("metadata")
                        .cloned()
                        .unwrap_or_else(|| json!({})),
                );
                if msg_type == "execute_result" {
                    out.insert(
                        "execution_count".into(),
                        content
                            .get("execution_count")
                            .cloned()
                            .unwrap_or(Value::Null),
                    );
                }
                if let Some(id) = display_id {
                    self.displays
                        .entry(id)
                        .or_default()
                        .push(self.outputs.len());
                }
                self.outputs.push(Value::Object(out));
            }
            "error" => {
                self.before_output();
                let (ename, evalue, traceback) = error_fields(content);
                self.outputs.push(json!({
                    "output_type": "error",
                    "ename": ename,
                    "evalue": evalue,
                    "traceback": traceback,
                }));
                self.error.get_or_insert((ename, evalue, traceback));
            }
            _ => {}
        }
    }

    fn before_output(&mut self) {
        if self.clear_before_next {
            self.clear();
        }
    }

    fn clear(&mut self) {
        self.outputs.clear();
        self.bytes = 0;
        self.truncated = false;
        self.displays.clear();
        self.clear_before_next = false;
    }

    /// The display updates the cell sent (for displays of earlier cells).
    pub fn take_updates(&mut self) -> Vec<DisplayUpdate> {
        std::mem::take(&mut self.updates)
    }

    /// The first error raised in the cell, if any: (ename, evalue, traceback).
    pub fn error(&self) -> Option<&(String, String, Vec<String>)> {
        self.error.as_ref()
    }

    /// The outputs so far.
    pub fn to_value(&self) -> Value {
        Value::Array(self.outputs.clone())
    }
}

/// `ename`, `evalue` and `traceback` of an `error` message's content or an error
/// `execute_reply`; missing or mistyped fields read as empty.
pub fn error_fields(content: &Value) -> (String, String, Vec<String>) {
    let s = |k: &str| {
        content
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let traceback = content
        .get("traceback")
        .and_then(Value::as_array)
        .map(|t| {
            t.iter()
                .filter_map(|l| l.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    (s("ename"), s("evalue"), traceback)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_merge_per_name_and_clear_output_waits() {
        let mut o = CellOutputs::default();
        o.handle("stream", &json!({"name": "stdout", "text": "a\n"}));
        o.handle("stream", &json!({"name": "stdout", "text": "b\n"}));
        o.handle("stream", &json!({"name": "stderr", "text": "e\n"}));
        o.handle("stream", &json!({"name": "stdout", "text": "c\n"}));
        let v = o.to_value();
        assert_eq!(v.as_array().unwrap().len(), 3);
        assert_eq!(v[0]["text"], "a\nb\n");
        o.handle("clear_output", &json!({"wait": true}));
        assert_eq!(o.to_value().as_array().unwrap().len(), 3);
        o.handle(
            "display_data",
            &json!({"data": {"text/plain": "x"}, "metadata": {}, "transient": {"display_id": "d"}}),
        );
        assert_eq!(
            o.to_value(),
            json!([{"output_type": "display_data", "data": {"text/plain": "x"}, "metadata": {}}])
        );
        o.handle(
            "update_display_data",
            &json!({"data": {"text/plain": "y"}, "metadata": {}, "transient": {"display_id": "d"}}),
        );
        assert_eq!(o.to_value()[0]["data"]["text/plain"], "y");
        o.handle("clear_output", &json!({"wait": false}));
        assert_eq!(o.to_value(), json!([]));
    }

    #[test]
    fn displays_of_earlier_cells_are_found_for_updates() {
        let mut first = CellOutputs::default();
        first.handle(
            "display_data",
            &json!({"data": {"text/plain": "a"}, "metadata": {}, "transient": {"display_id": "d"}}),
        );
        let mut displays = Displays::default();
        displays.record(2, &first);
        let mut later = CellOutputs::default();
        later.handle("stream", &json!({"name": "stdout", "text": "x"}));
        later.handle(
            "update_display_data",
            &json!({"data": {"text/plain": "b"}, "metadata": {}, "transient": {"display_id": "d"}}),
        );
        displays.record(5, &later);
        let updates = later.take_updates();
        assert_eq!(updates.len(), 1);
        assert_eq!(displays.places("d", 5), vec![(2, 0)]);
        let mut out = first.to_value()[0].clone();
        updates[0].apply_to(&mut out);
        assert_eq!(out["data"]["text/plain"], "b");
        assert!(displays.places("other", 5).is_empty());
    }

    #[test]
    fn output_past_the_limit_is_dropped_with_a_note() {
        let mut o = CellOutputs::with_limit(10);
        o.handle("stream", &json!({"name": "stdout", "text": "12345678\n"}));
        o.handle("stream", &json!({"name": "stdout", "text": "more\n"}));
        o.handle("stream", &json!({"name": "stdout", "text": "and more\n"}));
        let v = o.to_value();
        assert_eq!(v.as_array().unwrap().len(), 2, "{v}");
        assert_eq!(v[0]["text"], "12345678\n");
        assert!(v[1]["text"].as_str().unwrap().contains("passed 10 bytes"));
    }

    #[test]
    fn results_and_errors_keep_their_fields() {
        let mut o = CellOutputs::default();
        o.handle(
            "execute_result",
            &json!({"execution_count": 3, "data": {"text/plain": "4"}, "metadata": {}}),
        );
        o.handle(
            "error",
            &json!({"ename": "ValueError", "evalue": "bad", "traceback": ["t1", "t2"]}),
        );
        let v = o.to_value();
        assert_eq!(v[0]["execution_count"], 3);
        assert_eq!(v[1]["traceback"], json!(["t1", "t2"]));
        assert_eq!(o.error().unwrap().0, "ValueError");
    }
}
