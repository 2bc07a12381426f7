//! [`Compiler`]: `compile` with memory. It keeps what it compiled per route and per virtual host,
//! so recompiling after one object changed redoes only what that object reaches.
//!
//! What each cached result depends on, and what invalidates it:
//!
//! | cached | depends on | recomputed when |
//! |---|---|---|
//! | a route's view (parentRefs, hostnames, invalid rules) | the route | the route changed |
//! | a route's parentRef outcomes | the route, Gateways, GatewayClasses, Namespaces, Secrets, ReferenceGrants | either changed |
//! | a route's compiled rules and ResolvedRefs problem | the route, the Services it names and their EndpointSlices, ReferenceGrants | either changed |
//! | a route's status | its outcomes (after HTTP/gRPC conflicts) and problem | those differ from last time |
//! | a virtual host | the rules of the routes placed on it | one of those routes was re-placed |
//!
//! Gateways, their statuses and the L4 and passthrough listeners are recomputed on every update:
//! there are few of them. Objects are recognised as unchanged by pointer (the `Arc` that
//! [`Objects`] holds) and, failing that, by equality, so a snapshot rebuilt from scratch (files
//! read again) still reuses everything that did not change.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
    sync::Arc,
};

use crate::{
    attach::{self, ParentOutcome},
    compile::{self, CompileOptions, Compiled, RouteView},
    gateway::{self, GatewayState, Protocol},
    hostname,
    http::HttpRule,
    l4,
    model::{HttpListener, VirtualHost},
    objects::{Kind, Object, ObjectKey, Objects, namespace_of},
    refs::RefProblem,
    routes::{self, RouteRules},
    status::ObjectStatus,
    tls,
};

/// A compiler that keeps its previous results: hold one across reloads and call
/// [`Compiler::update`] with each new snapshot of objects. The result is always identical to
/// [`crate::compile`] of the same objects with the same options.
#[derive(Debug)]
pub struct Compiler {
    opts: CompileOptions,
    /// The last result.
    current: Compiled,
    /// How many statuses at the head of `current.statuses` are GatewayClasses and Gateways; the
    /// route statuses follow, one per route entry with `has_status`, in order.
    head_statuses: usize,
    /// GatewayClass, Gateway, Namespace and Secret objects last seen: any change re-attaches
    /// every route.
    env: Vec<(ObjectKey, Arc<Object>)>,
    /// ReferenceGrants last seen: any change re-resolves every route too.
    grants: Vec<(ObjectKey, Arc<Object>)>,
    /// Services and EndpointSlices last seen: a change re-resolves the routes naming the Service.
    services: Vec<(ObjectKey, Arc<Object>)>,
    /// Routes in kind/namespace/name order.
    #[allow(
        clippy::vec_box,
        reason = "entries move between vectors on every update"
    )]
    routes: Vec<Box<RouteEntry>>,
    /// HTTP sockets in address order, parallel to `current.model.http`.
    sockets: Vec<SocketState>,
    /// Whether at least one update ran.
    primed: bool,
    /// Whether what only later updates use is kept (false for [`crate::compile`], which
    /// makes one update and drops the compiler).
    keep: bool,
}

#[derive(Debug)]
struct RouteEntry {
    key: ObjectKey,
    object: Arc<Object>,
    /// The route in the common shape; the JSON of HTTP/gRPC rules is dropped once compiled.
    view: RouteView,
    /// Services its rules may name.
    deps: Vec<(String, String)>,
    /// parentRef outcomes before HTTP/gRPC hostname conflicts.
    outcomes: Vec<ParentOutcome>,
    /// Whether the conflict pass changed its outcomes last time.
    overridden: bool,
    /// (socket, hostname pattern) it is placed on, once per Gateway listener and address.
    placed: Vec<(SocketAddr, Option<String>)>,
    /// `Kind namespace/name`, as its rules name it.
    rule_route: String,
    /// The ResolvedRefs problem met while compiling its HTTP rules.
    http_problem: Option<RefProblem>,
    /// The first unresolved reference of any rule.
    first_problem: Option<RefProblem>,
    /// What its status was built from.
    status_inputs: Option<(Vec<ParentOutcome>, Option<RefProblem>)>,
    /// Its status while an update runs (between updates it lives in `current.statuses`).
    status: Option<ObjectStatus>,
    has_status: bool,
}

