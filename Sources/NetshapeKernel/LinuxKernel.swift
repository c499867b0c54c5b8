internal import CNetshapeShim
import Glibc
import NetshapeCore

/// The kernel port for real: one netlink handle pair per namespace (libnl-route for qdiscs,
/// classes and cls_cgroup; libmnl for cls_bpf and filter dumps), cgroupfs for net_cls, /proc for
/// processes, and the state store for ownership.
///
/// Privileges: CAP_NET_ADMIN (tc), CAP_SYS_ADMIN (setns, mounting net_cls, bpf), write access to
/// cgroupfs. Not thread-safe: one engine drives it at a time (the CLI holds the state lock).
public final class LinuxKernel: KernelPort {
    /// An opened namespace with its sockets and resolved device.
    final class Context {
        let netns: NetworkNamespace
        let route: RouteSocket
        let mnl: MnlSocket
        var device: String
        var ifindex: Int32

        init(netns: NetworkNamespace, route: RouteSocket, mnl: MnlSocket, device: String, ifindex: Int32) {
            self.netns = netns
            self.route = route
            self.mnl = mnl
            self.device = device
            self.ifindex = ifindex
        }
    }

    let settings: Settings
    public let state: StateStore
    var contexts: [String: Context] = [:]
    var hierarchy: NetClsHierarchy?
    var cachedCapabilities: KernelCapabilities?
    let procs = ProcScanner()

    public init(settings: Settings, state: StateStore = StateStore()) {
        self.settings = settings
        self.state = state
    }

    // MARK: - Capabilities

    public func capabilities() throws -> KernelCapabilities {
        if let c = cachedCapabilities { return c }
        let c = try Self.probe()
        cachedCapabilities = c
        return c
    }

    /// Tries each object once on the loopback device of a private, throwaway network namespace
    /// (unshare on a dedicated thread), so nothing on the machine is touched. Creating a filter or
    /// qdisc also makes the kernel autoload its module, exactly as a real apply would.
    static func probe() throws -> KernelCapabilities {
        try onDedicatedThread {
            try sys("unshare(CLONE_NEWNET) for the capability probe") { netshape_unshare_net() }
            let route = try RouteSocket(namespace: "probe")
            let mnl = try MnlSocket(bus: NETLINK_ROUTE, namespace: "probe")
            let lo: Int32 = 1
            let major: UInt16 = 1
            try route.htbRoot(.add, ifindex: lo, device: "lo", HTBQdiscSpec(handle: TCHandle(major: major, minor: 0), defaultMinor: 1))
            let rate = Rate.mbit(10)
            try route.htbClass(.add, ifindex: lo, device: "lo", HTBClassSpec(
                classid: TCHandle(major: major, minor: 1), parent: TCHandle(major: major, minor: 0), rate: rate, ceil: rate,
                burst: Planner.defaultBurst(for: rate), cburst: Planner.defaultBurst(for: rate), priority: 0, quantum: 1514))
            func leafWorks(_ q: LeafQueue) -> Bool {
                (try? route.leaf(.replace, ifindex: lo, device: "lo", LeafQdiscSpec(parent: TCHandle(major: major, minor: 1), queue: q))) != nil
            }
            let fq = leafWorks(.fqCodel)
            let sfq = leafWorks(.sfq)
            let parent = TCHandle(major: major, minor: 0)
            let cgroup = (try? route.cgroupFilter(add: true, ifindex: lo, device: "lo",
                                                  FilterSpec(parent: parent, kind: .cgroup, priority: 1))) != nil
            var bpf = false
            if let fd = try? BPFClassifier.load() {
                defer { close(fd) }
                bpf = (try? mnl.addBpfFilter(ifindex: lo, device: "lo", FilterSpec(parent: parent, kind: .bpf, priority: 2),
                                            programFD: fd)) != nil
            }
            return KernelCapabilities(clsCgroup: cgroup, clsBpf: bpf, fqCodel: fq, sfq: sfq)
        }
    }

    // MARK: - Observation

    func context(_ r: NamespaceRequest) throws -> Context {
        if let c = contexts[r.name] { return c }
        let ns = try NetworkNamespace(r.target)
        let (route, mnl) = try ns.run { () -> (RouteSocket, MnlSocket) in
            (try RouteSocket(namespace: r.name), try MnlSocket(bus: NETLINK_ROUTE, namespace: r.name))
        }
        let ifindex: Int32
        let device: String
        if let d = r.device {
            guard let i = try route.ifindex(of: d) else {
                throw KernelError(.notFound, "ip link show \(d)", errno: ENODEV,
                                  reason: "device \(d) does not exist in network namespace \(r.target)")
            }
            ifindex = i
            device = d
        } else {
            guard let i = try route.defaultRouteIfindex(), let d = try route.name(of: i) else {
                throw KernelError(.notFound, "ip route show default", errno: ENODEV,
                                  reason: "network namespace \(r.target) has no default route, so no device to shape: set device")
            }
            ifindex = i
            device = d
        }
        let c = Context(netns: ns, route: route, mnl: mnl, device: device, ifindex: ifindex)
        contexts[r.name] = c
        return c
    }

