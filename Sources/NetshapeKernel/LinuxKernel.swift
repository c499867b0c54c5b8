internal import CNetshapeShim
import Glibc
import NetshapeCore

/// The kernel port for real: one netlink socket per namespace (libnl-route builds the messages for
/// qdiscs, classes, cls_cgroup, links, addresses and routes and parses their dumps; netshape's own
/// netlink layer sends everything and builds cls_bpf and filter dumps), cgroupfs for net_cls, /proc
/// for processes, and the state store for ownership.
///
/// Privileges: CAP_NET_ADMIN (tc, links), CAP_SYS_ADMIN (setns, mounting net_cls and netns files,
/// bpf), write access to cgroupfs. Not thread-safe: one engine drives it at a time (the CLI holds
/// the state lock).
public final class LinuxKernel: KernelPort {
    /// Sockets opened inside one network namespace.
    final class Sockets {
        let netns: NetworkNamespace
        let route: RouteSocket
        let filterSocket: FilterSocket
        /// `SO_NETNS_COOKIE` of the namespace, once asked (SockCreateKernel.swift).
        var netnsCookie: UInt64?
        init(netns: NetworkNamespace, route: RouteSocket, filterSocket: FilterSocket) {
            self.netns = netns
            self.route = route
            self.filterSocket = filterSocket
        }
    }

    /// A policy namespace's sockets and its resolved device.
    final class Context {
        let sockets: Sockets
        let device: String
        let ifindex: Int32
        init(sockets: Sockets, device: String, ifindex: Int32) {
            self.sockets = sockets
            self.device = device
            self.ifindex = ifindex
        }
        var route: RouteSocket { sockets.route }
        var filterSocket: FilterSocket { sockets.filterSocket }
        var netns: NetworkNamespace { sockets.netns }
    }

    let settings: Settings
    public let state: StateStore
    var requests: [String: NamespaceRequest] = [:]
    var sockets: [String: Sockets] = [:]
    var contexts: [String: Context] = [:]
    /// Where each namespace's ingress is shaped, from the last observation.
    var ingressPlacement: [String: ObservedIngress.Placement] = [:]
    var hierarchy: NetClsHierarchy?
    /// The cgroup v2 classifier map of each policy namespace, from its last creation or observation.
    var cgroup2Maps: [String: BPF.Map] = [:]
    var cachedCapabilities: KernelCapabilities?
    let procs = ProcScanner()
    /// Docker and Podman, for `docker:`/`podman:` targets and `containers` selectors.
    public var runtimes = ContainerRuntimes()
    /// Container target → the namespace file it resolved to last (the key of its sockets).
    var containerKeys: [NetnsTarget: String] = [:]
    /// Policy namespace name → the container its target resolved to in the last observation.
    public private(set) var resolvedContainers: [String: ResolvedContainer] = [:]

    public init(settings: Settings, state: StateStore = StateStore()) {
        self.settings = settings
        self.state = state
    }

    // MARK: - Capabilities

    /// What this kernel supports. Probed once per boot and kept in /run/netshape (keyed by the boot
    /// id and kernel release): the probe creates a network namespace, which costs tens of ms.
    public func capabilities() throws -> KernelCapabilities {
        if let c = cachedCapabilities { return c }
        let key =
            (Files.readString("/proc/sys/kernel/random/boot_id") ?? "").trimmingBlanksAndNewlines()
            + "/" + (Files.readString("/proc/sys/kernel/osrelease") ?? "").trimmingBlanksAndNewlines()
        if let c = state.loadCapabilities(key: key) {
            cachedCapabilities = c
            return c
        }
        let c = try Self.probe()
        cachedCapabilities = c
        state.saveCapabilities(c, key: key)
        return c
    }