#[derive(Debug, Default)]
struct SocketState {
    hosts: HashMap<Option<String>, HostState>,
}

#[derive(Debug, Default)]
struct HostState {
    /// Placements of routes on it.
    placements: usize,
    /// A Gateway listener's own hostname: kept without routes (it answers 404).
    base: bool,
    /// Index in the listener's `hosts`; None for a host created in this update.
    pos: Option<usize>,
    /// Routes whose rules leave it in this update.
    remove: Vec<String>,
    /// Rules that join it in this update.
    add: Vec<HttpRule>,
    touched: bool,
}

/// What changed in one kind (or set of kinds) since the last update.
fn diff_kinds(
    objects: &Objects,
    kinds: &[Kind],
    last: &mut Vec<(ObjectKey, Arc<Object>)>,
) -> Option<Vec<Arc<Object>>> {
    let now: Vec<(&ObjectKey, &Arc<Object>)> = kinds
        .iter()
        .flat_map(|&k| objects.of_kind_shared(k))
        .collect();
    let same = now.len() == last.len()
        && now
            .iter()
            .zip(last.iter())
            .all(|((k, o), (lk, lo))| Arc::ptr_eq(o, lo) || (*k == lk && Object::eq(o, lo)));
    if same {
        return None;
    }
    let mut old: BTreeMap<&ObjectKey, &Arc<Object>> = last.iter().map(|(k, o)| (k, o)).collect();
    let mut changed = Vec::new();
    for (k, o) in &now {
        match old.remove(k) {
            Some(lo) if Arc::ptr_eq(o, lo) || Object::eq(o, lo) => {}
            Some(lo) => {
                changed.push(lo.clone());
                changed.push((*o).clone());
            }
            None => changed.push((*o).clone()),
        }
    }
    changed.extend(old.into_values().cloned());
    *last = now
        .into_iter()
        .map(|(k, o)| (k.clone(), o.clone()))
        .collect();
    Some(changed)
}

/// The Service a Service or EndpointSlice object concerns.
fn service_of(o: &Object) -> Option<(String, String)> {
    match o {
        Object::Service(s) => Some((
            namespace_of(&s.metadata).to_string(),
            s.metadata.name.clone().unwrap_or_default(),
        )),
        Object::EndpointSlice(s) => Some((
            namespace_of(&s.metadata).to_string(),
            s.metadata
                .labels
                .as_ref()?
                .get("kubernetes.io/service-name")?
                .clone(),
        )),
        _ => None,
    }
}

impl RouteEntry {
    fn new(key: ObjectKey, object: Arc<Object>, keep: bool) -> Option<Self> {
        let view = routes::view(&object)?;
        let rule_route = format!("{} {}", view.kind.as_str(), view.id());
        Some(RouteEntry {
            deps: if keep {
                routes::service_deps(&view)
            } else {
                Vec::new()
            },
            key,
            object,
            view,
            outcomes: Vec::new(),
            overridden: false,
            placed: Vec::new(),
            rule_route,
            http_problem: None,
            first_problem: None,
            status_inputs: None,
            status: None,
            has_status: false,
        })
    }

    /// The view with its rules' JSON, rebuilt from the object when it was dropped.
    fn with_rules<T>(&mut self, f: impl FnOnce(&RouteView) -> T) -> T {
        let has_json = match &self.view.rules {
            RouteRules::Http(r) | RouteRules::Grpc(r) => r.len() == self.view.rule_count,
            RouteRules::L4(_) => true,
        };
        if has_json {
            f(&self.view)
        } else {
            let full = routes::view(&self.object).expect("a route entry holds a route");
            f(&full)
        }
    }

    /// Drops the JSON of HTTP/gRPC rules (the object can produce it again).
    fn shrink(&mut self) {
        match &mut self.view.rules {
            RouteRules::Http(r) | RouteRules::Grpc(r) => *r = Vec::new(),
            RouteRules::L4(_) => {}
        }
    }

    fn is_http(&self) -> bool {
        matches!(self.view.kind, Kind::HTTPRoute | Kind::GRPCRoute)
    }
}

impl Compiler {
    /// A compiler with nothing cached yet.
    pub fn new(opts: CompileOptions) -> Self {
        Compiler {
            opts,
            current: Compiled::default(),
            head_statuses: 0,
            env: Vec::new(),
            grants: Vec::new(),
            services: Vec::new(),
            routes: Vec::new(),
            sockets: Vec::new(),
            primed: false,
            keep: true,
        }
    }

