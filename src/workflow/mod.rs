//! Workflow definitions: schema, validation, DAG and prompt templates.
//!
//! Filled by the workflow issue (#3).
