//! One compiled configuration as the consumers see it: the model, the statuses, and the problems
//! the source reported. Published through a `tokio::sync::watch` channel as `Arc<Snapshot>`, so
//! every consumer reads one whole snapshot and never a half-applied one.

use std::sync::Arc;

use gateway_model::{Compiler, Model, ObjectStatus};

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
    /// Compiles a reading of the sources with `compiler`, which keeps what the changes since its
    /// last update did not reach (one changed route recompiles that route only). Conditions
    /// computed now are stamped with the current time.
    pub fn compile(generation: u64, reading: Reading, compiler: &mut Compiler) -> Self {
        compiler.set_transition_time(now_rfc3339());
        let compiled = compiler.update(&reading.objects);
        Snapshot {
            generation,
            model: Arc::new(compiled.model.clone()),
            statuses: compiled.statuses.clone(),
            file_errors: reading.errors,
        }
    }
}

/// The current time as a metav1.Time (RFC 3339, seconds).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}