    /// Tries each object once on the loopback device of a private, throwaway network namespace
    /// (unshare on a dedicated thread), so nothing on the machine is touched. Creating a filter or
    /// qdisc also makes the kernel autoload its module, exactly as a real apply would.
    static func probe() throws -> KernelCapabilities {
        try onDedicatedThread {
            try sys("unshare(CLONE_NEWNET) for the capability probe") { netshape_unshare_net() }
            let route = try RouteSocket(namespace: "probe")
            let filterSocket = FilterSocket(session: route.session, namespace: "probe")
            let lo: Int32 = 1
            let qdisc = TCHandle(major: 1, minor: 0)
            let leafClass = TCHandle(major: 1, minor: 1)
            try route.transact(
                RouteSocket.htbRoot(.add, ifindex: lo, device: "lo", HTBQdiscSpec(handle: qdisc, defaultMinor: 1)))
            let rate = Rate.mbit(10)
            try route.transact(
                RouteSocket.htbClass(
                    .add, ifindex: lo, device: "lo",
                    HTBClassSpec(
                        classid: leafClass, parent: qdisc, rate: rate, ceil: rate,
                        burst: Planner.defaultBurst(for: rate), cburst: Planner.defaultBurst(for: rate), priority: 0,
                        quantum: 1514)))
            func leafWorks(_ q: LeafQueue) -> Bool {
                (try? route.transact(
                    RouteSocket.leaf(.replace, ifindex: lo, device: "lo", LeafQdiscSpec(parent: leafClass, queue: q))))
                    != nil
            }
            let fq = leafWorks(.fqCodel)
            let sfq = leafWorks(.sfq)
            let cgroup =
                (try? route.transact(
                    RouteSocket.cgroupFilter(
                        ifindex: lo, device: "lo", FilterSpec(parent: qdisc, kind: .cgroup, priority: 1))))
                != nil
            var bpf = false
            if let fd = try? BPFClassifier.load() {
                defer { close(fd) }
                bpf =
                    (try? filterSocket.addBpfFilter(
                        ifindex: lo, device: "lo", FilterSpec(parent: qdisc, kind: .bpf, priority: 2),
                        programFD: fd)) != nil
            }
            let cgroup2Problem = bpf ? Cgroup2Classifier.probe() : "this kernel has no cls_bpf (CONFIG_NET_CLS_BPF)"
            return KernelCapabilities(
                clsCgroup: cgroup, clsBpf: bpf, fqCodel: fq, sfq: sfq, sockCreate: SockCreateHook.probe(),
                cgroup2: cgroup2Problem == nil, cgroup2Problem: cgroup2Problem)
        }
    }

    // MARK: - Sockets and contexts

    /// Sockets inside `target`, opened once.
    func sockets(_ target: NetnsTarget, label: String) throws -> Sockets {
        // A container is asked of its runtime every time: a restart gives it a new namespace and
        // pid. The sockets of the namespace it left are closed, so that namespace can go away.
        if let (runtime, ref) = target.container {
            let c = try runtimes.resolve(runtime, ref)
            if let previous = containerKeys[target], previous != c.netnsPath { sockets[previous] = nil }
            containerKeys[target] = c.netnsPath
            resolvedContainers[label] = c
            return try sockets(.path(c.netnsPath), label: label)
        }
        let key = target.path ?? "host"
        if let s = sockets[key] { return s }
        let ns = try NetworkNamespace(target)
        // One socket per namespace: libnl builds and parses, netshape's session sends and reads.
        let route = try ns.run { try RouteSocket(namespace: label) }
        let filterSocket = FilterSocket(session: route.session, namespace: label)
        let s = Sockets(netns: ns, route: route, filterSocket: filterSocket)
        sockets[key] = s
        return s
    }

    /// netshape's own namespace.
    func host() throws -> Sockets { try sockets(.host, label: "host") }

    func context(_ r: NamespaceRequest) throws -> Context {
        if let c = contexts[r.name] { return c }
        let s = try sockets(r.target, label: r.name)
        let ifindex: Int32
        let device: String
        if let d = r.device {
            guard let i = try s.route.ifindex(of: d) else {
                throw KernelError(
                    .notFound, "ip link show \(d)", errno: ENODEV,
                    reason: "device \(d) does not exist in network namespace \(r.target)")
            }
            ifindex = i
            device = d
        } else {
            guard let i = try s.route.defaultRouteIfindex(), let d = try s.route.name(of: i) else {
                throw KernelError(
                    .notFound, "ip route show default", errno: ENODEV,
                    reason: "network namespace \(r.target) has no default route, so no device to shape: set device")
            }
            ifindex = i
            device = d
        }
        let c = Context(sockets: s, device: device, ifindex: ifindex)
        contexts[r.name] = c
        return c
    }