    /// A compiler for one update only: it skips the bookkeeping that serves later updates
    /// (Services each route names, what each status was built from). Same result.
    pub(crate) fn one_shot(opts: CompileOptions) -> Self {
        Compiler {
            keep: false,
            ..Compiler::new(opts)
        }
    }

    /// The options every update compiles with.
    pub fn options(&self) -> &CompileOptions {
        &self.opts
    }

    /// Sets the `lastTransitionTime` stamped on conditions computed from now on (a long-lived
    /// agent passes the time of each reload). Route statuses the next update reuses, because
    /// nothing they depend on changed, keep the time they were computed with: a condition's
    /// time is then when it last changed, as the API conventions ask, rather than the reload's.
    pub fn set_transition_time(&mut self, time: impl Into<String>) {
        self.opts.transition_time = time.into();
    }

    /// The result of the last update (empty before the first).
    pub fn compiled(&self) -> &Compiled {
        &self.current
    }

    /// Consumes the compiler, returning the last result without copying it.
    pub fn into_compiled(self) -> Compiled {
        self.current
    }

    /// Compiles `objects`, reusing whatever the changes since the last update did not reach,
    /// and returns the result (identical to [`crate::compile`] of `objects`). Cloning the
    /// returned model is cheap (virtual hosts are shared); cloning the statuses is a deep copy.
    pub fn update(&mut self, objects: &Objects) -> &Compiled {
        let opts = self.opts.clone();
        let time = opts.transition_time.as_str();

        // Route statuses go back to their entries for reuse.
        let mut old_statuses = std::mem::take(&mut self.current.statuses).into_iter();
        old_statuses
            .by_ref()
            .take(self.head_statuses)
            .for_each(drop);
        for e in self.routes.iter_mut().filter(|e| e.has_status) {
            e.status = old_statuses.next();
        }

        // What changed among the objects every route depends on.
        let env_changed = diff_kinds(
            objects,
            &[
                Kind::GatewayClass,
                Kind::Gateway,
                Kind::Namespace,
                Kind::Secret,
            ],
            &mut self.env,
        )
        .is_some();
        let grants_changed =
            diff_kinds(objects, &[Kind::ReferenceGrant], &mut self.grants).is_some();
        let env_changed = env_changed || grants_changed || !self.primed;
        let changed_services: HashSet<(String, String)> = diff_kinds(
            objects,
            &[Kind::Service, Kind::EndpointSlice],
            &mut self.services,
        )
        .into_iter()
        .flatten()
        .filter_map(|o| service_of(&o))
        .collect();
        self.primed = true;

        // GatewayClasses and Gateways: few, always recomputed.
        let (mut statuses, our_classes) = compile::class_statuses(objects, &opts);
        let mut gateways: Vec<GatewayState> = Vec::new();
        for o in objects.of_kind(Kind::Gateway) {
            let Object::Gateway(gw) = o else { continue };
            if our_classes.contains(&gw.spec.gateway_class_name) {
                gateways.push(gateway::gateway_state(
                    objects,
                    gw,
                    opts.default_bind_address,
                ));
            }
        }
        gateway::mark_socket_conflicts(&mut gateways);

        // Routes: merge the new objects with the cached entries (both in key order).
        let mut old = std::mem::take(&mut self.routes).into_iter().peekable();
        let route_count: usize = routes::ROUTE_KINDS
            .iter()
            .map(|&k| objects.of_kind_shared(k).count())
            .sum();
        let mut entries: Vec<Box<RouteEntry>> = Vec::with_capacity(route_count);
        let mut fresh: Vec<bool> = Vec::with_capacity(route_count);
        let mut gone: Vec<Box<RouteEntry>> = Vec::new();
        for kind in routes::ROUTE_KINDS {
            for (key, object) in objects.of_kind_shared(kind) {
                while old
                    .peek()
                    .is_some_and(|e| !Arc::ptr_eq(&e.object, object) && e.key < *key)
                {
                    gone.extend(old.next());
                }
                match old.next_if(|e| Arc::ptr_eq(&e.object, object) || e.key == *key) {
                    Some(mut e) if Arc::ptr_eq(&e.object, object) || *e.object == **object => {
                        e.object = object.clone();
                        entries.push(e);
                        fresh.push(false);
                    }
                    other => {
                        gone.extend(other);
                        if let Some(e) = RouteEntry::new(key.clone(), object.clone(), self.keep) {
                            entries.push(Box::new(e));
                            fresh.push(true);
                        }
                    }
                }
            }
        }
        gone.extend(old);

        // Attachment (before conflicts between HTTP and gRPC routes).
        let index = attach::gateway_index(&gateways);
        for (e, &new) in entries.iter_mut().zip(&fresh) {
            if new || env_changed {
                e.outcomes = attach::attach(objects, &gateways, &index, &e.view);
            }
        }
        let overrides = {
            let views: Vec<&RouteView> = entries.iter().map(|e| &e.view).collect();
            let outs: Vec<&[ParentOutcome]> = entries.iter().map(|e| &e.outcomes[..]).collect();
            attach::http_and_grpc_hostnames_do_not_overlap(&gateways, &views, &outs)
        };

        // HTTP sockets: rebuilt from the Gateways when those changed.
        if env_changed {
            self.rebuild_http_skeleton(&gateways);
            for e in entries.iter_mut() {
                e.placed.clear();
            }
        }
        let socket_index: HashMap<SocketAddr, usize> = self
            .current
            .model
            .http
            .iter()
            .enumerate()
            .map(|(i, l)| (l.address, i))
            .collect();
        if !env_changed {
            for e in &gone {
                self.unplace(&socket_index, e);
            }
        }

        // Place each route whose rules or placement changed.
        let mut problems: Vec<Option<RefProblem>> = Vec::with_capacity(entries.len());
        for (i, (e, &new)) in entries.iter_mut().zip(&fresh).enumerate() {
            let overridden = overrides.contains_key(&i);
            let effective = overrides.get(&i).unwrap_or(&e.outcomes);
            let resolve_dirty = new
                || grants_changed
                || (!changed_services.is_empty()
                    && e.deps.iter().any(|d| changed_services.contains(d)));
            // Placement depends on the outcomes and the Gateways only.
            let replace_outcomes = new || env_changed || overridden || e.overridden;
            if !replace_outcomes && !resolve_dirty {
                e.overridden = overridden;
                problems.push(if e.is_http() && !e.placed.is_empty() {
                    e.http_problem.clone().or_else(|| e.first_problem.clone())
                } else {
                    None
                });
                continue;
            }
            let placed = if !e.is_http() {
                Vec::new()
            } else if replace_outcomes {
                placements(&gateways, &e.view, effective)
            } else {
                e.placed.clone()
            };
            if resolve_dirty {
                e.first_problem = e.with_rules(|v| routes::first_ref_problem(objects, v));
            }
            let replace = resolve_dirty || env_changed || placed != e.placed;
            if replace {
                self.unplace(&socket_index, e);
                e.placed = Vec::new();
                if !placed.is_empty() {
                    let mut problem = None;
                    let rules = e.with_rules(|v| routes::http_rules(objects, v, &mut problem));
                    e.http_problem = problem;
                    let mut rules = Some(rules);
                    for (n, (socket, pattern)) in placed.iter().enumerate() {
                        let host = self.host(&socket_index, *socket, pattern);
                        host.placements += 1;
                        host.touched = true;
                        // The last placement takes the rules, the others copy them.
                        if n + 1 == placed.len() {
                            host.add.extend(rules.take().into_iter().flatten());
                        } else {
                            host.add.extend(rules.iter().flatten().cloned());
                        }
                    }
                }
                e.placed = placed;
            }
            e.shrink();
            e.overridden = overridden;
            problems.push(if e.is_http() && !e.placed.is_empty() {
                e.http_problem.clone().or_else(|| e.first_problem.clone())
            } else {
                None
            });
        }
        self.finish_hosts();

        // Listener counts, L4 and passthrough listeners.
        let views: Vec<&RouteView> = entries.iter().map(|e| &e.view).collect();
        let effective: Vec<&[ParentOutcome]> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| overrides.get(&i).unwrap_or(&e.outcomes).as_slice())
            .collect();
        for outs in &effective {
            let mut seen: Vec<(usize, usize)> = Vec::new();
            if let [one] = outs
                && let [gl] = one.attached[..]
            {
                seen.push(gl); // the common case, without sorting
            } else {
                seen.extend(outs.iter().flat_map(|o| o.attached.iter().copied()));
                seen.sort_unstable();
                seen.dedup();
            }
            for (g, l) in seen {
                let count = &mut gateways[g].listeners[l].attached_routes;
                *count = count.saturating_add(1);
            }
        }
        let ordered = attach::by_listener(&views, &effective, |(g, l)| {
            matches!(
                gateways[g].listeners[l].protocol,
                Some(Protocol::Tcp | Protocol::Udp | Protocol::Tls)
            )
        });
        let mut l4_problems: Vec<Option<RefProblem>> = vec![None; entries.len()];
        self.current.model.l4.clear();
        self.current.model.passthrough.clear();
        l4::build(
            objects,
            &gateways,
            &views,
            &ordered,
            &mut self.current.model,
            &mut l4_problems,
        );
        tls::build(
            objects,
            &gateways,
            &views,
            &ordered,
            &mut self.current.model,
            &mut l4_problems,
        );

