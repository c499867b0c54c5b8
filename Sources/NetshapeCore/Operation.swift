/// One change to the kernel or cgroupfs. Each names the `tc` or shell command it stands for and
/// knows its inverse, so a failed `apply` can undo what it did, newest first.
///
/// Netlink flags follow the tc verb in one place (the kernel layer): add = CREATE|EXCL,
/// replace = CREATE|REPLACE, change = 0, delete.
public struct Operation: Sendable, Equatable {
    /// Which device of the namespace a tc operation is for.
    public enum Link: String, Sendable, Equatable {
        /// The namespace's shaped device (egress, classes, classifier).
        case namespace
        /// The device carrying its ingress shaping (host-side veth peer, or IFB).
        case ingress
        /// netshape's own (host) namespace, for provisioning.
        case host
    }

    /// The policy namespace this operation belongs to.
    public var namespace: String
    /// The device it touches (empty for cgroupfs and process operations).
    public var device: String
    public var link: Link
    public var action: Action
    /// Where it acts, as the observation it was planned from resolved it (`resolved(in:)`); nil for
    /// cgroupfs and process operations, provisioning, and namespaces not observed yet: the kernel
    /// port then finds the namespace by the policy's name.
    public var target: ResolvedTarget?

    public init(namespace: String, device: String = "", link: Link = .namespace, action: Action) {
        self.namespace = namespace
        self.device = device
        self.link = link
        self.action = action
    }

    public enum Action: Sendable, Equatable {
        /// `tc qdisc add dev D root handle M: htb default N`
        case addRootQdisc(HTBQdiscSpec)
        /// `tc qdisc replace dev D root handle M: htb default N` (only with `--force`)
        case replaceRootQdisc(HTBQdiscSpec, replacing: ObservedQdisc)
        /// `tc qdisc del dev D root handle M:` (removes the whole tree)
        case deleteRootQdisc(HTBQdiscSpec)
        /// `tc class add dev D parent P classid C htb …`
        case addClass(HTBClassSpec)
        /// `tc class change dev D parent P classid C htb …` (in place: counters keep counting)
        case changeClass(HTBClassSpec, old: HTBClassSpec)
        /// `tc class del dev D classid C`
        case deleteClass(HTBClassSpec)
        /// `tc qdisc add dev D parent C <queue>`
        case addLeaf(LeafQdiscSpec)
        /// `tc qdisc replace dev D parent C <queue>`
        case replaceLeaf(LeafQdiscSpec, old: LeafQdiscSpec)
        /// `tc qdisc del dev D parent C`
        case deleteLeaf(LeafQdiscSpec)
        /// `tc filter add dev D parent M: protocol all prio P handle H cgroup|bpf`
        case addFilter(FilterSpec)
        /// `tc filter del dev D parent M: protocol all prio P handle H <kind>`
        case deleteFilter(FilterSpec)
        /// `mkdir <net_cls>/PATH` and, when the classid is not 0, `echo ID > PATH/net_cls.classid`
        case createCgroup(path: String, classid: TCHandle)
        /// `echo ID > <net_cls>/PATH/net_cls.classid`
        case setClassID(path: String, classid: TCHandle, old: TCHandle)
        /// `rmdir <net_cls>/PATH` (empty it first)
        case removeCgroup(path: String, classid: TCHandle)
        /// `echo PID > <net_cls>/TO/cgroup.procs`
        case moveProcess(pid: Int32, comm: String, from: String, to: String)
        /// `bpftool map update name ns_cg2_… key ID value CLASSID`: the cgroup v2 classifier's map
        /// sends the cgroup (and everything below it) to a class. `old`: the classid it replaces.
        case mapCgroup(Cgroup2Entry, old: TCHandle?)
        /// `bpftool map delete name ns_cg2_… key ID`
        case unmapCgroup(Cgroup2Entry)