    /// Forgets cached handles of a namespace whose namespace or devices were created or deleted.
    func forget(_ name: String) {
        contexts[name] = nil
        if let r = requests[name] { sockets[containerKeys[r.target] ?? r.target.path ?? "host"] = nil }
    }

    // MARK: - Observation

    /// Drops sockets of namespaces that are no longer what their target names. A container restart
    /// or `ip netns del` + `add` puts a new namespace behind the same path; the sockets netshape holds
    /// would keep talking to (and keep alive) the old one. Devices are looked up again every time:
    /// a veth recreated in the same namespace gets a new ifindex.
    func dropStale(_ requests: [NamespaceRequest]) {
        contexts = [:]
        for r in requests {
            guard let path = r.target.path, let s = sockets[path] else { continue }
            if Files.identity(path) != s.netns.id { sockets[path] = nil }
        }
    }

    public func observe(_ request: ObservationRequest) throws -> ObservedState {
        dropStale(request.namespaces)
        var state = ObservedState(ownership: try self.state.loadOwnership())
        if hierarchy == nil { hierarchy = NetClsHierarchy.find(configured: settings.cgroupRoot) }
        // A whole listing (four cgroupfs syscalls per class; three more where members are read,
        // a directory listing where a cgroup has subdirectories) and the netlink dumps below are
        // independent kernel work: a second thread reads class cgroups meanwhile, and this one
        // joins in when its dumps are done (the listing is the larger part at 1000 classes). The
        // listing only reads cgroupfs through its own descriptors.
        let listing = CgroupListing()
        if request.cgroups, let h = hierarchy {
            listing.start(
                h, namespaces: request.namespaces.map(\.name), only: request.cgroupPaths,
                withoutMembers: request.cgroupsWithoutMembers, concurrently: !request.namespaces.isEmpty)
        }
        defer { listing.wait() }
        observeCgroup2(request, into: &state)
        let byNamespace = request.processes ? procs.scan() : [:]
        for r in request.namespaces {
            requests[r.name] = r
            // Where a container is can change between any two observations (sockets() asks again).
            resolvedContainers[r.name] = nil
            if let p = r.provision { state.provision[r.name] = try observeProvision(r, p) }
            if let b = r.provision?.bridge, let note = Firewall.bridgeNote(b), !state.notes.contains(note) {
                state.notes.append(note)
            }
            do {
                let c = try context(r)
                if r.classesOnly {
                    state.namespaces[r.name] = ObservedNamespace(
                        name: r.name, netnsID: c.netns.id, device: c.device, ifindex: c.ifindex,
                        classes: try r.onlyClasses.map {
                            try c.route.classes(ifindex: c.ifindex, device: c.device, only: $0)
                        }
                            ?? c.route.classes(ifindex: c.ifindex, device: c.device))
                    continue
                }
                let qdiscs = try c.route.qdiscs(ifindex: c.ifindex, device: c.device)
                let classes = try c.route.classes(ifindex: c.ifindex, device: c.device)
                var filters: [ObservedFilter] = []
                if let root = qdiscs.first(where: { $0.parent == .root && $0.handle != .unspecified }) {
                    filters = try c.filterSocket.filters(ifindex: c.ifindex, device: c.device, parent: root.handle)
                }
                state.namespaces[r.name] = ObservedNamespace(
                    name: r.name, netnsID: c.netns.id, device: c.device, ifindex: c.ifindex, qdiscs: qdiscs,
                    classes: classes, filters: filters, processes: byNamespace[c.netns.id] ?? [],
                    ingress: r.ingress ? try observeIngress(r, c, qdiscs) : nil,
                    target: resolvedContainers[r.name].map { .path($0.netnsPath) } ?? r.target)
                state.namespaces[r.name]?.netnsCookie = try netnsCookie(c.sockets, label: r.name)
                state.namespaces[r.name]?.cgroup2Map = observeCgroup2Map(r.name, filters)
            } catch let e as KernelError where e.code == .notFound {
                forget(r.name)
                state.namespaces[r.name] = ObservedNamespace(name: r.name, problem: e.reason)
            }
            if let c = resolvedContainers[r.name] {
                state.resolved[r.name] =
                    "\(c.runtime.rawValue) container \(c.name) (\(c.id.prefix(12))), pid \(c.pid), \(c.netnsPath)"
                    + (c.sharesNetnsWith.map { ", sharing the network namespace of \($0)" } ?? "")
            }
        }
        state.cgroups = listing.wait()
        state.sockCreate = try observeSockCreate()
        for u in request.users {
            if let p = getpwnam(u) { state.users[u] = p.pointee.pw_uid }
        }
        for g in request.groups {
            if let p = getgrnam(g) { state.groups[g] = p.pointee.gr_gid }
        }
        return state
    }

