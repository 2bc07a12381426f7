//! Route attachment: which listeners each parentRef of each route selects, in the order the spec
//! checks it, and the conflicts between routes that share a listener.

use std::collections::BTreeMap;

use crate::{
    compile::RouteView,
    gateway::GatewayState,
    hostname,
    objects::{Kind, Objects},
    refs::{GATEWAY_GROUP, ParentRef},
};

/// (gateway index, listener index).
pub(crate) type ListenerIdx = (usize, usize);

/// The outcome of one parentRef of a route.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ParentOutcome {
    /// The parentRef as written.
    pub parent_ref: ParentRef,
    /// Accepted, or (reason, message).
    pub accepted: Result<(), (&'static str, String)>,
    /// Listeners the route is attached to. These count in `attachedRoutes` whether or not the
    /// listener itself is valid: "Listener or Route status does not impact successful
    /// attachment, i.e. the AttachedRoutes field count MUST be set for Listeners, even if the
    /// Accepted condition of an individual Listener is set to False."
    pub attached: Vec<ListenerIdx>,
}

/// Gateways of ours by (namespace, name).
pub(crate) fn gateway_index(gateways: &[GatewayState]) -> BTreeMap<(&str, &str), usize> {
    gateways
        .iter()
        .enumerate()
        .map(|(i, g)| ((g.namespace.as_str(), g.name.as_str()), i))
        .collect()
}

/// Attaches one route to the listeners its parentRefs select.
pub(crate) fn attach(
    objects: &Objects,
    gateways: &[GatewayState],
    index: &BTreeMap<(&str, &str), usize>,
    r: &RouteView,
) -> Vec<ParentOutcome> {
    let mut out = Vec::new();
    for pr in &r.parent_refs {
        let group = pr.group.as_deref().unwrap_or(GATEWAY_GROUP);
        let kind = pr.kind.as_deref().unwrap_or("Gateway");
        if group != GATEWAY_GROUP || kind != "Gateway" {
            continue;
        }
        let ns = pr.namespace.as_deref().unwrap_or(&r.namespace);
        let Some(&gi) = index.get(&(ns, pr.name.as_str())) else {
            // Not a Gateway of ours: another controller's business.
            continue;
        };
        out.push(attach_one(objects, gateways, gi, r, pr));
    }
    out
}

fn attach_one(
    objects: &Objects,
    gateways: &[GatewayState],
    gi: usize,
    r: &RouteView,
    pr: &ParentRef,
) -> ParentOutcome {
    let g = &gateways[gi];
    let mut outcome = ParentOutcome {
        parent_ref: pr.clone(),
        accepted: Ok(()),
        attached: Vec::new(),
    };
    let mut reject = |reason: &'static str, message: String| {
        outcome.accepted = Err((reason, message));
    };
    // "NoMatchingParent: ... the Route's parentRef ... port or sectionName ... does not match
    // any listener."
    let selected: Vec<usize> = g
        .listeners
        .iter()
        .enumerate()
        .filter(|(_, l)| pr.section_name.as_deref().is_none_or(|s| s == l.name))
        .filter(|(_, l)| pr.port.is_none_or(|p| i32::from(l.port) == p))
        .map(|(i, _)| i)
        .collect();
    if selected.is_empty() {
        reject(
            "NoMatchingParent",
            format!(
                "Gateway {} has no listener matching sectionName {:?} port {:?}",
                g.id(),
                pr.section_name,
                pr.port
            ),
        );
        return outcome;
    }
    // "NotAllowedByListeners: the route has not been accepted because the Gateway has no
    // Listener whose allowedRoutes criteria permit the route."
    let allowed: Vec<usize> = selected
        .into_iter()
        .filter(|&i| g.listeners[i].allows(objects, &g.namespace, r.kind, &r.namespace))
        .collect();
    if allowed.is_empty() {
        reject(
            "NotAllowedByListeners",
            format!(
                "no selected listener of Gateway {} allows {} from namespace {}",
                g.id(),
                r.kind.as_str(),
                r.namespace
            ),
        );
        return outcome;
    }
    // "If both the Listener and HTTPRoute have specified hostnames, and none match ... then the
    // HTTPRoute is not accepted" (NoMatchingListenerHostname).
    let with_hosts: Vec<usize> = if has_hostnames(r.kind) {
        allowed
            .into_iter()
            .filter(|&i| {
                hostname::intersect(g.listeners[i].hostname.as_deref(), &r.hostnames).is_some()
            })
            .collect()
    } else {
        allowed
    };
    if with_hosts.is_empty() {
        reject(
            "NoMatchingListenerHostname",
            format!(
                "no hostname of the route intersects a listener hostname of Gateway {}",
                g.id()
            ),
        );
        return outcome;
    }
    // A route whose every rule is invalid is "the full Route" being ignored.
    let rule_count = r.rule_count;
    if rule_count > 0 && r.invalid_rules.len() == rule_count {
        let (reason, message) = &r.invalid_rules[0].1;
        reject(reason, format!("every rule is invalid; rule 0: {message}"));
        return outcome;
    }
    outcome.attached = with_hosts.into_iter().map(|i| (gi, i)).collect();
    outcome
}