        // Ingress through an IFB (no reachable veth peer).
        /// `ip link add name IFB type ifb txqueuelen 1000 && ip link set IFB up` (inside the namespace)
        case createIFB(String)
        /// `ip link del IFB`
        case deleteIFB(String)
        /// `tc qdisc add dev D handle ffff: ingress && tc filter add dev D parent ffff: u32 match u32 0 0
        /// action mirred egress redirect dev IFB`
        case addIngressRedirect(ifb: String)
        /// `tc qdisc del dev D ingress` (removes the redirect with it)
        case deleteIngressRedirect(ifb: String)

        // Provisioning (`[namespace.provision]`).
        /// `ip netns add NAME`
        case createNetns(String)
        /// `ip netns del NAME`
        case deleteNetns(String)
        /// `ip link add name HOST type veth peer name DEV netns NS`
        case createVeth(host: String, peer: String, netns: String)
        /// `ip link del HOST` (both ends go)
        case deleteVeth(host: String)
        /// `ip link add name BR type bridge && ip link set BR up`
        case createBridge(String)
        /// `ip link del BR`
        case deleteBridge(String)
        /// `ip link set DEV master BR`
        case attachToBridge(bridge: String)
        /// `ip link set DEV nomaster`
        case detachFromBridge(bridge: String)
        /// `ip addr add CIDR dev DEV` (on `link`: `.host` or `.namespace`)
        case addAddress(String)
        /// `ip addr del CIDR dev DEV`
        case deleteAddress(String)
        /// `ip link set DEV up`
        case linkUp
        /// `ip link set DEV down`
        case linkDown
        /// `ip route add default via GW` (inside the namespace)
        case addDefaultRoute(gateway: String)
        /// `ip route del default via GW`
        case deleteDefaultRoute(gateway: String)

        // The socket-creation classifier (one program and map for the whole host).
        /// Load the sock_create program and its map and attach it on the cgroup2 root
        /// (`BPF_CGROUP_INET_SOCK_CREATE`, `BPF_F_ALLOW_MULTI`).
        case attachSockCreate
        /// Detach it (the program and its map go with the attachment).
        case detachSockCreate
        /// Insert or update one rule of the map.
        case putSockRule(SockKey, SockVerdict, old: SockVerdict?)
        /// Delete one rule of the map.
        case deleteSockRule(SockKey, old: SockVerdict)
    }

    /// What undoes this operation.
    public var inverse: Operation {
        let a: Action
        switch action {
        case .addRootQdisc(let q): a = .deleteRootQdisc(q)
        case .replaceRootQdisc(let q, _):
            // A foreign qdisc replaced under --force cannot be rebuilt from a dump; removing ours gives
            // the device back its kernel default, which is the safest state netshape can restore.
            a = .deleteRootQdisc(q)
        case .deleteRootQdisc(let q): a = .addRootQdisc(q)
        case .addClass(let c): a = .deleteClass(c)
        case .changeClass(let new, let old): a = .changeClass(old, old: new)
        case .deleteClass(let c): a = .addClass(c)
        case .addLeaf(let l): a = .deleteLeaf(l)
        case .replaceLeaf(let new, let old): a = .replaceLeaf(old, old: new)
        case .deleteLeaf(let l): a = .addLeaf(l)
        case .addFilter(let f): a = .deleteFilter(f)
        case .deleteFilter(let f): a = .addFilter(f)
        case .createCgroup(let p, let id): a = .removeCgroup(path: p, classid: id)
        case .setClassID(let p, let id, let old): a = .setClassID(path: p, classid: old, old: id)
        case .removeCgroup(let p, let id): a = .createCgroup(path: p, classid: id)
        case .moveProcess(let pid, let comm, let from, let to):
            a = .moveProcess(pid: pid, comm: comm, from: to, to: from)
        case .mapCgroup(let e, let old):
            if let old {
                a = .mapCgroup(Cgroup2Entry(path: e.path, id: e.id, classid: old), old: e.classid)
            } else {
                a = .unmapCgroup(e)
            }
        case .unmapCgroup(let e): a = .mapCgroup(e, old: nil)
        case .createIFB(let n): a = .deleteIFB(n)
        case .deleteIFB(let n): a = .createIFB(n)
        case .addIngressRedirect(let i): a = .deleteIngressRedirect(ifb: i)
        case .deleteIngressRedirect(let i): a = .addIngressRedirect(ifb: i)
        case .createNetns(let n): a = .deleteNetns(n)
        case .deleteNetns(let n): a = .createNetns(n)
        case .createVeth(let h, _, _): a = .deleteVeth(host: h)
        case .deleteVeth(let h): a = .deleteVeth(host: h)  // cannot be recreated from its name alone
        case .createBridge(let b): a = .deleteBridge(b)
        case .deleteBridge(let b): a = .createBridge(b)
        case .attachToBridge(let b): a = .detachFromBridge(bridge: b)
        case .detachFromBridge(let b): a = .attachToBridge(bridge: b)
        case .addAddress(let c): a = .deleteAddress(c)
        case .deleteAddress(let c): a = .addAddress(c)
        case .linkUp: a = .linkDown
        case .linkDown: a = .linkUp
        case .addDefaultRoute(let g): a = .deleteDefaultRoute(gateway: g)
        case .deleteDefaultRoute(let g): a = .addDefaultRoute(gateway: g)
        case .attachSockCreate: a = .detachSockCreate
        case .detachSockCreate: a = .attachSockCreate
        case .putSockRule(let k, let v, let old):
            a = old.map { .putSockRule(k, $0, old: v) } ?? .deleteSockRule(k, old: v)
        case .deleteSockRule(let k, let old): a = .putSockRule(k, old, old: nil)
        }
        var op = Operation(namespace: namespace, device: device, link: link, action: a)
        op.target = target
        return op
    }

