//! The route model: Gateway API objects compiled into one immutable snapshot plus statuses.
//!
//! Pure: no I/O, no clock (the caller passes the condition timestamp), deterministic output order.
//! [`parse`] reads YAML into [`Objects`]; [`compile`] turns them into a [`Model`] (what the L4, L7
//! and passthrough data planes serve) and the `.status` of every object of ours.

mod attach;
pub mod check;
pub mod compile;
pub mod gateway;
pub mod hostname;
pub mod http;
mod incremental;
mod l4;
pub mod model;
pub mod objects;
pub mod parse;
pub mod refs;
mod routes;
pub mod status;
mod tls;

pub use compile::{CONTROLLER_NAME, CompileOptions, Compiled, compile};
pub use incremental::Compiler;
pub use model::Model;
pub use objects::{Kind, Object, ObjectKey, Objects};
pub use routes::parse_duration;
pub use status::ObjectStatus;