    /// The net_cls listing of one observation: read in place, or shared between a second thread
    /// and this one, which joins in once its netlink dumps are done.
    final class CgroupListing {
        var result: [String: ObservedCgroup] = [:]
        var shared: NetClsHierarchy.Listing?
        var thread: pthread_t?

        /// Lists now, or (`concurrently`, and a thread can be had) starts a thread on the class
        /// cgroups of `namespaces` and leaves the rest to `wait`.
        func start(
            _ h: NetClsHierarchy, namespaces: [String], only: Set<String>?, withoutMembers: Set<String>,
            concurrently: Bool
        ) {
            guard concurrently, only == nil else {
                result = h.listNetshape(namespaces: namespaces, only: only, withoutMembers: withoutMembers)
                return
            }
            let l = h.listing(namespaces: namespaces, withoutMembers: withoutMembers)
            shared = l
            thread = try? spawn(name: "netshape-cgroups") { l.work() }
        }

        /// The listing: this thread reads what the other has not taken yet, then waits for it.
        /// Safe to call more than once.
        @discardableResult
        func wait() -> [String: ObservedCgroup] {
            guard let l = shared else { return result }
            l.work()
            if let t = thread { pthread_join(t, nil) }
            (shared, thread) = (nil, nil)
            result = l.finish()
            return result
        }
    }

    /// Where cgroup2 is mounted and the ids of the directories the policy's path rules name.
    func observeCgroup2(_ request: ObservationRequest, into state: inout ObservedState) {
        guard let mount = Cgroup2Mount.find() else { return }
        state.cgroup2Mount = mount
        for p in request.cgroup2Paths {
            if let id = Cgroup2Mount.id(mount: mount, path: p) { state.cgroup2[p] = id }
        }
        if request.cgroup2Members { state.cgroup2Members = cgroup2Members(mount: mount, roots: request.cgroup2Paths) }
    }

    /// The subtrees under `roots` and, of every process in them, what the kernel decides on before
    /// the classifier's map (`ObservedCgroup2Members.members`).
    func cgroup2Members(mount: String, roots: [String]) -> ObservedCgroup2Members {
        let directories = Cgroup2Mount.subtrees(mount: mount, roots: roots)
        var processes: [Int32: ObservedCgroup2Members.Process] = [:]
        // Many members share a few net_cls cgroups (most the root): one classid read for each.
        var classids: [String: TCHandle] = [:]
        for pid in directories.values.flatMap(\.pids) {
            guard let p = procs.process(pid, fields: [.comm, .ids, .cgroup]), let ns = procs.namespaceID(pid)
            else { continue }
            let classid: TCHandle
            if let known = classids[p.netCls] {
                classid = known
            } else {
                classid = hierarchy?.classid(p.netCls) ?? .unspecified
                classids[p.netCls] = classid
            }
            processes[pid] = ObservedCgroup2Members.Process(
                comm: p.comm, uid: p.uid, gid: p.gid, netnsID: ns, netClsClassid: classid)
        }
        return ObservedCgroup2Members(directories: directories, processes: processes)
    }

