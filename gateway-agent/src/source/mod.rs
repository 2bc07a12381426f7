//! Where objects come from. Sources only fill `gateway_model::Objects`; they never interpret them.

pub mod file;
pub mod kube;