/// Route kinds with `spec.hostnames`.
pub(crate) fn has_hostnames(kind: Kind) -> bool {
    matches!(kind, Kind::HTTPRoute | Kind::GRPCRoute | Kind::TLSRoute)
}

/// The spec (GRPCRoute.spec.hostnames): "If a Route (A) of type HTTPRoute or GRPCRoute is attached
/// to a Listener and that listener already has another Route (B) of the other type attached and
/// the intersection of the hostnames of A and B is non-empty, then the implementation MUST
/// accept exactly one of these two routes, determined by ... the oldest Route based on creation
/// timestamp ... the Route appearing first in alphabetical order by {namespace}/{name}. The
/// rejected Route MUST raise an 'Accepted' condition with a status of 'False'."
///
/// Returns the outcomes of the routes that lose, by route index; the others keep theirs.
pub(crate) fn http_and_grpc_hostnames_do_not_overlap(
    gateways: &[GatewayState],
    routes: &[&RouteView],
    outcomes: &[&[ParentOutcome]],
) -> BTreeMap<usize, Vec<ParentOutcome>> {
    let mut overrides: BTreeMap<usize, Vec<ParentOutcome>> = BTreeMap::new();
    // Without an attached GRPCRoute no listener holds both kinds.
    let any_grpc = routes
        .iter()
        .zip(outcomes)
        .any(|(r, outs)| r.kind == Kind::GRPCRoute && outs.iter().any(|o| !o.attached.is_empty()));
    if !any_grpc {
        return overrides;
    }
    let mut by_listener: BTreeMap<ListenerIdx, (Vec<usize>, Vec<usize>)> = BTreeMap::new();
    for (ri, outs) in outcomes.iter().enumerate() {
        for gl in outs.iter().flat_map(|o| &o.attached) {
            let entry = by_listener.entry(*gl).or_default();
            match routes[ri].kind {
                Kind::HTTPRoute => entry.0.push(ri),
                Kind::GRPCRoute => entry.1.push(ri),
                _ => {}
            }
        }
    }
    for ((g, l), (http, grpc)) in by_listener {
        if http.is_empty() || grpc.is_empty() {
            continue;
        }
        let listener_host = gateways[g].listeners[l].hostname.as_deref();
        let patterns = |ri: usize| {
            hostname::intersect(listener_host, &routes[ri].hostnames).unwrap_or_default()
        };
        let mut losers = Vec::new();
        for &h in &http {
            for &c in &grpc {
                let overlap = patterns(h)
                    .iter()
                    .any(|a| patterns(c).iter().any(|b| hostname::overlaps(a, b)));
                if overlap {
                    let (older, newer) = if routes[h].age_key() <= routes[c].age_key() {
                        (h, c)
                    } else {
                        (c, h)
                    };
                    losers.push((newer, older));
                }
            }
        }
        for (newer, older) in losers {
            let outs = overrides
                .entry(newer)
                .or_insert_with(|| outcomes[newer].to_vec());
            for o in outs.iter_mut() {
                let before = o.attached.len();
                o.attached.retain(|&gl| gl != (g, l));
                if before != o.attached.len() && o.attached.is_empty() && o.accepted.is_ok() {
                    o.accepted = Err((
                        "NotAllowedByListeners",
                        format!(
                            "listener {} of Gateway {} already serves the older {} {} on an \
                             overlapping hostname",
                            gateways[g].listeners[l].name,
                            gateways[g].id(),
                            routes[older].kind.as_str(),
                            routes[older].id()
                        ),
                    ));
                }
            }
        }
    }
    overrides
}

/// The routes attached to each listener, oldest first (creationTimestamp, then namespace/name),
/// which is the order in which they claim what only one route may hold.
pub(crate) type ByListener = BTreeMap<ListenerIdx, Vec<usize>>;

/// Indexes the attachments of the listeners `wanted` selects (the ones that serve routes in
/// age order: TCP, UDP and TLS), oldest route first.
pub(crate) fn by_listener(
    routes: &[&RouteView],
    outcomes: &[&[ParentOutcome]],
    wanted: impl Fn(ListenerIdx) -> bool,
) -> ByListener {
    let mut out: ByListener = BTreeMap::new();
    for (ri, outs) in outcomes.iter().enumerate() {
        for gl in outs.iter().flat_map(|o| &o.attached) {
            if !wanted(*gl) {
                continue;
            }
            let list = out.entry(*gl).or_default();
            if list.last() != Some(&ri) {
                list.push(ri);
            }
        }
    }
    for list in out.values_mut() {
        list.sort_by(|&a, &b| routes[a].age_key().cmp(&routes[b].age_key()));
        list.dedup();
    }
    out
}