    /// The verb, as in `tc` (`add`, `change`, `replace`, `delete`) or the cgroupfs action.
    public var verb: String {
        switch action {
        case .addRootQdisc, .addClass, .addLeaf, .addFilter: return "add"
        case .replaceRootQdisc, .replaceLeaf: return "replace"
        case .changeClass: return "change"
        case .deleteRootQdisc, .deleteClass, .deleteLeaf, .deleteFilter: return "delete"
        case .createCgroup: return "create"
        case .setClassID: return "set"
        case .removeCgroup: return "remove"
        case .moveProcess: return "move"
        case .mapCgroup(_, let old): return old == nil ? "add" : "change"
        case .unmapCgroup: return "delete"
        case .createIFB, .createNetns, .createVeth, .createBridge: return "create"
        case .deleteIFB, .deleteNetns, .deleteVeth, .deleteBridge: return "delete"
        case .addIngressRedirect, .addAddress, .addDefaultRoute: return "add"
        case .deleteIngressRedirect, .deleteAddress, .deleteDefaultRoute: return "delete"
        case .attachToBridge, .detachFromBridge, .linkUp, .linkDown: return "set"
        case .attachSockCreate: return "attach"
        case .detachSockCreate: return "detach"
        case .putSockRule(_, _, let old): return old == nil ? "add" : "change"
        case .deleteSockRule: return "delete"
        }
    }

    /// The kind of object touched.
    public var object: String {
        switch action {
        case .addRootQdisc, .replaceRootQdisc, .deleteRootQdisc, .addLeaf, .replaceLeaf,
            .deleteLeaf:
            return "qdisc"
        case .addClass, .changeClass, .deleteClass: return "class"
        case .addFilter, .deleteFilter: return "filter"
        case .createCgroup, .setClassID, .removeCgroup: return "cgroup"
        case .moveProcess: return "process"
        case .mapCgroup, .unmapCgroup: return "bpf map"
        case .createIFB, .deleteIFB, .createVeth, .deleteVeth, .createBridge, .deleteBridge, .attachToBridge,
            .detachFromBridge, .linkUp, .linkDown:
            return "link"
        case .addIngressRedirect, .deleteIngressRedirect: return "redirect"
        case .createNetns, .deleteNetns: return "netns"
        case .addAddress, .deleteAddress: return "address"
        case .addDefaultRoute, .deleteDefaultRoute: return "route"
        case .attachSockCreate, .detachSockCreate, .putSockRule, .deleteSockRule: return "sockcreate"
        }
    }