    public func observe(_ request: ObservationRequest) throws -> ObservedState {
        var state = ObservedState(ownership: try self.state.loadOwnership())
        if hierarchy == nil { hierarchy = NetClsHierarchy.find(configured: settings.cgroupRoot) }
        if let h = hierarchy { state.cgroups = h.listNetshape() }
        let byNamespace = request.processes ? procs.scan() : [:]
        for r in request.namespaces {
            do {
                let c = try context(r)
                let qdiscs = try c.route.qdiscs(ifindex: c.ifindex, device: c.device)
                let classes = try c.route.classes(ifindex: c.ifindex, device: c.device)
                var filters: [ObservedFilter] = []
                if let root = qdiscs.first(where: { $0.parent == .root && $0.handle != .unspecified }) {
                    filters = try c.mnl.filters(ifindex: c.ifindex, device: c.device, parent: root.handle)
                }
                state.namespaces[r.name] = ObservedNamespace(
                    name: r.name, netnsID: c.netns.id, device: c.device, ifindex: c.ifindex, qdiscs: qdiscs,
                    classes: classes, filters: filters, processes: byNamespace[c.netns.id] ?? [])
            } catch let e as KernelError where e.code == .notFound {
                contexts[r.name] = nil
                state.namespaces[r.name] = ObservedNamespace(name: r.name, problem: e.reason)
            }
        }
        for u in request.users {
            if let p = getpwnam(u) { state.users[u] = p.pointee.pw_uid }
        }
        for g in request.groups {
            if let p = getgrnam(g) { state.groups[g] = p.pointee.gr_gid }
        }
        return state
    }

    public func saveOwnership(_ record: OwnershipRecord) throws { try state.saveOwnership(record) }

    // MARK: - Execution

    func cgroups() throws -> NetClsHierarchy {
        if let h = hierarchy { return h }
        let h = try NetClsHierarchy.findOrMount(configured: settings.cgroupRoot)
        hierarchy = h
        return h
    }

    public func execute(_ op: Operation) throws {
        switch op.action {
        case .createCgroup(let path, let id): return try cgroups().create(path, classid: id)
        case .setClassID(let path, let id, _): return try cgroups().setClassID(path, id)
        case .removeCgroup(let path, _): return try cgroups().remove(path)
        case .moveProcess(let pid, _, _, let to): return try cgroups().move(pid: pid, to: to)
        default: break
        }
        guard let c = contexts[op.namespace] else {
            throw KernelError(.state, op.command, reason: "namespace \(op.namespace) was not observed before this change")
        }
        let i = c.ifindex
        let d = c.device
        switch op.action {
        case .addRootQdisc(let q): try c.route.htbRoot(.add, ifindex: i, device: d, q)
        case .replaceRootQdisc(let q, _): try c.route.htbRoot(.replace, ifindex: i, device: d, q)
        case .deleteRootQdisc(let q): try c.route.deleteQdisc(ifindex: i, device: d, parent: .root, handle: q.handle)
        case .addClass(let spec): try c.route.htbClass(.add, ifindex: i, device: d, spec)
        case .changeClass(let spec, _): try c.route.htbClass(.change, ifindex: i, device: d, spec)
        case .deleteClass(let spec): try c.route.deleteClass(ifindex: i, device: d, spec)
        case .addLeaf(let l): try c.route.leaf(.add, ifindex: i, device: d, l)
        case .replaceLeaf(let l, _): try c.route.leaf(.replace, ifindex: i, device: d, l)
        case .deleteLeaf(let l): try c.route.deleteQdisc(ifindex: i, device: d, parent: l.parent, handle: nil)
        case .addFilter(let f):
            switch f.kind {
            case .cgroup: try c.route.cgroupFilter(add: true, ifindex: i, device: d, f)
            case .bpf:
                let fd = try BPFClassifier.load()
                defer { close(fd) }  // the filter holds its own reference to the program
                try c.mnl.addBpfFilter(ifindex: i, device: d, f, programFD: fd)
            }
        case .deleteFilter(let f): try c.mnl.deleteFilter(ifindex: i, device: d, f)
        case .createCgroup, .setClassID, .removeCgroup, .moveProcess: break
        }
    }

    /// The open namespace of a policy namespace (for `run` and `classify`).
    public func namespace(for request: NamespaceRequest) throws -> NetworkNamespace {
        try context(request).netns
    }

    /// The net_cls hierarchy, mounting it if needed (for `run` and `classify`).
    public func netCls() throws -> NetClsHierarchy { try cgroups() }

    /// Reads one process (for `classify`): its namespace id and details.
    public func process(_ pid: Int32) -> (String, ProcessInfo)? { procs.process(pid) }
}
