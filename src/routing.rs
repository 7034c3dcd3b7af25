//! Routing: from a typed event to the workflows to start, with the reason.
//!
//! Filled by the workflow issue (#3).