    /// The cgroup this operation creates, renumbers or removes.
    public var cgroupPath: String? {
        switch action {
        case .createCgroup(let p, _), .setClassID(let p, _, _), .removeCgroup(let p, _): return p
        default: return nil
        }
    }

    /// True for provisioning operations (namespaces, links, addresses, routes).
    public var isProvisioning: Bool {
        switch action {
        case .createNetns, .deleteNetns, .createVeth, .deleteVeth, .createBridge, .deleteBridge, .attachToBridge,
            .detachFromBridge, .addAddress, .deleteAddress, .linkUp, .linkDown, .addDefaultRoute, .deleteDefaultRoute:
            return true
        default: return false
        }
    }

    /// True for operations that only move processes (the daemon's steady work, not configuration).
    public var isMembership: Bool {
        if case .moveProcess = action { return true }
        return false
    }

    /// The equivalent command an operator could type.
    public var command: String {
        let where_ = link == .ingress ? "  # ingress of \(namespace)" : ""
        return baseCommand + where_
    }

    var ipPrefix: String { link == .host ? "ip" : "ip -n <\(namespace)>" }

    var baseCommand: String {
        let dev = "dev \(device)"
        switch action {
        case .addRootQdisc(let q):
            return "tc qdisc add \(dev) root handle \(q.handle) htb default \(String(q.defaultMinor, radix: 16))"
        case .replaceRootQdisc(let q, let old):
            return "tc qdisc replace \(dev) root handle \(q.handle) htb default \(String(q.defaultMinor, radix: 16))"
                + "  # replaces \(old.kind) \(old.handle) (--force)"
        case .deleteRootQdisc(let q):
            return "tc qdisc del \(dev) root handle \(q.handle)"
        case .addClass(let c):
            return "tc class add \(dev) parent \(c.parent) classid \(c.classid) \(c.tcArguments)"
        case .changeClass(let c, _):
            return "tc class change \(dev) parent \(c.parent) classid \(c.classid) \(c.tcArguments)"
        case .deleteClass(let c):
            return "tc class del \(dev) classid \(c.classid)"
        case .addLeaf(let l):
            return "tc qdisc add \(dev) parent \(l.parent) \(l.queue)"
        case .replaceLeaf(let l, _):
            return "tc qdisc replace \(dev) parent \(l.parent) \(l.queue)"
        case .deleteLeaf(let l):
            return "tc qdisc del \(dev) parent \(l.parent)"
        case .addFilter(let f):
            let what: String
            switch f.kind {
            case .cgroup: what = "cgroup"
            case .bpf: what = "bpf obj <bpf_get_cgroup_classid> name \(FilterSpec.bpfProgramName)"
            case .cgroup2:
                what =
                    "bpf obj <cgroup2 classifier, map \(Cgroup2Entry.objectName(namespace: namespace))> "
                    + "name \(FilterSpec.cgroup2ProgramName)"
            }
            return "tc filter add \(dev) parent \(f.parent) protocol all prio \(f.priority) handle \(f.handle) \(what)"
        case .deleteFilter(let f):
            return
                "tc filter del \(dev) parent \(f.parent) protocol all prio \(f.priority) handle \(f.handle) \(f.kind.kind)"
        case .createCgroup(let p, let id):
            return id.raw == 0
                ? "mkdir <net_cls>/\(p)"
                : "mkdir <net_cls>/\(p) && echo \(hex(id)) > <net_cls>/\(p)/net_cls.classid  # \(id)"
        case .setClassID(let p, let id, _):
            return "echo \(hex(id)) > <net_cls>/\(p)/net_cls.classid  # \(id)"
        case .removeCgroup(let p, _):
            return "rmdir <net_cls>/\(p)"
        case .moveProcess(let pid, let comm, _, let to):
            return "echo \(pid) > <net_cls>/\(to.isEmpty ? "" : to + "/")cgroup.procs  # \(comm)"
        case .mapCgroup(let e, _): return e.updateCommand(namespace: namespace)
        case .unmapCgroup(let e): return e.deleteCommand(namespace: namespace)
        case .createIFB(let n): return "\(ipPrefix) link add name \(n) txqueuelen 1000 up type ifb"
        case .deleteIFB(let n): return "\(ipPrefix) link del \(n)"
        case .addIngressRedirect(let i):
            return
                "tc qdisc add \(dev) handle ffff: ingress && tc filter add \(dev) parent ffff: protocol all u32 match u32 0 0 "
                + "action mirred egress redirect dev \(i)"
        case .deleteIngressRedirect: return "tc qdisc del \(dev) ingress"
        case .createNetns(let n): return "ip netns add \(n)"
        case .deleteNetns(let n): return "ip netns del \(n)"
        case .createVeth(let h, let p, let n): return "ip link add name \(h) type veth peer name \(p) netns \(n)"
        case .deleteVeth(let h): return "ip link del \(h)"
        case .createBridge(let b): return "ip link add name \(b) up type bridge"
        case .deleteBridge(let b): return "ip link del \(b)"
        case .attachToBridge(let b): return "ip link set \(device) master \(b)"
        case .detachFromBridge: return "ip link set \(device) nomaster"
        case .addAddress(let c): return "\(ipPrefix) addr add \(c) dev \(device)"
        case .deleteAddress(let c): return "\(ipPrefix) addr del \(c) dev \(device)"
        case .linkUp: return "\(ipPrefix) link set \(device) up"
        case .linkDown: return "\(ipPrefix) link set \(device) down"
        case .addDefaultRoute(let g): return "\(ipPrefix) route add default via \(g)"
        case .deleteDefaultRoute(let g): return "\(ipPrefix) route del default via \(g)"
        case .attachSockCreate:
            return "bpftool cgroup attach <cgroup2 root> sock_create <\(SockCreate.programName)> multi"
        case .detachSockCreate:
            return "bpftool cgroup detach <cgroup2 root> sock_create <\(SockCreate.programName)>"
        case .putSockRule(let k, let v, _):
            return "bpftool map update <\(SockCreate.mapName)> key \(k) value \(v)"
        case .deleteSockRule(let k, _):
            return "bpftool map delete <\(SockCreate.mapName)> key \(k)"
        }
    }
}