    /// The map behind netshape's cgroup v2 filter, read through the program the filter runs. nil
    /// when there is no such filter or its map cannot be read (the differ then rebuilds the filter).
    func observeCgroup2Map(_ name: String, _ filters: [ObservedFilter]) -> ObservedCgroup2Map? {
        cgroup2Maps[name] = nil
        guard
            let f = filters.first(where: {
                $0.priority == FilterSpec.netshapePriority && $0.bpfName == FilterSpec.cgroup2ProgramName
            }), let id = f.bpfProgramID,
            let (map, info) = try? Cgroup2Classifier.map(programID: id),
            let entries = try? Cgroup2Classifier.entries(map), let m = try? map.info()
        else { return nil }
        cgroup2Maps[name] = map
        return ObservedCgroup2Map(programID: info.id, mapID: m.id, name: m.name, entries: entries)
    }

    /// The classifier map of an operation's namespace: the one this process created or observed,
    /// else the one behind the filter on the device now.
    func cgroup2Map(_ op: Operation) throws -> BPF.Map {
        if let m = cgroup2Maps[op.namespace] { return m }
        let (s, i) = try tcTarget(op)
        let filters = try s.route.qdiscs(ifindex: i, device: op.device)
            .filter { $0.parent == .root && $0.handle != .unspecified }
            .flatMap { try s.filterSocket.filters(ifindex: i, device: op.device, parent: $0.handle) }
        guard observeCgroup2Map(op.namespace, filters) != nil, let m = cgroup2Maps[op.namespace] else {
            throw KernelError(
                .state, op.command, errno: ENOENT,
                reason: "no netshape cgroup2 classifier filter on \(op.device) of namespace \(op.namespace)")
        }
        return m
    }

    /// A map netshape holds goes with its filter: deleting the filter or the tree forgets it.
    func forgetCgroup2Map(after op: Operation) {
        switch op.action {
        case .deleteRootQdisc where op.link == .namespace: cgroup2Maps[op.namespace] = nil
        case .deleteFilter(let f) where f.kind == .cgroup2: cgroup2Maps[op.namespace] = nil
        default: break
        }
    }

    func observeProvision(_ r: NamespaceRequest, _ p: Provision) throws -> ObservedProvision {
        let links = Set(try host().route.links().map(\.name))
        return ObservedProvision(
            netnsExists: r.target.path.flatMap(Files.identity) != nil,
            hostDeviceExists: links.contains(p.hostDevice),
            bridgeExists: p.bridge.map(links.contains) ?? false)
    }

    /// Where this namespace's incoming traffic can be queued: the egress of its device's veth peer
    /// when that peer lives in netshape's own namespace (no IFB needed: real queueing, nothing to
    /// redirect), else an IFB inside the namespace fed by a mirred redirect.
    func observeIngress(_ r: NamespaceRequest, _ c: Context, _ qdiscs: [ObservedQdisc]) throws -> ObservedIngress {
        let h = try host()
        if h.netns.id != c.netns.id, let mine = try c.route.links().first(where: { $0.ifindex == c.ifindex }),
            mine.type == "veth", mine.peerIfindex > 0, mine.peerInOtherNamespace,
            let peer = try h.route.links().first(where: { $0.ifindex == mine.peerIfindex }),
            peer.type == "veth", peer.peerIfindex == c.ifindex
        {
            ingressPlacement[r.name] = .peer
            return ObservedIngress(
                placement: .peer, device: peer.name, netnsID: h.netns.id, ifindex: peer.ifindex,
                qdiscs: try h.route.qdiscs(ifindex: peer.ifindex, device: peer.name),
                classes: try h.route.classes(ifindex: peer.ifindex, device: peer.name))
        }
        ingressPlacement[r.name] = .ifb
        let ifb = r.ifbName
        let idx = try c.route.ifindex(of: ifb) ?? 0
        return ObservedIngress(
            placement: .ifb, device: ifb, netnsID: c.netns.id, ifindex: idx,
            qdiscs: idx == 0 ? [] : try c.route.qdiscs(ifindex: idx, device: ifb),
            classes: idx == 0 ? [] : try c.route.classes(ifindex: idx, device: ifb),
            ingressQdisc: qdiscs.first { $0.parent == .ingress })
    }

    public func loadOwnership() throws -> OwnershipRecord { try state.loadOwnership() }
    public func saveOwnership(_ record: OwnershipRecord) throws { try state.saveOwnership(record) }