        // Statuses.
        for g in &gateways {
            statuses.push(compile::gateway_status(g, time));
        }
        self.head_statuses = statuses.len();
        drop((views, effective, ordered));
        let mut memo = compile::StatusMemo::default();
        for (i, e) in entries.iter_mut().enumerate() {
            let e = &mut **e;
            let outs: &[ParentOutcome] = overrides.get(&i).unwrap_or(&e.outcomes);
            e.has_status = !outs.is_empty();
            if !e.has_status {
                e.status = None;
                e.status_inputs = None;
                continue;
            }
            let problem = if e.is_http() {
                problems[i].take()
            } else {
                l4_problems[i].take()
            }
            .or_else(|| e.first_problem.clone());
            let reuse = !fresh[i]
                && e.status.is_some()
                && e.status_inputs
                    .as_ref()
                    .is_some_and(|(o, p)| o.as_slice() == outs && *p == problem);
            if !reuse {
                e.status = Some(compile::route_status(
                    &e.view, outs, &problem, &opts, &mut memo,
                ));
                if self.keep {
                    e.status_inputs = Some((outs.to_vec(), problem));
                }
            }
            statuses.extend(e.status.take());
        }
        self.current.statuses = statuses;
        self.routes = entries;
        &self.current
    }

    /// Rebuilds the HTTP listeners from the Gateways, without routes: names, certificates and
    /// the listeners' own hostnames.
    fn rebuild_http_skeleton(&mut self, gateways: &[GatewayState]) {
        let mut by_socket: BTreeMap<SocketAddr, (HttpListener, SocketState)> = BTreeMap::new();
        for g in gateways {
            for l in &g.listeners {
                let tls = match l.protocol {
                    Some(Protocol::Http) if l.programmable() => false,
                    Some(Protocol::Https) if l.programmable() => true,
                    _ => continue,
                };
                for ip in &g.addresses {
                    let address = SocketAddr::new(*ip, l.port);
                    let (listener, state) = by_socket.entry(address).or_insert_with(|| {
                        (
                            HttpListener {
                                names: Vec::new(),
                                address,
                                tls: tls.then(Vec::new),
                                hosts: Vec::new(),
                                exact_hosts: Default::default(),
                            },
                            SocketState::default(),
                        )
                    });
                    listener.names.push(format!("{}/{}", g.id(), l.name));
                    if let Some(certs) = listener.tls.as_mut() {
                        certs.extend(l.certificates.iter().cloned());
                    }
                    let host = state.hosts.entry(l.hostname.clone()).or_default();
                    host.base = true;
                    host.touched = true;
                }
            }
        }
        let (listeners, sockets) = by_socket.into_values().unzip();
        self.current.model.http = listeners;
        self.sockets = sockets;
    }

    fn host(
        &mut self,
        socket_index: &HashMap<SocketAddr, usize>,
        socket: SocketAddr,
        pattern: &Option<String>,
    ) -> &mut HostState {
        let s = socket_index[&socket];
        self.sockets[s].hosts.entry(pattern.clone()).or_default()
    }

    /// Takes a route's rules off the hosts it was placed on.
    fn unplace(&mut self, socket_index: &HashMap<SocketAddr, usize>, e: &RouteEntry) {
        let mut done: Vec<&(SocketAddr, Option<String>)> = Vec::new();
        for p in &e.placed {
            let Some(&s) = socket_index.get(&p.0) else {
                continue;
            };
            let Some(host) = self.sockets[s].hosts.get_mut(&p.1) else {
                continue;
            };
            host.placements -= 1;
            host.touched = true;
            if !done.contains(&p) {
                host.remove.push(e.rule_route.clone());
                done.push(p);
            }
        }
    }

    /// Applies the pending changes to the touched virtual hosts, and re-orders a listener's hosts
    /// when some appeared or disappeared.
    fn finish_hosts(&mut self) {
        for (listener, state) in self.current.model.http.iter_mut().zip(&mut self.sockets) {
            let mut reorder = false;
            let mut fresh: HashMap<Option<String>, Arc<VirtualHost>> = HashMap::new();
            state.hosts.retain(|pattern, host| {
                if !host.touched {
                    return true;
                }
                host.touched = false;
                if host.placements == 0 && !host.base {
                    reorder = true;
                    return false;
                }
                let remove = std::mem::take(&mut host.remove);
                let add = std::mem::take(&mut host.add);
                let apply = |vh: &mut VirtualHost| {
                    if !remove.is_empty() {
                        vh.rules.retain(|r| !remove.contains(&r.route));
                    }
                    if !add.is_empty() {
                        vh.rules.extend(add);
                        // Stable and adaptive: the rules already in place are a sorted run.
                        vh.rules.sort_by(|a, b| {
                            crate::http::precedence(&a.order, &b.order)
                                .then_with(|| a.route.cmp(&b.route))
                        });
                    }
                };
                match host.pos {
                    Some(pos) => apply(Arc::make_mut(&mut listener.hosts[pos])),
                    None => {
                        let mut vh = VirtualHost {
                            hostname: pattern.clone(),
                            rules: Vec::new(),
                        };
                        apply(&mut vh);
                        fresh.insert(pattern.clone(), Arc::new(vh));
                        reorder = true;
                    }
                }
                true
            });
            if !reorder {
                continue;
            }
            let mut old: Vec<Option<Arc<VirtualHost>>> = std::mem::take(&mut listener.hosts)
                .into_iter()
                .map(Some)
                .collect();
            let mut hosts: Vec<(Option<String>, Arc<VirtualHost>)> = state
                .hosts
                .iter()
                .filter_map(|(pattern, host)| {
                    let vh = match host.pos {
                        Some(pos) => old[pos].take(),
                        None => fresh.remove(pattern),
                    }?;
                    Some((pattern.clone(), vh))
                })
                .collect();
            hosts.sort_by_cached_key(|(p, _)| hostname::order_key(p));
            let mut exact = HashMap::new();
            for (i, (pattern, _)) in hosts.iter().enumerate() {
                if let Some(host) = state.hosts.get_mut(pattern) {
                    host.pos = Some(i);
                }
                if let Some(n) = pattern.as_ref().filter(|n| !n.starts_with("*.")) {
                    exact.insert(n.clone(), i);
                }
            }
            listener.exact_hosts = Arc::new(exact);
            listener.hosts = hosts.into_iter().map(|(_, vh)| vh).collect();
        }
    }
}

/// Where an HTTP or gRPC route's rules go: (socket, hostname pattern) for every programmable
/// HTTP/HTTPS listener it is attached to, every address of its Gateway, and every hostname it
/// shares with the listener.
fn placements(
    gateways: &[GatewayState],
    r: &RouteView,
    outcomes: &[ParentOutcome],
) -> Vec<(SocketAddr, Option<String>)> {
    let mut listeners: Vec<(usize, usize)> = outcomes
        .iter()
        .flat_map(|o| o.attached.iter().copied())
        .collect();
    listeners.sort_unstable();
    listeners.dedup();
    let mut out = Vec::new();
    for (gi, li) in listeners {
        let g = &gateways[gi];
        let l = &g.listeners[li];
        if !matches!(l.protocol, Some(Protocol::Http | Protocol::Https)) || !l.programmable() {
            continue;
        }
        let Some(patterns) = hostname::intersect(l.hostname.as_deref(), &r.hostnames) else {
            continue;
        };
        for ip in &g.addresses {
            let socket = SocketAddr::new(*ip, l.port);
            out.extend(patterns.iter().map(|p| (socket, p.clone())));
        }
    }
    out
}
