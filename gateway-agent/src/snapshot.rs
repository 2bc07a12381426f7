//! One compiled configuration as the consumers see it: the model, the statuses, and the problems
//! the source reported. Published through a `tokio::sync::watch` channel as `Arc<Snapshot>`, so
//! every consumer reads one whole snapshot and never a half-applied one.

use std::sync::Arc;

use gateway_model::{CompileOptions, Model, ObjectStatus};

use crate::source::file::{FileError, Reading};

/// A compiled configuration.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases by one with every compile, starting at 1.
    pub generation: u64,
    /// The route model.
    pub model: Arc<Model>,
    /// `.status` of every Gateway API object of our class.
    pub statuses: Vec<ObjectStatus>,
    /// Files that did not parse (their last good objects are in the model).
    pub file_errors: Vec<FileError>,
}

impl Snapshot {
    /// Compiles a reading of the sources.
    pub fn compile(generation: u64, reading: Reading, opts: &CompileOptions) -> Self {
        let compiled = gateway_model::compile(&reading.objects, opts);
        Snapshot {
            generation,
            model: Arc::new(compiled.model),
            statuses: compiled.statuses,
            file_errors: reading.errors,
        }
    }
}