    public func containers(matching selector: ContainerSelector) throws -> [ContainerInfo] {
        try runtimes.list(selector)
    }

    // MARK: - Execution

    func cgroups() throws -> NetClsHierarchy {
        if let h = hierarchy { return h }
        let h = try NetClsHierarchy.findOrMount(configured: settings.cgroupRoot, state: state)
        hierarchy = h
        return h
    }

    /// Test hook: `NETSHAPE_FAIL_OPERATION=N` makes the N-th operation this process executes fail
    /// with EIO before it touches anything, as a device removed half-way through would. The
    /// fault-injection tests walk N over every operation of an apply; unset, it costs one compare.
    let failAt: Int? = Environment.value("NETSHAPE_FAIL_OPERATION").flatMap { Int($0) }
    var executed = 0

    public func execute(_ op: Operation) throws {
        executed += 1
        if executed == failAt {
            throw KernelError(
                .state, op.command, errno: EIO,
                reason: "injected failure at operation \(executed) (NETSHAPE_FAIL_OPERATION)")
        }
        switch op.action {
        case .createCgroup(let path, let id): return try cgroups().create(path, classid: id)
        case .setClassID(let path, let id, _): return try cgroups().setClassID(path, id)
        case .removeCgroup(let path, _): return try cgroups().remove(path)
        case .moveProcess(let pid, _, _, let to): return try cgroups().move(pid: pid, to: to)
        case .attachSockCreate, .detachSockCreate, .putSockRule, .deleteSockRule: return try executeSockCreate(op)
        default: break
        }
        if op.isProvisioning { return try provision(op) }
        forgetCgroup2Map(after: op)
        switch op.action {
        case .mapCgroup(let e, _):
            try cgroup2Map(op).update(e.id, e.classid.raw)
            return
        case .unmapCgroup(let e):
            try cgroup2Map(op).delete(e.id)
            return
        case .createIFB(let name):
            try targetSockets(op).route.createLink(name, type: "ifb", txqueuelen: 1000)
            return
        case .deleteIFB(let name):
            try targetSockets(op).route.deleteLink(name)
            return
        case .addIngressRedirect(let ifb):
            let (s, i) = try tcTarget(op)
            try s.route.addIngressRedirect(ifindex: i, device: op.device, ifb: ifb)
            return
        case .deleteIngressRedirect:
            let (s, i) = try tcTarget(op)
            try s.route.transact(
                RouteSocket.deleteQdisc(
                    ifindex: i, device: op.device, parent: .ingress, handle: TCHandle(raw: 0xFFFF_0000)))
            return
        default: break
        }
        if case .addFilter(let f) = op.action, f.kind == .bpf {
            let (s, i) = try tcTarget(op)
            let fd = try BPFClassifier.load()
            defer { close(fd) }  // the filter holds its own reference to the program
            return try s.filterSocket.addBpfFilter(ifindex: i, device: op.device, f, programFD: fd)
        }
        if case .addFilter(let f) = op.action, f.kind == .cgroup2 {
            // The filter holds the program and the program the map: netshape keeps only the map's fd.
            let (s, i) = try tcTarget(op)
            let (map, program) = try Cgroup2Classifier.load(name: Cgroup2Entry.objectName(namespace: op.namespace))
            try s.filterSocket.addBpfFilter(ifindex: i, device: op.device, f, programFD: program.fd)
            cgroup2Maps[op.namespace] = map
            return
        }
        let (route, request) = try tcRequest(op)
        try route.transact(request)
    }

