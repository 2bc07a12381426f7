//! Attaching the XDP or TC program to interfaces, with native XDP falling back to generic XDP.

use std::{fmt, path::Path};

use anyhow::Context as _;
use aya::{
    Ebpf,
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc,
        tc::SchedClassifierLink,
        tc::SchedClassifierLinkId,
        xdp::XdpLink,
        xdp::XdpLinkId,
    },
};
use gateway_common::program_names;

use crate::cli::AttachMode;

/// The mode a program ended up attached in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachedMode {
    /// Native (driver) XDP.
    XdpDriver,
    /// Generic (skb) XDP.
    XdpGeneric,
    /// TC clsact ingress.
    TcIngress,
}

impl fmt::Display for AttachedMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachedMode::XdpDriver => "xdp",
            AttachedMode::XdpGeneric => "xdp-generic",
            AttachedMode::TcIngress => "tc",
        })
    }
}

enum LinkId {
    Xdp(XdpLinkId),
    Tc(SchedClassifierLinkId),
}

/// One program attached to one interface.
pub struct Attachment {
    /// Interface name.
    pub interface: String,
    /// How it is attached.
    pub mode: AttachedMode,
    /// The kernel's id of the attached program (`bpftool prog show id N`).
    pub program_id: u32,
    link: LinkId,
}

impl Attachment {
    /// Leaves the program attached after the agent exits: the link is pinned at
    /// `links_dir/<interface>`, where the next agent adopts it. Netlink-attached XDP (kernels
    /// without XDP links) cannot be pinned and is detached instead.
    pub fn keep(self, ebpf: &mut Ebpf, links_dir: &Path) {
        let path = links_dir.join(&self.interface);
        let fd_link: anyhow::Result<FdLink> = match self.link {
            LinkId::Xdp(id) => xdp_program(ebpf)
                .and_then(|p| Ok(p.take_link(id)?))
                .and_then(|l| Ok(FdLink::try_from(l)?)),
            LinkId::Tc(id) => tc_program(ebpf)
                .and_then(|p| Ok(p.take_link(id)?))
                .and_then(|l| Ok(FdLink::try_from(l)?)),
        };
        let pinned = fd_link.and_then(|l| {
            let _ = std::fs::create_dir_all(links_dir);
            Ok(l.pin(&path)?)
        });
        match pinned {
            // Dropping the PinnedLink closes our fd; the pin keeps the program attached.
            Ok(_) => {
                tracing::info!(interface = %self.interface, path = %path.display(), "left attached for the next agent")
            }
            Err(e) => {
                tracing::warn!(interface = %self.interface, error = %format!("{e:#}"), "could not keep the program attached")
            }
        }
    }

    /// Detaches the program from the interface.
    pub fn detach(self, ebpf: &mut Ebpf) {
        let result = match self.link {
            LinkId::Xdp(id) => xdp_program(ebpf).and_then(|p| Ok(p.detach(id)?)),
            LinkId::Tc(id) => tc_program(ebpf).and_then(|p| Ok(p.detach(id)?)),
        };
        if let Err(e) = result {
            tracing::warn!(interface = %self.interface, error = %e, "detach failed");
        }
    }
}

fn xdp_program(ebpf: &mut Ebpf) -> anyhow::Result<&mut Xdp> {
    Ok(ebpf
        .program_mut(program_names::XDP)
        .context("XDP program missing from the object")?
        .try_into()?)
}

fn tc_program(ebpf: &mut Ebpf) -> anyhow::Result<&mut SchedClassifier> {
    Ok(ebpf
        .program_mut(program_names::TC_INGRESS)
        .context("TC program missing from the object")?
        .try_into()?)
}