func hex(_ h: TCHandle) -> String { "0x" + String(h.raw, radix: 16) }

/// Where an operation acts, resolved by the observation it was planned from, so the kernel port
/// executes it without anything remembered from that observation.
public struct ResolvedTarget: Sendable, Equatable {
    /// The network namespace of the operation's device (a container's: the namespace file it
    /// resolved to, so the runtime is not asked again).
    public var netns: NetnsTarget
    /// The device's ifindex there; 0 when it was not observed (an IFB this run creates): the kernel
    /// port looks it up by name.
    public var ifindex: Int32

    public init(netns: NetnsTarget, ifindex: Int32) {
        self.netns = netns
        self.ifindex = ifindex
    }
}

extension Operation {
    /// This operation with its `target` taken from `observed`; unchanged when it has one already,
    /// needs none, or its namespace was not observed with a resolved namespace.
    public func resolved(in observed: ObservedState) -> Operation {
        guard target == nil, !isProvisioning, !device.isEmpty, let seen = observed.namespaces[namespace],
            seen.problem == nil, let netns = seen.target
        else { return self }
        var op = self
        switch link {
        case .namespace:
            op.target = ResolvedTarget(netns: netns, ifindex: device == seen.device ? seen.ifindex : 0)
        case .ingress:
            guard let ingress = seen.ingress else { return self }
            op.target = ResolvedTarget(
                netns: ingress.placement == .peer ? .host : netns,
                ifindex: device == ingress.device ? ingress.ifindex : 0)
        case .host: return self
        }
        return op
    }
}