    /// Several operations, the tc ones among them sent many to a datagram (one `sendto` each,
    /// `NetlinkSession.transact(batch:)`). A run of consecutive tc operations on one socket goes as
    /// one batch; anything else, and the operation `NETSHAPE_FAIL_OPERATION` names, runs alone.
    /// Stops after the first failure (the rest of its batch still has its own results: the kernel
    /// went on with them). Each request is built once; a request that cannot be built is that
    /// operation's failure, and nothing after it is sent.
    public func execute(_ ops: [Operation]) -> [Result<Void, any Error>] {
        var results: [Result<Void, any Error>] = []
        var batch: [NetlinkRequest] = []
        var socket: RouteSocket?
        // Sends what was gathered; false when any of it failed or was not attempted.
        func send() -> Bool {
            guard let s = socket else { return true }
            let outcomes = s.session.transact(batch: batch)
            results += outcomes.map { $0.mapError { $0 as any Error } }
            defer { (batch, socket) = ([], nil) }
            return outcomes.count == batch.count && !outcomes.contains(where: \.isFailure)
        }
        for op in ops {
            var unbuilt: (any Error)?
            if Self.isBatchable(op), executed + 1 != failAt {
                executed += 1
                do {
                    let (route, request) = try tcRequest(op)
                    if let s = socket, s !== route, !send() { return results }
                    socket = route
                    batch.append(request)
                    forgetCgroup2Map(after: op)
                    continue
                } catch {
                    unbuilt = error
                }
            }
            guard send() else { return results }
            let result = unbuilt.map { .failure($0) } ?? Result { try execute(op) }
            results.append(result)
            if result.isFailure { return results }
        }
        _ = send()
        return results
    }

    /// tc operations whose request can be built ahead and sent in a batch (cls_bpf needs its
    /// program loaded, so it goes alone).
    static func isBatchable(_ op: Operation) -> Bool {
        switch op.action {
        case .addRootQdisc, .replaceRootQdisc, .deleteRootQdisc, .addClass, .changeClass, .deleteClass, .addLeaf,
            .replaceLeaf, .deleteLeaf, .deleteFilter:
            return true
        case .addFilter(let f): return f.kind == .cgroup
        default: return false
        }
    }

    /// The sockets and ifindex an operation on a device is for: where the observation it was
    /// planned from resolved it (`Operation.target`), else found by the namespace's name: the
    /// namespace device, or the device carrying its ingress (the veth peer in the host, or the IFB).
    func tcTarget(_ op: Operation) throws -> (Sockets, Int32) {
        let s = try targetSockets(op)
        if let i = op.target?.ifindex, i != 0 { return (s, i) }
        if op.target == nil, op.link == .namespace, let c = try requests[op.namespace].map(context),
            op.device == c.device
        {
            return (s, c.ifindex)
        }
        return (s, try s.route.requireIfindex(op.device))
    }

    /// The sockets of the namespace an operation on a device acts in (see `tcTarget`).
    func targetSockets(_ op: Operation) throws -> Sockets {
        if let t = op.target { return try t.netns == .host ? host() : sockets(t.netns, label: op.namespace) }
        guard let r = requests[op.namespace] else {
            throw KernelError(
                .state, op.command, reason: "namespace \(op.namespace) was not observed before this change")
        }
        // No target: an operation built by hand, not by a planner (`Engine.apply` plans again after
        // provisioning, so even a namespace created in this run is resolved). Found from what the
        // last `observe` was asked; an ingress not observed is taken to be on the host-side peer.
        if op.link == .ingress, (ingressPlacement[op.namespace] ?? .peer) == .peer { return try host() }
        return try context(r).sockets
    }

    /// The request of a batchable tc operation (see `isBatchable`) and the socket it goes over.
    func tcRequest(_ op: Operation) throws -> (RouteSocket, NetlinkRequest) {
        let (s, i) = try tcTarget(op)
        let d = op.device
        let request: NetlinkRequest
        switch op.action {
        case .addRootQdisc(let q): request = try RouteSocket.htbRoot(.add, ifindex: i, device: d, q)
        case .replaceRootQdisc(let q, _): request = try RouteSocket.htbRoot(.replace, ifindex: i, device: d, q)
        case .deleteRootQdisc(let q):
            request = try RouteSocket.deleteQdisc(ifindex: i, device: d, parent: .root, handle: q.handle)
        case .addClass(let spec): request = try RouteSocket.htbClass(.add, ifindex: i, device: d, spec)
        case .changeClass(let spec, _): request = try RouteSocket.htbClass(.change, ifindex: i, device: d, spec)
        case .deleteClass(let spec): request = try RouteSocket.deleteClass(ifindex: i, device: d, spec)
        case .addLeaf(let l): request = try RouteSocket.leaf(.add, ifindex: i, device: d, l)
        case .replaceLeaf(let l, _): request = try RouteSocket.leaf(.replace, ifindex: i, device: d, l)
        case .deleteLeaf(let l):
            request = try RouteSocket.deleteQdisc(ifindex: i, device: d, parent: l.parent, handle: nil)
        case .addFilter(let f): request = try RouteSocket.cgroupFilter(ifindex: i, device: d, f)
        case .deleteFilter(let f): request = FilterSocket.deleteFilter(ifindex: i, device: d, f)
        default: throw KernelError(.state, op.command, reason: "not a tc operation")
        }
        return (s.route, request)
    }

