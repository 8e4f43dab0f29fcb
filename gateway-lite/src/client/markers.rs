//! papermill's error markers: when a cell fails, papermill puts a red markdown cell at the
//! top of the saved notebook ("An Exception was encountered at 'In [n]'") linking to an
//! anchor cell placed right before the failing cell, both tagged `papermill-error-cell-tag`,
//! and removes such cells from a notebook it is given. Doing the same here makes a failed
//! run look in JupyterLab as papermill users expect, and keeps re-runs of saved outputs clean.

use serde_json::{Value, json};

use super::notebook::{Notebook, has_tag};

/// The tag of marker cells.
pub const TAG: &str = "papermill-error-cell-tag";

const STYLE: &str =
    "style=\"color:red; font-family:Helvetica Neue, Helvetica, Arial, sans-serif; font-size:2em;\"";

/// Removes earlier marker cells.
pub fn remove(nb: &mut Notebook) {
    while let Some(i) = nb.cells().iter().position(|c| has_tag(c, TAG)) {
        nb.remove_cell(i);
    }
}

/// Marks the failure of cell `index` (0-based) whose execution count is `count`.
pub fn insert(nb: &mut Notebook, index: usize, count: &Value) {
    let count = match count {
        Value::Number(n) => n.to_string(),
        _ => "None".to_owned(),
    };
    let with_id = nb.wants_cell_ids();
    let anchor = markdown(
        &format!(
            "<span id=\"papermill-error-cell\" {STYLE}>Execution using papermill encountered an exception here and stopped:</span>"
        ),
        with_id,
    );
    let banner = markdown(
        &format!(
            "<span {STYLE}>An Exception was encountered at '<a href=\"#papermill-error-cell\">In [{count}]</a>'.</span>"
        ),
        with_id,
    );
    nb.insert_cell(index, anchor);
    nb.insert_cell(0, banner);
}

fn markdown(source: &str, with_id: bool) -> Value {
    let mut cell = json!({"cell_type": "markdown", "metadata": {"tags": [TAG]}, "source": source});
    if with_id {
        let id = uuid::Uuid::new_v4().simple().to_string();
        cell["id"] = Value::String(id[..8].to_owned());
    }
    cell
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_go_first_and_before_the_failed_cell_and_are_removed_again() {
        let mut nb = Notebook::from_value(json!({"nbformat": 4, "nbformat_minor": 4, "metadata": {}, "cells": [
            {"cell_type": "code", "source": "a", "metadata": {}, "outputs": [], "execution_count": 1},
            {"cell_type": "code", "source": "b", "metadata": {}, "outputs": [], "execution_count": 2},
        ]}))
        .unwrap();
        insert(&mut nb, 1, &json!(2));
        let cells = nb.cells();
        assert_eq!(cells.len(), 4);
        assert!(cells[0]["source"].as_str().unwrap().contains("In [2]"));
        assert!(
            cells[2]["source"]
                .as_str()
                .unwrap()
                .contains("id=\"papermill-error-cell\"")
        );
        assert_eq!(cells[3]["source"], "b");
        remove(&mut nb);
        assert_eq!(nb.len(), 2);
    }
}