/// Loads the program the mode needs and attaches it to every interface.
/// The link a previous agent left pinned for `iface`, taken over (and its pin removed).
fn adopt(links_dir: &Path, iface: &str) -> Option<FdLink> {
    let pinned = PinnedLink::from_pin(links_dir.join(iface)).ok()?;
    match pinned.unpin() {
        Ok(link) => Some(link),
        Err(e) => {
            tracing::warn!(interface = %iface, error = %e, "pinned link not adoptable");
            None
        }
    }
}

/// Loads the program the mode needs and attaches it to every interface. An interface whose
/// link a previous agent left pinned under `links_dir` has that link updated in place to the new
/// program (`bpf_link_update`): no packet goes unhandled during a restart.
pub fn attach_all(
    ebpf: &mut Ebpf,
    interfaces: &[String],
    mode: AttachMode,
    links_dir: &Path,
) -> anyhow::Result<Vec<Attachment>> {
    let mut out = Vec::with_capacity(interfaces.len());
    match mode {
        AttachMode::Xdp | AttachMode::XdpGeneric => {
            let program = xdp_program(ebpf)?;
            program.load().context("loading the XDP program")?;
            let program_id = program.info()?.id();
            for iface in interfaces {
                if let Some(link) = adopt(links_dir, iface) {
                    let id = program
                        .attach_to_link(XdpLink::try_from(link)?)
                        .with_context(|| format!("updating the adopted XDP link of {iface}"))?;
                    let mode = if mode == AttachMode::Xdp {
                        AttachedMode::XdpDriver
                    } else {
                        AttachedMode::XdpGeneric
                    };
                    tracing::info!(interface = %iface, "adopted the running XDP link");
                    out.push(Attachment {
                        interface: iface.clone(),
                        mode,
                        program_id,
                        link: LinkId::Xdp(id),
                    });
                    continue;
                }
                let attached = if mode == AttachMode::Xdp {
                    match program.attach(iface, XdpMode::Driver) {
                        Ok(id) => Some((id, AttachedMode::XdpDriver)),
                        Err(e) => {
                            tracing::warn!(interface = %iface, error = %e,
                                "native XDP unavailable; falling back to generic XDP");
                            None
                        }
                    }
                } else {
                    None
                };
                let (id, mode) = match attached {
                    Some(a) => a,
                    None => (
                        program
                            .attach(iface, XdpMode::Skb)
                            .with_context(|| format!("attaching XDP (generic) to {iface}"))?,
                        AttachedMode::XdpGeneric,
                    ),
                };
                tracing::info!(interface = %iface, %mode, "attached");
                out.push(Attachment {
                    interface: iface.clone(),
                    mode,
                    program_id,
                    link: LinkId::Xdp(id),
                });
            }
        }
        AttachMode::Tc => {
            let program = tc_program(ebpf)?;
            program.load().context("loading the TC program")?;
            let program_id = program.info()?.id();
            for iface in interfaces {
                if let Some(link) = adopt(links_dir, iface) {
                    let id = program
                        .attach_to_link(SchedClassifierLink::try_from(link)?)
                        .with_context(|| format!("updating the adopted TC link of {iface}"))?;
                    tracing::info!(interface = %iface, "adopted the running TC link");
                    out.push(Attachment {
                        interface: iface.clone(),
                        mode: AttachedMode::TcIngress,
                        program_id,
                        link: LinkId::Tc(id),
                    });
                    continue;
                }
                // EEXIST: the interface already has a clsact qdisc, which is what we need.
                if let Err(e) = tc::qdisc_add_clsact(iface) {
                    tracing::debug!(interface = %iface, error = %e, "clsact qdisc not added");
                }
                let id = program
                    .attach(iface, TcAttachType::Ingress)
                    .with_context(|| format!("attaching TC ingress to {iface}"))?;
                tracing::info!(interface = %iface, mode = "tc", "attached");
                out.push(Attachment {
                    interface: iface.clone(),
                    mode: AttachedMode::TcIngress,
                    program_id,
                    link: LinkId::Tc(id),
                });
            }
        }
    }
    Ok(out)
}