    /// Creates or removes what `provision` describes. Namespace files are made the way `ip netns add`
    /// makes them: an empty file under /run/netns with a fresh namespace bind-mounted onto it.
    func provision(_ op: Operation) throws {
        // `Differ.provisioning` plans each operation with its namespace (`Operation.target`, kept by
        // rollback's inverses); reset's are all on the host. Only an operation built without one
        // falls back to what the last `observe` was asked for its namespace.
        func inside() throws -> Sockets {
            if let t = op.target { return try sockets(t.netns, label: op.namespace) }
            guard let r = requests[op.namespace] else {
                throw KernelError(.state, op.command, reason: "namespace \(op.namespace) was not observed")
            }
            return try sockets(r.target, label: op.namespace)
        }
        let onHost = op.link == .host
        switch op.action {
        case .createNetns(let name):
            try NetClsHierarchy.makeDirectories("/run/netns")
            let path = "/run/netns/\(name)"
            let fd = try sys("create \(path)") { open(path, O_RDONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o444) }
            close(fd)
            do {
                try onDedicatedThread {
                    try sys("unshare(CLONE_NEWNET) for ip netns add \(name)") { netshape_unshare_net() }
                    try sys("mount --bind /proc/thread-self/ns/net \(path)") {
                        netshape_bind_mount("/proc/thread-self/ns/net", path)
                    }
                }
            } catch {
                unlink(path)
                throw error
            }
            forget(op.namespace)
        case .deleteNetns(let name):
            let path = "/run/netns/\(name)"
            forget(op.namespace)
            try sys("umount \(path)") { netshape_umount_detach(path) }
            try sys("rm \(path)") { unlink(path) }
        case .createVeth(let host, let peer, let netns):
            let ns = try NetworkNamespace(.named(netns))
            try self.host().route.createVeth(host: host, peer: peer, peerNamespaceFD: ns.fd)
            forget(op.namespace)
        case .deleteVeth(let host):
            try self.host().route.deleteLink(host)
            forget(op.namespace)
        case .createBridge(let b): try host().route.createLink(b, type: "bridge", txqueuelen: nil)
        case .deleteBridge(let b): try host().route.deleteLink(b)
        case .attachToBridge(let b): try host().route.setLink(op.device, master: .some(b))
        case .detachFromBridge: try host().route.setLink(op.device, master: .some(nil))
        case .addAddress(let cidr): try (onHost ? host() : inside()).route.address(cidr, device: op.device, add: true)
        case .deleteAddress(let cidr):
            try (onHost ? host() : inside()).route.address(cidr, device: op.device, add: false)
        case .linkUp: try (onHost ? host() : inside()).route.setLink(op.device, up: true)
        case .linkDown: try (onHost ? host() : inside()).route.setLink(op.device, up: false)
        case .addDefaultRoute(let g): try inside().route.defaultRoute(via: g, add: true)
        case .deleteDefaultRoute(let g): try inside().route.defaultRoute(via: g, add: false)
        default: throw KernelError(.state, op.command, reason: "not a provisioning operation")
        }
    }

    // MARK: - For run and classify

    /// The open namespace of a policy namespace.
    public func namespace(for request: NamespaceRequest) throws -> NetworkNamespace {
        requests[request.name] = request
        return try sockets(request.target, label: request.name).netns
    }

    /// The net_cls hierarchy, mounting it if needed.
    public func netCls() throws -> NetClsHierarchy { try cgroups() }

    /// Reads one process: its namespace id and details.
    public func process(_ pid: Int32) -> (String, ProcessInfo)? { procs.process(pid) }
}
