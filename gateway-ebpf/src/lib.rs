#![no_std]
// This library target only exists so that gateway-agent can name this crate as a build dependency
// (cargo then rebuilds the agent when the kernel programs change); the programs are in src/main.rs.
